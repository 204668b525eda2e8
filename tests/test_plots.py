"""The comparison and importance plots: better points up, every panel titled and labelled, dropped blocks marked."""

import pytest
import torch

pytest.importorskip("matplotlib")


def _report(metric, lower_is_better, values, decode=None):
    rows = [{"name": name, "metrics": {metric: value}, "latency_ms_p50": 10.0 - i, "size_on_disk_mb": 5.0 - i,
             "energy_joules_per_sample": 0.5, "energy_source": "estimate",
             "decode_tokens_per_s": None if decode is None else decode[i]}
            for i, (name, value) in enumerate(zip(("teacher", "student"), values))]
    return {"quality_metric": metric, "lower_is_better": lower_is_better, "dataset": "d", "num_samples": 8,
            "device": "cpu", "models": rows}


@pytest.mark.parametrize("metric, lower, inverted", [("perplexity", True, True), ("accuracy", False, False)])
def test_better_quality_points_up(tmp_path, metric, lower, inverted):
    from hf_bigsmall.reporting.plots import _scatter

    figure = _scatter(_report(metric, lower, [40.0, 60.0] if lower else [0.9, 0.8]), "latency_ms_p50", "latency",
                      "t", tmp_path / "q.png")
    axes = figure.axes[0]
    assert bool(axes.yaxis_inverted()) is inverted
    # the better model is drawn higher on the figure, whichever way its metric runs
    teacher_y, student_y = (axes.transData.transform((x, y))[1] for x, y in axes.collections[0].get_offsets())
    assert teacher_y > student_y
    assert ("axis inverted" in axes.get_ylabel()) is inverted


def test_causal_lms_get_a_decode_speed_plot(tmp_path):
    from matplotlib.image import imread

    from hf_bigsmall.reporting.plots import QUALITY_VS_DECODE, plot_comparison

    written = plot_comparison(_report("perplexity", True, [40.0, 60.0], decode=[10.0, 14.0]), tmp_path)
    assert imread(written[QUALITY_VS_DECODE]).ndim == 3
    assert QUALITY_VS_DECODE not in plot_comparison(_report("accuracy", False, [0.9, 0.8]), tmp_path / "cls")


def test_importance_plot_has_titles_labels_and_marks_the_dropped_blocks(tmp_path):
    from matplotlib.colors import to_rgba
    from matplotlib.image import imread

    from hf_bigsmall.pruning.importance import Importance
    from hf_bigsmall.reporting.plots import plot_importance

    importance = Importance(neurons=torch.rand(5, 8), heads=torch.rand(5, 2), channels=torch.rand(4),
                            blocks=torch.tensor([0.3, 0.05, 0.2, 0.02, 0.4]), num_samples=16)
    figure = plot_importance(importance, tmp_path / "importance.png", kept_layers=[0, 2, 4])
    assert imread(tmp_path / "importance.png").ndim == 3
    assert "2 of 5 blocks dropped, 1, 3" in figure._suptitle.get_text()
    for axes in figure.axes:
        assert axes.get_title() and axes.get_ylabel() and axes.get_xlabel()
        crosses = [c for c in axes.collections if c.get_label() == "dropped block"]
        assert len(crosses) == 1 and [x for x, _ in crosses[0].get_offsets()] == [1, 3]
    bars = figure.axes[0].patches
    assert [bar.get_facecolor() == to_rgba("lightgray") for bar in bars] == [False, True, False, True, False]


def _served_report():
    """Seven models as the LLM quickstart measures them: (perplexity, decode tokens/s)."""
    figures = {"teacher": (45.0, 9.0), "student-pruned": (900.0, 12.0), "student": (60.0, 12.0),
               "teacher-int8": (45.3, 60.0), "student-int8": (60.5, 80.0), "teacher-int4": (64.0, 70.0),
               "student-int4": (85.0, 95.0)}
    rows = [{"name": name, "metrics": {"perplexity": ppl}, "latency_ms_p50": 10.0, "size_on_disk_mb": 5.0,
             "energy_joules_per_sample": 0.5, "energy_source": "estimate", "decode_tokens_per_s": speed}
            for name, (ppl, speed) in figures.items()]
    return {"quality_metric": "perplexity", "lower_is_better": True, "dataset": "d", "num_samples": 8,
            "device": "cpu", "models": rows}


def test_the_pareto_front_holds_the_models_no_other_beats_on_both_axes():
    from hf_bigsmall.reporting.pareto import decode_points, dominated_by, pareto_front

    points = decode_points(_served_report())
    # the teacher stays (45.0 < 45.3: nearly as good is not as good); teacher-int8 beats the student,
    # student-int8 beats teacher-int4; student-pruned is beaten by every faster model, named by the fastest
    assert pareto_front(points) == ["teacher", "teacher-int8", "student-int8", "student-int4"]
    assert dominated_by(points) == {"student-pruned": "student-int4", "student": "teacher-int8",
                                    "teacher-int4": "student-int8"}
    # equal points dominate neither; accuracy runs the other way
    assert dominated_by({"a": (1.0, 2.0), "b": (1.0, 2.0)}) == {}
    assert pareto_front({"a": (0.9, 1.0), "b": (0.8, 2.0), "c": (0.7, 1.5)}, lower_quality_is_better=False) == ["a", "b"]


def test_quality_vs_decode_speed_draws_the_front_and_is_written(tmp_path, monkeypatch):
    from matplotlib.image import imread

    from hf_bigsmall.reporting import plots
    from hf_bigsmall.reporting.plots import QUALITY_VS_DECODE_SPEED, plot_comparison

    figures = {}
    draw = plots._scatter

    def keep(report, x_key, *args, **kwargs):
        figures[x_key] = draw(report, x_key, *args, **kwargs)
        return figures[x_key]

    monkeypatch.setattr(plots, "_scatter", keep)
    report = _served_report()
    written = plot_comparison(report, tmp_path)
    assert written[QUALITY_VS_DECODE_SPEED] == tmp_path / "quality_vs_decode_speed.png"
    assert imread(tmp_path / "quality_vs_decode_speed.png").ndim == 3
    axes = figures["decode_tokens_per_s"].axes[0]
    (line,) = axes.lines
    assert [tuple(point) for point in line.get_xydata()] == [(9.0, 45.0), (60.0, 45.3), (80.0, 60.5), (95.0, 85.0)]
    assert len(axes.collections[0].get_offsets()) == 7  # every model a point
    assert {text.get_text().split(" (")[0] for text in axes.texts} == {m["name"] for m in report["models"]}


def test_a_model_without_a_finite_quality_is_no_point_of_the_front():
    """A broken export whose logits gave a NaN perplexity compares as neither better nor worse than anything:
    it must not be drawn or named as a model worth serving."""
    from hf_bigsmall.reporting.pareto import decode_points, pareto_front

    report = _served_report()
    report["models"][-1]["metrics"]["perplexity"] = float("nan")
    broken = report["models"][-1]["name"]
    points = decode_points(report)
    assert broken not in points and broken not in pareto_front(points)
