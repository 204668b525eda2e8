"""The quantization-backend registry: built-ins registered as user code would be, a user backend through
`quantize`, `compare_models` and the CLI, the extras it names, and the kit's marker on every export folder."""

import json

import pytest
import torch

from hf_bigsmall.quantization import quantize
from hf_bigsmall.quantization.backends import (
    ExportJob,
    QuantizationBackend,
    get_quantization_backend,
    quantization_backend_names,
    quantization_backends,
    register_quantization_backend,
    write_quantized_folder,
)
from hf_bigsmall.utils.files import KIT_MARKER

from .test_compare import _dataset, _save_tokenizer
from .testing_utils import REPO_ROOT, tiny_bert_config, tiny_llama_config

BUILT_INS = ("onnxruntime", "torchao", "onnxruntime-genai", "gguf")


def _how_to_use(where, record, **context):
    return f"```python\nload({where!r})\n```"


def _entry(name="user-engine", **overrides):
    fields = {"name": name, "tasks": ("text-generation",), "devices": ("cpu",), "schemes": {"int8": "int8 weights"},
              "export": lambda model_dir, output_dir, method: output_dir, "how_to_use": _how_to_use}
    return QuantizationBackend(**{**fields, **overrides})


@pytest.fixture
def registered():
    """Register entries for one test and take them out again, so tests never see each other's backends."""
    from hf_bigsmall.quantization.backends import base as backends_base

    names = []

    def register(entry, **kwargs):
        register_quantization_backend(entry, **kwargs)
        names.append(entry.name)
        return entry

    before = dict(backends_base._REGISTRY)
    yield register
    backends_base._REGISTRY.clear()
    backends_base._REGISTRY.update(before)


def test_built_ins_are_registered_with_what_they_declare():
    assert quantization_backend_names()[:4] == list(BUILT_INS)
    onnx = get_quantization_backend("onnxruntime")
    assert onnx.extra == "onnx" and onnx.auto_devices == ("cpu",) and "int8" in onnx.methods
    assert get_quantization_backend("torchao").devices == ("cuda",)
    assert get_quantization_backend("gguf").tasks == ("text-generation",)
    assert "q4_k_m" in get_quantization_backend("gguf").methods
    assert get_quantization_backend("onnxruntime-genai").runner is not None


def test_every_backend_extra_is_a_pyproject_extra_that_installs_its_modules():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    # distribution -> module, where they differ
    module_of = {"onnxruntime-genai": "onnxruntime_genai", "onnx-ir": "onnx_ir", "llama-cpp-python": "llama_cpp"}
    for backend in quantization_backends():
        assert backend.extra in extras, f"{backend.name}: extra [{backend.extra}] is not in pyproject.toml"
        installed = {module_of.get(Requirement(r).name, Requirement(r).name) for r in extras[backend.extra]}
        assert set(backend.requires) <= installed, (backend.name, backend.requires, installed)
        assert backend.extra in extras["all"][0] or backend.extra == "torchao"  # torchao: CUDA only


def test_unknown_and_duplicate_names_are_clear_errors(registered):
    with pytest.raises(ValueError, match=r"Unknown quantization backend 'nope'.*'onnxruntime'.*register_quantization"):
        get_quantization_backend("nope")
    with pytest.raises(ValueError, match="registered already"):
        register_quantization_backend(_entry(name="onnxruntime"))
    replacement = registered(_entry(name="gguf"), overwrite=True)
    assert get_quantization_backend("gguf") is replacement


@pytest.mark.parametrize("overrides, error, message", [
    ({"name": ""}, ValueError, "non-empty name"),
    ({"name": "auto"}, ValueError, "other than 'auto'"),
    ({"export": "not a function"}, TypeError, "export must be callable"),
    ({"how_to_use": None}, TypeError, "how_to_use must be callable"),
    ({"runner": 3}, TypeError, "runner must be callable or None"),
    ({"tasks": "text-generation"}, TypeError, "tasks must be a tuple"),
    ({"tasks": ("token-classification",)}, ValueError, "unknown task"),
    ({"schemes": {}}, TypeError, "schemes must be a non-empty mapping"),
    ({"auto_devices": ("cuda",)}, ValueError, "auto_devices"),
])
def test_entries_are_checked_when_made(overrides, error, message):
    with pytest.raises(error, match=message):
        _entry(**overrides)
    with pytest.raises(TypeError, match="takes a QuantizationBackend"):
        register_quantization_backend({"name": "x"})


def test_a_missing_module_names_the_backends_extra(registered):
    registered(_entry(requires=("a_module_that_is_not_installed",), extra="my-extra"))
    with pytest.raises(ImportError, match=r'a_module_that_is_not_installed .*user-engine.*pip install "hf-bigsmall\[my-extra\]"'):
        quantize("anywhere", "elsewhere", backend="user-engine")


class _CountingRunner:
    """Loads the folder with transformers and counts its forwards: proof that compare_models took the runner."""

    calls = 0

    def __init__(self, folder, num_threads=None):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.config, self.task, self.device = self.model.config, "text-generation", torch.device("cpu")

    def eval(self):
        return self

    def forward(self, input_ids=None, attention_mask=None, **ignored):
        type(self).calls += 1
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    __call__ = forward

    def parameter_counts(self):
        return sum(p.numel() for p in self.model.parameters()), 0, 0.0


def _write_bf16(job: ExportJob) -> None:
    job.auto_class.from_pretrained(job.model_dir, dtype=torch.bfloat16).save_pretrained(job.folder)
    job.record["format"] = "safetensors-bf16"


def test_a_user_backend_works_through_quantize_compare_and_the_cli(registered, tmp_path, capsys):
    from transformers import LlamaForCausalLM

    from hf_bigsmall import compare_models
    from hf_bigsmall.cli import main

    registered(QuantizationBackend(
        name="bf16-weights", tasks=("text-generation",), devices=("cpu",), schemes={"bf16": "bfloat16 weights"},
        export=lambda model_dir, output_dir, method: write_quantized_folder(
            model_dir, output_dir, backend="bf16-weights", method=method, device="cpu", write=_write_bf16),
        how_to_use=_how_to_use, runner=_CountingRunner, loading="load('{path}')"))
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "fp32")
    _save_tokenizer(tmp_path / "fp32")

    folder = quantize(tmp_path / "fp32", tmp_path / "bf16", method="bf16", backend="bf16-weights")
    record = json.loads((folder / "config.json").read_text())["quantization"]
    assert (record["backend"], record["method"], record["scheme"], record["format"]) == (
        "bf16-weights", "bf16", "bfloat16 weights", "safetensors-bf16")
    assert (folder / KIT_MARKER).is_file() and (folder / "tokenizer.json").is_file()
    assert not list(tmp_path.glob("bf16*.partial"))

    comparison = compare_models({"fp32": tmp_path / "fp32", "bf16": folder}, _dataset(6), max_length=16,
                                latency_samples=2, generation_prompts=1, prompt_tokens=4, new_tokens=2, plots=False)
    fp32_row, bf16_row = comparison.models
    assert _CountingRunner.calls > 0 and bf16_row.quantization["backend"] == "bf16-weights"
    assert bf16_row.size_on_disk_mb < 0.6 * fp32_row.size_on_disk_mb
    assert bf16_row.metrics["perplexity"] == pytest.approx(fp32_row.metrics["perplexity"], rel=0.05)

    # the command line offers it by name, and says how to load the folder
    assert main(["quantize", str(tmp_path / "fp32"), str(tmp_path / "cli"), "--backend", "bf16-weights",
                 "--method", "bf16"]) == 0
    assert f"load('{tmp_path / 'cli'}')" in capsys.readouterr().out
    # a classifier is refused before anything is written: this backend takes causal LMs only
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(tiny_bert_config()).save_pretrained(tmp_path / "classifier")
    _save_tokenizer(tmp_path / "classifier")
    with pytest.raises(ValueError, match=r"takes \('text-generation',\) models.*text-classification"):
        quantize(tmp_path / "classifier", tmp_path / "refused", method="bf16", backend="bf16-weights")
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob("refused*.partial"))


def test_a_user_backend_cannot_take_a_method_it_does_not_declare(registered):
    registered(_entry())
    with pytest.raises(ValueError, match=r"user-engine does not offer fp32 quantization here: use one of \['int8'\]"):
        quantize("anywhere", "elsewhere", method="fp32", backend="user-engine")


def test_size_on_disk_counts_the_file_a_backends_record_names(tmp_path):
    from hf_bigsmall.reporting.compare import size_on_disk_mb

    (tmp_path / "config.json").write_text(json.dumps({"quantization": {"backend": "npz", "file": "weights.npz"}}))
    (tmp_path / "weights.npz").write_bytes(b"\0" * 2**20)
    (tmp_path / "notes.txt").write_bytes(b"\0" * 2**20)
    assert size_on_disk_mb(tmp_path) == 1.0


def test_a_card_that_cannot_be_built_leaves_the_published_folder_usable_and_says_so(registered, tmp_path, monkeypatch):
    """A backend whose folder carries the card (GGUF) is published before the card is written: a card that
    fails must not read as a failed export (the folder is whole) and must say how to write the card again."""
    from transformers import LlamaForCausalLM

    from hf_bigsmall.quantization import api

    registered(QuantizationBackend(
        name="bf16-weights", tasks=("text-generation",), devices=("cpu",), schemes={"bf16": "bfloat16 weights"},
        export=lambda model_dir, output_dir, method: write_quantized_folder(
            model_dir, output_dir, backend="bf16-weights", method=method, device="cpu", write=_write_bf16),
        how_to_use=_how_to_use, model_card=True))
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "fp32")
    _save_tokenizer(tmp_path / "fp32")

    def broken_card(*args, **kwargs):
        raise KeyError("lineage")

    monkeypatch.setattr(api, "build_model_card", broken_card)
    with pytest.raises(RuntimeError, match=r"bf16 is complete and usable.*model card.*build_model_card") as raised:
        quantize(tmp_path / "fp32", tmp_path / "bf16", method="bf16", backend="bf16-weights")
    assert isinstance(raised.value.__cause__, KeyError)
    folder = tmp_path / "bf16"
    assert (folder / "model.safetensors").is_file() and (folder / KIT_MARKER).is_file()
    assert not (folder / "README.md").exists() and not list(folder.glob("README.md*.partial"))
    # the folder is an export the kit recognises: quantizing again replaces it once the card builds
    monkeypatch.undo()
    assert (quantize(tmp_path / "fp32", folder, method="bf16", backend="bf16-weights") / "README.md").is_file()


def _write_npz(job: ExportJob) -> None:
    import numpy as np

    model = job.auto_class.from_pretrained(job.model_dir)
    np.savez(job.folder / "weights.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    job.record["file"] = "weights.npz"


def test_compare_names_a_user_backend_without_a_runner_whose_folder_transformers_cannot_load(registered, tmp_path):
    from transformers import LlamaForCausalLM

    from hf_bigsmall.reporting.compare import load_model

    registered(QuantizationBackend(
        name="npz-weights", tasks=("text-generation",), devices=("cpu",), schemes={"int8": "numpy arrays"},
        export=lambda model_dir, output_dir, method: write_quantized_folder(
            model_dir, output_dir, backend="npz-weights", method=method, device="cpu", write=_write_npz),
        how_to_use=_how_to_use))
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "fp32")
    _save_tokenizer(tmp_path / "fp32")
    folder = quantize(tmp_path / "fp32", tmp_path / "npz", method="int8", backend="npz-weights")
    with pytest.raises(ValueError, match=r"npz-weights.*no runner.*runner="):
        load_model(folder)


def test_a_folder_is_run_by_the_backend_its_record_names_even_when_a_built_in_would_claim_it(registered, tmp_path):
    """A user backend that writes a `model.onnx` (its own ONNX flavour) must be measured with its own runner,
    not with the built-in ONNX Runtime runner, which claims any folder holding `model.onnx`."""
    from hf_bigsmall.quantization.backends import backend_of_folder, load_runner

    class OwnRunner:
        def __init__(self, folder, num_threads=None):
            self.folder = folder

    registered(_entry(name="my-onnx", runner=OwnRunner))
    (tmp_path / "config.json").write_text(json.dumps({"quantization": {"backend": "my-onnx", "method": "int8"}}))
    (tmp_path / "model.onnx").write_bytes(b"not a graph the built-in runner could read")
    assert backend_of_folder(tmp_path).name == "my-onnx"
    assert isinstance(load_runner(tmp_path), OwnRunner)
