"""ONNX Runtime int8 of encoder classifiers from the graph fused by ONNX Runtime's transformer optimizer."""

import json
import shutil

import numpy as np
import pytest
import torch

from hf_bigsmall.quantization import OnnxModelRunner, quantize

from .test_quantization import _classifier, _causal_lm, _save, _torch_logits, requires_onnxruntime
from .testing_utils import requires_minilm, tiny_bert_config, tiny_gpt2_config, tiny_llama_config

TEXTS = ["w1 w2 w3", "w4 w5 w6 w7 w8 w9 w10 w11", "w12"]
# the operators ONNX Runtime's optimizer fuses attention into, before and after dynamic int8
ATTENTION = {"Attention", "QAttention"}


def _operators(folder):
    import onnx

    return [node.op_type for node in onnx.load(str(folder / "model.onnx")).graph.node]


def _record(folder):
    return json.loads((folder / "config.json").read_text())["quantization"]


@pytest.fixture
def saved_bert(tmp_path):
    torch.manual_seed(0)
    model = _classifier(tiny_bert_config()).eval()
    tokenizer = _save(model, tmp_path / "fp32")
    return model, tokenizer, tmp_path / "fp32"


@requires_onnxruntime
def test_fused_int8_reproduces_the_model_and_says_what_it_fused(saved_bert, tmp_path):
    model, tokenizer, source = saved_bert
    output = quantize(source, tmp_path / "int8")

    record = _record(output)
    assert record["fused"] is True
    assert record["fusions"]["Attention"] == model.config.num_hidden_layers
    assert record["fusions"]["SkipLayerNormalization"] == 2 * model.config.num_hidden_layers
    assert record["fusions"]["EmbedLayerNormalization"] == 1
    assert record["fused_max_logit_difference"] < 1e-4  # the fp32 fused graph, checked like the export
    operators = _operators(output)
    assert operators.count("QAttention") == model.config.num_hidden_layers  # the fused attention is int8 too
    # the runner feeds it the tensors a transformers model takes: a padded batch, and one text at a time
    batch, expected = _torch_logits(model, tokenizer, TEXTS)
    runner = OnnxModelRunner(output)
    logits = runner(**batch).logits
    scale = float(expected.abs().max())
    assert (logits - expected).abs().max() < 0.1 * scale + 0.05
    assert (logits - expected).abs().max() > 0  # int8, not the fp32 graph
    for index, text in enumerate(TEXTS):
        alone = {k: v for k, v in tokenizer(text, return_tensors="pt").items() if k in batch}
        one = runner(**alone).logits[0]
        assert (one - expected[index]).abs().max() < 0.1 * scale + 0.05
    # without token_type_ids, as a tokenizer that returns none would call it
    without = {k: v for k, v in batch.items() if k != "token_type_ids"}
    torch.testing.assert_close(runner(**without).logits, logits)


@requires_onnxruntime
def test_fuse_false_keeps_the_unfused_graph(saved_bert, tmp_path, capsys):
    model, tokenizer, source = saved_bert
    output = quantize(source, tmp_path / "int8", fuse=False)

    record = _record(output)
    assert record["fused"] is False and record["fusions"] == {}
    assert "fused_max_logit_difference" not in record
    operators = _operators(output)
    assert not ATTENTION & set(operators) and "SkipLayerNormalization" not in operators
    assert "MatMulInteger" in operators or "DynamicQuantizeMatMul" in operators  # still int8
    batch, expected = _torch_logits(model, tokenizer, TEXTS)
    assert (OnnxModelRunner(output)(**batch).logits - expected).abs().max() < 0.1 * float(expected.abs().max()) + 0.05


@requires_onnxruntime
@pytest.mark.parametrize("architecture", ["llama-classifier", "gpt2-causal-lm"])
def test_a_model_the_optimizer_does_not_take_is_quantized_unfused(tmp_path, architecture):
    torch.manual_seed(0)
    model = (_classifier(tiny_llama_config(num_labels=2)) if architecture == "llama-classifier"
             else _causal_lm(tiny_gpt2_config())).eval()
    _save(model, tmp_path / "fp32")
    output = quantize(tmp_path / "fp32", tmp_path / "int8")

    record = _record(output)
    assert record["fused"] is False and record["fusions"] == {}
    assert not ATTENTION & set(_operators(output))


@requires_onnxruntime
@pytest.mark.parametrize("breakage", ["raises", "changes the logits", "fuses no attention"])
def test_a_fusion_that_fails_or_changes_the_logits_falls_back_to_the_unfused_graph(saved_bert, tmp_path,
                                                                                   monkeypatch, breakage):
    import onnx
    from onnx import numpy_helper

    from hf_bigsmall.quantization import onnx as onnx_export

    fuse = onnx_export.fuse_transformer_graph

    def broken(source, target, config):
        if breakage == "raises":
            raise RuntimeError("no pattern matched")
        if breakage == "fuses no attention":  # a graph that loads and runs, with no attention fused
            shutil.copyfile(source, target)
            return {"SkipLayerNormalization": 8}
        fusions = fuse(source, target, config)
        graph = onnx.load(str(target))
        for tensor in graph.graph.initializer:  # the classifier's bias, shifted: every logit changes by 1
            if "classifier" in tensor.name and len(tensor.dims) == 1:
                tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) + 1.0, tensor.name))
        onnx.save(graph, str(target))
        return fusions

    monkeypatch.setattr(onnx_export, "fuse_transformer_graph", broken)
    model, tokenizer, source = saved_bert
    output = quantize(source, tmp_path / "int8")

    record = _record(output)
    assert record["fused"] is False and record["fusions"] == {}
    assert not ATTENTION & set(_operators(output))
    batch, expected = _torch_logits(model, tokenizer, TEXTS)
    assert (OnnxModelRunner(output)(**batch).logits - expected).abs().max() < 0.1 * float(expected.abs().max()) + 0.05


def test_fuse_false_for_a_backend_that_fuses_nothing_is_refused_before_anything_is_written(saved_bert, tmp_path):
    _, _, source = saved_bert
    with pytest.raises(ValueError, match=r"gguf q8_0 fuses no graph.*onnxruntime \(int8\)"):
        quantize(source, tmp_path / "gguf", method="q8_0", backend="gguf", fuse=False)
    with pytest.raises(TypeError, match="fuse must be True or False"):
        quantize(source, tmp_path / "int8", fuse="no")
    assert not list(tmp_path.glob("gguf*")) and not list(tmp_path.glob("int8*"))


def test_cli_no_fuse_reaches_quantize(monkeypatch, tmp_path):
    from hf_bigsmall import cli
    from hf_bigsmall.quantization import api

    seen = {}

    def fake(model_dir, output_dir, **options):
        seen.update(options)
        raise ImportError("stop here")  # the CLI reports a missing backend and returns 2

    monkeypatch.setattr(api, "quantize", fake)
    monkeypatch.setattr("hf_bigsmall.quantization.quantize", fake, raising=False)  # the lazily imported name
    assert cli.main(["quantize", str(tmp_path / "a"), str(tmp_path / "b"), "--no_fuse"]) == 2
    assert seen["fuse"] is False
    assert cli.main(["quantize", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert seen["fuse"] is True


# --- real model -------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_onnxruntime
@requires_minilm
def test_minilm_fused_int8_keeps_its_predictions_batched_and_alone(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_bigsmall import assets

    path = assets.resolve_model(assets.MINILM)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.save_pretrained(tmp_path / "fp32")
    tokenizer.save_pretrained(tmp_path / "fp32")
    output = quantize(tmp_path / "fp32", tmp_path / "int8")

    record = _record(output)
    assert record["fused"] is True and record["fusions"]["Attention"] == 6
    assert record["fused_max_logit_difference"] < 1e-4
    texts = ["A gripping, beautifully acted film.", "Dull and far too long; I nearly left."]
    runner = OnnxModelRunner(tmp_path / "int8")
    batch, expected = _torch_logits(model, tokenizer, texts)  # two texts, the shorter one padded
    assert batch["attention_mask"].min() == 0
    assert (runner(**batch).logits - expected).abs().max() < 0.05
    for index, text in enumerate(texts):
        alone = {k: v for k, v in tokenizer(text, return_tensors="pt").items()}
        assert np.abs(runner(**alone).logits[0].numpy() - expected[index].numpy()).max() < 0.05
