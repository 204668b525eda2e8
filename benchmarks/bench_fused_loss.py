"""The fused LM-head + distillation loss alone, at SmolLM2's sizes, for several settings side by side.

    python benchmarks/bench_fused_loss.py                                   # chunk sizes, eager
    python benchmarks/bench_fused_loss.py --settings 341,341c --kd_loss jsd # eager vs torch.compile
    python benchmarks/bench_fused_loss.py --settings 341,341l               # built-in vs Liger-Kernel
    python benchmarks/bench_fused_loss.py --targets cached --temperature 1 --settings 341,m85 --profile

One forward and backward of `fused_distillation_losses` with the task loss on random hidden states of
4 x 511 rows, hidden 576, 49,152-token vocabulary (SmolLM2-135M's head), interleaved round by round
(every other round in reverse order) so that a shared machine's load hits every setting alike. The soft
targets come from a teacher head (`--targets online`) or from cached top-k targets (`--targets cached`:
the top `--top_k` of a sharper random teacher, with its tail mass, as a token-level cache holds them).
A setting is a chunk size in rows, with a trailing `c` for `compile_chunks=True`, a trailing `l` for
`backend="liger"` (Liger-Kernel's fused linear JSD, `pip install "hf-bigsmall[liger]"`; `lc`: compiled;
online targets only), a leading `b` for the fused loss of another copy of the package (`--before`, e.g. an
older checkout), or a leading `m` for the materialised path (the whole `[rows x vocabulary]` logits made
by the head, then `kd_loss` or `cached_distillation_losses` with that chunk size, as
`DistillationTrainer(fused_lm_head_loss=False)` runs them; 85 rows is its default chunk here). Each is
run once before the timed rounds (the compiled one compiles then: that time is printed). Ratios are
medians of per-round ratios to the first setting. `--profile` then prints torch.profiler's
per-operation table of one more run of each setting. The peak resident memory printed is the whole
process's: compare settings run alone (`--repeats 0`).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_bigsmall.distillation.cached_loss import cached_distillation_losses
from hf_bigsmall.distillation.fused_loss import CachedTargets, LMHead, fused_distillation_losses
from hf_bigsmall.losses import kd_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="341,256,170,128,85",
                        help="chunk sizes; 'c' suffix: compiled, 'l' suffix: Liger-Kernel, 'b' prefix: --before's "
                             "copy, 'm' prefix: materialised")
    parser.add_argument("--targets", choices=["online", "cached"], default="online")
    parser.add_argument("--top_k", type=int, default=128, help="tokens per position of the cached targets")
    parser.add_argument("--kd_loss", default="forward_kl")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--rows", type=int, default=4 * 511)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's table of one run per setting")
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
    cached = None
    if args.targets == "cached":  # a peaked teacher, as a trained one is: its top-k holds most of the mass
        with torch.no_grad():
            teacher_logprobs = (teacher_hidden @ teacher_weight.T * 4).log_softmax(-1)
            logprobs, ids = teacher_logprobs.topk(args.top_k, dim=-1)
            tail = teacher_logprobs.scatter_(1, ids, float("-inf")).logsumexp(-1)
        del teacher_logprobs
        cached = CachedTargets(ids, logprobs, tail, torch.ones(args.rows, dtype=torch.bool))
    soft = {"cached": cached} if cached is not None else {"teacher_hidden": teacher_hidden}
    weights = {"kd_weight": 0.5 / args.rows, "ce_weight": 0.5 / args.rows}

    before = None
    if args.before:
        import importlib

        from bench_distillation import import_package_copy

        before = importlib.import_module(f"{import_package_copy(args.before).__name__}.distillation.fused_loss")

    def materialised(chunk_size: int) -> torch.Tensor:
        logits = hidden @ weight.T
        if cached is not None:
            kd, ce = cached_distillation_losses(logits, ids, logprobs, tail, args.temperature, kind=args.kd_loss,
                                                labels=labels, reduction="sum", chunk_size=chunk_size)
        else:
            teacher_logits = teacher_hidden @ teacher_weight.T
            kd = kd_loss(logits, teacher_logits, args.temperature, kind=args.kd_loss, reduction="sum",
                         chunk_size=chunk_size)
            ce = F.cross_entropy(logits, labels, reduction="sum")
        return kd * weights["kd_weight"] + ce * weights["ce_weight"]

    def step(setting: str):
        if setting.startswith("m"):
            loss = materialised(int(setting[1:]))
        else:
            package = before if setting.startswith("b") else None
            losses = package.fused_distillation_losses if package else fused_distillation_losses
            head = package.LMHead if package else LMHead
            extra = dict(soft)
            if cached is not None and package:
                extra["cached"] = package.CachedTargets(ids, logprobs, tail, cached.present)
            if "teacher_hidden" in extra:
                extra["teacher_head"] = head(teacher_weight)
            options = {} if package else {"compile_chunks": setting.endswith("c"),
                                          "backend": "liger" if "l" in setting else "torch"}
            loss, _, _ = losses(hidden, head(weight), labels, None, temperature=args.temperature, kind=args.kd_loss,
                                chunk_size=int(setting.lstrip("b").rstrip("cl")), **weights, **extra, **options)
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
    print(f"targets={args.targets} kd_loss={args.kd_loss} T={args.temperature} rows={args.rows} vocab={args.vocab} "
          f"threads={torch.get_num_threads()} repeats={args.repeats}")
    first = settings[0]
    for setting in settings if args.repeats else ():
        ratio = statistics.median(a / b for a, b in zip(times[setting], times[first]))
        print(f"{setting:>6}: median {statistics.median(times[setting]):.3f} s, per-round ratio to {first} {ratio:.3f}")
    # of the whole process, every setting and the inputs included: run one setting per process to compare
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for setting in settings:
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                step(setting)
            print(f"--- {setting}")
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
