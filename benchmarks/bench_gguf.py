"""Quality and size of SmolLM2's GGUF exports: held-out perplexity of each type against fp32.

    python benchmarks/bench_gguf.py --types q8_0 q5_0 q4_1 int4 --blocks 32

Each type is exported with `export_gguf` from the plain SmolLM2 checkpoint (`embedded/smollm2`),
read back with transformers' GGUF loader (which dequantizes the stored weights to float32) and
scored on the same `--blocks` blocks of 128 tokens from the start of the news corpus's held-out
split. This measures what each type does to the weights; llama.cpp's own kernels also quantize the
activations of Q8_0/Q4 matrix products, so its perplexity can differ slightly.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def news_blocks(tokenizer, count: int, size: int = 128) -> torch.Tensor:
    from hf_bigsmall.assets import load_news

    ids: list[int] = []
    for text in load_news()["test"]["text"]:
        ids += tokenizer(text)["input_ids"]
        if len(ids) >= count * size:
            break
    return torch.tensor(ids[: count * size]).view(count, size)


def perplexity(model, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        losses = [model(block[None], labels=block[None]).loss for block in blocks]
    return float(torch.stack(losses).mean().exp())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", nargs="+", default=["q8_0", "q5_0", "q4_1", "int4"])
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall.assets import smollm2_path
    from hf_bigsmall.quantization.gguf_export import export_gguf

    source = smollm2_path()
    blocks = news_blocks(AutoTokenizer.from_pretrained(source), args.blocks)
    fp32 = perplexity(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval(), blocks)
    rows = [{"type": "fp32 (transformers)", "perplexity": fp32, "change": 0.0}]
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.types:
            folder = export_gguf(source, Path(tmp) / method, method=method)
            record = json.loads((folder / "config.json").read_text())["quantization"]
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=record["file"], dtype=torch.float32)
            value = perplexity(model.eval(), blocks)
            rows.append({"type": record["method"], "perplexity": value, "change": value / fp32 - 1,
                         "megabytes": (folder / record["file"]).stat().st_size / 1e6})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
