"""What a pruning run leaves on disk stays consistent: best-model reloads, damaged masks, pruning
again, compacting over a pruned folder."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback

from hf_bigsmall import BigSmallTrainer, MagnitudePruningCallback, compact, save_pruned_model
from hf_bigsmall.pruning.io import SPARSITY_MASKS_NAME
from tests.pruning_utils import TokenClassificationData, pruning_trainer, tiny_bert, training_args


def zeros_of(weights: dict[str, torch.Tensor], names) -> dict[str, torch.Tensor]:
    return {name: weights[name] == 0 for name in names}


@pytest.mark.parametrize("trainer_class", [Trainer, BigSmallTrainer])
def test_best_model_at_end_is_saved_with_its_own_masks(tmp_path, trainer_class):
    evaluations = []

    def first_is_best(prediction):  # the densest checkpoint wins, so the final masks do not fit it
        evaluations.append(1)
        return {"score": -float(len(evaluations))}

    callback = MagnitudePruningCallback(target_sparsity=0.6, schedule="cubic", end_step=6)
    args = training_args(tmp_path, max_steps=8, eval_strategy="steps", eval_steps=2, save_strategy="steps",
                         save_steps=2, load_best_model_at_end=True, metric_for_best_model="score",
                         greater_is_better=True)
    trainer = pruning_trainer(tiny_bert(), args, callback, trainer_class=trainer_class,
                              eval_dataset=TokenClassificationData(size=8), compute_metrics=first_is_best)
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    trainer.save_model()

    best_masks = load_file(str(tmp_path / "checkpoint-2" / SPARSITY_MASKS_NAME))
    saved_masks = load_file(str(tmp_path / SPARSITY_MASKS_NAME))
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert set(saved_masks) == set(best_masks)
    assert all(torch.equal(saved_masks[name], best_masks[name]) for name in best_masks)
    # the masks say exactly which saved weights are zero, and the config block measures those weights
    assert all(torch.equal(saved_masks[name], weights[name] == 0) for name in saved_masks)
    pruned = sum(int(mask.sum()) for mask in saved_masks.values())
    total = sum(mask.numel() for mask in saved_masks.values())
    block = json.loads((tmp_path / "config.json").read_text())["sparsity"]
    assert block["global_sparsity"] == pytest.approx(pruned / total, abs=1e-6) and block["global_sparsity"] < 0.5

    # re-arming the saved model zeroes nothing that was not pruned
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    nonzero_before = sum(int((p != 0).sum()) for p in reloaded.parameters())
    rearm = MagnitudePruningCallback(target_sparsity=None)
    pruning_trainer(reloaded, training_args(tmp_path / "again", max_steps=1, learning_rate=0.0), rearm).train()
    assert sum(int((p != 0).sum()) for p in reloaded.parameters()) == nonzero_before


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path):
    path.write_bytes(b"\x00\x01not a safetensors file" * 10)


def _wrong_shape(path):
    masks = load_file(str(path))
    name = next(iter(masks))
    masks[name] = torch.zeros(3, 5, dtype=torch.bool)
    save_file(masks, str(path))


@pytest.mark.parametrize("damage, message", [
    (_truncate, "truncated or corrupted"), (_garble, "truncated or corrupted"), (_wrong_shape, "do not fit this model"),
])
def test_damaged_masks_on_resume_name_the_file_and_the_fix(tmp_path, damage, message):
    args = training_args(tmp_path, max_steps=8, save_strategy="steps", save_steps=4)
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic", end_step=6)
    pruning_trainer(tiny_bert(), args, callback).train()
    shutil.rmtree(tmp_path / "checkpoint-8")  # killed after the step-4 checkpoint
    masks_file = tmp_path / "checkpoint-4" / SPARSITY_MASKS_NAME
    damage(masks_file)
    damaged = masks_file.read_bytes()

    resumed = pruning_trainer(tiny_bert(), args, MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic", end_step=6))
    with pytest.raises(ValueError, match=message) as error:
        resumed.train(resume_from_checkpoint=True)
    assert str(masks_file) in str(error.value) and "Delete" in str(error.value)
    assert masks_file.read_bytes() == damaged and not (tmp_path / "checkpoint-8").exists()


def test_another_runs_masks_are_refused_on_resume_not_armed(tmp_path):
    # a plain Trainer cannot see the folder train(resume_from_checkpoint=<path>) names and reads
    # output_dir/checkpoint-<step>: there, another run's masks of the same shapes used to be armed silently
    def run(output_dir, seed):
        args = training_args(output_dir, max_steps=4, save_strategy="steps", save_steps=2)
        return pruning_trainer(tiny_bert(seed), args, MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot"))

    shared, other = tmp_path / "runs", tmp_path / "other"
    run(shared, seed=0).train()
    run(other, seed=1).train()
    before = (shared / "checkpoint-2" / SPARSITY_MASKS_NAME).read_bytes()
    with pytest.raises(ValueError, match="do not belong to the weights this run resumes") as error:
        run(shared, seed=1).train(resume_from_checkpoint=str(other / "checkpoint-2"))
    assert str(shared / "checkpoint-2") in str(error.value) and "resume_from_checkpoint" in str(error.value)
    assert (shared / "checkpoint-2" / SPARSITY_MASKS_NAME).read_bytes() == before
    # named in the arguments too, the right folder is read and the run resumes
    args = training_args(shared, max_steps=4, save_strategy="steps", save_steps=2,
                         resume_from_checkpoint=str(other / "checkpoint-2"))
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot")
    pruning_trainer(tiny_bert(1), args, callback).train(resume_from_checkpoint=str(other / "checkpoint-2"))
    expected = load_file(str(other / "checkpoint-2" / SPARSITY_MASKS_NAME))
    assert all(torch.equal(callback.masks[name].cpu(), mask) for name, mask in expected.items())


def test_masks_that_leave_pruned_weights_alive_are_refused_but_warned_under_deepspeed(tmp_path, caplog):
    # DeepSpeed may restore the fp32 master weights, whose pruned entries were never zeroed, into the model
    import logging

    from hf_bigsmall.pruning.callback import _check_masks_fit_weights

    model = tiny_bert()
    name, weight = next((n, p) for n, p in model.named_parameters() if n.endswith("output.dense.weight"))
    masks = {name: torch.zeros_like(weight, dtype=torch.bool)}
    masks[name][0, :3] = True
    with torch.no_grad():
        weight[0, :3] = 0.0
    _check_masks_fit_weights(masks, model, tmp_path)  # every pruned weight is zero: accepted
    with torch.no_grad():
        weight[0, 1] = 0.5
    with pytest.raises(ValueError, match="1 weights of .* they prune are not zero"):
        _check_masks_fit_weights(masks, model, tmp_path)
    with caplog.at_level(logging.WARNING):
        _check_masks_fit_weights(masks, model, tmp_path, deepspeed=True)
    assert "DeepSpeed" in caplog.text and "applied again" in caplog.text


@pytest.mark.parametrize("damage, message", [(_truncate, "truncated or corrupted"), (_wrong_shape, "do not fit this model")])
def test_damaged_imp_rewind_weights_name_the_file_before_resuming(tmp_path, damage, message):
    from hf_bigsmall.pruning.io import SPARSITY_REWIND_NAME, load_pruning_state

    weights = {name: param.detach().clone() for name, param in tiny_bert().named_parameters()}
    save_file(weights, str(tmp_path / SPARSITY_REWIND_NAME))
    assert load_pruning_state(tmp_path, model=tiny_bert()).rewind_weights.keys() == weights.keys()
    damage(tmp_path / SPARSITY_REWIND_NAME)
    with pytest.raises(ValueError, match=message) as error:
        load_pruning_state(tmp_path, model=tiny_bert())
    assert SPARSITY_REWIND_NAME in str(error.value)


def test_pruning_a_pruned_model_again_keeps_its_masks(tmp_path):
    first = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot")
    model = tiny_bert()
    pruning_trainer(model, training_args(tmp_path / "first", max_steps=2), first).train()
    save_pruned_model(model, tmp_path / "pruned")
    old_masks = {name: mask.clone() for name, mask in first.masks.items()}

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    again = MagnitudePruningCallback(target_sparsity=0.7, schedule="cubic", end_step=6)  # initial_sparsity=0

    failures = []

    class OldMasksHold(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            params = dict(reloaded.named_parameters())
            for name, mask in old_masks.items():
                if not (bool((params[name][mask] == 0).all()) and bool(again.masks[name][mask].all())):
                    failures.append((state.global_step, name))

    trainer = pruning_trainer(reloaded, training_args(tmp_path / "second", max_steps=8), again)
    trainer.add_callback(OldMasksHold())
    trainer.train()
    assert failures == []
    pruned = sum(int(mask.sum()) for mask in again.masks.values())
    assert pruned / sum(mask.numel() for mask in again.masks.values()) == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("saver", ["save_pruned_model", "save_pretrained"])
def test_compacting_over_the_pruned_folder_leaves_no_stale_masks(tmp_path, saver):
    folder = tmp_path / "pruned"
    model = tiny_bert()
    trainer = pruning_trainer(model, training_args(tmp_path / "run", max_steps=2, save_strategy="no"),
                              MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", structure="neurons"),
                              trainer_class=BigSmallTrainer)
    trainer.train()
    trainer.save_model(str(folder))
    assert (folder / SPARSITY_MASKS_NAME).is_file()

    small = compact(AutoModelForSequenceClassification.from_pretrained(folder))
    if saver == "save_pruned_model":
        save_pruned_model(small, folder)
        assert not (folder / SPARSITY_MASKS_NAME).exists()  # nothing left to mask: the old file is gone
    else:
        small.save_pretrained(folder)  # a plain save leaves the file; config.json says it is not this model's

    reloaded = AutoModelForSequenceClassification.from_pretrained(folder)
    assert reloaded.config.intermediate_size < tiny_bert().config.intermediate_size
    rearm = MagnitudePruningCallback(target_sparsity=None)
    pruning_trainer(reloaded, training_args(tmp_path / "again", max_steps=2), rearm).train()
    params = dict(reloaded.named_parameters())
    assert rearm.masks and all(mask.shape == params[name].shape for name, mask in rearm.masks.items())


@pytest.mark.parametrize("trainer_class", [Trainer, BigSmallTrainer])
def test_pushes_during_training_carry_the_masks_of_the_weights_they_upload(tmp_path, monkeypatch, trainer_class):
    import transformers.utils.hub
    from huggingface_hub import constants
    from safetensors.torch import load

    from tests.hub_server import LoopbackHub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # a fresh client for this hub's address
    with LoopbackHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        args = training_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, push_to_hub=True,
                             hub_model_id="me/pruned", hub_token="hf_loopback", hub_strategy="checkpoint")
        callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="linear", start_step=0, end_step=4,
                                            pruning_frequency=1)
        trainer = pruning_trainer(tiny_bert(), args, callback, trainer_class=trainer_class)
        trainer.train()
        trainer.push_in_progress.wait_until_done()
        files = hub.files("me/pruned")
    for prefix in ("", "last-checkpoint/"):  # the model at the top, and the checkpoint resumable from the Hub
        assert f"{prefix}{SPARSITY_MASKS_NAME}" in files, sorted(files)
        masks, weights = load(files[f"{prefix}{SPARSITY_MASKS_NAME}"]), load(files[f"{prefix}model.safetensors"])
        assert all(bool((weights[name][mask] == 0).all()) for name, mask in masks.items())
        pruned = sum(int(mask.sum()) for mask in masks.values()) / sum(mask.numel() for mask in masks.values())
        assert pruned == pytest.approx(json.loads(files[f"{prefix}config.json"])["sparsity"]["global_sparsity"], abs=1e-3)


class SaveDuringTraining(TrainerCallback):
    """Calls `trainer.save_model(folder)` at one step, as a user's callback or an interactive session would."""

    def __init__(self, step: int, folder: str | None, snapshot):
        self.step, self.folder, self.snapshot, self.trainer = step, folder, snapshot, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.trainer.save_model(self.folder)
            # what the save left, before the end of training writes into output_dir again
            shutil.copytree(self.folder or args.output_dir, self.snapshot)


@pytest.mark.parametrize("trainer_class", [Trainer, BigSmallTrainer])
@pytest.mark.parametrize("into_output_dir", [True, False])
def test_save_model_during_training_writes_the_sparsity_block(tmp_path, trainer_class, into_output_dir):
    folder = tmp_path / "snapshot"
    # cubic from step 0 to 4: step 3 is between two pruning events, before any checkpoint or the end
    pruning = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic", end_step=4, pruning_frequency=2)
    saver = SaveDuringTraining(3, None if into_output_dir else str(tmp_path / "mid"), folder)
    trainer = pruning_trainer(tiny_bert(), training_args(tmp_path / "run", max_steps=6), pruning, trainer_class=trainer_class)
    trainer.add_callback(saver)
    saver.trainer = trainer
    trainer.train()

    block = json.loads((folder / "config.json").read_text())["sparsity"]
    saved = AutoModelForSequenceClassification.from_pretrained(folder)
    weights = dict(saved.named_parameters())
    zeros = sum(int((weights[f"{name}.weight"] == 0).sum()) for name in block["per_layer"])
    total = sum(weights[f"{name}.weight"].numel() for name in block["per_layer"])
    assert 0 < block["global_sparsity"] < 0.5 and block["global_sparsity"] == pytest.approx(zeros / total, abs=1e-6)
    assert block["pruned_at_step"] == 2 and block["target"] == 0.5
    if trainer_class is BigSmallTrainer:  # the seam also writes the masks, the ones the block describes
        masks = load_file(str(folder / SPARSITY_MASKS_NAME))
        assert sorted(name.removesuffix(".weight") for name in masks) == sorted(block["per_layer"])
        assert all(torch.equal(mask, weights[name] == 0) for name, mask in masks.items())


def test_a_compiled_model_is_saved_with_its_masks_and_record(tmp_path):
    # torch.compile wraps the model it is given; the pruning state lives on the model inside
    from hf_bigsmall import prune_one_shot
    from tests.test_pruning_one_shot import tiny_llama

    model = prune_one_shot(tiny_llama(), sparsity=0.5, method="magnitude")
    (tmp_path / SPARSITY_MASKS_NAME).write_bytes(b"")  # an earlier save's file: replaced, not removed
    save_pruned_model(torch.compile(model), tmp_path)
    block = json.loads((tmp_path / "config.json").read_text())["sparsity"]
    assert block["method"] == "magnitude" and block["masks_file"] == SPARSITY_MASKS_NAME
    assert block["global_sparsity"] == pytest.approx(0.5)
    saved = load_file(tmp_path / SPARSITY_MASKS_NAME)
    assert saved.keys() == model.pruning_state.masks.keys()
