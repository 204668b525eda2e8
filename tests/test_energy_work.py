"""Energy of work outside training (the teacher's labelling pass), counted in a model's lineage."""

from __future__ import annotations

import json

import pytest

from hf_bigsmall.energy.lineage import build_lineage
from hf_bigsmall.energy.work import measure_work


def _busy():
    return sum(i * i for i in range(300_000))


def test_measured_work_is_an_ancestor_run_of_the_lineage(tmp_path):
    with measure_work(tmp_path / "teacher_logits", "teacher labelling"):
        _busy()
    record = json.loads((tmp_path / "teacher_logits" / "energy.json").read_text())
    assert record["training_type"] == "teacher labelling" and record["energy_kwh"] > 0 and record["co2_grams"] > 0
    (tmp_path / "student").mkdir()
    lineage = build_lineage(tmp_path / "student", [tmp_path / "teacher_logits"], name="student", run="distillation")
    labelling = [run for run in lineage["runs"] if run["relation"] == "ancestor"]
    assert len(labelling) == 1 and labelling[0]["co2_grams"] == pytest.approx(record["co2_grams"])
    assert lineage["co2_grams"] == pytest.approx(record["co2_grams"])  # the student's own run was not measured


def test_work_that_fails_writes_no_record(tmp_path):
    with pytest.raises(RuntimeError), measure_work(tmp_path / "cache", "teacher labelling"):
        raise RuntimeError("interrupted")
    assert not (tmp_path / "cache" / "energy.json").exists()
