"""Calibration windows, the generic hook runner and per-channel input statistics (Llama, GPT-2, BERT)."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM

from hf_bigsmall.pruning.calibration import (
    CalibrationData,
    collect_input_statistics,
    prepare_calibration,
    run_calibration,
)
from tests.testing_utils import TINY_VOCAB, tiny_bert_config, tiny_gpt2_config, tiny_llama_config

ARCHITECTURES = {
    "llama": (LlamaForCausalLM, tiny_llama_config),
    "gpt2": (GPT2LMHeadModel, tiny_gpt2_config),
    "bert": (BertForSequenceClassification, tiny_bert_config),
}


def tiny(architecture: str, seed: int = 0):
    model_class, config = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    return model_class(config()).eval()


def token_rows(num_rows: int = 12, length: int = 40, seed: int = 0) -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, TINY_VOCAB, (length,), generator=generator).tolist()} for _ in range(num_rows)]


# ---------------------------------------------------------------------------------------------- windows
def test_windows_are_full_cut_from_the_stream_and_fixed_by_the_seed():
    rows = token_rows(num_rows=12, length=40)
    calibration = prepare_calibration(rows, num_samples=6, seq_len=32, batch_size=4)
    assert calibration.input_ids.shape == (6, 32)
    assert calibration.describe() == {"num_samples": 6, "seq_len": 32, "num_tokens": 192}
    assert [b["input_ids"].shape[0] for b in calibration.batches()] == [4, 2]
    # every window is a piece of the concatenated rows in the seeded order
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0)).tolist()
    stream = [token for index in order for token in rows[index]["input_ids"]]
    assert calibration.input_ids.flatten().tolist() == stream[:192]
    again = prepare_calibration(rows, num_samples=6, seq_len=32, batch_size=4)
    other = prepare_calibration(rows, num_samples=6, seq_len=32, batch_size=4, seed=1)
    assert torch.equal(calibration.input_ids, again.input_ids)
    assert not torch.equal(calibration.input_ids, other.input_ids)


def test_padding_is_dropped_and_tensors_are_accepted():
    rows = [{"input_ids": [5, 6, 7, 0, 0], "attention_mask": [1, 1, 1, 0, 0]}, {"input_ids": [8, 9, 0], "attention_mask": [1, 1, 0]}]
    calibration = prepare_calibration(rows, num_samples=1, seq_len=5, seed=0)
    assert sorted(calibration.input_ids.flatten().tolist()) == [5, 6, 7, 8, 9]
    tensor = torch.arange(1, 65).view(4, 16)
    assert prepare_calibration(tensor, num_samples=2, seq_len=16).input_ids.shape == (2, 16)


def test_fewer_tokens_than_asked_warns_and_uses_what_there_is(caplog):
    rows = token_rows(num_rows=3, length=40)  # 120 tokens: 3 windows of 32
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.pruning.calibration"):
        calibration = prepare_calibration(rows, num_samples=128, seq_len=32)
    assert calibration.num_samples == 3 and calibration.requested_samples == 128
    assert "3 windows of 32 instead of the 128 asked for" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.pruning.calibration"):
        short = prepare_calibration(token_rows(num_rows=1, length=10), num_samples=8, seq_len=32)
    assert short.input_ids.shape == (1, 10)
    assert "less than one window" in caplog.text


def test_seq_len_defaults_to_what_the_model_reads():
    model = tiny("llama")  # 64 positions
    calibration = prepare_calibration(token_rows(num_rows=20, length=40), num_samples=4, model=model)
    assert calibration.seq_len == 64


@pytest.mark.parametrize(
    "rows, kwargs, error, words",
    [
        ([], {}, ValueError, "empty"),
        ([{"input_ids": []}], {}, ValueError, "no tokens"),
        ([{"input_ids": [1, 2, TINY_VOCAB + 5]}], {}, ValueError, "another tokenizer"),
        ([{"input_ids": [1, 2, -100]}], {}, ValueError, ">= 0"),
        (token_rows(), {"seq_len": 65}, ValueError, "seq_len=64 or less"),
        (token_rows(), {"num_samples": 0}, ValueError, "num_samples"),
        ([{"text": "hello"}], {}, TypeError, "tokenize it first"),
    ],
    ids=["empty", "only-padding", "foreign-ids", "negative-ids", "too-long", "zero-samples", "raw-text"],
)
def test_bad_calibration_data_is_refused_before_anything_runs(rows, kwargs, error, words):
    from datasets import Dataset

    model = tiny("llama")
    dataset = Dataset.from_list(rows) if rows and "text" in rows[0] else rows
    with pytest.raises(error, match=words):
        prepare_calibration(dataset, **{"num_samples": 4, **kwargs}, model=model)


def test_a_dataset_dict_asks_for_one_split():
    from datasets import Dataset, DatasetDict

    splits = DatasetDict(train=Dataset.from_list(token_rows()), test=Dataset.from_list(token_rows()))
    with pytest.raises(TypeError, match=r"dataset\['train'\]"):
        prepare_calibration(splits)


def test_raw_text_is_tokenized_with_the_given_tokenizer():
    from datasets import Dataset
    from transformers import GPT2TokenizerFast

    from hf_bigsmall import assets

    tokenizer = GPT2TokenizerFast.from_pretrained(assets.gpt2_tokenizer_path())
    texts = Dataset.from_list([{"text": "The quick brown fox jumps over the lazy dog. " * 8}] * 4)
    calibration = prepare_calibration(texts, num_samples=2, seq_len=16, tokenizer=tokenizer)
    expected = tokenizer(texts[0]["text"])["input_ids"][:16]
    assert calibration.input_ids[0].tolist() == expected


# ---------------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_input_statistics_equal_the_squared_norms_of_every_input(architecture):
    model = tiny(architecture)
    calibration = prepare_calibration(token_rows(num_rows=10, length=40), num_samples=5, seq_len=32, batch_size=2,
                                      model=model)
    statistics = collect_input_statistics(model, calibration)
    assert statistics.num_tokens == 5 * 32
    # reference: keep every input of every layer in one full-batch forward, then reduce
    captured: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: captured.__setitem__(name, args[0].detach().clone()))
        for name in statistics.squared_norms]
    with torch.no_grad():
        model(input_ids=calibration.input_ids)
    for handle in handles:
        handle.remove()
    assert set(statistics.squared_norms) == set(captured) and len(captured) >= 16
    for name, inputs in captured.items():
        reference = inputs.double().pow(2).reshape(-1, inputs.shape[-1]).sum(0)
        torch.testing.assert_close(statistics.squared_norms[name], reference, rtol=1e-5, atol=1e-6)
    # GPT-2 Conv1D reads weight rows as inputs: the statistic has one entry per weight row
    if architecture == "gpt2":
        assert statistics.squared_norms["transformer.h.0.mlp.c_proj"].shape == (model.config.n_embd * 4,)


def test_llama_first_projection_statistic_by_hand():
    model = tiny("llama")
    ids = torch.randint(1, TINY_VOCAB, (3, 16), generator=torch.Generator().manual_seed(1))
    statistics = collect_input_statistics(model, CalibrationData(ids, batch_size=2), target_modules=["q_proj"])
    with torch.no_grad():
        normed = model.model.layers[0].input_layernorm(model.model.embed_tokens(ids))
    torch.testing.assert_close(statistics.squared_norms["model.layers.0.self_attn.q_proj"],
                               normed.double().pow(2).sum(dim=(0, 1)), rtol=1e-5, atol=1e-6)
    assert statistics.norms()["model.layers.0.self_attn.q_proj"].shape == (32,)


def test_runner_restores_mode_and_removes_hooks_even_on_error():
    model = tiny("llama").train()
    calibration = CalibrationData(torch.ones(2, 8, dtype=torch.long))
    seen = []

    def hook(module, args, output):
        seen.append(module.training)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        run_calibration(model, calibration, forward_hooks={"model.layers.0.mlp": hook})
    assert seen == [False] and model.training
    assert not model.model.layers[0].mlp._forward_hooks
    with pytest.raises(ValueError, match="no module"):
        run_calibration(model, calibration, forward_hooks={"model.layers.99": hook})


def test_runner_skips_the_lm_head_when_no_hook_needs_it():
    model = tiny("llama")
    calls = []
    model.lm_head.register_forward_hook(lambda *args: calls.append("head"))
    run_calibration(model, CalibrationData(torch.ones(2, 8, dtype=torch.long)),
                    forward_hooks={"model.layers.0": lambda *args: calls.append("block")})
    assert calls == ["block"]
    run_calibration(model, CalibrationData(torch.ones(2, 8, dtype=torch.long)),
                    forward_hooks={"lm_head": lambda *args: calls.append("hooked head")})
    assert "hooked head" in calls


def test_a_model_without_matching_layers_is_refused_with_the_candidates():
    model = tiny("bert")
    with pytest.raises(ValueError, match="Candidate names"):
        collect_input_statistics(model, CalibrationData(torch.ones(1, 8, dtype=torch.long)), target_modules=["c_fc"])
