"""Write a comparison as `report.json` (for tools) and `report.md` (for people).

Both are built from the plain dictionary that `Comparison.to_dict()` returns, so a report read back
from disk renders exactly like a fresh one (model cards reuse `markdown_table`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..utils.files import atomic_write_json, atomic_write_text
from .pareto import decode_points, dominated_by, pareto_front

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


def speed_caveat(model: dict[str, Any]) -> str | None:
    """Why this row's speed ratios against the reference are not trustworthy (see `compare.TIMING_RULE`), or None."""
    return model.get("speed_ratio_caveat")


def _flagged(text: str, model: dict[str, Any]) -> str:
    # a speed ratio the timing rule does not trust is marked, and explained under the table
    return f"{text} (?)" if speed_caveat(model) and text != "-" else text


def timing_lines(report: dict[str, Any]) -> list[str]:
    """Under the table: which speed ratios are not trustworthy and why, with the rule that says so."""
    flagged = [m for m in report["models"] if speed_caveat(m)]
    if not flagged:
        return []
    rule = (report.get("timing") or {}).get("rule", "")
    lines = ["", "**Speed ratios marked (?) are not trustworthy**, measure again on a quiet machine: "
             + "; ".join(f"`{m['name']}`: {speed_caveat(m)}" for m in flagged) + "."]
    return lines + ([rule] if rule else [])


def markdown_table(report: dict[str, Any]) -> str:
    """The side-by-side table: one row per model, ratios against the first (reference) model."""
    metric_names = report.get("metric_names") or sorted({k for m in report["models"] for k in m["metrics"]})
    generation = any(m.get("decode_tokens_per_s") is not None for m in report["models"])
    per_token = any(m.get("energy_joules_per_token") is not None for m in report["models"])
    header = ["Model", "Params", "Non-zero", "Sparsity", "Disk (MiB)", *metric_names,
              "p50 (ms)", "p95 (ms)", "Throughput (/s)", "Energy (J/sample)", "kWh / 1k queries",
              *(["J/token read"] if per_token else [])]
    if generation:
        header += ["Prefill (ms)", "Decode (tok/s)", "Decode (J/token)"]
    header += ["x smaller", "x faster", *(["x faster decode"] if generation else []), "% of quality"]
    rows = [header, ["---"] * len(header)]
    for model in report["models"]:
        ratios = model.get("ratios", {})
        generation_cells = [
            _fmt(model.get("prefill_ms_p50"), ".1f"),
            _fmt(model.get("decode_tokens_per_s"), ".1f"),
            _fmt(model.get("decode_joules_per_token"), ".3g"),
        ] if generation else []
        rows.append([
            f"`{model['name']}`" + (f" (speed of `{model['speed_from']}`)" if model.get("speed_from") else ""),
            _millions(model["parameters"]),
            _millions(model["nonzero_parameters"]),
            f"{100 * model['sparsity']:.1f}%",
            _fmt(model.get("size_on_disk_mb"), ".1f"),
            *[_fmt(model["metrics"].get(name), ".4f") for name in metric_names],
            _fmt(model.get("latency_ms_p50"), ".2f"),
            _fmt(model.get("latency_ms_p95"), ".2f"),
            _fmt(model.get("throughput_samples_per_s"), ".1f"),
            _fmt(model.get("energy_joules_per_sample"), ".3g"),
            _fmt(model.get("inference_kwh_per_1k_samples"), ".3g"),
            *([_fmt(model.get("energy_joules_per_token"), ".3g")] if per_token else []),
            *generation_cells,
            _fmt(ratios.get("nonzero_smaller"), ".2f"),
            _flagged(_fmt(ratios.get("faster"), ".2f"), model),
            *([_flagged(_fmt(ratios.get("decode_faster"), ".2f"), model)] if generation else []),
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
        # an infinite perplexity (exploding logits) or one beside an infinite reference has no ratio worth printing
        times = (f" ({value / base:.2f}x the reference's)" if value is not None and base and _is_finite(value)
                 and _is_finite(base) else "")
        lines[-1] += f"; `{model['name']}` {_fmt(value, '.2f')}{times}"
    lines[-1] += "."
    return lines


# "equal quality" in the verdict: within half a point of accuracy (as the quantization targets), 1% of perplexity
_EQUAL_ACCURACY, _EQUAL_PERPLEXITY_RATIO = 0.005, 1.01


def _made_from_reference(model: dict[str, Any], reference: dict[str, Any]) -> bool:
    """A quantized copy of the reference: its record's source is the reference's folder, or, without
    folders to compare, it is named after the reference and its method (`teacher-int8`)."""
    record = model.get("quantization") or {}
    source = record.get("source")
    if source and reference.get("path"):
        return _same_folder(Path(source), Path(reference["path"]))
    return bool(record) and model["name"] == f"{reference['name']}-{record.get('method')}"


def _same_folder(source: Path, path: Path) -> bool:
    """Whether a record's `source` names the folder `path`. `quantize` records the source as it was given,
    relative to the directory it ran in, which need not be this one: a relative source names every folder
    whose absolute path ends with it."""
    if source.resolve() == path.resolve():
        return True
    parts = tuple(part for part in source.parts if part != ".")
    return (not source.is_absolute() and ".." not in parts and bool(parts)
            and path.resolve().parts[-len(parts):] == parts)


def _quantized_reference(report: dict[str, Any]) -> dict[str, Any] | None:
    """The reference model quantized (the quickstart's `teacher-int8`): what a user would do instead."""
    reference = report["models"][0]
    for model in report["models"][1:]:
        if _made_from_reference(model, reference):
            return model
    return next((m for m in report["models"][1:] if m["name"] == f"{reference['name']}-int8"), None)


def _as_large_as(model: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether `model` has at least the reference's non-zero parameters (False where either count is unknown)."""
    size, reference_size = model.get("nonzero_parameters"), reference.get("nonzero_parameters")
    return size is not None and reference_size is not None and size >= reference_size


def _verdict_doubt(*models: dict[str, Any]) -> str:
    caveats = [f"`{m['name']}`: {speed_caveat(m)}" for m in models if speed_caveat(m)]
    return f" The timing behind it is not trustworthy ({'; '.join(caveats)})." if caveats else ""


def student_vs_quantized_teacher(report: dict[str, Any]) -> str | None:
    """One plain sentence, from the report's own numbers: does the best student beat the quantized teacher
    on speed (p50 latency at batch size 1) at equal or better quality? None without a quantized teacher."""
    rival = _quantized_reference(report)
    reference = report["models"][0]
    # the reference's other quantized copies (teacher-int4 beside teacher-int8) are no students, nor is a model
    # as large as the reference (a fine-tuned copy of it: the LLM quickstart's teacher-corrected)
    students = [m for m in report["models"][1:] if m is not rival and not _made_from_reference(m, reference)
                and not _as_large_as(m, reference)]
    metric, lower = report["quality_metric"], report.get("lower_is_better", False)
    if rival is None or not students or rival["metrics"].get(metric) is None:
        return None

    def quality(model: dict[str, Any]) -> float:
        return model["metrics"].get(metric, float("nan"))

    # a NaN or infinite score (a broken export) ranks nowhere: min() and max() would name it the best, and a NaN
    # quantized teacher would beat every student; such models are left out and named, as in `decode_points`
    unscored = [m["name"] for m in (rival, *students) if not _is_finite(quality(m))]
    if unscored:
        left_out = f" No finite {metric} for {', '.join(f'`{name}`' for name in unscored)}: left out of this verdict."
        if not _is_finite(quality(rival)):
            return f"**Not shown.** `{rival['name']}` has no finite {metric} to compare the students with." + (
                left_out if len(unscored) > 1 else "")
        students = [m for m in students if _is_finite(quality(m))]
        if not students:
            return f"**Not shown.** No student has a finite {metric}." + left_out
        return _student_verdict(rival, students, metric, lower, quality) + left_out
    return _student_verdict(rival, students, metric, lower, quality)


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _student_verdict(rival: dict[str, Any], students: list[dict[str, Any]], metric: str, lower: bool,
                     quality) -> str:
    """The verdict of `student_vs_quantized_teacher` among students that all have a finite score."""

    def at_least_as_good(model: dict[str, Any]) -> bool:
        if lower:
            return quality(model) <= quality(rival) * _EQUAL_PERPLEXITY_RATIO
        return quality(model) >= quality(rival) - _EQUAL_ACCURACY

    tolerance = "1%" if lower else "0.5 point"
    good = [m for m in students if at_least_as_good(m)]
    if good:
        best = min(good, key=lambda m: (m["latency_ms_p50"], quality(m) if lower else -quality(m)))
        speedup = rival["latency_ms_p50"] / best["latency_ms_p50"]
        figures = (f"(p50 {best['latency_ms_p50']:.2f} ms against {rival['latency_ms_p50']:.2f} ms) with {metric} "
                   f"{quality(best):.4f} against {quality(rival):.4f} (equal within {tolerance}, or better)")
        doubt = _verdict_doubt(best, rival)
        if speedup > 1:
            return (f"**Yes.** `{best['name']}` is {speedup:.2f}x faster than `{rival['name']}` at batch size 1 "
                    + figures + "." + doubt)
        return (f"**No.** `{best['name']}`, the fastest model at least as good as `{rival['name']}`, is not faster "
                + figures + "." + doubt)
    best = (min if lower else max)(students, key=quality)
    # equally fast students (one lends its timing to another, `speed_from`): the better one is named
    fastest = min(students, key=lambda m: (m["latency_ms_p50"], quality(m) if lower else -quality(m)))
    verdict = (f"**No.** No student reaches the {metric} of `{rival['name']}` ({quality(rival):.4f}, within {tolerance}): "
               f"the best, `{best['name']}`, has {quality(best):.4f}")
    if fastest["latency_ms_p50"] < rival["latency_ms_p50"]:
        return verdict + (f"; the fastest, `{fastest['name']}` ({metric} {quality(fastest):.4f}), is "
                          f"{rival['latency_ms_p50'] / fastest['latency_ms_p50']:.2f}x faster at batch size 1."
                          + _verdict_doubt(fastest, rival))
    return verdict + ", and none is faster at batch size 1."


def _verdict_section(report: dict[str, Any]) -> list[str]:
    verdict = student_vs_quantized_teacher(report)
    if verdict is None:
        return []
    return ["## Small model, or the big one quantized?", "",
            "Does the best student beat the quantized teacher on speed at equal or better quality? " + verdict, ""]


# decode tokens/s of two served models closer than this (as a fraction) answer neither Yes nor No: the timing
# rule's checks look at batch-1 forwards, not at decoding, so a small decode ratio carries no caveat of its own
_DECODE_NOISE = 0.05


def _serving_key(model: dict[str, Any]) -> tuple[str, str] | None:
    record = model.get("quantization") or {}
    return (str(record.get("backend")), str(record.get("method"))) if record.get("method") else None


def served_pairs(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(quantized reference, quantized student) pairs served by the same engine at the same precision,
    both with decode speed and perplexity: `teacher-int4` against `student-int4`, in the report's order."""
    reference = report["models"][0]
    metric = report["quality_metric"]

    def measured(model: dict[str, Any]) -> bool:
        return model.get("decode_tokens_per_s") is not None and model["metrics"].get(metric) is not None

    served = [m for m in report["models"][1:] if _serving_key(m) and measured(m)]
    teachers = {_serving_key(m): m for m in served if _made_from_reference(m, reference)}
    return [(teachers[_serving_key(m)], m) for m in served
            if not _made_from_reference(m, reference) and _serving_key(m) in teachers]


def served_verdict(report: dict[str, Any]) -> list[str]:
    """Bullet lines, from the report's own numbers: for each engine and precision, does the quantized student
    decode faster than the quantized teacher (ratio), at what cost in perplexity (ratio); then which models
    are dominated (another has lower perplexity and decodes faster, so serving them makes no sense).

    Empty without a quantized teacher and student served the same way, or without decode speeds.
    """

    pairs = served_pairs(report)
    if not pairs:
        return []
    metric, lower = report["quality_metric"], report.get("lower_is_better", False)
    lines = []
    for teacher, student in pairs:
        record = student["quantization"]
        speedup = student["decode_tokens_per_s"] / teacher["decode_tokens_per_s"]
        quality, rival_quality = student["metrics"][metric], teacher["metrics"][metric]
        within_noise = abs(speedup - 1) < _DECODE_NOISE
        answer = "Not shown" if within_noise else "Yes" if speedup > 1 else "No"
        how = f"{speedup:.2f}x as fast as" if speedup <= 1 else f"{speedup:.2f}x faster than"
        cost = (f"at {quality / rival_quality:.2f}x its {metric} ({quality:.2f} against {rival_quality:.2f})"
                if lower and rival_quality else f"at {metric} {quality:.4f} against {rival_quality:.4f}")
        lines.append(f"- {record.get('method')} in {record.get('backend')}: **{answer}.** `{student['name']}` decodes "
                     f"{how} `{teacher['name']}` ({student['decode_tokens_per_s']:.1f} against "
                     f"{teacher['decode_tokens_per_s']:.1f} tokens/s at batch size 1), {cost}."
                     + (f" A difference under {_DECODE_NOISE:.0%} is within what repeated decode timings of one "
                        "model differ by on a CPU: it shows neither a gain nor a loss." if within_noise else "")
                     + _verdict_doubt(student, teacher))
    points = decode_points(report)
    dominated = dominated_by(points, lower_quality_is_better=lower)
    if dominated:
        lines.append(f"- Dominated (another model has a better {metric} and decodes faster: serving them makes no "
                     "sense): " + ", ".join(f"`{name}` (by `{by}`)" for name, by in dominated.items()) + ".")
    else:
        lines.append(f"- No model is dominated: each decodes faster than every model with a better {metric}.")
    front = pareto_front(points, lower_quality_is_better=lower)
    lines.append("- On the Pareto front (`quality_vs_decode_speed.png`): " + ", ".join(f"`{n}`" for n in front) + ".")
    return lines


def _served_section(report: dict[str, Any]) -> list[str]:
    lines = served_verdict(report)
    if not lines:
        return []
    return ["## Served the way LLMs are served: student against teacher, same engine and precision", "",
            "Does the quantized student decode faster than the quantized teacher, and at what cost in quality?", "",
            *lines, ""]


def _timing_spread_lines(report: dict[str, Any]) -> list[str]:
    """How steady each model's timing was, and the load the machine was under, as `report.json` records it."""
    models = [m for m in report["models"] if m.get("latency_ms_p10") is not None and not m.get("speed_from")]
    if not models:
        return []
    cores = (report.get("timing") or {}).get("cpu_cores")

    def load(model: dict[str, Any]) -> str:
        values = [v for v in (model.get("load_average_1min") or {}).values() if v is not None]
        others = model.get("other_cpu_cores")
        return ((f", load {max(values):.1f}" if values else "")
                + (f", other processes {others:.2f} cores" if others is not None else ""))

    return [f"- Timing spread, batch-1 latency p10-p90 (ms), the 1-minute load average and the CPU other "
            f"processes used while it was timed{f' (of {cores} cores)' if cores else ''}: "
            + "; ".join(f"`{m['name']}` {m['latency_ms_p10']:.2f}-{m['latency_ms_p90']:.2f}{load(m)}" for m in models)
            + ". " + (report.get("timing") or {}).get("rule", "")]


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
        *timing_lines(report),
        *perplexity_lines(report),
        "",
        *_verdict_section(report),
        *_served_section(report),
        "## How it was measured",
        "",
        f"- Latency: batch size 1, median and 95th percentile after warm-up; throughput at batch size "
        f"{report['throughput_batch_size']}{_scored_while_timed(report)}.",
        *_timing_spread_lines(report),
        f"- Metrics computed with `evaluate` on the same {report['num_samples']:,} samples for every model.",
        *_scored_alone_lines(report),
        *_speed_from_lines(report),
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
    quantized = [m for m in report["models"] if m.get("quantization")]
    if quantized:
        lines.append("- Quantized: " + "; ".join(
            f"`{m['name']}` {m['quantization'].get('method')} with {m['quantization'].get('backend')} on "
            f"{m['quantization'].get('device')} ({m['quantization'].get('scheme', '')})" for m in quantized)
            + ". ONNX models run in ONNX Runtime with as many threads as PyTorch, on the same batches and timers"
            + ("; exported without a KV cache, they have no generation figures." if report.get("generation") else "."))
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


def _speed_from_lines(report: dict[str, Any]) -> list[str]:
    """Which rows show another model's speed, and why that is the same figure (`compare_models(speed_from=...)`)."""
    shared = [m for m in report["models"] if m.get("speed_from")]
    if not shared:
        return []
    names = ", ".join(f"`{m['name']}`" for m in shared)
    return [f"- Not timed, scored for quality and size only: {names}. "
            "Latency, throughput, prefill, decode and inference energy in "
            f"{'its row are those' if len(shared) == 1 else 'their rows are those'} of the model named beside "
            + ("it" if len(shared) == 1 else "each")
            + ", timed in this run: the same architecture and weight shapes, run the same way (only the weights' "
            "values differ), so a second timing would measure the machine's noise, not the model."]


def _scored_alone_lines(report: dict[str, Any]) -> list[str]:
    """Which models were scored one sample at a time, and why (their outputs depend on their batch)."""
    alone = [m["name"] for m in report["models"]
             if m.get("quality_batch_size") == 1 and report.get("throughput_batch_size", 1) > 1]
    if not alone:
        return []
    return [(f"- Quality of {', '.join(f'`{name}`' for name in alone)} scored one sample at a time, unpadded (as "
             f"served at batch size 1): {'its' if len(alone) == 1 else 'their'} activations are quantized at run "
             "time with one scale for the whole batch, so in a padded batch a sample's outputs would depend on the "
             "samples beside it.")]


# the fields every report.json the kit wrote holds: a file without them is someone else's
_REPORT_FIELDS = ("task", "dataset", "models", "quality_metric")


def _is_kit_report(path: Path) -> bool:
    """Whether `path` is a `report.json` or `report.md` that `write_report` wrote."""
    try:
        text = path.read_text(encoding="utf-8")
        if path.name == REPORT_MD:
            return text.startswith("# Big vs small\n")
        report = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(report, dict) and all(field in report for field in _REPORT_FIELDS)


def recorded_plots(output_dir: str | os.PathLike) -> set[str]:
    """The names of the plots that the kit's own report in `output_dir` says the kit drew there (empty without one).

    `report.json` lists them: `plots`, those it shows, and `earlier_plots`, those an earlier report drew there
    that are still on disk (a report written without plots keeps them the kit's). A report of an older version,
    without these lists, names its plots in `report.md` (its `## Plots` section), which is read instead.
    """
    output_dir = Path(output_dir)
    json_path, md_path = output_dir / REPORT_JSON, output_dir / REPORT_MD
    if json_path.is_file() and not json_path.is_symlink() and _is_kit_report(json_path):
        record = json.loads(json_path.read_text(encoding="utf-8"))
        listed = record.get("plots")
        if isinstance(listed, list):
            earlier = record.get("earlier_plots") if isinstance(record.get("earlier_plots"), list) else []
            return {name for name in listed + earlier if isinstance(name, str)}
    if md_path.is_file() and not md_path.is_symlink() and _is_kit_report(md_path):
        text = md_path.read_text(encoding="utf-8")
        if "\n## Plots\n" in text:
            return set(re.findall(r"^!\[[^\]]*\]\(([^()/\\]+\.png)\)$", text.split("\n## Plots\n", 1)[1], re.MULTILINE))
    return set()


def check_report_writable(output_dir: str | os.PathLike, plot_names: Sequence[str] = ()) -> None:
    """Raise unless every file the report writes into `output_dir` is missing or one the kit wrote.

    `report.json` and `report.md` must be a report the kit wrote; each of `plot_names` (the PNGs about to be
    drawn) must be a plot that report recorded (`recorded_plots`). A file of the user's at any of these names
    is never replaced: `compare_models` calls this before it measures anything, so a long comparison does not
    end in a refusal.

    Raises:
        ValueError: `output_dir` is a file, or one of the files is not the kit's; the message names it and
            the fix. Nothing is changed.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file, not a folder: pass another output_dir for the report.")
    for path in (output_dir / REPORT_JSON, output_dir / REPORT_MD):
        if (path.exists() or path.is_symlink()) and not (path.is_file() and not path.is_symlink() and _is_kit_report(path)):
            raise ValueError(f"{path} exists and is not a report hf_bigsmall wrote: it is left as it is. Pass another "
                             "output_dir (--output_dir) for the report, or move or delete that file yourself.")
    existing = [output_dir / name for name in plot_names
                if (output_dir / name).exists() or (output_dir / name).is_symlink()]
    recorded = recorded_plots(output_dir) if existing else set()
    for path in existing:
        if path.is_symlink() or not path.is_file() or path.name not in recorded:
            raise ValueError(f"{path} exists and is not a plot hf_bigsmall drew (the report in {output_dir} does not "
                             "list it): it is left as it is. Pass another output_dir (--output_dir) for the report, "
                             "or move or delete that file yourself.")


def _scored_while_timed(report: dict[str, Any]) -> str:
    """How the throughput pass relates to the quality scores, for the models where they share their forwards."""
    names = [m["name"] for m in report["models"] if m.get("scored_while_timed")]
    if not names:
        return ""
    which = "every model" if len(names) == len(report["models"]) else ", ".join(f"`{n}`" for n in names)
    return (f"; for {which} the throughput and energy pass is also the one that scores quality: each batch's "
            "forward is timed and metered alone, the metric computed from its logits outside the timer")


def write_report(report: dict[str, Any], output_dir: str | os.PathLike, plots: list[str] | None = None) -> tuple[Path, Path]:
    """Write `report.json` and `report.md` into `output_dir`; returns both paths.

    Only a report the kit wrote is replaced (`check_report_writable`); a file of the user's is refused.
    `report.json` lists the `plots` (their file names) and the kit's plots of earlier reports still there
    (`earlier_plots`), so a later run replaces those and no other PNG.
    """
    check_report_writable(output_dir)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = output_dir / REPORT_JSON, output_dir / REPORT_MD
    drawn = [Path(path).name for path in plots or []]
    earlier = sorted(name for name in recorded_plots(output_dir) - set(drawn) if (output_dir / name).is_file())
    atomic_write_json(json_path, {**report, "plots": drawn, "earlier_plots": earlier})
    atomic_write_text(md_path, render_markdown(report, plots))
    return json_path, md_path
