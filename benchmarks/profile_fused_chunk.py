"""One online chunk of the fused loss (`_online_chunk`) at SmolLM2's sizes: time and torch.profiler table.

    OMP_NUM_THREADS=1 python benchmarks/profile_fused_chunk.py --threads 1 --rows 341
    PYTHONPATH=/path/to/older/checkout python benchmarks/profile_fused_chunk.py   # the code before a change

The chunk's logits (student's and teacher's, `rows x 49,152`, random) are copied into buffers made once,
as the fused loss does; forward KL at T = 2 with the task loss, the trainer's default. Prints the best
of 7 runs and the profiler's per-operation table of one run (`aten::exp` beside `aten::exp_` shows what
a fresh tensor costs: an allocation of that size is fresh memory from the OS each time).
"""

from __future__ import annotations

import argparse
import inspect
import time

import torch
from torch.profiler import ProfilerActivity, profile

from hf_bigsmall.distillation.divergences import resolve_divergence
from hf_bigsmall.distillation.fused_loss import _online_chunk


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=341, help="rows per chunk (341: the default at 49,152 tokens)")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--kd_loss", default="forward_kl")
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    student, teacher = torch.randn(args.rows, args.vocab) * 3, torch.randn(args.rows, args.vocab) * 3
    labels, keep = torch.randint(0, args.vocab, (args.rows,)), torch.ones(args.rows, dtype=torch.bool)
    divergence, params = resolve_divergence(args.kd_loss)
    weight = torch.tensor(0.5 / 2044)
    buffers = [torch.empty(args.rows, args.vocab) for _ in range(3)]
    # the code before the buffers were reused takes no spare buffer
    extra = {"spare": buffers[2]} if "spare" in inspect.signature(_online_chunk).parameters else {}

    def run():
        buffers[0].copy_(student)
        buffers[1].copy_(teacher)
        return _online_chunk(buffers[0], buffers[1], keep, labels, args.temperature, divergence, params, weight,
                             weight, 0.0, True, **extra)

    for _ in range(2):
        run()
    times = []
    for _ in range(7):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    copies = []
    for _ in range(7):
        start = time.perf_counter()
        buffers[0].copy_(student)
        buffers[1].copy_(teacher)
        copies.append(time.perf_counter() - start)
    print(f"threads={args.threads} {args.kd_loss} T={args.temperature} chunk {args.rows} x {args.vocab}: "
          f"best {min(times) * 1e3:.1f} ms, of which {min(copies) * 1e3:.1f} ms copy the two inputs in")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        run()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
