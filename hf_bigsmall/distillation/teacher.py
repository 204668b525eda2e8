"""Loading, checking and preparing the frozen teacher of a distillation run."""

from __future__ import annotations

import copy
import os

import torch
from transformers import PreTrainedModel

from .. import assets
from ..utils.heads import task_head


def head_kind(model: PreTrainedModel) -> str | None:
    """The Auto class name of `model`'s task head, or None when it returns no `logits` (a bare backbone)."""
    head = task_head(type(model).__name__)
    return head.auto_class if head is not None and head.returns_logits else None


def load_teacher(name_or_path: str | os.PathLike, student: PreTrainedModel) -> PreTrainedModel:
    """Load a teacher with the same kind of task head as `student`, refusing one without that head.

    `name_or_path` is a local folder, an embedded asset name (`embedded/...`) or a Hub id. On an
    offline machine (`HF_HUB_OFFLINE=1`) a Hub id that is not in the local cache raises a
    `ValueError` at once instead of a network error in the middle of the set-up.
    """
    import transformers
    from huggingface_hub import is_offline_mode, try_to_load_from_cache

    auto_name = head_kind(student)
    if auto_name is None:
        raise ValueError(
            f"student {type(student).__name__} has no task head that returns logits: load it with an "
            "AutoModelFor... class (e.g. AutoModelForSequenceClassification, AutoModelForCausalLM)."
        )
    path = assets.resolve_model(name_or_path)
    if not os.path.isdir(path) and is_offline_mode():
        if not isinstance(try_to_load_from_cache(path, "config.json"), str):
            raise ValueError(
                f"teacher {path!r} is not a local folder and this machine is offline (HF_HUB_OFFLINE=1), "
                "with no cached copy: pass a local checkpoint folder (for example the embedded "
                f"{assets.MINILM!r}) or unset HF_HUB_OFFLINE on a machine with a network."
            )
    auto_class = getattr(transformers, auto_name)
    kwargs = {}
    if auto_name in ("AutoModelForSequenceClassification", "AutoModelForTokenClassification"):
        kwargs = {"num_labels": student.config.num_labels}
    teacher, info = auto_class.from_pretrained(path, output_loading_info=True, **kwargs)
    head_missing = [key for key in info.get("missing_keys", []) if not _is_backbone_key(teacher, key)]
    if head_missing:
        raise ValueError(
            f"teacher {str(name_or_path)!r} has no trained {auto_name[len('AutoModelFor'):]} head "
            f"(missing {sorted(head_missing)[:3]}): its logits would be random. Fine-tune a teacher "
            "first (hf_bigsmall.tasks.text_classification.train_teacher does this for classification)."
        )
    return teacher


def teacher_name(teacher: PreTrainedModel) -> str:
    """How a student records its teacher: the Hub id or folder it was loaded from, else its class.

    A local folder is recorded by its absolute path: a relative one would read as a Hub id (the
    card's `base_model`) once the working directory changes.
    """
    name = getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__
    return os.path.abspath(name) if os.path.isdir(name) else name


def _is_backbone_key(model: PreTrainedModel, key: str) -> bool:
    prefix = getattr(model, "base_model_prefix", "")
    return bool(prefix) and key.startswith(prefix + ".") and "pooler" not in key


def check_teacher_student(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    """Raise a `ValueError` that says what to do if `teacher` cannot teach `student`."""
    if not isinstance(teacher, PreTrainedModel) or not isinstance(student, PreTrainedModel):
        raise TypeError(
            "teacher_model and model must be transformers PreTrainedModel instances (or the teacher "
            f"a path), got {type(teacher).__name__} and {type(student).__name__}."
        )
    teacher_head, student_head = head_kind(teacher), head_kind(student)
    if teacher_head is None:
        raise ValueError(
            f"teacher {type(teacher).__name__} returns no logits (a bare backbone): load it with "
            f"{student_head or 'an AutoModelFor... class'} and fine-tune its head before distilling."
        )
    if teacher_head != student_head:
        raise ValueError(
            f"teacher ({type(teacher).__name__}) and student ({type(student).__name__}) have different "
            "task heads: both must be loaded with the same AutoModelFor... class."
        )
    teacher_vocab = teacher.config.get_text_config().vocab_size
    student_vocab = student.config.get_text_config().vocab_size
    if teacher_vocab != student_vocab:
        raise ValueError(
            f"teacher vocab_size {teacher_vocab} != student vocab_size {student_vocab}: both read the "
            "same input_ids, so they must share a tokenizer. Build the student from the teacher "
            "(make_student) or from a config with the teacher's tokenizer."
        )
    if teacher_head in ("AutoModelForSequenceClassification", "AutoModelForTokenClassification"):
        if teacher.config.num_labels != student.config.num_labels:
            raise ValueError(
                f"teacher has num_labels={teacher.config.num_labels} but the student has "
                f"{student.config.num_labels}: the soft targets must cover the same classes."
            )
        teacher_labels = {int(k): v for k, v in teacher.config.id2label.items()}
        student_labels = {int(k): v for k, v in student.config.id2label.items()}
        if teacher_labels != student_labels:
            raise ValueError(
                f"teacher id2label {teacher_labels} != student id2label {student_labels}: class i must "
                "mean the same thing to both. Give the student the teacher's id2label/label2id."
            )
        if teacher.config.problem_type not in (None, "single_label_classification") or teacher.config.num_labels < 2:
            raise ValueError(
                "distillation of classification needs single-label classification with num_labels >= 2 "
                f"(got problem_type={teacher.config.problem_type!r}, num_labels={teacher.config.num_labels})."
            )


def default_layer_map(student: PreTrainedModel, teacher_layers: int) -> list[int]:
    """Student layer i -> teacher layer: the layers it was copied from, else spread evenly, last aligned."""
    recorded = (getattr(student.config, "distillation", None) or {}).get("teacher_layers")
    student_layers = student.config.num_hidden_layers
    if recorded is not None and len(recorded) == student_layers and max(recorded) < teacher_layers:
        return [int(index) for index in recorded]
    # with 12 -> 6, student layer i matches teacher layer 2i + 1: each student layer does the work
    # of the block of teacher layers that ends there (TinyBERT's uniform mapping)
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def check_layer_map(layer_map: list[int], student: PreTrainedModel, teacher: PreTrainedModel) -> None:
    student_layers = student.config.num_hidden_layers
    teacher_layers = teacher.config.num_hidden_layers
    if len(layer_map) != student_layers:
        raise ValueError(
            f"layer_map has {len(layer_map)} entries but the student has {student_layers} layers: give "
            "one teacher layer per student layer."
        )
    out_of_range = [index for index in layer_map if not 0 <= index < teacher_layers]
    if out_of_range:
        raise ValueError(
            f"layer_map {layer_map} names teacher layers {out_of_range} but the teacher has "
            f"{teacher_layers} layers (0 to {teacher_layers - 1})."
        )


def prepare_deepspeed_teacher(teacher: PreTrainedModel, accelerator) -> torch.nn.Module:
    """Wrap a frozen teacher in a DeepSpeed inference engine that matches the student's ZeRO stage.

    Under ZeRO-3 the teacher is sharded like the student (stage 3, no optimizer), so a teacher
    larger than one GPU still fits; under ZeRO-1/2, which only shard optimizer states and gradients
    that a frozen teacher does not have, it runs as stage 0, one full copy per GPU.
    """
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        hidden_size = getattr(teacher.config.get_text_config(), "hidden_size", None)
        if isinstance(hidden_size, int):
            # bucket sizes tuned to the teacher's width, as the DeepSpeed ZeRO-3 inference docs advise
            zero.update(
                reduce_bucket_size=hidden_size * hidden_size,
                stage3_param_persistence_threshold=10 * hidden_size,
                stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
            )
    else:
        zero["stage"] = 0
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine
