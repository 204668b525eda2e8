"""Write a comparison as `report.json` (for tools) and `report.md` (for people).

Both are built from the plain dictionary that `Comparison.to_dict()` returns, so a report read back
from disk renders exactly like a fresh one (model cards reuse `markdown_table`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write_json, atomic_write_text

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f} M"


def markdown_table(report: dict[str, Any]) -> str:
    """The side-by-side table: one row per model, ratios against the first (reference) model."""
    metric_names = report.get("metric_names") or sorted({k for m in report["models"] for k in m["metrics"]})
    generation = any(m.get("decode_tokens_per_s") is not None for m in report["models"])
    header = ["Model", "Params", "Non-zero", "Sparsity", "Disk (MB)", *metric_names,
              "p50 (ms)", "p95 (ms)", "Throughput (/s)", "Energy (J/sample)"]
    if generation:
        header += ["Prefill (ms)", "Decode (tok/s)", "Energy (J/token)"]
    header += ["x smaller", "x faster", *(["x faster decode"] if generation else []), "% of quality"]
    rows = [header, ["---"] * len(header)]
    for model in report["models"]:
        ratios = model.get("ratios", {})
        generation_cells = [
            _fmt(model.get("prefill_ms_p50"), ".1f"),
            _fmt(model.get("decode_tokens_per_s"), ".1f"),
            _fmt(model.get("energy_joules_per_token"), ".3g"),
        ] if generation else []
        rows.append([
            f"`{model['name']}`",
            _millions(model["parameters"]),
            _millions(model["nonzero_parameters"]),
            f"{100 * model['sparsity']:.1f}%",
            _fmt(model.get("size_on_disk_mb"), ".1f"),
            *[_fmt(model["metrics"].get(name), ".4f") for name in metric_names],
            _fmt(model.get("latency_ms_p50"), ".2f"),
            _fmt(model.get("latency_ms_p95"), ".2f"),
            _fmt(model.get("throughput_samples_per_s"), ".1f"),
            _fmt(model.get("energy_joules_per_sample"), ".3g"),
            *generation_cells,
            _fmt(ratios.get("nonzero_smaller"), ".2f"),
            _fmt(ratios.get("faster"), ".2f"),
            *([_fmt(ratios.get("decode_faster"), ".2f")] if generation else []),
            "-" if ratios.get("quality_pct") is None else f"{ratios['quality_pct']:.1f}%",
        ])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def perplexity_lines(report: dict[str, Any]) -> list[str]:
    """For causal LMs: every model's perplexity beside the reference's, on the same tokens."""
    if report.get("quality_metric") != "perplexity" or len(report["models"]) < 2:
        return []
    reference = report["models"][0]
    base = reference["metrics"].get("perplexity")
    tokens = report.get("eval_tokens")
    sentence = (f"Held-out perplexity on the same {f'{tokens:,} ' if tokens else ''}tokens of `{report['dataset']}`: "
                f"`{reference['name']}` (reference) {_fmt(base, '.2f')}")
    lines = ["", sentence]
    for model in report["models"][1:]:
        value = model["metrics"].get("perplexity")
        times = f" ({value / base:.2f}x the reference's)" if value is not None and base else ""
        lines[-1] += f"; `{model['name']}` {_fmt(value, '.2f')}{times}"
    lines[-1] += "."
    return lines


def render_markdown(report: dict[str, Any], plots: list[str] | None = None) -> str:
    """The full `report.md`: what was measured, how, the table, energy sources and the plots."""
    reference = report["models"][0]["name"]
    lines = [
        "# Big vs small",
        "",
        f"Task `{report['task']}` on `{report['dataset']}` ({report['num_samples']:,} evaluation samples). "
        f"Ratios are against `{reference}`: *x smaller* compares non-zero parameters, *x faster* the "
        f"median latency at batch size 1, *% of quality* the {report['quality_metric']}"
        + (" (lower is better, so the ratio is inverted)." if report.get("lower_is_better") else "."),
        "",
        markdown_table(report),
        *perplexity_lines(report),
        "",
        "## How it was measured",
        "",
        f"- Latency: batch size 1, median and 95th percentile after warm-up; throughput at batch size "
        f"{report['throughput_batch_size']}.",
        f"- Metrics computed with `evaluate` on the same {report['num_samples']:,} samples for every model.",
        "- Sparsity: exact zeros among the pruned weights (the layers in `sparsity_masks.safetensors`, else the "
        "Linear layers of the transformer blocks); a compacted model has its pruned units removed instead.",
        f"- Device: {report.get('device', 'cpu')}; threads: {report.get('num_threads', '-')}.",
    ]
    if report.get("generation"):
        g = report["generation"]
        lines.append(
            f"- Generation: batch size 1, greedy with the KV cache, {g['new_tokens']} new tokens after each of "
            f"{g['num_prompts']} prompts of {g['prompt_tokens']} tokens (the same for every model); prefill is the "
            "prompt's forward, decode tokens/s and energy per token cover the new tokens only.")
    sources = sorted({m["energy_source"] for m in report["models"] if m.get("energy_source")})
    if sources:
        lines.append(f"- Inference energy source: {', '.join(f'`{s}`' for s in sources)}.")
    trained = [m for m in report["models"]
               if m.get("training_energy_kwh") is not None or m.get("lineage_energy_kwh") is not None]
    if trained:
        how = ("*Own run* is the model's own training; *with ancestors* adds the runs of the models it was made "
               "from (a student's teacher fine-tuning, a compacted model's pruning and distillation), each counted "
               "once. Compaction and vocabulary trimming train nothing. Pretraining of the original checkpoint is "
               "not included.")
        lines += ["", "## Training energy", "", how, "",
                  "| Model | Own run (kWh) | Own CO2 (g) | With ancestors (kWh) | With ancestors CO2 (g) | Made from | Source |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for m in trained:
            made_from = " + ".join(f"`{r['model']}`" for r in m.get("lineage_runs") or [] if r["relation"] == "ancestor")
            lines.append(f"| `{m['name']}` | {_fmt(m.get('training_energy_kwh'), '.4g')} "
                         f"| {_fmt(m.get('training_co2_grams'), '.3g')} | {_fmt(m.get('lineage_energy_kwh'), '.4g')} "
                         f"| {_fmt(m.get('lineage_co2_grams'), '.3g')} | {made_from or '-'} "
                         f"| {m.get('training_energy_source') or '-'} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: str | os.PathLike, plots: list[str] | None = None) -> tuple[Path, Path]:
    """Write `report.json` and `report.md` into `output_dir`; returns both paths."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / REPORT_JSON, output_dir / REPORT_MD
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, render_markdown(report, plots))
    return json_path, md_path

