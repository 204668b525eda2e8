"""emissions.json: every derived model carries its own run plus the runs of the models it was made from."""

import json

import pytest
from huggingface_hub import ModelCard

from hf_bigsmall.energy.lineage import build_lineage, load_lineage, save_lineage
from hf_bigsmall.hub.card import build_model_card
from hf_bigsmall.reporting.compare import _training_energy
from hf_bigsmall.reporting.report import render_markdown

from .test_card import _report
from .testing_utils import tiny_bert_config

GRID = 500.0  # g/kWh, so grams are kWh x 500
OWN_KWH = {"teacher": 4e-4, "student": 2e-4, "student-pruned": 1e-4}


def _save(folder, kwh=None, training_type="fine-tuning"):
    from transformers import BertForSequenceClassification

    BertForSequenceClassification(tiny_bert_config(num_hidden_layers=1)).save_pretrained(folder)
    if kwh is not None:
        (folder / "energy.json").write_text(json.dumps({
            "energy_kwh": kwh, "energy_joules": kwh * 3.6e6, "co2_grams": kwh * GRID, "energy_source": "estimate",
            "is_estimate": True, "training_type": training_type, "grid_intensity_g_per_kwh": GRID,
            "hardware": "test CPU", "meters": []}))


@pytest.fixture
def family(tmp_path):
    """teacher -> student (distilled) -> student-pruned (distilled on) -> student-compact (no training)."""
    folders = {name: tmp_path / name for name in (*OWN_KWH, "student-compact")}
    for name, folder in folders.items():
        _save(folder, OWN_KWH.get(name), "fine-tuning" if name == "teacher" else "distillation")
    parents = {"teacher": [], "student": ["teacher"], "student-pruned": ["student", "teacher"],
               "student-compact": ["student-pruned"]}
    for name, folder in folders.items():
        record = build_lineage(folder, [folders[p] for p in parents[name]], name=name, run=name,
                               trained=name in OWN_KWH)
        save_lineage(folder, record)
    return folders


def test_lineage_adds_own_run_and_each_ancestor_once(family):
    records = {name: load_lineage(folder) for name, folder in family.items()}
    assert records["teacher"]["co2_grams"] == pytest.approx(OWN_KWH["teacher"] * GRID)
    assert records["student"]["energy_kwh"] == pytest.approx(6e-4)
    pruned = records["student-pruned"]
    # the teacher is reached through the student and directly: counted once
    assert [(r["model"], r["relation"]) for r in pruned["runs"]] == [
        ("student-pruned", "own"), ("student", "ancestor"), ("teacher", "ancestor")]
    assert pruned["energy_kwh"] == pytest.approx(7e-4) and pruned["own_energy_kwh"] == pytest.approx(1e-4)
    compacted = records["student-compact"]
    assert compacted["own_energy_kwh"] is None and compacted["runs"][0]["trained"] is False
    assert compacted["co2_grams"] == pytest.approx(7e-4 * GRID) and "own training run plus" in compacted["how"]


def test_cards_and_report_state_the_emissions_of_the_lineage(family):
    for name, folder in family.items():
        data = ModelCard(str(build_model_card(folder)), ignore_metadata_errors=False).data
        total = load_lineage(folder)["co2_grams"]
        assert data.co2_eq_emissions["emissions"] == pytest.approx(total, rel=1e-5), name
    compact_card = str(build_model_card(family["student-compact"]))
    source = ModelCard(compact_card).data.co2_eq_emissions["source"]
    assert source.startswith("sum of the runs this model came from") and "of teacher" in source
    assert "## Emissions of the runs it came from" in compact_card and "| no training |" in compact_card

    report = _report(list(family.values()))
    for row, folder in zip(report["models"], family.values()):
        row.update(_training_energy(folder))
    rows = {row["name"]: row for row in report["models"]}
    assert rows["teacher"]["training_energy_kwh"] == pytest.approx(4e-4)  # the big model's cost is reported
    assert rows["student-compact"].get("training_energy_kwh") is None  # compaction trains nothing
    assert rows["student-compact"]["lineage_co2_grams"] == pytest.approx(7e-4 * GRID)
    markdown = render_markdown(report)
    assert "With ancestors" in markdown and "| `student-compact` | - | - | 0.0007 |" in markdown


def test_models_that_only_share_a_folder_name_are_two_runs(tmp_path):
    teacher, student = tmp_path / "teacher" / "final", tmp_path / "student" / "final"
    _save(teacher, 4e-4)
    _save(student, 2e-4, "distillation")
    save_lineage(teacher, build_lineage(teacher, run="fine-tuning"))
    record = build_lineage(student, [teacher], run="distillation")  # both named "final" by default
    assert record["energy_kwh"] == pytest.approx(6e-4) and len(record["runs"]) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1e-4])
def test_a_run_whose_figures_are_not_finite_counts_as_not_measured(tmp_path, bad):
    parent, child = tmp_path / "teacher", tmp_path / "student"
    _save(parent, bad)
    _save(child, 2e-4, "distillation")
    assert build_lineage(parent)["co2_grams"] is None  # no NaN total, so no NaN co2_eq_emissions on a card
    record = build_lineage(child, [parent])
    assert record["energy_kwh"] == pytest.approx(2e-4) and record["co2_grams"] == pytest.approx(2e-4 * GRID)
    assert record["runs"][1]["energy_kwh"] is None


@pytest.mark.parametrize("name", ["emissions.json", "energy.json"])
def test_a_damaged_record_raises_a_value_error_naming_it(tmp_path, name):
    parent, child = tmp_path / "teacher", tmp_path / "student"
    _save(parent, 4e-4)
    _save(child, 2e-4, "distillation")
    (parent / name).write_text('{"runs": [')
    with pytest.raises(ValueError, match=f"{name}.*truncated or damaged"):
        build_lineage(child, [parent])


@pytest.mark.parametrize("bad", [float("nan"), -1e-4])
def test_a_card_never_states_nan_emissions(tmp_path, bad):
    _save(tmp_path / "model", bad)  # an energy.json with NaN (or negative) figures and no emissions.json
    card = build_model_card(tmp_path / "model", energy=True)
    assert "co2_eq_emissions" not in card.data.to_dict()
    from hf_bigsmall.energy.card import co2_eq_emissions

    with pytest.raises(ValueError, match=r"model.* not a finite number"):  # names the damaged record
        co2_eq_emissions(tmp_path / "model")


def test_the_report_never_states_nan_training_energy(tmp_path):
    _save(tmp_path / "model", float("nan"))
    figures = _training_energy(tmp_path / "model")
    assert figures["training_energy_kwh"] is None and figures["training_co2_grams"] is None
