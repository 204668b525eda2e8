"""`measure_generation`: batch-1 prefill and KV-cache decode of causal LMs, and its use in `compare_models`."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from hf_bigsmall.energy.generation import measure_generation
from tests.testing_utils import TINY_VOCAB, tiny_gpt2_config, tiny_llama_config


@pytest.mark.parametrize("model_class, config", [(GPT2LMHeadModel, tiny_gpt2_config), (LlamaForCausalLM, tiny_llama_config)],
                         ids=["gpt2", "llama"])
def test_prefill_once_then_one_token_per_step_through_the_cache(model_class, config):
    torch.manual_seed(0)
    model = model_class(config()).train()
    calls = []

    def record(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        calls.append((kwargs["input_ids"].shape[1], 0 if cache is None else cache.get_seq_length()))

    model.register_forward_pre_hook(record, with_kwargs=True)
    prompts = torch.randint(1, TINY_VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))
    result = measure_generation(model, prompts, new_tokens=5, warmup=1)
    # warm-up prompt, then each prompt: a 10-token prefill, then 5 single-token steps reading a growing cache
    one_prompt = [(10, 0)] + [(1, 10 + step) for step in range(5)]
    assert calls == one_prompt * 3
    assert model.training  # mode restored
    assert (result.num_prompts, result.prompt_tokens, result.new_tokens) == (2, 10, 5)
    assert result.prefill_ms_p50 > 0 and result.decode_tokens_per_s > 0 and result.decode_ms_per_token_p50 > 0
    assert result.joules_per_token > 0 and result.energy_source


def test_bad_generation_input_is_refused():
    model = LlamaForCausalLM(tiny_llama_config())  # 64 positions
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        measure_generation(model, torch.ones(1, 60, dtype=torch.long), new_tokens=8)
    with pytest.raises(ValueError, match="shaped"):
        measure_generation(model, torch.ones(0, dtype=torch.long))
    with pytest.raises(ValueError, match="new_tokens"):
        measure_generation(model, torch.ones(1, 4, dtype=torch.long), new_tokens=0)
