"""Emissions of a model together with the runs it was made from, stored as `emissions.json` beside it.

A distilled student costs its own distillation run *and* the fine-tuning of the teacher it learned
from; a compacted or vocabulary-trimmed copy costs nothing more to make (no training) but carries
everything before it. `emissions.json` lists each run once (a run reached by two paths, like the
teacher through the student and directly, has the same model name and figures; two models that
only share a folder name are two runs) and adds them up:

```
{
  "schema_version": 1,
  "model": "student-pruned",
  "energy_kwh": 0.0031, "co2_grams": 1.49,      # this model's own run + every ancestor's
  "own_energy_kwh": 0.0011, "own_co2_grams": 0.53,
  "is_estimate": true,
  "runs": [
    {"model": "student-pruned", "relation": "own", "trained": true, "run": "pruning while distilling",
     "energy_kwh": ..., "co2_grams": ..., "energy_source": "estimate", "training_type": "distillation"},
    {"model": "student", "relation": "ancestor", "run": "distillation", ...},
    {"model": "teacher", "relation": "ancestor", "run": "fine-tuning", ...}
  ],
  "how": "this model's own training run plus the runs of the models it was made from ..."
}
```

A run that was not measured here (a teacher that came already fine-tuned), or whose figures are
not finite numbers at least 0, is listed with `null` figures and left out of the sums; pretraining of the
original checkpoint is never included.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write_json
from .card import ENERGY_FILE_NAME, describe_source

LINEAGE_FILE_NAME = "emissions.json"
SCHEMA_VERSION = 1
HOW_THEY_ADD_UP = ("this model's own training run plus the runs of the models it was made from (each counted once); "
                   "runs that were not measured here, and the pretraining of the original checkpoint, are not included")


def _read_record(path: Path, fix: str) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read {path} ({error}): it is truncated or damaged. {fix}") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a JSON object: it is damaged. {fix}")  # noqa: TRY004 - a damaged file
    return record


def _finite(value: Any) -> float | None:
    """A figure that can be added up, or None (NaN or inf would turn every sum into NaN; energy is never negative)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return None
    return value


def load_lineage(model_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The `emissions.json` of a model folder, or None; a damaged one raises a `ValueError` naming it."""
    path = Path(model_dir) / LINEAGE_FILE_NAME
    if not path.is_file():
        return None
    record = _read_record(path, f"Delete it and build the record again with build_lineage (from the {ENERGY_FILE_NAME} "
                                "files of the model and the models it was made from).")
    if not isinstance(record.get("runs"), list):
        raise ValueError(  # noqa: TRY004 - a damaged file, not an argument of the wrong type
            f"{path} lists no runs: it is damaged. Delete it and build the record again with build_lineage.")
    return record


def _run_key(entry: dict[str, Any]) -> tuple:
    # not the `run` label, which a record built before its parent's emissions.json may lack
    return entry.get("model"), entry.get("energy_kwh"), entry.get("co2_grams")


def _own_run(model_dir: Path, name: str, run: str | None) -> dict[str, Any]:
    energy_path = model_dir / ENERGY_FILE_NAME
    entry: dict[str, Any] = {"model": name, "run": run}
    if not energy_path.is_file():
        return {**entry, "energy_kwh": None, "co2_grams": None, "energy_source": None, "training_type": None}
    record = _read_record(energy_path, "Delete it to list this run as not measured, or measure the run again.")
    return {**entry, "energy_kwh": _finite(record.get("energy_kwh")), "co2_grams": _finite(record.get("co2_grams")),
            "energy_source": record.get("energy_source"), "training_type": record.get("training_type"),
            "is_estimate": bool(record.get("is_estimate")), "source": describe_source(record),
            "hardware": record.get("hardware"), "country_iso_code": record.get("country_iso_code")}


def build_lineage(
    model_dir: str | os.PathLike,
    parents: Sequence[str | os.PathLike] = (),
    *,
    name: str | None = None,
    run: str | None = None,
    trained: bool = True,
) -> dict[str, Any]:
    """The emissions record of `model_dir`: its own run (its `energy.json`) and its parents' runs.

    Args:
        model_dir: the model folder; its `energy.json`, if any, is its own training run.
        parents: folders of the models it was made from (a student's teacher, a compacted model's
            pruned one). Their `emissions.json` is read when present, so ancestors come along;
            otherwise their own `energy.json`.
        name: how the model is called in the record (default: the folder name).
        run: a few words on how it was made (`"distillation"`, `"compaction (no training)"`).
        trained: False for a model made without training (compaction, vocabulary trimming): its own
            run is then "no training" rather than "not measured".

    Returns:
        the record described in the module docstring; `save_lineage` writes it.

    Example:

    ```python
    >>> from hf_bigsmall.energy.lineage import build_lineage, save_lineage
    >>> record = build_lineage("out/student", ["out/teacher"], run="distillation")
    >>> record["co2_grams"] == record["runs"][0]["co2_grams"] + record["runs"][1]["co2_grams"]
    True
    >>> save_lineage("out/student", record)
    ```
    """
    model_dir = Path(model_dir)
    own = {**_own_run(model_dir, name or model_dir.name, run), "relation": "own", "trained": trained}
    runs, seen = [own], {_run_key(own)}
    for parent in parents:
        parent = Path(parent)
        inherited = load_lineage(parent) or build_lineage(parent)
        for entry in inherited["runs"]:
            entry = {**entry, "energy_kwh": _finite(entry.get("energy_kwh")), "co2_grams": _finite(entry.get("co2_grams"))}
            # a run reached by two paths (the teacher) counts once; folders that only share a name do not
            if _run_key(entry) not in seen:
                seen.add(_run_key(entry))
                runs.append({**entry, "relation": "ancestor"})

    def total(key: str, entries: list[dict[str, Any]]) -> float | None:
        values = [e[key] for e in entries if e.get(key) is not None]
        return sum(values) if values else None

    return {
        "schema_version": SCHEMA_VERSION,
        "model": own["model"],
        "energy_kwh": total("energy_kwh", runs),
        "co2_grams": total("co2_grams", runs),
        "own_energy_kwh": own["energy_kwh"],
        "own_co2_grams": own["co2_grams"],
        "is_estimate": any(e.get("is_estimate") for e in runs),
        "runs": runs,
        "how": HOW_THEY_ADD_UP,
    }


def save_lineage(model_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write `record` as `model_dir/emissions.json`, atomically."""
    path = Path(model_dir) / LINEAGE_FILE_NAME
    return atomic_write_json(path, record)  # readers never see a half-written record


def lineage_co2_eq_emissions(record: dict[str, Any]) -> dict[str, Any] | None:
    """The card's `co2_eq_emissions` for a lineage: the total, and a `source` that says how it adds up."""
    if record.get("co2_grams") is None:
        return None
    measured = [e for e in record["runs"] if e.get("co2_grams") is not None]
    parts = " + ".join(f"{e['co2_grams']:.3g} g {e['run'] or 'training'} of {e['model']}" for e in measured)
    sources = sorted({e["source"] for e in measured if e.get("source")})
    own = record["runs"][0]
    metadata: dict[str, Any] = {
        "emissions": float(f"{record['co2_grams']:.6g}"),
        "source": f"sum of the runs this model came from: {parts}" + (f" ({'; '.join(sources)})" if sources else ""),
        "training_type": own.get("training_type")
        or (f"{own.get('run') or 'derived'} (no training)" if own.get("trained") is False else own.get("run"))
        or "fine-tuning",
    }
    location = next((e["country_iso_code"] for e in measured if e.get("country_iso_code")), None)
    if location:
        metadata["geographical_location"] = location
    hardware = next((e["hardware"] for e in measured if e.get("hardware")), None)
    if hardware:
        metadata["hardware_used"] = hardware
    return metadata


def lineage_lines(record: dict[str, Any]) -> list[str]:
    """Markdown for a model card: one row per run and the sum."""
    lines = ["| Run | Model | Relation | Energy (kWh) | CO2 (g) | Source |", "| --- | --- | --- | --- | --- | --- |"]
    for entry in record["runs"]:
        missing = "no training" if entry.get("trained") is False else "not measured"
        kwh = missing if entry.get("energy_kwh") is None else f"{entry['energy_kwh']:.4g}"
        grams = missing if entry.get("co2_grams") is None else f"{entry['co2_grams']:.3g}"
        lines.append(f"| {entry.get('run') or '-'} | `{entry['model']}` | {entry['relation']} | {kwh} | {grams} "
                     f"| {entry.get('energy_source') or '-'} |")
    if record.get("co2_grams") is not None:
        total = f"Total: {record['co2_grams']:.3g} g CO2eq ({record['energy_kwh']:.4g} kWh), {record['how']}."
        lines += ["", total]
    return lines
