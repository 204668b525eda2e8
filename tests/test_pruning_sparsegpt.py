"""SparseGPT and sequential calibration: smaller layer errors than Wanda, exact patterns, dead inputs,
Hessians that need more dampening, masks that survive saving, reloading and healing."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaForCausalLM
from transformers.testing_utils import CaptureLogger

from hf_bigsmall import (
    MagnitudePruningCallback,
    PruningCriterion,
    build_model_card,
    prune_one_shot,
    register_pruning_criterion,
    save_pruned_model,
    sparsity_report,
)
from hf_bigsmall.pruning import sparsegpt as sparsegpt_module
from hf_bigsmall.pruning.calibration import (
    _accumulate_squared_norm,
    collect_input_statistics,
    prepare_calibration,
    run_calibration,
)
from hf_bigsmall.pruning.criteria import base as criteria_base
from hf_bigsmall.pruning.criteria.sparsegpt import sparsegpt_prune
from hf_bigsmall.pruning.io import load_masks
from hf_bigsmall.pruning.sequential import calibrate_block_by_block
from hf_bigsmall.pruning.sparsegpt import SharedHessians, sparsegpt_rows
from hf_bigsmall.pruning.targets import find_target_modules
from tests.test_pruning_one_shot import (
    assert_masks_hold,
    calibration_rows,
    causal_blocks,
    rows_of,
    tiny_gpt2,
    tiny_llama,
)
from tests.testing_utils import TINY_VOCAB

BUILDS = pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])


def layer_inputs(model, calibration) -> dict[str, torch.Tensor]:
    """Every targeted layer's calibration inputs, `(tokens, in)`, from one pass of `model`."""
    targets = find_target_modules(model)
    inputs = {name: [] for name in targets}

    def keep(name):
        return lambda module, args: inputs[name].append(args[0].reshape(-1, args[0].shape[-1]).clone())

    run_calibration(model, calibration, forward_pre_hooks={name: keep(name) for name in targets})
    return {name: torch.cat(chunks) for name, chunks in inputs.items()}


# ------------------------------------------------------------------------- the layer error it minimises
@BUILDS
@pytest.mark.parametrize("pattern", [None, "2:4"], ids=["50%", "2:4"])
def test_every_layer_output_error_is_below_wandas(build, pattern):
    dense = build()
    calibration = prepare_calibration(calibration_rows(), num_samples=8, seq_len=32, model=dense)
    inputs = layer_inputs(dense, calibration)
    sparsity = None if pattern else 0.5
    pruned = {method: prune_one_shot(copy.deepcopy(dense), calibration, sparsity=sparsity, method=method,
                                     pattern=pattern)
              for method in ("wanda", "sparsegpt")}
    assert sparsity_report(pruned["sparsegpt"]).global_sparsity == pytest.approx(0.5)
    with torch.no_grad():
        for name, x in inputs.items():
            reference = dense.get_submodule(name)(x)
            error = {method: (model.get_submodule(name)(x) - reference).norm().item()
                     for method, model in pruned.items()}
            assert error["sparsegpt"] < error["wanda"], (name, error)


def test_the_weight_update_beats_the_same_mask_without_it():
    torch.manual_seed(0)
    # correlated channels (as in real activations): what one pruned weight did, the others can redo
    x = torch.randn(512, 8) @ torch.randn(8, 32) + 0.1 * torch.randn(512, 32)
    weight = torch.randn(16, 32)
    new, mask = sparsegpt_rows(weight, x.t() @ x, sparsity=0.5, block_size=8)
    assert int(mask.sum()) == 16 * 16 and torch.equal(new == 0, mask)
    assert ((weight - new).abs()[~mask] > 0).any()  # the kept weights moved
    reference = x @ weight.t()
    updated = (x @ new.t() - reference).norm()
    masked_only = (x @ weight.masked_fill(mask, 0).t() - reference).norm()
    assert updated < 0.8 * masked_only


def test_zero_sparsity_keeps_the_weight_and_the_hessian_dtype_barely_matters():
    torch.manual_seed(0)
    x, weight = torch.randn(256, 24), torch.randn(8, 24)
    new, mask = sparsegpt_rows(weight, x.t() @ x, sparsity=0.0)
    assert not mask.any() and torch.allclose(new, weight)
    wide = sparsegpt_rows(weight, (x.t() @ x).double(), sparsity=0.5)
    narrow = sparsegpt_rows(weight, x.t() @ x, sparsity=0.5)
    assert torch.equal(wide[1], narrow[1]) and torch.allclose(wide[0], narrow[0], atol=1e-4)


def test_dead_inputs_are_pruned_first_and_nothing_turns_nan():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    x[:, [3, 9]] = 0.0  # two channels that never fire on the calibration data
    weight = torch.randn(8, 16) * 10
    new, mask = sparsegpt_rows(weight, x.t() @ x, sparsity=None, pattern=(1, 4))
    assert torch.isfinite(new).all()
    assert mask[:, 3].all() and mask[:, 9].all()  # the free choice in their groups of 4
    assert (mask.reshape(8, 4, 4).sum(-1) == 1).all()


def test_a_hessian_that_is_not_positive_definite_is_dampened_more_with_a_warning():
    hessian = torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.5], dtype=torch.float64))
    logger = sparsegpt_module.logger
    with CaptureLogger(logger) as captured:
        new, mask = sparsegpt_rows(torch.ones(2, 4), hessian, sparsity=0.5, name="odd")
    assert "'odd' is not positive definite" in captured.out and "used 1 x mean(diag H)" in captured.out
    assert torch.isfinite(new).all() and int(mask.sum()) == 4
    with pytest.raises(ValueError, match="inf/NaN"):
        sparsegpt_rows(torch.ones(2, 4), torch.full((4, 4), float("nan")), sparsity=0.5, name="broken")


@BUILDS
def test_layers_that_read_the_same_input_share_one_exact_hessian(build):
    model = build()
    calibration = prepare_calibration(calibration_rows(), num_samples=8, seq_len=32, batch_size=2, model=model)
    inputs = layer_inputs(model, calibration)
    targets = find_target_modules(model)
    block = {name: module for name, module in targets.items() if ".0." in name or ".h.0." in name}
    shared = SharedHessians(block)
    run_calibration(model, calibration, forward_pre_hooks={name: shared.hook(name) for name in block})
    distinct = {id(hessian) for hessian in shared.hessians.values()}
    assert len(distinct) == (4 if build is tiny_llama else len(block))  # q/k/v and gate/up share in Llama
    for name in block:
        x = inputs[name].double()
        torch.testing.assert_close(shared.hessians[name], x.t() @ x, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------- patterns, previous masks, precision
@BUILDS
@pytest.mark.parametrize("pattern", ["2:4", "3:8"])
def test_every_block_of_m_inputs_has_exactly_n_zeros(build, pattern):
    model = build()
    n, m = map(int, pattern.split(":"))
    prune_one_shot(model, calibration_rows(), sparsity=None, method="sparsegpt", pattern=pattern, num_samples=8,
                   seq_len=32, sequential=True, hessian_dtype="float32")
    modules = dict(model.named_modules())
    for name, mask in model.pruning_state.masks.items():
        module = modules[name.removesuffix(".weight")]
        zeros = rows_of(module, module.weight == 0)
        assert (zeros.reshape(zeros.shape[0], -1, m).sum(-1) == n).all(), name
        assert torch.equal(rows_of(module, mask), zeros)


def test_masks_only_grow_when_pruning_again():
    model = tiny_llama()
    prune_one_shot(model, sparsity=0.3, method="magnitude")
    first = {name: mask.clone() for name, mask in model.pruning_state.masks.items()}
    prune_one_shot(model, calibration_rows(), sparsity=0.5, method="sparsegpt", num_samples=8, seq_len=32)
    for name, mask in first.items():
        assert model.pruning_state.masks[name][mask].all(), name
    assert sparsity_report(model).global_sparsity == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------- sequential calibration
def test_the_block_driver_without_sequential_sees_the_dense_inputs():
    model = tiny_llama()
    calibration = prepare_calibration(calibration_rows(), num_samples=8, seq_len=32, model=model)
    targets = find_target_modules(model)
    squared = {}

    def hooks_for(names):
        for name in names:
            squared[name] = torch.zeros(targets[name].in_features, dtype=torch.float64)
        return {name: _accumulate_squared_norm(squared[name]) for name in names}

    def prune(names):  # zero the MLPs once calibrated: without sequential, later blocks must not see it
        for name in names:
            if "mlp" in name:
                targets[name].weight.data.zero_()

    reference = collect_input_statistics(copy.deepcopy(model), calibration).squared_norms
    calibrate_block_by_block(model, calibration, targets, hooks_for, prune, sequential=False)
    assert set(squared) == set(targets)
    for name in targets:
        torch.testing.assert_close(squared[name], reference[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sequential, o_proj_runs", [("block", 4 + 4), ("layer", 1 + 0 + 4 + 4 + 4)])
def test_the_statistics_passes_of_sequential_calibration_stop_after_their_last_hooked_layer(sequential, o_proj_runs):
    model = tiny_llama()
    calibration = prepare_calibration(calibration_rows(), num_samples=8, seq_len=32, batch_size=2, model=model)
    targets = find_target_modules(model)
    squared, runs = {}, {"o_proj": 0, "down_proj": 0}

    def hooks_for(names):
        for name in names:
            squared[name] = torch.zeros(targets[name].in_features, dtype=torch.float64)
        return {name: _accumulate_squared_norm(squared[name]) for name in names}

    def count(kind):
        def hook(module, args, output):
            runs[kind] += 1
        return hook

    reference = collect_input_statistics(copy.deepcopy(model), calibration).squared_norms
    block = model.model.layers[0]
    handles = [block.self_attn.o_proj.register_forward_hook(count("o_proj")),
               block.mlp.down_proj.register_forward_hook(count("down_proj"))]
    calibrate_block_by_block(model, calibration, targets, hooks_for, lambda names: None, sequential=sequential)
    for handle in handles:
        handle.remove()
    # nothing pruned: the statistics equal one dense pass, every layer seen on all 4 batches
    for name in targets:
        torch.testing.assert_close(squared[name], reference[name], rtol=1e-5, atol=1e-6)
    # "block": one statistics run, whole on its first batch only, then the output run on all 4 batches.
    # "layer": one run of the first batch finds the groups; then the runs of q/k/v, o, gate/up and down
    # each stop at their group, so o_proj runs in the last two and in the output run, down_proj in none
    assert runs == {"o_proj": o_proj_runs, "down_proj": 1 + 4}


@BUILDS
def test_layer_sequential_calibrates_each_layer_on_the_pruned_layers_before_it_in_its_block(build):
    hessians = {}

    def recording(module, hessian, sparsity, pattern, previous, *, name, **options):
        hessians[name] = hessian.clone()
        return sparsegpt_prune(module, hessian, sparsity, pattern, previous, name=name, **options)

    saved = dict(criteria_base._REGISTRY)
    register_pruning_criterion(PruningCriterion(name="recording_sparsegpt", description="records its Hessians",
                                                needs="input_hessian", prune=recording))
    try:
        dense = build()
        calibration = prepare_calibration(calibration_rows(), num_samples=8, seq_len=32, model=dense)
        pruned = {}
        for sequential in ("layer", "block"):
            hessians = {}
            model = prune_one_shot(copy.deepcopy(dense), calibration, method="recording_sparsegpt",
                                   sequential=sequential)
            pruned[sequential] = (model, hessians)
    finally:
        criteria_base._REGISTRY.clear()
        criteria_base._REGISTRY.update(saved)
    model, recorded = pruned["layer"]
    assert model.pruning_state.record["sequential"] == "layer"
    # every layer was pruned from X X^T of the inputs it reads in the final pruned model: o_proj from the
    # attention of the pruned q/k/v, down_proj from the pruned gate/up, in every block
    for name, x in layer_inputs(model, calibration).items():
        x = x.double()
        torch.testing.assert_close(recorded[name], x.t() @ x, rtol=1e-4, atol=1e-3)
    # by block, the second layer of a block was calibrated on its dense first layer's outputs
    model, recorded = pruned["block"]
    second = [name for name in recorded if name.endswith(("self_attn.o_proj", "attn.c_proj"))][1]
    x = layer_inputs(model, calibration)[second].double()
    assert not torch.allclose(recorded[second], x.t() @ x, rtol=1e-2, atol=1e-1)


@pytest.mark.parametrize("width", [48, 300])
def test_the_hessian_of_wide_inputs_is_exact_and_symmetric(width):
    torch.manual_seed(0)
    x = torch.randn(3, 40, width)
    hessian = sparsegpt_module.new_hessian(torch.nn.Linear(width, 4))
    for _ in range(2):
        sparsegpt_module._add_outer_product(hessian, x)
    flat = x.reshape(-1, width).double()
    torch.testing.assert_close(hessian, 2 * flat.t() @ flat, rtol=1e-5, atol=1e-4)
    assert torch.equal(hessian, hessian.t())


def test_unstructured_masks_prune_exactly_the_fraction_asked_even_with_tied_scores():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    x[:, :10] = 0.0  # ten dead inputs: 80 weights tied at cost zero, more than the 64 asked for
    new, mask = sparsegpt_rows(torch.randn(8, 16), x.t() @ x, sparsity=0.5)
    assert int(mask.sum()) == 64 and mask[:, 10:].sum() == 0 and torch.equal(new == 0, mask)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_sequential_calibration_reads_the_pruned_blocks_before(method):
    dense = tiny_llama()
    calibration = prepare_calibration(calibration_rows(), num_samples=8, seq_len=32, model=dense)
    one_pass = prune_one_shot(copy.deepcopy(dense), calibration, method=method)
    sequential = prune_one_shot(copy.deepcopy(dense), calibration, method=method, sequential=True)
    first, later = "model.layers.0.self_attn.q_proj.weight", "model.layers.3.mlp.down_proj.weight"
    # the first block reads the embeddings either way; a later one reads pruned outputs only sequentially
    assert torch.equal(one_pass.pruning_state.masks[first], sequential.pruning_state.masks[first])
    assert torch.equal(one_pass.get_parameter(first), sequential.get_parameter(first))
    assert not torch.equal(one_pass.pruning_state.masks[later], sequential.pruning_state.masks[later])
    assert sequential.pruning_state.record["sequential"] == "layer"
    assert one_pass.pruning_state.record["sequential"] is False
    assert sparsity_report(sequential).global_sparsity == pytest.approx(0.5)


class _UpTwiceMLP(torch.nn.Module):
    """A Llama MLP that calls up_proj twice: its block's layers are not each called once per forward."""

    def __init__(self, mlp):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = mlp.gate_proj, mlp.up_proj, mlp.down_proj, mlp.act_fn

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x) + 0.5 * self.up_proj(x))


@pytest.mark.parametrize("blocks, recorded", [([1], "layer"), ([0, 1, 2, 3], "block")], ids=["one", "every"])
def test_blocks_that_fall_back_to_block_are_warned_about_recorded_and_on_the_card(blocks, recorded, tmp_path):
    from transformers.utils import logging as hf_logging

    model = tiny_llama()
    for index in blocks:
        model.model.layers[index].mlp = _UpTwiceMLP(model.model.layers[index].mlp)
    logger = hf_logging.get_logger("hf_bigsmall.pruning.sequential")
    with CaptureLogger(logger) as captured:
        prune_one_shot(model, calibration_rows(), method="sparsegpt", sequential=True, num_samples=4, seq_len=32)
    assert captured.out.count("not each called once") == 1 and f"block(s) {blocks}" in captured.out
    record = model.pruning_state.record
    assert record["sequential"] == recorded
    if recorded == "layer":  # the other blocks really were calibrated layer by layer
        assert record["sequential_fallback_blocks"] == blocks
    else:
        assert "sequential_fallback_blocks" not in record
    save_pruned_model(model, tmp_path / "pruned")
    text = build_model_card(tmp_path / "pruned").text
    if recorded == "layer":
        assert "within its block too, except in block 1:" in text
    else:
        assert "Each block was calibrated" in text and "within its block too" not in text


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"sparsity": float("nan"), "pattern": "2:4"}, ValueError, "not a number"),
        ({"sparsity": float("nan")}, ValueError, "not a number"),
        ({"scope": "row"}, ValueError, "takes no scope"),
        ({"sequential": "yes"}, ValueError, "'layer'.*'block'"),
        ({"sequential": 1}, TypeError, "False, True, 'block' or 'layer'"),
        ({"sequential": None}, TypeError, "False, True, 'block' or 'layer'"),
        ({"method": "magnitude", "sequential": True}, ValueError, "uses no calibration"),
        ({"dampening": 0.0}, ValueError, "positive number"),
        ({"dampening": float("inf")}, ValueError, "positive number"),
        ({"hessian_dtype": "float16"}, ValueError, "choose one of"),
        ({"block_size": 0}, ValueError, "positive integer"),
        ({"calibration_dataset": None}, ValueError, "needs calibration_dataset"),
        ({"method": "obs"}, ValueError, "choose one of"),
        ({"method": "wanda", "scope": "global", "sequential": True}, ValueError, "scope='row' or 'layer'"),
    ],
    ids=["nan-with-pattern", "nan", "scope", "sequential-str", "sequential-int", "sequential-none",
         "magnitude-sequential",
         "dampening-zero", "dampening-inf", "dtype", "block-size", "no-calibration", "method", "global-sequential"],
)
def test_bad_input_is_refused_before_the_model_changes(kwargs, error, words):
    model = tiny_llama()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    kwargs = {"calibration_dataset": calibration_rows(), "num_samples": 4, "seq_len": 32, "method": "sparsegpt",
              **kwargs}
    with pytest.raises(error, match=words):
        prune_one_shot(model, **kwargs)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert not getattr(model, "pruning_state", None)


@pytest.mark.parametrize("structure", ["unstructured", "2:4", "4:8"])
def test_a_nan_target_sparsity_is_refused_whatever_the_pattern(structure):
    # with a pattern the sparsity is implied by N:M, which once let NaN through unchecked
    with pytest.raises(ValueError, match="finite number"):
        MagnitudePruningCallback(target_sparsity=float("nan"), structure=structure, criterion="wanda")
    pattern = None if structure == "unstructured" else structure
    with pytest.raises(ValueError, match="not a number"):
        prune_one_shot(tiny_llama(), calibration_rows(), sparsity=float("nan"), method="wanda", pattern=pattern)


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_statistics_collected_earlier_cannot_stand_in_for_block_by_block_calibration(method):
    model = tiny_llama()
    statistics = collect_input_statistics(model, prepare_calibration(calibration_rows(), 4, 32, model=model))
    with pytest.raises(ValueError, match="pass the calibration dataset itself"):
        prune_one_shot(model, statistics, method=method, sequential=method == "wanda")
    assert not getattr(model, "pruning_state", None)


# ------------------------------------------------------------------------- saving, reloading, healing, card
def test_saved_model_reloads_plainly_heals_and_names_sparsegpt_on_its_card(tmp_path):
    from transformers import Trainer

    from hf_bigsmall import DistillationConfig

    model = tiny_llama()
    prune_one_shot(model, calibration_rows(), sparsity=None, pattern="2:4", method="sparsegpt", sequential=True,
                   num_samples=8, seq_len=32)
    masks = {name: mask.clone() for name, mask in model.pruning_state.masks.items()}
    save_pruned_model(model, tmp_path / "pruned")
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())["sparsity"]
    assert config["method"] == "sparsegpt" and config["structure"] == "2:4" and config["sequential"] == "layer"
    assert config["dampening"] == 0.01 and config["hessian_dtype"] == "float64"
    saved = load_masks(tmp_path / "pruned")
    assert set(saved) == set(masks) and all(torch.equal(saved[name], masks[name]) for name in masks)
    text = build_model_card(tmp_path / "pruned").text
    assert "by SparseGPT (Frantar & Alistarh, 2023" in text and "already pruned, within its block too" in text

    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "pruned")
    ids = torch.randint(1, TINY_VOCAB, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)
    assert_masks_hold(reloaded, masks)
    before = {name: parameter.detach().clone() for name, parameter in reloaded.named_parameters()}
    args = DistillationConfig(output_dir=str(tmp_path / "heal"), max_steps=3, per_device_train_batch_size=2,
                              gradient_accumulation_steps=2, learning_rate=1e-2, report_to="none",
                              save_strategy="no", use_cpu=True, alpha_kd=0.0, alpha_ce=1.0, disable_tqdm=True)
    Trainer(model=reloaded, args=args, train_dataset=causal_blocks(),
            callbacks=[MagnitudePruningCallback(target_sparsity=None)]).train()
    assert_masks_hold(reloaded, masks)
    assert any(not torch.equal(before[name], reloaded.get_parameter(name).detach()) for name in masks)


@pytest.mark.parametrize("sequential, words", [(True, "Each block was"), ("block", "Each block was"),
                                               ("layer", "Each layer was"), (False, None)])
def test_the_card_says_what_each_layer_was_calibrated_on(sequential, words):
    from hf_bigsmall.pruning.record import SparsityRecord

    # True, recorded before "block" and "layer" existed, meant block by block
    sentence = SparsityRecord(method="sparsegpt", schedule="one_shot", sequential=sequential).sentence()
    assert (words in sentence) if words else "calibrated on the outputs" not in sentence


@pytest.mark.parametrize("value", ["row", 1, 0, "True", None])
def test_a_record_whose_sequential_is_none_of_the_written_values_is_refused(value):
    from hf_bigsmall.pruning.record import SparsityRecord

    block = {"method": "sparsegpt", "schedule": "one_shot", "sequential": value}
    if value is None:  # a null, as a record made without the key writes it, reads back as before
        assert SparsityRecord.from_dict(block).sequential is None
        return
    with pytest.raises(ValueError, match="False, True, 'block' or 'layer'"):
        SparsityRecord.from_dict(block)


def test_an_encoder_and_a_layer_outside_the_blocks_are_pruned_too():
    from transformers import BertForSequenceClassification

    from tests.testing_utils import tiny_bert_config, tiny_llama_config

    torch.manual_seed(0)
    bert = BertForSequenceClassification(tiny_bert_config()).eval()
    prune_one_shot(bert, calibration_rows(), method="sparsegpt", sequential=True, num_samples=4, seq_len=32)
    assert sparsity_report(bert).global_sparsity == pytest.approx(0.5) and len(bert.pruning_state.masks) >= 12
    # an untied LM head sits outside the blocks: calibrated by a full pass once the blocks are pruned
    llama = LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=False)).eval()
    prune_one_shot(llama, calibration_rows(), method="sparsegpt", target_modules=["down_proj", "lm_head"],
                   num_samples=4, seq_len=32)
    assert (llama.lm_head.weight == 0).float().mean().item() == pytest.approx(0.5)
    assert set(llama.pruning_state.masks) == {"lm_head.weight", *(f"model.layers.{i}.mlp.down_proj.weight"
                                                              for i in range(4))}
