"""The pruning-criterion registry: entries checked at registration, user criteria through `prune_one_shot` and
`MagnitudePruningCallback`, and a calibration pass that collects exactly what a criterion declares."""

from __future__ import annotations

import math

import pytest
import torch

from hf_bigsmall import (
    MagnitudePruningCallback,
    PruningCriterion,
    get_pruning_criterion,
    prune_one_shot,
    pruning_criterion_names,
    register_pruning_criterion,
)
from hf_bigsmall.pruning import PruningConfig
from hf_bigsmall.pruning.criteria import base as criteria_base
from hf_bigsmall.pruning.targets import find_target_modules
from tests.test_pruning_one_shot import assert_masks_hold, calibration_rows, pruning_run, tiny_gpt2, tiny_llama

BUILDS = pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])


@pytest.fixture(autouse=True)
def restore_registry():
    saved = dict(criteria_base._REGISTRY)
    yield
    criteria_base._REGISTRY.clear()
    criteria_base._REGISTRY.update(saved)


def largest_first(weight, statistic):
    """Prunes the largest weights: the opposite of magnitude, so a silent fallback to magnitude shows."""
    return -weight.abs()


# ------------------------------------------------------------------------- the registry
def test_built_ins_are_registered_with_what_they_declare():
    assert {"magnitude", "wanda", "activation", "sparsegpt"} <= set(pruning_criterion_names())
    assert get_pruning_criterion("wanda").needs == "input_norms" and get_pruning_criterion("wanda").default_scope == "row"
    assert get_pruning_criterion("sparsegpt").needs == "input_hessian" and get_pruning_criterion("sparsegpt").rewrites_weights
    assert get_pruning_criterion("activation").granularities == ("neurons", "heads")
    assert get_pruning_criterion("magnitude").needs == "nothing"
    for name in pruning_criterion_names():
        assert get_pruning_criterion(name).description.strip()


def test_unknown_names_and_taken_names_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"'obs'.*magnitude.*register_pruning_criterion\(\.\.\.\)"):
        get_pruning_criterion("obs")
    entry = PruningCriterion(name="magnitude", description="again", score=largest_first)
    with pytest.raises(ValueError, match="already registered.*overwrite=True"):
        register_pruning_criterion(entry)
    assert register_pruning_criterion(entry, overwrite=True) is get_pruning_criterion("magnitude")
    with pytest.raises(TypeError, match="PruningCriterion"):
        register_pruning_criterion({"name": "dict"})


@pytest.mark.parametrize(
    "fields, error, words",
    [
        ({"name": ""}, TypeError, "name must be a non-empty string"),
        ({"description": None}, TypeError, "description must be a non-empty string"),
        ({"needs": "activations"}, ValueError, "needs='activations' is not one of"),
        ({"granularities": "unstructured"}, TypeError, "non-empty tuple"),
        ({"granularities": ("blocks",)}, ValueError, r"\['blocks'\]"),
        ({"score": 0.5}, TypeError, "score must be callable"),
        ({"score": None}, ValueError, "give it a score"),
        ({"granularities": ("neurons",)}, ValueError, "unit_scores"),
        ({"prune": lambda *args, **kwargs: None}, ValueError, "either score or prune"),
        ({"default_scope": "model"}, ValueError, "default_scope='model'"),
        # functions that cannot take what the kit passes are refused here, not at the first pruning event
        ({"score": lambda weight: weight.abs()}, TypeError, r"score is called as score\(weight, statistic\)"),
        ({"score": None, "prune": lambda module, statistic, sparsity: None}, TypeError, "prune is called as"),
        ({"granularities": ("neurons",), "unit_scores": lambda model: None}, TypeError, "unit_scores is called as"),
    ],
)
def test_entries_are_checked_when_built(fields, error, words):
    with pytest.raises(error, match=words):
        PruningCriterion(**{"name": "mine", "description": "mine", "score": largest_first, **fields})
    assert PruningCriterion(name="mine", description="mine", score=largest_first,
                            granularities=["unstructured"]).granularities == ("unstructured",)


# ------------------------------------------------------------------------- a user criterion, one shot
@BUILDS
def test_a_user_criterion_prunes_through_prune_one_shot(build):
    register_pruning_criterion(PruningCriterion(name="largest", description="the largest weights", score=largest_first))
    model = build()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    prune_one_shot(model, sparsity=0.25, method="largest")  # needs nothing: no calibration data
    targets = find_target_modules(model)
    for name, module in targets.items():
        weight = before[f"{name}.weight"].abs()
        kept = weight[module.weight.detach() != 0]
        pruned = weight[module.weight.detach() == 0]
        assert pruned.numel() == round(0.25 * weight.numel())  # scope defaults to one layer at a time
        assert pruned.min() >= kept.max(), name  # the largest went, not the smallest
    assert model.pruning_state.record["method"] == "largest" and model.pruning_state.record["scope"] == "layer"


def recording(needs: str, seen: dict) -> PruningCriterion:
    def score(weight, statistic):
        seen.setdefault("shapes", []).append(None if statistic is None else tuple(statistic.shape))
        seen.setdefault("statistics", []).append(statistic)
        return weight.abs()

    return PruningCriterion(name=f"recording_{needs}", description="records", needs=needs, score=score)


@pytest.mark.parametrize("needs", ["nothing", "input_norms", "input_hessian", "gradients"])
@BUILDS
def test_the_calibration_pass_collects_what_the_criterion_declares(build, needs):
    seen = {}
    criterion = register_pruning_criterion(recording(needs, seen))
    model = build()
    targets = find_target_modules(model)
    calibration = calibration_rows() if needs != "nothing" else _Untouchable()
    prune_one_shot(model, calibration, sparsity=0.5, method=criterion.name, num_samples=4, seq_len=16, batch_size=2)
    expected = []
    for module in targets.values():
        out_features, in_features = module.weight.shape if isinstance(module, torch.nn.Linear) else module.weight.shape[::-1]
        expected.append({"nothing": None, "input_norms": (in_features,), "input_hessian": (in_features, in_features),
                         "gradients": (out_features, in_features)}[needs])
    assert seen["shapes"] == expected
    assert model.pruning_state.record.get("sequential") is (False if needs != "nothing" else None)


@BUILDS
def test_norms_are_the_diagonal_of_the_hessian_and_gradients_are_real(build):
    norms, hessians, gradients = {}, {}, {}
    for needs, seen in (("input_norms", norms), ("input_hessian", hessians), ("gradients", gradients)):
        register_pruning_criterion(recording(needs, seen))
        prune_one_shot(build(), calibration_rows(), sparsity=0.5, method=f"recording_{needs}", num_samples=4,
                       seq_len=16, batch_size=2)
    for norm, hessian in zip(norms["statistics"], hessians["statistics"]):
        assert torch.allclose(torch.diagonal(hessian).to(norm.dtype), norm, rtol=1e-4, atol=1e-6)
    assert all(statistic.abs().sum() > 0 for statistic in gradients["statistics"])


def test_a_user_prune_step_may_rewrite_the_weights_it_keeps():
    def halve_and_double(module, statistic, sparsity, pattern, previous, *, name, **options):
        assert statistic is None and options == {"block_size": 128, "dampening": 0.01}
        weight = module.weight.data
        mask = weight.abs() <= weight.abs().flatten().kthvalue(round(sparsity * weight.numel())).values
        weight.mul_(2.0).masked_fill_(mask, 0.0)
        return mask

    register_pruning_criterion(PruningCriterion(name="doubling", description="doubles", prune=halve_and_double))
    model = tiny_llama()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    prune_one_shot(model, sparsity=0.5, method="doubling")
    name = "model.layers.0.mlp.down_proj.weight"
    weight = dict(model.named_parameters())[name].detach()
    kept = weight != 0
    assert torch.equal(weight[kept], 2 * before[name][kept]) and torch.equal(model.pruning_state.masks[name], ~kept)
    assert model.pruning_state.record["block_size"] == 128  # the options a prune step gets are recorded
    with pytest.raises(ValueError, match="rewrites the weights it keeps.*prune_one_shot"):
        MagnitudePruningCallback(criterion="doubling")


def test_a_prune_step_returning_no_mask_is_named():
    register_pruning_criterion(PruningCriterion(name="broken", description="broken",
                                                prune=lambda module, *args, **kwargs: None))
    with pytest.raises(ValueError, match="prune step of criterion 'broken' must return a bool mask"):
        prune_one_shot(tiny_llama(), sparsity=0.5, method="broken")


def test_prune_one_shot_refuses_unit_criteria_and_unknown_names():
    with pytest.raises(ValueError, match="'activation' prunes neurons, heads.*prune_width"):
        prune_one_shot(tiny_llama(), calibration_rows(), method="activation")
    with pytest.raises(ValueError, match="register_pruning_criterion"):
        prune_one_shot(tiny_llama(), method="obs")


# ------------------------------------------------------------------------- a user criterion, in the callback
@BUILDS
def test_a_user_criterion_prunes_through_the_callback_and_its_masks_hold(build, tmp_path):
    register_pruning_criterion(PruningCriterion(name="largest", description="the largest weights", score=largest_first,
                                                default_scope="layer"))
    reference = prune_one_shot(build(), sparsity=0.5, method="largest")
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", criterion="largest")
    assert callback.config.scope == "layer"  # the entry's default
    trainer = pruning_run(tmp_path, callback, model=build(), max_steps=3)
    for name, mask in reference.pruning_state.masks.items():
        assert torch.equal(callback.masks[name], mask), name
    assert_masks_hold(trainer.model, callback.masks)
    assert trainer.model.pruning_state.record["method"] == "largest"


def test_a_calibrated_user_criterion_in_the_callback_needs_and_uses_calibration(tmp_path):
    seen = {}
    criterion = register_pruning_criterion(recording("input_hessian", seen))
    with pytest.raises(ValueError, match="needs calibration_dataset="):
        MagnitudePruningCallback(criterion=criterion.name)
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", criterion=criterion.name,
                                        calibration_dataset=calibration_rows(), calibration_samples=4,
                                        calibration_seq_len=16)
    pruning_run(tmp_path, callback, max_steps=2)
    assert seen["shapes"] and all(len(set(shape)) == 1 and len(shape) == 2 for shape in seen["shapes"])


def test_a_user_unit_criterion_ranks_neurons_in_the_callback(tmp_path):
    def last_neurons_first(model, structure, statistic):
        from hf_bigsmall.pruning.targets import unit_groups

        return [-torch.arange(group.num_units, dtype=torch.float32) for group in unit_groups(model, structure)]

    register_pruning_criterion(PruningCriterion(name="last", description="the last neurons", granularities=("neurons",),
                                                unit_scores=last_neurons_first))
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", structure="neurons", criterion="last")
    trainer = pruning_run(tmp_path, callback, max_steps=2)
    down = trainer.model.model.layers[0].mlp.down_proj.weight.detach()  # (hidden, intermediate): columns are neurons
    half = down.shape[1] // 2
    assert down[:, half:].eq(0).all() and down[:, :half].ne(0).any()


# ------------------------------------------------------------------------- the config
def test_config_checks_the_name_against_the_registry():
    with pytest.raises(ValueError, match=r"criterion='taylor' is not supported: choose one of .*register_pruning_criterion"):
        PruningConfig(criterion="taylor")
    register_pruning_criterion(PruningCriterion(name="taylor", description="taylor", score=largest_first))
    assert PruningConfig(criterion="taylor").scope == "global"
    with pytest.raises(ValueError, match="ranks unstructured or n:m, not structure='neurons'|scores single weights"):
        PruningConfig(criterion="taylor", structure="neurons")


@pytest.mark.parametrize("structure", ["unstructured", "2:4", "neurons", "heads"])
def test_nan_sparsity_is_refused_whatever_the_structure(structure):
    with pytest.raises(ValueError, match="finite number"):
        PruningConfig(target_sparsity=math.nan, structure=structure)


class _Untouchable:
    """A calibration set that fails if anything reads it."""

    def __len__(self):
        raise AssertionError("a criterion that needs nothing read the calibration data")

    def __getitem__(self, index):
        raise AssertionError("a criterion that needs nothing read the calibration data")


def test_a_gradient_criterion_leaves_the_models_gradients_alone():
    register_pruning_criterion(recording("gradients", {}))
    model = tiny_llama()
    for param in model.parameters():
        param.grad = torch.full_like(param, 3.0)
    prune_one_shot(model, calibration_rows(), sparsity=0.5, method="recording_gradients", num_samples=2, seq_len=16)
    assert all(param.grad is not None and param.grad.eq(3.0).all() for param in model.parameters())


def test_a_gradient_criterion_prunes_in_training_too(tmp_path):
    seen = {}
    criterion = register_pruning_criterion(recording("gradients", seen))
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="linear", start_step=1, end_step=2,
                                        pruning_frequency=1, criterion=criterion.name,
                                        calibration_dataset=calibration_rows(), calibration_samples=2,
                                        calibration_seq_len=16)
    trainer = pruning_run(tmp_path, callback, max_steps=3)
    shapes = {tuple(module.weight.shape) for module in find_target_modules(trainer.model).values()}
    assert len(seen["shapes"]) == 2 * len(find_target_modules(trainer.model))  # two pruning events
    assert set(seen["shapes"]) == shapes  # (out, in) of each Linear
    assert_masks_hold(trainer.model, callback.masks)


def test_an_unknown_criterion_says_every_process_must_register_it():
    # under torchrun / accelerate launch each process builds its own callback from its own registry
    for build in (lambda: get_pruning_criterion("rank0_only"), lambda: PruningConfig(criterion="rank0_only"),
                  lambda: prune_one_shot(tiny_llama(), sparsity=0.5, method="rank0_only")):
        with pytest.raises(ValueError, match=r"register_pruning_criterion\(\.\.\.\).*every process"):
            build()


# ------------------------------------------------------------------------- scores of any sign
@pytest.mark.parametrize("scope", ["row", "layer", "global"])
def test_a_criterion_with_negative_scores_prunes_to_the_target_over_masks_in_force(scope):
    # log|w| is below -1 for every weight of a tiny model: the weights pruned before must still rank lowest
    register_pruning_criterion(PruningCriterion(name="log_magnitude", description="log magnitude",
                                                score=lambda weight, statistic: weight.abs().log()))
    model = prune_one_shot(tiny_llama(), sparsity=0.3, method="magnitude", scope=scope)
    before = {name: mask.clone() for name, mask in model.pruning_state.masks.items()}
    prune_one_shot(model, sparsity=0.5, method="log_magnitude", scope=scope)
    masks = model.pruning_state.masks
    assert all(bool((masks[name] | ~mask).all()) for name, mask in before.items())  # masks only grow
    pruned = sum(int(mask.sum()) for mask in masks.values()) / sum(mask.numel() for mask in masks.values())
    assert pruned == pytest.approx(0.5, abs=2e-3)


@pytest.mark.parametrize("structure", ["neurons", "heads"])
def test_a_unit_criterion_with_negative_scores_prunes_as_the_same_order_in_positive_scores(tmp_path, structure):
    def last_first(offset):
        def unit_scores(model, structure, statistic):
            from hf_bigsmall.pruning.targets import unit_groups

            return [offset - torch.arange(group.num_units, dtype=torch.float32) for group in unit_groups(model, structure)]

        return unit_scores

    masks = {}
    for name, offset in (("positive_last", 100.0), ("negative_last", -1.0)):  # the same order, of either sign
        register_pruning_criterion(PruningCriterion(name=name, description="the last units",
                                                    granularities=(structure,), unit_scores=last_first(offset)))
        callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", structure=structure,
                                            criterion=name)
        pruning_run(tmp_path / name, callback, max_steps=2)
        masks[name] = callback.masks
    assert masks["negative_last"].keys() == masks["positive_last"].keys()
    for name, mask in masks["positive_last"].items():
        assert torch.equal(masks["negative_last"][name], mask), name
        assert 0 < mask.float().mean() < 1, name  # some units went, not all


def test_a_criterion_whose_scores_hold_nan_is_stopped_before_any_weight_changes():
    # NaN ranks above every number, so those weights would be kept silently whatever their magnitude
    register_pruning_criterion(PruningCriterion(name="nan_on_negatives", description="NaN on negative weights",
                                                score=lambda weight, statistic: weight.sqrt()))
    model = tiny_llama()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    with pytest.raises(ValueError, match=r"nan_on_negatives|NaN.*model\.layers\.0\."):
        prune_one_shot(model, sparsity=0.5, method="nan_on_negatives")
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters())


def test_unit_scores_that_hold_nan_are_refused(tmp_path):
    def nan_scores(model, structure, statistic):
        from hf_bigsmall.pruning.targets import unit_groups

        return [torch.full((group.num_units,), float("nan")) for group in unit_groups(model, structure)]

    register_pruning_criterion(PruningCriterion(name="nan_units", description="NaN", granularities=("neurons",),
                                                unit_scores=nan_scores))
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", structure="neurons",
                                        criterion="nan_units")
    with pytest.raises(ValueError, match="unit scores hold NaN"):
        pruning_run(tmp_path, callback, max_steps=1)
