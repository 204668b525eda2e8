"""MagnitudePruningCallback on the plain Trainer: exact masks, logging, saving, resuming, IMP."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback

from hf_bigsmall import BigSmallTrainer, MagnitudePruningCallback, sparsity_report
from tests.pruning_utils import TokenClassificationData, pruning_trainer, tiny_bert, training_args
from tests.testing_utils import random_token_batch


def masked_entries_are_zero(model, masks):
    params = dict(model.named_parameters())
    return all(bool((params[name][mask] == 0).all()) for name, mask in masks.items())


class RecordLogs(TrainerCallback):
    """Stands in for a report_to integration: records what on_log receives."""

    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.seen.append(dict(logs))


def test_no_drift_with_adamw_accumulation_and_bf16(tmp_path):
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = MagnitudePruningCallback(target_sparsity=0.6, schedule="cubic")
    args = training_args(tmp_path, gradient_accumulation_steps=2, bf16=True, weight_decay=0.1, optim="adamw_torch")
    trainer = pruning_trainer(model, args, callback, trainer_class=BigSmallTrainer)
    recorder = RecordLogs()
    trainer.add_callback(recorder)

    # Check the masks after every optimizer step, not only at the end.
    class CheckEveryStep(TrainerCallback):
        failures = []

        def on_step_end(self, args, state, control, **kwargs):
            if not masked_entries_are_zero(model, callback.masks):
                self.failures.append(state.global_step)

    trainer.add_callback(CheckEveryStep())
    trainer.train()

    assert CheckEveryStep.failures == []
    assert callback.masks and masked_entries_are_zero(model, callback.masks)
    report = sparsity_report(model)
    assert report.global_sparsity == pytest.approx(0.6, abs=1e-4)
    assert report.zero_params == sum(int(m.sum()) for m in callback.masks.values())
    # AdamW state of pruned entries stays zero, so momentum cannot revive them
    for param, mask in callback._masked_params:
        state = trainer.optimizer.state[param]
        assert bool((state["exp_avg"][mask] == 0).all()) and bool((state["exp_avg_sq"][mask] == 0).all())
    # survivors did train
    params = dict(model.named_parameters())
    name, mask = next(iter(callback.masks.items()))
    assert not torch.equal(params[name][~mask], before[name][~mask])
    # logged through the trainer: in log_history and in what integrations receive, loss logs intact
    sparsity_logs = [h for h in trainer.state.log_history if "sparsity/global" in h]
    assert sparsity_logs[-1]["sparsity/global"] == pytest.approx(report.global_sparsity)
    assert any(k.startswith("sparsity/layer.3.") for k in sparsity_logs[-1])
    assert any("sparsity/global" in logs for logs in recorder.seen)
    assert sum("loss" in h for h in trainer.state.log_history) == 4  # max_steps 8 / logging_steps 2


@pytest.mark.parametrize("trainer_class", [Trainer, BigSmallTrainer])
def test_a_callback_added_after_construction_logs_where_its_trainer_allows(tmp_path, trainer_class):
    trainer = trainer_class(model=tiny_bert(), args=training_args(tmp_path, max_steps=2),
                            train_dataset=TokenClassificationData())
    recorder = RecordLogs()
    trainer.add_callback(recorder)
    trainer.add_callback(MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot"))
    trainer.train()
    history = [h for h in trainer.state.log_history if "sparsity/global" in h]
    assert history and history[0]["sparsity/global"] == pytest.approx(0.5, abs=1e-4)
    # only through the seam do the figures reach what integrations receive
    reached = any(logs.get("sparsity/global") == pytest.approx(0.5, abs=1e-4) for logs in recorder.seen)
    assert reached == (trainer_class is BigSmallTrainer)


def test_save_and_plain_from_pretrained_round_trip(tmp_path):
    model = tiny_bert()
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="linear")
    trainer = pruning_trainer(model, training_args(tmp_path, save_strategy="steps", save_steps=4), callback)
    trainer.train()
    trainer.save_model()

    for folder in (tmp_path, tmp_path / "checkpoint-4", tmp_path / "checkpoint-8"):
        config = json.loads((folder / "config.json").read_text())
        block = config["sparsity"]
        assert block["method"] == "magnitude" and block["schedule"] == "linear" and block["target"] == 0.5
        assert block["structure"] == "unstructured" and block["scope"] == "global"
        assert set(block["per_layer"]) == {n.removesuffix(".weight") for n in callback.masks}
        assert (folder / "sparsity_masks.safetensors").is_file()
    final_block = json.loads((tmp_path / "config.json").read_text())["sparsity"]
    assert final_block["global_sparsity"] == pytest.approx(0.5, abs=1e-4)
    saved_masks = load_file(str(tmp_path / "sparsity_masks.safetensors"))
    assert all(torch.equal(saved_masks[n], m) for n, m in callback.masks.items())

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert "save_pretrained" not in reloaded.__dict__  # nothing of hf_bigsmall is needed to load it
    model.eval()
    batch = random_token_batch()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    assert masked_entries_are_zero(reloaded, callback.masks)
    assert sparsity_report(reloaded).global_sparsity == pytest.approx(0.5, abs=1e-4)


def test_continued_training_rearms_saved_masks(tmp_path):
    model = tiny_bert()
    first = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot")
    pruning_trainer(model, training_args(tmp_path / "first", max_steps=2), first).train()
    model.save_pretrained(tmp_path / "pruned")

    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned")
    rearm = MagnitudePruningCallback(target_sparsity=None)
    pruning_trainer(reloaded, training_args(tmp_path / "second", max_steps=4), rearm).train()
    assert set(rearm.masks) == set(first.masks)
    assert all(torch.equal(rearm.masks[n], first.masks[n]) for n in first.masks)
    assert masked_entries_are_zero(reloaded, first.masks)


def run(output_dir, max_steps=8, resume=None, restore_callback_states=False, trainer_class=Trainer, args_resume=None,
        **callback_kwargs):
    model = tiny_bert()
    callback = MagnitudePruningCallback(**{"target_sparsity": 0.5, "schedule": "cubic", **callback_kwargs})
    args = training_args(output_dir, max_steps=max_steps, save_strategy="steps", save_steps=4, learning_rate=5e-3,
                         restore_callback_states_from_checkpoint=restore_callback_states,
                         resume_from_checkpoint=args_resume)
    trainer = pruning_trainer(model, args, callback, trainer_class=trainer_class)
    trainer.train(resume_from_checkpoint=resume)
    # with restore_callback_states_from_checkpoint the Trainer swaps in a callback rebuilt from the checkpoint
    callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, MagnitudePruningCallback))
    return model, callback


@pytest.mark.parametrize("schedule, restore_callback_states, moved", [
    ("cubic", False, None), ("imp", False, None), ("imp", True, None), ("imp", False, "seam"), ("imp", True, "seam"),
    ("imp", False, "args"),
])
def test_kill_and_resume_equals_uninterrupted(tmp_path, schedule, restore_callback_states, moved):
    kwargs = {"schedule": schedule, "imp_rounds": 2} if schedule == "imp" else {"schedule": schedule}
    full_model, full_callback = run(tmp_path / "full", **kwargs)
    # The interrupted run: only what was on disk at step 4 survives the kill; `moved`: the checkpoint
    # was copied to another machine or folder and is resumed from there by path, found by the seam
    # (BigSmallTrainer records the path train() got) or, under a plain Trainer, by args.resume_from_checkpoint
    checkpoint = tmp_path / ("moved" if moved else "killed") / "checkpoint-4"
    shutil.copytree(tmp_path / "full" / "checkpoint-4", checkpoint)
    resumed_model, resumed_callback = run(
        tmp_path / "killed", resume=str(checkpoint) if moved else True, restore_callback_states=restore_callback_states,
        trainer_class=BigSmallTrainer if moved == "seam" else Trainer, args_resume=str(checkpoint) if moved == "args" else None,
        **kwargs)

    assert set(resumed_callback.masks) == set(full_callback.masks)
    for name, mask in full_callback.masks.items():
        assert torch.equal(resumed_callback.masks[name], mask), name
    for (name, a), (_, b) in zip(full_model.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed_callback.imp_round == full_callback.imp_round


def test_resuming_with_a_different_config_is_an_error(tmp_path):
    run(tmp_path, max_steps=4)
    before = (tmp_path / "checkpoint-4" / "sparsity_masks.safetensors").read_bytes()
    with pytest.raises(ValueError, match="different pruning configuration.*target_sparsity"):
        run(tmp_path, max_steps=8, resume=True, target_sparsity=0.7)
    assert (tmp_path / "checkpoint-4" / "sparsity_masks.safetensors").read_bytes() == before


def test_imp_rounds_prune_rewind_and_keep_a_checkpoint_per_round(tmp_path):
    model = tiny_bert()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = MagnitudePruningCallback(target_sparsity=0.75, schedule="imp", imp_rounds=2, steps_per_round=3)
    trainer = pruning_trainer(model, training_args(tmp_path, max_steps=9, lr_scheduler_type="constant"), callback)

    class RightAfterPruning(TrainerCallback):  # runs after the pruning callback at the same step
        seen = {}

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (3, 6):
                self.seen[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    trainer.add_callback(RightAfterPruning())
    trainer.train()

    for step, expected in ((3, 0.5), (6, 0.75)):
        weights = RightAfterPruning.seen[step]
        masks_zero = sum(int((weights[n] == 0).sum()) for n in callback.masks)
        total = sum(m.numel() for m in callback.masks.values())
        assert masks_zero / total == pytest.approx(expected, abs=1e-3)
        for name, value in weights.items():  # survivors rewound to initialisation
            kept = value != 0
            assert torch.equal(value[kept], init[name][kept]), (step, name)
    for round_index, expected in ((0, 0.0), (1, 0.5), (2, 0.75)):
        block = json.loads((tmp_path / f"imp-round-{round_index}" / "config.json").read_text())["sparsity"]
        assert block["imp_round"] == round_index
        assert block["global_sparsity"] == pytest.approx(expected, abs=1e-3)


def test_bad_targets_fail_when_the_trainer_is_built(tmp_path):
    callback = MagnitudePruningCallback(target_modules=["nope"])
    with pytest.raises(ValueError, match="Candidate names"):
        Trainer(model=tiny_bert(), args=training_args(tmp_path), train_dataset=TokenClassificationData(),
                callbacks=[callback])


def test_structure_the_architecture_does_not_support_fails_when_the_trainer_is_built(tmp_path):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=128, dim=32, n_layers=2, n_heads=4, hidden_dim=64))
    with pytest.raises(ValueError, match="BERT, GPT-2 and Llama-style blocks.*structure='unstructured'"):
        Trainer(model=model, args=training_args(tmp_path), train_dataset=TokenClassificationData(),
                callbacks=[MagnitudePruningCallback(structure="heads")])


def test_schedule_past_max_steps_fails_before_the_first_step(tmp_path):
    model = tiny_bert()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = pruning_trainer(model, training_args(tmp_path, max_steps=4), MagnitudePruningCallback(end_step=10))
    with pytest.raises(ValueError, match="max_steps=4"):
        trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_no_drift_on_gpu_with_mixed_precision(tmp_path, precision):
    model = tiny_bert()
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic")
    args = training_args(tmp_path, use_cpu=False, gradient_accumulation_steps=2, weight_decay=0.1,
                         **{precision: True})
    trainer = pruning_trainer(model, args, callback)
    trainer.train()
    assert next(model.parameters()).is_cuda
    assert masked_entries_are_zero(model, callback.masks)
    assert sparsity_report(model).global_sparsity == pytest.approx(0.5, abs=1e-4)


def test_distillation_projection_is_not_pruned(tmp_path):
    from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student

    teacher = tiny_bert(seed=1)
    student = make_student(teacher, num_layers=2, hidden_size=16, num_attention_heads=4, intermediate_size=32)
    args = DistillationConfig(**training_args(tmp_path, max_steps=4).to_dict() | {"alpha_hidden": 1.0})
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args,
                                  train_dataset=TokenClassificationData(), callbacks=[callback])
    trainer.train()

    projection = student.distillation_projection  # widths 16 -> 32, trained with the student
    assert not any(name.startswith("distillation_projection") for name in callback.masks)
    assert all(bool((p != 0).all()) for p in projection.parameters())
    assert any(name.startswith("bert.encoder.layer.") for name in callback.masks)
    assert sparsity_report(student).global_sparsity == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("restart", [True, False])
def test_imp_restarts_the_learning_rate_schedule_each_round(tmp_path, restart):
    class RecordLearningRate(TrainerCallback):
        rates = []

        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.rates.append(optimizer.param_groups[0]["lr"])  # the rate this optimizer step uses

    recorder = RecordLearningRate()
    callback = MagnitudePruningCallback(target_sparsity=0.75, schedule="imp", imp_rounds=2, steps_per_round=3,
                                        imp_restart_lr=restart)
    args = training_args(tmp_path, max_steps=9, learning_rate=0.01, lr_scheduler_type="linear", warmup_steps=0)
    trainer = pruning_trainer(tiny_bert(), args, callback)
    trainer.add_callback(recorder)
    trainer.train()
    if restart:  # three rounds of 3 steps, each rewound to initialisation: linear decay within each round
        expected = [0.01 * (3 - position) / 3 for position in range(3)] * 3
    else:  # one linear decay over the 9 steps
        expected = [0.01 * (9 - step) / 9 for step in range(9)]
    assert recorder.rates == pytest.approx(expected)
    assert callback.imp_round == 2


@pytest.mark.parametrize("structure", ["neurons", "heads"])
def test_resuming_structured_pruning_without_a_masks_file_equals_uninterrupted(tmp_path, structure):
    full_model, full_callback = run(tmp_path / "full", structure=structure)
    checkpoint = tmp_path / "killed" / "checkpoint-4"
    shutil.copytree(tmp_path / "full" / "checkpoint-4", checkpoint)
    (checkpoint / "sparsity_masks.safetensors").unlink()  # e.g. a checkpoint saved by another tool
    resumed_model, resumed_callback = run(tmp_path / "killed", resume=True, structure=structure)

    # the masks read back from the zeros are the units' masks, not one per targeted Linear
    assert sorted(resumed_callback.masks) == sorted(full_callback.masks)
    for name, mask in full_callback.masks.items():
        assert torch.equal(resumed_callback.masks[name], mask), name
    for (name, a), (_, b) in zip(full_model.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(a, b), name
    assert resumed_model.config.sparsity == full_model.config.sparsity
    assert resumed_model.config.sparsity["global_sparsity"] == pytest.approx(0.5, abs=0.05)
