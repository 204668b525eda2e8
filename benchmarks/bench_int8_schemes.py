"""ONNX Runtime int8 schemes for the quickstart's teacher and student: which one serves the comparison best.

For each quickstart folder given (one per seed), the fp32 `teacher` and `student-trimmed` are exported to
ONNX once and quantized with each scheme; every test review is scored alone (batch size 1, unpadded, as
served and as `compare` scores dynamic int8), with the teacher and the student of a scheme run in turn on
each review. Printed per scheme: accuracy of both, the gap (teacher minus student, points), agreement of
each int8 model's predictions with its own fp32 ones, the file sizes, and the batch-1 p50 of the calling
thread's CPU time (one ONNX Runtime thread), which other processes on a loaded machine stretch far less
than wall time (both are printed). All the schemes of a folder run in turn on each review (their order
reversed every other review), or on `--block` reviews at a time, so the load of the machine reaches them
alike and their times compare side by side; the largest logit change from the fp32 export over the test set is printed too.

The `fused` schemes export with eager attention and fuse the graph with ONNX Runtime's transformer optimizer
(`Attention`, `SkipLayerNormalization`, `EmbedLayerNormalization`, `BiasGelu`; `onnx.fuse_transformer_graph`)
before the default dynamic quantization (`fused`) or none (`fused fp32`); `fused, attention unfused` fuses all
but the attention.

Static schemes calibrate on 256 training reviews (seeded), one at a time. Percentile and entropy
calibration need equal-length calibration tensors in onnxruntime 1.32 and are not offered.

    python benchmarks/bench_int8_schemes.py out-s42 out-s0 out-s1 --scratch /tmp/int8-schemes
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import numpy as np


def _dynamic(exclude=None, **options):
    """What `quantize` does (int8 weights with a scale per output channel), with `options` changed."""
    def quantize(source: Path, target: Path, calibration, model_dir: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=exclude(source) if exclude else None, **options)
    return quantize


def _static(**options):
    def quantize(source: Path, target: Path, calibration, model_dir: Path) -> None:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter(calibration())

            def get_next(self):
                return next(self.feeds, None)

        settings = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QInt8,
                    "weight_type": QuantType.QInt8, "op_types_to_quantize": ["MatMul"], **options}
        quantize_static(str(source), str(target), Reader(), **settings)
    return quantize


def _fuse(source: Path, target: Path, model_dir: Path, attention: bool) -> dict[str, int]:
    """ONNX Runtime's transformer optimizer on an eager-attention export (the SDPA graph's attention does not
    match its patterns); opt_level=1 keeps to hardware-independent rewrites. Returns the operators fused."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    options = FusionOptions("bert")
    options.enable_attention = attention
    optimized = optimize_model(str(source), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size, optimization_options=options, opt_level=1)
    optimized.save_model_to_file(str(target))
    return {operator: count for operator, count in optimized.get_fused_operator_statistics().items() if count}


def _fused(quantized: bool = True, attention: bool = True):
    """Eager-attention export, fused by ONNX Runtime's transformer optimizer, then `quantize`'s dynamic int8."""
    def quantize(source: Path, target: Path, calibration, model_dir: Path) -> None:
        import onnx

        eager = source.with_name(f"{source.stem}-eager.onnx")
        if not eager.exists():
            _export(model_dir, eager, attn_implementation="eager")
        fused = target.with_name(f"{target.stem}-fused-fp32.onnx") if quantized else target
        fusions = _fuse(eager, fused, model_dir, attention)
        print(f"{model_dir}: fused {fusions}", flush=True)
        if quantized:  # the quantizer's shape inference cannot type the outputs of the fused (contrib) operators
            _dynamic(extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})(fused, target, calibration, model_dir)
    return quantize


def _nodes(source: Path, keep) -> list[str]:
    import onnx

    return [node.name for node in onnx.load(str(source)).graph.node if keep(node)]


def _head(source: Path) -> list[str]:
    # the quantizer turns each Gemm into "<name>_MatMul" + Add before it reads nodes_to_exclude
    names = _nodes(source, lambda n: n.op_type in ("MatMul", "Gemm") and ("pooler" in n.name or "classifier" in n.name))
    return names + [f"{name}_MatMul" for name in names]


def _ffn_output(source: Path) -> list[str]:
    return _nodes(source, lambda n: n.op_type == "MatMul" and "/output/dense/" in n.name and "attention" not in n.name)


def schemes():
    from onnxruntime.quantization import QuantFormat, QuantType

    return {
        "fp32": None,
        "dynamic (default)": _dynamic(),
        "fused fp32": _fused(quantized=False),
        "fused": _fused(),
        "fused, attention unfused": _fused(attention=False),
        "dynamic, MatMul only": _dynamic(op_types_to_quantize=["MatMul"]),
        "dynamic, head fp32": _dynamic(exclude=_head),
        "dynamic, MatMul only, head fp32": _dynamic(op_types_to_quantize=["MatMul"], exclude=_head),
        "dynamic, FFN output fp32": _dynamic(exclude=_ffn_output),
        "dynamic, reduce_range": _dynamic(reduce_range=True),
        "static QDQ MinMax, MatMul": _static(),
        "static QOperator MinMax, MatMul, uint8 activations": _static(quant_format=QuantFormat.QOperator,
                                                                    activation_type=QuantType.QUInt8),
    }


def _export(model_dir: Path, target: Path, **load) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_bigsmall.quantization.onnx import _export as export
    from hf_bigsmall.quantization.onnx import _logits_module, model_input_names, probe_batch

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, **load).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    names = model_input_names(model, tokenizer)
    probe = probe_batch(tokenizer, names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    target.parent.mkdir(parents=True, exist_ok=True)
    export(_logits_module(model, names, False), tuple(probe[name] for name in names), target, names, axes)


def _feeds(model_dir: Path, input_names: list[str], texts: list[str], max_length: int) -> list[dict]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    feeds = []
    for text in texts:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        feeds.append({name: encoded[name].astype(np.int64) if name in encoded else np.zeros_like(encoded["input_ids"])
                      for name in input_names})
    return feeds


def _session(path: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="quickstart output folders (teacher/, student-trimmed/)")
    parser.add_argument("--scratch", type=Path, required=True, help="where the ONNX files are written")
    parser.add_argument("--schemes", nargs="*", help="a subset of the schemes, by name")
    parser.add_argument("--max_length", type=int, default=64, help="the quickstart's truncation")
    parser.add_argument("--calibration_reviews", type=int, default=256)
    parser.add_argument("--max_reviews", type=int, default=None, help="score only the first N test reviews")
    parser.add_argument("--block", type=int, default=1,
                        help="reviews each model runs in a row before the next one: 1 (the default) runs every model "
                             "in turn on each review, so each starts with the caches the others left; 25 keeps a "
                             "model's weights warm, as when it is served alone")
    args = parser.parse_args()

    from hf_bigsmall import assets

    data = assets.load_text_dataset(assets.ROTTEN_TOMATOES)
    texts, labels = data["test"]["text"][:args.max_reviews], np.array(data["test"]["label"][:args.max_reviews])
    picked = np.random.default_rng(0).choice(len(data["train"]), args.calibration_reviews, replace=False)
    calibration_texts = [data["train"]["text"][int(i)] for i in picked]
    roles = {"teacher": "teacher", "student": "student-trimmed"}
    available = schemes()
    chosen = args.schemes or list(available)
    results: dict[str, list[dict]] = {}
    for run in args.runs:
        fp32 = {}
        for role, folder in roles.items():
            fp32[role] = args.scratch / run.name / "fp32" / f"{role}.onnx"
            if not fp32[role].exists():
                _export(run / folder, fp32[role])
        input_names = {role: [i.name for i in _session(fp32[role]).get_inputs()] for role in roles}
        test_feeds = {role: _feeds(run / roles[role], input_names[role], texts, args.max_length) for role in roles}
        names = ["fp32"] + [s for s in chosen if s != "fp32"]
        paths = {}
        for name in names:
            for role, folder in roles.items():
                paths[name, role] = fp32[role]
                if available[name] is not None:
                    paths[name, role] = args.scratch / run.name / name.replace(" ", "_").replace(",", "") / f"{role}.onnx"
                    paths[name, role].parent.mkdir(parents=True, exist_ok=True)
                    available[name](fp32[role], paths[name, role], functools.partial(
                        _feeds, run / folder, input_names[role], calibration_texts, args.max_length), run / folder)
        sessions = {key: _session(path) for key, path in paths.items()}
        logits = {key: [] for key in paths}
        wall, cpu = {key: [] for key in paths}, {key: [] for key in paths}
        for start in range(0, len(texts), args.block):
            order = names if (start // args.block) % 2 == 0 else names[::-1]
            for role in roles:
                for name in order:  # in turn, so the machine's load reaches every scheme alike
                    for index in range(start, min(start + args.block, len(texts))):
                        started_wall, started_cpu = time.perf_counter(), time.thread_time()
                        output = sessions[name, role].run(["logits"], test_feeds[role][index])[0]
                        cpu[name, role].append(time.thread_time() - started_cpu)
                        wall[name, role].append(time.perf_counter() - started_wall)
                        logits[name, role].append(output[0])
        for name in names:
            row = {"run": run.name}
            for role in roles:
                scores, reference = np.array(logits[name, role]), np.array(logits["fp32", role])
                predictions = scores.argmax(-1)
                row[f"{role}_accuracy"] = float(np.mean(predictions == labels))
                row[f"{role}_agrees_with_fp32"] = float(np.mean(predictions == reference.argmax(-1)))
                row[f"{role}_max_logit_change"] = float(np.abs(scores - reference).max())
                row[f"{role}_mb"] = paths[name, role].stat().st_size / 2**20
                row[f"{role}_cpu_ms_p50"] = 1000 * statistics.median(cpu[name, role])
                row[f"{role}_wall_ms_p50"] = 1000 * statistics.median(wall[name, role])
            results.setdefault(name, []).append(row)
            print(name, json.dumps(row), flush=True)

    print("\n| scheme | teacher-int8 | student-int8 | gap (pt) | agree with fp32 (t / s) | max logit change (t / s) "
          "| MB (t / s) | CPU p50 ms (t / s) | x faster (CPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        def mean(key, rows=rows):
            return statistics.mean(row[key] for row in rows)
        print(f"| {name} | {mean('teacher_accuracy'):.4f} | {mean('student_accuracy'):.4f} | "
              f"{100 * (mean('teacher_accuracy') - mean('student_accuracy')):+.2f} | "
              f"{100 * mean('teacher_agrees_with_fp32'):.1f}% / {100 * mean('student_agrees_with_fp32'):.1f}% | "
              f"{max(row['teacher_max_logit_change'] for row in rows):.3g} / "
              f"{max(row['student_max_logit_change'] for row in rows):.3g} | "
              f"{mean('teacher_mb'):.1f} / {mean('student_mb'):.1f} | "
              f"{mean('teacher_cpu_ms_p50'):.2f} / {mean('student_cpu_ms_p50'):.2f} | "
              f"{mean('teacher_cpu_ms_p50') / mean('student_cpu_ms_p50'):.2f} |")
    if "dynamic (default)" in results:  # per-run ratios, measured side by side, then their mean
        print("\nCPU p50 of dynamic (default) / CPU p50 of the scheme (above 1: faster), teacher / student:")
        for name, rows in results.items():
            ratios = [statistics.mean(base[f"{role}_cpu_ms_p50"] / row[f"{role}_cpu_ms_p50"]
                                      for base, row in zip(results["dynamic (default)"], rows)) for role in roles]
            print(f"  {name}: {ratios[0]:.2f} / {ratios[1]:.2f}")


if __name__ == "__main__":
    main()
