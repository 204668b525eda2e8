"""Which models are worth serving: the Pareto front of quality against decode speed.

A model is dominated when another is at least as good on both axes and strictly better on one
(lower perplexity, higher decode tokens/s): nobody should serve it. The models no one dominates form
the front. The plot (`plots.py`) draws the front and the report (`report.py`) names the dominated
models, from the same function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def dominated_by(points: Mapping[str, tuple[float, float]], *, lower_quality_is_better: bool = True) -> dict[str, str]:
    """For every dominated point, the name of one point that dominates it (the fastest such).

    Args:
        points: `{name: (quality, speed)}`; speed is higher-is-better (decode tokens/s), quality is
            lower-is-better (perplexity) unless `lower_quality_is_better=False` (accuracy).
        lower_quality_is_better: the direction of the quality axis.

    Returns:
        `{dominated name: dominating name}`; a point on the front is absent. Equal points dominate
        neither each other.

    Example:

    ```python
    >>> dominated_by({"teacher": (45.0, 9.0), "teacher-int4": (60.0, 70.0), "slow-and-bad": (70.0, 8.0)})
    {'slow-and-bad': 'teacher-int4'}
    ```
    """
    sign = 1.0 if lower_quality_is_better else -1.0

    def beats(a: tuple[float, float], b: tuple[float, float]) -> bool:
        quality_a, quality_b = sign * a[0], sign * b[0]
        return quality_a <= quality_b and a[1] >= b[1] and (quality_a < quality_b or a[1] > b[1])

    result = {}
    for name, point in points.items():
        rivals = [other for other, theirs in points.items() if other != name and beats(theirs, point)]
        if rivals:
            result[name] = max(rivals, key=lambda other: points[other][1])
    return result


def pareto_front(points: Mapping[str, tuple[float, float]], *, lower_quality_is_better: bool = True) -> list[str]:
    """The names of the points no other point dominates, slowest first (the order the front is drawn in)."""
    dominated = dominated_by(points, lower_quality_is_better=lower_quality_is_better)
    return sorted((name for name in points if name not in dominated), key=lambda name: points[name][1])


def decode_points(report: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """`{model name: (quality, decode tokens/s)}` for every model of a report with both figures, finite.

    A NaN perplexity (a broken export's logits) compares as neither better nor worse than anything, so it
    would sit on the front undominated: such a model, like one with an infinite perplexity, is left out.
    """
    metric = report["quality_metric"]
    return {m["name"]: (m["metrics"][metric], m["decode_tokens_per_s"]) for m in report["models"]
            if m.get("decode_tokens_per_s") is not None and m["metrics"].get(metric) is not None
            and math.isfinite(m["metrics"][metric]) and math.isfinite(m["decode_tokens_per_s"])}
