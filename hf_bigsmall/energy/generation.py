"""`measure_generation`: prefill latency, decode speed and energy per token of a causal LM at batch 1.

What a user of a small LLM waits for is split in two: the *prefill* (one forward over the prompt,
which fills the KV cache) and the *decode* (one forward per new token, reading the cache). They
scale differently (prefill with the prompt's length, decode with the model's size and the cache),
so they are measured apart. Decoding is greedy with the model's own KV cache and never stops at an
end-of-text token, so every model generates exactly the same number of tokens.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .meters import select_meters
from .tracker import EnergyTracker, subtract


@dataclass
class GenerationMeasurement:
    """What `measure_generation` measured; `to_dict()` gives a JSON-ready dict.

    Attributes:
        num_prompts: prompts generated from, one at a time (batch 1).
        prompt_tokens: tokens of each prompt.
        new_tokens: tokens decoded after each prompt.
        prefill_ms_p50, prefill_ms_p95: time of the prompt's forward (fills the KV cache).
        decode_tokens_per_s: new tokens per second of the decode steps (all prompts together).
        decode_ms_per_token_p50: median time of one decode step.
        joules_per_token: energy of the decode steps per new token; `energy_source` says how it was
            measured (`"estimate"` when no hardware counter exists).
    """

    num_prompts: int
    prompt_tokens: int
    new_tokens: int
    prefill_ms_p50: float
    prefill_ms_p95: float
    decode_tokens_per_s: float
    decode_ms_per_token_p50: float
    joules_per_token: float
    energy_source: str
    device: str
    meters: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_generation(
    model,
    prompts,
    *,
    new_tokens: int = 32,
    warmup: int = 1,
    backend: str = "auto",
    cpu_tdp_watts: float | None = None,
    cpu_threads: int | None = None,
) -> GenerationMeasurement:
    """Time prefill and KV-cache decoding of `model` at batch 1, and the energy per generated token.

    Args:
        model: a causal LM (`...ForCausalLM`, `GPT2LMHeadModel`) whose forward takes `use_cache` and
            `past_key_values`.
        prompts: token ids, a `LongTensor (num_prompts, prompt_tokens)` or a list of equal-length
            lists; each is generated from alone.
        new_tokens: tokens decoded greedily after each prompt (prompt plus new tokens must fit the
            model's positions).
        warmup: prompts generated first and not measured.
        backend, cpu_tdp_watts, cpu_threads: CPU energy meter choice, see `select_meters`.

    Returns:
        a [`GenerationMeasurement`].

    Example:

    ```python
    >>> from hf_bigsmall.energy.generation import measure_generation
    >>> result = measure_generation(model, tokenizer(["The weather today"], return_tensors="pt").input_ids)
    >>> result.prefill_ms_p50, result.decode_tokens_per_s, result.joules_per_token
    ```
    """
    import numpy as np
    import torch

    prompts = torch.as_tensor(prompts, dtype=torch.long)
    if prompts.ndim != 2 or prompts.numel() == 0:
        raise ValueError(f"prompts must be token ids shaped (num_prompts, prompt_tokens), got shape {tuple(prompts.shape)}.")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a positive integer, got {new_tokens!r}.")
    config = getattr(model, "config", None)
    positions = next((getattr(config, name) for name in ("max_position_embeddings", "n_positions")
                      if isinstance(getattr(config, name, None), int)), None)
    if positions is not None and prompts.shape[1] + new_tokens > positions:
        raise ValueError(f"prompt_tokens + new_tokens = {prompts.shape[1] + new_tokens} exceeds the model's {positions} "
                         "positions: use shorter prompts or fewer new tokens.")
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    prompts = prompts.to(device)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    meters = select_meters(device, backend=backend, cpu_tdp_watts=cpu_tdp_watts, cpu_threads=cpu_threads)
    tracker = EnergyTracker(meters)
    # transformers 5.24 renamed `past_key_values` to `cache` (argument and output); older 5.x has only the former
    accepted = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in accepted else "past_key_values"
    # as `generate` does, the prompt's forward computes the logits of its last position only
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    def generate(prompt) -> tuple[float, list[float], float]:
        """(prefill seconds, seconds of each decode step, joules of the decode steps)."""
        tic = time.perf_counter()
        output = model(input_ids=prompt[None], use_cache=True, **last_only)
        next_token = output.logits[:, -1:].argmax(-1)
        synchronize()
        prefill = time.perf_counter() - tic
        # Energy is read around the decode steps only: prefill has its own latency figure, and
        # mixing it in would make the energy per token depend on the prompt's length.
        start, steps = tracker.read(), []
        cache = getattr(output, cache_name)
        for _ in range(new_tokens):
            tic = time.perf_counter()
            output = model(input_ids=next_token, use_cache=True, **{cache_name: cache})
            cache, next_token = getattr(output, cache_name), output.logits[:, -1:].argmax(-1)
            synchronize()
            steps.append(time.perf_counter() - tic)
        return prefill, steps, sum(subtract(tracker.read(), start).values())

    was_training = model.training
    model.eval()
    prefill_times: list[float] = []
    step_times: list[float] = []
    decode_joules = 0.0
    try:
        with torch.inference_mode():
            for prompt in prompts[:warmup]:
                generate(prompt)
            for prompt in prompts:
                prefill, steps, joules = generate(prompt)
                prefill_times.append(prefill)
                step_times += steps
                decode_joules += joules
    finally:
        tracker.close()
        model.train(was_training)
    decoded = len(step_times)
    return GenerationMeasurement(
        num_prompts=int(prompts.shape[0]),
        prompt_tokens=int(prompts.shape[1]),
        new_tokens=new_tokens,
        prefill_ms_p50=float(np.percentile(prefill_times, 50) * 1000),
        prefill_ms_p95=float(np.percentile(prefill_times, 95) * 1000),
        decode_tokens_per_s=decoded / sum(step_times),
        decode_ms_per_token_p50=float(np.percentile(step_times, 50) * 1000),
        joules_per_token=decode_joules / decoded,
        energy_source=tracker.energy_source,
        device=str(device),
        meters=tracker.describe()["meters"],
    )
