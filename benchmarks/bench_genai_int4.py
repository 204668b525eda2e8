"""ONNX Runtime GenAI weight-only settings on one model: held-out perplexity, disk, and decode speed as ratios.

    python benchmarks/bench_genai_int4.py --variants int8 int4 int4:block_size=16 \
        int4:nodes_to_exclude=/lm_head/MatMul --blocks 16 --rounds 3 --work_dir /tmp/genai_int4
    python benchmarks/bench_genai_int4.py --variants transformers int4 int4:calibration=gptq --rounds 1

Each variant `scheme[:key=value...]` is exported from `--model` (default the embedded SmolLM2) with
`export_genai`, its builder settings passed as they are (a folder already in `--work_dir` is reused
only when made from the same model as it is now, with the same settings; names as `bench_serving.py` gives
them), and a variant the builder or the engine refuses is reported as
such. `calibration=gptq` is not a builder setting: that variant's 4-bit matrices are calibrated by GPTQ
(`export_genai(..., calibration=...)`) on `--calibration_blocks` 128-token blocks of the news corpus's
*training* split, evenly spaced (the scored blocks come from its held-out split). The CPU time of each
export made in this run (`time.process_time`, builder, calibration and checks) is printed beside it. `transformers` is the fp32 reference. Perplexity is exp(mean NLL) from each engine's own logits on
`--blocks` evenly spaced 128-token held-out blocks of the news corpus, as `bench_serving.py` scores it:
it does not depend on the machine's load. Decode speed is timed in this one process, in `--rounds`
interleaved rounds (every variant once per round, 1 thread, the same prompts), and reported as the
median over rounds of each variant's decode tokens/s divided by the first variant's in the same round:
on a loaded machine only such side-by-side ratios mean anything.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _reuse
from bench_serving import _blocks, _disk_mb, _engine_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a saved Llama-family folder (default: the embedded SmolLM2)")
    parser.add_argument("--name", default="teacher", help="prefix of the exported folders in --work_dir")
    parser.add_argument("--variants", nargs="+", default=["int8", "int4"])
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt_tokens", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--work_dir", default="/tmp/genai_int4")
    parser.add_argument("--calibration_blocks", type=int, default=32,
                        help="128-token training blocks that `calibration=gptq` variants calibrate on")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import assets
    from hf_bigsmall.energy.generation import measure_generation
    from hf_bigsmall.quantization.genai import GenAIModelRunner, export_genai

    source = Path(args.model or assets.smollm2_path())
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    blocks = _blocks(tokenizer, max(args.blocks, 4))
    prompts = torch.tensor([ids[: args.prompt_tokens] for ids in blocks[:3]])
    calibration = None

    rows: dict[str, dict] = {}
    runners = {}
    for variant in args.variants:
        if variant == "transformers":
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
            runners[variant] = model
            rows[variant] = {"disk_mb": _disk_mb(source)}
            continue
        engine = f"genai:{variant}"
        scheme, options = _engine_settings(engine)
        method = options.pop("calibration", None)
        if method not in (None, "gptq"):
            raise SystemExit(f"{variant}: calibration={method} is unknown; the kit calibrates with gptq")
        if method and calibration is None:
            calibration = _training_blocks(tokenizer, args.calibration_blocks)
        target = work_dir / f"{args.name}-{engine.replace(':', '-').replace('=', '').replace('/', '_').replace(',', '_')}"
        export_seconds = None
        try:
            settings = {"engine": engine, "calibration_blocks": args.calibration_blocks if method else None}
            if _reuse.is_current(target, source, settings):
                print(f"{variant}: reusing {target} (made from {source} as it is now, with these settings)",
                      file=sys.stderr, flush=True)
            else:  # missing, or made from another folder, other weights, settings, kit code or engine version: made again
                _reuse.forget(target)
                started = time.process_time()
                export_genai(source, target, scheme, builder_options=options,
                             calibration=calibration if method else None)
                export_seconds = time.process_time() - started
                _reuse.record(target, source, settings)
                print(f"{variant}: exported in {export_seconds:.1f} s of CPU time", file=sys.stderr, flush=True)
            runners[variant] = GenAIModelRunner(target, num_threads=1)
        except Exception as error:  # a setting the builder or the engine refuses is a result too
            rows[variant] = {"failed": str(error).splitlines()[0][:200]}
            print(f"{variant}: failed: {rows[variant]['failed']}", file=sys.stderr, flush=True)
            continue
        rows[variant] = {"disk_mb": _disk_mb(target), "export_s": export_seconds}

    for variant, runner in runners.items():
        nll, tokens = 0.0, 0
        for ids in blocks[: args.blocks]:
            if variant == "transformers":
                with torch.inference_mode():
                    logits = runner(torch.tensor([ids])).logits[0]
            else:
                logits = torch.from_numpy(runner.prompt_logits(ids))
            nll += float(torch.nn.functional.cross_entropy(logits[:-1].float(), torch.tensor(ids[1:]), reduction="sum"))
            tokens += len(ids) - 1
        rows[variant].update(perplexity=math.exp(nll / tokens), tokens=tokens, speed=[])
        print(f"{variant}: perplexity {rows[variant]['perplexity']:.3f}", file=sys.stderr, flush=True)

    for round_index in range(args.rounds):
        for variant, runner in runners.items():
            if variant == "transformers":
                measured = measure_generation(runner, prompts, new_tokens=args.new_tokens)
            else:
                measured = runner.measure_generation(prompts, new_tokens=args.new_tokens)
            rows[variant]["speed"].append(measured.decode_tokens_per_s)
            print(f"round {round_index + 1} {variant}: {measured.decode_tokens_per_s:.1f} tok/s", file=sys.stderr,
                  flush=True)

    first = next(iter(runners), None)
    reference = rows.get("transformers", {}).get("perplexity")
    scored = next((row["tokens"] for row in rows.values() if "tokens" in row), 0)
    print(f"| variant | disk MB | export CPU s | perplexity ({scored} tokens) | vs fp32 | decode tok/s (median) | "
          f"decode x `{first}` (median of per-round ratios) |")
    print("|---|---|---|---|---|---|---|")
    for variant, row in rows.items():
        if "failed" in row:
            print(f"| {variant} | - | - | failed: {row['failed']} | | | |")
            continue
        ratio = row["perplexity"] / reference if reference else None
        change = f"x{ratio:.3f} ({100 * (ratio - 1):+.1f}%)" if ratio else "-"
        ratios = [speed / base for speed, base in zip(row["speed"], rows[first]["speed"])]
        export = f"{row['export_s']:.0f}" if row.get("export_s") is not None else "-"
        speed = (f"{statistics.median(row['speed']):.1f} | {statistics.median(ratios):.2f}" if row["speed"]
                 else "- | -")
        print(f"| {variant} | {row['disk_mb']:.0f} | {export} | {row['perplexity']:.2f} | {change} | {speed} |")


def _training_blocks(tokenizer, count: int) -> list[list[int]]:
    """`count` evenly spaced 128-token blocks of the news corpus's training split (never the scored held-out ones)."""
    from hf_bigsmall import assets
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    train = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=128)["train"]
    step = max(len(train) // count, 1)
    return [train[i]["input_ids"] for i in range(0, step * count, step)][:count]


if __name__ == "__main__":
    main()
