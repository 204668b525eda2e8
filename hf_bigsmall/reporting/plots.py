"""PNG plots of a comparison: quality against latency, size, energy per sample and (causal LMs) decode speed.

Better quality always points up: for a lower-is-better metric (perplexity) the quality axis is inverted.
Quality against decode speed also draws the Pareto front (`pareto.py`): the models no other model beats
on both perplexity and decode tokens/s.
`plot_importance` draws what importance pruning measured, with the blocks it dropped marked.

matplotlib is optional (`pip install "hf-bigsmall[plots]"`) and imported only here. Figures are drawn
on the Agg canvas directly, so the user's pyplot backend and open figures are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write
from ..utils.import_utils import require
from .pareto import decode_points, pareto_front

QUALITY_VS_LATENCY = "quality_vs_latency.png"
QUALITY_VS_SIZE = "quality_vs_size.png"
QUALITY_VS_ENERGY = "quality_vs_energy.png"
QUALITY_VS_DECODE_SPEED = "quality_vs_decode_speed.png"
QUALITY_VS_DECODE = QUALITY_VS_DECODE_SPEED  # the name this plot had before it drew the front
MARKER_SIZE = 90  # points squared, as matplotlib's scatter takes it


def _separate_labels(figure, axes, annotations: list, marker_radius_pt: float) -> None:
    """Move each label until its drawn box overlaps no marker and no label placed before it.

    This measures the rendered text rather than guessing from character counts, so labels of
    models that sit close together (a student and its int8 copy, a pruned model and its compacted
    copy) never print over each other or over a point, whatever their length or the font. Tries
    beside the point, then below, above, and further out.
    """
    from matplotlib.transforms import Bbox

    renderer = figure.canvas.get_renderer()
    radius = marker_radius_pt * figure.dpi / 72
    placed = []
    for annotation in annotations:
        x, y = axes.transData.transform(annotation.xy)
        placed.append(Bbox.from_extents(x - radius, y - radius, x + radius, y + radius))
    for annotation in annotations:
        x_offset, y_offset = annotation.xyann
        for step in range(4 * len(annotations) + 1):
            annotation.xyann = (x_offset, y_offset + (-1) ** step * 13 * ((step + 1) // 2))
            box = annotation.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(box)


def _scatter(report: dict[str, Any], x_key: str, x_label: str, title: str, path: Path, x_scale: float = 1.0,
             front: list[str] | None = None):
    """Draw one plot of quality against `x_key` into `path`; returns the matplotlib figure.

    `front`: names of models to join with a line, in order (the Pareto front), drawn under the points.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = report["quality_metric"]
    points = [(m["name"], m[x_key] * x_scale, m["metrics"][metric]) for m in report["models"]
              if m.get(x_key) is not None and m["metrics"].get(metric) is not None]
    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = [f"C{i}" for i in range(len(points))]
    axes.scatter([x for _, x, _ in points], [y for _, _, y in points], s=MARKER_SIZE, c=colors, zorder=3)
    labels = [f"{name} ({y:.3g})" for name, _, y in points]
    annotations = [
        axes.annotate(label, (x, y), xytext=(7, 6), textcoords="offset points", fontsize=10, color=color)
        for label, (_, x, y), color in zip(labels, points, colors)
    ]
    if front:
        where = {name: (x, y) for name, x, y in points}
        line = [where[name] for name in front if name in where]
        axes.plot([x for x, _ in line], [y for _, y in line], color="0.45", linestyle="--", linewidth=1.2,
                  marker="", zorder=2, label="Pareto front (no model is better on both axes)")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_xlabel(x_label)
    axes.set_title(title)
    axes.grid(True, alpha=0.3, zorder=0)
    # leave room for the labels of the right-most and top-most points
    axes.margins(x=0.25, y=0.2)
    axes.set_xlim(left=0)
    if report.get("lower_is_better"):  # better points up on every plot, accuracy's way
        axes.invert_yaxis()
        axes.set_ylabel(f"{metric} (lower is better: axis inverted)")
    else:
        axes.set_ylabel(f"{metric} (higher is better)")
    figure.tight_layout()
    _separate_labels(figure, axes, annotations, marker_radius_pt=MARKER_SIZE ** 0.5 / 2)
    # the format is named: matplotlib would read it from the `.partial` suffix
    atomic_write(path, lambda partial: figure.savefig(partial, format=path.suffix.lstrip(".")))
    return figure


def comparison_plot_names(causal_lm: bool) -> list[str]:
    """The PNGs `plot_comparison` may draw: the decode-speed plot only for causal LMs."""
    return [QUALITY_VS_LATENCY, QUALITY_VS_SIZE, QUALITY_VS_ENERGY] + ([QUALITY_VS_DECODE_SPEED] if causal_lm else [])


def drawn_plot_names(report: dict[str, Any]) -> list[str]:
    """The PNGs `plot_comparison` draws for `report`, in its order: the decode-speed plot where decode was timed."""
    return comparison_plot_names(causal_lm=bool(decode_points(report)))


def plot_comparison(report: dict[str, Any], output_dir: str | os.PathLike) -> dict[str, Path]:
    """Draw `quality_vs_latency.png`, `quality_vs_size.png` and `quality_vs_energy.png` (a labelled point per model),
    and for causal LMs `quality_vs_decode_speed.png` with the Pareto front drawn.

    Files at those names are replaced: `Comparison.save` first checks, with
    `hf_bigsmall.reporting.report.check_report_writable`, that they are plots the kit's report recorded.
    """

    require("matplotlib")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dataset = f"{report['dataset']}, {report['num_samples']:,} samples"
    sources = sorted({m["energy_source"] for m in report["models"] if m.get("energy_source")})
    size_path, energy_path = output_dir / QUALITY_VS_SIZE, output_dir / QUALITY_VS_ENERGY
    latency_path = output_dir / QUALITY_VS_LATENCY
    _scatter(report, "latency_ms_p50", f"latency at batch size 1, median (ms, {report.get('device', 'cpu')})",
             f"Quality vs latency ({dataset})", latency_path)
    # size on disk, not parameter count: an int8 model has the parameters of its fp32 source in a quarter of the bytes
    _scatter(report, "size_on_disk_mb", "size on disk (MiB, weights)", f"Quality vs size ({dataset})", size_path)
    _scatter(report, "energy_joules_per_sample", f"inference energy per sample (J, {', '.join(sources) or 'n/a'})",
             f"Quality vs energy ({dataset})", energy_path)
    written = {QUALITY_VS_LATENCY: latency_path, QUALITY_VS_SIZE: size_path, QUALITY_VS_ENERGY: energy_path}
    points = decode_points(report)
    if points:  # causal LMs: the headline speed, and which models are worth serving at all
        decode_path = output_dir / QUALITY_VS_DECODE_SPEED
        front = pareto_front(points, lower_quality_is_better=bool(report.get("lower_is_better")))
        _scatter(report, "decode_tokens_per_s", "decode tokens/s, batch size 1 (higher is better)",
                 f"Quality vs decode speed ({dataset})", decode_path, front=front)
        written[QUALITY_VS_DECODE_SPEED] = decode_path
    return written


def plot_importance(importance, path: str | os.PathLike, kept_layers: list[int] | None = None):
    """Draw an `Importance` per layer: Block Influence, mean head norm, mean neuron activation.

    With `kept_layers` (the teacher blocks a student kept), the other blocks are marked dropped in every
    panel (grey bars, red crosses). Returns the matplotlib figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 3.8), dpi=100)
    FigureCanvasAgg(figure)
    layers = list(importance.layers)
    dropped = [] if kept_layers is None else [layer for layer in layers if layer not in set(kept_layers)]
    samples = f"{importance.num_samples:,} calibration samples" if importance.num_samples else "calibration data"
    figure.suptitle(f"Importance per block ({samples})"
                    + (f": {len(dropped)} of {len(layers)} blocks dropped, {', '.join(map(str, dropped))}"
                       if dropped else ""))
    panels = [
        ("Block Influence", "1 - cos(block input, output)", importance.blocks),
        ("Attention heads", "mean head output norm", importance.heads.mean(dim=1)),
        ("FFN neurons", "mean |activation|", importance.neurons.mean(dim=1)),
    ]
    for index, (title, y_label, values) in enumerate(panels):
        axes = figure.add_subplot(1, 3, index + 1)
        values = values.tolist()
        if index == 0:
            colors = ["lightgray" if layer in dropped else "C0" for layer in layers]
            axes.bar(layers, values, color=colors, edgecolor=["red" if layer in dropped else "C0" for layer in layers])
        else:
            axes.plot(layers, values, marker="o", markersize=3)
        if dropped:
            axes.scatter(dropped, [values[layers.index(layer)] for layer in dropped], marker="x", color="red", s=60,
                         zorder=4, label="dropped block")
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("block (layer)")
        axes.set_ylabel(y_label)
        if dropped and index == 0:
            axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    atomic_write(path, lambda partial: figure.savefig(partial, format=path.suffix.lstrip(".")))
    return figure
