"""What padding costs the classification quickstart, and what grouping rows by length saves.

    python benchmarks/bench_length_grouping.py padding                     # tokens per padded token, no timing
    python benchmarks/bench_length_grouping.py training --rounds 3         # seconds per student step, both samplers
    python benchmarks/bench_length_grouping.py labelling --before PATH     # the teacher's labelling pass, two copies

Every part reads the quickstart's real data: the 3,892 Rotten Tomatoes training reviews tokenised by the
embedded MiniLM teacher (`max_length` 64, the quickstart's), batches of 32.

`padding` counts, for one epoch, the real tokens over the tokens a batch pads to, with the rows drawn at
random (`train_sampling_strategy="random"`, the `Trainer`'s default), grouped by length (`"group_by_length"`)
and in shuffled length groups (`shuffle_length_groups=True`, the quickstart's students). It measures nothing noisy: it is the share of each step's work that is not padding.

`training` times, interleaved (random, grouped, grouped, random, ...), `--steps` training steps of the
quickstart's 3-layer student (made from the teacher) on random batches and on shuffled length groups (the
quickstart's), and gives seconds per step as medians and as the median of per-round ratios. (The `Trainer`'s own
grouping would put its longest batches first: the first steps of an epoch would overstate a grouped step's cost.)

`labelling` times the teacher-logit cache's pass over the training rows (`cache_teacher_logits`, batch 64)
by this copy of the package and by another one (`--before`, the `hf_bigsmall` folder of an older
checkout), interleaved; each writes a fresh cache.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

WORK = Path(tempfile.gettempdir()) / "bench_length_grouping"


def _data(max_length: int):
    from transformers import AutoTokenizer

    from hf_bigsmall import assets
    from hf_bigsmall.tasks.text_classification import load_classification_dataset

    tokenizer = AutoTokenizer.from_pretrained(assets.minilm_path())
    return tokenizer, load_classification_dataset(tokenizer, assets.ROTTEN_TOMATOES, max_length=max_length)


def _batches(trainer) -> list[list[int]]:
    """The lengths of the rows of each training batch of one epoch, as the trainer's sampler orders them."""
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    order = list(trainer._get_train_sampler())
    size = trainer.args.train_batch_size
    return [[lengths[index] for index in order[start:start + size]] for start in range(0, len(order), size)]


def _trainer(strategy: str, model, data, tokenizer, args, steps: int = 1):
    """A plain `Trainer` drawing batches as `strategy` says: "random", "group_by_length" (the Trainer's own) or
    "shuffled groups" (`ShuffledLengthGroupedSampler`, which `DistillationConfig(shuffle_length_groups=True)` uses)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_bigsmall.data import ShuffledLengthGroupedSampler

    class _Trainer(Trainer):  # the benchmark's own: the quickstart's students draw through DistillationTrainer
        def _get_train_sampler(self, train_dataset=None):
            if strategy != "shuffled groups":
                return super()._get_train_sampler(train_dataset)
            return ShuffledLengthGroupedSampler([len(ids) for ids in data["train"]["input_ids"]],
                                                self.args.train_batch_size, seed=args.seed)

    arguments = TrainingArguments(output_dir=str(WORK / "trainer"), report_to="none", use_cpu=True, seed=args.seed,
                                  per_device_train_batch_size=args.batch_size, max_steps=steps, save_strategy="no",
                                  learning_rate=1e-4, disable_tqdm=True,
                                  train_sampling_strategy="group_by_length" if strategy != "random" else "random")
    return _Trainer(model=model, args=arguments, train_dataset=data["train"],
                    data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)


def bench_padding(args) -> dict:
    from transformers import AutoModelForSequenceClassification

    from hf_bigsmall import assets

    tokenizer, data = _data(args.max_length)
    model = AutoModelForSequenceClassification.from_pretrained(assets.minilm_path(), num_labels=2)
    results = {}
    for strategy in ("random", "group_by_length", "shuffled groups"):
        batches = _batches(_trainer(strategy, model, data, tokenizer, args))
        real = sum(sum(batch) for batch in batches)
        padded = sum(max(batch) * len(batch) for batch in batches)
        results[strategy] = {"batches": len(batches), "real_tokens": real, "padded_tokens": padded,
                             "efficiency": round(real / padded, 4)}
        print(f"{strategy:>16}: {len(batches)} batches, {real:,} tokens in {padded:,} padded ({real / padded:.1%})")
    for strategy in ("group_by_length", "shuffled groups"):
        print(f"padded tokens, {strategy} / random: "
              f"{results[strategy]['padded_tokens'] / results['random']['padded_tokens']:.3f}")
    return results


def bench_training(args) -> dict:
    from transformers import AutoModelForSequenceClassification

    from hf_bigsmall import assets, make_student

    torch.manual_seed(0)
    tokenizer, data = _data(args.max_length)
    teacher = AutoModelForSequenceClassification.from_pretrained(assets.minilm_path(), num_labels=2)
    student = make_student(teacher, num_layers=3)
    seconds: dict[str, list[float]] = {"random": [], "shuffled groups": []}
    for round_index in range(args.rounds):
        order = ["random", "shuffled groups"] if round_index % 2 == 0 else ["shuffled groups", "random"]
        for strategy in order:
            copy = type(student)(student.config)
            copy.load_state_dict(student.state_dict())
            trainer = _trainer(strategy, copy, data, tokenizer, args, steps=args.steps)
            start = time.perf_counter()
            trainer.train()
            seconds[strategy].append((time.perf_counter() - start) / args.steps)
            print(f"round {round_index + 1} {strategy:>16}: {seconds[strategy][-1]:.3f} s/step", flush=True)
    ratios = [grouped / plain for grouped, plain in zip(seconds["shuffled groups"], seconds["random"])]
    summary = {strategy: statistics.median(values) for strategy, values in seconds.items()}
    print(f"median s/step: random {summary['random']:.3f}, grouped {summary['shuffled groups']:.3f}; "
          f"grouped / random per round {[round(r, 3) for r in ratios]} (median {statistics.median(ratios):.3f})")
    return {"seconds_per_step": seconds, "median": summary, "ratios": ratios}


def bench_labelling(args) -> dict:
    from transformers import AutoModelForSequenceClassification

    import hf_bigsmall
    from hf_bigsmall import assets

    if not args.before:
        raise SystemExit("labelling compares two copies of the package: pass --before PATH (an hf_bigsmall folder)")
    from bench_distillation import import_package_copy

    import_package_copy(args.before)
    import importlib

    before = importlib.import_module("hf_bigsmall_before.distillation.cache")
    copies = {"this": hf_bigsmall.cache_teacher_logits, "before": before.cache_teacher_logits}
    _, data = _data(args.max_length)
    rows = data["train"]
    teacher = AutoModelForSequenceClassification.from_pretrained(assets.minilm_path(), num_labels=2).eval()
    seconds: dict[str, list[float]] = {name: [] for name in copies}
    for round_index in range(args.rounds):
        order = ["before", "this"] if round_index % 2 == 0 else ["this", "before"]
        for name in order:
            folder = WORK / f"cache-{name}"
            shutil.rmtree(folder, ignore_errors=True)  # the benchmark's own scratch
            start = time.perf_counter()
            copies[name](teacher, rows, folder, batch_size=64, disable_tqdm=True)
            seconds[name].append(time.perf_counter() - start)
            print(f"round {round_index + 1} {name:>6}: {seconds[name][-1]:.1f} s for {len(rows):,} rows", flush=True)
    ratios = [this / old for this, old in zip(seconds["this"], seconds["before"])]
    print(f"median s: before {statistics.median(seconds['before']):.1f}, this {statistics.median(seconds['this']):.1f};"
          f" this / before per round {[round(r, 3) for r in ratios]} (median {statistics.median(ratios):.3f})")
    return {"seconds": seconds, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["padding", "training", "labelling"])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round (training)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--before", default=None, help="labelling: the hf_bigsmall folder of another checkout")
    parser.add_argument("--output", default=None, help="write the results here as JSON")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    result = {"padding": bench_padding, "training": bench_training, "labelling": bench_labelling}[args.part](args)
    result["threads"] = torch.get_num_threads()
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
