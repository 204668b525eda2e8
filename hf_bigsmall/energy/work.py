"""Energy of work outside a training run (the teacher labelling a transfer set), as an `energy.json`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..utils.files import atomic_write_json
from .card import ENERGY_FILE_NAME
from .carbon import resolve_grid_intensity
from .meters import select_meters
from .meters.base import JOULES_PER_KWH
from .tracker import EnergyTracker, is_estimate, subtract


@contextmanager
def measure_work(folder: str | os.PathLike, training_type: str, device=None,
                 country_iso_code: str | None = None) -> Iterator[None]:
    """Measure the energy of the enclosed block and write it to `folder/energy.json` when it ends.

    The record has the fields `build_lineage` reads from an `EnergyCallback`'s `energy.json`
    (`energy_kwh`, `co2_grams`, `energy_source`, `is_estimate`, `training_type`, `meters`, the grid
    intensity), so a folder made this way (a teacher-logit cache) can be a parent in a model's lineage.
    Nothing is written when the block raises.

    Example:

    ```python
    >>> with measure_work("out/teacher_logits", "teacher labelling"):
    ...     cache_teacher_logits(teacher, train, "out/teacher_logits")
    ```
    """
    intensity = resolve_grid_intensity(country_iso_code=country_iso_code)
    tracker = EnergyTracker(select_meters(device, country_iso_code=country_iso_code))
    start = tracker.read()
    try:
        yield
        joules = float(sum(subtract(tracker.read(), start).values()))
        record = {
            "energy_source": tracker.energy_source, "is_estimate": is_estimate(tracker.energy_source),
            "energy_joules": joules, "energy_kwh": joules / JOULES_PER_KWH, "co2_grams": intensity.co2_grams(joules),
            "grid_intensity_g_per_kwh": intensity.g_per_kwh, "grid_intensity_origin": intensity.origin,
            "country_iso_code": intensity.country_iso_code, "hardware": tracker.hardware(),
            "training_type": training_type, "meters": tracker.describe()["meters"],
        }
        Path(folder).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(folder) / ENERGY_FILE_NAME, record)
    finally:
        tracker.close()
