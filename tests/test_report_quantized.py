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
            "name": name, "path": f"/out/{name}", "parameters": 10_000_000,
            "nonzero_parameters": 9_000_000 if name.startswith("teacher") else 4_000_000, "sparsity": 0.0,
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


def test_a_model_as_large_as_the_teacher_is_no_student_in_the_verdict():
    """The LLM quickstart's teacher-corrected (the teacher fine-tuned) is compared too: the verdict on the best
    student must not answer with it."""
    report = _report([20.0, 9.8, 9.7, 6.1, 6.0, 1.2, 3.5], [0.85, 0.80, 0.79, 0.79, 0.79, 0.787, 0.848])
    corrected = {**report["models"][0], "name": "teacher-corrected", "path": "/out/teacher-corrected",
                 "latency_ms_p50": 3.0, "metrics": {"accuracy": 0.86}}
    report["models"].insert(1, corrected)
    assert "teacher-corrected" not in student_vs_quantized_teacher(report)
    assert student_vs_quantized_teacher(report).startswith("**No.** No student reaches the accuracy of `teacher-int8`")


def test_verdict_for_perplexity_and_without_a_quantized_teacher():
    causal = _report([20.0, 9.0, 9.0, 6.0, 6.0, 1.0, 3.0], [12.0, 15.0, 15.0, 15.0, 15.0, 12.1, 12.1], causal=True)
    assert student_vs_quantized_teacher(causal).startswith("**Yes.** `student-int8` is 3.00x faster")
    plain = _report([20.0, 9.0], [0.85, 0.8])
    assert student_vs_quantized_teacher(plain) is None
    assert "big one quantized" not in render_markdown(plain)


def test_of_equally_fast_students_the_verdict_names_the_better_one():
    # a pruned student shows the healed one's timing (`speed_from`): equally fast, the healed one is better
    report = _report([20.0, 9.0, 9.0], [12.0, 15.0, 30.0], causal=True)
    report["models"][2]["speed_from"] = "student"
    report["models"].append({**report["models"][0], "name": "teacher-int8", "metrics": {"perplexity": 12.1},
                             "latency_ms_p50": 18.0, "quantization": {"method": "int8", "source": "/out/teacher"}})
    report["models"][1], report["models"][2] = report["models"][2], report["models"][1]  # the pruned one listed first
    assert "the fastest, `student` (perplexity 15.0000)" in student_vs_quantized_teacher(report)
    assert "| `student-pruned` (speed of `student`) |" in markdown_table(report)


def _served(figures: dict, caveat: str | None = None) -> dict:
    """A causal-LM report as the LLM quickstart writes it: `{name: (perplexity, decode tokens/s)}`, the
    `-int8`/`-int4` rows served by ONNX Runtime GenAI from the folder their name starts with."""
    models = []
    for name, (perplexity, decode) in figures.items():
        source, _, method = name.rpartition("-")
        record = ({"method": method, "backend": "onnxruntime-genai", "device": "cpu", "source": f"/out/{source}"}
                  if method in ("int8", "int4") else None)
        models.append({"name": name, "path": f"/out/{name}", "metrics": {"perplexity": perplexity},
                       "latency_ms_p50": 10.0, "decode_tokens_per_s": decode, "quantization": record,
                       "speed_ratio_caveat": caveat if name == "student-int4" else None})
    return {"quality_metric": "perplexity", "lower_is_better": True, "models": models}


BASE = {"teacher": (45.0, 9.0), "student": (60.0, 12.0), "teacher-int8": (45.3, 60.0), "student-int8": (60.5, 80.0)}


def test_served_verdict_student_faster_at_a_perplexity_cost():
    from hf_bigsmall.reporting.report import served_verdict

    lines = served_verdict(_served({**BASE, "teacher-int4": (64.0, 70.0), "student-int4": (85.0, 91.0)}))
    assert lines[0] == ("- int8 in onnxruntime-genai: **Yes.** `student-int8` decodes 1.33x faster than `teacher-int8` "
                        "(80.0 against 60.0 tokens/s at batch size 1), at 1.34x its perplexity (60.50 against 45.30).")
    assert lines[1].startswith("- int4 in onnxruntime-genai: **Yes.** `student-int4` decodes 1.30x faster than "
                               "`teacher-int4` (91.0 against 70.0 tokens/s at batch size 1), at 1.33x its perplexity")
    # teacher-int8 is as fast as the student in fp32 at a better perplexity; student-int8 beats teacher-int4
    assert lines[2] == ("- Dominated (another model has a better perplexity and decodes faster: serving them makes no "
                        "sense): `student` (by `teacher-int8`), `teacher-int4` (by `student-int8`).")
    assert lines[3] == ("- On the Pareto front (`quality_vs_decode_speed.png`): `teacher`, `teacher-int8`, "
                        "`student-int8`, `student-int4`.")


def test_served_verdict_says_no_when_the_student_is_slower_and_names_dominated_students():
    from hf_bigsmall.reporting.report import render_markdown, served_verdict

    report = _served({**BASE, "teacher-int4": (64.0, 70.0), "student-int4": (85.0, 66.0)}, caveat="the CPU was busy")
    lines = served_verdict(report)
    assert lines[1].startswith("- int4 in onnxruntime-genai: **No.** `student-int4` decodes 0.94x as fast as "
                               "`teacher-int4` (66.0 against 70.0 tokens/s at batch size 1), at 1.33x its perplexity")
    assert lines[1].endswith("The timing behind it is not trustworthy (`student-int4`: the CPU was busy).")
    # slower and worse than models served beside it: dominated, and named with the fastest model that beats it
    assert "`student-int4` (by `student-int8`)" in lines[2]
    assert "`student-int4`" not in lines[3]
    markdown = render_markdown({**report, "task": "text-generation", "dataset": "d", "num_samples": 4,
                                "throughput_batch_size": 8, "models": [
                                    {**m, "parameters": 1, "nonzero_parameters": 1, "sparsity": 0.0, "ratios": {}}
                                    for m in report["models"]]})
    assert "## Served the way LLMs are served: student against teacher, same engine and precision" in markdown
    assert "**No.** `student-int4` decodes 0.94x as fast" in markdown


def test_served_verdict_with_nothing_dominated_and_without_a_served_pair():
    from hf_bigsmall.reporting.report import served_pairs, served_verdict, student_vs_quantized_teacher

    report = _served({"teacher": (45.0, 9.0), "student": (60.0, 12.0), "teacher-int4": (64.0, 70.0),
                      "student-int4": (85.0, 91.0)})
    assert [(t["name"], s["name"]) for t, s in served_pairs(report)] == [("teacher-int4", "student-int4")]
    assert served_verdict(report)[-2] == ("- No model is dominated: each decodes faster than every model with a better "
                                          "perplexity.")
    # a quantized teacher is never counted as a student in the latency verdict
    assert "teacher-int4" not in student_vs_quantized_teacher(_served({**BASE, "teacher-int4": (40.0, 70.0)}))
    # nothing served the same way as a quantized teacher, or no decode speeds: no served verdict
    assert served_verdict(_served({"teacher": (45.0, 9.0), "student": (60.0, 12.0), "student-int4": (85.0, 91.0)})) == []
    assert served_verdict(_served({"teacher": (45.0, None), "teacher-int4": (64.0, None),
                                   "student-int4": (85.0, None)})) == []


def test_served_verdict_does_not_say_yes_from_a_decode_ratio_inside_the_noise():
    """A student 2% faster than the teacher served the same way has not shown a gain: decode speeds of one
    model differ by that much from run to run on a CPU, so the verdict must not be a plain Yes."""
    from hf_bigsmall.reporting.report import served_verdict

    lines = served_verdict(_served({**BASE, "teacher-int4": (64.0, 70.0), "student-int4": (85.0, 71.4)}))
    assert "**Yes.**" not in lines[1]
    assert lines[1].startswith("- int4 in onnxruntime-genai: **Not shown.** `student-int4` decodes 1.02x faster than "
                               "`teacher-int4`")
    assert "under 5%" in lines[1]
    # a gain beyond the band is still a Yes, a loss beyond it still a No
    assert "**Yes.**" in lines[0]
    assert "**No.**" in served_verdict(_served({**BASE, "teacher-int4": (64.0, 70.0), "student-int4": (85.0, 60.0)}))[1]


def test_a_quantized_teacher_recorded_with_a_relative_source_is_still_the_teachers(tmp_path, monkeypatch):
    """quantize records its source as given ("out/teacher"); a comparison run from another directory, with
    absolute paths, must still see teacher-int4 as the teacher served, not as a student."""
    from hf_bigsmall.reporting.report import served_pairs, student_vs_quantized_teacher

    report = _served({**BASE, "teacher-int4": (64.0, 70.0), "student-int4": (85.0, 91.0)})
    for model in report["models"]:
        model["path"] = f"/work/project{model['path']}"  # /work/project/out/<name>
        if model["quantization"]:
            model["quantization"]["source"] = model["quantization"]["source"].lstrip("/")  # "out/<source>"
    monkeypatch.chdir(tmp_path)
    assert [(t["name"], s["name"]) for t, s in served_pairs(report)] == [
        ("teacher-int8", "student-int8"), ("teacher-int4", "student-int4")]
    assert "teacher-int4" not in student_vs_quantized_teacher(report)


def test_the_verdict_leaves_out_and_names_models_without_a_finite_score():
    """A NaN perplexity (a broken export) is never "the best", nor a NaN quantized teacher beaten by no one."""
    nan = float("nan")
    report = _report([20.0, 2.0, 3.0, 6.0, 6.0, 1.0, 5.0], [10.0, nan, 14.0, 15.0, 15.0, 15.0, 11.0], causal=True)
    report["models"] = [m for m in report["models"] if m["name"] in ("teacher", "student", "student-pruned",
                                                                     "teacher-int8")]
    verdict = student_vs_quantized_teacher(report)
    assert verdict.startswith("**No.** No student reaches the perplexity of `teacher-int8`")
    assert "the best, `student-pruned`, has 14.0000" in verdict and "the fastest, `student-pruned`" in verdict
    assert verdict.endswith("No finite perplexity for `student`: left out of this verdict.")
    report["models"][-1]["metrics"]["perplexity"] = nan
    assert student_vs_quantized_teacher(report).startswith(
        "**Not shown.** `teacher-int8` has no finite perplexity to compare the students with.")
    report["models"][2]["metrics"]["perplexity"] = float("inf")
    report["models"][-1]["metrics"]["perplexity"] = 11.0
    assert student_vs_quantized_teacher(report) == (
        "**Not shown.** No student has a finite perplexity. No finite perplexity for `student`, `student-pruned`: "
        "left out of this verdict.")


def test_a_perplexity_past_the_largest_float_is_inf_and_reported_as_such():
    """exp() of a mean loss above ~709.8 nats overflows: the metric gives inf, and the report prints it without
    a meaningless ratio."""
    import math

    from hf_bigsmall.metrics import load_metric

    metric = load_metric("perplexity")
    assert metric.compute(nll_sums=[40000.0], num_tokens=[2]) == {"perplexity": math.inf, "mean_nll": 20000.0}
    assert metric.compute(nll_sums=[6.0, 2.0], num_tokens=[3, 1])["perplexity"] == pytest.approx(math.exp(2.0))
    assert math.isnan(metric.compute(nll_sums=[math.nan], num_tokens=[2])["perplexity"])  # not finite is not inf
    report = _report([20.0, 2.0, 3.0], [10.0, math.inf, 14.0], causal=True)
    markdown = render_markdown(report)
    assert "`student` inf;" in markdown and "infx" not in markdown
    assert "`student-pruned` 14.00 (1.40x the reference's)" in markdown
