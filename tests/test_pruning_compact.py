"""compact: structured sparsity becomes a smaller model with the same outputs that reloads plainly."""

import json
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_bigsmall import MagnitudePruningCallback, compact, sparsity_report
from hf_bigsmall.pruning.io import apply_masks, attach_masks, save_pruned_model
from hf_bigsmall.pruning.masks import structured_masks, targeted_weights, unstructured_masks
from tests.pruning_utils import pruning_trainer, tiny_bert, training_args
from tests.test_pruning_masks import build
from tests.testing_utils import random_token_batch

CASES = [
    ("bert", "neurons", AutoModelForSequenceClassification, "intermediate_size", 64, 32),
    ("gpt2", "neurons", AutoModelForCausalLM, "n_inner", 128, 64),
    ("llama", "neurons", AutoModelForCausalLM, "intermediate_size", 64, 32),
    ("llama", "heads", AutoModelForCausalLM, "num_attention_heads", 4, 2),
]


def masked(architecture, structure, amount=0.5):
    model = build(architecture).eval()
    masks = structured_masks(model, structure, amount)
    attach_masks(model, masks, {"structure": structure})
    apply_masks(model, masks)
    return model


@pytest.mark.parametrize("architecture, structure, auto_class, field, before, after", CASES)
def test_compact_gives_fewer_params_same_outputs_and_plain_reload(tmp_path, architecture, structure, auto_class,
                                                                 field, before, after):
    model = masked(architecture, structure)
    batch = random_token_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    params_before = model.num_parameters()

    assert compact(model) is model  # in place
    assert getattr(model.config, field) == after and model.num_parameters() < params_before
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path)
    assert not (tmp_path / "sparsity_masks.safetensors").exists()  # nothing left to mask
    block = json.loads((tmp_path / "config.json").read_text())["sparsity"]
    assert block["compacted"][field] == [before, after]
    reloaded = auto_class.from_pretrained(tmp_path).eval()
    assert reloaded.num_parameters() == model.num_parameters()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=1e-5, atol=1e-5)


def test_compact_after_training_with_the_callback(tmp_path):
    model = tiny_bert()
    callback = MagnitudePruningCallback(target_sparsity=0.5, structure="neurons", schedule="linear")
    pruning_trainer(model, training_args(tmp_path, max_steps=4), callback).train()
    model.eval()
    batch = random_token_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    compact(model)
    assert model.config.intermediate_size == 32
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("architecture", ["bert", "gpt2"])
def test_bert_and_gpt2_heads_cannot_shrink_so_they_stay_masked(architecture):
    model = masked(architecture, "heads")
    zeros = sparsity_report(model).zero_params
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one clear error, no warning before it
        with pytest.raises(ValueError, match="Nothing to compact") as error:
            compact(model)
    message = str(error.value)
    # the reason, and advice that does not contradict it (no "prune with ... 'heads'")
    assert "heads cannot be removed" in message and "prune structure='neurons'" in message
    assert "'heads'" not in message
    assert model.config.num_attention_heads == 4 and sparsity_report(model).zero_params == zeros
    assert model.pruning_state.masks  # masks kept


def test_neurons_and_heads_together_keep_head_masks_on_bert(tmp_path):
    model = build("bert").eval()
    masks = {**structured_masks(model, "neurons", 0.5), **structured_masks(model, "heads", 0.5)}
    attach_masks(model, masks, {})
    apply_masks(model, masks)
    with pytest.warns(UserWarning, match="cannot be removed"):
        compact(model)
    assert model.config.intermediate_size == 32
    remaining = model.pruning_state.masks
    assert remaining and all("attention" in name for name in remaining)
    save_pruned_model(model, tmp_path)
    assert (tmp_path / "sparsity_masks.safetensors").is_file()


def test_unstructured_sparsity_cannot_compact_and_is_left_untouched():
    model = build("bert")
    masks = unstructured_masks(targeted_weights(model), 0.5)
    attach_masks(model, masks, {})
    apply_masks(model, masks)
    state = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="Unstructured sparsity keeps every matrix its size"):
        compact(model)
    assert all(torch.equal(p, state[n]) for n, p in model.state_dict().items())


def test_uneven_neuron_counts_remove_the_common_part_and_keep_the_rest_as_zeros():
    model = build("gpt2").eval()
    masks = structured_masks(model, "neurons", 0.25, scope="global")
    attach_masks(model, masks, {})
    apply_masks(model, masks)
    batch = random_token_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    with pytest.warns(UserWarning):
        compact(model)
    assert model.config.n_inner < 128
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=1e-5, atol=1e-5)
