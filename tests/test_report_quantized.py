"""The report beside quantized models: the quality-vs-latency plot, energy per query, and the verdict."""

import itertools

import pytest

from hf_bigsmall.reporting.report import (
    markdown_table,
    render_markdown,
    student_vs_quantized_teacher,
)

NAMES = ["teacher", "student", "student-pruned", "student-compact", "student-trimmed", "student-int8", "teacher-int8"]


def _report(latency, accuracy, causal=False):
    models = []
    for name, p50, quality in zip(NAMES, latency, accuracy):
        models.append({
            "name": name, "path": f"/out/{name}", "parameters": 10_000_000, "nonzero_parameters": 9_000_000, "sparsity": 0.0,
            "size_on_disk_mb": 40.0 if "int8" not in name else 10.0, "metrics": {"perplexity" if causal else "accuracy": quality},
            "latency_ms_p50": p50, "latency_ms_p95": p50 * 1.2, "throughput_samples_per_s": 100.0, "energy_joules_per_sample": p50 / 100,
            "inference_kwh_per_1k_samples": 1000 * p50 / 100 / 3.6e6, "energy_joules_per_token": p50 / 1000 if causal else None,
            "energy_source": "estimate", "ratios": {},
            "quantization": {"method": "int8", "backend": "onnxruntime", "device": "cpu", "source": "/out/" + name[:-5]}
            if name.endswith("-int8") else None,
        })
    return {"task": "text-generation" if causal else "text-classification", "dataset": "embedded/rotten_tomatoes",
                "split": "test", "num_samples": 500, "quality_metric": "perplexity" if causal else "accuracy",
                "lower_is_better": causal, "metric_names": ["perplexity" if causal else "accuracy"], "throughput_batch_size": 32,
                "device": "cpu", "num_threads": 2, "models": models}


# models that crowd together: a pruned model and its compacted copies share accuracy and nearly their latency
CROWDED = _report([20.0, 9.8, 9.7, 6.1, 6.0, 1.2, 3.5], [0.85, 0.80, 0.79, 0.79, 0.79, 0.787, 0.848])


def test_plot_labels_overlap_neither_each_other_nor_the_points(tmp_path):
    pytest.importorskip("matplotlib")
    from hf_bigsmall.reporting import plots

    written = plots.plot_comparison(CROWDED, tmp_path)
    assert list(written) == [plots.QUALITY_VS_LATENCY, plots.QUALITY_VS_SIZE, plots.QUALITY_VS_ENERGY]
    for key, label in (("latency_ms_p50", "latency"), ("size_on_disk_mb", "size"), ("energy_joules_per_sample", "J")):
        figure = plots._scatter(CROWDED, key, label, "t", tmp_path / f"{label}.png")
        axes = figure.axes[0]
        renderer = figure.canvas.get_renderer()
        boxes = [text.get_window_extent(renderer) for text in axes.texts]
        assert len(boxes) == len(NAMES)
        for first, second in itertools.combinations(boxes, 2):
            assert not first.overlaps(second)
        points = axes.transData.transform([(m[key], m["metrics"]["accuracy"]) for m in CROWDED["models"]])
        for box, (x, y) in itertools.product(boxes, points):
            assert not box.contains(x, y)


def test_table_reports_kwh_per_thousand_queries_and_joules_per_token_for_causal_lms():
    header = markdown_table(CROWDED).splitlines()[0]
    assert "kWh / 1k queries" in header and "J/token" not in header
    causal = _report([20.0, 9.0, 9.0, 6.0, 6.0, 1.0, 3.0], [12.0, 15.0, 15.0, 15.0, 15.0, 15.5, 12.1], causal=True)
    table = markdown_table(causal).splitlines()
    assert "J/token read" in table[0]
    assert table[2].split(" | ")[table[0].split(" | ").index("J/token read")] == "0.02"  # teacher: 20 ms -> 0.02 J/token


@pytest.mark.parametrize("latency, accuracy, expected", [
    # student-int8 within half a point of teacher-int8 and faster: yes, with the speed-up from the numbers
    ([20.0, 9.8, 9.7, 6.1, 6.0, 1.2, 3.6], [0.85, 0.80, 0.79, 0.79, 0.79, 0.846, 0.849],
     "**Yes.** `student-int8` is 3.00x faster than `teacher-int8`"),
    # every student is more than half a point worse: no, even though faster
    ([20.0, 9.8, 9.7, 6.1, 6.0, 1.2, 3.5], [0.85, 0.80, 0.79, 0.79, 0.79, 0.787, 0.848],
     ("**No.** No student reaches the accuracy of `teacher-int8` (0.8480, within 0.5 point): the best, `student`, "
     "has 0.8000; the fastest, `student-int8` (accuracy 0.7870), is 2.92x faster")),
    # as good but slower than the quantized teacher: no
    ([20.0, 9.8, 9.7, 6.1, 6.0, 5.0, 3.0], [0.85, 0.80, 0.79, 0.79, 0.79, 0.86, 0.848],
     "**No.** `student-int8`, the fastest model at least as good as `teacher-int8`, is not faster"),
])
def test_verdict_on_the_best_student_against_the_quantized_teacher(latency, accuracy, expected):
    report = _report(latency, accuracy)
    assert student_vs_quantized_teacher(report).startswith(expected)
    assert "## Small model, or the big one quantized?" in render_markdown(report)


def test_verdict_for_perplexity_and_without_a_quantized_teacher():
    causal = _report([20.0, 9.0, 9.0, 6.0, 6.0, 1.0, 3.0], [12.0, 15.0, 15.0, 15.0, 15.0, 12.1, 12.1], causal=True)
    assert student_vs_quantized_teacher(causal).startswith("**Yes.** `student-int8` is 3.00x faster")
    plain = _report([20.0, 9.0], [0.85, 0.8])
    assert student_vs_quantized_teacher(plain) is None
    assert "big one quantized" not in render_markdown(plain)
