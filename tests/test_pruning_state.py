"""`PruningState`: one object holds a model's pruning (masks, record, schedule position, rewind weights), held by the
callback, attached to the model as `pruning_state`, written and read back through `pruning.io`."""

from __future__ import annotations

import torch
from torch import nn

from hf_bigsmall import MagnitudePruningCallback, prune_one_shot, save_pruned_model
from hf_bigsmall.pruning.io import load_pruning_state, write_pruning_state
from hf_bigsmall.pruning.state import PruningState, get_pruning_state
from tests.test_pruning_one_shot import calibration_rows, pruning_run, tiny_llama


def _attributes_added(model: nn.Module) -> set[str]:
    return set(model.__dict__) - set(tiny_llama().__dict__)


def test_one_shot_pruning_leaves_one_state_object_on_the_model():
    model = prune_one_shot(tiny_llama(), calibration_rows(), sparsity=0.5, num_samples=4, seq_len=32)
    assert _attributes_added(model) == {"pruning_state"}
    state = get_pruning_state(model)
    assert isinstance(state, PruningState) and state.record["method"] == "wanda" and state.masks


def test_the_callback_holds_the_state_it_attaches(tmp_path):
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot")
    trainer = pruning_run(tmp_path, callback, max_steps=2)
    assert get_pruning_state(trainer.model) is callback.pruning_state
    assert callback.masks is callback.pruning_state.masks and callback.pruning_state.last_pruned_step == 0
    assert _attributes_added(trainer.model) - {"_is_accelerate_prepared"} == {"pruning_state"}  # that one is Trainer's


def test_a_state_is_written_and_read_back_whole(tmp_path):
    model = prune_one_shot(tiny_llama(), sparsity=0.5, method="magnitude")
    state = get_pruning_state(model)
    state.rewind_weights = {"model.norm.weight": torch.arange(32, dtype=torch.float32)}
    state.imp_round, state.record["imp_round"] = 2, 2
    save_pruned_model(model, tmp_path)
    write_pruning_state(model, tmp_path)
    loaded = load_pruning_state(tmp_path, model=tiny_llama())
    assert loaded.masks.keys() == state.masks.keys()
    assert all(torch.equal(loaded.masks[name], mask) for name, mask in state.masks.items())
    assert loaded.record["method"] == "magnitude" and loaded.record["global_sparsity"] == 0.5
    assert loaded.imp_round == 2 and torch.equal(loaded.rewind_weights["model.norm.weight"], torch.arange(32.0))
    empty = load_pruning_state(tmp_path / "nothing-here")
    assert empty.masks == {} and empty.record == {} and empty.rewind_weights is None
