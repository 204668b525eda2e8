"""`evaluate` metric modules that ship with the package, so metrics load with no network.

`evaluate.load("accuracy")` fetches the module from the Hub; `load_metric("accuracy")` loads the copy
in this folder (`evaluate.load("/abs/path/accuracy")`), which works offline and in `evaluate.combine`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).resolve().parent
AVAILABLE_METRICS = ("accuracy", "f1", "perplexity")


def metric_path(name: str) -> str:
    """Absolute folder of a shipped metric module, as `evaluate.load` takes it."""
    if name not in AVAILABLE_METRICS:
        raise ValueError(f"No shipped metric {name!r}: choose one of {AVAILABLE_METRICS}.")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """`evaluate.load` of a shipped metric module (offline)."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
