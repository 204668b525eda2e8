"""Distilling from a teacher-logit cache, measured against a plain fine-tune and online distillation.

    python benchmarks/bench_logit_cache.py step --task classification   # MiniLM teacher, 3-layer student
    python benchmarks/bench_logit_cache.py step --task causal_lm        # SmolLM2-135M teacher, 8-layer student
    python benchmarks/bench_logit_cache.py storage                      # bytes per token, caching throughput
    python benchmarks/bench_logit_cache.py quality --task causal_lm     # same budget: plain, online, cached

`step` times, interleaved (A, B, C, C, B, A, ...: every other round reversed) on the same batch so a
shared machine's load hits all alike: A. a plain fine-tuning step of the student (`Trainer`), B. a
distillation step from the cache (`DistillationTrainer(teacher_model=None)`, collating the cached rows
read from disk included), C. an online distillation step (teacher in the loop), and for a causal LM
D. step B from materialised logits (`fused_lm_head_loss=False`); with `--before PATH`, E. step B run
by another copy of the package (e.g. an older checkout). `--step_modes` picks among them. Ratios are
given as ratios of medians and as medians of per-round ratios. Target: B / A <= 1.10.

`storage` caches SmolLM2's top-128 on real news blocks in each storage format (bytes per target
token from the manifest) and times, interleaved, the teacher's plain forward of a batch against
caching that batch (forward, top-k, packing, writing the shard). Target: <= 300 bytes, >= 0.9x.

`quality` trains the same student for the same steps on the same rows three ways, each in a fresh
process so its peak resident memory is its own: plain fine-tuning (task loss only), online
distillation and cached distillation; it reports held-out accuracy (classification) or perplexity
(causal LM), wall time and peak RSS. Targets: accuracy within 0.5 point and perplexity within 1% of
online; cached peak RSS <= 1.1x plain.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORK = Path(tempfile.gettempdir()) / "bench_logit_cache"


def _teacher_and_data(task: str, rows: int, seq_len: int):
    """A teacher, a student made from it, and `rows` real tokenised training rows (+ held-out rows)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from hf_bigsmall import assets, make_student

    torch.manual_seed(0)
    if task == "classification":
        from hf_bigsmall.tasks.text_classification import classification_teacher, load_classification_dataset

        tokenizer = AutoTokenizer.from_pretrained(assets.minilm_path())
        data = load_classification_dataset(tokenizer, assets.ROTTEN_TOMATOES, max_length=seq_len,
                                           max_train_samples=rows, max_eval_samples=300, seed=0)
        # a briefly fine-tuned teacher, kept for later runs of the benchmark
        path = classification_teacher(assets.MINILM, data, tokenizer, WORK / "minilm-teacher", max_steps=40,
                                      per_device_train_batch_size=16, learning_rate=1e-4, seed=0)
        teacher = AutoModelForSequenceClassification.from_pretrained(path).eval()
        student = make_student(teacher, num_layers=3)
    else:
        from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

        tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
        data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=seq_len, max_train_samples=rows,
                                      max_eval_samples=16, seed=0)
        teacher = AutoModelForCausalLM.from_pretrained(assets.smollm2_path()).eval()
        student = make_student(teacher, num_layers=8)
    return teacher, student, data, tokenizer


# ----------------------------------------------------------------------------------------------
# step: plain vs cached vs online, one batch
# ----------------------------------------------------------------------------------------------
def bench_step(args) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator

    from hf_bigsmall import DistillationConfig, DistillationTrainer, cache_teacher_logits, load_teacher_logits

    teacher, student, data, tokenizer = _teacher_and_data(args.task, args.batch_size, args.seq_len)
    rows = data["train"].select(range(args.batch_size))
    cache_dir = WORK / f"step-{args.task}"
    shutil.rmtree(cache_dir, ignore_errors=True)  # the benchmark's own scratch: an earlier run's batch or top_k differs
    cache_teacher_logits(teacher, rows, cache_dir, top_k=args.top_k, logprob_dtype=args.logprob_dtype)
    cached_rows = load_teacher_logits(cache_dir, rows)
    collator = DataCollatorWithPadding(tokenizer) if args.task == "classification" else default_data_collator

    common = dict(output_dir=str(WORK / "trainer"), report_to="none", use_cpu=True, max_grad_norm=1.0,
                  learning_rate=1e-5, bf16=args.bf16)
    copies = []
    for _ in range(4):
        copy = type(student)(student.config)
        copy.load_state_dict(student.state_dict())
        copies.append(copy)
    plain = Trainer(model=copies[0], args=TrainingArguments(**common), data_collator=collator)
    losses = dict(temperature=args.temperature, alpha_kd=args.alpha_kd, alpha_ce=1.0 - args.alpha_kd)
    cached = DistillationTrainer(model=copies[1], teacher_model=None, args=DistillationConfig(**common, **losses),
                                 train_dataset=cached_rows, data_collator=collator)
    online = DistillationTrainer(model=copies[2], teacher_model=teacher, args=DistillationConfig(**common, **losses),
                                 data_collator=collator)
    # the same cached step from materialised logits (for a causal LM the default fuses the LM head with the loss)
    materialised = DistillationTrainer(model=copies[3], teacher_model=None, train_dataset=cached_rows,
                                       args=DistillationConfig(**common, **losses, fused_lm_head_loss=False),
                                       data_collator=collator)
    trainers = [plain, cached, online, materialised]
    before = None
    if args.before:  # the cached step of another copy of the package, e.g. an older checkout, on its own copy
        import importlib

        from bench_distillation import import_package_copy

        # its own modules by their full names: the package's top-level names may lead back to this copy
        name = import_package_copy(args.before).__name__
        before_trainer = importlib.import_module(f"{name}.distillation.trainer").DistillationTrainer
        before_config = importlib.import_module(f"{name}.distillation.config").DistillationConfig
        before_rows = importlib.import_module(f"{name}.distillation.cache").load_teacher_logits(cache_dir, rows)
        copy = type(student)(student.config)
        copy.load_state_dict(student.state_dict())
        before = (before_trainer(model=copy, teacher_model=None, args=before_config(**common, **losses),
                                 train_dataset=before_rows, data_collator=collator), before_rows)
        trainers.append(before[0])
    for trainer in trainers:
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1

    def step(trainer, dataset):
        # reading the rows and collating them is part of the step: the cached run decodes its targets here
        inputs = trainer._prepare_inputs(trainer.data_collator([dataset[i] for i in range(len(dataset))]))
        trainer.training_step(trainer.model_wrapped, inputs, trainer._get_num_items_in_batch([inputs], "cpu"))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    plain_rows = rows.select_columns([c for c in rows.column_names if c in ("input_ids", "attention_mask", "labels")])
    modes = {"plain_step": lambda: step(plain, plain_rows), "cached_step": lambda: step(cached, cached_rows),
             "online_step": lambda: step(online, plain_rows)}
    if args.task == "causal_lm":
        modes["cached_materialised_step"] = lambda: step(materialised, cached_rows)
    if before is not None:
        modes["cached_before_step"] = lambda: step(*before)
    wanted = ["plain_step"] + [f"{mode}_step" for mode in args.step_modes.split(",") if mode != "plain"]
    modes = {name: modes[name] for name in wanted if name in modes}
    times = _interleave(modes, args.warmup, args.repeats)
    result = _summary(times)
    for name in modes:  # each mode against the plain step: ratio of medians and median of per-round ratios
        if name != "plain_step":
            short = name.removesuffix("_step")
            result[f"{short}_over_plain"] = result[name]["median_s"] / result["plain_step"]["median_s"]
            result[f"{short}_over_plain_per_round"] = statistics.median(
                a / b for a, b in zip(times[name], times["plain_step"]))
    if "cached_before_step" in modes:
        result["cached_over_before_per_round"] = statistics.median(
            a / b for a, b in zip(times["cached_step"], times["cached_before_step"]))
    if "cached_materialised_step" in modes:
        result["cached_over_materialised_per_round"] = statistics.median(
            a / b for a, b in zip(times["cached_step"], times["cached_materialised_step"]))
    return result


def _interleave(modes: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for run in modes.values():
            run()
    times = {name: [] for name in modes}
    for round_index in range(repeats):
        # every other round in reverse order, so that no mode always follows the same one
        for name, run in list(modes.items())[::-1] if round_index % 2 else modes.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def _summary(times: dict[str, list[float]]) -> dict:
    return {name: {"median_s": statistics.median(values), "runs": len(values), "times_s": [round(v, 2) for v in values]}
            for name, values in times.items()}


# ----------------------------------------------------------------------------------------------
# storage: bytes per token and caching throughput (SmolLM2, k=128)
# ----------------------------------------------------------------------------------------------
def bench_storage(args) -> dict:
    import numpy as np

    from hf_bigsmall import cache_teacher_logits
    from hf_bigsmall.distillation import cache as cache_module

    teacher, _, data, _ = _teacher_and_data("causal_lm", args.rows, args.seq_len)
    train = data["train"]
    result = {"rows": len(train), "seq_len": args.seq_len, "top_k": args.top_k}
    for dtype in ("uint8", "float16"):
        folder = WORK / f"storage-{dtype}"
        shutil.rmtree(folder, ignore_errors=True)  # the benchmark's own scratch: a cache of other rows goes
        start = time.perf_counter()
        cache_teacher_logits(teacher, train, folder, top_k=args.top_k, logprob_dtype=dtype,
                             batch_size=args.batch_size)
        manifest = json.loads((folder / "manifest.json").read_text())
        result[dtype] = {"bytes_per_target_token": manifest["bytes_per_target"],
                         "target_tokens": manifest["num_target_tokens"], "wall_s": time.perf_counter() - start}

    start = time.perf_counter()
    cache_module.weights_fingerprint(teacher)
    result["weights_fingerprint_s"] = time.perf_counter() - start  # once per cache, not per batch
    rows = train.select(range(args.batch_size))
    hashes = np.zeros(len(rows), dtype=np.int64)
    record = {"task": "causal_lm", "top_k": args.top_k, "logprob_dtype": "uint8", "id_dtype": "uint16",
              "run_key": []}
    batch = {"input_ids": torch.tensor(rows["input_ids"]), "attention_mask": torch.tensor(rows["attention_mask"])}
    device = torch.device("cpu")

    def forward():
        with torch.no_grad():
            teacher(**batch)

    def caching(record):
        def cache_batch():
            table, targets = cache_module._shard_table(teacher, rows, hashes, record, args.batch_size, device)
            cache_module._write_shard(table, WORK / "throughput" / "shard-00000", 0, 0, len(rows), targets, record)
        return cache_batch

    runs = {"teacher_forward": forward, "cache_batch": caching(record)}
    if args.tail_samples:  # as many entries: the last tail_samples of the top-k become draws from the rest
        drawn = {**record, "top_k": args.top_k - args.tail_samples, "tail_samples": args.tail_samples, "tail_seed": 0}
        runs["cache_batch_tail_draws"] = caching(drawn)
    times = _interleave(runs, args.warmup, args.repeats)
    result.update(_summary(times))
    result["caching_throughput_vs_forward"] = result["teacher_forward"]["median_s"] / result["cache_batch"]["median_s"]
    if args.tail_samples:
        result["tail_draws_vs_top_k"] = result["cache_batch_tail_draws"]["median_s"] / result["cache_batch"]["median_s"]
    return result


# ----------------------------------------------------------------------------------------------
# quality and peak memory: the same training budget three ways, each in its own process
# ----------------------------------------------------------------------------------------------
def bench_quality(args) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    prepared = WORK / f"quality-{args.task}"
    _run_child(args, "prepare", prepared)
    results = {"task": args.task, "train_rows": args.rows, "steps": args.steps, "batch_size": args.batch_size,
               "seq_len": args.seq_len, "top_k": args.top_k}
    results["temperature"] = args.temperature
    for mode in args.modes.split(","):
        results[mode] = _run_child(args, mode, prepared)
    metric = "eval_accuracy" if args.task == "classification" else "eval_perplexity"
    results["metric"] = metric
    if "online" in results and "cached" in results:
        results["cached_minus_online"] = results["cached"][metric] - results["online"][metric]
        results["cached_over_online"] = results["cached"][metric] / results["online"][metric]
    if "plain" in results:
        for mode in ("cached", "online"):
            if mode in results:
                results[f"{mode}_rss_over_plain"] = results[mode]["peak_rss_mb"] / results["plain"]["peak_rss_mb"]
    return results


def _run_child(args, mode: str, prepared: Path) -> dict:
    command = [sys.executable, __file__, "child", "--mode", mode, "--prepared", str(prepared), "--task", args.task,
               "--rows", str(args.rows), "--steps", str(args.steps), "--batch_size", str(args.batch_size),
               "--seq_len", str(args.seq_len), "--top_k", str(args.top_k), "--logprob_dtype", args.logprob_dtype,
               "--temperature", str(args.temperature)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def child(args) -> None:
    """One run of `quality` in this fresh process: prints its result as the last JSON line."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    prepared = Path(args.prepared)
    if args.mode == "prepare":  # teacher, student and cache on disk, so each run loads only what it needs
        from hf_bigsmall import cache_teacher_logits

        teacher, student, data, tokenizer = _teacher_and_data(args.task, args.rows, args.seq_len)
        teacher.save_pretrained(prepared / "teacher")
        student.save_pretrained(prepared / "student")
        tokenizer.save_pretrained(prepared / "student")
        data.save_to_disk(str(prepared / "data"))
        cache_teacher_logits(teacher, data["train"], prepared / "cache", top_k=args.top_k,
                             logprob_dtype=args.logprob_dtype, batch_size=16)
        print(json.dumps({"prepared": str(prepared)}))
        return
    from datasets import load_from_disk
    from transformers import AutoTokenizer

    from hf_bigsmall import DistillationConfig, DistillationTrainer, load_teacher_logits
    from hf_bigsmall.tasks.text_classification import accuracy

    start = time.perf_counter()
    auto = AutoModelForSequenceClassification if args.task == "classification" else AutoModelForCausalLM
    data = load_from_disk(str(prepared / "data"))
    tokenizer = AutoTokenizer.from_pretrained(prepared / "student")
    student = auto.from_pretrained(prepared / "student")
    collator = DataCollatorWithPadding(tokenizer) if args.task == "classification" else default_data_collator
    common = dict(output_dir=str(WORK / f"run-{args.mode}"), report_to="none", use_cpu=True, max_steps=args.steps,
                  per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=16, learning_rate=5e-5,
                  save_strategy="no", logging_steps=max(1, args.steps // 4), seed=0, disable_tqdm=True)
    kwargs = dict(eval_dataset=data["eval"], data_collator=collator, processing_class=tokenizer,
                  compute_metrics=accuracy if args.task == "classification" else None)
    if args.mode == "plain":
        trainer = Trainer(model=student, args=TrainingArguments(**common), train_dataset=data["train"], **kwargs)
    elif args.mode == "online":
        teacher = auto.from_pretrained(prepared / "teacher")
        trainer = DistillationTrainer(model=student, teacher_model=teacher,
                                      args=DistillationConfig(**common, temperature=args.temperature),
                                      train_dataset=data["train"], **kwargs)
    else:
        trainer = DistillationTrainer(model=student, teacher_model=None,
                                      args=DistillationConfig(**common, temperature=args.temperature),
                                      train_dataset=load_teacher_logits(prepared / "cache", data["train"]), **kwargs)
    trainer.train()
    train_s = time.perf_counter() - start
    metrics = trainer.evaluate()
    result = {"train_wall_s": train_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if args.task == "classification":
        result["eval_accuracy"] = metrics["eval_accuracy"]
    else:  # the student's own cross-entropy, not the weighted objective
        result["eval_perplexity"] = math.exp(metrics.get("eval_loss_ce", metrics["eval_loss"]))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["step", "storage", "quality", "child"])
    parser.add_argument("--task", choices=["classification", "causal_lm"], default="causal_lm")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--seq_len", type=int, default=None)
    parser.add_argument("--top_k", type=int, default=128)
    parser.add_argument("--logprob_dtype", default="uint8")
    parser.add_argument("--tail_samples", type=int, default=0,
                        help="storage: also time caching top-(k - s) + s tail draws (as many entries per token) against top-k")
    parser.add_argument("--rows", type=int, default=None, help="training rows (storage, quality)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (quality)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="step: train under bf16 autocast (teacher included)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (step, quality)")
    parser.add_argument("--alpha_kd", type=float, default=0.5,
                        help="step: weight of the soft targets, the task loss gets the rest (DistillationConfig's 0.5)")
    parser.add_argument("--modes", default="plain,online,cached", help="runs of quality, comma-separated")
    parser.add_argument("--step_modes", default="plain,cached,online,cached_materialised,cached_before",
                        help="step: modes to time, comma-separated (plain always; cached_materialised for causal LMs, "
                             "cached_before with --before)")
    parser.add_argument("--before", default=None,
                        help="step: folder of another copy of the package (e.g. an older checkout's hf_bigsmall), "
                             "whose cached step is timed beside this one's")
    parser.add_argument("--mode", default=None)
    parser.add_argument("--prepared", default=None)
    args = parser.parse_args()
    if not 0 <= args.tail_samples < args.top_k:
        parser.error(f"--tail_samples must be in [0, {args.top_k}): the draws replace the last top-k entries")
    classification = args.task == "classification"
    args.batch_size = args.batch_size or ((16 if args.part == "quality" else 32) if classification else 4)
    args.seq_len = args.seq_len or (64 if classification else 128)
    args.rows = args.rows or (args.batch_size * 8 if args.part != "quality" else (480 if classification else 64))
    args.steps = args.steps or (30 if classification else 16)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.part == "child":
        child(args)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    result = {"step": bench_step, "storage": bench_storage, "quality": bench_quality}[args.part](args)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
