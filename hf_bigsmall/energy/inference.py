"""`measure_inference`: energy per sample, latency and throughput of a model's forward pass.

This is the figure a big-vs-small comparison rests on, so both models must be measured the same
way: inputs are tokenized and batched *before* anything is timed, a warm-up pass runs first, the
batched pass gives energy and throughput, and single-sample forwards give the latency.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..utils.checks import check_finite
from .carbon import resolve_grid_intensity
from .meters import select_meters
from .meters.base import JOULES_PER_KWH
from .tracker import EnergyTracker, subtract

# Columns that are targets, not inputs: passing them would make the model compute a loss too.
_TARGET_COLUMNS = ("label", "labels", "label_ids")


@dataclass
class InferenceMeasurement:
    """What `measure_inference` measured. `to_dict()` gives a JSON-ready dict.

    Energy and throughput come from the batched pass (`num_samples` samples in batches of
    `batch_size`); `latency_ms_p50`/`latency_ms_p95` from `latency_samples` forwards of one sample.
    `energy_source` is `"estimate"` when no hardware counter was available: `meters` then holds
    the watts per thread used and where they came from.
    """

    model_name: str | None
    num_samples: int
    batch_size: int
    energy_joules: float
    energy_kwh: float
    joules_per_sample: float
    energy_source: str
    co2_grams: float
    grid_intensity_g_per_kwh: float
    grid_intensity_origin: str
    latency_ms_p50: float
    latency_ms_p95: float
    latency_samples: int
    throughput_samples_per_s: float
    duration_s: float
    device: str
    hardware: str
    meters: list[dict[str, Any]] = field(default_factory=list)
    # every batch-1 forward's time, in sample order: their spread says how steady the timing was
    latencies_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batch_size_of(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if hasattr(value, "shape") and len(value.shape) > 0:
            return int(value.shape[0])
        if isinstance(value, (list, tuple)):
            return len(value)
    raise ValueError(f"Cannot tell the batch size of a batch with keys {list(batch)}: give tensors or lists.")


def _to_tensors(columns: Mapping[str, Any], pad_token_id: int):
    """Stack a dict of per-sample lists into tensors, right-padding ragged token lists."""
    import torch

    batch = {}
    for name, values in columns.items():
        if isinstance(values, torch.Tensor):
            batch[name] = values
            continue
        values = [torch.as_tensor(v) for v in values]
        if all(v.shape == values[0].shape for v in values):
            batch[name] = torch.stack(values)
            continue
        longest = max(v.shape[0] for v in values)
        pad = 0 if name in ("attention_mask", "token_type_ids") else pad_token_id
        batch[name] = torch.stack([torch.nn.functional.pad(v, (0, longest - v.shape[0]), value=pad) for v in values])
    return batch


def _forward_arguments(model) -> set[str] | None:
    """Names `model.forward` accepts, or None when it takes `**kwargs` (then keep every column)."""
    parameters = inspect.signature(model.forward).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def _prepare_batches(model, data, batch_size, max_samples, tokenizer, text_column, max_length):
    """A list of dicts of tensors, built before any timing."""
    accepted = _forward_arguments(model)
    pad_token_id = getattr(getattr(model, "config", None), "pad_token_id", None) or 0

    def keep(columns: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: v for k, v in columns.items()
            if k not in _TARGET_COLUMNS and (accepted is None or k in accepted) and k != text_column
        }

    if hasattr(data, "column_names") and hasattr(data, "__getitem__"):  # a datasets.Dataset
        num_rows = len(data) if max_samples is None else min(len(data), max_samples)
        batches = []
        for start in range(0, num_rows, batch_size):
            rows = data[start : min(start + batch_size, num_rows)]
            if tokenizer is not None:
                encoded = tokenizer(
                    list(rows[text_column]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
                )
                batches.append(keep(dict(encoded)))
            elif text_column in rows and "input_ids" not in rows:
                raise ValueError(
                    f"The dataset has a {text_column!r} column but no input_ids: pass tokenizer=... or tokenize it first."
                )
            else:
                batches.append(_to_tensors(keep(rows), pad_token_id))
        return batches

    if isinstance(data, Mapping) or not isinstance(data, Iterable):
        raise TypeError(
            "dataset_or_batches must be a datasets.Dataset or an iterable of batches (dicts of tensors), "
            f"got {type(data).__name__}."
        )
    batches, seen = [], 0
    for batch in data:
        if not isinstance(batch, Mapping):
            raise TypeError(f"Each batch must be a dict of tensors (as a DataLoader yields), got {type(batch).__name__}.")
        batch = _to_tensors(keep(batch), pad_token_id)
        batches.append(batch)
        seen += _batch_size_of(batch)
        if max_samples is not None and seen >= max_samples:
            break
    return batches


def _slice(batch: Mapping[str, Any], index: int) -> dict[str, Any]:
    """Sample `index` of a padded batch as a batch of one, cut to its own tokens (the span its attention mask
    covers, left or right padding alike): a text served alone carries no padding, so its batch-1 latency must
    not depend on the longest text that shared its batch."""
    single = {k: v[index : index + 1] for k, v in batch.items()}
    mask = single.get("attention_mask")
    if mask is None or getattr(mask, "ndim", 0) != 2 or not bool(mask.any()):
        return single
    kept = mask[0].nonzero()
    start, stop = int(kept[0]), int(kept[-1]) + 1
    if (start, stop) == (0, mask.shape[1]):
        return single
    # every per-token column (input ids, token types, position ids) is cut alike
    return {k: v[:, start:stop] if getattr(v, "ndim", 0) >= 2 and v.shape[1] == mask.shape[1] else v
            for k, v in single.items()}


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def measure_inference(
    model,
    dataset_or_batches,
    *,
    batch_size: int = 32,
    max_samples: int | None = None,
    latency_samples: int = 20,
    warmup_batches: int = 1,
    min_duration_s: float = 0.0,
    tokenizer=None,
    text_column: str = "text",
    max_length: int = 128,
    device=None,
    backend: str = "auto",
    cpu_tdp_watts: float | None = None,
    cpu_threads: int | None = None,
    grid_intensity_g_per_kwh: float | None = None,
    country_iso_code: str | None = None,
    on_batch_outputs: Callable[[int, dict[str, Any], Any], None] | None = None,
) -> InferenceMeasurement:
    """Measure energy per sample, latency and throughput of `model`'s forward pass.

    Args:
        model (`torch.nn.Module`): called as `model(**batch)` in eval mode under
            `torch.inference_mode()`; its training mode is restored afterwards.
        dataset_or_batches: a `datasets.Dataset` (tokenized, or with a `text_column` and a
            `tokenizer`) or an iterable of dicts of tensors such as a `DataLoader`. Label columns
            and columns `forward` does not take are dropped.
        batch_size (`int`, defaults to 32): batch size of the throughput and energy pass when a
            `Dataset` is given (batches passed in are used as they are).
        max_samples (`int`, *optional*): measure at most this many samples.
        latency_samples (`int`, defaults to 20): number of batch-1 forwards timed for latency.
        warmup_batches (`int`, defaults to 1): batched forwards run first and not measured.
        min_duration_s (`float`, defaults to 0): repeat the batched pass until it lasted this long
            (coarse counters such as NVML need a second or more to resolve small models).
        device: where to run (default: where the model's parameters are).
        backend, cpu_tdp_watts, cpu_threads: CPU meter choice, see `select_meters`.
        grid_intensity_g_per_kwh, country_iso_code: for the CO2 figure, see `resolve_grid_intensity`.
        on_batch_outputs (`Callable`, *optional*): called as `on_batch_outputs(index, batch, outputs)` after
            each forward of the first measured pass, so a caller can score the very forwards that are timed
            (`compare_models` computes its metric from them) instead of running them again. Each forward is
            then timed and metered alone and the callback runs outside those windows: throughput and energy
            still cover the forwards only. Give it only with meters that resolve one batch (RAPL, the CPU-time
            estimate); NVML's counter needs longer windows.

    Returns:
        `InferenceMeasurement`

    Example:

    ```python
    >>> from hf_bigsmall import measure_inference
    >>> result = measure_inference(model, tokenized_test_set, batch_size=32, max_samples=256)
    >>> result.joules_per_sample, result.latency_ms_p50, result.energy_source
    (0.41, 12.3, 'estimate')
    ```
    """
    import torch

    if not callable(model):
        raise TypeError(f"model must be a torch module (callable), got {type(model).__name__}.")
    for name, value, low in (("batch_size", batch_size, 1), ("latency_samples", latency_samples, 0), ("warmup_batches", warmup_batches, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if check_finite("min_duration_s", min_duration_s, ">= 0 (seconds)") < 0:
        raise ValueError(f"min_duration_s must be >= 0 seconds, got {min_duration_s}.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, got {max_samples!r}.")
    intensity = resolve_grid_intensity(grid_intensity_g_per_kwh, country_iso_code)
    if device is None:
        parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)

    batches = _prepare_batches(model, dataset_or_batches, batch_size, max_samples, tokenizer, text_column, max_length)
    if not batches:
        raise ValueError("dataset_or_batches is empty: nothing to measure.")
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in batches]
    samples_per_pass = sum(_batch_size_of(batch) for batch in batches)
    # only as many singles as are timed are cut out (each cut reads its attention mask)
    singles = list(itertools.islice((_slice(batch, i) for batch in batches for i in range(_batch_size_of(batch))),
                                    latency_samples))

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    meters = select_meters(device, backend=backend, cpu_tdp_watts=cpu_tdp_watts, cpu_threads=cpu_threads, country_iso_code=country_iso_code)
    tracker = EnergyTracker(meters)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.inference_mode():
            for batch in batches[:warmup_batches]:
                model(**batch)
            for single in singles[:2]:
                model(**single)
            synchronize()

            if on_batch_outputs is None:
                start_reading, start_time, passes = tracker.read(), time.perf_counter(), 0
                while passes == 0 or time.perf_counter() - start_time < min_duration_s:
                    for batch in batches:
                        model(**batch)
                    passes += 1
                window = subtract(tracker.read(), start_reading)  # synchronizes the GPU before reading it
                duration = time.perf_counter() - start_time
            else:
                window, duration, passes = {}, 0.0, 0
                while passes == 0 or duration < min_duration_s:
                    for index, batch in enumerate(batches):
                        reading, tic = tracker.read(), time.perf_counter()
                        outputs = model(**batch)
                        synchronize()
                        duration += time.perf_counter() - tic
                        for key, joules in subtract(tracker.read(), reading).items():
                            window[key] = window.get(key, 0.0) + joules
                        if passes == 0:
                            on_batch_outputs(index, batch, outputs)
                        del outputs
                    passes += 1

            latencies_ms = []
            for single in singles:
                tic = time.perf_counter()
                model(**single)
                synchronize()
                latencies_ms.append((time.perf_counter() - tic) * 1000)
    finally:
        tracker.close()
        if was_training:
            model.train()

    energy = sum(window.values())
    num_samples = samples_per_pass * passes
    config = getattr(model, "config", None)
    return InferenceMeasurement(
        model_name=getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None) or type(model).__name__,
        num_samples=num_samples,
        batch_size=_batch_size_of(batches[0]),
        energy_joules=energy,
        energy_kwh=energy / JOULES_PER_KWH,
        joules_per_sample=energy / num_samples,
        energy_source=tracker.energy_source,
        co2_grams=intensity.co2_grams(energy),
        grid_intensity_g_per_kwh=intensity.g_per_kwh,
        grid_intensity_origin=intensity.origin,
        latency_ms_p50=_percentile(latencies_ms, 50),
        latency_ms_p95=_percentile(latencies_ms, 95),
        latency_samples=len(latencies_ms),
        throughput_samples_per_s=num_samples / duration if duration > 0 else float("inf"),
        duration_s=duration,
        device=str(device),
        hardware=tracker.hardware(),
        meters=tracker.describe()["meters"],
        latencies_ms=latencies_ms,
    )
