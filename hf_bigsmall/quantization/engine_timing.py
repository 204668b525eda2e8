"""Batch-1 prefill and decode timing of a serving engine, measured as `measure_generation` measures torch.

The engines' runners (ONNX Runtime GenAI, llama.cpp) each say how to start a sequence, run its
prompt and take one decode step; the timers, the energy meters and the figures are shared here, so
every engine's row of a comparison means the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..energy.generation import GenerationMeasurement
from ..energy.meters import select_meters
from ..energy.tracker import EnergyTracker, subtract

# what an engine gives for one prompt: (prefill, step) - prefill runs the prompt and picks the first new
# token; each step runs the model on the last token with the KV cache and picks the next one greedily
EngineSequence = tuple[Callable[[], None], Callable[[], None]]


def time_engine_generation(prompts: Any, begin: Callable[[list[int]], EngineSequence], *, new_tokens: int = 32,
                           warmup: int = 1, device: Any = "cpu", backend: str = "auto",
                           cpu_tdp_watts: float | None = None, cpu_threads: int | None = None):
    """Prefill latency, decode tokens/s and joules per token at batch 1 (a `GenerationMeasurement`).

    `begin(prompt)` prepares a sequence (not timed) and returns its `(prefill, step)` functions;
    prefill is timed once per prompt, `step` `new_tokens` times. The first `warmup` prompts run first
    and are not measured.

    Raises:
        ValueError: prompts not shaped (num_prompts, prompt_tokens), or `new_tokens` not a positive int.
    """
    import numpy as np
    import torch

    prompts = torch.as_tensor(prompts, dtype=torch.long)
    if prompts.ndim != 2 or prompts.numel() == 0:
        raise ValueError("prompts must be token ids shaped (num_prompts, prompt_tokens), got shape "
                         f"{tuple(prompts.shape)}.")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a positive integer, got {new_tokens!r}.")
    device = torch.device(device)
    tracker = EnergyTracker(select_meters(device, backend=backend, cpu_tdp_watts=cpu_tdp_watts,
                                          cpu_threads=cpu_threads))

    def generate(prompt: list[int]) -> tuple[float, list[float], float]:
        prefill, step = begin(prompt)
        tic = time.perf_counter()
        prefill()
        prefill_time = time.perf_counter() - tic
        start, steps = tracker.read(), []
        for _ in range(new_tokens):
            tic = time.perf_counter()
            step()
            steps.append(time.perf_counter() - tic)
        return prefill_time, steps, sum(subtract(tracker.read(), start).values())

    prefill_times: list[float] = []
    step_times: list[float] = []
    decode_joules = 0.0
    try:
        for prompt in prompts[:warmup].tolist():
            generate(prompt)
        for prompt in prompts.tolist():
            prefill, steps, joules = generate(prompt)
            prefill_times.append(prefill)
            step_times += steps
            decode_joules += joules
    finally:
        tracker.close()
    return GenerationMeasurement(
        num_prompts=int(prompts.shape[0]), prompt_tokens=int(prompts.shape[1]), new_tokens=new_tokens,
        prefill_ms_p50=float(np.percentile(prefill_times, 50) * 1000),
        prefill_ms_p95=float(np.percentile(prefill_times, 95) * 1000),
        decode_tokens_per_s=len(step_times) / sum(step_times),
        decode_ms_per_token_p50=float(np.percentile(step_times, 50) * 1000),
        joules_per_token=decode_joules / len(step_times), energy_source=tracker.energy_source,
        device=str(device), meters=tracker.describe()["meters"],
    )


def padded_logits(prompt_logits: Callable[[list[int]], Any], vocab_size: int, input_ids: Any,
                  attention_mask: Any = None):
    """An engine's logits for a padded batch, shaped (batch, sequence, vocab) as a model's output.

    Each row's real tokens (left or right padding alike) run alone through `prompt_logits(ids)`, which
    returns a (len(ids), vocab) array; padding positions get zeros. Returns a `CausalLMOutput`.
    """
    import torch
    from transformers.modeling_outputs import CausalLMOutput

    input_ids = torch.as_tensor(input_ids)
    mask = torch.ones_like(input_ids) if attention_mask is None else torch.as_tensor(attention_mask)
    logits = torch.zeros(*input_ids.shape, vocab_size)
    for row, (ids, keep) in enumerate(zip(input_ids, mask.bool())):
        if keep.any():
            logits[row, keep] = torch.from_numpy(prompt_logits(ids[keep].tolist()))
    return CausalLMOutput(logits=logits)
