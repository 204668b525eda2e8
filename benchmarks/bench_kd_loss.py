"""Time and peak memory of the soft-target loss alone, chunked against all rows at once.

    python benchmarks/bench_kd_loss.py                      # SmolLM2 shape: 4 x 128 tokens, 49,152 vocabulary
    python benchmarks/bench_kd_loss.py --vocab 50257        # GPT-2's vocabulary

Forward and backward of `kd_loss` on random logits, with the last position of each sequence masked
(as a causal LM's shifted targets leave it), interleaved (chunked, whole, chunked, ...) so a
shared machine's load hits both alike. Peak memory is measured in a fresh process per mode.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from hf_bigsmall.distillation.trainer import KD_CHUNK_LOGITS
from hf_bigsmall.losses import KD_LOSSES, kd_loss

MODES = ("chunked", "whole")


def make_inputs(args):
    torch.manual_seed(0)
    student = torch.randn(args.batch_size, args.seq_len, args.vocab, requires_grad=True)
    teacher = torch.randn(args.batch_size, args.seq_len, args.vocab)
    mask = torch.ones(args.batch_size, args.seq_len, dtype=torch.bool)
    mask[:, -1] = False
    return student, teacher, mask


def step(args, mode, student, teacher, mask):
    chunk_size = (args.chunk_logits // args.vocab) if mode == "chunked" else None
    loss = kd_loss(student, teacher, 2.0, kind=args.kind, mask=mask, reduction="sum", chunk_size=chunk_size)
    loss.backward()
    student.grad = None


def peak_mb(args, mode) -> float:
    inputs = make_inputs(args)
    with open("/proc/self/status") as status:
        before = next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024
    for _ in range(2):
        step(args, mode, *inputs)
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
    return peak - before


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--kind", default="forward_kl", choices=list(KD_LOSSES))
    parser.add_argument("--chunk_logits", type=int, default=KD_CHUNK_LOGITS, help="logits per chunk (the trainer's default)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory_of", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps({"peak_mb": peak_mb(args, args.memory_of)}))
        return

    inputs = make_inputs(args)
    for mode in MODES:
        step(args, mode, *inputs)  # warm-up
    times = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            start = time.perf_counter()
            step(args, mode, *inputs)
            times[mode].append(time.perf_counter() - start)
    memory = {}
    for mode in MODES:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--memory_of", mode],
                             capture_output=True, text=True, check=True).stdout
        memory[mode] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    print(f"kd_loss {args.kind}, logits {args.batch_size}x{args.seq_len}x{args.vocab}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats")
    print(f"{'mode':<8} {'median s (fwd+bwd)':>19} {'peak MB above inputs':>21}")
    for mode in MODES:
        print(f"{mode:<8} {statistics.median(times[mode]):>19.3f} {memory[mode]:>21.0f}")


if __name__ == "__main__":
    main()
