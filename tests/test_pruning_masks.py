"""Mask computation, targets and the measured sparsity report."""

import pytest
import torch
from torch.nn.utils import prune
from transformers import BertForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM

from hf_bigsmall import sparsity_report
from hf_bigsmall.pruning.masks import structured_masks, targeted_weights, unstructured_masks
from hf_bigsmall.pruning.targets import find_target_modules
from tests.testing_utils import tiny_bert_config, tiny_gpt2_config, tiny_llama_config

ARCHITECTURES = {
    "bert": (BertForSequenceClassification, tiny_bert_config),
    "gpt2": (GPT2LMHeadModel, tiny_gpt2_config),
    "llama": (LlamaForCausalLM, tiny_llama_config),
}


def build(name):
    model_class, make_config = ARCHITECTURES[name]
    return model_class(make_config())


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
@pytest.mark.parametrize("amount", [0.3, 0.75])
def test_global_unstructured_masks_equal_torch_prune_global_unstructured(architecture, amount):
    model = build(architecture)
    weights = targeted_weights(model)
    ours = unstructured_masks(weights, amount, scope="global")

    modules = {name: module for name, module in find_target_modules(model).items()}
    prune.global_unstructured([(m, "weight") for m in modules.values()], pruning_method=prune.L1Unstructured, amount=amount)
    for name, module in modules.items():
        reference = module.weight_mask == 0  # torch keeps 1 where the weight survives
        assert torch.equal(ours[f"{name}.weight"], reference), name
    total = sum(m.numel() for m in ours.values())
    assert sum(int(m.sum()) for m in ours.values()) == round(amount * total)


def test_layer_scope_prunes_the_same_fraction_of_every_weight():
    masks = unstructured_masks(targeted_weights(build("bert")), 0.5, scope="layer")
    for mask in masks.values():
        assert int(mask.sum()) == round(0.5 * mask.numel())


def test_masks_only_grow():
    model = build("bert")
    weights = targeted_weights(model)
    first = unstructured_masks(weights, 0.3)
    with torch.no_grad():  # survivors shrink below the pruned weights' old magnitudes
        for name, weight in weights.items():
            weight.mul_(torch.where(first[name], 1.0, 1e-3))
    second = unstructured_masks(weights, 0.5, previous=first)
    for name in first:
        assert bool((second[name] | ~first[name]).all()), "an entry pruned before was revived"


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_default_targets_are_linear_weights_inside_blocks(architecture):
    model = build(architecture)
    names = list(find_target_modules(model))
    assert names and all(any(f".{i}." in n for i in range(4)) for n in names)
    for excluded in ("embed", "wte", "wpe", "lm_head", "classifier", "pooler", "norm", "ln_"):
        assert not any(excluded in n for n in names), (excluded, names)
    assert all(model.get_submodule(n).weight.dim() == 2 for n in names)


def test_no_matching_target_lists_candidates():
    with pytest.raises(ValueError, match=r"Candidate names.*attention\.self\.query"):
        find_target_modules(build("bert"), ["does_not_exist"])


def test_tied_lm_head_is_refused():
    with pytest.raises(ValueError, match="tied LM head"):
        find_target_modules(build("gpt2"), ["lm_head"])


def test_sparsity_report_counts_real_zeros():
    model = build("bert")
    weights = targeted_weights(model)
    first = next(iter(weights))
    with torch.no_grad():
        weights[first].view(-1)[:100] = 0
    report = sparsity_report(model)
    assert report.zero_params == 100
    assert report.total_params == sum(w.numel() for w in weights.values())
    assert report.global_sparsity == pytest.approx(100 / report.total_params)
    assert report.per_layer[first.removesuffix(".weight")] == pytest.approx(100 / weights[first].numel())
    assert report.model_params == model.num_parameters()
    assert report.model_zero_params >= 100  # plus zero-initialised biases
    assert set(report.to_dict()) >= {"total_params", "zero_params", "global_sparsity", "per_layer", "model_sparsity"}


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_neuron_masks_remove_whole_ffn_neurons_evenly(architecture):
    model = build(architecture)
    masks = structured_masks(model, "neurons", 0.25)
    down = {n: m for n, m in masks.items() if any(k in n for k in ("output.dense", "mlp.c_proj", "down_proj"))}
    assert len(down) == 4
    for name, mask in down.items():
        # columns for Linear, rows for GPT-2's transposed Conv1D
        per_unit = mask.all(dim=1) if architecture == "gpt2" else mask.all(dim=0)
        assert int(per_unit.sum()) == round(0.25 * per_unit.numel())
        assert int(mask.sum()) == int(per_unit.sum()) * mask.shape[1 if architecture == "gpt2" else 0]


def test_llama_head_masks_are_even_inside_each_kv_group():
    model = LlamaForCausalLM(tiny_llama_config(num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    masks = structured_masks(model, "heads", 0.5)
    for name, mask in masks.items():
        if name.endswith("o_proj.weight"):
            dead_heads = mask.view(mask.shape[0], 4, 8).all(dim=(0, 2))
            assert dead_heads.view(2, 2).sum(dim=1).tolist() == [1, 1]  # one head out of each group
        assert not name.endswith(("k_proj.weight", "v_proj.weight"))
