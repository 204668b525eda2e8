"""PNG plots of a comparison: quality against size, and quality against energy per sample.

matplotlib is optional (`pip install "hf-bigsmall[plots]"`) and imported only here. Figures are drawn
on the Agg canvas directly, so the user's pyplot backend and open figures are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write

QUALITY_VS_SIZE = "quality_vs_size.png"
QUALITY_VS_ENERGY = "quality_vs_energy.png"


def _label_shifts(labels: list[str], points: list[tuple[str, float, float]]) -> list[int]:
    """Lines to move each label down so that labels of points close together do not overlap.

    A pruned model and its compacted copy often sit on the same spot (same non-zero count, same
    accuracy); their labels are stacked instead of printed over each other. Positions are taken as
    fractions of the axes (x from 0, as drawn), a label as about 1/55 of the axes width per character.
    """
    xs, ys = [x for _, x, _ in points], [y for _, _, y in points]
    x_span = max(xs) * 1.3 or 1.0
    y_span = (max(ys) - min(ys)) * 1.4 or 1.0
    shifts: list[int] = []
    for i, (_, x, y) in enumerate(points):
        near = []
        for j, (_, x2, y2) in enumerate(points[:i]):
            left_label = labels[j] if x2 <= x else labels[i]  # labels run rightwards from their point
            if abs(x - x2) / x_span < len(left_label) / 55 and abs(y - y2) / y_span < 0.07:
                near.append(shifts[j])
        shift = 0
        while shift in near:
            shift += 1
        shifts.append(shift)
    return shifts


def _scatter(report: dict[str, Any], x_key: str, x_label: str, title: str, path: Path, x_scale: float = 1.0) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = report["quality_metric"]
    points = [(m["name"], m[x_key] * x_scale, m["metrics"][metric]) for m in report["models"]
              if m.get(x_key) is not None and m["metrics"].get(metric) is not None]
    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = [f"C{i}" for i in range(len(points))]
    axes.scatter([x for _, x, _ in points], [y for _, _, y in points], s=90, c=colors, zorder=3)
    labels = [f"{name} ({y:.3g})" for name, _, y in points]
    for label, (_, x, y), color, shift in zip(labels, points, colors, _label_shifts(labels, points)):
        axes.annotate(label, (x, y), xytext=(7, 6 - 13 * shift), textcoords="offset points", fontsize=10, color=color)
    axes.set_xlabel(x_label)
    axes.set_ylabel(f"{metric} ({'lower' if report.get('lower_is_better') else 'higher'} is better)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3, zorder=0)
    # leave room for the labels of the right-most and top-most points
    axes.margins(x=0.25, y=0.2)
    axes.set_xlim(left=0)
    figure.tight_layout()
    # the format is named: matplotlib would read it from the `.partial` suffix
    atomic_write(path, lambda partial: figure.savefig(partial, format=path.suffix.lstrip(".")))


def plot_comparison(report: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Draw `quality_vs_size.png` and `quality_vs_energy.png` (one labelled point per model)."""
    from ..utils.import_utils import require

    require("matplotlib")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = f"{report['dataset']}, {report['num_samples']:,} samples"
    sources = sorted({m["energy_source"] for m in report["models"] if m.get("energy_source")})
    size_path, energy_path = output_dir / QUALITY_VS_SIZE, output_dir / QUALITY_VS_ENERGY
    _scatter(report, "nonzero_parameters", "non-zero parameters (millions)",
             f"Quality vs size ({dataset})", size_path, x_scale=1e-6)
    _scatter(report, "energy_joules_per_sample", f"inference energy per sample (J, {', '.join(sources) or 'n/a'})",
             f"Quality vs energy ({dataset})", energy_path)
    return {QUALITY_VS_SIZE: size_path, QUALITY_VS_ENERGY: energy_path}
