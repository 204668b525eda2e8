"""`hf-bigsmall`: every command's `--help`, the quickstart's `--task`, and suggestions for misspelled flags."""

import json

import pytest

from hf_bigsmall.cli import main


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # argparse wraps help at the terminal's width: one line per option


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0, argv
    return capsys.readouterr().out


def test_top_level_help_names_every_command(capsys):
    text = _help(capsys)
    for command in ("quickstart", "compare", "push", "quantize"):
        assert command in text.split("options:")[0].split("\n", 3)[-1], command
    assert "`quickstart`, `compare`, `push` and `quantize`" in text


@pytest.mark.parametrize("command", ["compare", "push", "quantize"])
def test_each_command_has_a_help(capsys, command):
    assert f"usage: hf-bigsmall {command}" in _help(capsys, command)


@pytest.mark.parametrize("task", ["causal-lm", "causal_lm"])
def test_causal_lm_quickstart_help_prints(capsys, task):
    text = _help(capsys, "quickstart", "--task", task)
    assert "(cosine, 10% warm-up)" in text
    assert "--correct_teacher_steps" in text and "--bf16" in text


@pytest.mark.parametrize("argv", [["quickstart"], ["quickstart", "--task", "text-classification"],
                                  ["quickstart", "--task=text_classification"]])
def test_classification_quickstart_help_lists_the_task(capsys, argv):
    text = _help(capsys, *argv)
    assert "--task {text-classification,causal-lm}" in text
    assert "`--task causal-lm --help` lists its options" in text


def test_negative_switches_say_what_they_do(capsys):
    text = " ".join(_help(capsys, "quickstart").split())  # one space between an option and its help
    assert "--no_quantize, --no-quantize Turn --quantize off (it is on by default)." in text
    assert "--no_trim_vocabulary, --no-trim-vocabulary Turn --trim_vocabulary off" in text
    # the positive switch keeps its own help, once
    assert text.count("Also write student-int8 and teacher-int8") == 1


def test_an_unknown_task_names_the_choices(capsys):
    assert main(["quickstart", "--task", "causal-llm"]) == 2
    assert "choose text-classification or causal-lm (did you mean 'causal-lm'?)" in capsys.readouterr().err


def test_a_misspelled_flag_gets_a_suggestion(tmp_path, capsys):
    assert main(["quickstart", "--fsat", "--output_dir", str(tmp_path / "out")]) == 2
    assert "--fsat: did you mean --fast?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["quickstart", "--task", "causal-lm", "--fast", "--teacher", "tiny-random-llama", "--heal_stesp", "3",
                 "--output_dir", str(tmp_path / "out")]) == 2
    assert "--heal_stesp: did you mean --heal_steps?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path), "--max_smaples", "3"])
    assert exit_info.value.code == 2
    assert "--max_smaples: did you mean --max_samples?" in capsys.readouterr().err


@pytest.mark.parametrize("task, other, record", [
    ("text-classification", "causal-lm", {"task": "text-generation", "models": []}),
    ("causal-lm", "text-classification", {"task": "text-classification", "models": []}),
])
def test_a_quickstart_refuses_the_other_pipelines_folder(tmp_path, capsys, task, other, record):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps(record))  # left by a run made before bigsmall_run.json
    before = sorted(p.name for p in out.iterdir())
    assert main(["quickstart", "--task", task, "--fast", "--output_dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"holds the results of a `--task {other}` quickstart run" in error and "--output_dir" in error
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written


def test_each_pipeline_has_its_own_default_folder():
    from hf_bigsmall.quickstart import QuickstartArguments
    from hf_bigsmall.quickstart_causal_lm import CausalLMQuickstartArguments

    assert QuickstartArguments().output_dir != CausalLMQuickstartArguments().output_dir


def test_the_run_record_decides_over_the_folder_contents(tmp_path):
    from hf_bigsmall.quickstart import _task_of_folder, check_output_dir, record_run

    assert _task_of_folder(tmp_path) is None  # an empty or foreign folder is anyone's
    check_output_dir(tmp_path, "causal-lm")
    (tmp_path / "teacher_logits").mkdir()
    assert _task_of_folder(tmp_path) == "text-classification"
    record_run(tmp_path, "causal-lm", teacher="t", dataset="d")
    check_output_dir(tmp_path, "causal-lm")
    with pytest.raises(ValueError, match="bigsmall_output_causal_lm|--task causal-lm"):
        check_output_dir(tmp_path, "text-classification")


def test_a_quickstart_refuses_a_report_of_the_users_before_it_trains(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# My own report\n")
    assert main(["quickstart", "--fast", "--output_dir", str(out)]) == 2
    assert "report.md exists and is not a report hf_bigsmall wrote" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["report.md"]  # nothing written


@pytest.mark.parametrize("argv, message", [
    (["--calibration_samples", "64"], "needs --calibration_dataset"),
    (["--calibration_dataset", "embedded/news", "--calibration_samples", "0"], "--calibration_samples must be >= 1"),
])
def test_quantize_refuses_calibration_samples_it_would_not_use(tmp_path, capsys, argv, message):
    # the model folder does not exist: the refusal comes before anything is read or written
    assert main(["quantize", str(tmp_path / "model"), str(tmp_path / "out"), *argv]) == 2
    error = capsys.readouterr().err
    assert message in error
    assert "--calibration_dataset embedded/news" in error  # the fix is named
    assert list(tmp_path.iterdir()) == []


def test_quantize_help_says_when_calibration_samples_counts(capsys):
    text = " ".join(_help(capsys, "quantize").split())
    assert "--calibration_samples CALIBRATION_SAMPLES calibration blocks of 128 tokens with --calibration_dataset " \
           "(default 32)" in text
