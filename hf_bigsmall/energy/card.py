"""The Hub's `co2_eq_emissions` model-card metadata, from an `energy.json` record.

The Hub reads these fields from a model card's YAML header
(https://huggingface.co/docs/hub/model-cards-co2): `emissions` in grams of CO2eq, `source`,
`training_type`, `geographical_location` and `hardware_used`. `source` says how the energy was
obtained, so an estimate is never shown as a measurement, nor a run that stopped early (`"status":
"aborted"` in `energy.json`) as a finished training.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from ..utils.files import atomic_write

ENERGY_FILE_NAME = "energy.json"


def load_energy_record(path: str | os.PathLike) -> dict[str, Any]:
    """Read an `energy.json` (or the one inside the folder `path`)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, ENERGY_FILE_NAME)
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def describe_source(record: Mapping[str, Any]) -> str:
    """`"hf_bigsmall EnergyCallback: estimate (process CPU time x 3.5 W per thread, default ...)"`."""
    details = []
    for meter in record.get("meters", []):
        if meter.get("energy_source") == "estimate":
            details.append(f"process CPU time x {meter['watts_per_thread']:.2f} W per thread, {meter['origin']}")
        elif meter.get("method"):
            details.append(meter["method"])
    label = record.get("energy_source", "unknown")
    intensity = record.get("grid_intensity_g_per_kwh")
    if intensity is not None:
        details.append(f"{intensity:g} gCO2eq/kWh, {record.get('grid_intensity_origin', 'unknown origin')}")
    source = f"hf_bigsmall EnergyCallback: {label}" + (f" ({'; '.join(details)})" if details else "")
    if record.get("status") == "aborted":  # records written before `status` existed say nothing of it
        steps = f" of {record['max_steps']}" if record.get("max_steps") else ""
        source += f" (run aborted at step {record.get('global_step')}{steps})"
    return source


def co2_eq_emissions(
    record: Mapping[str, Any] | str | os.PathLike,
    *,
    training_type: str | None = None,
    geographical_location: str | None = None,
    hardware_used: str | None = None,
) -> dict[str, Any]:
    """The `co2_eq_emissions` dict for a model card, from an `energy.json` record or its path.

    Example:

    ```python
    >>> from hf_bigsmall.energy.card import co2_eq_emissions
    >>> co2_eq_emissions("outputs/student")  # the folder holding energy.json
    {'emissions': 12.4, 'source': 'hf_bigsmall EnergyCallback: estimate (...)',
     'training_type': 'fine-tuning', 'hardware_used': 'AMD EPYC (2 threads)'}
    ```
    """
    name = "This record"
    if not isinstance(record, Mapping):
        name = f"The record {os.fspath(record)}"
        record = load_energy_record(record)
    if "co2_grams" not in record:
        raise ValueError(f"{name} has no co2_grams: pass the energy.json an EnergyCallback wrote.")
    grams = record["co2_grams"]
    if isinstance(grams, bool) or not isinstance(grams, (int, float)) or not math.isfinite(grams) or grams < 0:
        raise ValueError(f"{name} has co2_grams {grams!r}, not a finite number of grams at least 0: it is damaged; "
                         "measure the run again (a card never states NaN or negative emissions).")
    metadata: dict[str, Any] = {
        "emissions": float(f"{float(record['co2_grams']):.6g}"),  # 6 significant figures
        "source": describe_source(record),
        "training_type": training_type or record.get("training_type") or "fine-tuning",
    }
    location = geographical_location or record.get("country_iso_code")
    if location:
        metadata["geographical_location"] = location
    hardware = hardware_used or record.get("hardware")
    if hardware:
        metadata["hardware_used"] = hardware
    return metadata


def add_co2_to_model_card(readme_path: str | os.PathLike, record: Mapping[str, Any] | str | os.PathLike, **kwargs) -> None:
    """Write `co2_eq_emissions` into the YAML header of an existing README.md, keeping the rest."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(readme_path)
    card.data.co2_eq_emissions = co2_eq_emissions(record, **kwargs)
    atomic_write(readme_path, card.save)  # a failure never leaves a half-written card
