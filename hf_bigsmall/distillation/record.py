"""The records a distilled student keeps in its `config.json`, and the card sections they render.

- `DistillationRecord` (`distillation`): the teacher, the layers the student was cut from, the loss
  settings, and nested records: the teacher-logit cache it learned from (`TeacherLogitsRecord`), the
  teacher correction it came after (`TeacherCorrectionRecord`) and its training data
  (`hf_bigsmall.data.record.TrainingDataRecord`).
- `TeacherCorrectionRecord` (`teacher_correction`): on a corrected teacher, what it was fine-tuned
  from and on; its card gets a "Fine-tuning" section.

`make_student`, `DistillationTrainer` and the recipes write them; `build_model_card` renders them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..data.record import TrainingDataRecord
from ..utils.card_text import describe_model, settings_table
from ..utils.records import ConfigRecord
from .divergences import divergence_names, get_divergence

# nested blocks: said in sentences, not listed in the settings table
_NESTED_KEYS = ("teacher_logits", "teacher_correction", "training_data")


def _divergence_description(name: str | None) -> str | None:
    """A sentence on the divergence `name` for the card (its registered `description`), or None when this
    process has no divergence of that name registered: the settings table names it alone then."""
    if not name or name not in divergence_names():
        return None
    return f"Soft-target loss: {get_divergence(name).description}."


@dataclasses.dataclass
class TeacherLogitsRecord(ConfigRecord):
    """The teacher-logit cache a student was distilled from (`distillation.teacher_logits`).

    `top_k` is None for classification (every logit kept); for causal LMs the top-k log-probabilities
    per token, `tail_samples` more drawn from the rest, and `tail` how the mass outside them was used.
    """

    KEY = "teacher_logits"

    top_k: int | None = None
    tail_samples: int | None = None
    logprob_dtype: str | None = None
    teacher_fingerprint: str | None = None
    tail: str | None = None

    def sentence(self) -> str:
        if self.top_k is None:  # classification: every logit is kept
            return "The teacher ran once over the training set; the student was distilled from its cached logits."
        drawn = (f" and {self.tail_samples} more tokens drawn from the rest of its distribution"
                 if self.tail_samples else "")
        return (f"The teacher ran once over the training set; the student was distilled from its cached "
                f"top-{self.top_k} log-probabilities per token{drawn}, plus the probability mass outside them "
                f"(stored as {self.logprob_dtype}).")


@dataclasses.dataclass
class TeacherCorrectionRecord(ConfigRecord):
    """A teacher fine-tuned before a pruned student is cut from it (teacher correction, Sreenivas et al., 2024).

    On the corrected teacher it is the `teacher_correction` block, with `source` (stored as `from`) the
    model it was fine-tuned from; on the student it is nested in `distillation`, without `source`.

    Example:

    ```python
    >>> TeacherCorrectionRecord(tokens=131072, dataset="embedded/news").corrected_on()
    '131,072 tokens of `embedded/news`'
    ```
    """

    KEY = "teacher_correction"
    DISK_NAMES = {"source": "from"}

    source: str | None = None
    dataset: str | None = None
    tokens: Any = None  # a count; a hand-edited record may hold anything, and is then not trusted as one
    steps: int | None = None
    data: str | None = None
    learning_rate: float | None = None

    def corrected_on(self) -> str:
        """What the correction trained on, "131,072 tokens of `embedded/news`", as far as it was recorded."""
        tokens = self.tokens
        amount = f"{tokens:,} tokens" if isinstance(tokens, int) and not isinstance(tokens, bool) else "training data"
        return amount + (f" of `{self.dataset}`" if self.dataset else "")

    def student_sentence(self) -> str:
        """The sentence on a student's card: it was cut from, and distilled from, the corrected teacher."""
        return (f"Teacher correction (Sreenivas et al., 2024): the teacher was first fine-tuned on "
                f"{self.corrected_on()}. This model was cut from the corrected teacher, and the corrected "
                "teacher is the one it is distilled from.")

    def card_section(self) -> list[str]:
        """The corrected teacher's own card: what it was fine-tuned from, on what, and what for."""
        source = f" from {describe_model(self.source)}" if self.source else ""
        settings = [(key, value) for key, value in self.to_dict().items() if key not in ("from", "dataset", "tokens")]
        return ["### Fine-tuning", "", f"Fine-tuned{source} on {self.corrected_on()} with the next-token loss, to be "
                "the corrected teacher of a pruned student (teacher correction, Sreenivas et al., 2024).", "",
                *settings_table(settings), ""]


@dataclasses.dataclass
class DistillationRecord(ConfigRecord):
    """How a student was distilled: its teacher, the layers it was cut from, the loss settings (`distillation`).

    Example:

    ```python
    >>> record = DistillationRecord.from_config(student.config)  # None for a model that was not distilled
    >>> record.teacher, record.teacher_layers
    ('bert-base-uncased', [0, 2, 4])
    ```
    """

    KEY = "distillation"
    NESTED = {"teacher_logits": TeacherLogitsRecord, "teacher_correction": TeacherCorrectionRecord,
              "training_data": TrainingDataRecord}

    teacher: str | None = None
    teacher_class: str | None = None
    teacher_num_layers: int | None = None
    teacher_layers: list[int] | None = None
    initialized_from_teacher: bool | None = None
    layer_selection: str | None = None
    dataset: str | None = None
    temperature: float | None = None
    alpha_kd: float | None = None
    alpha_ce: float | None = None
    kd_loss: str | None = None
    jsd_beta: float | None = None
    alpha_hidden: float | None = None
    hidden_loss: str | None = None
    alpha_attention: float | None = None
    layer_map: list[int] | None = None
    hidden_projection: bool | None = None
    teacher_logits: TeacherLogitsRecord | None = None
    teacher_correction: TeacherCorrectionRecord | None = None
    training_data: TrainingDataRecord | None = None

    def update(self, settings: dict[str, Any]) -> DistillationRecord:
        """This record with `settings` (keys of the block, e.g. `DistillationConfig.loss_settings()`) set."""
        return DistillationRecord.from_dict({**self.to_dict(), **settings})

    @property
    def named_teacher(self) -> str | None:
        """The teacher's name when it is one (a teacher built in memory is recorded by its class name, no Hub id)."""
        return self.teacher if self.teacher != self.teacher_class else None

    def card_section(self, teacher: str | None = None) -> list[str]:
        """The card's "Distillation" section: from which teacher, how, on what, with which settings."""
        lines = ["### Distillation", "", f"Distilled from {describe_model(teacher or self.teacher)} "
                 "(Hinton et al., 2015: the student matches the teacher's softened outputs).", ""]
        description = _divergence_description(self.kd_loss)
        if description:
            lines += [description, ""]
        if self.teacher_correction is not None:
            lines += [self.teacher_correction.student_sentence(), ""]
        if self.teacher_logits is not None:
            lines += [self.teacher_logits.sentence(), ""]
        if self.training_data is not None:
            lines += [self.training_data.sentence(), ""]
        lines += settings_table([(key, value) for key, value in self.to_dict().items() if key not in _NESTED_KEYS])
        return lines + [""]
