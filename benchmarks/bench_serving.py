"""Serving causal LMs on CPU: transformers fp32 against llama.cpp and ONNX Runtime GenAI, side by side.

    python benchmarks/bench_serving.py --engines transformers gguf:f32 gguf:q8_0 gguf:int4 \
        genai:fp32 genai:int8 genai:int4 --threads 1 2 --rounds 3 --work_dir /tmp/serving

For each model (`--models name=folder`; default the embedded SmolLM2 as `teacher` and, as `student`, a
15-layer cut of it made with `make_student`, untrained, so its perplexity only shows what the engines
keep) and each engine, it reports the size on disk, held-out perplexity on `--blocks` evenly spaced
128-token blocks of the embedded news corpus (from each engine's own logits, same tokens), and at batch 1
the prefill latency of a `--prompt_tokens` prompt and the decode speed of `--new_tokens` greedy tokens.
An export already in `--work_dir` is reused only when made from the same model folder as it is now, with the same
settings, kit code and engine versions (`benchmarks/_reuse.py`); otherwise it is made again. Every measurement runs in its own process (no engine warms another's caches), rounds are interleaved
(round 1 of every engine and thread count, then round 2, ...), and medians over rounds are reported.
An engine spec `genai:int4:block_size=128:accuracy_level=1` passes builder settings to the export;
`gguf:<method>` exports with `export_gguf` (`f32`, `q8_0`, `int4` = Q4_K_M where the widths allow it,
else Q4_0, ...) and runs the file with llama-cpp-python (f16 KV cache, as llama.cpp serves by default).
The summary adds, per engine and thread count, each model's decode speed over the transformers fp32
teacher's and the student's over the teacher's in the same engine and precision, from the medians.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _reuse


def _blocks(tokenizer, count: int):
    from hf_bigsmall import assets
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    held_out = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=128)["eval"]
    step = max(len(held_out) // count, 1)
    return [held_out[i]["input_ids"] for i in range(0, step * count, step)][:count]


def _worker(spec: dict) -> dict:
    """One measurement in this process: perplexity (if asked) and batch-1 prefill/decode timing."""
    import torch

    torch.set_num_threads(spec["threads"])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall.energy.generation import measure_generation

    tokenizer = AutoTokenizer.from_pretrained(spec["folder"])
    blocks = _blocks(tokenizer, max(spec["blocks"], 4))
    if spec["engine"] == "transformers":
        model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32).eval()

        def logits_of(ids):
            with torch.inference_mode():
                return model(torch.tensor([ids])).logits[0]

        def timing(prompts):
            return measure_generation(model, prompts, new_tokens=spec["new_tokens"])
    else:
        if spec["engine"] == "gguf":
            from hf_bigsmall.quantization.gguf_runner import LlamaCppModelRunner as Runner
        else:
            from hf_bigsmall.quantization.genai import GenAIModelRunner as Runner
        runner = Runner(spec["folder"], num_threads=spec["threads"])

        def logits_of(ids):
            return torch.from_numpy(runner.prompt_logits(ids))

        def timing(prompts):
            return runner.measure_generation(prompts, new_tokens=spec["new_tokens"])

    result = {}
    if spec["quality"]:
        nll, tokens = 0.0, 0
        for ids in blocks[: spec["blocks"]]:
            logits = logits_of(ids)[:-1].float()
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            tokens += len(ids) - 1
        result["perplexity"] = math.exp(nll / tokens)
        result["tokens"] = tokens
    prompts = torch.tensor([ids[: spec["prompt_tokens"]] for ids in blocks[:3]])
    measured = timing(prompts)
    result.update(prefill_ms=measured.prefill_ms_p50, decode_tokens_per_s=measured.decode_tokens_per_s)
    return result


def _student(teacher: Path, work_dir: Path) -> Path:
    folder = work_dir / "student-15-layers"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import make_student

    teacher_model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32)
    student = make_student(teacher_model, num_layers=15)
    student.save_pretrained(folder)
    AutoTokenizer.from_pretrained(teacher).save_pretrained(folder)
    return folder


def _engine_settings(engine: str) -> tuple[str, dict[str, str]]:
    """`genai:int4:block_size=16:matmul_mixed_precision=last_matmul:int8` -> ("int4", {...}): a piece
    without `=` belongs to the setting before it (the builder's own values may hold colons)."""
    _, scheme, *pieces = engine.split(":")
    settings: list[str] = []
    for piece in pieces:
        if "=" in piece or not settings:
            settings.append(piece)
        else:
            settings[-1] += ":" + piece
    return scheme, dict(setting.split("=", 1) for setting in settings)


def _disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.iterdir()
               if p.suffix in (".safetensors", ".onnx", ".gguf") or p.name.endswith(".onnx.data")) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="name=folder pairs (default: teacher and student)")
    parser.add_argument("--engines", nargs="+", default=["transformers", "gguf:f32", "gguf:q8_0", "gguf:int4",
                                                          "genai:fp32", "genai:int8", "genai:int4"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=32, help="held-out 128-token blocks for perplexity")
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--work_dir", default="/tmp/bench_serving")
    parser.add_argument("--output", default=None, help="write the results here as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))), flush=True)
        return
    if args.rounds < 1 or args.blocks < 1 or not 1 <= args.prompt_tokens <= 128 or args.new_tokens < 1:
        parser.error("--rounds, --blocks and --new_tokens must be positive and --prompt_tokens between 1 and 128")

    from hf_bigsmall import assets
    from hf_bigsmall.quantization.genai import export_genai
    from hf_bigsmall.quantization.gguf_export import export_gguf

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.models:
        models = dict(pair.split("=", 1) for pair in args.models)
    else:
        teacher = assets.smollm2_path()
        models = {"teacher": str(teacher), "student": str(_student(teacher, work_dir))}
    folders = {}  # (model, engine) -> folder the engine runs
    failed = {}  # (model, engine) -> why it could not be built or run
    for name, source in models.items():
        for engine in args.engines:
            if engine == "transformers":
                folders[name, engine] = Path(source)
                continue
            scheme, options = _engine_settings(engine)
            target = work_dir / f"{name}-{engine.replace(':', '-').replace('=', '').replace('/', '_').replace(',', '_')}"
            family = engine.split(":", 1)[0]
            if family not in ("gguf", "genai"):
                parser.error(f"unknown engine {engine!r}: use transformers, gguf:<method> or genai:<method>")
            settings = {"engine": engine}
            if _reuse.is_current(target, source, settings):
                print(f"{name} {engine}: reusing {target} (made from {source} as it is now, with these settings)",
                      file=sys.stderr, flush=True)
            else:  # missing, or made from another folder, other weights, settings, kit code or engine version: made again
                _reuse.forget(target)
                try:
                    if family == "gguf":
                        export_gguf(source, target, method=scheme)
                    else:
                        export_genai(source, target, scheme, builder_options=options)
                except Exception as error:  # a setting the builder or the engine refuses is a result too
                    failed[name, engine] = str(error).splitlines()[0][:300]
                    print(f"{name} {engine}: export failed: {failed[name, engine]}", file=sys.stderr, flush=True)
                    continue
                _reuse.record(target, source, settings)
            folders[name, engine] = target

    def run(key, threads: int, quality: bool) -> dict:
        spec = {"folder": str(folders[key]), "engine": key[1].split(":", 1)[0],
                "threads": threads, "quality": quality, "blocks": args.blocks,
                "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens}
        done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
        if done.returncode:
            return {"error": (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1][:300]}
        return json.loads(done.stdout.strip().splitlines()[-1])

    results = {key: {"disk_mb": _disk_mb(folder), "runs": {t: [] for t in args.threads}}
               for key, folder in folders.items()}
    for round_index in range(args.rounds):
        for threads in args.threads:
            for key in folders:
                if key in failed:
                    continue
                measured = run(key, threads, quality=round_index == 0 and threads == args.threads[0])
                if "error" in measured:
                    failed[key] = measured["error"]
                    print(f"{key}: failed: {measured['error']}", file=sys.stderr, flush=True)
                    continue
                if "perplexity" in measured:
                    results[key]["perplexity"] = measured["perplexity"]
                results[key]["runs"][threads].append(measured)
                print(f"round {round_index + 1} {threads} thread(s) {key}: {measured}", file=sys.stderr, flush=True)
            if args.output:  # after every round, so an interrupted run keeps what it measured
                _write_json(Path(args.output), results, failed)
    print(_table(results, failed, args.threads, teacher_name=next(iter(models))))


def _median_decode(result: dict, threads: int) -> float | None:
    runs = result["runs"].get(threads) or []
    return statistics.median(r["decode_tokens_per_s"] for r in runs) if runs else None


def _fp32_engine(engine: str) -> str:
    """The unquantized engine a quantized one is judged against: its own family's fp32."""
    family = engine.split(":", 1)[0]
    return {"gguf": "gguf:f32", "genai": "genai:fp32"}.get(family, "transformers")


def _table(results: dict, failed: dict, threads_list: list[int], teacher_name: str) -> str:
    """The markdown table: medians, perplexity over the same model's fp32 in the same engine, decode
    speed over the transformers fp32 teacher's, and a student's decode over its teacher's in the same engine."""
    reference = results.get((teacher_name, "transformers"))
    header = ["model", "engine", "disk MB", "perplexity", "x own fp32"]
    for threads in threads_list:
        header += [f"prefill ms ({threads}t)", f"decode tok/s ({threads}t)", f"x transformers teacher ({threads}t)",
                   f"student/teacher ({threads}t)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, engine), result in results.items():
        if (name, engine) in failed or "perplexity" not in result:
            continue
        own_fp32 = results.get((name, _fp32_engine(engine)), {}).get("perplexity")
        cells = [name, engine, f"{result['disk_mb']:.0f}", f"{result['perplexity']:.2f}",
                 f"{result['perplexity'] / own_fp32:.3f}" if own_fp32 else "-"]
        for threads in threads_list:
            runs = result["runs"].get(threads) or []
            decode = _median_decode(result, threads)
            base = _median_decode(reference, threads) if reference else None
            teacher = results.get((teacher_name, engine))
            teacher_decode = _median_decode(teacher, threads) if teacher and name != teacher_name else None
            cells += [f"{statistics.median(r['prefill_ms'] for r in runs):.1f}" if runs else "-",
                      f"{decode:.1f}" if decode else "-",
                      f"{decode / base:.2f}" if decode and base else "-",
                      f"{decode / teacher_decode:.2f}" if decode and teacher_decode else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"| {name} | {engine} | failed: {why} |" for (name, engine), why in failed.items()]
    return "\n".join(lines)


def _write_json(path: Path, results: dict, failed: dict) -> None:
    path.write_text(json.dumps({**{f"{n}|{e}": r for (n, e), r in results.items()},
                                **{f"{n}|{e}": {"failed": why} for (n, e), why in failed.items()}}, indent=2))

if __name__ == "__main__":
    main()
