"""Held-out perplexity of saved causal LMs on many evenly spaced blocks of a corpus's held-out split.

    python benchmarks/score_heldout.py /tmp/qs_def/teacher /tmp/qs_def/student --blocks 512

A quickstart's report scores 64 articles (about 8 k tokens) to stay fast; runs a few percent apart
need more tokens to be ranked. This scores every folder on the same `--blocks` blocks of
`--block_size` tokens spread evenly over the held-out split (512 x 128 = 65 k tokens by default),
in float32, with `held_out_perplexity`, and also on the even and the odd blocks separately: when the
two halves disagree by more than the gap between two models, the gap is noise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dirs", nargs="+", help="saved causal LM folders (from_pretrained)")
    parser.add_argument("--dataset", default=None, help="text corpus (default: the embedded news corpus)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the first model's)")
    parser.add_argument("--blocks", type=int, default=512)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="write the scores here as JSON")
    args = parser.parse_args()
    if args.blocks < 2 or args.blocks % 2:
        parser.error("--blocks must be an even number of at least 2: two halves of as many blocks")
    if args.block_size < 2 or args.batch_size < 1:
        parser.error("--block_size must be at least 2 and --batch_size at least 1")
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import assets
    from hf_bigsmall.tasks.causal_lm import held_out_perplexity, load_causal_lm_dataset

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model_dirs[0])
    held_out = load_causal_lm_dataset(tokenizer, args.dataset or assets.NEWS, block_size=args.block_size)["eval"]
    if len(held_out) < args.blocks:
        parser.error(f"the held-out split has {len(held_out)} blocks of {args.block_size} tokens: lower --blocks")
    step = len(held_out) // args.blocks
    blocks = held_out.select(range(0, step * args.blocks, step))
    halves = blocks.select(range(0, len(blocks), 2)), blocks.select(range(1, len(blocks), 2))
    scores = {}
    for folder in args.model_dirs:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        even, odd = (held_out_perplexity(model, half, args.batch_size) for half in halves)
        # the halves hold as many blocks of as many tokens, so the whole is their geometric mean
        scores[folder] = {"perplexity": math.sqrt(even * odd), "even_blocks": even, "odd_blocks": odd}
        print(f"{folder}: {scores[folder]['perplexity']:.2f} (halves {even:.2f} / {odd:.2f})", flush=True)
        del model
    tokens = sum(len(row) - 1 for row in blocks["input_ids"])
    print(f"{len(blocks)} blocks, {tokens:,} scored tokens of the held-out split")
    if args.output:
        Path(args.output).write_text(json.dumps({"blocks": len(blocks), "tokens": tokens, "scores": scores}, indent=2))


if __name__ == "__main__":
    main()
