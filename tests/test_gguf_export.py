"""GGUF export: transformers' own GGUF loader and llama.cpp (where installed) must decode it as the source does."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, PreTrainedTokenizerFast

from hf_bigsmall.quantization import quantize
from hf_bigsmall.quantization.gguf_export import export_gguf
from hf_bigsmall.utils.files import KIT_MARKER
from tests.testing_utils import tiny_llama_config

pytest.importorskip("gguf")

VOCAB = 300  # the 256 byte symbols, a few merges, two special tokens and unused padding rows
STEPS = 32


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    return fast


def save_llama(folder, model=None, **overrides):
    tokenizer = _byte_level_tokenizer()
    if model is None:
        torch.manual_seed(0)
        overrides.setdefault("tie_word_embeddings", True)  # as SmolLM2
        config = tiny_llama_config(vocab_size=VOCAB, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=None, **overrides)
        model = LlamaForCausalLM(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def prompt(length: int = 6) -> torch.Tensor:
    return torch.randint(3, 256, (1, length), generator=torch.Generator().manual_seed(1))


def greedy(model, ids: torch.Tensor) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def reload(folder, **config_overrides) -> LlamaForCausalLM:
    config = json.loads((folder / "config.json").read_text())
    name = config["quantization"]["file"]
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **config_overrides).eval()


def compare(source, exported, atol):
    ids = prompt()
    with torch.no_grad():
        expected, got = source(ids).logits, exported(ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)
    return greedy(source, ids), greedy(exported, ids)


def test_f32_export_reloads_with_the_same_logits_and_greedy_tokens(tmp_path):
    # GQA (4 heads, 2 groups) and head_dim 16 != hidden 32 / 4 heads
    model = save_llama(tmp_path / "model", head_dim=16)
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method="f32")
    assert (folder / "model-F32.gguf").is_file() and (folder / KIT_MARKER).is_file()
    record = json.loads((folder / "config.json").read_text())["quantization"]
    assert record["engine"] == "llama.cpp" and record["method"] == "f32" and record["backend"] == "gguf"
    assert record["source"] == str(tmp_path / "model") and record["backend_version"]
    expected, got = compare(model, reload(folder), atol=1e-5)
    assert got == expected and len(got) == STEPS


def test_metadata_and_tokenizer_read_back(tmp_path):
    import gguf

    save_llama(tmp_path / "model", head_dim=16)
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method="f16")
    reader = gguf.GGUFReader(folder / "model-F16.gguf")

    def value(key):
        return reader.fields[key].contents()

    assert value("general.architecture") == "llama"
    assert value("llama.block_count") == 4 and value("llama.embedding_length") == 32
    assert value("llama.attention.head_count") == 4 and value("llama.attention.head_count_kv") == 2
    assert value("llama.attention.key_length") == 16 and value("llama.rope.dimension_count") == 16
    assert value("llama.feed_forward_length") == 64 and value("llama.vocab_size") == VOCAB
    tokens = value("tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[256] == "Ġt" and tokens[-1] == f"[PAD{VOCAB - 1}]"
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"  # llama.cpp's names
    assert value("tokenizer.ggml.merges")[:3] == ["Ġ t", "h e", "Ġt he"]
    assert value("tokenizer.ggml.eos_token_id") == 260
    names = {tensor.name: tensor for tensor in reader.tensors}
    assert "output.weight" not in names  # tied: llama.cpp reuses the token embedding
    assert names["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert names["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_untied_head_is_written_as_output(tmp_path):
    import gguf

    model = save_llama(tmp_path / "model", tie_word_embeddings=False)
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method="f32")
    assert "output.weight" in {tensor.name for tensor in gguf.GGUFReader(folder / "model-F32.gguf").tensors}
    expected, got = compare(model, reload(folder), atol=1e-5)
    assert got == expected


def test_gpt2_f32_export_reloads_with_the_same_logits_and_greedy_tokens(tmp_path):
    import gguf
    from transformers import GPT2LMHeadModel

    from tests.testing_utils import tiny_gpt2_config

    torch.manual_seed(0)
    tokenizer = _byte_level_tokenizer()
    # a pruned FFN (n_inner 64, not 4 x 32)
    model = GPT2LMHeadModel(tiny_gpt2_config(vocab_size=VOCAB, bos_token_id=tokenizer.bos_token_id,
                                             eos_token_id=tokenizer.eos_token_id, n_inner=64)).eval()
    save_llama(tmp_path / "model", model=model)
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method="f32")
    reader = gguf.GGUFReader(folder / "model-F32.gguf")
    assert reader.fields["general.architecture"].contents() == "gpt2"
    qkv = next(t for t in reader.tensors if t.name == "blk.0.attn_qkv.weight")
    assert list(qkv.shape) == [32, 96]  # GGML order (columns first): each of the 96 outputs is a row of 32
    assert reader.fields["gpt2.feed_forward_length"].contents() == 64
    assert reader.fields["gpt2.context_length"].contents() == 64
    # transformers' GGUF loader reads these two back under names GPT2Config ignores: they are given again here
    expected, got = compare(model, reload(folder, n_positions=64, n_inner=64), atol=1e-5)
    assert got == expected


def test_kit_pruned_llama_depth_and_width(tmp_path):
    from hf_bigsmall import make_student
    from hf_bigsmall.pruning.importance import compute_importance
    from hf_bigsmall.pruning.width import prune_width

    teacher = save_llama(tmp_path / "teacher", num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    calibration = torch.randint(3, 256, (8, 10), generator=torch.Generator().manual_seed(2))
    importance = compute_importance(teacher, calibration)
    student = make_student(teacher, num_layers=2, teacher_layers=[0, 3])
    prune_width(student, importance.select_layers([0, 3]), intermediate_size=32, num_attention_heads=2,
                num_key_value_heads=1)
    assert student.config.head_dim * student.config.num_attention_heads != student.config.hidden_size
    save_llama(tmp_path / "student", model=student.eval())
    folder = export_gguf(tmp_path / "student", tmp_path / "gguf", method="f32")
    expected, got = compare(student, reload(folder), atol=1e-5)
    assert got == expected


@pytest.mark.parametrize("method, gguf_type, atol, keeps_zeros", [
    ("int8", "Q8_0", 0.05, True), ("q5_0", "Q5_0", 0.2, True), ("q4_0", "Q4_0", 0.5, True),
    ("q4_1", "Q4_1", 0.5, False),  # a block's minimum offsets its grid: zeros come back near zero only
])
def test_quantized_types_stay_close_and_symmetric_ones_keep_zeros(tmp_path, method, gguf_type, atol, keeps_zeros):
    import gguf

    model = save_llama(tmp_path / "model")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, :16] = 0  # pruned input neurons
    save_llama(tmp_path / "model", model=model)
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method=method)
    reader = gguf.GGUFReader(folder / f"model-{gguf_type}.gguf")
    down = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    assert down.tensor_type == getattr(gguf.GGMLQuantizationType, gguf_type)
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert embedding.tensor_type == gguf.GGMLQuantizationType.Q8_0
    values = gguf.quants.dequantize(down.data, down.tensor_type)
    assert np.count_nonzero(values[:, 16:]) > 0
    if keeps_zeros:
        assert np.all(values[:, :16] == 0)
    compare(model, reload(folder), atol=atol)


def _llama_that_knows_a_cycle(folder, **overrides) -> tuple[LlamaForCausalLM, torch.Tensor]:
    """A tiny Llama trained until it continues a fixed cycle of 12 tokens greedily, and a prompt from the cycle.

    A randomly initialised model's next-token choices are near-ties that 4-bit rounding flips; this one's
    are not, so a 4-bit export that keeps its greedy tokens has kept what it computes.
    """
    torch.manual_seed(0)
    model = save_llama(folder, **overrides)
    cycle = torch.randperm(250, generator=torch.Generator().manual_seed(3))[:12] + 3
    stream = cycle.repeat(8)
    batch = torch.stack([stream[start:start + 48] for start in range(12)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    save_llama(folder, model=model)
    ids = stream[:8].unsqueeze(0)
    assert greedy(model, ids) == stream[8:8 + STEPS].tolist()  # it learned the cycle
    return model, ids


def test_int4_keeps_greedy_tokens_and_records_the_types_the_file_holds(tmp_path):
    import gguf

    from hf_bigsmall.quantization.gguf_export import tensor_type_counts
    from hf_bigsmall.utils.import_utils import is_llama_cpp_available

    # hidden size 64: rows K-quants cannot take; with llama.cpp int4 is its Q4_K_M, those tensors in its fallback
    # Q5_0, the FFN's down projection (rows of 256) in a K-quant; without llama.cpp it is Q4_0
    model, ids = _llama_that_knows_a_cycle(tmp_path / "model", hidden_size=64, intermediate_size=256)
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method="int4")
    record = json.loads((folder / "config.json").read_text())["quantization"]
    counts = tensor_type_counts(folder / record["file"])
    assert record["tensor_types"] == counts
    types = {tensor.name: tensor.tensor_type.name for tensor in gguf.GGUFReader(folder / record["file"]).tensors}
    assert types["token_embd.weight"] == "Q8_0"
    if is_llama_cpp_available():
        assert record["method"] == "q4_k_m" and "'hidden_size': 64" in record["scheme"]
        assert types["blk.0.attn_q.weight"] == "Q5_0" and types["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")
        tokens, _ = _llama_cpp_greedy(folder / record["file"], ids[0].tolist())
        assert tokens == greedy(model, ids)
    else:
        assert record["method"] == "q4_0" and types["blk.0.attn_q.weight"] == "Q4_0"
    exported = reload(folder)
    assert greedy(exported, ids) == greedy(model, ids)
    with torch.no_grad():
        source_loss = model(input_ids=ids, labels=ids).loss
        exported_loss = exported(input_ids=ids, labels=ids).loss
    assert abs(float(exported_loss - source_loss)) < 0.05


def test_int4_falls_back_to_q4_0_without_llama_cpp(tmp_path, monkeypatch):
    from hf_bigsmall.quantization import gguf_export

    monkeypatch.setattr(gguf_export, "is_llama_cpp_available", lambda: False)
    model = save_llama(tmp_path / "model")
    folder = quantize(tmp_path / "model", tmp_path / "gguf", backend="gguf", method="int4")  # + its card
    record = json.loads((folder / "config.json").read_text())["quantization"]
    assert record["method"] == "q4_0" and "hf-bigsmall[llamacpp]" in record["fallback_reason"]
    assert "Q4_0" in (folder / "README.md").read_text()
    compare(model, reload(folder), atol=0.5)


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    from transformers import BertLMHeadModel, LlamaForSequenceClassification

    from tests.testing_utils import tiny_bert_config

    out = tmp_path / "out"
    with pytest.raises(ValueError, match="GGUF type"):
        export_gguf(tmp_path, out, method="q3")
    classifier = tmp_path / "classifier"
    LlamaForSequenceClassification(tiny_llama_config(vocab_size=VOCAB)).save_pretrained(classifier)
    with pytest.raises(ValueError, match="causal language models"):
        export_gguf(classifier, out)
    bert = tmp_path / "bert"
    BertLMHeadModel(tiny_bert_config(is_decoder=True)).save_pretrained(bert)
    with pytest.raises(ValueError, match=r"supports model_type \('llama', 'gpt2'\)"):
        export_gguf(bert, out)
    small_vocabulary = tmp_path / "small"
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(small_vocabulary)  # 128 rows for a 261-token tokenizer
    _byte_level_tokenizer().save_pretrained(small_vocabulary)
    with pytest.raises(ValueError, match="token id 260 but the model.s vocab_size is 128"):
        export_gguf(small_vocabulary, out)
    no_tokenizer = tmp_path / "bare"
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(no_tokenizer)
    with pytest.raises(ValueError, match="no tokenizer.json"):
        export_gguf(no_tokenizer, out)
    assert not out.exists() and not list(tmp_path.glob("out*.partial"))


def test_llama_cpp_pre_tokenizer_names():
    from hf_bigsmall.quantization.gguf_export import _pre_tokenizer_name

    byte_level = {"type": "ByteLevel", "use_regex": True}
    assert _pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    assert _pre_tokenizer_name({"pre_tokenizer": smollm}) == "smollm"
    assert _pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}}) == "default"


def test_a_folder_the_kit_did_not_write_is_refused_and_kept(tmp_path):
    save_llama(tmp_path / "model")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a quantized model folder written by hf_bigsmall"):
        export_gguf(tmp_path / "model", mine)
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="own folder"):
        export_gguf(tmp_path / "model", tmp_path / "model")
    # a folder the export wrote is replaced by the next export
    export_gguf(tmp_path / "model", tmp_path / "gguf", method="f16")
    export_gguf(tmp_path / "model", tmp_path / "gguf", method="q8_0")
    assert sorted(p.name for p in (tmp_path / "gguf").glob("*.gguf")) == ["model-Q8_0.gguf"]


def test_a_trained_model_the_kit_saved_is_never_replaced_by_an_export(tmp_path):
    # a distilled or pruned student carries the kit's marker too: only an earlier quantized export is replaced
    from hf_bigsmall.utils.files import publishing

    save_llama(tmp_path / "model")
    with publishing(tmp_path / "student") as partial:
        save_llama(partial)
    before = sorted(p.name for p in (tmp_path / "student").iterdir())
    with pytest.raises(ValueError, match="not a quantized model folder written by hf_bigsmall"):
        export_gguf(tmp_path / "model", tmp_path / "student", method="f16")
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == before
    assert not list(tmp_path.glob("student*.partial"))


def test_a_failure_half_way_leaves_nothing(tmp_path, monkeypatch):
    from hf_bigsmall.quantization import gguf_export

    save_llama(tmp_path / "model")
    export_gguf(tmp_path / "model", tmp_path / "gguf", method="f16")
    before = sorted(p.name for p in (tmp_path / "gguf").iterdir())

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gguf_export.QuantizationRecord, "write", fail)  # after the .gguf is written
    with pytest.raises(OSError, match="disk full"):
        export_gguf(tmp_path / "model", tmp_path / "gguf", method="q8_0")
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == before  # the earlier export is intact
    assert not list(tmp_path.glob("gguf*.partial"))


def test_quantize_and_the_command_line_take_the_gguf_backend(tmp_path, capsys, monkeypatch):
    from hf_bigsmall.cli import main
    from hf_bigsmall.quantization import quantize

    model = save_llama(tmp_path / "model")
    assert main(["quantize", str(tmp_path / "model"), str(tmp_path / "gguf"), "--backend", "gguf",
                 "--method", "q8_0"]) == 0
    assert "llama-cli -m" in capsys.readouterr().out
    assert (tmp_path / "gguf" / "model-Q8_0.gguf").is_file()
    folder = quantize(tmp_path / "model", tmp_path / "gguf", backend="gguf", method="f32")  # replaces its own
    assert [p.name for p in folder.glob("*.gguf")] == ["model-F32.gguf"]

    # the card's transformers snippet runs as written, from inside the folder
    card = (folder / "README.md").read_text()
    snippet = next(block for block in card.split("```python\n")[1:] if "transformers" in block).split("```")[0]
    assert "llama-cli -m model-F32.gguf" in card and "library_name: gguf" in card
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(snippet, namespace)
    ids = prompt()
    with torch.no_grad():
        torch.testing.assert_close(namespace["model"](ids).logits, model(ids).logits, rtol=0, atol=1e-5)


def _news_blocks(tokenizer, count: int = 16, size: int = 128) -> torch.Tensor:
    from hf_bigsmall.assets import load_news

    ids: list[int] = []
    for text in load_news()["test"]["text"]:
        ids += tokenizer(text)["input_ids"]
        if len(ids) >= count * size:
            break
    return torch.tensor(ids[: count * size]).view(count, size)


def _perplexity(model, blocks: torch.Tensor) -> float:
    with torch.no_grad():
        losses = [model(block[None], labels=block[None]).loss for block in blocks]
    return float(torch.stack(losses).mean().exp())


@pytest.mark.slow
def test_smollm2_f32_matches_and_q8_0_perplexity_within_one_percent(tmp_path):
    from transformers import AutoTokenizer

    from hf_bigsmall.assets import smollm2_path

    source = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    f32 = export_gguf(source, tmp_path / "f32", method="f32")
    expected, got = compare(model, reload(f32), atol=1e-4)
    assert got == expected
    q8 = export_gguf(source, tmp_path / "q8", method="q8_0")
    blocks = _news_blocks(AutoTokenizer.from_pretrained(source))
    fp32_perplexity, q8_perplexity = _perplexity(model, blocks), _perplexity(reload(q8), blocks)
    assert abs(q8_perplexity / fp32_perplexity - 1) < 0.01, (fp32_perplexity, q8_perplexity)


def _llama_cpp_greedy(path, ids: list[int]) -> tuple[list[int], np.ndarray]:
    from llama_cpp import GGML_TYPE_F32, Llama

    # the KV cache in float32 too (llama.cpp's default is float16, which alone moves GPT-2's logits by about 1e-3):
    # an unquantized export is checked unquantized end to end
    llm = Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False,
                type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)])
    tokens = []
    for _ in range(STEPS):
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([tokens[-1]])
    return tokens, prompt_logits


def _gpt2_for_llama_cpp(folder):
    from transformers import GPT2LMHeadModel

    from tests.testing_utils import tiny_gpt2_config

    torch.manual_seed(0)
    tokenizer = _byte_level_tokenizer()
    config = tiny_gpt2_config(vocab_size=VOCAB, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, n_inner=64, initializer_range=0.2)
    return save_llama(folder, model=GPT2LMHeadModel(config).eval())


LLAMA_CPP_MODELS = {
    # larger weights than the default init spread the logits, so greedy choices are not near-ties
    "llama": lambda folder: save_llama(folder, head_dim=16, initializer_range=0.2),
    "gpt2": _gpt2_for_llama_cpp,
}


@pytest.mark.parametrize("architecture", LLAMA_CPP_MODELS)
def test_llama_cpp_decodes_the_f32_export_as_transformers_does(tmp_path, architecture):
    pytest.importorskip("llama_cpp")
    model = LLAMA_CPP_MODELS[architecture](tmp_path / "model")
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method="f32")
    ids = prompt()
    tokens, logits = _llama_cpp_greedy(folder / "model-F32.gguf", ids[0].tolist())
    if architecture == "gpt2":
        _gelu_as_llama_cpp_computes_it(model)
    with torch.no_grad():
        expected = model(ids).logits[0].numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-3)
    assert tokens == greedy(model, ids)


def _gelu_as_llama_cpp_computes_it(model) -> None:
    """GPT-2's reference with the GELU llama.cpp's CPU backend computes (ggml-cpu/vec.h, GGML_GELU_FP16).

    ggml rounds each input to float16 and reads the tanh-approximated GELU from a float16 table (inputs
    beyond +-10 pass through or give 0): about 1e-3 off per activation, which alone moved this tiny
    GPT-2's logits by 2e-3 with weights, KV cache and everything else in float32. Llama's SiLU is
    computed in float32, so its reference stays plain transformers.
    """
    class TableGelu(torch.nn.Module):
        def forward(self, x):
            table = torch.nn.functional.gelu(x.half().float(), approximate="tanh").half().float()
            return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))

    for block in model.transformer.h:
        block.mlp.act = TableGelu()


def test_the_cards_llama_cpp_snippet_runs(tmp_path, monkeypatch):
    pytest.importorskip("llama_cpp")
    save_llama(tmp_path / "model")
    folder = quantize(tmp_path / "model", tmp_path / "gguf", backend="gguf", method="q8_0")
    card = (folder / "README.md").read_text()
    snippet = next(block for block in card.split("```python\n")[1:] if "llama_cpp" in block).split("```")[0]
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(snippet, namespace)
    assert namespace["llm"].n_vocab() == VOCAB


def test_q4_k_m_through_llama_cpp(tmp_path):
    import gguf

    pytest.importorskip("llama_cpp")
    # every quantized row a multiple of 256, as K-quants need
    model = save_llama(tmp_path / "model", hidden_size=256, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, num_hidden_layers=2)
    folder = export_gguf(tmp_path / "model", tmp_path / "gguf", method="int4")
    record = json.loads((folder / "config.json").read_text())["quantization"]
    assert record["method"] == "q4_k_m" and "fallback_reason" not in record and "not multiples" not in record["scheme"]
    assert not list(folder.glob("*.tmp"))
    # K-quants only, the token embedding (and tied output layer) in Q6_K: no tensor fell back
    assert set(record["tensor_types"]) == {"F32", "Q4_K", "Q6_K"}
    reader = gguf.GGUFReader(folder / "model-Q4_K_M.gguf")
    assert next(t for t in reader.tensors if t.name == "token_embd.weight").tensor_type.name == "Q6_K"
    tokens, _ = _llama_cpp_greedy(folder / "model-Q4_K_M.gguf", prompt()[0].tolist())
    assert len(tokens) == STEPS
    compare(model, reload(folder), atol=0.5)


def test_a_missing_engine_names_the_extra(tmp_path, monkeypatch):
    from hf_bigsmall.quantization import gguf_export
    from hf_bigsmall.utils import import_utils

    save_llama(tmp_path / "model", hidden_size=256, intermediate_size=256, num_attention_heads=4, head_dim=64)
    monkeypatch.setattr(gguf_export, "is_llama_cpp_available", lambda: False)
    with pytest.raises(ImportError, match=r"hf-bigsmall\[llamacpp\]"):
        export_gguf(tmp_path / "model", tmp_path / "out", method="q4_k_m")
    monkeypatch.setattr(import_utils, "_is_package_available", lambda name: name != "gguf")
    with pytest.raises(ImportError, match=r"hf-bigsmall\[gguf\]"):
        export_gguf(tmp_path / "model", tmp_path / "out", method="q8_0")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out*.partial"))


@pytest.mark.slow
def test_smollm2_q4_1_export_is_byte_identical_to_the_shipped_llama_cpp_file(tmp_path):
    """The shipped SmolLM2 GGUF was written by llama.cpp's own converter and quantizer in Q4_1. Its weights,
    dequantized and loaded by transformers, are the plain checkpoint; exported again as Q4_1 every block lies on
    the same grid, so llama.cpp's layout (names, shapes, rotary row order, tokenizer) must come back byte for byte."""
    import gguf

    from hf_bigsmall.assets import smollm2_gguf_path, smollm2_path

    reference = gguf.GGUFReader(smollm2_gguf_path())
    ours = gguf.GGUFReader(export_gguf(smollm2_path(), tmp_path / "q4_1", method="q4_1") / "model-Q4_1.gguf")
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                *(key for key in reference.fields if key.startswith("llama."))):
        assert ours.fields[key].contents() == reference.fields[key].contents(), key
    theirs = {tensor.name: tensor for tensor in reference.tensors}
    assert sorted(theirs) == sorted(tensor.name for tensor in ours.tensors)
    for tensor in ours.tensors:
        expected = theirs[tensor.name]
        assert tensor.tensor_type == expected.tensor_type and list(tensor.shape) == list(expected.shape)
        assert np.array_equal(np.asarray(tensor.data), np.asarray(expected.data)), tensor.name


@pytest.mark.parametrize("architecture, overrides, message", [
    # llama.cpp's Llama graph is SwiGLU whatever the file says: a ReLU Llama decoded silently differently
    # (max logit difference 1.26 on a logit scale of 3.7 through llama-cpp-python 0.3.36)
    ("llama", {"hidden_act": "relu"}, r"hidden_act 'relu'.*llama.cpp computes \('silu', 'swish'\)"),
    ("gpt2", {"activation_function": "relu"}, r"activation_function 'relu'.*llama.cpp computes"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx"),
])
def test_a_model_llama_cpp_would_compute_differently_is_refused(tmp_path, architecture, overrides, message):
    from transformers import GPT2LMHeadModel

    from tests.testing_utils import tiny_gpt2_config

    if architecture == "llama":
        save_llama(tmp_path / "model", **overrides)
    else:
        save_llama(tmp_path / "model", model=GPT2LMHeadModel(tiny_gpt2_config(vocab_size=VOCAB, **overrides)))
    with pytest.raises(ValueError, match=message):
        export_gguf(tmp_path / "model", tmp_path / "out", method="f32")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out*.partial"))


def test_the_command_line_names_the_gguf_file_it_wrote(tmp_path, capsys):
    from hf_bigsmall.cli import main

    save_llama(tmp_path / "model")
    assert main(["quantize", str(tmp_path / "model"), str(tmp_path / "gguf"), "--backend", "gguf",
                 "--method", "q8_0"]) == 0
    out = capsys.readouterr().out
    assert f"llama-cli -m {tmp_path / 'gguf'}/model-Q8_0.gguf" in out and "<TYPE>" not in out
