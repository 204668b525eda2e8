"""`TrainingDataRecord`: what a student was distilled on, kept in its `config.json` under `distillation.training_data`."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..utils.card_text import public_name
from ..utils.records import ConfigRecord


@dataclasses.dataclass
class TrainingDataRecord(ConfigRecord):
    """The labelled rows, a teacher-labelled transfer set and augmented copies a student saw.

    `transfer_set` and `augmentation` are the records `extra_training_rows` returns (`source`,
    `available`, `overlapping`, `repeats`, `samples`; `method`, `ratio`, `replace_probability`, `seed`,
    `samples`). `rows_drawn` is how many rows the distillation drew (steps x batch size) when that is
    known: fewer than the rows on offer means the student saw a random part of them, not all.

    Example:

    ```python
    >>> record = TrainingDataRecord(labelled=3892)
    >>> record.sentence()
    'The student saw 3,892 labelled training texts.'
    ```
    """

    KEY = "training_data"

    labelled: int | None = None
    transfer_set: dict[str, Any] | None = None
    augmentation: dict[str, Any] | None = None
    rows_drawn: int | None = None

    def sentence(self) -> str:
        """What the student was distilled on: the labelled rows, a teacher-labelled transfer set, augmented copies."""
        parts = [f"{self.labelled:,} labelled training texts" if isinstance(self.labelled, int)
                 else "the labelled training texts"]
        transfer = self.transfer_set
        if isinstance(transfer, dict):
            parts.append(f"{transfer.get('samples', 0):,} unlabelled texts from {public_name(transfer.get('source'))} "
                         f"(of {transfer.get('available', 0):,}; {transfer.get('overlapping', 0):,} that are also in "
                         "the labelled dataset, its test split included, and "
                         f"{transfer.get('repeats', 0):,} repeats removed)")
        augmentation = self.augmentation
        if isinstance(augmentation, dict):
            parts.append(f"{augmentation.get('samples', 0):,} augmented copies of the training texts "
                         f"({augmentation.get('method')}, ratio {augmentation.get('ratio')}, replacement probability "
                         f"{augmentation.get('replace_probability')}, seed {augmentation.get('seed')})")
        sentence = "The student saw " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
        sentence += "; the teacher labelled the unlabelled ones (soft targets only)." if len(parts) > 1 else "."
        counts = [self.labelled, *(extra.get("samples") for extra in (transfer, augmentation) if isinstance(extra, dict))]
        drawn = self.rows_drawn
        if (isinstance(drawn, int) and not isinstance(drawn, bool)
                and all(isinstance(count, int) and not isinstance(count, bool) for count in counts)):
            offered = sum(counts)
            if 0 < drawn < offered:  # a fixed number of steps draws a random part of a larger pool
                sentence = sentence.replace("The student saw ", "The student was offered ", 1) + (
                    f" Its distillation drew {drawn:,} of these {offered:,} rows at random (steps x batch size), "
                    f"about {drawn / offered:.0%} of them.")
        return sentence
