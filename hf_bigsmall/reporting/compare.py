"""Measure a big model and its small versions side by side, on the same data, in one run."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers.utils import logging

from .. import assets
from ..energy.generation import measure_generation
from ..energy.inference import measure_inference
from ..energy.lineage import _finite, load_lineage
from ..energy.meters.base import JOULES_PER_KWH
from ..metrics import load_metric
from ..pruning.parameters import count_parameters
from ..quantization.backends import backend_of_folder, load_runner
from ..quantization.config import quantization_of
from ..utils.class_labels import dataset_to_model_ids, folded_class_name, model_class_names
from ..utils.cpu import OtherCpuWork
from ..utils.heads import TEXT_CLASSIFICATION, TEXT_GENERATION, task_of
from ..utils.import_utils import is_matplotlib_available
from .plots import comparison_plot_names, drawn_plot_names, plot_comparison
from .report import REPORT_JSON, REPORT_MD, check_report_writable, write_report

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CLASSIFICATION = TEXT_CLASSIFICATION
CAUSAL_LM = TEXT_GENERATION
logger = logging.get_logger(__name__)
_QUALITY_METRIC = {CLASSIFICATION: "accuracy", CAUSAL_LM: "perplexity"}
# weights only: optimizer states, Trainer arguments and pruning masks are not part of the model's size
_NOT_WEIGHTS = {"sparsity_masks.safetensors", "sparsity_rewind.safetensors", "training_args.bin", "optimizer.pt",
                "scheduler.pt"}


@dataclass
class ModelMeasurement:
    """Everything measured for one model; ratios are against the first (reference) model.

    `sparsity` is the fraction of exact zeros in the pruned weights (see `count_parameters`);
    `nonzero_parameters` counts every parameter that is not exactly zero.
    """

    name: str
    path: str | None
    parameters: int
    nonzero_parameters: int
    sparsity: float
    size_on_disk_mb: float  # MiB (2**20 bytes), as the report labels it
    metrics: dict[str, float]
    latency_ms_p50: float
    latency_ms_p95: float
    throughput_samples_per_s: float
    energy_joules_per_sample: float
    energy_source: str
    inference_co2_grams_per_1k_samples: float
    training_energy_kwh: float | None = None
    training_co2_grams: float | None = None
    training_energy_source: str | None = None
    # causal LMs only: batch-1 generation with the KV cache (see `measure_generation`)
    prefill_ms_p50: float | None = None
    decode_tokens_per_s: float | None = None
    decode_joules_per_token: float | None = None
    # this model's own training run plus those of the models it was made from (`emissions.json`)
    lineage_energy_kwh: float | None = None
    lineage_co2_grams: float | None = None
    lineage_runs: list[dict[str, Any]] | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)
    # energy per 1,000 queries (one query = one evaluation sample), and per token the model reads
    inference_kwh_per_1k_samples: float | None = None
    energy_joules_per_token: float | None = None
    # the `quantization` record of config.json (method, backend, device, source) for a quantized model
    quantization: dict[str, Any] | None = None
    # how steady the batch-1 timing was: 10th and 90th percentiles, (p90 - p10) / p50, the 1-minute load
    # average read before and after this model was measured, and the range (p10, p90) of the per-sample
    # ratios reference latency / this model's latency, on the same samples
    latency_ms_p10: float | None = None
    latency_ms_p90: float | None = None
    latency_relative_spread: float | None = None
    load_average_1min: dict[str, float] | None = None
    # cores' worth of CPU that other processes used while this model was timed (Linux; None elsewhere)
    other_cpu_cores: float | None = None
    faster_p10_p90: list[float] | None = None
    # why the speed ratios against the reference are not trustworthy (`speed_ratio_caveat`), or None
    speed_ratio_caveat: str | None = None
    # the batch size its quality was scored at: 1 for a model whose outputs depend on its batch (`scoring_batch_size`)
    quality_batch_size: int | None = None
    # True when its quality was scored on the forwards its throughput and energy were timed on (`scores_while_timing`)
    scored_while_timed: bool | None = None
    # the model whose speed and inference-energy figures this row shows, for a model scored for quality only
    # (`compare_models(speed_from=...)`): same architecture and weight shapes, timed in the same run
    speed_from: str | None = None


@dataclass
class Comparison:
    """The result of `compare_models`: `to_dict()` is what `report.json` holds."""

    task: str
    dataset: str
    split: str | None
    num_samples: int
    quality_metric: str
    lower_is_better: bool
    metric_names: list[str]
    throughput_batch_size: int
    device: str
    num_threads: int
    models: list[ModelMeasurement]
    eval_tokens: int | None = None  # causal LMs: predicted tokens behind every model's perplexity
    generation: dict[str, int] | None = None  # causal LMs: num_prompts, prompt_tokens, new_tokens
    # the rule that marks speed ratios not trustworthy, with its thresholds and the CPU cores it counted
    timing: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, output_dir: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
        """Write `report.json`, `report.md` and (if matplotlib is installed) the PNG plots."""

        draw = plots and is_matplotlib_available()
        # before anything is written: a report or a PNG of the user's at one of the names is refused
        check_report_writable(output_dir, comparison_plot_names(self.task == CAUSAL_LM) if draw else ())
        report = self.to_dict()
        if not draw:
            json_path, md_path = write_report(report, output_dir)
            return {"report.json": json_path, "report.md": md_path}
        # the report names the plots before they are drawn: a save stopped while drawing (Ctrl-C, a plotting
        # error) leaves PNGs that the report lists, so the next save replaces them instead of refusing them
        planned = [Path(output_dir) / name for name in drawn_plot_names(report)]
        write_report(report, output_dir, plots=[str(path) for path in planned])
        try:
            written = plot_comparison(report, output_dir)
        except BaseException:
            write_report(report, output_dir)  # shows no plot; those drawn stay the kit's (its `earlier_plots`)
            raise
        json_path, md_path = Path(output_dir) / REPORT_JSON, Path(output_dir) / REPORT_MD
        if list(written) != [path.name for path in planned]:
            json_path, md_path = write_report(report, output_dir, plots=[str(path) for path in written.values()])
        return {"report.json": json_path, "report.md": md_path, **written}


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def add_ratios(models: list[ModelMeasurement], quality_metric: str, lower_is_better: bool) -> None:
    """Fill `ratios` of every model against the first: x smaller, x faster, % of quality kept."""
    reference = models[0]
    for model in models:
        quality, reference_quality = model.metrics.get(quality_metric), reference.metrics.get(quality_metric)
        # perplexity falls as quality rises, so the kept fraction is reference / model
        kept = _ratio(reference_quality, quality) if lower_is_better else _ratio(quality, reference_quality)
        model.ratios = {
            "smaller": _ratio(reference.parameters, model.parameters),
            "nonzero_smaller": _ratio(reference.nonzero_parameters, model.nonzero_parameters),
            "disk_smaller": _ratio(reference.size_on_disk_mb, model.size_on_disk_mb),
            "faster": _ratio(reference.latency_ms_p50, model.latency_ms_p50),
            "throughput_gain": _ratio(model.throughput_samples_per_s, reference.throughput_samples_per_s),
            "less_energy": _ratio(reference.energy_joules_per_sample, model.energy_joules_per_sample),
            "quality_pct": None if kept is None else 100.0 * kept,
            "decode_faster": _ratio(model.decode_tokens_per_s, reference.decode_tokens_per_s),
        }


# a speed ratio is not trustworthy when other processes used more than a quarter of the CPU cores while
# either model was timed (busy CPU time of the machine minus this process's own: the run's own threads
# never count against it), or, where that cannot be read, when the 1-minute load average before or after
# either timing is above the cores; and when the per-sample ratios of the two models' batch-1 latencies,
# on the same samples, spread by more than half of their median from p10 to p90
MAX_RATIO_SPREAD = 0.5
MAX_OTHER_CPU_SHARE = 0.25
TIMING_RULE = (
    "A speed ratio is marked not trustworthy when other processes used more than "
    f"{MAX_OTHER_CPU_SHARE:.0%} of the CPU cores while either model was timed (the machine's busy CPU time minus "
    "this run's own; where that cannot be read, when the 1-minute load average before or after either timing is "
    "above the number of cores), or when the per-sample latency ratios (reference / model, on the same samples) "
    f"spread from p10 to p90 by more than {MAX_RATIO_SPREAD:.0%} of their median."
)


def _cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows has no load average
        return None


def _percentiles(values: list[float], *quantiles: float) -> list[float]:
    import numpy as np

    return [float(np.percentile(values, q)) for q in quantiles]


def speed_ratio_caveat(model: ModelMeasurement, reference: ModelMeasurement, reference_latencies: list[float],
                       latencies: list[float], cores: int) -> tuple[str | None, list[float] | None]:
    """Why `model`'s speed ratios against `reference` are not trustworthy (`TIMING_RULE`), or None; and the
    p10/p90 of its per-sample latency ratios."""
    reasons = []
    others = [m.other_cpu_cores for m in (reference, model) if getattr(m, "other_cpu_cores", None) is not None]
    loads = [value for m in (reference, model) for value in (m.load_average_1min or {}).values() if value is not None]
    if others:
        if max(others) > MAX_OTHER_CPU_SHARE * cores:
            reasons.append(f"other processes used {max(others):.1f} of the {cores} CPU cores while it was timed")
    elif loads and max(loads) > cores:
        reasons.append(f"the CPU was busy (1-minute load average up to {max(loads):.1f} on {cores} cores)")
    paired = None
    count = min(len(reference_latencies), len(latencies))
    if count >= 2 and model is not reference:
        ratios = [r / m for r, m in zip(reference_latencies[:count], latencies[:count]) if m > 0]
        low, median, high = _percentiles(ratios, 10, 50, 90)
        paired = [round(low, 3), round(high, 3)]
        if median > 0 and (high - low) / median > MAX_RATIO_SPREAD:
            reasons.append(f"its per-sample latency ratios spread from {low:.2f}x to {high:.2f}x")
    return ("; ".join(reasons) or None), paired


def load_model(path: str | os.PathLike) -> PreTrainedModel:
    """Load a saved model with its task head, with plain `from_pretrained`.

    A folder that a quantization backend with a runner wrote (ONNX Runtime, ONNX Runtime GenAI,
    llama.cpp's GGUF, or one registered from user code) loads as that backend's runner instead: it
    is called like a model (keyword tensors in, `.logits` out), so everything below measures it alike.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    runner = load_runner(path)
    if runner is not None:
        return runner
    config = AutoConfig.from_pretrained(path)
    auto_class = AutoModelForSequenceClassification if task_of(config) == CLASSIFICATION else AutoModelForCausalLM
    try:
        return auto_class.from_pretrained(path).eval()
    except OSError as error:
        backend = backend_of_folder(path)
        if backend is None:
            raise
        # a registered backend without a runner promises a transformers folder; this one is not
        raise ValueError(f"{path} was written by the {backend.name!r} quantization backend, which has no runner, and "
                         f"transformers cannot load it ({error}). Register that backend with runner=... (a class "
                         "compare_models calls like a model, see QuantizationBackend) to compare it.") from error


def _transformers_weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint files `from_pretrained` would read: the safetensors ones if any, else the `.bin` ones, and
    of a sharded checkpoint only the shards its `*.index.json` lists. A folder holding one model in both formats
    (a Hub snapshot, a `safe_serialization=False` save into a folder of safetensors) holds its weights once."""
    for suffix in (".safetensors", ".bin"):
        files = [p for p in model_dir.iterdir() if p.suffix == suffix and p.name not in _NOT_WEIGHTS]
        if not files:
            continue
        indexes = [p for p in model_dir.iterdir() if p.name.endswith(f"{suffix}.index.json")]
        listed = set()
        for index in indexes:
            try:
                listed |= set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
            except (OSError, ValueError, AttributeError):
                listed = set()
                break
        return [p for p in files if p.name in listed] if listed else files
    return []


def size_on_disk_mb(model_dir: Path) -> float:
    """MiB (2**20 bytes) of the weight files: what transformers loads (`_transformers_weight_files`), an ONNX
    model with its external data, a GGUF file, and the file a quantization record names (a backend's own format)."""
    named = (quantization_of(model_dir) or {}).get("file")
    files = set(_transformers_weight_files(model_dir))
    files |= {p for p in model_dir.iterdir()
              if (p.suffix in (".onnx", ".gguf") or p.name.endswith(".onnx.data") or p.name == named)
              and p.name not in _NOT_WEIGHTS}
    return sum(p.stat().st_size for p in files) / 2**20


def _training_energy(model_dir: Path | None) -> dict[str, Any]:
    if model_dir is None:
        return {}
    figures: dict[str, Any] = {}
    record_path = model_dir / "energy.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        # a NaN or inf figure (a damaged record) is no figure, as in emissions.json
        figures.update(training_energy_kwh=_finite(record.get("energy_kwh")), training_co2_grams=_finite(record.get("co2_grams")),
                       training_energy_source=record.get("energy_source"))
    lineage = load_lineage(model_dir)
    if lineage:
        runs = [{k: run.get(k) for k in ("model", "relation", "run", "trained", "energy_kwh", "co2_grams", "energy_source")}
                for run in lineage["runs"]]
        figures.update(lineage_energy_kwh=lineage.get("energy_kwh"), lineage_co2_grams=lineage.get("co2_grams"),
                       lineage_runs=runs)
    return figures


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def _tokenizers_for(loaded: Mapping[str, tuple[PreTrainedModel, Path | None]],
                    tokenizer: PreTrainedTokenizerBase | None) -> dict[str, PreTrainedTokenizerBase]:
    """The tokenizer of each model: `tokenizer` for all when given, else each folder's own.

    A folder without tokenizer files, or a model passed as an object, takes the tokenizer of the first
    folder whose model has a vocabulary of its size (students made with `make_student` share the
    teacher's); none raises a `ValueError`, since another vocabulary's ids would index the wrong
    embedding rows and its quality would be silently wrong. Models with a trimmed vocabulary
    (`trim_vocabulary`) carry their own and are measured with it.
    """
    from transformers import AutoTokenizer

    if tokenizer is not None:
        chosen = {name: tokenizer for name in loaded}
    else:
        own = {name: AutoTokenizer.from_pretrained(path) for name, (_, path) in loaded.items()
               if path is not None and any((path / f).is_file() for f in _TOKENIZER_FILES)}
        if not own:
            raise ValueError("No model folder holds a tokenizer: pass `tokenizer=` (or save the tokenizer beside "
                             "the first model).")
        sizes = {name: model.config.vocab_size for name, (model, _) in loaded.items()}
        chosen = dict(own)
        for name in loaded.keys() - own.keys():
            lenders = [other for other in own if sizes[other] == sizes[name]]
            if not lenders:
                raise ValueError(f"Model {name!r} has no tokenizer of its own and no model folder with one has its "
                                 f"vocabulary of {sizes[name]} (they have {sorted({sizes[o] for o in own})}): save "
                                 "its tokenizer beside it, or pass `tokenizer=`.")
            chosen[name] = own[lenders[0]]
        chosen = {name: chosen[name] for name in loaded}
    for model_tokenizer in chosen.values():
        if model_tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; batches need one
            model_tokenizer.pad_token = model_tokenizer.eos_token
    return chosen


# what a slow tokenizer's init arguments hold besides how it splits texts: where it was read from, and how
# batches are padded and cut, which `compare_models` sets itself (right padding, its own `max_length`)
_NOT_TOKENIZATION = ("name_or_path", "model_max_length", "padding_side", "clean_up_tokenization_spaces", "auto_map",
                     "tokenizer_class", "backend")


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _tokenization_key(tokenizer: PreTrainedTokenizerBase) -> str:
    """A fingerprint of how `tokenizer` turns texts into ids: equal keys tokenize the same texts alike.

    The vocabulary alone is not enough: two tokenizers of one vocabulary may lower-case or strip accents
    differently, or add other special tokens around a text. A fast tokenizer's pipeline (normalizer,
    pre-tokenizer, model, post-processor, added tokens) is hashed as `tokenizers` serialises it, less the
    padding and truncation state each call sets; a slow one's by its init arguments. The truncation side
    decides which end of a long text is kept.
    """
    import hashlib

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        behaviour = json.loads(backend.to_str())
        behaviour.pop("truncation", None), behaviour.pop("padding", None)
    else:  # values that are not JSON (objects whose text holds their address) say nothing comparable: left out
        behaviour = {key: value for key, value in tokenizer.init_kwargs.items()
                     if key not in _NOT_TOKENIZATION and not key.endswith("_file") and _is_json(value)}
    fingerprint = json.dumps({"vocabulary": sorted(tokenizer.get_vocab().items()), "behaviour": behaviour,
                              "truncation_side": getattr(tokenizer, "truncation_side", "right")},
                             ensure_ascii=False, sort_keys=True)
    return hashlib.sha1(fingerprint.encode("utf-8")).hexdigest()


def _tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, task: str, text_column: str,
              label_column: str, max_length: int) -> Dataset:
    keep = [label_column] if task == CLASSIFICATION else []
    return dataset.map(
        lambda rows: tokenizer(rows[text_column], truncation=True, max_length=max_length),
        batched=True, remove_columns=[c for c in dataset.column_names if c not in keep],
    )


def scoring_batch_size(model: PreTrainedModel, batch_size: int) -> int:
    """The batch size `model`'s quality is scored at: 1 (no padding) for a model whose outputs depend on its batch.

    A runner that declares `outputs_depend_on_batch` (ONNX Runtime's dynamic int8 quantizes activations with one
    scale per tensor per call, padding rows included) would score each input differently depending on which
    inputs share its padded batch; one input at a time is what it computes when served at batch 1.
    """
    return 1 if getattr(model, "outputs_depend_on_batch", False) else batch_size


def _padded_batches(model: PreTrainedModel, tokenized: Dataset, tokenizer: PreTrainedTokenizerBase,
                    label_column: str = "label", batch_size: int = 32) -> list[tuple[dict, Any]]:
    """`(rows, padded batch)` over `tokenized`, at `scoring_batch_size(model, batch_size)`: what its quality is scored on."""
    step = scoring_batch_size(model, batch_size)
    input_columns = [c for c in tokenized.column_names if c != label_column]
    batches = []
    for start in range(0, len(tokenized), step):
        rows = tokenized[start:start + step]
        # padded on the right whatever the tokenizer's `padding_side`: left padding shifts the positions of
        # models without position ids from the mask (BERT, GPT-2) and made a causal LM predict a row's first
        # token from padding, so the metric differed from the same texts measured one at a time
        batches.append((rows, tokenizer.pad({c: rows[c] for c in input_columns}, padding=True, padding_side="right",
                                            return_tensors="pt")))
    return batches


def scored_batches(model: PreTrainedModel, tokenized: Dataset, tokenizer: PreTrainedTokenizerBase,
                   label_column: str = "label", batch_size: int = 32) -> Iterator[tuple[dict, Any, Any]]:
    """`(rows, padded batch, logits)` over `tokenized`, at `scoring_batch_size(model, batch_size)`."""
    import torch

    for rows, batch in _padded_batches(model, tokenized, tokenizer, label_column, batch_size):
        with torch.inference_mode():
            logits = model(**batch).logits
        yield rows, batch, logits


class _QualityScorer:
    """The task metric, accumulated batch by batch from a model's logits: accuracy and F1, or perplexity."""

    def __init__(self, task: str, label_column: str, num_labels: int | None = None):
        self.task, self.label_column, self.num_labels = task, label_column, num_labels
        if task == CLASSIFICATION:
            self.metrics = [load_metric("accuracy"), load_metric("f1")]
        else:
            self.metrics = [load_metric("perplexity")]

    def add(self, rows: dict, batch: Mapping[str, Any], logits) -> None:
        import torch

        if self.task == CLASSIFICATION:
            predictions = logits.argmax(-1).tolist()
            for metric in self.metrics:
                metric.add_batch(predictions=predictions, references=rows[self.label_column])
            return
        # token t is predicted from tokens < t; padding is never a target
        targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        self.metrics[0].add_batch(nll_sums=losses.sum(-1).tolist(), num_tokens=(targets != -100).sum(-1).tolist())

    def compute(self) -> dict[str, float]:
        if self.task == CLASSIFICATION:
            accuracy, f1 = self.metrics
            return {**accuracy.compute(), **f1.compute(average="binary" if self.num_labels == 2 else "macro")}
        return self.metrics[0].compute()


def evaluate_quality(model: PreTrainedModel, tokenized: Dataset, tokenizer: PreTrainedTokenizerBase, task: str,
                     label_column: str = "label", batch_size: int = 32) -> dict[str, float]:
    """The task metric with the shipped `evaluate` modules: accuracy and F1, or perplexity.

    Models are scored in padded batches of `batch_size`, except those whose outputs depend on their batch
    (`scoring_batch_size`): one input at a time.
    """
    scorer = _QualityScorer(task, label_column, model.config.num_labels if task == CLASSIFICATION else None)
    for rows, batch, logits in scored_batches(model, tokenized, tokenizer, label_column, batch_size):
        scorer.add(rows, batch, logits)
    return scorer.compute()


def _device_of(model: PreTrainedModel):
    import torch

    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return parameter.device if parameter is not None else torch.device("cpu")


def scores_while_timing(model: PreTrainedModel, batch_size: int) -> bool:
    """Whether `compare_models` scores `model`'s quality on the forwards of its throughput pass.

    The throughput and energy pass runs every evaluation sample through the model in batches of `batch_size`,
    which is what scoring its quality does: on a CPU, where the energy meters (RAPL, the CPU-time estimate)
    resolve one batch, the two are one pass, each forward timed and metered alone and scored outside the
    timer. A model scored one input at a time (`scoring_batch_size`) and a GPU (NVML's energy counter needs
    windows longer than one batch) keep two passes.
    """
    return _device_of(model).type == "cpu" and scoring_batch_size(model, batch_size) == batch_size


def _measure_inference(model: PreTrainedModel, tokenized: Dataset, batch_size: int, latency_samples: int,
                       scored: tuple[list[tuple[dict, Any]], _QualityScorer] | None = None):
    """`measure_inference` on `tokenized`, or, given `scored` (padded batches and a scorer), on those batches,
    each forward's logits handed to the scorer (`scores_while_timing`)."""
    if scored is None:
        return measure_inference(model, tokenized, batch_size=batch_size, latency_samples=latency_samples,
                                 warmup_batches=1)
    batches, scorer = scored

    def score(index: int, batch: Mapping[str, Any], outputs) -> None:
        rows, padded = batches[index]
        scorer.add(rows, padded, outputs.logits)

    return measure_inference(model, [batch for _, batch in batches], batch_size=batch_size,
                             latency_samples=latency_samples, warmup_batches=1, on_batch_outputs=score)


def _generation_prompts(tokenized: Dataset, num_prompts: int, prompt_tokens: int):
    """The first `num_prompts` evaluation rows cut to one common length (at most `prompt_tokens`)."""
    import torch

    rows = [ids for ids in tokenized["input_ids"] if len(ids) >= 2][:max(num_prompts, 1)]
    if not rows:
        raise ValueError("No evaluation text has two tokens or more: nothing to generate from.")
    length = min(prompt_tokens, *(len(ids) for ids in rows))
    return torch.tensor([ids[:length] for ids in rows], dtype=torch.long)


def _energy_per_query(joules_per_sample: float, tokenized: Dataset, task: str) -> dict[str, float | None]:
    """kWh per 1,000 queries, and for causal LMs joules per token read (the tokens of the samples measured)."""

    per_token = None
    if task == CAUSAL_LM and len(tokenized):
        tokens_per_sample = sum(len(ids) for ids in tokenized["input_ids"]) / len(tokenized)
        per_token = joules_per_sample / tokens_per_sample if tokens_per_sample else None
    return {"inference_kwh_per_1k_samples": 1000 * joules_per_sample / JOULES_PER_KWH, "energy_joules_per_token": per_token}


def _time_model(model, inputs_only, tokenized, task: str, batch_size: int, latency_samples: int,
                generation_prompts: int, prompt_tokens: int, new_tokens: int,
                scored: tuple[list[tuple[dict, Any]], _QualityScorer] | None = None):
    """Batch-1 latency and throughput, and for a causal LM prefill and decode at batch 1; with `scored`, the
    throughput pass also feeds the scorer (`_measure_inference`).

    Returns `(inference, generated columns, generation settings or None)`.
    """
    inference = _measure_inference(model, inputs_only, batch_size, latency_samples, scored)
    # An ONNX export runs one forward without a KV cache: it has no generation to time (its columns stay empty).
    engine_timing = getattr(model, "measure_generation", None)  # an engine's runner times its own decoding
    if task != CAUSAL_LM or not (engine_timing or hasattr(model, "generate")):
        return inference, {}, None

    prompts = _generation_prompts(tokenized, generation_prompts, prompt_tokens)
    result = (engine_timing(prompts, new_tokens=new_tokens) if engine_timing
              else measure_generation(model, prompts, new_tokens=new_tokens))
    generated = {"prefill_ms_p50": result.prefill_ms_p50, "decode_tokens_per_s": result.decode_tokens_per_s,
                 "decode_joules_per_token": result.joules_per_token}
    return inference, generated, {"num_prompts": result.num_prompts, "prompt_tokens": result.prompt_tokens,
                                  "new_tokens": result.new_tokens}


def compare_models(
    models: Sequence[str | os.PathLike | PreTrainedModel] | Mapping[str, str | os.PathLike | PreTrainedModel],
    eval_dataset: Dataset | str | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    split: str = "test",
    text_column: str = "text",
    label_column: str = "label",
    max_samples: int | None = 500,
    max_length: int = 128,
    batch_size: int = 32,
    latency_samples: int = 20,
    output_dir: str | os.PathLike | None = None,
    plots: bool = True,
    dataset_name: str | None = None,
    generation_prompts: int = 3,
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    speed_from: Mapping[str, str] | None = None,
) -> Comparison:
    """Measure models on the same evaluation data: size, quality, latency, throughput and energy.

    The first model is the reference (the teacher): every other model gets its ratios against it.
    For each model: parameters and non-zero parameters, size on disk, the task metric computed with
    `evaluate` (accuracy and F1 for sequence classifiers, perplexity for causal LMs), latency p50/p95
    at batch size 1 and throughput at `batch_size` after warm-up, inference energy per sample with its
    source (`measure_inference`), and training energy when the folder holds an `energy.json`. Causal LMs
    also get batch-1 generation with the KV cache (`measure_generation`): prefill latency, decode
    tokens/s and energy per generated token, from the same prompts for every model; every model's
    perplexity is computed on the same tokens (they must share the tokenizer), so the teacher's
    stands beside the student's.

    Args:
        models: saved model folders or loaded models, as a list (named after their folders) or a
            `{name: model}` mapping. All must share the task; classifiers may have different
            vocabularies (a student with a trimmed vocabulary is measured with its own tokenizer).
        eval_dataset: a `datasets.Dataset` with `text_column` (and `label_column` for
            classification), or a dataset name for `hf_bigsmall.assets.load_text_dataset`
            (`embedded/rotten_tomatoes`, `embedded/news`, a Hub id). Defaults to the embedded
            Rotten Tomatoes test split for classifiers and the news corpus' fixed held-out split for
            causal LMs.
        tokenizer: used for every model; by default each folder's own tokenizer (a folder without
            one, or a model object, takes the first folder's).
        split: split taken when `eval_dataset` is a name.
        max_samples: evaluate on at most this many samples (all if None).
        max_length: truncate inputs to this many tokens.
        batch_size: batch size of the evaluation and throughput passes.
        latency_samples: number of batch-1 forwards timed for latency.
        output_dir: if given, write `report.json`, `report.md` and the plots there; a `report.json` or
            `report.md` there that the kit did not write, or a PNG at a plot's name that the kit's report there
            does not list, is refused before anything is measured.
        plots: draw the PNG plots when writing (needs matplotlib: `pip install "hf-bigsmall[plots]"`).
        dataset_name: the name the report gives a `Dataset` passed as `eval_dataset`.
        generation_prompts, prompt_tokens, new_tokens: causal LMs: generate `new_tokens` after each
            of the first `generation_prompts` evaluation texts cut to `prompt_tokens` tokens.
        speed_from: `{model: other}`: score `model` for quality and size only, and show the speed and
            inference-energy figures of `other`, timed in this run, in its row (`speed_from` in `report.json`;
            the report names it). Only for models of the same class and weight shapes run the same way
            (a pruned model and the same model healed: only the weights' values differ), where timing both
            twice measures the machine's noise, not the model; anything else raises a `ValueError`.

    Example:
    ```python
    from hf_bigsmall import compare_models

    comparison = compare_models(["out/teacher", "out/student"], "embedded/rotten_tomatoes", output_dir="out")
    print(comparison.models[1].ratios["faster"], comparison.models[1].ratios["quality_pct"])
    ```
    """
    import torch

    # checked before any model is loaded: 0 latency samples gave NaN latencies and speed ratios in the report
    for name, value in (("max_length", max_length), ("batch_size", batch_size), ("latency_samples", latency_samples),
                        ("generation_prompts", generation_prompts), ("prompt_tokens", prompt_tokens),
                        ("new_tokens", new_tokens), ("max_samples", 1 if max_samples is None else max_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer{' or None (every sample)' * (name == 'max_samples')}, "
                             f"got {value!r}.")
    if output_dir is not None:  # a report.json of the user's there is refused now, not after the measuring
        check_report_writable(output_dir)
    loaded = _resolve_models(models)
    task = _common_task(loaded)
    if output_dir is not None and plots and is_matplotlib_available():  # and a PNG of the user's, once the task
        check_report_writable(output_dir, comparison_plot_names(task == CAUSAL_LM))  # says which plots are drawn
    tokenizers = _tokenizers_for(loaded, tokenizer)
    vocabulary = _vocabularies(loaded, tokenizers, task)
    eval_dataset, dataset_name = _evaluation_data(eval_dataset, task, split=split, text_column=text_column,
                                                  label_column=label_column, max_samples=max_samples,
                                                  dataset_name=dataset_name)
    if task == CLASSIFICATION:
        _check_same_classes(loaded)
        # the classes' names, from a model that has them: one with transformers' placeholders (LABEL_0, ...) beside
        # it numbers them alike (checked above) but could not read labels given as names
        configs = [model.config for model, _ in loaded.values()]
        named = next((config for config in configs if _class_names(config) is not None), configs[0])
        eval_dataset = _labels_as_class_ids(eval_dataset, label_column, named)
    # the same texts, tokenized once per distinct tokenization (the vocabulary and how texts are split into it)
    tokenized_by_vocabulary: dict[str, Any] = {}
    for name, key in vocabulary.items():
        if key not in tokenized_by_vocabulary:
            tokenized_by_vocabulary[key] = _tokenize(eval_dataset, tokenizers[name], task, text_column, label_column,
                                                     max_length)

    _check_positions(loaded, {name: tokenized_by_vocabulary[key] for name, key in vocabulary.items()}, max_length)

    settings = _RunSettings(task=task, label_column=label_column, batch_size=batch_size,
                            latency_samples=latency_samples, generation_prompts=generation_prompts,
                            prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    speed_from = dict(speed_from or {})
    _check_speed_from(loaded, speed_from)
    measurements, generation = [], None
    latency_runs: dict[str, list[float]] = {}  # every model's batch-1 forward times, in sample order
    for name, (model, path) in loaded.items():
        tokenized = tokenized_by_vocabulary[vocabulary[name]]
        if name in speed_from:
            measurements.append(_measure_quality(name, model, path, tokenizers[name], tokenized, settings))
            continue
        measurement, latency_runs[name], generation_settings = _measure_model(
            name, model, path, tokenizers[name], tokenized, settings)
        if generation_settings is not None:
            generation = generation_settings
        measurements.append(measurement)
    timed = {m.name: m for m in measurements}
    for measurement in measurements:
        if measurement.name in speed_from:
            source = speed_from[measurement.name]
            for name in _SPEED_FIELDS:
                setattr(measurement, name, getattr(timed[source], name))
            measurement.speed_from, latency_runs[measurement.name] = source, latency_runs[source]
    quality_metric = _QUALITY_METRIC[task]
    cores = _add_verdicts(measurements, latency_runs, quality_metric, lower_is_better=task == CAUSAL_LM)
    comparison = Comparison(
        task=task, dataset=str(dataset_name), split=split, num_samples=len(tokenized), quality_metric=quality_metric,
        lower_is_better=task == CAUSAL_LM, metric_names=sorted(measurements[0].metrics),
        throughput_batch_size=batch_size, device=str(next(iter(loaded.values()))[0].device),
        num_threads=torch.get_num_threads(), models=measurements,
        eval_tokens=sum(max(len(ids) - 1, 0) for ids in tokenized["input_ids"]) if task == CAUSAL_LM else None,
        generation=generation,
        timing={"cpu_cores": cores, "max_ratio_spread": MAX_RATIO_SPREAD, "rule": TIMING_RULE},
    )
    if output_dir is not None:
        comparison.save(output_dir, plots=plots)
    return comparison


# what a model scored for quality only takes from the model of the same shape that was timed (`speed_from`)
_SPEED_FIELDS = ("latency_ms_p50", "latency_ms_p95", "throughput_samples_per_s", "energy_joules_per_sample",
                 "energy_source", "inference_co2_grams_per_1k_samples", "prefill_ms_p50", "decode_tokens_per_s",
                 "decode_joules_per_token", "inference_kwh_per_1k_samples", "energy_joules_per_token",
                 "latency_ms_p10", "latency_ms_p90", "latency_relative_spread", "load_average_1min",
                 "other_cpu_cores")


def _check_speed_from(loaded: Mapping[str, tuple[PreTrainedModel, Path | None]], speed_from: Mapping[str, str]) -> None:
    """Raise unless every `{model: other}` of `speed_from` names two compared PyTorch models of one class, the
    same weight names, shapes, dtypes and tensor types, on one device with the same quantization, `other` timed
    itself and `model` not the reference."""
    import torch

    reference = next(iter(loaded))
    for name, source in speed_from.items():
        missing = [n for n in (name, source) if n not in loaded]
        if missing:
            raise ValueError(f"speed_from names {missing}, not among the compared models {list(loaded)}.")
        if name == reference or source in speed_from or name == source:
            raise ValueError(f"speed_from={{{name!r}: {source!r}}}: the reference ({reference!r}) and every model "
                             "another takes its speed from are timed themselves, and a model cannot lend to itself.")
        models = {n: loaded[n][0] for n in (name, source)}
        if not all(isinstance(m, torch.nn.Module) for m in models.values()) or type(models[name]) is not type(
                models[source]):
            raise ValueError(f"speed_from: {name!r} ({type(models[name]).__name__}) and {source!r} "
                             f"({type(models[source]).__name__}) are not PyTorch models of one class: time both.")
        # the tensor type too: a quantized (torchao) or sparse weight can keep its float dtype and shape
        shapes = {n: [(k, tuple(p.shape), p.dtype, type(p).__name__, p.layout) for k, p in m.named_parameters()]
                  for n, m in models.items()}
        if shapes[name] != shapes[source]:
            first = next((a, b) for a, b in zip(shapes[name] + [None], shapes[source] + [None]) if a != b)
            raise ValueError(f"speed_from: {name!r} and {source!r} differ in their weights ({first[0]} against "
                             f"{first[1]}): only a model of the same shape can lend its speed; time both.")
        setups = {n: _runs_as(m) for n, m in models.items()}
        for key, value in setups[name].items():
            if value != setups[source][key]:
                raise ValueError(f"speed_from: {name!r} and {source!r} run differently ({key} {value!r} against "
                                 f"{setups[source][key]!r}): only a model run the same way can lend its speed; time both.")


def _runs_as(model) -> dict[str, Any]:
    """What decides a model's speed besides its weights' shapes and types: its device and its quantization (the
    kit's `quantization` record and transformers' `quantization_config`)."""
    config = getattr(model, "config", None)
    quantization_config = getattr(config, "quantization_config", None)
    if hasattr(quantization_config, "to_dict"):
        quantization_config = quantization_config.to_dict()
    return {"device": str(_device_of(model)), "quantization": getattr(config, "quantization", None),
            "quantization_config": quantization_config}


def _resolve_models(models) -> dict[str, tuple[PreTrainedModel, Path | None]]:
    """`{name: (model or runner, its folder or None)}`: folders loaded (`load_model`), objects put in eval mode."""
    named = dict(models) if isinstance(models, Mapping) else {
        (Path(m).name if isinstance(m, (str, os.PathLike)) else f"model_{i}"): m for i, m in enumerate(models)
    }
    if len(named) < 1:
        raise ValueError("compare_models needs one or more models: pass folders or a {name: model} mapping.")
    if not isinstance(models, Mapping) and len(named) != len(models):
        names = [Path(m).name if isinstance(m, (str, os.PathLike)) else None for m in models]
        shared = sorted({name for name in names if name is not None and names.count(name) > 1})
        raise ValueError(f"compare_models names each model by its folder, and {', '.join(map(repr, shared))} is the name "
                         "of more than one: pass a {name: model} mapping, or (from the command line) folders or "
                         "symlinks of distinct names.")
    loaded: dict[str, tuple[PreTrainedModel, Path | None]] = {}
    for name, model in named.items():
        if isinstance(model, (str, os.PathLike)):
            if not (Path(model) / "config.json").is_file():
                raise ValueError(f"{model} is not a saved model folder (no config.json).")
            loaded[name] = (load_model(model), Path(model))
        else:
            loaded[name] = (model.eval(), None)
    return loaded


def _common_task(loaded: Mapping[str, tuple[PreTrainedModel, Path | None]]) -> str:
    tasks = {task_of(model) for model, _ in loaded.values()}
    if len(tasks) != 1:
        raise ValueError(f"All models must have the same task to be compared, got {sorted(tasks)}.")
    return tasks.pop()


def _vocabularies(loaded: Mapping[str, tuple[PreTrainedModel, Path | None]],
                  tokenizers: Mapping[str, PreTrainedTokenizerBase], task: str) -> dict[str, str]:
    """Each model's tokenization fingerprint (`_tokenization_key`), once every model's embedding covers its tokenizer."""
    for name, (model, _) in loaded.items():
        if model.config.vocab_size < len(tokenizers[name]):
            raise ValueError(
                f"Model {name!r} has a vocabulary of {model.config.vocab_size} but its tokenizer has "
                f"{len(tokenizers[name])} tokens: save each model with the tokenizer it was trained with "
                "(students made with make_student share the teacher's)."
            )
    vocabulary = {name: _tokenization_key(model_tokenizer) for name, model_tokenizer in tokenizers.items()}
    if task == CAUSAL_LM and len(set(vocabulary.values())) > 1:
        raise ValueError("Causal LMs with different tokenizers cannot be compared: perplexity per token depends on "
                         "the tokenization. Compare models that share one tokenizer.")
    return vocabulary


def _evaluation_data(eval_dataset: Dataset | str | None, task: str, *, split: str, text_column: str,
                     label_column: str, max_samples: int | None, dataset_name: str | None) -> tuple[Dataset, str]:
    """The evaluation rows (the task's default corpus when none is given) and the name the report gives them."""

    if eval_dataset is None:
        eval_dataset = assets.ROTTEN_TOMATOES if task == CLASSIFICATION else assets.NEWS
    if isinstance(eval_dataset, str):
        splits = assets.load_text_dataset(eval_dataset)
        if split not in splits:
            raise ValueError(f"{eval_dataset} has no {split!r} split (it has {list(splits)}): pass split=.")
        dataset_name, eval_dataset = eval_dataset, splits[split]
    else:
        dataset_name = dataset_name or eval_dataset.info.dataset_name or "custom"
    missing = [c for c in ([text_column, label_column] if task == CLASSIFICATION else [text_column])
               if c not in eval_dataset.column_names]
    if missing:
        raise ValueError(f"The evaluation dataset has no column(s) {missing} (it has {eval_dataset.column_names}): "
                         "pass text_column=/label_column=.")
    if max_samples is not None and max_samples < len(eval_dataset):
        kept = eval_dataset.select(range(max_samples))
        if task == CLASSIFICATION:
            _warn_if_classes_differ(eval_dataset[label_column], kept[label_column], max_samples)
        eval_dataset = kept
    return eval_dataset, dataset_name


# a class whose share among the first `max_samples` rows differs from the whole split's by more than this
MAX_CLASS_SHARE_GAP = 0.15


def _warn_if_classes_differ(labels: Sequence[Any], kept: Sequence[Any], max_samples: int) -> None:
    """Warn when the first `max_samples` rows, which are scored as transformers' examples take them, miss a class of
    the split or hold it in another share: Hub splits are often sorted by label, and a model that always answers
    the first class would then score 100%."""
    from collections import Counter

    whole, head = Counter(map(str, labels)), Counter(map(str, kept))
    missing = sorted(whole.keys() - head.keys())
    shifted = sorted(label for label in whole if label in head
                     and abs(head[label] / len(kept) - whole[label] / len(labels)) > MAX_CLASS_SHARE_GAP)
    if not missing and not shifted:
        return
    problems = []
    if missing:
        problems.append(f"miss the class(es) {missing}")
    if shifted:
        problems.append("hold " + ", ".join(f"{label!r} at {head[label] / len(kept):.0%} (the split: "
                                            f"{whole[label] / len(labels):.0%})" for label in shifted))
    logger.warning(f"The first {max_samples} evaluation rows (max_samples) {' and '.join(problems)}: the split may "
                   "be sorted by label, and the metrics would not be those of the split. Shuffle the split first "
                   "(dataset.shuffle(seed=0)), or score all of it (max_samples=None, --max_samples 0).")


# models whose position ids start after the padding index: RoBERTa's 514 positions hold 512 tokens
_POSITIONS_AFTER_PADDING = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "ibert",
                            "longformer", "mpnet", "roberta-prelayernorm")


def _position_limit(config) -> tuple[int, str] | None:
    """The most tokens a model with learned absolute positions takes, and the config field that says so; None for
    rotary or relative positions (RoPE, ALiBi), which index no table and take longer inputs."""
    if any(getattr(config, name, None) is not None for name in
           ("rope_theta", "rope_scaling", "rope_parameters", "rotary_dim", "rotary_pct", "partial_rotary_factor")):
        return None
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return None
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa-v2/v3: relative positions only
        return None
    for name in ("n_positions", "max_position_embeddings"):
        limit = getattr(config, name, None)
        if isinstance(limit, int) and limit > 0:
            if getattr(config, "model_type", None) in _POSITIONS_AFTER_PADDING:
                limit -= (getattr(config, "pad_token_id", None) or 0) + 1
            return limit, name
    return None


def _check_positions(loaded: Mapping[str, tuple[PreTrainedModel, Path | None]], tokenized: Mapping[str, Dataset],
                     max_length: int) -> None:
    """Refuse, before anything is measured, an evaluation text longer than a model's position table: indexing past
    it fails deep in torch ("index out of range", a tensor size mismatch) without naming the model or the fix."""
    for name, (model, _) in loaded.items():
        found = _position_limit(getattr(model, "config", None))
        if found is None:
            continue
        limit, field_name = found
        longest = max((len(ids) for ids in tokenized[name]["input_ids"]), default=0)
        if longest > limit:
            raise ValueError(f"Model {name!r} takes at most {limit} tokens ({field_name}={getattr(model.config, field_name)})"
                             f" but max_length is {max_length} and the evaluation texts reach {longest} tokens: pass "
                             f"--max_length {limit} (max_length={limit} in Python).")


def _class_names(config) -> dict[int, str] | None:
    """A classifier's `id2label`, or None when it holds only transformers' placeholder names (`LABEL_0`, ...)."""
    return model_class_names(config)


def _folded(names: dict[int, str]) -> dict[int, str]:
    return {index: " ".join(name.split()).casefold() for index, name in names.items()}


def _check_same_classes(loaded: Mapping[str, tuple[PreTrainedModel, Path | None]]) -> None:
    """Refuse classifiers that number their classes differently: every prediction is scored against the same
    label ids, so a model whose class 0 is another's class 1 would get a wrong accuracy without a word."""
    first_name, (first, _) = next(iter(loaded.items()))
    # the names are checked against the first model that has names: a reference with transformers' placeholders
    # (LABEL_0, ...) checks nothing, yet two named students beside it may still number their classes differently
    named_name, named_classes = next(((other, _class_names(model.config)) for other, (model, _) in loaded.items()
                                      if _class_names(model.config) is not None), (None, None))
    for name, (model, _) in loaded.items():
        # accuracy and F1 score one predicted class per text: a regression head's score or multi-label head's
        # independent yes/no per class has none, and its labels (floats, lists) would be refused as class ids
        problem = getattr(model.config, "problem_type", None)
        if problem in ("regression", "multi_label_classification") or model.config.num_labels == 1:
            raise ValueError(f"Model {name!r} is a {'multi-label' if problem == 'multi_label_classification' else 'regression'} "
                             "head: compare_models scores classifiers that predict one class per text (accuracy, "
                             "F1). Compare single-label classifiers, or evaluate this model with its own metric.")
        if model.config.num_labels != first.config.num_labels:
            raise ValueError(f"Model {name!r} has {model.config.num_labels} classes and {first_name!r} has "
                             f"{first.config.num_labels}: compare classifiers of the same labels.")
        names = _class_names(model.config)
        # spelled alike but for case and spaces ("POSITIVE", "positive"): the same classes, numbered alike
        if names is not None and named_classes is not None and _folded(names) != _folded(named_classes):
            raise ValueError(f"Model {name!r} numbers its classes {names} and {named_name!r} numbers them "
                             f"{named_classes}: their predictions cannot be scored against the same labels. Compare "
                             "models trained with one id2label (students made with make_student keep the teacher's).")


def _labels_as_class_ids(dataset: Dataset, label_column: str, config) -> Dataset:
    """The labels as the models' class ids. A label column that is no `ClassLabel` holds the class names (strings,
    or numbers such as 1 and 2) that training numbered with the models' `label2id`: read through it when it names
    every label, so a 2 is class 1, never compared with the predicted ids as it stands. A `ClassLabel` whose names
    are the models' classes in another order is renumbered to the models' ids; one with other names is refused."""
    from datasets import ClassLabel, Value

    feature = dataset.features[label_column]
    if isinstance(feature, ClassLabel):
        id2label = _class_names(config)
        mapping = dataset_to_model_ids(feature.names, id2label, what=f"the evaluation column {label_column!r}")
        if mapping is not None:
            features = dataset.features.copy()
            features[label_column] = (ClassLabel(names=[id2label[index] for index in range(len(id2label))])
                                      if sorted(id2label) == list(range(len(id2label))) else Value("int64"))
            # ids outside the names (-1 for unlabelled rows) are kept as they are, and refused below
            dataset = dataset.map(lambda rows: {label_column: [mapping.get(value, value) for value in rows[label_column]]},
                                  batched=True, features=features)
    label2id = {str(name): int(index) for name, index in (getattr(config, "label2id", None) or {}).items()}
    if not isinstance(dataset.features[label_column], ClassLabel) and label2id:
        values = {str(value) for value in dataset.unique(label_column)}
        # "positive" for a model's "POSITIVE": the same class, as for ClassLabel names (unless folding merges two)
        folded = {folded_class_name(name): index for name, index in label2id.items()}
        if values <= label2id.keys():
            dataset = dataset.map(lambda rows: {label_column: [label2id[str(value)] for value in rows[label_column]]},
                                  batched=True)
        elif len(folded) == len(label2id) and {folded_class_name(value) for value in values} <= folded.keys():
            dataset = dataset.map(lambda rows: {label_column: [folded[folded_class_name(str(value))]
                                                               for value in rows[label_column]]}, batched=True)
    # else the labels are not the class names: read as class ids, which must be ones the models predict
    num_labels = int(config.num_labels)
    outside = sorted({value for value in dataset.unique(label_column) if isinstance(value, bool)
                      or not isinstance(value, (int, float)) or value not in range(num_labels)}, key=str)
    if outside:
        raise ValueError(f"The evaluation labels {outside[:5]} are not class ids of the models (0 to {num_labels - 1}) "
                         f"nor names in their label2id {sorted(label2id)}: every prediction would be scored against a "
                         "class the models cannot predict. Map the labels to the ids the models were trained with, "
                         "or pass label_column=.")
    return dataset


@dataclass(frozen=True)
class _RunSettings:
    """How every model of one comparison is measured (the same for all)."""

    task: str
    label_column: str
    batch_size: int
    latency_samples: int
    generation_prompts: int
    prompt_tokens: int
    new_tokens: int


def _measure_model(name: str, model, path: Path | None, tokenizer: PreTrainedTokenizerBase, tokenized: Dataset,
                   settings: _RunSettings) -> tuple[ModelMeasurement, list[float], dict[str, int] | None]:
    """One model's row: size, quality, timings with what else ran meanwhile, energy.

    Returns `(measurement, batch-1 latencies in sample order, generation settings or None)`.
    """
    task, label_column = settings.task, settings.label_column
    inputs_only = tokenized.remove_columns([c for c in tokenized.column_names if c == label_column])
    total, nonzero, sparsity = count_parameters(model, path)
    disk_mb = _disk_mb(model, path)
    scored = None
    if scores_while_timing(model, settings.batch_size):  # one pass scores and times the same forwards
        scorer = _QualityScorer(task, label_column, model.config.num_labels if task == CLASSIFICATION else None)
        scored = (_padded_batches(model, tokenized, tokenizer, label_column, settings.batch_size), scorer)
    else:
        metrics = evaluate_quality(model, tokenized, tokenizer, task, label_column, settings.batch_size)
    load_before = _load_average()
    with OtherCpuWork() as other_work:  # the timings: what else ran on the machine meanwhile
        inference, generated, generation_settings = _time_model(
            model, inputs_only, tokenized, task, settings.batch_size, settings.latency_samples,
            settings.generation_prompts, settings.prompt_tokens, settings.new_tokens, scored)
    if scored is not None:
        metrics = scored[1].compute()
    latencies = inference.latencies_ms
    p10, p90 = _percentiles(latencies, 10, 90) if latencies else (None, None)
    timing = {"latency_ms_p10": p10, "latency_ms_p90": p90,
              "latency_relative_spread": (p90 - p10) / inference.latency_ms_p50
              if latencies and inference.latency_ms_p50 > 0 else None,
              "load_average_1min": {"before": load_before, "after": _load_average()},
              "other_cpu_cores": other_work.cores}
    measurement = ModelMeasurement(
        name=name, path=str(path) if path else None, parameters=total, nonzero_parameters=nonzero,
        sparsity=sparsity, size_on_disk_mb=round(disk_mb, 3), metrics=metrics,
        latency_ms_p50=inference.latency_ms_p50, latency_ms_p95=inference.latency_ms_p95,
        throughput_samples_per_s=inference.throughput_samples_per_s,
        energy_joules_per_sample=inference.joules_per_sample, energy_source=inference.energy_source,
        inference_co2_grams_per_1k_samples=1000 * inference.co2_grams / max(inference.num_samples, 1),
        **_training_energy(path), **generated,
        **_energy_per_query(inference.joules_per_sample, inputs_only, task),
        quantization=getattr(model.config, "quantization", None), **timing,
        quality_batch_size=scoring_batch_size(model, settings.batch_size), scored_while_timed=scored is not None,
    )
    return measurement, latencies, generation_settings


def _measure_quality(name: str, model, path: Path | None, tokenizer: PreTrainedTokenizerBase, tokenized: Dataset,
                     settings: _RunSettings) -> ModelMeasurement:
    """A row without timings: size, parameters, quality and training energy (`speed_from` fills the speed)."""
    total, nonzero, sparsity = count_parameters(model, path)
    inputs_only = tokenized.remove_columns([c for c in tokenized.column_names if c == settings.label_column])
    return ModelMeasurement(
        name=name, path=str(path) if path else None, parameters=total, nonzero_parameters=nonzero, sparsity=sparsity,
        size_on_disk_mb=round(_disk_mb(model, path), 3),
        metrics=evaluate_quality(model, tokenized, tokenizer, settings.task, settings.label_column, settings.batch_size),
        latency_ms_p50=float("nan"), latency_ms_p95=float("nan"), throughput_samples_per_s=float("nan"),
        energy_joules_per_sample=float("nan"), energy_source="", inference_co2_grams_per_1k_samples=float("nan"),
        **_training_energy(path), **_energy_per_query(float("nan"), inputs_only, settings.task),
        quantization=getattr(model.config, "quantization", None),
        quality_batch_size=scoring_batch_size(model, settings.batch_size),
    )


def _disk_mb(model, path: Path | None) -> float:
    if path is None:  # measure what saving it would write
        with tempfile.TemporaryDirectory() as scratch:
            model.save_pretrained(scratch)
            return size_on_disk_mb(Path(scratch))
    return size_on_disk_mb(path)


def _add_verdicts(measurements: list[ModelMeasurement], latency_runs: Mapping[str, list[float]], quality_metric: str,
                  lower_is_better: bool) -> int:
    """Ratios against the first model, and whether each speed ratio can be trusted; returns the CPU cores counted."""
    add_ratios(measurements, quality_metric, lower_is_better=lower_is_better)
    cores = _cpu_cores()
    for model in measurements[1:]:
        model.speed_ratio_caveat, model.faster_p10_p90 = speed_ratio_caveat(
            model, measurements[0], latency_runs[measurements[0].name], latency_runs[model.name], cores)
    return cores
