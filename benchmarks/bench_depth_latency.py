"""Batch-1 latency of int8 classifiers of every depth and FFN width, side by side, one review at a time.

    python benchmarks/bench_depth_latency.py --teacher out/teacher --reference out/teacher-int8 \
        --models out/student-int8 --shapes 3x384 3x256 2x1152 2x768 2x512 1x1536 --work_dir /tmp/depth

Each `LxF` shape is a student of L layers and an FFN of F neurons made from `--teacher` by
`make_student(..., initialize_from_teacher=False)` (shapes only: speed does not depend on the weights)
and quantized to dynamic int8 like the quickstart's (`quantize(..., method="int8")`), once per work
folder. Every model then runs each test review in turn, unpadded, as a served model gets it (the order
reversed every other review), in one process with one ONNX Runtime session per model, so they all meet
the same machine state; the table gives each model's p50 and the reference's p50 over it.

One thread only by default: with several sessions of several intra-op threads each, their spinning
thread pools compete for the cores, and interleaving them measures that contention (use `compare` one
model after the other for two threads).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _shape(text: str) -> tuple[int, int]:
    layers, _, width = text.partition("x")
    if not (layers.isdigit() and width.isdigit()):
        raise argparse.ArgumentTypeError(f"a shape is LAYERSxFFN, e.g. 2x768, got {text!r}")
    return int(layers), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, help="the fp32 classifier the shapes are made from")
    parser.add_argument("--reference", required=True, help="an int8 folder the others are compared with")
    parser.add_argument("--models", nargs="*", default=[], help="more int8 folders (e.g. the quickstart's student)")
    parser.add_argument("--shapes", nargs="*", type=_shape, default=[])
    parser.add_argument("--reviews", type=int, default=300)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work_dir", default="/tmp/bench_depth_latency")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_bigsmall import assets, make_student
    from hf_bigsmall.quantization import quantize

    work = Path(args.work_dir)
    folders = {"reference": Path(args.reference), **{Path(m).name: Path(m) for m in args.models}}
    if args.shapes:
        teacher = AutoModelForSequenceClassification.from_pretrained(args.teacher)
        tokenizer = AutoTokenizer.from_pretrained(args.teacher)
        for layers, width in args.shapes:
            name = f"{layers} layers, FFN {width}"
            target = work / f"L{layers}F{width}-int8"
            if not (target / "model.onnx").is_file():
                source = work / f"L{layers}F{width}"
                make_student(teacher, num_layers=layers, intermediate_size=width,
                             initialize_from_teacher=False).save_pretrained(source)
                tokenizer.save_pretrained(source)
                quantize(source, target, method="int8")
            folders[name] = target

    texts = assets.load_text_dataset(assets.ROTTEN_TOMATOES)["test"]["text"][: args.reviews]
    sessions, feeds = {}, {}
    for name, folder in folders.items():
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        inputs = {node.name for node in session.get_inputs()}
        tokenizer = AutoTokenizer.from_pretrained(folder)
        sessions[name] = session
        feeds[name] = [{key: value.astype(np.int64) for key, value in
                        tokenizer(text, truncation=True, max_length=args.max_length, return_tensors="np").items()
                        if key in inputs} for text in texts]
        for feed in feeds[name][:20]:  # warm-up
            session.run(None, feed)

    times: dict[str, list[float]] = {name: [] for name in folders}
    order = list(folders)
    for index in range(len(texts)):
        for name in order if index % 2 == 0 else order[::-1]:
            tic = time.perf_counter()
            sessions[name].run(None, feeds[name][index])
            times[name].append(time.perf_counter() - tic)
    reference = statistics.median(times["reference"])
    print(f"| int8 model | p50 ms ({args.threads} thread(s), {len(texts)} reviews, unpadded) | x faster than the reference |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        p50 = statistics.median(values)
        print(f"| {name} | {p50 * 1000:.3f} | {reference / p50:.2f} |")


if __name__ == "__main__":
    main()
