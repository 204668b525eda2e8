"""The fused LM-head + distillation loss alone, at SmolLM2's sizes, for several settings side by side.

    python benchmarks/bench_fused_loss.py                                   # chunk sizes, eager
    python benchmarks/bench_fused_loss.py --settings 341,341c --kd_loss jsd # eager vs torch.compile
    python benchmarks/bench_fused_loss.py --settings 341,341l               # built-in vs Liger-Kernel

One forward and backward of `fused_distillation_losses` (online, with the task loss) on random hidden
states of 4 x 511 rows, hidden 576, 49,152-token vocabulary (SmolLM2-135M's head for student and
teacher), interleaved round by round (every other round in reverse order) so that a shared machine's load hits every setting alike. A setting
is a chunk size in rows, with a trailing `c` for `compile_chunks=True`, a trailing `l` for `backend="liger"`
(Liger-Kernel's fused linear JSD, `pip install "hf-bigsmall[liger]"`; `lc`: compiled) or a leading `b` for the fused loss of
another copy of the package (`--before`, e.g. an older checkout); each is run once before the timed
rounds (the compiled one compiles then: that time is printed). Ratios are medians of per-round ratios
to the first setting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_bigsmall.distillation.fused_loss import LMHead, fused_distillation_losses


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="341,256,170,128,85",
                        help="chunk sizes, 'c' suffix: compiled, 'l' suffix: Liger-Kernel")
    parser.add_argument("--kd_loss", default="forward_kl")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--rows", type=int, default=4 * 511)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default=None,
                        help="folder of another copy of the package (e.g. an older checkout's hf_bigsmall): settings "
                             "with a leading 'b' run its fused loss")
    args = parser.parse_args()

    torch.manual_seed(0)
    hidden = torch.randn(args.rows, args.hidden).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden) * 0.05).requires_grad_()
    teacher_hidden, teacher_weight = torch.randn(args.rows, args.hidden), torch.randn(args.vocab, args.hidden) * 0.05
    labels = torch.randint(0, args.vocab, (args.rows,))
    settings = args.settings.split(",")

    before = None
    if args.before:
        import importlib

        from bench_distillation import import_package_copy

        before = importlib.import_module(f"{import_package_copy(args.before).__name__}.distillation.fused_loss")

    def step(setting: str):
        if setting.startswith("b"):
            loss, _, _ = before.fused_distillation_losses(
                hidden, before.LMHead(weight), labels, None, teacher_hidden, before.LMHead(teacher_weight),
                temperature=args.temperature, kind=args.kd_loss, kd_weight=0.5 / args.rows,
                ce_weight=0.5 / args.rows, chunk_size=int(setting[1:]))
            loss.backward()
            hidden.grad = weight.grad = None
            return
        loss, _, _ = fused_distillation_losses(
            hidden, LMHead(weight), labels, None, teacher_hidden, LMHead(teacher_weight), temperature=args.temperature,
            kind=args.kd_loss, kd_weight=0.5 / args.rows, ce_weight=0.5 / args.rows,
            chunk_size=int(setting.rstrip("cl")), compile_chunks=setting.endswith("c"),
            backend="liger" if "l" in setting else "torch")
        loss.backward()
        hidden.grad = weight.grad = None

    for setting in settings:
        start = time.perf_counter()
        step(setting)
        print(f"first call, {setting}: {time.perf_counter() - start:.1f} s")
    times = {setting: [] for setting in settings}
    for round_index in range(args.repeats):
        for setting in settings[::-1] if round_index % 2 else settings:  # every other round in reverse order
            start = time.perf_counter()
            step(setting)
            times[setting].append(time.perf_counter() - start)
    print(f"kd_loss={args.kd_loss} T={args.temperature} rows={args.rows} vocab={args.vocab} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    first = settings[0]
    for setting in settings:
        ratio = statistics.median(a / b for a, b in zip(times[setting], times[first]))
        print(f"{setting:>6}: median {statistics.median(times[setting]):.3f} s, per-round ratio to {first} {ratio:.3f}")


if __name__ == "__main__":
    main()
