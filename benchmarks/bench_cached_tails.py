"""How precisely a teacher-logit cache stores the teacher's mass outside its top-k, on SmolLM2.

    python benchmarks/bench_cached_tails.py --blocks 16 --top_k 128

Runs SmolLM2-135M over news blocks of 128 tokens and, for every next-token position, compares the
log of the mass outside the top-k three ways against a float64 reference: the float32 difference
`log(1 - sum(top-k probabilities))` (what caches of format 1 stored), and `topk_targets` (the sum
over the excluded logits). It reports the share of positions whose tail is below 1e-6 and each
method's largest error in nats, and how many positions the difference stores as -inf.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import assets
    from hf_bigsmall.distillation.cache import topk_targets
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=16)
    parser.add_argument("--top_k", type=int, default=128)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
    data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=128, max_train_samples=args.blocks,
                                  max_eval_samples=1)
    teacher = AutoModelForCausalLM.from_pretrained(assets.smollm2_path()).eval()
    input_ids = torch.tensor(data["train"]["input_ids"])
    vocab_size = teacher.config.vocab_size
    with torch.no_grad():
        logits = torch.cat([teacher(input_ids=input_ids[start : start + 4]).logits[:, :-1].reshape(-1, vocab_size)
                            for start in range(0, len(input_ids), 4)]).float()
    ids, _, summed = topk_targets(logits, args.top_k)
    inside = torch.logsumexp(logits.log_softmax(-1).gather(1, ids), dim=-1).clamp(max=0.0)
    difference = torch.log(-torch.expm1(inside))
    reference = logits.double().log_softmax(-1).scatter(1, ids, float("-inf")).logsumexp(-1)
    finite = torch.isfinite(difference)
    print(f"{reference.numel()} positions, top-{args.top_k}: tail below 1e-6 at "
          f"{(reference < torch.tensor(1e-6).log().item()).double().mean().item():.2%}")
    print(f"float32 difference: -inf at {(~finite).double().mean().item():.2%}, largest error of the finite ones "
          f"{(difference.double() - reference)[finite].abs().max().item():.3f} nats")
    print(f"sum over the excluded logits: -inf at {torch.isneginf(summed).double().mean().item():.2%}, largest error "
          f"{(summed.double() - reference).abs().max().item():.2e} nats")


if __name__ == "__main__":
    main()
