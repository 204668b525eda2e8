"""The causal-LM quickstart's healing stage alone, in float32 or under bf16 autocast, from a run's folders.

    hf-bigsmall quickstart --task causal-lm --output_dir /tmp/qs_llm     # once: teacher/ and student-pruned/
    python benchmarks/bench_quickstart_healing.py --run_dir /tmp/qs_llm --bf16 false --output fp32.json &
    python benchmarks/bench_quickstart_healing.py --run_dir /tmp/qs_llm --bf16 true --output bf16.json &

Heals `student-pruned/` by distillation from `teacher/` exactly as the quickstart's default does (its own
training arguments, data, seed and budget: 120 steps of 4 x 128 tokens, KD + next-token loss, half each),
then scores the healed student's held-out perplexity as its report does (the first 64 test articles, 128
tokens each, batch 8: 7,996 predicted tokens). Run the two precisions at the same time, one thread each,
so that the machine's load hits both alike: the ratio of their healing times is the figure, not the times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True, help="a quickstart run's folder (teacher/, student-pruned/)")
    parser.add_argument("--bf16", choices=["true", "false"], required=True)
    parser.add_argument("--heal_steps", type=int, default=None, help="default: the quickstart's (120)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", required=True, help="JSON file for the figures")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator, set_seed

    from hf_bigsmall import DistillationConfig, DistillationTrainer, EnergyCallback
    from hf_bigsmall.quickstart_causal_lm import CausalLMQuickstartArguments, _training_arguments
    from hf_bigsmall.reporting.compare import CAUSAL_LM, _evaluation_data, _tokenize, evaluate_quality
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    torch.set_num_threads(args.threads)
    options = CausalLMQuickstartArguments(bf16=args.bf16 == "true", heal_steps=args.heal_steps)
    run_dir = Path(args.run_dir)
    set_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "teacher")
    teacher = AutoModelForCausalLM.from_pretrained(run_dir / "teacher", dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(run_dir / "student-pruned", dtype=torch.float32)
    train_samples = max(options.heal_steps * options.batch_size, options.calibration_samples)
    dataset = load_causal_lm_dataset(tokenizer, options.dataset, block_size=options.block_size, seed=options.seed,
                                     max_train_samples=train_samples)
    scratch = Path(args.output).with_suffix(".trainer")
    config = DistillationConfig(**_training_arguments(options, scratch, options.heal_steps, options.learning_rate),
                                temperature=options.temperature, alpha_kd=options.alpha_kd,
                                alpha_ce=1.0 - options.alpha_kd, alpha_hidden=options.alpha_hidden)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=dataset["train"],
                                  data_collator=default_data_collator, processing_class=tokenizer,
                                  callbacks=[EnergyCallback(training_type="distillation")])
    start = time.perf_counter()
    trainer.train()
    heal_s = time.perf_counter() - start

    # scored from the saved folder, as the quickstart's report does: the trained object's forward may still
    # carry the Trainer's autocast
    trainer.save_model(str(scratch / "student"))
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    del trainer, teacher, student
    student = AutoModelForCausalLM.from_pretrained(scratch / "student", dtype=torch.float32).eval()
    held_out, _ = _evaluation_data(options.dataset, CAUSAL_LM, split="test", text_column="text", label_column="label",
                                   max_samples=options.eval_samples, dataset_name=None)
    tokenized = _tokenize(held_out, tokenizer, CAUSAL_LM, "text", "label", options.block_size)
    metrics = evaluate_quality(student, tokenized, tokenizer, CAUSAL_LM, batch_size=8)
    figures = {"bf16": options.bf16, "threads": args.threads, "heal_steps": options.heal_steps,
               "heal_tokens": options.heal_steps * options.batch_size * options.block_size, "heal_s": round(heal_s, 1),
               "eval_tokens": sum(len(ids) - 1 for ids in tokenized["input_ids"]),
               "perplexity": metrics["perplexity"], "train_loss": losses[-1] if losses else None}
    Path(args.output).write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
