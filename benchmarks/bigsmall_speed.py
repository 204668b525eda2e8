"""Speed of the quickstart's models, measured interleaved so a shared machine's load hits all alike.

`compare` measures one model after the other; on a machine shared with other work, a burst of load
can land on one of them. This re-measures the models of a quickstart folder in rounds
(teacher, student, pruned, compact, trimmed, teacher, ...) and prints the medians and the ratios to
the teacher. Each model reads the same texts through its own tokenizer (the trimmed student's differs).

    python benchmarks/bigsmall_speed.py bigsmall_output --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

MODELS = ("teacher", "student", "student-pruned", "student-compact", "student-trimmed", "student-int8", "teacher-int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="folder written by `hf-bigsmall quickstart`")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256, help="samples of the throughput/energy pass")
    parser.add_argument("--latency_samples", type=int, default=30)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from hf_bigsmall import measure_inference
    from hf_bigsmall.assets import ROTTEN_TOMATOES, load_text_dataset
    from hf_bigsmall.reporting.compare import load_model

    texts = load_text_dataset(ROTTEN_TOMATOES)["test"].select(range(args.samples))
    names = [name for name in MODELS if (args.output_dir / name / "config.json").is_file()]
    models = {name: load_model(args.output_dir / name) for name in names}
    data = {}
    for name in names:
        tokenizer = AutoTokenizer.from_pretrained(args.output_dir / name)
        data[name] = texts.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=64), batched=True,
                               remove_columns=texts.column_names)
    results: dict[str, dict[str, list[float]]] = {name: {"p50": [], "p95": [], "tput": [], "jps": []} for name in names}
    for round_index in range(args.rounds):
        for name, model in models.items():
            measured = measure_inference(model, data[name], batch_size=32, latency_samples=args.latency_samples)
            for key, value in (("p50", measured.latency_ms_p50), ("p95", measured.latency_ms_p95),
                               ("tput", measured.throughput_samples_per_s), ("jps", measured.joules_per_sample)):
                results[name][key].append(value)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    medians = {name: {key: statistics.median(values) for key, values in r.items()} for name, r in results.items()}
    teacher = medians["teacher"]
    print(f"\n{args.rounds} interleaved rounds, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| Model | p50 (ms) | p95 (ms) | x faster (p50) | Throughput (/s) | x throughput | J/sample |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, m in medians.items():
        print(f"| `{name}` | {m['p50']:.2f} | {m['p95']:.2f} | {teacher['p50'] / m['p50']:.2f} | {m['tput']:.1f} "
              f"| {m['tput'] / teacher['tput']:.2f} | {m['jps']:.4f} |")


if __name__ == "__main__":
    main()
