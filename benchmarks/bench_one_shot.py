"""One-shot pruning of SmolLM2-135M: SparseGPT, Wanda and magnitude, 50% unstructured and 2:4, then a short heal.

    OMP_NUM_THREADS=2 python benchmarks/bench_one_shot.py                  # the BENCHMARKS.md run
    OMP_NUM_THREADS=2 python benchmarks/bench_one_shot.py --heal-steps 0   # pruning only
    OMP_NUM_THREADS=2 python benchmarks/bench_one_shot.py --heal-steps 0 --calibration-samples 64 \
        --eval-blocks 64 --variants wanda,sparsegpt,sparsegpt+block,wanda:2:4,sparsegpt+block:2:4  # SparseGPT vs Wanda

A variant is `method[+flag...][:N:M]`: `sparsegpt+seq:2:4` is SparseGPT with `sequential=True`, 2:4.
Flags: `seq` (`sequential=True`, the same as `layer`), `block` (`sequential="block"`: each block on the
outputs of the already-pruned blocks before it), `layer` (`sequential="layer"`: also, within a block, each
group of layers on the pruned layers before it), and for SparseGPT `fp32` (`hessian_dtype="float32"`),
`damp<x>` (`dampening=x`, e.g. `damp0.1`), `bs<n>` (`block_size=n`). Variants with the same name in one
run get a suffix. The result JSON stores the mode the pruning record says (`"layer"`, `"block"` or false).

For each variant it prunes a fresh copy of the dense model
with `prune_one_shot` (Wanda calibrated on `--calibration-samples` windows of `--calibration-seq-len`
tokens of the news *train* split; magnitude compares within each layer, as in the Wanda paper), and
measures perplexity on a fixed held-out subset: the first `--eval-blocks` blocks of
`--block-size` tokens of the news *test* split (the same tokens for every model). Then it heals each
pruned model by distillation from the dense one (`DistillationTrainer`, forward KL at T=1,
`MagnitudePruningCallback(target_sparsity=None)` keeping the masks) for `--heal-steps` steps of
`--heal-batch` x `--block-size` tokens of the train split, and measures again. It reports the rise
over dense of each, Wanda's rise as a fraction of magnitude's, SparseGPT's as a fraction of Wanda's, the
share of the gap each heal recovers, and the wall time of calibration plus pruning.

Results go to `--output` (JSON, written after every model) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("wanda", "magnitude", "sparsegpt", "sparsegpt+seq", "wanda:2:4", "magnitude:2:4", "sparsegpt:2:4",
            "sparsegpt+seq:2:4")


def parse_variant(variant: str) -> tuple[str, bool | str, str | None, dict]:
    """`"sparsegpt+block+fp32:2:4"` -> `("sparsegpt", "block", "2:4", {"hessian_dtype": "float32"})`."""
    method, _, pattern = variant.partition(":")
    method, *flags = method.split("+")
    sequential: bool | str = False
    options: dict = {}
    for flag in flags:
        if flag in ("seq", "block", "layer"):
            mode = "layer" if flag == "seq" else flag  # seq is sequential=True, which means "layer"
            if sequential and sequential != mode:
                raise SystemExit(f"variant {variant!r}: +{flag} contradicts an earlier flag (sequential={sequential!r}): "
                                 "keep one of seq/layer and block.")
            sequential = mode
        elif flag == "fp32":
            options["hessian_dtype"] = "float32"
        elif flag.startswith(("damp", "bs")):
            key, text = ("dampening", flag[4:]) if flag.startswith("damp") else ("block_size", flag[2:])
            try:
                options[key] = float(text) if key == "dampening" else int(text)
            except ValueError:
                raise SystemExit(f"variant {variant!r}: +{flag} needs a number: damp<x> (e.g. damp0.1) or bs<n> "
                                 "(e.g. bs64).") from None
        else:
            raise SystemExit(f"variant {variant!r}: unknown flag {flag!r} (seq, block, layer, fp32, damp<x>, bs<n>).")
    return method, sequential, pattern or None, options


@torch.no_grad()
def recorded_sequential(model) -> dict:
    """The sequential mode the pruning record says (not the flag asked: "layer" falls back to "block" where a
    block's layers are not each called once per forward), with the blocks that fell back if any."""
    record = model.pruning_state.record
    return {"sequential": record.get("sequential", False),
            **{key: record[key] for key in ("sequential_fallback_blocks",) if key in record}}


def perplexity(model, blocks, batch_size: int = 2) -> float:
    """exp(mean NLL) over every predicted token of full-length blocks (each block predicts length - 1)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        input_ids = torch.tensor(blocks[start:start + batch_size]["input_ids"])
        logits = model(input_ids=input_ids).logits[:, :-1].float()
        targets = input_ids[:, 1:]
        total_nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        total_tokens += targets.numel()
    return math.exp(total_nll / total_tokens)


def heal(student, teacher, train_blocks, steps: int, batch_size: int, output_dir: str) -> None:
    from hf_bigsmall import DistillationConfig, DistillationTrainer, MagnitudePruningCallback

    args = DistillationConfig(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-4,
        warmup_steps=0.1, lr_scheduler_type="cosine", weight_decay=0.0, report_to="none", save_strategy="no",
        logging_steps=steps, use_cpu=True, alpha_kd=1.0, alpha_ce=0.0, temperature=1.0,
        kd_loss="forward_kl", disable_tqdm=True, seed=0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train_blocks,
                                  callbacks=[MagnitudePruningCallback(target_sparsity=None)])
    trainer.train()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-blocks", type=int, default=12)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--calibration-seq-len", type=int, default=512)
    parser.add_argument("--heal-steps", type=int, default=6)
    parser.add_argument("--heal-batch", type=int, default=1)
    parser.add_argument("--variants", default="all", help="comma list such as wanda,magnitude:2:4 (default all)")
    parser.add_argument("--output", default="benchmarks/results/one_shot.json")
    parser.add_argument("--dense-perplexity", type=float, default=None,
                        help="reuse the dense score of an earlier run with the same --eval-blocks and --block-size")
    args = parser.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator  # noqa: F401

    from hf_bigsmall import assets, prune_one_shot, sparsity_report
    from hf_bigsmall.pruning.calibration import collect_input_statistics, prepare_calibration
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    variant_names = list(VARIANTS if args.variants == "all" else args.variants.split(","))
    variants = [parse_variant(v) for v in variant_names]
    path = assets.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=args.block_size, max_eval_samples=args.eval_blocks)
    held_out = data["eval"]
    heal_count = args.heal_steps * args.heal_batch  # the last training blocks, apart from most calibration windows
    heal_blocks = data["train"].select(range(len(data["train"]) - heal_count, len(data["train"]))) if heal_count else None
    dense = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    results = {
        "machine": f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
        "load_at_start": os.getloadavg(),
        "eval_tokens": len(held_out) * (args.block_size - 1),
        "eval": f"first {len(held_out)} blocks of {args.block_size} tokens of the news test split",
        "heal_tokens": args.heal_steps * args.heal_batch * args.block_size,
        "calibration": f"{args.calibration_samples} x {args.calibration_seq_len} tokens of the news train split",
        "args": vars(args),
        "models": {},
    }
    started = time.perf_counter()
    results["models"]["dense"] = {"perplexity": args.dense_perplexity or perplexity(dense, held_out),
                                  "reused": args.dense_perplexity is not None}
    print(f"dense: {results['models']['dense']['perplexity']:.2f} ({time.perf_counter() - started:.0f} s)", flush=True)

    def save():
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        partial = Path(args.output + ".partial")
        partial.write_text(json.dumps(results, indent=2) + "\n")
        os.replace(partial, args.output)

    statistics = calibration_windows = None
    for variant, (method, sequential, pattern, options) in zip(variant_names, variants):
        name = f"{variant.partition(':')[0]}-{pattern or '50%'}"
        while name in results["models"]:
            name += "'"
        model = copy.deepcopy(dense).requires_grad_(True)  # the dense teacher of an earlier heal is frozen
        load = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        if calibration_windows is None:
            calibration_windows = prepare_calibration(data["train"], args.calibration_samples,
                                                      args.calibration_seq_len, batch_size=4, model=model)
        reused = method == "wanda" and not sequential and statistics is not None
        if method == "wanda" and not sequential and statistics is None:
            # one calibration pass of the dense model serves every one-pass Wanda variant (same statistics)
            statistics = collect_input_statistics(model, calibration_windows)
        calibration = statistics if method == "wanda" and not sequential else (
            calibration_windows if method != "magnitude" else None)
        prune_one_shot(model, calibration, sparsity=None if pattern else 0.5, method=method, pattern=pattern,
                       sequential=sequential, **options)
        prune_seconds = time.perf_counter() - start
        # CPU seconds of this process (all threads): on a shared machine the wall time mostly measures
        # the other jobs, while CPU time / threads estimates the wall time on an idle one
        entry = {"prune_seconds": round(prune_seconds, 1), "prune_cpu_seconds": round(time.process_time() - cpu_start, 1),
                 "load_during_prune": load,
                 "calibration_reused": reused, "options": options, **recorded_sequential(model),
                 "sparsity": sparsity_report(model).global_sparsity, "perplexity": perplexity(model, held_out)}
        print(f"{name}: {entry['perplexity']:.2f} (pruned in {prune_seconds:.0f} s)", flush=True)
        results["models"][name] = entry
        save()
        if args.heal_steps:
            start = time.perf_counter()
            heal(model, dense, heal_blocks, args.heal_steps, args.heal_batch, f"/tmp/bench_one_shot/{name}")
            entry["heal_seconds"] = round(time.perf_counter() - start, 1)
            entry["healed_sparsity"] = sparsity_report(model).global_sparsity
            entry["healed_perplexity"] = perplexity(model, held_out)
            print(f"{name} healed: {entry['healed_perplexity']:.2f} ({entry['heal_seconds']:.0f} s)", flush=True)
            save()
        del model
        gc.collect()

    dense_ppl = results["models"]["dense"]["perplexity"]
    for entry in results["models"].values():
        if "healed_perplexity" in entry:
            gap = entry["perplexity"] - dense_ppl
            entry["gap_recovered"] = (entry["perplexity"] - entry["healed_perplexity"]) / gap if gap > 0 else None
    for pattern in ("50%", "2:4"):
        wanda, magnitude = results["models"].get(f"wanda-{pattern}"), results["models"].get(f"magnitude-{pattern}")
        if wanda and magnitude:
            results[f"wanda_rise_over_magnitude_rise_{pattern}"] = (
                (wanda["perplexity"] - dense_ppl) / (magnitude["perplexity"] - dense_ppl))
        for sparsegpt in [name for name in results["models"] if name.startswith("sparsegpt")
                          and name.rstrip("'").endswith(f"-{pattern}")]:
            if wanda:
                results[f"{sparsegpt}_rise_over_wanda_rise"] = (
                    (results["models"][sparsegpt]["perplexity"] - dense_ppl) / (wanda["perplexity"] - dense_ppl))
    results["load_at_end"] = os.getloadavg()
    save()
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    dense = results["models"]["dense"]["perplexity"]
    rows = ["| Model | Sparsity | Held-out ppl | Rise over dense | Calibration + pruning (s) | Healed ppl | Gap recovered |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            f"| dense | 0% | {dense:.2f} | - | - | - | - |"]
    for name, entry in results["models"].items():
        if name == "dense":
            continue
        healed = entry.get("healed_perplexity")
        recovered = entry.get("gap_recovered")
        rows.append(f"| {name} | {entry['sparsity']:.1%} | {entry['perplexity']:.2f} | {entry['perplexity'] - dense:+.2f} "
                    f"| {entry['prune_seconds']:.0f}{' (statistics reused)' if entry.get('calibration_reused') else ''} | {'-' if healed is None else f'{healed:.2f}'} "
                    f"| {'-' if recovered is None else f'{recovered:.0%}'} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
