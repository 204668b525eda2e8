"""Model cards that say how a small model was made from a big one, and what it gained and lost.

The card is built with `huggingface_hub`'s own classes (`ModelCard`, `ModelCardData`, `EvalResult`),
from what the kit writes beside the weights: the `distillation` and `sparsity` blocks of
`config.json`, `energy.json` (training energy) and `report.json` (the big-vs-small comparison).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..energy.callback import EnergyCallback
from ..energy.card import ENERGY_FILE_NAME, co2_eq_emissions
from ..energy.lineage import lineage_co2_eq_emissions, lineage_lines, load_lineage
from ..reporting.report import REPORT_JSON, markdown_table, perplexity_lines, speed_caveat, timing_lines
from ..utils.files import PARTIAL_SUFFIX, atomic_write_text
from ..utils.heads import task_head

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

# Offline assets are published on the Hub under these ids: the card's `base_model` must name a Hub repo.
_EMBEDDED_HUB_IDS = {
    "embedded/all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "embedded/SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "embedded/rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
}
_METRIC_PRETTY = {"accuracy": "Accuracy", "f1": "F1", "perplexity": "Perplexity"}

_TEMPLATE = """---
{{ card_data }}
---

{{ body }}
"""


def hub_id(name: str | None) -> str | None:
    """The Hub id for a model or dataset name, or None when it is a local path with no Hub id."""
    if not name:
        return None
    if name.startswith("embedded/") and name not in _EMBEDDED_HUB_IDS:
        return None  # an offline asset with no published copy on the Hub (e.g. embedded/hamlet)
    name = _EMBEDDED_HUB_IDS.get(name, name)
    if os.path.exists(name) or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", name) or name.startswith((".", "/")):
        return None
    return name


def public_name(name: Any) -> Any:
    """What a card may call a model it names: its Hub id, an embedded name, or a local folder's last part.

    A card goes to the Hub: a path on the machine that wrote it (`/home/me/out/teacher`) means nothing
    there and tells strangers about that machine, so only the folder's own name is kept.
    """
    if not isinstance(name, str) or not name:
        return name
    public = hub_id(name)
    if public is not None or name.startswith("embedded/"):
        return public or name
    if os.path.exists(name) or name.startswith(("/", ".", "~")) or os.sep in name or name.count("/") > 1:
        return Path(name).name
    return name


def _describe(name: str) -> str:
    """`the local model `teacher`` for a folder, `` `org/name` `` for a Hub id."""
    public = public_name(name)
    return f"`{public}`" if public == name or hub_id(name) else f"the local model `{public}`"


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
        if report is not None:
            return report
    return None


def _own_row(report: dict[str, Any], model_dir: Path) -> dict[str, Any] | None:
    for row in report.get("models", []):
        if row.get("path") and Path(row["path"]).resolve() == model_dir.resolve():
            return row
    return next((row for row in report.get("models", []) if row.get("name") == model_dir.name), None)


def weight_sparsity_per_layer(model_dir: Path) -> dict[str, float]:
    """Fraction of exact zeros in each saved weight matrix, read from the safetensors files."""
    from safetensors.numpy import load_file

    per_layer: dict[str, float] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        if shard.name == "sparsity_masks.safetensors":
            continue
        for name, tensor in load_file(shard).items():
            # embeddings are never pruned; only the weight matrices of the layers say what pruning did
            if tensor.ndim == 2 and name.endswith(".weight") and "embed" not in name:
                per_layer[name.removesuffix(".weight")] = float((tensor == 0).mean())
    return per_layer


def _value(value: Any) -> str:
    return f"`{value:.4g}`" if isinstance(value, float) else f"`{value}`"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    """A two-column Markdown table of settings; unset (None) settings are left out, local paths cut to their name."""
    lines = ["| | |", "| --- | --- |"]
    return lines + [f"| {key.replace('_', ' ')} | {_value(public_name(value))} |" for key, value in rows
                    if value is not None]


def _cached_logits_sentence(cached: dict) -> str:
    if cached.get("top_k") is None:  # classification: every logit is kept
        return "The teacher ran once over the training set; the student was distilled from its cached logits."
    drawn = (f" and {cached['tail_samples']} more tokens drawn from the rest of its distribution"
             if cached.get("tail_samples") else "")
    return (f"The teacher ran once over the training set; the student was distilled from its cached top-{cached['top_k']} "
            f"log-probabilities per token{drawn}, plus the probability mass outside them "
            f"(stored as {cached.get('logprob_dtype')}).")


def _training_data_sentence(data: dict) -> str:
    """What the student was distilled on: the labelled rows, a teacher-labelled transfer set, augmented copies."""
    parts = [f"{data['labelled']:,} labelled training texts" if isinstance(data.get("labelled"), int)
             else "the labelled training texts"]
    transfer = data.get("transfer_set")
    if isinstance(transfer, dict):
        parts.append(f"{transfer.get('samples', 0):,} unlabelled texts from {public_name(transfer.get('source'))} "
                     f"(of {transfer.get('available', 0):,}; {transfer.get('overlapping', 0):,} that are also in the "
                     "labelled dataset, its test split included, and "
                     f"{transfer.get('repeats', 0):,} repeats removed)")
    augmentation = data.get("augmentation")
    if isinstance(augmentation, dict):
        parts.append(f"{augmentation.get('samples', 0):,} augmented copies of the training texts "
                     f"({augmentation.get('method')}, ratio {augmentation.get('ratio')}, replacement probability "
                     f"{augmentation.get('replace_probability')}, seed {augmentation.get('seed')})")
    sentence = "The student saw " + (", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0])
    return sentence + ("; the teacher labelled the unlabelled ones (soft targets only)." if len(parts) > 1 else ".")


def _corrected_on(correction: dict) -> str:
    """What a teacher correction trained on, "131,072 tokens of `embedded/news`", as far as it was recorded."""
    tokens = correction.get("tokens")
    amount = f"{tokens:,} tokens" if isinstance(tokens, int) and not isinstance(tokens, bool) else "training data"
    return amount + (f" of `{correction['dataset']}`" if correction.get("dataset") else "")


def _correction_sentence(correction: dict) -> str:
    return (f"Teacher correction (Sreenivas et al., 2024): the teacher was first fine-tuned on "
            f"{_corrected_on(correction)}. This model was cut from the corrected teacher, and the corrected "
            "teacher is the one it is distilled from.")


def _fine_tuning_section(correction: dict | None) -> list[str]:
    """The card of a corrected teacher: what it was fine-tuned from, on what, and what for."""
    if not isinstance(correction, dict):
        return []
    source = f" from {_describe(correction['from'])}" if correction.get("from") else ""
    return ["### Fine-tuning", "", f"Fine-tuned{source} on {_corrected_on(correction)} with the next-token loss, to be "
            "the corrected teacher of a pruned student (teacher correction, Sreenivas et al., 2024).", "",
            *_table([(key, value) for key, value in correction.items() if key not in ("from", "dataset", "tokens")]),
            ""]


_METHODS = {
    "magnitude": "magnitude (the smallest weights go)",
    "wanda": "Wanda (Sun et al., 2024: |weight| x the norm of its input on calibration data, compared within each "
             "output row)",
    "activation": "activation importance on calibration data (Minitron, Sreenivas et al., 2024)",
    "sparsegpt": "SparseGPT (Frantar & Alistarh, 2023: the Optimal Brain Surgeon cost of each weight under the "
                 "Hessian of its layer's calibration inputs, the kept weights updated to compensate)",
}
_SCHEDULES = {
    "one_shot": "once, on calibration data",
    "linear": "gradually during training, on a linear schedule",
    "cubic": "gradually during training, on a cubic schedule (Zhu & Gupta, 2017)",
    "imp": "in rounds of iterative magnitude pruning with rewinding (Frankle & Carbin, 2019)",
}


def _pruning_sentence(sparsity: dict) -> str:
    method, schedule, structure = sparsity.get("method"), sparsity.get("schedule"), sparsity.get("structure")
    how = _METHODS.get(method, f"{method}" if method else "magnitude")
    when = _SCHEDULES.get(schedule, "during training")
    shape = {None: "", "unstructured": "individual weights", "neurons": "whole neurons", "heads": "whole attention heads"}
    what = shape.get(structure, f"{structure} semi-structured sparsity (N zeros in every M inputs)")
    order = " Each block was calibrated on the outputs of the blocks before it, already pruned." if sparsity.get(
        "sequential") else ""
    return f"Pruned {when}, by {how}" + (f", {what}" if what else "") + "." + order


def _made_section(distillation: dict | None, sparsity: dict | None, teacher: str | None,
                  trimming: dict | None = None, width: dict | None = None) -> list[str]:
    lines: list[str] = []
    if distillation:
        lines += ["### Distillation", "", f"Distilled from {_describe(teacher or distillation.get('teacher'))} "
                  "(Hinton et al., 2015: the student matches the teacher's softened outputs).", ""]
        correction = distillation.get("teacher_correction")
        if isinstance(correction, dict):
            lines += [_correction_sentence(correction), ""]
        cached = distillation.get("teacher_logits")
        if isinstance(cached, dict):
            lines += [_cached_logits_sentence(cached), ""]
        data = distillation.get("training_data")
        if isinstance(data, dict):
            lines += [_training_data_sentence(data), ""]
        lines += _table([(key, value) for key, value in distillation.items()
                         if key not in ("teacher_logits", "teacher_correction", "training_data")])
        lines.append("")
    if sparsity:
        per_layer = sparsity.get("per_layer") or {}
        settings = [(k, v) for k, v in sparsity.items() if k != "per_layer"]
        lines += ["### Pruning", "", _pruning_sentence(sparsity), ""]
        lines += _table(settings) + [""]
        if per_layer:
            lines += ["Sparsity reached, per layer:", "", "| Layer | Sparsity |", "| --- | --- |"]
            lines += [f"| `{name}` | {100 * float(value):.1f}% |" for name, value in per_layer.items()]
            lines.append("")
    if width:
        lines += ["### Width", "", f"Structured pruning by {width.get('criterion', 'importance')}: the least important "
                  "units were removed from every kept block, so the model is physically smaller and loads with plain "
                  "`from_pretrained`.", "", "| | before | after |", "| --- | --- | --- |"]
        for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_size", "params"):
            value = width.get(key)
            if isinstance(value, (list, tuple)) and len(value) == 2:
                lines.append(f"| {key.replace('_', ' ')} | {value[0]:,} | {value[1]:,} |")
        lines.append("")
    if trimming:
        lines += ["### Vocabulary", "",
                  f"The vocabulary was trimmed from {trimming['original_vocab_size']:,} to {trimming['vocab_size']:,} "
                  f"tokens, those used by {trimming['num_texts']:,} training texts (special tokens kept). Words made "
                  "of other pieces are split into kept pieces or read as the unknown token.", ""]
    return lines


def _quantization_section(quantization: dict | None) -> list[str]:
    if not quantization:
        return []
    settings = [(key, quantization.get(key)) for key in ("method", "scheme", "backend", "backend_version", "device",
                                                          "format", "source", "int8_max_logit_change",
                                                          "max_logit_difference_from_transformers")]
    # an engine export (ONNX Runtime GenAI fp32, GGUF F32/F16) can keep float weights
    stored = ("Exported for the engine after training; the weights stay floating point."
              if quantization.get("method") in ("fp32", "f32", "f16")
              else "Quantized after training; the weights stored are integers.")
    return ["### Quantization", "", stored, "",
            *_table(settings), ""]


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
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise ValueError(f"{model_dir} has no config.json: pass a folder written by `save_pretrained`.")
    if report is not None and not isinstance(report, dict):
        report = _read_json(Path(report) if Path(report).is_file() else Path(report) / REPORT_JSON)
    report = report if report is not None else _find_report(model_dir)
    row = _own_row(report, model_dir) if report else None
    distillation, sparsity = config.get("distillation"), config.get("sparsity")
    width = config.get("width_pruning") if isinstance(config.get("width_pruning"), dict) else None
    energy = _read_json(model_dir / "energy.json") if energy else None

    teacher = distillation.get("teacher") if distillation else None
    # a teacher built in memory is recorded by its class name, which is no Hub id
    named_teacher = teacher if teacher != (distillation or {}).get("teacher_class") else None
    base_model = hub_id(base_model or named_teacher)
    dataset = dataset or (report or {}).get("dataset") or (distillation or {}).get("dataset")
    architecture = (config.get("architectures") or [""])[0]
    head = task_head(architecture)
    pipeline_tag = head.pipeline_tag if head is not None else None
    # a card built in the `.partial` folder names the folder it becomes
    model_name = (repo_id or model_dir.name.removesuffix(PARTIAL_SUFFIX)).split("/")[-1]

    all_tags = ["hf-bigsmall"]
    if distillation:
        all_tags += ["distillation", "knowledge-distillation"]
    if sparsity:
        all_tags += ["pruned", "sparse"]
    elif width:
        all_tags += ["pruned"]
    quantization = config.get("quantization")
    if quantization:
        all_tags += ["quantized", quantization["method"],
                     *(["onnx"] if quantization.get("format") in ("onnx", "onnxruntime-genai") else []),
                     *(["gguf"] if quantization.get("format") == "gguf" else [])]
    all_tags += tags or []

    eval_results = None
    if row and row.get("metrics") and pipeline_tag and hub_id(dataset):
        eval_results = [
            EvalResult(task_type=pipeline_tag, dataset_type=hub_id(dataset), dataset_name=dataset,
                       dataset_split=report.get("split"), metric_type=name, metric_name=_METRIC_PRETTY.get(name, name),
                       metric_value=round(float(value), 4))
            for name, value in row["metrics"].items()
        ]
    lineage = load_lineage(model_dir)
    extra: dict[str, Any] = {}
    if lineage and lineage.get("co2_grams") is not None:
        # the runs this model came from (its own and its ancestors'), summed, and the source says how
        extra["co2_eq_emissions"] = lineage_co2_eq_emissions(lineage)
    elif energy and isinstance(energy.get("co2_grams"), (int, float)) and math.isfinite(energy["co2_grams"]):
        # a NaN or inf figure (a damaged record) states nothing, rather than `emissions: .nan` on the Hub
        extra["co2_eq_emissions"] = co2_eq_emissions(energy)
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[hub_id(dataset)] if hub_id(dataset) else None,
        language=language,
        license=license,
        library_name="onnx" if (quantization or {}).get("format") in ("onnx", "onnxruntime-genai")
        else "gguf" if (quantization or {}).get("format") == "gguf" else "transformers",
        pipeline_tag=pipeline_tag,
        tags=all_tags,
        metrics=sorted(row["metrics"]) if row and row.get("metrics") else None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results,
        **extra,
    )

    body = [f"# {model_name}", ""]
    pruned = bool(sparsity or width)
    made = "a distilled" + (" and pruned" if pruned else "") if distillation else ("a pruned" if pruned else "a")
    summary = f"This is {made} `{architecture or config.get('model_type', 'transformers')}` model"
    summary += f" made from {_describe(teacher)}" if teacher else ""
    if quantization:
        summary += f", quantized to {quantization['method']} with {quantization['backend']} for {quantization['device']},"
    summary += " with hf_bigsmall." if (distillation or pruned or quantization) else "."
    body += [summary, ""]
    if row:
        against = ""
        if row is not report["models"][0] and row.get("ratios", {}).get("quality_pct") is not None:
            ratios = row["ratios"]
            against = (f" Against `{report['models'][0]['name']}` it is {ratios['nonzero_smaller']:.2f}x smaller, "
                       f"{ratios['faster']:.2f}x faster at batch size 1 and {_quality_sentence(row, report)}.")
            caveat = speed_caveat(row)
            if caveat:
                against += f" The speed ratio is not trustworthy: {caveat}."
        body += [f"It has {row['nonzero_parameters'] / 1e6:.2f} M non-zero parameters "
                 f"({100 * row['sparsity']:.1f}% sparse)." + against, ""]
    if sparsity and not sparsity.get("per_layer"):
        sparsity = {**sparsity, "per_layer": weight_sparsity_per_layer(model_dir)}
    made_lines = _made_section(distillation, sparsity, teacher, config.get("vocabulary_trimming"), width)
    made_lines += _fine_tuning_section(config.get("teacher_correction"))
    made_lines += _quantization_section(quantization)
    if made_lines:
        body += ["## How it was made", ""] + made_lines
    if report:
        body += ["## Big vs small", "", f"Measured on `{report['dataset']}` ({report['num_samples']:,} samples).", "",
                 markdown_table(report), *timing_lines(report), *perplexity_lines(report), ""]
    if energy:
        body += ["## Energy", ""] + _table([(k, v) for k, v in energy.items() if isinstance(v, (int, float, str))]) + [""]
    if lineage:
        body += ["## Emissions of the runs it came from", ""] + lineage_lines(lineage) + [""]
    loader = architecture or "AutoModel"  # architectures in config.json are transformers class names
    if (quantization or {}).get("format") == "onnxruntime-genai":  # an LLM engine export: its own loader
        from ..quantization.genai import usage_snippet

        body += ["## How to use", "", "```python", *usage_snippet(repo_id or model_name), "```"]
    elif (quantization or {}).get("format") == "onnx":
        # from the Hub: snapshot_download(repo_id) first, then this folder; never the local path of the machine
        where = repo_id or model_name
        body += ["## How to use", "", "```python", "import onnxruntime", "from transformers import AutoTokenizer", "",
                 f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
                 f'session = onnxruntime.InferenceSession("{where}/{quantization.get("file", "model.onnx")}")',
                 'logits = session.run(["logits"], dict(tokenizer("Some text", return_tensors="np")))[0]', "```"]
    elif (quantization or {}).get("format") == "gguf":
        body += _gguf_how_to_use(quantization["file"], repo_id)
    else:
        body += ["## How to use", "", *([] if repo_id else [
                 f"`{model_name}` stands for this folder: give its path, or its Hub id once pushed.", ""]),
                 "```python", f"from transformers import {loader}", "",
                 f'model = {loader}.from_pretrained("{repo_id or model_name}"'
                 + (', device_map="cuda"' if quantization else "") + ")", "```"]

    card = ModelCard.from_template(card_data, template_str=_TEMPLATE, body="\n".join(body))
    validate_card(card)
    return card


def _gguf_how_to_use(file_name: str, repo_id: str | None) -> list[str]:
    """llama.cpp, llama-cpp-python, Ollama and transformers lines for a GGUF folder (run from inside it)."""
    hub = ([f'llm = Llama.from_pretrained("{repo_id}", filename="{file_name}")  # from the Hub'] if repo_id else [])
    return ["## How to use", "", "From inside this folder:", "", "```bash",
            f'llama-cli -m {file_name} -p "Once upon a time" -n 32',
            f"printf 'FROM ./{file_name}\\n' > Modelfile && ollama create this-model -f Modelfile", "```", "",
            "```python", "from llama_cpp import Llama", "",
            f'llm = Llama(model_path="{file_name}")', *hub, 'print(llm("Once upon a time", max_tokens=32))', "```", "",
            "```python", "from transformers import AutoModelForCausalLM", "",
            f'model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{file_name}")  # dequantized to float32',
            "```"]


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


_TRAINER_SECTIONS = "## Training procedure"
# `Trainer.create_model_card`'s parameters, in order, so positional arguments can be named
_CREATE_MODEL_CARD_ARGS = ("language", "license", "tags", "model_name", "finetuned_from", "tasks", "dataset_tags",
                           "dataset", "dataset_args")


def _trainer_draft(trainer, options: dict[str, Any], existing: ModelCard | None) -> ModelCard:
    """The card `Trainer.create_model_card` would write, built in memory with the class it uses."""
    from huggingface_hub import ModelCard
    from transformers.modelcard import TrainingSummary

    tags = options.get("tags")
    tags = [tags] if isinstance(tags, str) else list(tags) if tags is not None else None
    if tags is not None and existing is not None:
        tags += [tag for tag in (existing.data.tags or []) if tag not in tags]  # as the Trainer keeps them
    summary = TrainingSummary.from_trainer(trainer, **{**{k: v for k, v in options.items() if k in _CREATE_MODEL_CARD_ARGS},
                                                       "tags": tags})
    return ModelCard(summary.to_model_card())


def _writes_energy(trainer) -> bool:
    return all(cb.add_to_model_card for cb in trainer.callback_handler.callbacks if isinstance(cb, EnergyCallback))


def write_trainer_card(trainer, *args: Any, **kwargs: Any) -> Path | None:
    """Write `output_dir/README.md` once: the kit's card, with the Trainer's training sections below.

    The card of `build_model_card` (how the model was distilled and pruned, measured sparsity,
    `co2_eq_emissions`, the big-vs-small table when a report exists) is followed by the "Training
    procedure" sections (hyperparameters, results, framework versions) of the draft that
    `Trainer.create_model_card` makes, built in memory with the same `TrainingSummary`, so the file
    is written one time, atomically. Before a model is saved in `output_dir`, the draft itself is
    the card (with `co2_eq_emissions` when `energy.json` is there). Runs on the main process only.

    Takes the arguments of `Trainer.create_model_card` (`language`, `license`, `tags`,
    `model_name`, `finetuned_from`, `dataset`, ...); the task is read from the model instead.
    Returns the path written, or None when nothing was (another process, or building the card
    failed: a warning says why, and the caller may fall back to the Trainer's own draft).
    """
    from transformers.utils import logging

    logger = logging.get_logger(__name__)
    options = dict(zip(_CREATE_MODEL_CARD_ARGS, args)) | kwargs
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(trainer.args.output_dir)
    readme = output_dir / "README.md"
    energy = _writes_energy(trainer)
    try:
        from huggingface_hub import ModelCard

        existing = ModelCard.load(readme) if readme.is_file() else None
        draft = _trainer_draft(trainer, options, existing)
        if not (output_dir / "config.json").is_file():
            logger.warning(f"No model saved in {output_dir} yet, so its card is the Trainer's draft: "
                           "call `trainer.save_model()` before `create_model_card()`.")
            if energy and (output_dir / ENERGY_FILE_NAME).is_file():
                draft.data.co2_eq_emissions = co2_eq_emissions(output_dir / ENERGY_FILE_NAME)
            text = str(draft)
        else:
            tags = options.get("tags")
            tags = [tags] if isinstance(tags, str) else list(tags or [])
            tags += [tag for tag in (draft.data.tags or []) if tag not in tags]
            dataset = options.get("dataset")
            dataset = dataset[0] if isinstance(dataset, (list, tuple)) and dataset else dataset
            # `push_to_hub` passes the last part of `hub_model_id` as model_name: use the full id when they agree
            model_name, hub_model_id = options.get("model_name"), getattr(trainer.args, "hub_model_id", None)
            same = hub_model_id and (model_name is None or hub_model_id.split("/")[-1] == model_name)
            card = build_model_card(
                output_dir, repo_id=hub_model_id if same else model_name,
                dataset=dataset, base_model=options.get("finetuned_from"), license=options.get("license") or "apache-2.0",
                language=options.get("language") or "en", tags=tags, energy=energy,
            )
            text = str(card)
            if _TRAINER_SECTIONS in draft.text:
                text = text.rstrip("\n") + "\n\n" + draft.text[draft.text.index(_TRAINER_SECTIONS):]
        atomic_write_text(readme, text)  # never a half-written card
        return readme
    except Exception as error:  # noqa: BLE001 - the card is documentation; the save or upload goes on
        logger.warning(f"Building the hf_bigsmall card for {readme} failed ({error!r}); the Trainer's draft is written instead.")
        return None
