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
