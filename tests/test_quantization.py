import json
import os
import shutil

import numpy as np
import pytest
import torch

from hf_bigsmall.quantization import (
    OnnxModelRunner,
    is_onnx_folder,
    plan_quantization,
    quantization_of,
    quantize,
)

from .test_compare import _dataset, _save_tokenizer
from .testing_utils import (
    requires_minilm,
    requires_package,
    tiny_bert_config,
    tiny_gpt2_config,
    tiny_llama_config,
)

requires_onnxruntime = requires_package("onnxruntime", '"hf-bigsmall[onnx]"')
TEXTS = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10 w11", "w12"]


def _classifier(config):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_config(config)


def _causal_lm(config):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)


ARCHITECTURES = {
    "bert-classifier": lambda: _classifier(tiny_bert_config()),
    "gpt2-classifier": lambda: _classifier(tiny_gpt2_config(num_labels=2, pad_token_id=0)),
    "llama-classifier": lambda: _classifier(tiny_llama_config(num_labels=2)),
    "gpt2-causal-lm": lambda: _causal_lm(tiny_gpt2_config()),
    "llama-causal-lm": lambda: _causal_lm(tiny_llama_config()),
}


def _save(model, folder):
    model.save_pretrained(folder)
    return _save_tokenizer(folder)


def _torch_logits(model, tokenizer, texts):
    """The tokenized batch (the columns the model takes) and the PyTorch model's logits for it."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    batch = {k: v for k, v in tokenizer(texts, padding=True, return_tensors="pt").items() if k in accepted}
    with torch.no_grad():
        logits = model(**batch).logits
    return batch, logits


@requires_onnxruntime
@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_int8_onnx_reproduces_the_model_and_reloads_with_a_plain_session(tmp_path, architecture):
    import onnxruntime

    torch.manual_seed(0)
    model = ARCHITECTURES[architecture]().eval()
    tokenizer = _save(model, tmp_path / "fp32")
    output = quantize(tmp_path / "fp32", tmp_path / "int8")

    assert output == tmp_path / "int8" and is_onnx_folder(output)
    assert not list(tmp_path.glob("int8*.partial"))
    record = json.loads((output / "config.json").read_text())["quantization"]
    assert (record["method"], record["backend"], record["device"], record["format"]) == ("int8", "onnxruntime", "cpu",
                                                                                        "onnx")
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["export_max_logit_difference"] < 1e-4

    # the documented way to load it: a plain ONNX Runtime session fed by the saved tokenizer
    batch, expected = _torch_logits(model, tokenizer, TEXTS)
    session = onnxruntime.InferenceSession(str(output / "model.onnx"))
    names = {node.name for node in session.get_inputs()}
    assert names == set(batch)
    logits = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
    mask = batch["attention_mask"].bool().numpy()
    close = np.abs(logits - expected.numpy())
    close = close[mask] if logits.ndim == 3 else close  # padded positions of a causal LM are never read
    scale = float(expected.abs().max())
    assert close.max() < 0.1 * scale + 0.05, close.max()
    assert close.max() > 0  # the weights really are int8: an fp32 graph would reproduce torch exactly
    # the runner that compare uses returns the same logits, whatever extra columns it is given
    runner = OnnxModelRunner(output)
    torch.testing.assert_close(runner(**batch, labels=None).logits, torch.from_numpy(logits))


@requires_onnxruntime
def test_int8_is_about_four_times_smaller_and_keeps_pruned_zeros(tmp_path):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = _classifier(tiny_bert_config(hidden_size=128, intermediate_size=256, vocab_size=1000)).eval()
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[::2] = 0
    _save(model, tmp_path / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "int8")
    ratio = (tmp_path / "fp32" / "model.safetensors").stat().st_size / (tmp_path / "int8" / "model.onnx").stat().st_size
    assert ratio > 3, ratio  # a quarter of the weight bytes, plus a graph that weighs more the smaller the model
    int8 = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and t.dims == [128, 256]]
    assert int8 and any((w[:, ::2] == 0).all() for w in int8)  # symmetric int8: a zero weight stays exactly zero


@requires_onnxruntime
def test_compare_measures_an_onnx_folder_like_any_model(tmp_path):
    from hf_bigsmall.reporting.compare import compare_models

    torch.manual_seed(0)
    model = _classifier(tiny_bert_config()).eval()
    tokenizer = _save(model, tmp_path / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "fp32-int8")
    dataset = _dataset()
    comparison = compare_models([tmp_path / "fp32", tmp_path / "fp32-int8"], dataset, batch_size=16,
                                latency_samples=3, output_dir=tmp_path / "report")
    fp32, int8 = comparison.models
    runner = OnnxModelRunner(tmp_path / "fp32-int8")
    predictions = [int(runner(**tokenizer(text, return_tensors="pt")).logits.argmax(-1)) for text in dataset["text"]]
    assert int8.metrics["accuracy"] == pytest.approx(np.mean(np.array(predictions) == np.array(dataset["label"])))
    assert int8.size_on_disk_mb == pytest.approx((tmp_path / "fp32-int8" / "model.onnx").stat().st_size / 2**20, abs=1e-3)
    assert int8.parameters == fp32.parameters and int8.quantization["backend"] == "onnxruntime"
    assert fp32.quantization is None
    assert int8.latency_ms_p50 > 0 and int8.throughput_samples_per_s > 0 and int8.energy_source
    assert int8.inference_kwh_per_1k_samples == pytest.approx(1000 * int8.energy_joules_per_sample / 3.6e6)
    assert "| `fp32-int8` |" in (tmp_path / "report" / "report.md").read_text()


@requires_onnxruntime
def test_causal_lm_comparison_reports_joules_per_token(tmp_path):
    from hf_bigsmall.reporting.compare import compare_models

    _save(_causal_lm(tiny_llama_config()).eval(), tmp_path / "lm")
    quantize(tmp_path / "lm", tmp_path / "lm-int8")
    comparison = compare_models([tmp_path / "lm", tmp_path / "lm-int8"], _dataset(16), batch_size=8,
                                latency_samples=2, plots=False)
    for measured in comparison.models:
        assert measured.metrics["perplexity"] > 1 and measured.energy_joules_per_token > 0
        assert measured.energy_joules_per_token < measured.energy_joules_per_sample


@requires_onnxruntime
def test_model_card_of_an_onnx_folder_says_how_it_was_quantized_and_its_snippet_runs(tmp_path, monkeypatch):
    from hf_bigsmall.hub.card import build_model_card, validate_card

    _save(_classifier(tiny_bert_config()).eval(), tmp_path / "fp32")
    folder = quantize(tmp_path / "fp32", tmp_path / "int8")
    card = build_model_card(folder)
    validate_card(str(card))
    assert {"quantized", "int8", "onnx"} <= set(card.data.tags) and card.data.library_name == "onnx"
    assert "### Quantization" in card.text and "| backend | `onnxruntime` |" in card.text
    snippet = card.text.split("```python\n")[-1].split("```")[0]
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)  # the snippet names the folder, as a user beside it (or the Hub id) would
    exec(snippet, namespace)  # noqa: S102 - the card's own "How to use" code, written by us
    assert namespace["logits"].shape == (1, 2)


# --- bad input: a clear error, before anything is written ------------------------------------------


@pytest.fixture
def saved_classifier(tmp_path):
    _save(_classifier(tiny_bert_config()).eval(), tmp_path / "fp32")
    return tmp_path / "fp32"


def _nothing_written(output):
    return not output.exists() and not list(output.parent.glob(output.name + "*.partial"))


def test_missing_backend_names_the_extra(saved_classifier, monkeypatch):
    from hf_bigsmall.utils import import_utils

    monkeypatch.setattr(import_utils, "_is_package_available", lambda name: name not in ("onnxruntime", "torchao"))
    output = saved_classifier.parent / "int8"
    with pytest.raises(ImportError, match=r'pip install "hf-bigsmall\[onnx\]"'):
        quantize(saved_classifier, output)
    assert _nothing_written(output)


@pytest.mark.parametrize("request_, message", [
    ({"method": "int4", "device": "cpu"}, "int4 weight-only quantization has no fast kernels on CPU"),
    ({"method": "int3"}, "method must be one of"),
    ({"device": "tpu"}, "device must be one of"),
    ({"backend": "torchao", "device": "cpu"}, "backend 'torchao' does not serve device 'cpu'"),
])
def test_bad_requests_raise_before_anything_is_written(saved_classifier, request_, message):
    output = saved_classifier.parent / "out"
    with pytest.raises(ValueError, match=message):
        quantize(saved_classifier, output, **request_)
    assert _nothing_written(output)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_cuda_request_without_a_gpu_is_a_clear_error(saved_classifier, method):
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        quantize(saved_classifier, saved_classifier.parent / "out", method=method, device="cuda")


@requires_onnxruntime
def test_an_already_quantized_model_is_refused(saved_classifier, tmp_path):
    first = quantize(saved_classifier, tmp_path / "int8")
    with pytest.raises(ValueError, match="already quantized"):
        quantize(first, tmp_path / "int8-again")
    assert _nothing_written(tmp_path / "int8-again")
    # a checkpoint another quantizer wrote (its config carries a quantization_config) is refused too
    config = json.loads((saved_classifier / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (saved_classifier / "config.json").write_text(json.dumps(config))
    assert quantization_of(saved_classifier)["method"] == "bitsandbytes"
    with pytest.raises(ValueError, match="already quantized"):
        quantize(saved_classifier, tmp_path / "bnb-int8")


@requires_onnxruntime
def test_a_model_without_a_supported_head_is_refused(tmp_path):
    from transformers import BertForTokenClassification

    _save(BertForTokenClassification(tiny_bert_config()), tmp_path / "tagger")
    with pytest.raises(ValueError, match="compare_models measures sequence classifiers"):
        quantize(tmp_path / "tagger", tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


@requires_onnxruntime
def test_a_failed_export_leaves_no_half_written_folder(saved_classifier, tmp_path, monkeypatch):
    def broken_export(module, args, path, **kwargs):
        with open(path, "wb") as handle:  # a partial file, then the failure
            handle.write(b"\x08\x07half")
        raise RuntimeError("Unsupported operator aten::weird")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(ValueError, match="ONNX export of BertForSequenceClassification .* failed: Unsupported operator"):
        quantize(saved_classifier, tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


@requires_onnxruntime
def test_an_export_that_does_not_reproduce_the_model_is_refused(saved_classifier, tmp_path, monkeypatch):
    import onnxruntime

    real_session = onnxruntime.InferenceSession

    class OffByOne:  # an export whose graph computes something else
        def __init__(self, *args, **kwargs):
            self.session = real_session(*args, **kwargs)

        def run(self, names, feed):
            return [output + 1.0 for output in self.session.run(names, feed)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", OffByOne)
    with pytest.raises(ValueError, match="does not reproduce its logits"):
        quantize(saved_classifier, tmp_path / "out")
    assert _nothing_written(tmp_path / "out")


def test_output_folder_is_checked(saved_classifier, tmp_path):
    with pytest.raises(ValueError, match="is the model's own folder"):
        quantize(saved_classifier, saved_classifier)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a quantized model folder"):
        quantize(saved_classifier, precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def _user_folder(folder, *files):
    """A folder of the user's: the given files plus notes and a subfolder, with what each holds."""
    for name in (*files, "notes.txt", "runs/log.txt"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"the user's {name}")
    return {path: path.read_text() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("files", [("model.gguf",), ("model.onnx", "config.json"), ("model-q4.gguf", "config.json")])
def test_a_folder_the_kit_did_not_write_is_never_replaced(saved_classifier, tmp_path, files):
    # a GGUF export or another tool's ONNX model looks like "an earlier quantized model" but is not the kit's
    folder = tmp_path / "exports"
    before = _user_folder(folder, *files)
    with pytest.raises(ValueError, match=f"{folder}.*not a quantized model folder written by hf_bigsmall"):
        quantize(saved_classifier, folder)
    assert {path: path.read_text() for path in folder.rglob("*") if path.is_file()} == before
    assert not list(folder.parent.glob(folder.name + "*.partial"))


@requires_onnxruntime
def test_only_a_folder_quantize_wrote_is_replaced(saved_classifier, tmp_path):
    from hf_bigsmall.utils.files import KIT_MARKER

    output = quantize(saved_classifier, tmp_path / "int8")
    assert (output / KIT_MARKER).is_file()
    (output / "stale.txt").write_text("left by the earlier run")
    quantize(saved_classifier, output)  # the kit's own earlier result: replaced whole
    assert (output / "model.onnx").is_file() and not (output / "stale.txt").exists()
    # the kit's marker alone is not enough: a kit folder that is not a quantized model (a student) is refused
    student = tmp_path / "student"
    shutil.copytree(saved_classifier, student)
    shutil.copy(output / KIT_MARKER, student / KIT_MARKER)
    with pytest.raises(ValueError, match="not a quantized model folder written by hf_bigsmall"):
        quantize(saved_classifier, student)
    assert (student / "model.safetensors").is_file()
    # a folder at a `.partial` name that is not the kit's is the user's too: the export writes through a `.partial`
    # of its own and leaves it whole
    leftover = tmp_path / "fresh.partial"
    before = _user_folder(leftover)
    for path in (leftover, *leftover.rglob("*")):
        os.utime(path, (0, 0))  # old enough to be removed, were it the kit's
    quantize(saved_classifier, tmp_path / "fresh")
    assert {path: path.read_text() for path in leftover.rglob("*") if path.is_file()} == before
    assert (tmp_path / "fresh" / "model.onnx").is_file()


def test_plan_picks_the_backend_per_device():
    pytest.importorskip("onnxruntime")
    plan = plan_quantization()
    assert (plan.method, plan.device, plan.backend, plan.extra) == ("int8", "cpu", "onnxruntime", "onnx")
    assert "int8" in plan.scheme


# --- real model -------------------------------------------------------------------------------------


@pytest.mark.slow  # the fast suite meets MiniLM int8 in the quickstart test
@requires_onnxruntime
@requires_minilm
def test_minilm_classifier_int8_keeps_its_predictions(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_bigsmall import assets

    path = assets.resolve_model(assets.MINILM)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.save_pretrained(tmp_path / "fp32")
    tokenizer.save_pretrained(tmp_path / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "int8")
    texts = ["A gripping, beautifully acted film.", "Dull and far too long; I nearly left.",
             "The plot makes no sense, but the cast is charming and the music lovely."] * 4
    batch, expected = _torch_logits(model, tokenizer, texts)
    logits = OnnxModelRunner(tmp_path / "int8")(**batch).logits
    assert (logits - expected).abs().max() < 0.05
    ratio = (tmp_path / "fp32" / "model.safetensors").stat().st_size / (tmp_path / "int8" / "model.onnx").stat().st_size
    assert ratio > 3.8, ratio


# --- CUDA: torchao through TorchAoConfig ---------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["int8", "int4"])
@pytest.mark.parametrize("task", ["classifier", "causal-lm"])
def test_torchao_quantized_folder_reloads_with_plain_from_pretrained(tmp_path, method, task):
    pytest.importorskip("torchao")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    # int4 groups 128 input channels: layers must be at least that wide
    config = tiny_llama_config(hidden_size=256, intermediate_size=512, head_dim=64, num_labels=2)
    model = (_classifier(config) if task == "classifier" else _causal_lm(config)).eval()
    tokenizer = _save(model, tmp_path / "fp32")
    output = quantize(tmp_path / "fp32", tmp_path / method, method=method, device="cuda")
    saved = json.loads((output / "config.json").read_text())
    assert saved["quantization_config"]["quant_method"] == "torchao"
    assert (saved["quantization"]["method"], saved["quantization"]["backend"]) == (method, "torchao")
    auto_class = AutoModelForSequenceClassification if task == "classifier" else AutoModelForCausalLM
    reloaded = auto_class.from_pretrained(output, device_map="cuda").eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    batch = {k: v.cuda() for k, v in batch.items() if k != "token_type_ids"}
    with torch.no_grad():
        expected = model.cuda().to(reloaded.dtype)(**batch).logits.float()
        logits = reloaded(**batch).logits.float()
    assert (logits - expected).abs().max() < 0.1 * expected.abs().max() + 0.05
    fp32_size = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert fp32_size / sum(f.stat().st_size for f in output.glob("*.safetensors")) > 2  # integer weights stored


@requires_onnxruntime
def test_cli_quantize_writes_the_folder_and_says_how_to_load_it(saved_classifier, capsys):
    from hf_bigsmall.cli import main

    output = saved_classifier.parent / "cli-int8"
    assert main(["quantize", str(saved_classifier), str(output)]) == 0
    assert is_onnx_folder(output) and f'onnxruntime.InferenceSession("{output}/model.onnx")' in capsys.readouterr().out
    assert main(["quantize", str(output), str(saved_classifier.parent / "again")]) == 2
    assert "already quantized" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["around", "within", "partial", "replaced", "writer-partial"])
def test_an_output_folder_around_or_within_the_model_is_refused(saved_classifier, tmp_path, where):
    """Replacing an earlier export removes it whole: a model inside it would go with it; so would a model at the
    names the export removes as an interrupted export's leftovers (`<output>.partial`, `.<output>.replaced`)."""
    import shutil

    from hf_bigsmall.utils.files import mark_kit_folder
    from hf_bigsmall.utils.writers import machine_tag

    if where in ("partial", "replaced", "writer-partial"):  # a model the kit saved, at a sibling name of the output
        model = tmp_path / {"partial": "int8.partial", "replaced": ".int8.replaced",
                            "writer-partial": f"int8.{machine_tag()}-1-0123abcd.partial"}[where]
        shutil.copytree(saved_classifier, model)
        mark_kit_folder(model)
        output = tmp_path / "int8"
        if where == "replaced":
            quantize(saved_classifier, output)  # an earlier export there, moved aside when replaced
    elif where == "around":  # the model moved into an earlier export's folder
        export = quantize(saved_classifier, tmp_path / "int8")
        model = export / "fp32"
        shutil.copytree(saved_classifier, model)
        output = export
    else:
        model, output = saved_classifier, saved_classifier / "int8"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="inside one another" if where in ("around", "within") else
                       "a name an export to .* writes through and removes as a leftover"):
        quantize(model, output)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@requires_onnxruntime
def test_dynamic_int8_is_scored_one_input_at_a_time_and_fp32_in_padded_batches(tmp_path):
    """ONNX Runtime's dynamic int8 takes one activation scale per call, padding rows included: in a padded batch a
    short review's logits would depend on the long review beside it. compare's scoring path runs it alone."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification

    from hf_bigsmall.reporting.compare import _tokenize, compare_models, scored_batches

    torch.manual_seed(0)
    model = _classifier(tiny_bert_config(hidden_size=64, intermediate_size=128)).eval()
    tokenizer = _save(model, tmp_path / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "int8")
    runner = OnnxModelRunner(tmp_path / "int8")
    short, long = "w1 w2", " ".join(f"w{i}" for i in range(3, 40))

    # the dependence is real: the runner called on a padded batch changes the short review's int8 logits
    alone = runner(**tokenizer([short], return_tensors="pt")).logits[0]
    padded = runner(**tokenizer([short, long], padding=True, return_tensors="pt")).logits[0]
    assert runner.outputs_depend_on_batch and (alone - padded).abs().max() > 2e-5  # fp32 differs by < 1e-6

    def first_logits(scored, texts):
        tokenized = _tokenize(Dataset.from_dict({"text": texts, "label": [0] * len(texts)}), tokenizer,
                              "text-classification", "text", "label", max_length=64)
        batches = list(scored_batches(scored, tokenized, tokenizer, batch_size=32))
        return batches[0][2][0], [tuple(batch["input_ids"].shape) for _, batch, _ in batches]

    int8_alone, _ = first_logits(runner, [short])
    int8_beside_long, shapes = first_logits(runner, [short, long])
    torch.testing.assert_close(int8_beside_long, int8_alone, rtol=0, atol=0)
    assert shapes == [(1, 4), (1, 39)]  # one review per call, no padding

    # an fp32 model keeps its padded batches (and loses nothing to them)
    fp32 = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fp32").eval()
    assert not getattr(fp32, "outputs_depend_on_batch", False)
    fp32_alone, _ = first_logits(fp32, [short])
    fp32_beside_long, shapes = first_logits(fp32, [short, long])
    assert shapes == [(2, 39)]
    torch.testing.assert_close(fp32_beside_long, fp32_alone, rtol=1e-4, atol=1e-5)

    comparison = compare_models([tmp_path / "fp32", tmp_path / "int8"], _dataset(), batch_size=16, latency_samples=2,
                                output_dir=tmp_path / "report", plots=False)
    assert [m.quality_batch_size for m in comparison.models] == [16, 1]
    assert "Quality of `int8` scored one sample at a time" in (tmp_path / "report" / "report.md").read_text()


@requires_onnxruntime
def test_an_onnx_graph_without_run_time_activation_quantization_keeps_its_batches(tmp_path):
    from hf_bigsmall.quantization.onnx import (
        _export,
        _logits_module,
        model_input_names,
        probe_batch,
        quantizes_activations_at_run_time,
    )

    torch.manual_seed(0)
    model = _classifier(tiny_bert_config()).eval()
    tokenizer = _save(model, tmp_path / "fp32")
    quantize(tmp_path / "fp32", tmp_path / "int8")
    names = model_input_names(model, tokenizer)
    probe = probe_batch(tokenizer, names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names} | {"logits": {0: "batch"}}
    _export(_logits_module(model, names, False), tuple(probe[name] for name in names), tmp_path / "plain.onnx",
            names, axes)
    assert quantizes_activations_at_run_time(tmp_path / "int8" / "model.onnx")
    assert not quantizes_activations_at_run_time(tmp_path / "plain.onnx")


def test_an_output_folder_holding_the_kits_marker_alone_is_written(saved_classifier, tmp_path):
    """What an interrupted write leaves (the marker, nothing else) has nothing to lose: it is no reason to refuse."""
    from hf_bigsmall.utils.files import mark_kit_folder

    mark_kit_folder(tmp_path / "int8")
    assert is_onnx_folder(quantize(saved_classifier, tmp_path / "int8"))


@requires_onnxruntime
def test_a_kit_student_that_appears_at_the_output_during_the_export_is_refused_and_kept(saved_classifier, tmp_path,
                                                                                         monkeypatch):
    """The first check refuses a trained model of the kit's (its marker, no quantization record) at the output, but
    the rename at the end only asked for the marker: a student saved there while the export ran was deleted."""
    from hf_bigsmall.quantization.backends import folder as folder_backend
    from hf_bigsmall.utils.files import mark_kit_folder

    output = tmp_path / "out"
    fresh_partial_dir = folder_backend.fresh_partial_dir

    def student_saved_meanwhile(final_dir):
        partial = fresh_partial_dir(final_dir)
        shutil.copytree(saved_classifier, output)
        mark_kit_folder(output)
        return partial

    monkeypatch.setattr(folder_backend, "fresh_partial_dir", student_saved_meanwhile)
    with pytest.raises(ValueError, match=f"{output}.*not a quantized model folder written by hf_bigsmall"):
        quantize(saved_classifier, output)
    assert sorted(path.name for path in output.iterdir()) == sorted(
        [".hf_bigsmall.json", *(path.name for path in saved_classifier.iterdir())])


def test_an_earlier_export_another_export_swaps_while_it_is_checked_is_not_taken_for_the_users(saved_classifier,
                                                                                                tmp_path, monkeypatch):
    """Between seeing the folder hold files and reading its record, another export moved it aside to put its own in
    place: the record read found nothing, and the check refused the kit's own export as the user's folder."""
    from hf_bigsmall.quantization import config
    from hf_bigsmall.utils.files import mark_kit_folder

    output = tmp_path / "out"
    mark_kit_folder(output)
    (output / "config.json").write_text(json.dumps({config.QUANTIZATION_KEY: {"backend": "onnxruntime"}}))
    has_kit_record = config.has_kit_record

    def moved_aside_meanwhile(folder):
        if folder == output and output.exists():  # another export's first rename of its swap
            output.rename(tmp_path / ".out.0123abcd-1-0123abcd.replaced")
        return has_kit_record(folder)

    monkeypatch.setattr(config, "has_kit_record", moved_aside_meanwhile)
    config.check_quantized_output(saved_classifier, output)
