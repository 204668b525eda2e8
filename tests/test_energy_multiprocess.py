"""Two real processes: the merged energy equals the per-process parts, the shared package once."""

import json

import pytest

from tests.testing_utils import REPO_ROOT, run_accelerate


@pytest.mark.multiprocess
def test_two_processes_sum_parts_without_double_counting(tmp_path):
    run_accelerate(REPO_ROOT / "tests" / "scripts" / "energy_two_processes.py", str(tmp_path))
    parts = [json.loads((tmp_path / f"part-{rank}.json").read_text()) for rank in (0, 1)]
    record = json.loads((tmp_path / "energy.json").read_text())
    assert record["num_processes"] == 2
    checkpoint = json.loads((tmp_path / "checkpoint-2" / "energy.json").read_text())
    assert checkpoint["num_processes"] == 2 and checkpoint["status"] == "in progress"  # every process's meters

    estimate_keys = [key for part in parts for key in part]
    assert len(set(estimate_keys)) == 2  # one estimate per process, distinct keys
    for part in parts:
        for key, joules in part.items():
            assert joules > 0
            assert record["by_device"][key] == pytest.approx(joules, rel=1e-9)

    (package_key,) = [key for key in record["by_device"] if key.startswith("rapl/")]
    assert record["by_device"][package_key] == pytest.approx(4.0)  # 4 steps x 1 J, counted once
    assert record["energy_joules"] == pytest.approx(4.0 + sum(sum(p.values()) for p in parts), rel=1e-9)
    assert record["energy_source"] == "estimate+rapl"

    history = json.loads((tmp_path / "log_history.json").read_text())
    intervals = [entry for entry in history if "energy_joules" in entry]
    assert [entry["step"] for entry in intervals] == [2, 4]
    (final,) = [entry for entry in history if "train_energy_joules" in entry]
    assert final["train_energy_joules"] == pytest.approx(record["energy_joules"])
    assert final["train_energy_joules_per_sample"] == pytest.approx(record["energy_joules"] / 32)  # 4 steps x 4 x 2
