"""The energy records beside a model, and the card sections they render.

- `EnergyRecord`: `energy.json`, the model's own training run as `EnergyCallback` measured it.
- `LineageRecord`: `emissions.json`, that run plus the runs of the models it came from
  (`hf_bigsmall.energy.lineage`); when it holds a total, that total is the card's `co2_eq_emissions`.

Both are files of their own rather than blocks of `config.json`: they are written when the run ends,
after the model may have been saved.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from ..utils.card_text import settings_table
from .card import ENERGY_FILE_NAME, co2_eq_emissions
from .lineage import lineage_co2_eq_emissions, lineage_lines, load_lineage


@dataclasses.dataclass
class EnergyRecord:
    """The training run of a model, as `energy.json` holds it (`energy_kwh`, `co2_grams`, `energy_source`, ...).

    Example:

    ```python
    >>> EnergyRecord.from_folder("out/student").co2_eq_emissions()["emissions"]  # grams
    12.4
    ```
    """

    data: dict[str, Any]

    @classmethod
    def from_folder(cls, model_dir: str | os.PathLike) -> EnergyRecord | None:
        path = Path(model_dir) / ENERGY_FILE_NAME
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        return cls(data) if data else None  # an empty record says nothing

    def co2_eq_emissions(self) -> dict[str, Any] | None:
        """The card's `co2_eq_emissions`, or None when the record has no finite, non-negative figure of grams."""
        grams = self.data.get("co2_grams")
        # a NaN, inf or negative figure (a damaged record) states nothing, rather than `emissions: .nan` on the Hub
        if isinstance(grams, (int, float)) and math.isfinite(grams) and grams >= 0:
            return co2_eq_emissions(self.data)
        return None

    def card_section(self) -> list[str]:
        rows = [(key, value) for key, value in self.data.items() if isinstance(value, (int, float, str))]
        return ["## Energy", "", *settings_table(rows), ""]


@dataclasses.dataclass
class LineageRecord:
    """The runs a model came from, as `emissions.json` holds them (see `hf_bigsmall.energy.lineage`).

    Example:

    ```python
    >>> LineageRecord.from_folder("out/student-compact").card_section()[0]
    '## Emissions of the runs it came from'
    ```
    """

    data: dict[str, Any]

    @classmethod
    def from_folder(cls, model_dir: str | os.PathLike) -> LineageRecord | None:
        data = load_lineage(model_dir)
        return cls(data) if data else None

    def co2_eq_emissions(self) -> dict[str, Any] | None:
        """The card's `co2_eq_emissions`: the sum of the runs, or None when none was measured."""
        return lineage_co2_eq_emissions(self.data) if self.data.get("co2_grams") is not None else None

    def card_section(self) -> list[str]:
        return ["## Emissions of the runs it came from", "", *lineage_lines(self.data), ""]
