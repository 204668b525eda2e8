"""Build a smaller student of the same family as a teacher, initialised from the teacher's layers."""

from __future__ import annotations

import copy
import re

import torch
from transformers import PreTrainedModel

from .record import DistillationRecord
from .teacher import teacher_name

# `encoder.layer.3.` (BERT), `transformer.h.3.` (GPT-2), `model.layers.3.` (Llama, Mistral, Qwen...)
_LAYER_KEY = re.compile(r"(^|\.)(layer|layers|h|block|blocks)\.(\d+)\.")


def spread_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers spread evenly over `student_layers`, first and last included.

    12 -> 6 gives [0, 2, 4, 7, 9, 11], the choice of DistilBERT (Sanh et al. 2019: "taking one
    layer out of two").
    """
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def make_student(
    teacher: PreTrainedModel,
    num_layers: int,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    teacher_layers: list[int] | str | None = None,
    initialize_from_teacher: bool = True,
    calibration_dataset=None,
    importance=None,
) -> PreTrainedModel:
    """Derive a smaller model of the teacher's class and family from the teacher's config.

    The student keeps the teacher's vocabulary, embeddings size (unless `hidden_size` changes),
    task head and label maps, with fewer layers. When the widths match, it is initialised from the
    teacher's embeddings, head and a spread of its layers (DistilBERT took one layer out of two);
    otherwise it is randomly initialised. How it was made is recorded in `student.config.distillation`
    (saved in `config.json`), e.g. `{"teacher": "bert-base-uncased", "teacher_layers": [0, 2, 4],
    "initialized_from_teacher": True}`; the `DistillationTrainer` adds its loss settings.

    Works for BERT, GPT-2 and decoders whose config has the usual fields (`num_hidden_layers`,
    `hidden_size`, `intermediate_size`, `num_attention_heads`, Llama's `head_dim` and
    `num_key_value_heads`). A `head_dim` that is not `hidden_size / num_attention_heads` (Qwen3-style
    configs, a teacher whose heads `prune_width` removed) is kept as it is, so width pruning then
    `make_student` works; one that is follows a new `hidden_size` or head count.

    Args:
        teacher (`PreTrainedModel`): the teacher, e.g. a `BertForSequenceClassification`.
        num_layers (`int`): number of layers of the student, at most the teacher's.
        hidden_size (`int`, *optional*): width of the student; default the teacher's.
        intermediate_size (`int`, *optional*): feed-forward width; default the teacher's, scaled
            with `hidden_size` when that changes.
        num_attention_heads (`int`, *optional*): default the teacher's.
        teacher_layers (`list[int]` or `"importance"`, *optional*): teacher layers to copy, one per
            student layer; default `spread_layers(teacher_layers, num_layers)`. `"importance"` keeps
            the `num_layers` blocks of highest Block Influence (ShortGPT, Men et al. 2024: the blocks
            that change their input most), measured on `calibration_dataset` (GPT-2 and Llama-style).
        initialize_from_teacher (`bool`): copy the teacher's weights when widths match.
        calibration_dataset (*optional*): tokenized samples (`input_ids`) for `teacher_layers="importance"`,
            e.g. `load_causal_lm_dataset(tokenizer, assets.NEWS)["train"]`; 128 samples are used.
        importance ([`~pruning.importance.Importance`], *optional*): an importance already measured on
            the teacher, used instead of `calibration_dataset`.

    Example:

    ```python
    >>> from transformers import BertConfig, BertForSequenceClassification
    >>> from hf_bigsmall import make_student
    >>> teacher = BertForSequenceClassification(BertConfig(num_hidden_layers=4, hidden_size=64,
    ...     num_attention_heads=4, intermediate_size=128, vocab_size=100))
    >>> student = make_student(teacher, num_layers=2)
    >>> student.config.distillation["teacher_layers"]
    [0, 3]
    ```
    """
    if not isinstance(teacher, PreTrainedModel):
        raise TypeError(f"teacher must be a transformers PreTrainedModel, got {type(teacher).__name__}.")
    teacher_config = teacher.config
    depth = _num_layers(teacher_config)
    if not 1 <= num_layers <= depth:
        raise ValueError(f"num_layers must be between 1 and the teacher's {depth} layers, got {num_layers}.")
    if teacher_layers is None:
        teacher_layers = spread_layers(depth, num_layers)
    selection = "evenly spaced" if not isinstance(teacher_layers, str) else teacher_layers
    if isinstance(teacher_layers, str):
        teacher_layers = _important_layers(teacher, num_layers, teacher_layers, calibration_dataset, importance)
    teacher_layers = [int(index) for index in teacher_layers]
    if len(teacher_layers) != num_layers or not all(0 <= index < depth for index in teacher_layers):
        raise ValueError(
            f"teacher_layers must list {num_layers} teacher layer indices in [0, {depth - 1}], got {teacher_layers}."
        )

    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = num_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[index] for index in teacher_layers]
    width = teacher_config.hidden_size
    if num_attention_heads is not None:
        config.num_attention_heads = num_attention_heads
    if hidden_size is not None and hidden_size != width:
        if hidden_size % config.num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not divisible by num_attention_heads "
                f"{config.num_attention_heads}: pick a multiple or pass num_attention_heads."
            )
        config.hidden_size = hidden_size
        if intermediate_size is None:
            intermediate_size = _scaled_intermediate(teacher_config, hidden_size / width)
    teacher_head_dim = getattr(teacher_config, "head_dim", None)
    follows_width = teacher_head_dim == width // teacher_config.num_attention_heads
    if teacher_head_dim is not None and follows_width:
        # the head size was hidden_size / heads, so it follows a new width; an explicit one (Qwen3-style
        # configs, or heads removed by prune_width) is the teacher's own and stays, or no weight would fit
        config.head_dim = config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None)
    if kv_heads is not None and config.num_attention_heads % kv_heads:
        config.num_key_value_heads = config.num_attention_heads
    if intermediate_size is not None:
        _set_intermediate(config, intermediate_size)

    same_width = (
        config.hidden_size == width
        and config.num_attention_heads == teacher_config.num_attention_heads
        and getattr(config, "head_dim", None) == teacher_head_dim
        and getattr(config, "num_key_value_heads", None) == getattr(teacher_config, "num_key_value_heads", None)
    )
    initialized = bool(initialize_from_teacher and same_width)
    DistillationRecord(
        teacher=teacher_name(teacher), teacher_class=type(teacher).__name__, teacher_num_layers=depth,
        teacher_layers=teacher_layers, initialized_from_teacher=initialized,
        layer_selection="block influence (ShortGPT)" if selection == "importance" else None,
    ).write(config)
    student = type(teacher)(config)
    if initialized:
        _copy_teacher_weights(student, teacher, teacher_layers)
    return student.to(next(teacher.parameters()).dtype)


def _important_layers(teacher, num_layers: int, how: str, calibration_dataset, importance) -> list[int]:
    """The `num_layers` teacher blocks of highest Block Influence, in model order."""
    if how != "importance":
        raise ValueError(f"teacher_layers must be a list of layer indices or 'importance', got {how!r}.")
    if importance is None:
        if calibration_dataset is None:
            raise ValueError(
                "teacher_layers='importance' needs calibration_dataset= (tokenized samples, e.g. "
                "load_causal_lm_dataset(tokenizer, assets.NEWS)['train']) or importance=compute_importance(...)."
            )
        from ..pruning.importance import compute_importance

        importance = compute_importance(teacher, calibration_dataset)
    if len(importance.blocks) != _num_layers(teacher.config):
        raise ValueError(
            f"importance covers {len(importance.blocks)} blocks but the teacher has {_num_layers(teacher.config)}: "
            "measure it on this teacher."
        )
    keep = torch.topk(importance.blocks, num_layers).indices.sort().values
    return [importance.layers[i] for i in keep.tolist()]


def _num_layers(config) -> int:
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int):
        raise ValueError(
            f"{type(config).__name__} has no integer `num_hidden_layers`: make_student supports BERT, "
            "GPT-2 and decoders with the usual config fields; build the student config by hand otherwise."
        )
    return depth


def _intermediate_attribute(config) -> str | None:
    for name in ("intermediate_size", "n_inner"):
        if hasattr(config, name):
            return name
    return None


def _scaled_intermediate(config, ratio: float) -> int | None:
    name = _intermediate_attribute(config)
    if name is None:
        return None
    value = getattr(config, name)
    if value is None:  # GPT-2's n_inner=None means 4 * n_embd, which follows hidden_size by itself
        return None
    return int(round(value * ratio))


def _set_intermediate(config, value: int) -> None:
    name = _intermediate_attribute(config)
    if name is None:
        raise ValueError(f"{type(config).__name__} has no intermediate_size/n_inner to set.")
    setattr(config, name, value)


@torch.no_grad()
def _copy_teacher_weights(student: PreTrainedModel, teacher: PreTrainedModel, teacher_layers: list[int]) -> None:
    """Copy every student tensor from the teacher: layer `i` from teacher layer `teacher_layers[i]`."""
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    for key, tensor in student_state.items():
        match = _LAYER_KEY.search(key)
        source = key
        if match is not None:
            layer = teacher_layers[int(match.group(3))]
            source = f"{key[: match.start(3)]}{layer}{key[match.end(3):]}"
        if source not in teacher_state or teacher_state[source].shape != tensor.shape:
            raise ValueError(f"cannot initialise student weight {key!r} from the teacher ({source!r} missing or resized).")
        tensor.copy_(teacher_state[source])
