"""The records a pruned model keeps in its `config.json`, and the card sections they render.

- `SparsityRecord` (`sparsity`): zeros in the weights: the criterion, schedule, structure, and the
  sparsity measured at the save (`hf_bigsmall.pruning.io.record_sparsity` writes it).
- `WidthRecord` (`width_pruning`): units removed from every block by `prune_width`, before and after.
- `VocabularyTrimmingRecord` (`vocabulary_trimming`): the vocabulary `trim_vocabulary` kept.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..utils.card_text import settings_table
from ..utils.records import ConfigRecord
from .criteria import get_pruning_criterion, pruning_criterion_names

_SCHEDULES = {
    "one_shot": "once, on calibration data",
    "linear": "gradually during training, on a linear schedule",
    "cubic": "gradually during training, on a cubic schedule (Zhu & Gupta, 2017)",
    "imp": "in rounds of iterative magnitude pruning with rewinding (Frankle & Carbin, 2019)",
}
_STRUCTURES = {None: "", "unstructured": "individual weights", "neurons": "whole neurons",
               "heads": "whole attention heads"}
# `sequential` as recorded (`True` in records written before "block" and "layer" existed meant "block")
_SEQUENTIAL = {
    "block": " Each block was calibrated on the outputs of the blocks before it, already pruned.",
    "layer": " Each layer was calibrated on the outputs of the layers before it, already pruned, within its block "
             "too.",
}
_SEQUENTIAL_VALUES = (None, False, True, "block", "layer")
# the before/after pairs a width record may hold, in the order the card lists them
_WIDTHS = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_size", "params")


def _method_description(name: str | None) -> str:
    """How the card names the pruning criterion `name`: its registered `description`, else its name."""
    if not name:
        return "magnitude"
    return get_pruning_criterion(name).description if name in pruning_criterion_names() else name


def weight_sparsity_per_layer(model_dir: str | Path) -> dict[str, float]:
    """Fraction of exact zeros in each saved weight matrix, read from the safetensors files."""
    from safetensors.numpy import load_file

    per_layer: dict[str, float] = {}
    for shard in sorted(Path(model_dir).glob("*.safetensors")):
        if shard.name == "sparsity_masks.safetensors":
            continue
        for name, tensor in load_file(shard).items():
            # embeddings are never pruned; only the weight matrices of the layers say what pruning did
            if tensor.ndim == 2 and name.endswith(".weight") and "embed" not in name:
                per_layer[name.removesuffix(".weight")] = float((tensor == 0).mean())
    return per_layer


@dataclasses.dataclass
class SparsityRecord(ConfigRecord):
    """Zeros in the weights: how they were chosen, and the sparsity measured when the model was saved.

    Example:

    ```python
    >>> record = SparsityRecord.from_config(model.config)  # None for a model that was not pruned
    >>> record.method, record.global_sparsity
    ('wanda', 0.5)
    ```
    """

    KEY = "sparsity"

    method: str | None = None
    schedule: str | None = None
    structure: str | None = None
    sequential: bool | str | None = None
    #: with `sequential="layer"`: blocks whose layers are not each called once per forward, calibrated by block
    sequential_fallback_blocks: list[int] | None = None
    target_sparsity: float | None = None
    global_sparsity: float | None = None
    model_sparsity: float | None = None
    total_params: int | None = None
    zero_params: int | None = None
    per_layer: dict[str, float] | None = None
    masks_file: str | None = None
    compacted: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # checked by value: 1 == True and 0 == False would pass a membership test
        if not any(self.sequential is value or (isinstance(value, str) and self.sequential == value)
                   for value in _SEQUENTIAL_VALUES):
            raise ValueError(f"the 'sparsity' block of config.json has sequential={self.sequential!r}, which is none of "
                             "False, True, 'block' or 'layer': write one of those (or remove the key).")

    def sentence(self) -> str:
        """Pruned when, by what, with which structure."""
        how = _method_description(self.method)
        when = _SCHEDULES.get(self.schedule, "during training")
        what = _STRUCTURES.get(self.structure, f"{self.structure} semi-structured sparsity (N zeros in every M inputs)")
        order = _SEQUENTIAL["block" if self.sequential is True else self.sequential] if self.sequential else ""
        if self.sequential == "layer" and self.sequential_fallback_blocks:
            blocks = ", ".join(str(index) for index in self.sequential_fallback_blocks)
            order = order.removesuffix(".") + (
                f", except in block{'s' if len(self.sequential_fallback_blocks) > 1 else ''} {blocks}: its layers "
                "are not each called once per forward, so there they were calibrated together, on the outputs of "
                "the blocks before it, already pruned.")
        return f"Pruned {when}, by {how}" + (f", {what}" if what else "") + "." + order

    def card_section(self, model_dir: str | Path | None = None) -> list[str]:
        """The card's "Pruning" section; the sparsity per layer is read from the weights in `model_dir` when not recorded."""
        per_layer = self.per_layer or (weight_sparsity_per_layer(model_dir) if model_dir is not None else {})
        settings = [(key, value) for key, value in self.to_dict().items() if key != "per_layer"]
        lines = ["### Pruning", "", self.sentence(), "", *settings_table(settings), ""]
        if per_layer:
            lines += ["Sparsity reached, per layer:", "", "| Layer | Sparsity |", "| --- | --- |"]
            lines += [f"| `{name}` | {100 * float(value):.1f}% |" for name, value in per_layer.items()]
            lines.append("")
        return lines


@dataclasses.dataclass
class WidthRecord(ConfigRecord):
    """Units `prune_width` removed from every kept block: each width as `[before, after]`, and the criterion.

    Example:

    ```python
    >>> WidthRecord(intermediate_size=[1536, 1024]).card_section()[-2]
    '| intermediate size | 1,536 | 1,024 |'
    ```
    """

    KEY = "width_pruning"

    criterion: str | None = None
    intermediate_size: list[int] | None = None
    num_attention_heads: list[int] | None = None
    num_key_value_heads: list[int] | None = None
    hidden_size: list[int] | None = None
    params: list[int] | None = None

    def card_section(self) -> list[str]:
        lines = ["### Width", "", f"Structured pruning by {self.criterion or 'importance'}: the least important "
                 "units were removed from every kept block, so the model is physically smaller and loads with plain "
                 "`from_pretrained`.", "", "| | before | after |", "| --- | --- | --- |"]
        for key in _WIDTHS:
            value = getattr(self, key)
            if isinstance(value, (list, tuple)) and len(value) == 2:
                lines.append(f"| {key.replace('_', ' ')} | {value[0]:,} | {value[1]:,} |")
        return lines + [""]


@dataclasses.dataclass
class VocabularyTrimmingRecord(ConfigRecord):
    """The vocabulary `trim_vocabulary` kept: the tokens used by `num_texts` training texts.

    Example:

    ```python
    >>> VocabularyTrimmingRecord.from_config(trimmed.config).vocab_size
    4000
    ```
    """

    KEY = "vocabulary_trimming"

    original_vocab_size: int | None = None
    vocab_size: int | None = None
    min_count: int | None = None
    num_texts: int | None = None

    def card_section(self) -> list[str]:
        return ["### Vocabulary", "",
                f"The vocabulary was trimmed from {self.original_vocab_size:,} to {self.vocab_size:,} tokens, those "
                f"used by {self.num_texts:,} training texts (special tokens kept). Words made of other pieces are "
                "split into kept pieces or read as the unknown token.", ""]
