import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from hf_bigsmall.hub.card import build_model_card, validate_card

from .testing_utils import tiny_bert_config

DISTILLATION = {"teacher": "embedded/all-MiniLM-L6-v2", "teacher_layers": [0, 3], "initialized_from_teacher": True,
                "temperature": 2.0, "alpha_kd": 0.5, "alpha_ce": 0.5, "kd_loss": "kl"}
ENERGY = {"energy_joules": 36.0, "energy_kwh": 1e-5, "co2_grams": 0.0042, "energy_source": "estimate"}


def _report(model_dirs):
    rows = []
    for i, path in enumerate(model_dirs):
        rows.append({"name": path.name, "path": str(path), "parameters": 1000 - 100 * i, "nonzero_parameters": 1000 - 300 * i,
                     "sparsity": 0.3 * i, "size_on_disk_mb": 1.0, "metrics": {"accuracy": 0.9 - 0.05 * i, "f1": 0.88 - 0.05 * i},
                     "latency_ms_p50": 10.0 / (i + 1), "latency_ms_p95": 12.0, "throughput_samples_per_s": 100.0,
                     "energy_joules_per_sample": 0.1, "energy_source": "estimate",
                     "ratios": {"nonzero_smaller": 1000 / (1000 - 300 * i), "faster": i + 1.0,
                                "quality_pct": 100 * (0.9 - 0.05 * i) / 0.9}})
    return {"task": "text-classification", "dataset": "embedded/rotten_tomatoes", "split": "test", "num_samples": 200,
            "quality_metric": "accuracy", "metric_names": ["accuracy", "f1"], "throughput_batch_size": 32, "models": rows}


@pytest.fixture
def student_dir(tmp_path):
    """A saved pruned student beside its teacher, with the files the kit writes around them."""
    from transformers import BertForSequenceClassification

    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    BertForSequenceClassification(tiny_bert_config()).save_pretrained(teacher_dir)
    student = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=2))
    with torch.no_grad():  # half of one FFN matrix is exactly zero, as magnitude pruning leaves it
        student.bert.encoder.layer[0].intermediate.dense.weight[:32] = 0
    student.config.distillation = DISTILLATION
    student.config.sparsity = {"target_sparsity": 0.5, "structure": "neurons", "schedule": "cubic"}
    student.save_pretrained(student_dir)
    (student_dir / "energy.json").write_text(json.dumps(ENERGY))
    (tmp_path / "report.json").write_text(json.dumps(_report([teacher_dir, student_dir])))
    return student_dir


def test_card_metadata_round_trips_and_validates(student_dir):
    card = build_model_card(student_dir, repo_id="me/tiny-student")
    data = ModelCard(str(card), ignore_metadata_errors=False).data  # parse back as the Hub client does

    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.datasets == ["cornell-movie-review-data/rotten_tomatoes"]
    assert data.pipeline_tag == "text-classification"
    assert {"hf-bigsmall", "distillation", "pruned"} <= set(data.tags)
    assert data.metrics == ["accuracy", "f1"]
    assert data.co2_eq_emissions["emissions"] == pytest.approx(ENERGY["co2_grams"])
    assert data.model_name == "tiny-student"
    values = {result.metric_type: result.metric_value for result in data.eval_results}
    assert values == {"accuracy": pytest.approx(0.85), "f1": pytest.approx(0.83)}
    assert all(r.dataset_split == "test" and r.task_type == "text-classification" for r in data.eval_results)


def test_card_text_says_how_the_model_was_made(student_dir):
    text = build_model_card(student_dir).text
    assert "## How it was made" in text and "### Distillation" in text and "### Pruning" in text
    assert "| teacher layers | `[0, 3]` |" in text and "| alpha kd | `0.5` |" in text
    # the real sparsity per layer is read from the saved weights when the config block has none
    assert "| `bert.encoder.layer.0.intermediate.dense` | 50.0% |" in text
    assert "| `bert.encoder.layer.1.intermediate.dense` | 0.0% |" in text
    # the comparison table, with the student's ratios against the teacher
    assert "| `student` |" in text and "| `teacher` |" in text
    assert "94.4%" in text  # 0.85 / 0.9 of the teacher's accuracy
    assert "BertForSequenceClassification.from_pretrained" in text


def test_card_without_provenance_or_report_is_still_valid(tmp_path):
    from transformers import GPT2LMHeadModel

    from .testing_utils import tiny_gpt2_config

    GPT2LMHeadModel(tiny_gpt2_config()).save_pretrained(tmp_path / "lm")
    card = build_model_card(tmp_path / "lm")
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.base_model is None and card.data.get("co2_eq_emissions") is None
    assert "How it was made" not in card.text


def test_local_teacher_path_is_not_written_as_base_model(student_dir, tmp_path):
    config = json.loads((student_dir / "config.json").read_text())
    config["distillation"]["teacher"] = str(tmp_path / "teacher")
    (student_dir / "config.json").write_text(json.dumps(config))
    card = build_model_card(student_dir)
    assert card.data.base_model is None  # the Hub rejects a base_model that is not a repo id
    # the card goes to the Hub: no path of this machine on it, the folder's name only
    assert str(tmp_path) not in str(card)
    assert "made from the local model `teacher`" in card.text
    assert "Distilled from the local model `teacher`" in card.text
    assert 'from_pretrained("student")' in card.text


def _perplexity_report(model_dirs, perplexities, caveat=None):
    report = _report(model_dirs)
    report.update(task="text-generation", quality_metric="perplexity", lower_is_better=True,
                  metric_names=["perplexity"], dataset="embedded/news")
    for row, value in zip(report["models"], perplexities):
        row["metrics"] = {"perplexity": value}
        row["ratios"]["quality_pct"] = 100 * perplexities[0] / value
    report["models"][1]["speed_ratio_caveat"] = caveat
    return report


def test_card_says_a_worse_perplexity_plainly(student_dir, tmp_path):
    report = _perplexity_report([tmp_path / "teacher", student_dir], [38.8, 60.3])
    (tmp_path / "report.json").write_text(json.dumps(report))
    text = build_model_card(student_dir).text
    assert ("its perplexity is 1.55x `teacher`'s (60.30 against 38.80): 55% higher, which is worse "
            "(lower is better)") in text
    assert "keeps" not in text and "% of its perplexity" not in text


def test_card_says_when_a_speed_ratio_is_not_trustworthy(student_dir, tmp_path):
    caveat = "the CPU was busy (1-minute load average up to 9.0 on 2 cores)"
    report = _perplexity_report([tmp_path / "teacher", student_dir], [38.8, 30.0], caveat=caveat)
    (tmp_path / "report.json").write_text(json.dumps(report))
    text = build_model_card(student_dir).text
    assert f"2.00x faster at batch size 1" in text and f"The speed ratio is not trustworthy: {caveat}." in text
    assert "| 2.00 (?) |" in text  # and the table marks it
    assert "23% lower, which is better" in text


@pytest.mark.parametrize(
    "metadata, message",
    [
        ("base_model: /home/me/teacher", "not a Hub id"),
        ("co2_eq_emissions:\n  emissions: lots", "number of grams"),
        ("model-index:\n- name: x\n  results:\n  - task: {}", "model_index"),
    ],
)
def test_validate_card_rejects_bad_metadata(metadata, message):
    with pytest.raises(ValueError, match=message):
        validate_card(f"---\n{metadata}\n---\n\n# card\n")


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        build_model_card(tmp_path)


@pytest.mark.hub
def test_card_passes_the_hub_validation(student_dir):
    build_model_card(student_dir, repo_id="me/tiny-student").validate()  # server-side schema check


def _token_dataset(size=16):
    from tests.pruning_utils import TokenClassificationData

    return TokenClassificationData(size=size)


def _record_upload(monkeypatch):
    """Stand in for the Hub in `Trainer.push_to_hub`: keep the card as it is when the folder is uploaded."""
    import transformers.trainer

    uploaded = {}

    class RecordingApi:
        def upload_folder(self, folder_path, **kwargs):
            uploaded["readme"] = (Path(folder_path) / "README.md").read_text(encoding="utf-8")
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())

    monkeypatch.setattr(transformers.trainer, "hf_api", RecordingApi)
    return uploaded


def test_distillation_trainer_push_to_hub_uploads_the_kit_card(tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    from hf_bigsmall import DistillationConfig, DistillationTrainer, EnergyCallback, MagnitudePruningCallback, make_student

    uploaded = _record_upload(monkeypatch)
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config())
    teacher.config._name_or_path = "someone/tiny-teacher"  # as from_pretrained of a Hub id records it
    student = make_student(teacher, num_layers=2)
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, report_to="none",
                              save_strategy="no", use_cpu=True, disable_tqdm=True, hub_model_id="someone/tiny-student")
    pruning = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot")
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=_token_dataset(),
                                  callbacks=[pruning, EnergyCallback(country_iso_code="FRA")])
    trainer.train()
    trainer.hub_model_id = "someone/tiny-student"  # as init_hf_repo would set it
    trainer.push_to_hub(dataset="cornell-movie-review-data/rotten_tomatoes")

    validate_card(uploaded["readme"])
    card = ModelCard(uploaded["readme"])
    assert card.data.base_model == "someone/tiny-teacher"
    assert {"hf-bigsmall", "distillation", "pruned", "generated_from_trainer"} <= set(card.data.tags)
    assert card.data.datasets == ["cornell-movie-review-data/rotten_tomatoes"]
    assert card.data.co2_eq_emissions["emissions"] > 0
    assert card.data.co2_eq_emissions["training_type"] == "distillation"  # told by the trainer, not by hand
    assert 'from_pretrained("someone/tiny-student")' in card.text and "| imp round |" not in card.text
    # how it was made, with the sparsity measured in the saved weights, and the Trainer's sections kept
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "### Distillation" in card.text and "### Pruning" in card.text
    assert f"`{saved['distillation']['teacher_layers']}`" in card.text
    layer_line = "| `bert.encoder.layer.0.intermediate.dense` |"
    assert layer_line in card.text
    assert "### Training hyperparameters" in card.text and "### Framework versions" in card.text
    assert card.text.count("# tiny-student") == 1
    assert "sparsity_masks.safetensors" in uploaded["files"] and "energy.json" in uploaded["files"]


def _count_readme_writes(monkeypatch) -> list[str]:
    """Record every write of a README.md: opened for writing, or renamed into place."""
    import builtins
    import os

    writes = []
    real_open, real_replace = builtins.open, os.replace

    def counting_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).endswith("README.md") and any(m in mode for m in "wax"):
            writes.append("open")
        return real_open(file, mode, *args, **kwargs)

    def counting_replace(source, target, *args, **kwargs):
        if os.fspath(target).endswith("README.md"):
            writes.append("replace")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "replace", counting_replace)
    return writes


@pytest.mark.parametrize("trainer_name", ["BigSmallTrainer", "DistillationTrainer"])
def test_the_seam_writes_the_kit_card_once_with_every_callback(tmp_path, monkeypatch, trainer_name):
    from transformers import BertForSequenceClassification

    import hf_bigsmall
    from hf_bigsmall import DistillationConfig, EnergyCallback, MagnitudePruningCallback
    from tests.pruning_utils import tiny_bert

    args = DistillationConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to="none",
                              save_strategy="no", use_cpu=True, disable_tqdm=True)
    callbacks = [MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot"), EnergyCallback(country_iso_code="FRA")]
    if trainer_name == "DistillationTrainer":
        torch.manual_seed(0)
        teacher = BertForSequenceClassification(tiny_bert_config())
        trainer = hf_bigsmall.DistillationTrainer(model=hf_bigsmall.make_student(teacher, num_layers=2),
                                                  teacher_model=teacher, args=args,
                                                  train_dataset=_token_dataset(), callbacks=callbacks)
    else:
        trainer = hf_bigsmall.BigSmallTrainer(model=tiny_bert(), args=args, train_dataset=_token_dataset(), callbacks=callbacks)
    trainer.create_model_card()  # before anything is saved: the Trainer's draft, nothing breaks
    assert "hf-bigsmall" not in (ModelCard.load(tmp_path / "README.md").data.tags or [])

    trainer.train()
    trainer.save_model()
    assert (tmp_path / "sparsity_masks.safetensors").is_file()
    writes = _count_readme_writes(monkeypatch)
    trainer.create_model_card(model_name="pruned-bert", tags=["my-tag"])
    assert writes == ["replace"]  # one atomic write, however many kit callbacks are attached
    card = ModelCard.load(tmp_path / "README.md")
    validate_card(str(card))
    assert {"hf-bigsmall", "pruned", "my-tag", "generated_from_trainer"} <= set(card.data.tags)
    assert ("distillation" in card.data.tags) == (trainer_name == "DistillationTrainer")
    assert "# pruned-bert" in card.text and "### Pruning" in card.text and "`one_shot`" in card.text
    assert card.data.co2_eq_emissions["geographical_location"] == "FRA"
    assert "### Training hyperparameters" in card.text and card.text.count("## Training procedure") == 1
    assert not (tmp_path / "README.md.tmp").exists()


def test_a_plain_trainer_keeps_its_own_card(tmp_path):
    """Without the seam nothing of the Trainer's is replaced: its draft card is what it writes."""
    from transformers import Trainer, TrainingArguments

    from hf_bigsmall import MagnitudePruningCallback
    from tests.pruning_utils import tiny_bert

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=tiny_bert(), args=args, train_dataset=_token_dataset(),
                      callbacks=[MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot")])
    trainer.train()
    trainer.save_model()
    assert type(trainer).create_model_card is Trainer.create_model_card and "create_model_card" not in vars(trainer)
    trainer.create_model_card(model_name="pruned-bert")
    assert "hf-bigsmall" not in (ModelCard.load(tmp_path / "README.md").data.tags or [])
    # the kit's card for that folder is one call away
    assert "### Pruning" in build_model_card(tmp_path).text


def test_hub_ids_of_names():
    from hf_bigsmall.hub.card import hub_id

    assert hub_id("embedded/rotten_tomatoes") == "cornell-movie-review-data/rotten_tomatoes"
    assert hub_id("embedded/hamlet") is None  # shipped in a package, not published on the Hub
    assert hub_id("gpt2") == "gpt2" and hub_id("me/model") == "me/model"
    assert hub_id("/tmp/local/folder") is None and hub_id(None) is None


def test_card_names_the_pruning_method_and_the_width_removed(tmp_path):
    from transformers import LlamaForCausalLM

    from .testing_utils import tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config())
    model.config.sparsity = {"method": "wanda", "schedule": "one_shot", "structure": "2:4", "target": 0.5}
    model.config.width_pruning = {"criterion": "activation importance (Minitron), 8 calibration samples",
                                  "intermediate_size": [64, 48], "params": [1200, 1000]}
    model.save_pretrained(tmp_path / "lm")
    card = build_model_card(tmp_path / "lm")
    text = card.text
    assert "Pruned once, on calibration data, by Wanda" in text and "2:4 semi-structured" in text
    assert "Zhu & Gupta" not in text  # the gradual-pruning citation belongs to gradual pruning only
    assert "### Width" in text and "| intermediate size | 64 | 48 |" in text and "| params | 1,200 | 1,000 |" in text
    assert "This is a pruned `LlamaForCausalLM` model" in text
    assert "pruned" in card.data.tags


def test_card_of_a_width_pruned_model_without_sparsity_says_it_is_pruned(tmp_path):
    from transformers import LlamaForCausalLM

    from .testing_utils import tiny_llama_config

    model = LlamaForCausalLM(tiny_llama_config())
    model.config.width_pruning = {"criterion": "activation importance (Minitron), 8 calibration samples",
                                  "num_key_value_heads": [2, 1]}
    model.save_pretrained(tmp_path / "lm")
    card = build_model_card(tmp_path / "lm")
    assert "### Pruning" not in card.text and "| num key value heads | 2 | 1 |" in card.text
    assert card.data.tags == ["hf-bigsmall", "pruned"]


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"tokens": 131072, "dataset": "embedded/news", "steps": 128}, "fine-tuned on 131,072 tokens of `embedded/news`."),
        ({"tokens": "many"}, "fine-tuned on training data."),  # a hand-edited record is not trusted as a count
        ({}, "fine-tuned on training data."),
    ],
)
def test_card_says_the_teacher_was_corrected(tmp_path, record, expected):
    from transformers import LlamaForCausalLM

    from .testing_utils import tiny_llama_config

    student = LlamaForCausalLM(tiny_llama_config())
    student.config.distillation = {"teacher": "HuggingFaceTB/SmolLM2-135M", "teacher_correction": record}
    student.save_pretrained(tmp_path / "student")
    text = build_model_card(tmp_path / "student").text
    assert f"the teacher was first {expected}" in text and "cut from the corrected teacher" in text
    assert "teacher correction |" not in text  # a sentence, not a table row holding a dict
    assert "### Fine-tuning" not in text  # that section belongs to the corrected teacher's own card

    teacher = LlamaForCausalLM(tiny_llama_config())
    teacher.config.teacher_correction = {"from": "HuggingFaceTB/SmolLM2-135M", **record, "learning_rate": 3e-4}
    teacher.save_pretrained(tmp_path / "teacher")
    text = build_model_card(tmp_path / "teacher").text
    assert "### Fine-tuning" in text and "Fine-tuned from `HuggingFaceTB/SmolLM2-135M` on" in text
    assert "| learning rate | `0.0003` |" in text and "### Distillation" not in text


def test_card_says_what_the_student_was_distilled_on(tmp_path):
    from transformers import BertForSequenceClassification

    from .testing_utils import tiny_bert_config

    student = BertForSequenceClassification(tiny_bert_config())
    student.config.distillation = {"teacher": "embedded/all-MiniLM-L6-v2", "training_data": {
        "labelled": 3892,
        "transfer_set": {"source": str(tmp_path / "private" / "reviews"), "available": 13000, "overlapping": 4800,
                         "repeats": 12, "samples": 8000},
        "augmentation": {"method": "word replacement", "ratio": 1.0, "replace_probability": 0.4, "seed": 42,
                         "samples": 3800}}}
    student.save_pretrained(tmp_path / "student")
    text = build_model_card(tmp_path / "student").text
    assert ("The student saw 3,892 labelled training texts, 8,000 unlabelled texts from reviews (of 13,000; 4,800 "
            "that are also in the labelled dataset, its test split included, and 12 repeats removed) and 3,800 "
            "augmented copies") in text
    assert "teacher labelled the unlabelled ones" in text
    assert "private" not in text and "training data |" not in text  # a sentence, not a dict in a table row


@pytest.mark.parametrize("drawn, says", [
    (3840, "The student was offered 3,840 labelled training texts and 3,831 augmented copies"),
    (7671, "The student saw 3,840 labelled training texts and 3,831 augmented copies"),
    (None, "The student saw 3,840 labelled training texts and 3,831 augmented copies"),
])
def test_card_says_how_much_of_a_larger_pool_the_distillation_drew(drawn, says):
    """A fixed number of steps draws a random part of labelled rows plus augmented copies: "saw" would overstate it."""
    from hf_bigsmall.data.record import TrainingDataRecord

    record = TrainingDataRecord(labelled=3840, rows_drawn=drawn, augmentation={
        "method": "word replacement", "ratio": 1.0, "replace_probability": 0.4, "seed": 42, "samples": 3831})
    sentence = record.sentence()
    assert sentence.startswith(says)
    assert ("Its distillation drew 3,840 of these 7,671 rows at random (steps x batch size), about 50% of them."
            in sentence) == (drawn == 3840)
    assert TrainingDataRecord.from_dict(record.to_dict()).rows_drawn == drawn


def test_a_served_folders_snippet_that_names_the_folder_says_what_the_name_stands_for(tmp_path):
    """The ONNX Runtime GenAI snippet loads `og.Model("<folder name>")`: the card must say that name stands for
    the folder (its path, or its Hub id once pushed), as it does for transformers' snippet."""
    from hf_bigsmall.hub.card import build_model_card
    from tests.testing_utils import tiny_llama_config

    config = tiny_llama_config()
    config.architectures = ["LlamaForCausalLM"]
    config.quantization = {"method": "int4", "scheme": "int4", "backend": "onnxruntime-genai",
                           "format": "onnxruntime-genai", "device": "cpu", "file": "model.onnx"}
    config.save_pretrained(tmp_path / "student-int4")
    how_to_use = str(build_model_card(tmp_path / "student-int4", energy=False)).split("## How to use")[1]
    assert 'og.Model("student-int4")' in how_to_use
    assert "`student-int4` stands for this folder" in how_to_use


def test_a_report_found_beside_a_model_it_never_measured_stays_off_its_card(student_dir, tmp_path):
    from transformers import BertForSequenceClassification

    # the output folder's report.json measured teacher/ and student/; a new model saved beside them is not in it
    (tmp_path / "report.json").write_text(json.dumps(_report([tmp_path / "teacher", student_dir])))
    newcomer = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1))
    newcomer.config.distillation = {**DISTILLATION, "dataset": "stanfordnlp/imdb"}
    newcomer.save_pretrained(tmp_path / "newcomer")
    card = build_model_card(tmp_path / "newcomer")
    assert card.data.datasets == ["stanfordnlp/imdb"] and "Measured on" not in card.text
    # the model the report did measure keeps it
    assert "Measured on" in build_model_card(student_dir).text


def test_card_does_not_take_the_row_of_another_existing_folder_of_the_same_name(student_dir, tmp_path):
    import shutil

    # another run's report: its `student` row is the folder next to it, not this one
    other = tmp_path / "other_run"
    shutil.copytree(student_dir, other / "student")
    report = _report([tmp_path / "teacher", other / "student"])
    report["models"][1]["metrics"] = {"accuracy": 0.123, "f1": 0.456}
    (other / "report.json").write_text(json.dumps(report))
    card = build_model_card(student_dir, report=other / "report.json")
    # the report's table is shown as it is, but nothing says its `student` row is this model
    assert card.data.eval_results is None and "non-zero parameters" not in card.text
    # a report whose folders were moved (the path exists no more) still finds the row by the folder's name
    report["models"][1]["path"] = str(tmp_path / "gone" / "student")
    card = build_model_card(student_dir, report=report)
    assert [result.metric_value for result in card.data.eval_results] == [0.123, 0.456]
