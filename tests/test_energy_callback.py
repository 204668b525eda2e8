"""EnergyCallback on a few Trainer steps: log_history, energy.json, resume, faults, model card."""

import json
import logging
import os

import pytest
import torch
from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hf_bigsmall import BigSmallTrainer, EnergyCallback
from hf_bigsmall.energy import callback as callback_module
from hf_bigsmall.energy.card import co2_eq_emissions
from hf_bigsmall.energy.meters import RaplMeter
from hf_bigsmall.energy.meters.estimate import CpuTimeEstimateMeter
from tests.scripts.energy_utils import TinyClassificationData
from tests.testing_utils import tiny_bert_config


class RecordLogs(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def make_trainer(tmp_path, energy, max_steps=4, trainer_class=BigSmallTrainer, **overrides):
    kwargs = dict(
        output_dir=str(tmp_path), max_steps=max_steps, per_device_train_batch_size=4, per_device_eval_batch_size=8,
        logging_steps=2, eval_strategy="steps", eval_steps=2, save_strategy="no", report_to="none",
        use_cpu=True, learning_rate=1e-3, disable_tqdm=True,
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    data = TinyClassificationData()
    return trainer_class(model, TrainingArguments(**kwargs), train_dataset=data, eval_dataset=TinyClassificationData(16),
                         callbacks=[energy, RecordLogs()])


def energy_entries(history, key="energy_joules"):
    return [entry for entry in history if key in entry]


class Ticks(TrainerCallback):
    """Drives a 1 W estimate meter's clock: 1 J per training step, 50 J per evaluation batch."""

    def __init__(self, monkeypatch):
        self.seconds = 0.0
        meter = lambda *a, **k: [CpuTimeEstimateMeter(cpu_tdp_watts=10, cpu_threads=10, clock=lambda: self.seconds)]
        monkeypatch.setattr(callback_module, "select_meters", meter)

    def on_step_begin(self, args, state, control, **kwargs):
        self.seconds += 1.0

    def on_prediction_step(self, args, state, control, **kwargs):
        self.seconds += 50.0


def test_energy_reaches_log_history_and_energy_json(tmp_path):
    energy = EnergyCallback(cpu_tdp_watts=40, cpu_threads=10, country_iso_code="FRA")
    trainer = make_trainer(tmp_path, energy)
    trainer.train()
    history = trainer.state.log_history

    intervals = energy_entries(history)
    assert [entry["step"] for entry in intervals] == [2, 4]
    for entry in intervals:
        assert entry["energy_source"] == "estimate" and entry["energy_is_estimate"] == 1.0
        assert entry["energy_estimate_watts_per_thread"] == 4.0
        assert entry["energy_joules"] > 0
        assert entry["energy_kwh"] == pytest.approx(entry["energy_joules"] / 3.6e6)
        assert entry["co2_grams"] == pytest.approx(entry["energy_kwh"] * 56)
        assert entry["energy_joules_per_sample"] == pytest.approx(entry["energy_joules"] / 8)  # 2 steps x 4
    evaluations = energy_entries(history, "eval_energy_joules")
    assert [entry["step"] for entry in evaluations] == [2, 4]
    assert all(entry["eval_energy_joules_per_sample"] == pytest.approx(entry["eval_energy_joules"] / 16) for entry in evaluations)
    (final,) = energy_entries(history, "train_energy_joules")
    # the training total is the intervals plus what ran after the last log; evaluations are apart
    assert final["train_energy_joules"] >= sum(entry["energy_joules"] for entry in intervals) - 1e-9
    assert final["train_energy_joules"] == pytest.approx(intervals[-1]["energy_total_kwh"] * 3.6e6, rel=0.05, abs=0.05)

    # integrations receive numbers only: the label lives in log_history and energy.json
    recorded = [logs for logs in trainer.callback_handler.callbacks[-2].logs if "energy_joules" in logs]
    assert recorded and all(isinstance(v, (int, float)) for logs in recorded for v in logs.values())

    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["schema_version"] == 1 and record["energy_source"] == "estimate" and record["is_estimate"]
    assert record["energy_joules"] == pytest.approx(final["train_energy_joules"])
    assert record["co2_grams"] == pytest.approx(final["train_co2_grams"])
    assert record["num_samples"] == 16 and record["num_processes"] == 1
    assert record["status"] == "complete" and record["global_step"] == record["max_steps"] == 4
    assert record["grid_intensity_g_per_kwh"] == 56 and "FRA" in record["grid_intensity_origin"]
    assert record["meters"][0]["watts_per_thread"] == 4.0 and record["meters"][0]["origin"] == "user"
    assert record["evaluation"]["windows"] == 2 and record["evaluation"]["num_samples"] == 32
    assert record["hardware"]

    prediction = trainer.predict(TinyClassificationData(8))
    assert prediction.metrics["test_energy_joules"] > 0
    assert json.loads((tmp_path / "energy.json").read_text())["prediction"]["windows"] == 1


def test_a_plain_trainer_gets_training_and_its_evaluations_from_the_events_alone(tmp_path, caplog, monkeypatch):
    from hf_bigsmall.energy.meters import base

    monkeypatch.setattr(base, "_WARNED", set())  # warned once per process: another test may have seen it
    energy = EnergyCallback(cpu_tdp_watts=40, cpu_threads=10)
    trainer = make_trainer(tmp_path, energy, trainer_class=Trainer)
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        trainer.train()
    assert "plain Trainer" in caplog.text and "BigSmallTrainerMixin" in caplog.text
    history = trainer.state.log_history
    intervals = energy_entries(history)
    assert [entry["step"] for entry in intervals] == [2, 4] and all(e["energy_joules"] > 0 for e in intervals)
    assert all(e["energy_source"] == "estimate" for e in intervals)
    evaluations = energy_entries(history, "eval_energy_joules")  # measured from the step that triggered them
    assert [entry["step"] for entry in evaluations] == [2, 4]
    assert all(e["eval_energy_joules_per_sample"] == pytest.approx(e["eval_energy_joules"] / 16) for e in evaluations)
    (final,) = energy_entries(history, "train_energy_joules")
    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["energy_joules"] == pytest.approx(final["train_energy_joules"])
    assert record["evaluation"]["windows"] == 2 and record["evaluation"]["num_samples"] == 32
    # what integrations receive is the Trainer's own logs only: that needs the seam
    recorder = next(c for c in trainer.callback_handler.callbacks if isinstance(c, RecordLogs))
    assert not any("energy_joules" in logs for logs in recorder.logs)
    # an evaluate() outside training has no start event: not measured, rather than measured wrong
    assert "eval_energy_joules" not in trainer.evaluate()


@pytest.mark.parametrize("restore_callback_states", [False, True])
def test_totals_survive_resume(tmp_path, restore_callback_states):
    first = make_trainer(tmp_path, EnergyCallback(), max_steps=4, save_strategy="steps", save_steps=2, eval_strategy="no")
    first.train()
    saved = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    saved_totals = saved["stateful_callbacks"]["EnergyCallback"]["attributes"]["totals"]["train"]
    assert saved_totals["energy_joules"] > 0 and saved_totals["num_samples"] == 8
    checkpoint_record = json.loads((tmp_path / "checkpoint-2" / "energy.json").read_text())
    assert checkpoint_record["energy_joules"] == pytest.approx(saved_totals["energy_joules"])
    assert checkpoint_record["status"] == "in progress" and checkpoint_record["max_steps"] == 4

    # with restore_callback_states_from_checkpoint the Trainer swaps in a new EnergyCallback
    resumed = make_trainer(tmp_path, EnergyCallback(), max_steps=4, save_strategy="no", eval_strategy="no",
                           restore_callback_states_from_checkpoint=restore_callback_states)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    history = resumed.state.log_history
    after_resume = [entry for entry in energy_entries(history) if entry["step"] > 2]
    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["resumed_from_step"] == 2 and record["num_samples"] == 16
    # the running total continues from the checkpoint's instead of restarting at zero
    restored_plus_new = saved_totals["energy_joules"] + sum(e["energy_joules"] for e in after_resume)
    assert after_resume[-1]["energy_total_kwh"] * 3.6e6 == pytest.approx(restored_plus_new, rel=1e-9)
    (final,) = energy_entries(history, "train_energy_joules")
    assert record["energy_joules"] == pytest.approx(final["train_energy_joules"])
    assert record["energy_joules"] >= restored_plus_new - 1e-12


@pytest.mark.parametrize("trainer_class", [BigSmallTrainer, Trainer])
@pytest.mark.parametrize("eval_strategy", ["no", "epoch"])
def test_epoch_saves_and_evaluations_bring_the_totals_up_to_date(tmp_path, monkeypatch, trainer_class, eval_strategy):
    """Epoch strategies decide to save and evaluate in on_epoch_end, not on_step_end."""
    ticks = Ticks(monkeypatch)
    trainer = make_trainer(tmp_path, EnergyCallback(), max_steps=-1, num_train_epochs=2, trainer_class=trainer_class,
                           logging_steps=100, eval_strategy=eval_strategy, save_strategy="epoch")
    trainer.add_callback(ticks)
    trainer.train()  # 32 samples / 4 per step: 8 steps per epoch; an evaluation is 2 batches
    record = json.loads((tmp_path / "energy.json").read_text())
    evaluations = 2 if eval_strategy == "epoch" else 0
    assert record["energy_joules"] == pytest.approx(16.0)  # the evaluations are not training energy
    assert record["evaluation"]["windows"] == evaluations
    assert record["evaluation"]["energy_joules"] == pytest.approx(100.0 * evaluations)
    checkpoint = tmp_path / "checkpoint-8"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["EnergyCallback"]
    assert saved["attributes"]["totals"]["train"]["energy_joules"] == pytest.approx(8.0)
    assert saved["attributes"]["totals"]["train"]["num_samples"] == 32
    assert json.loads((checkpoint / "energy.json").read_text())["energy_joules"] == pytest.approx(8.0)

    # a run resumed from the first epoch's checkpoint keeps that epoch's energy
    (tmp_path / "energy.json").unlink()
    resumed = make_trainer(tmp_path, EnergyCallback(), max_steps=-1, num_train_epochs=2, trainer_class=trainer_class,
                           logging_steps=100, eval_strategy="no", save_strategy="no")
    resumed.add_callback(Ticks(monkeypatch))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["resumed_from_step"] == 8 and record["num_samples"] == 64
    assert record["energy_joules"] == pytest.approx(16.0)


def test_counter_vanishing_mid_run_falls_back_and_keeps_earlier_logs(tmp_path, monkeypatch, caplog):
    powercap = tmp_path / "powercap" / "intel-rapl:0"
    powercap.mkdir(parents=True)
    (powercap / "name").write_text("package-0\n")
    (powercap / "max_energy_range_uj").write_text("262143328850\n")
    (powercap / "energy_uj").write_text("0\n")
    monkeypatch.setattr(callback_module, "select_meters", lambda *a, **k: [RaplMeter(powercap.parent)])

    class RaplTicks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step <= 2:
                (powercap / "energy_uj").write_text(f"{state.global_step * 3_000_000}\n")  # 3 J per step
            elif state.global_step == 3:
                (powercap / "energy_uj").unlink()  # the counter vanishes

    trainer = make_trainer(tmp_path / "out", EnergyCallback(), max_steps=6, eval_strategy="no")
    trainer.add_callback(RaplTicks())
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        trainer.train()
    intervals = energy_entries(trainer.state.log_history)
    assert [e["step"] for e in intervals] == [2, 4, 6]
    assert intervals[0]["energy_joules"] == pytest.approx(6.0) and intervals[0]["energy_source"] == "rapl"
    assert intervals[0]["energy_is_estimate"] == 0.0
    assert intervals[-1]["energy_source"] == "estimate" and intervals[-1]["energy_is_estimate"] == 1.0
    record = json.loads((tmp_path / "out" / "energy.json").read_text())
    assert record["energy_source"] == "estimate+rapl" and record["by_source"]["rapl"] == pytest.approx(6.0)
    assert record["failures"] and "rapl meter failed" in caplog.text


def test_an_error_inside_the_callback_never_stops_training(tmp_path, monkeypatch, caplog):
    def broken(window):
        raise RuntimeError("gather exploded")

    monkeypatch.setattr(callback_module, "gather_readings", broken)
    trainer = make_trainer(tmp_path, EnergyCallback(), eval_strategy="no")
    with caplog.at_level(logging.ERROR, logger="hf_bigsmall.energy"):
        trainer.train()
    assert trainer.state.global_step == 4
    assert "EnergyCallback stopped measuring" in caplog.text and "gather exploded" in caplog.text


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cpu_tdp_watts": -10}, "positive"),
        ({"grid_intensity_g_per_kwh": 5e5}, "outside"),
        ({"backend": "zeus"}, "backend must be one of"),
        ({"backend": "codecarbon"}, "country_iso_code"),
        ({"training_type": ""}, "training_type"),
    ],
)
def test_bad_arguments_raise_before_training(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EnergyCallback(**kwargs)


def test_model_card_gets_co2_metadata(tmp_path):
    from huggingface_hub import ModelCard

    energy = EnergyCallback(country_iso_code="SWE", training_type="distillation")
    trainer = make_trainer(tmp_path, energy, max_steps=2, eval_strategy="no")
    trainer.train()
    trainer.create_model_card(model_name="tiny-student")
    card = ModelCard.load(tmp_path / "README.md")
    record = json.loads((tmp_path / "energy.json").read_text())
    co2 = card.data.co2_eq_emissions
    assert co2["emissions"] == pytest.approx(record["co2_grams"], rel=1e-4)
    assert co2["training_type"] == "distillation" and co2["geographical_location"] == "SWE"
    assert co2["source"].startswith("hf_bigsmall EnergyCallback: estimate") and "W per thread" in co2["source"]
    assert co2["hardware_used"] == record["hardware"]
    assert "tiny-student" in card.content  # the Trainer's own card is kept


def test_the_seam_measures_an_evaluation_before_training(tmp_path):
    trainer = make_trainer(tmp_path, RecordLogs(), eval_strategy="no")
    trainer.add_callback(EnergyCallback())
    metrics = trainer.evaluate()
    assert metrics["eval_energy_joules"] > 0 and metrics["eval_energy_is_estimate"] == 1.0
    assert metrics["eval_energy_joules_per_sample"] == pytest.approx(metrics["eval_energy_joules"] / 16)
    assert trainer.state.log_history[-1]["eval_energy_joules"] == metrics["eval_energy_joules"]
    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["evaluation"]["windows"] == 1 and record["energy_joules"] == 0.0
    assert record["status"] is None and record["max_steps"] is None  # no training measured


def test_a_later_evaluation_keeps_the_training_run_in_energy_json(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, EnergyCallback())  # 4 steps, evaluated at steps 2 and 4
    trainer.add_callback(Ticks(monkeypatch))
    trainer.train()
    trained = json.loads((tmp_path / "energy.json").read_text())
    assert trained["energy_joules"] == pytest.approx(4.0) and trained["evaluation"]["windows"] == 2

    # an evaluation script run later on the same output_dir, with a callback of its own
    evaluator = make_trainer(tmp_path, EnergyCallback(), eval_strategy="no")
    evaluator.add_callback(Ticks(monkeypatch))
    evaluator.evaluate()
    evaluator.evaluate()
    evaluator.predict(TinyClassificationData(8))
    record = json.loads((tmp_path / "energy.json").read_text())
    training = {key: value for key, value in trained.items() if key not in ("evaluation", "prediction")}
    assert {key: record[key] for key in training} == training
    assert record["evaluation"]["windows"] == 4 and record["evaluation"]["num_samples"] == 64
    assert record["evaluation"]["energy_joules"] == pytest.approx(400.0)  # 2 during training + 2 later, once each
    assert record["evaluation"]["energy_kwh"] == pytest.approx(400.0 / 3.6e6)
    assert record["evaluation"]["co2_grams"] == pytest.approx(2 * trained["evaluation"]["co2_grams"])
    assert record["prediction"]["windows"] == 1 and record["prediction"]["energy_joules"] == pytest.approx(50.0)


@pytest.mark.parametrize("damaged", ["{truncated", "[1, 2]", '{"evaluation": {"energy_joules": "lots"}}'])
def test_a_damaged_energy_json_is_replaced_with_a_warning(tmp_path, damaged, caplog):
    (tmp_path / "energy.json").write_text(damaged)
    evaluator = make_trainer(tmp_path, EnergyCallback(), eval_strategy="no")
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        evaluator.evaluate()
        evaluator.evaluate()  # still measuring
    assert "cannot read" in caplog.text and "energy.json" in caplog.text
    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["evaluation"]["windows"] == 2 and record["energy_joules"] == 0.0


def test_a_failed_write_of_energy_json_leaves_the_callback_measuring(tmp_path, monkeypatch, caplog):
    # only the main process writes: had the error switched the callback off there alone, the other processes
    # would wait for it at the next gather
    from hf_bigsmall.energy import callback as callback_module

    callback = EnergyCallback()
    trainer = make_trainer(tmp_path, callback, eval_strategy="no")
    real_write = callback_module.atomic_write_json

    def full_disk(path, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(callback_module, "atomic_write_json", full_disk)
    with caplog.at_level(logging.ERROR, logger="hf_bigsmall.energy"):
        trainer.evaluate()
    assert "could not write" in caplog.text and not callback._disabled
    monkeypatch.setattr(callback_module, "atomic_write_json", real_write)
    trainer.evaluate()
    assert json.loads((tmp_path / "energy.json").read_text())["evaluation"]["windows"] == 2


def test_joules_per_token_when_tokens_are_counted(tmp_path):
    trainer = make_trainer(tmp_path, EnergyCallback(), eval_strategy="no", include_num_input_tokens_seen=True)
    trainer.train()
    intervals = energy_entries(trainer.state.log_history)
    for entry in intervals:  # 2 steps x 4 sequences x 8 tokens per interval
        assert entry["energy_joules_per_token"] == pytest.approx(entry["energy_joules"] / 64)
    (final,) = energy_entries(trainer.state.log_history, "train_energy_joules")
    assert final["train_energy_joules_per_token"] == pytest.approx(final["train_energy_joules"] / 128)
    assert json.loads((tmp_path / "energy.json").read_text())["num_tokens"] == 128


def test_push_to_hub_uploads_a_card_with_co2_metadata(tmp_path, monkeypatch):
    """`Trainer.push_to_hub` rewrites README.md and uploads it at once: the upload must see co2."""
    import transformers.trainer
    from huggingface_hub import ModelCard

    uploaded = {}

    class RecordingApi:
        def upload_folder(self, folder_path, **kwargs):
            uploaded["card"] = ModelCard.load(os.path.join(folder_path, "README.md"))
            uploaded["repo_id"] = kwargs["repo_id"]

    monkeypatch.setattr(transformers.trainer, "hf_api", RecordingApi)
    trainer = make_trainer(tmp_path, EnergyCallback(country_iso_code="DEU"), max_steps=2, eval_strategy="no")
    trainer.train()
    trainer.hub_model_id = "someone/tiny-student"  # as init_hf_repo would set it
    trainer.push_to_hub()
    record = json.loads((tmp_path / "energy.json").read_text())
    co2 = uploaded["card"].data.co2_eq_emissions
    assert uploaded["repo_id"] == "someone/tiny-student"
    assert co2["emissions"] == pytest.approx(record["co2_grams"], rel=1e-4) and co2["geographical_location"] == "DEU"


def test_training_stopped_by_an_exception_is_written_and_a_later_evaluate_is_its_own_window(tmp_path):
    from tests.pruning_utils import TokenClassificationData, tiny_bert, training_args

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    energy = EnergyCallback()
    trainer = BigSmallTrainer(model=tiny_bert(), args=training_args(tmp_path, max_steps=4),
                              train_dataset=TokenClassificationData(), eval_dataset=TokenClassificationData(8),
                              callbacks=[energy, Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    record = json.loads((tmp_path / "energy.json").read_text())  # what the two steps used is not lost
    assert record["global_step"] == 2 and record["num_samples"] == 8 and record["energy_joules"] > 0
    assert record["status"] == "aborted" and record["max_steps"] == 4  # not to be read as a finished run
    assert co2_eq_emissions(tmp_path)["source"].endswith("(run aborted at step 2 of 4)")
    trainer.remove_callback(Interrupt)
    trainer.evaluate()
    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["evaluation"]["windows"] == 1 and record["num_samples"] == 8 and record["status"] == "aborted"
