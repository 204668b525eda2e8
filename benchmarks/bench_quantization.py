"""int8 on this CPU: which backend is fastest, and what the quickstart's `student-int8` gains.

Two measurements on a quickstart folder, each side by side in one process, in interleaved rounds so
a shared machine's load hits every candidate alike:

1. Backends, on the compacted student: PyTorch fp32, PyTorch's deprecated `quantize_dynamic` int8,
   ONNX Runtime fp32 (the same export), ONNX Runtime dynamic int8, and torchao's int8 configs when
   torchao is installed. Latency at batch size 1 (p50) and throughput at batch size 32.
2. The targets: `student-int8` against the fp32 `student-compact` it was made from: x faster at batch
   size 1, x smaller on disk, and accuracy on the whole test split.

    python benchmarks/bench_quantization.py bigsmall_output --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import warnings
from pathlib import Path


def _onnx_fp32_folder(model, tokenizer, source: Path, scratch: Path) -> Path:
    """The compacted student exported to ONNX without quantization, as a folder OnnxModelRunner loads."""
    from hf_bigsmall.quantization.onnx import (
        _export,
        _logits_module,
        model_input_names,
        probe_batch,
    )

    folder = scratch / "student-compact-onnx-fp32"
    folder.mkdir()
    names = model_input_names(model, tokenizer)
    probe = probe_batch(tokenizer, names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    _export(_logits_module(model, names, causal=False), tuple(probe[n] for n in names), folder / "model.onnx", names,
            axes)
    shutil.copy(source / "config.json", folder / "config.json")
    return folder


def _candidates(output_dir: Path, scratch: Path) -> dict:
    import torch
    from transformers import AutoTokenizer

    from hf_bigsmall.quantization import OnnxModelRunner
    from hf_bigsmall.reporting.compare import load_model
    from hf_bigsmall.utils.import_utils import is_torchao_available

    source = output_dir / "student-compact"
    fp32 = load_model(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    candidates = {"torch fp32": fp32}
    with warnings.catch_warnings():  # deprecated and scheduled for removal (pytorch/ao#2259): measured, not used
        warnings.simplefilter("ignore")
        candidates["torch quantize_dynamic int8"] = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    candidates["onnxruntime fp32"] = OnnxModelRunner(_onnx_fp32_folder(fp32, tokenizer, source, scratch))
    candidates["onnxruntime int8 (student-int8)"] = OnnxModelRunner(output_dir / "student-int8")
    if is_torchao_available():
        from torchao.quantization import (
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )

        for label, config in (("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig()),
                              ("torchao int8 weight-only", Int8WeightOnlyConfig())):
            model = copy.deepcopy(fp32)
            quantize_(model, config)
            candidates[label] = model
    return candidates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="folder written by `hf-bigsmall quickstart`")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=256, help="samples of the throughput pass")
    parser.add_argument("--latency_samples", type=int, default=50)
    parser.add_argument("--max_length", type=int, default=64)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from hf_bigsmall import measure_inference
    from hf_bigsmall.assets import ROTTEN_TOMATOES, load_text_dataset
    from hf_bigsmall.reporting.compare import CLASSIFICATION, evaluate_quality, size_on_disk_mb

    test = load_text_dataset(ROTTEN_TOMATOES)["test"]
    tokenizer = AutoTokenizer.from_pretrained(args.output_dir / "student-compact")
    tokenized = test.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=args.max_length),
                         batched=True, remove_columns=[c for c in test.column_names if c != "label"])
    inputs = tokenized.remove_columns(["label"]).select(range(min(args.samples, len(tokenized))))

    with tempfile.TemporaryDirectory() as scratch:
        candidates = _candidates(args.output_dir, Path(scratch))
        results: dict[str, dict[str, list[float]]] = {name: {"p50": [], "tput": []} for name in candidates}
        for round_index in range(args.rounds):
            for name, model in candidates.items():
                measured = measure_inference(model, inputs, batch_size=32, latency_samples=args.latency_samples)
                results[name]["p50"].append(measured.latency_ms_p50)
                results[name]["tput"].append(measured.throughput_samples_per_s)
            print(f"round {round_index + 1}/{args.rounds} done", flush=True)
        quality = {name: evaluate_quality(candidates[name], tokenized, tokenizer, CLASSIFICATION)["accuracy"]
                   for name in ("torch fp32", "onnxruntime int8 (student-int8)")}

    medians = {name: {key: statistics.median(values) for key, values in r.items()} for name, r in results.items()}
    reference = medians["torch fp32"]
    print(f"\n{args.rounds} interleaved rounds, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"student-compact of {args.output_dir}")
    print("| Backend | p50 batch 1 (ms) | x faster | Throughput at 32 (/s) | x throughput |")
    print("| --- | --- | --- | --- | --- |")
    for name, m in medians.items():
        print(f"| {name} | {m['p50']:.2f} | {reference['p50'] / m['p50']:.2f} | {m['tput']:.1f} "
              f"| {m['tput'] / reference['tput']:.2f} |")

    int8 = medians["onnxruntime int8 (student-int8)"]
    fp32_mb = size_on_disk_mb(args.output_dir / "student-compact")
    int8_mb = size_on_disk_mb(args.output_dir / "student-int8")
    fp32_accuracy, int8_accuracy = quality["torch fp32"], quality["onnxruntime int8 (student-int8)"]
    print(f"\nstudent-int8 against student-compact (fp32), accuracy on all {len(tokenized)} test samples:")
    print("| | student-compact (fp32) | student-int8 | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| p50 batch 1 (ms) | {reference['p50']:.2f} | {int8['p50']:.2f} | {reference['p50'] / int8['p50']:.2f}x "
          f"faster | >= 1.5x |")
    print(f"| size on disk (MB) | {fp32_mb:.1f} | {int8_mb:.1f} | {fp32_mb / int8_mb:.2f}x smaller | >= 3.5x |")
    print(f"| accuracy | {fp32_accuracy:.4f} | {int8_accuracy:.4f} | {100 * (int8_accuracy - fp32_accuracy):+.2f} "
          f"points | within 0.5 |")


if __name__ == "__main__":
    main()
