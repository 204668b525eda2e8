"""Distil a BERT-family sequence classifier into a smaller student.

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_text_classification.py

With no argument it runs offline on the embedded defaults in a few minutes on a 2-core CPU:
all-MiniLM-L6-v2 (6 layers, no task head, so it is fine-tuned first and saved for later runs) on
600 Rotten Tomatoes reviews, distilled into a 3-layer student copied from its layers. Arguments
come from the command line or a YAML file (every `DistillationConfig` field and the fields below):

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_text_classification.py \
        recipes/configs/distill_text_classification.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml recipes/distill_text_classification.py \
        --teacher_model_name_or_path bert-base-uncased --dataset_name rotten_tomatoes \
        --student_num_layers 6 --max_train_samples -1 --num_train_epochs 3

Distil on more text than the labelled set: unlabelled reviews the teacher labels (here the full
Rotten Tomatoes corpus, the labelled dataset's reviews removed) and augmented copies of the training
texts (TinyBERT word replacement), both off by default:

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_text_classification.py \
        --transfer_set embedded/rotten_tomatoes_full --transfer_samples 4000 --augment_ratio 1 --cache_teacher_logits

Distil from cached teacher logits (the teacher runs once over the training set, not every step):

    accelerate launch --config_file accelerate_configs/cpu.yaml recipes/distill_text_classification.py \
        --teacher_logits outputs/teacher_logits    # a cache made earlier (--cache_teacher_logits)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
)

from hf_bigsmall import DistillationConfig, DistillationTrainer, EnergyCallback, assets, make_student
from hf_bigsmall.energy.lineage import build_lineage, save_lineage
from hf_bigsmall.tasks import CompressionArguments, parse_recipe_args
from hf_bigsmall.tasks.teacher_logits import TeacherLogitsArguments
from hf_bigsmall.tasks.transfer import TransferArguments
from hf_bigsmall.tasks.text_classification import accuracy, classification_teacher, load_classification_dataset
from hf_bigsmall.utils.distributed import shutdown_process_group
from hf_bigsmall.utils.files import atomic_write_json


@dataclass
class ScriptArguments(TransferArguments, TeacherLogitsArguments, CompressionArguments):
    teacher_model_name_or_path: str = field(
        default=assets.MINILM,
        metadata={"help": "Teacher: a folder, a Hub id or an embedded asset. Fine-tuned first if it has no classification head."},
    )
    teacher_output_dir: str | None = field(
        default=None,
        metadata={"help": "Where a fine-tuned teacher is saved, and reused from by a run with the same inputs (default: <output_dir>/teacher)."},
    )
    teacher_num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs of teacher fine-tuning."})
    teacher_learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of teacher fine-tuning."})
    student_num_layers: int = field(default=3, metadata={"help": "Layers of the student made from the teacher."})
    student_hidden_size: int | None = field(
        default=None, metadata={"help": "Width of the student (default: the teacher's, initialised from its layers)."}
    )
    dataset_name: str = field(
        default=assets.ROTTEN_TOMATOES, metadata={"help": "Embedded dataset name or Hub dataset id."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class."})
    max_length: int = field(default=64, metadata={"help": "Tokens kept per text."})
    max_train_samples: int = field(default=600, metadata={"help": "Training texts used; -1 for all."})
    max_eval_samples: int = field(default=200, metadata={"help": "Evaluation texts used; -1 for all."})


def main(script_args: ScriptArguments, training_args: DistillationConfig) -> dict:
    script_args.check_teacher(script_args.teacher_model_name_or_path)  # before anything trains
    teacher_name = script_args.teacher_model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_model(teacher_name))
    dataset = load_classification_dataset(
        tokenizer, script_args.dataset_name, script_args.text_column, script_args.label_column,
        max_length=script_args.max_length,
        max_train_samples=None if script_args.max_train_samples < 0 else script_args.max_train_samples,
        max_eval_samples=None if script_args.max_eval_samples < 0 else script_args.max_eval_samples,
        seed=training_args.seed,
    )
    teacher_dir = script_args.teacher_output_dir or str(Path(training_args.output_dir) / "teacher")
    teacher_path = classification_teacher(
        teacher_name, dataset, tokenizer, teacher_dir,
        num_train_epochs=script_args.teacher_num_train_epochs, learning_rate=script_args.teacher_learning_rate,
        per_device_train_batch_size=training_args.per_device_train_batch_size, seed=training_args.seed,
        use_cpu=training_args.use_cpu, bf16=training_args.bf16,
        # what fine-tuning the big model cost goes into its energy.json, and from there into the student's lineage
        callbacks=[EnergyCallback(training_type="fine-tuning", country_iso_code=script_args.country_iso_code)]
        if script_args.measure_energy else [],
    )
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_path)
    student = make_student(teacher, script_args.student_num_layers, hidden_size=script_args.student_hidden_size)
    student.config.distillation["teacher"] = teacher_name

    # --transfer_set / --augment_ratio: unlabelled rows (labels -100) the teacher labels, beside the labelled ones
    train_dataset = script_args.mixed_train_dataset(
        teacher, tokenizer, student, dataset["train"], script_args.dataset_name, training_args.output_dir,
        training_args.seed, script_args.max_length, script_args.text_column)
    # --cache_teacher_logits / --teacher_logits: the teacher runs once, before training, not every step
    cached_train = script_args.teacher_logits_dataset(teacher, train_dataset, training_args)
    trainer = DistillationTrainer(
        model=student, teacher_model=None if cached_train is not None else teacher, args=training_args,
        train_dataset=train_dataset if cached_train is None else cached_train,
        eval_dataset=dataset["eval"], data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer, compute_metrics=accuracy, callbacks=script_args.callbacks(),
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(training_args.output_dir)
    if script_args.measure_energy and trainer.is_world_process_zero():
        # emissions.json: the distillation plus the teacher's fine-tuning, each counted once (the card's CO2)
        save_lineage(training_args.output_dir, build_lineage(training_args.output_dir, [teacher_path],
                                                             name="student", run="distillation"))
    trainer.create_model_card(dataset=script_args.dataset_name)  # README.md: how the student was made
    compacted = script_args.save_compacted(trainer, dataset=script_args.dataset_name)
    if trainer.is_world_process_zero():
        atomic_write_json(Path(training_args.output_dir, "eval_results.json"), metrics)
        teacher_results = Path(teacher_path) / "teacher_eval_results.json"
        teacher_accuracy = round(json.loads(teacher_results.read_text())["eval_accuracy"], 3) if teacher_results.is_file() else "n/a"
        print(
            f"Teacher ({teacher.num_parameters() / 1e6:.1f} M params, eval accuracy {teacher_accuracy}): {teacher_path}\n"
            f"Student ({student.num_parameters() / 1e6:.1f} M params, eval accuracy {metrics['eval_accuracy']:.3f}): "
            f"{Path(training_args.output_dir).resolve()}"
            + (f"\nCompacted student: {compacted.resolve()}"
               if compacted else "")
        )
    return metrics


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, DistillationConfig]:
    defaults = dict(
        output_dir="outputs/distill_text_classification", num_train_epochs=1.0, learning_rate=1e-4,
        per_device_train_batch_size=16, per_device_eval_batch_size=64, logging_steps=10,
        eval_strategy="no", save_strategy="no", report_to="none",
    )
    return parse_recipe_args(ScriptArguments, defaults, argv)


if __name__ == "__main__":
    main(*parse_args())
    shutdown_process_group()
