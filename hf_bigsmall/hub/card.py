"""Model cards that say how a small model was made from a big one, and what it gained and lost.

The card is built with `huggingface_hub`'s own classes (`ModelCard`, `ModelCardData`, `EvalResult`),
from what the kit writes beside the weights. Each step that made the model keeps one record in
`config.json` and renders its own section of the card: distillation (`distillation/record.py`),
pruning, width and vocabulary (`pruning/record.py`), teacher correction, quantization
(`quantization/record.py`); the energy records (`energy/record.py`) read `energy.json` and
`emissions.json`, and `report.json` gives the big-vs-small comparison. This module only puts the
sections together, in order.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distillation.record import DistillationRecord, TeacherCorrectionRecord
from ..energy.record import EnergyRecord, LineageRecord
from ..pruning.record import SparsityRecord, VocabularyTrimmingRecord, WidthRecord, weight_sparsity_per_layer
from ..quantization.backends import get_quantization_backend, quantization_backend_names
from ..quantization.record import QuantizationRecord
from ..reporting.report import REPORT_JSON, markdown_table, perplexity_lines, speed_caveat, timing_lines
from ..utils.card_text import describe_model, hub_id, public_name
from ..utils.files import final_name
from ..utils.heads import task_head

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

__all__ = ["build_model_card", "hub_id", "public_name", "validate_card", "weight_sparsity_per_layer"]

_METRIC_PRETTY = {"accuracy": "Accuracy", "f1": "F1", "perplexity": "Perplexity"}

_TEMPLATE = """---
{{ card_data }}
---

{{ body }}
"""


def _quality_sentence(row: dict[str, Any], report: dict[str, Any]) -> str:
    """How the model's quality compares with the reference's, said plainly for lower-is-better metrics."""
    metric, reference = report["quality_metric"], report["models"][0]
    if report.get("lower_is_better"):
        value, base = row["metrics"].get(metric), reference["metrics"].get(metric)
        if value is None or not base:
            return ""
        ratio = value / base
        if round(ratio, 2) == 1:
            change = "the same, within 1%"
        else:
            change = (f"{abs(ratio - 1):.0%} " + ("higher, which is worse" if ratio > 1 else "lower, which is better")
                      + " (lower is better)")
        return f"its {metric} is {ratio:.2f}x `{reference['name']}`'s ({value:.2f} against {base:.2f}): {change}"
    return f"keeps {row['ratios']['quality_pct']:.1f}% of its {metric}"


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _find_report(model_dir: Path) -> dict[str, Any] | None:
    # quickstart writes report.json in the output folder, one level above each model folder
    for candidate in (model_dir / REPORT_JSON, model_dir.parent / REPORT_JSON):
        report = _read_json(candidate)
        if isinstance(report, dict) and isinstance(report.get("models"), list):  # a report `compare` wrote
            return report
    return None


def _own_row(report: dict[str, Any], model_dir: Path) -> dict[str, Any] | None:
    """The report's row of this folder: by its path, else by its name among rows whose path is gone.

    A row whose path is another folder that exists measured that folder, whatever its name: taking it by
    name would put another model's metrics on this card. A path that no longer exists (a report moved with
    its folders, or read on another machine) leaves the name to decide.
    """
    rows = report.get("models", [])
    for row in rows:
        if row.get("path") and Path(row["path"]).resolve() == model_dir.resolve():
            return row
    return next((row for row in rows if row.get("name") == model_dir.name
                 and not (row.get("path") and Path(row["path"]).exists())), None)


def _filled(record):
    """The record when its block says something; an empty block (`{}`) says nothing and gets no section."""
    return record if record is not None and record.to_dict() else None


@dataclasses.dataclass
class _Steps:
    """The records of the steps that made a model, read from its `config.json`, in the card's order."""

    distillation: DistillationRecord | None
    sparsity: SparsityRecord | None
    width: WidthRecord | None
    trimming: VocabularyTrimmingRecord | None
    fine_tuning: TeacherCorrectionRecord | None  # on a corrected teacher: its own correction
    quantization: QuantizationRecord | None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> _Steps:
        return cls(distillation=_filled(DistillationRecord.from_config(config)),
                   sparsity=_filled(SparsityRecord.from_config(config)),
                   width=_filled(WidthRecord.from_config(config)),
                   trimming=_filled(VocabularyTrimmingRecord.from_config(config)),
                   fine_tuning=TeacherCorrectionRecord.from_config(config),
                   quantization=_filled(QuantizationRecord.from_config(config)))

    @property
    def teacher(self) -> str | None:
        return self.distillation.teacher if self.distillation else None

    @property
    def named_teacher(self) -> str | None:
        """The teacher when it has a name (one built in memory is recorded by its class name)."""
        return self.distillation.named_teacher if self.distillation else None

    @property
    def dataset(self) -> str | None:
        return self.distillation.dataset if self.distillation else None

    @property
    def pruned(self) -> bool:
        return bool(self.sparsity or self.width)

    def tags(self) -> list[str]:
        tags = ["distillation", "knowledge-distillation"] if self.distillation else []
        tags += ["pruned", "sparse"] if self.sparsity else ["pruned"] if self.width else []
        return tags + (self.quantization.card_tags() if self.quantization else [])

    def summary(self, model_type: str) -> str:
        """"This is a distilled and pruned `...` model made from ..., quantized to ... with hf_bigsmall."""
        made = ("a distilled" + (" and pruned" if self.pruned else "") if self.distillation
                else "a pruned" if self.pruned else "a")
        summary = f"This is {made} `{model_type}` model"
        summary += f" made from {describe_model(self.teacher)}" if self.teacher else ""
        summary += self.quantization.summary() if self.quantization else ""
        return summary + (" with hf_bigsmall." if (self.distillation or self.pruned or self.quantization) else ".")

    def made_section(self, model_dir: Path) -> list[str]:
        """"How it was made": each step's own section, in the order the steps run."""
        lines: list[str] = []
        if self.distillation:
            lines += self.distillation.card_section()
        if self.sparsity:
            lines += self.sparsity.card_section(model_dir)
        for record in (self.width, self.trimming, self.fine_tuning, self.quantization):
            lines += record.card_section() if record is not None else []
        return ["## How it was made", "", *lines] if lines else []


def _eval_results(row: dict[str, Any] | None, report: dict[str, Any] | None, pipeline_tag: str | None,
                  dataset: str | None) -> list | None:
    from huggingface_hub import EvalResult

    if not (row and row.get("metrics") and pipeline_tag and hub_id(dataset)):
        return None
    return [EvalResult(task_type=pipeline_tag, dataset_type=hub_id(dataset), dataset_name=dataset,
                       dataset_split=report.get("split"), metric_type=name, metric_name=_METRIC_PRETTY.get(name, name),
                       metric_value=round(float(value), 4))
            for name, value in row["metrics"].items()]


def _co2_eq_emissions(energy: EnergyRecord | None, lineage: LineageRecord | None) -> dict[str, Any]:
    """The runs this model came from (its own and its ancestors'), summed, else its own run; or nothing."""
    emissions = (lineage.co2_eq_emissions() if lineage else None) or (energy.co2_eq_emissions() if energy else None)
    return {"co2_eq_emissions": emissions} if emissions else {}


def _comparison_lines(row: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """The model's size, and against the report's reference: smaller, faster, and how much quality it keeps."""
    against = ""
    if row is not report["models"][0] and row.get("ratios", {}).get("quality_pct") is not None:
        ratios = row["ratios"]
        against = (f" Against `{report['models'][0]['name']}` it is {ratios['nonzero_smaller']:.2f}x smaller, "
                   f"{ratios['faster']:.2f}x faster at batch size 1 and {_quality_sentence(row, report)}.")
        caveat = speed_caveat(row)
        if caveat:
            against += f" The speed ratio is not trustworthy: {caveat}."
    return [f"It has {row['nonzero_parameters'] / 1e6:.2f} M non-zero parameters "
            f"({100 * row['sparsity']:.1f}% sparse)." + against, ""]


def _report_section(report: dict[str, Any]) -> list[str]:
    return ["## Big vs small", "", f"Measured on `{report['dataset']}` ({report['num_samples']:,} samples).", "",
            markdown_table(report), *timing_lines(report), *perplexity_lines(report), ""]


def _backend_how_to_use(record: QuantizationRecord, repo_id: str | None, model_name: str,
                        architecture: str | None) -> list[str] | None:
    """"How to use" from the backend that made the folder (its registered `how_to_use`).

    None when no backend of that name is registered in this process: the card shows transformers' then.
    """
    if not record.backend or record.backend not in quantization_backend_names():
        return None
    # from the Hub: snapshot_download(repo_id) first, then this folder; never the local path of the machine
    snippet = get_quantization_backend(record.backend).how_to_use(
        repo_id or model_name, record.to_dict(), architecture=architecture, from_hub=bool(repo_id))
    # a snippet that loads the folder by its name (ONNX, GenAI, a user's) needs the note; GGUF's runs from inside it
    stands_for = [] if repo_id or f'"{model_name}' not in snippet else [
        f"`{model_name}` stands for this folder: give its path, or its Hub id once pushed.", ""]
    return ["## How to use", "", *stands_for, *snippet.splitlines()]


def _transformers_how_to_use(loader: str, repo_id: str | None, model_name: str, on_gpu: bool) -> list[str]:
    return ["## How to use", "", *([] if repo_id else [
            f"`{model_name}` stands for this folder: give its path, or its Hub id once pushed.", ""]),
            "```python", f"from transformers import {loader}", "",
            f'model = {loader}.from_pretrained("{repo_id or model_name}"'
            + (', device_map="cuda"' if on_gpu else "") + ")", "```"]


def build_model_card(
    model_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    report: dict[str, Any] | str | os.PathLike | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    license: str | None = "apache-2.0",
    language: str | list[str] | None = "en",
    tags: list[str] | None = None,
    energy: bool = True,
) -> ModelCard:
    """Build the model card of a saved model folder, checked against the card metadata schema.

    Reads `config.json` (its `distillation` and `sparsity` blocks say how the model was made),
    `energy.json` (its training run) and `emissions.json` (that run plus the runs of the models it
    came from, see `hf_bigsmall.energy.lineage`; when present its total is `co2_eq_emissions`), and `report.json` (in the folder or its parent, as the
    quickstart writes it) for the metrics, `model-index` and the big-vs-small table.

    Args:
        model_dir: a folder written by `save_pretrained`.
        repo_id: the Hub repository the card is for (its name becomes the model name).
        report: a comparison dict or path to a `report.json`; found beside the model when omitted.
        dataset: evaluation dataset name (defaults to the one in the report).
        base_model: Hub id of the model this one comes from (defaults to the distillation teacher).
        license, language, tags: card metadata.
        energy: add `co2_eq_emissions` and the energy section from `energy.json` when it exists.

    Returns:
        A `huggingface_hub.ModelCard`; `card.save(path)` writes it, `card.push_to_hub(repo_id)`
        uploads it.

    Example:

    ```python
    from hf_bigsmall import build_model_card

    card = build_model_card("bigsmall_output/student", repo_id="me/minilm-rt-student")
    card.save("bigsmall_output/student/README.md")
    ```
    """
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise ValueError(f"{model_dir} has no config.json: pass a folder written by `save_pretrained`.")
    if report is not None and not isinstance(report, dict):
        report = _read_json(Path(report) if Path(report).is_file() else Path(report) / REPORT_JSON)
    if report is None:
        report = _find_report(model_dir)
        if report and _own_row(report, model_dir) is None:
            # a report found beside the folder that never measured this model (another run's in the same output
            # folder) says nothing about it: neither its dataset nor its table go on this card
            report = None
    row = _own_row(report, model_dir) if report else None
    steps = _Steps.from_config(config)
    energy_record = EnergyRecord.from_folder(model_dir) if energy else None
    lineage = LineageRecord.from_folder(model_dir)

    base_model = hub_id(base_model or steps.named_teacher)
    dataset = dataset or (report or {}).get("dataset") or steps.dataset
    architecture = (config.get("architectures") or [""])[0]
    head = task_head(architecture)
    pipeline_tag = head.pipeline_tag if head is not None else None
    # a card built in the `.partial` folder names the folder it becomes
    model_name = (repo_id or final_name(model_dir.name)).split("/")[-1]

    eval_results = _eval_results(row, report, pipeline_tag, dataset)
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[hub_id(dataset)] if hub_id(dataset) else None,
        language=language,
        license=license,
        library_name=steps.quantization.library_name() if steps.quantization else "transformers",
        pipeline_tag=pipeline_tag,
        tags=["hf-bigsmall", *steps.tags(), *(tags or [])],
        metrics=sorted(row["metrics"]) if row and row.get("metrics") else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
        **_co2_eq_emissions(energy_record, lineage),
    )

    body = [f"# {model_name}", "", steps.summary(architecture or config.get("model_type", "transformers")), ""]
    body += _comparison_lines(row, report) if row else []
    body += steps.made_section(model_dir)
    body += _report_section(report) if report else []
    body += energy_record.card_section() if energy_record else []
    body += lineage.card_section() if lineage else []
    how_to_use = _backend_how_to_use(steps.quantization, repo_id, model_name, architecture) if steps.quantization else None
    # architectures in config.json are transformers class names
    body += how_to_use or _transformers_how_to_use(architecture or "AutoModel", repo_id, model_name,
                                                   on_gpu=steps.quantization is not None)

    card = ModelCard.from_template(card_data, template_str=_TEMPLATE, body="\n".join(body))
    validate_card(card)
    return card


def validate_card(card: ModelCard | str) -> None:
    """Check a card (or the text of a `README.md`) as `huggingface_hub` parses it, with no network.

    The card is parsed back from its text with errors enabled (so a malformed `model-index` raises),
    `base_model` and `datasets` must be Hub ids, and `co2_eq_emissions.emissions` a number of grams.
    The Hub's own server-side check is `card.validate()`, which needs a network.
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parsed = ModelCard(card if isinstance(card, str) else str(card), ignore_metadata_errors=False)
    data = parsed.data
    for key in ("base_model", "datasets"):
        values = data.get(key) or []
        for value in [values] if isinstance(values, str) else values:
            try:
                validate_repo_id(value)
            except HFValidationError as error:
                raise ValueError(f"card metadata {key}={value!r} is not a Hub id: {error}") from error
    emissions = data.get("co2_eq_emissions")
    if emissions is not None and not isinstance(emissions.get("emissions"), (int, float)):
        raise ValueError(f"card metadata co2_eq_emissions needs a number of grams in 'emissions', got {emissions!r}")
    if data.eval_results and not data.model_name:
        raise ValueError("card metadata has eval results but no model name for its model-index")
