"""Energy meters: RAPL against a sysfs-shaped tree, the CPU-time estimate, fallbacks, carbon."""

import logging
import os
import time

import pytest

from hf_bigsmall.energy.carbon import GRID_INTENSITY_G_PER_KWH, WORLD_AVERAGE_G_PER_KWH, resolve_grid_intensity
from hf_bigsmall.energy.meters import CpuTimeEstimateMeter, MeterUnavailable, RaplMeter, select_meters
from hf_bigsmall.energy.meters.base import EnergyMeter
from hf_bigsmall.energy.meters.estimate import DEFAULT_WATTS_PER_THREAD, resolve_cpu_power
from hf_bigsmall.energy.tracker import EnergyTracker, subtract


def write_zone(folder, name, energy_uj, max_uj=1_000_000):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "name").write_text(f"{name}\n")
    (folder / "energy_uj").write_text(f"{energy_uj}\n")
    (folder / "max_energy_range_uj").write_text(f"{max_uj}\n")


@pytest.fixture
def powercap(tmp_path):
    """Two packages with dram, core (inside the package) and a psys zone (overlaps the packages)."""
    root = tmp_path / "powercap"
    write_zone(root / "intel-rapl:0", "package-0", 100)
    write_zone(root / "intel-rapl:0" / "intel-rapl:0:0", "core", 50)
    write_zone(root / "intel-rapl:0" / "intel-rapl:0:1", "dram", 10)
    write_zone(root / "intel-rapl:1", "package-1", 200)
    write_zone(root / "intel-rapl:2", "psys", 999)
    return root


def set_uj(root, zone, value):
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_rapl_reads_package_and_dram_only(powercap):
    meter = RaplMeter(powercap)
    assert meter.read() == {key: 0.0 for key in meter.read()}
    set_uj(powercap, "intel-rapl:0", 100 + 3_000)
    set_uj(powercap, "intel-rapl:0/intel-rapl:0:0", 50 + 2_000)  # core: already inside the package
    set_uj(powercap, "intel-rapl:0/intel-rapl:0:1", 10 + 500)
    set_uj(powercap, "intel-rapl:1", 200 + 1_000)
    set_uj(powercap, "intel-rapl:2", 999 + 10_000)  # psys: never counted
    readings = meter.read()
    names = sorted(key.split("/", 2)[2] for key in readings)
    assert names == ["package-0", "package-0/dram", "package-1"]
    assert sum(readings.values()) == pytest.approx((3_000 + 500 + 1_000) / 1e6)
    assert all(key.startswith("rapl/") for key in readings)


def test_rapl_wraparound(powercap):
    meter = RaplMeter(powercap)
    set_uj(powercap, "intel-rapl:0", 999_900)
    meter.read()
    set_uj(powercap, "intel-rapl:0", 400)  # wrapped at max_energy_range_uj = 1,000,000
    package = next(v for k, v in meter.read().items() if k.endswith("/package-0"))
    assert package == pytest.approx(((999_900 - 100) + (1_000_000 - 999_900 + 400)) / 1e6)


def test_rapl_counts_every_wrap_of_a_window_it_is_not_asked_to_read_in(powercap):
    # a window read only at its start and end (measure_work, an evaluation) used to lose every range the
    # counter went round in between: the meter reads it in the background
    meter = RaplMeter(powercap, poll_interval_s=0.02)
    start = meter.read()
    for value in (600_000, 100_000, 700_000, 300_000):  # two wraps of the 1,000,000 range, none seen by the caller
        set_uj(powercap, "intel-rapl:0", value)
        time.sleep(0.2)
    package = next(v - start[k] for k, v in meter.read().items() if k.endswith("/package-0"))
    meter.close()
    assert package == pytest.approx((2_000_000 + 300_000 - 100) / 1e6)


def test_rapl_permission_error_is_unavailable(powercap, monkeypatch):
    from hf_bigsmall.energy.meters import rapl

    def denied(zone):  # what a non-root user gets on Linux >= 5.10 (root would read a chmod 0 file)
        raise PermissionError(13, "Permission denied", str(zone.path / "energy_uj"))

    monkeypatch.setattr(rapl.RaplZone, "read_raw", denied)
    with pytest.raises(MeterUnavailable, match="permission denied"):
        RaplMeter(powercap)


def test_rapl_permission_error_reported_once_then_estimate(powercap, monkeypatch, caplog):
    from hf_bigsmall.energy.meters import base, rapl

    monkeypatch.setattr(rapl.RaplZone, "read_raw", lambda zone: (_ for _ in ()).throw(PermissionError(13, "denied", "energy_uj")))
    monkeypatch.setattr(base, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        first = select_meters("cpu", powercap_root=powercap)
        second = select_meters("cpu", powercap_root=powercap)
    assert [m.energy_source for m in first + second] == ["estimate", "estimate"]
    assert caplog.text.count("not readable") == 1 and "estimated from process CPU time" in caplog.text


def test_rapl_unreadable_counter_falls_back_to_estimate(powercap, caplog):
    """A permission error, whoever runs the test: the file turns unreadable mid-run."""
    meters = select_meters("cpu", powercap_root=powercap)
    assert [m.energy_source for m in meters] == ["rapl"]
    tracker = EnergyTracker(meters)
    set_uj(powercap, "intel-rapl:0", 100 + 5_000_000)  # 5 J before the failure
    first = tracker.read()
    (powercap / "intel-rapl:0" / "energy_uj").unlink()  # the counter vanishes
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        second = tracker.read()
        third = tracker.read()
    assert sum(first.values()) == pytest.approx(5.0)
    assert sum(second.values()) == pytest.approx(5.0)  # nothing measured earlier is lost
    assert any(k.startswith("estimate/") for k in third)
    assert tracker.energy_source == "estimate+rapl"
    assert "rapl meter failed" in caplog.text and "5.0 J it measured are kept" in caplog.text
    assert caplog.text.count("rapl meter failed") == 1


def test_select_meters_without_rapl_uses_estimate(tmp_path):
    meters = select_meters("cpu", powercap_root=tmp_path / "absent")
    assert [m.energy_source for m in meters] == ["estimate"]
    with pytest.raises(ValueError, match="backend must be one of"):
        select_meters("cpu", backend="magic")


def busy_loop(seconds):
    end = time.process_time() + seconds
    total = 0
    while time.process_time() < end:
        total += sum(range(1000))
    return total


def test_estimate_is_proportional_to_cpu_time_of_a_busy_loop():
    meter = CpuTimeEstimateMeter(cpu_tdp_watts=40, cpu_threads=10)  # 4 W per busy thread
    before = meter.read()
    cpu_before = time.process_time()
    busy_loop(0.3)
    cpu_used = time.process_time() - cpu_before
    window = subtract(meter.read(), before)
    (key, joules), = window.items()
    assert key == f"estimate/{os.uname().nodename}/{os.getpid()}"
    assert joules == pytest.approx(4.0 * cpu_used, rel=0.05)
    assert joules >= 4.0 * 0.3 * 0.99
    time.sleep(0.2)  # sleeping uses no CPU time, so no estimated energy
    assert sum(subtract(meter.read(), before).values()) == pytest.approx(joules, abs=0.05)


def test_estimate_parameters_are_stated():
    described = CpuTimeEstimateMeter(cpu_tdp_watts=64, cpu_threads=16).describe()
    assert described["energy_source"] == "estimate"
    assert described["watts_per_thread"] == 4.0 and described["origin"] == "user"
    assert "CPU time" in described["method"]


@pytest.mark.parametrize(
    "model, expected_watts, origin",
    [
        ("AMD EPYC 7763 64-Core Processor", 280 / 128, "table"),
        ("Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz", 270 / 80, "table"),
        ("AMD EPYC", DEFAULT_WATTS_PER_THREAD, "default"),
    ],
)
def test_cpu_power_table_and_default(model, expected_watts, origin, monkeypatch):
    monkeypatch.delenv("HF_BIGSMALL_CPU_TDP_WATTS", raising=False)
    power = resolve_cpu_power(cpu_model=model)
    assert power.watts_per_thread == pytest.approx(expected_watts)
    assert power.origin.startswith(origin)


@pytest.mark.parametrize("tdp, threads, message", [(-5, 4, "positive"), (5000, 2, "per thread"), ("100", 4, "number")])
def test_bad_tdp_argument_raises(tdp, threads, message):
    with pytest.raises(ValueError, match=message):
        CpuTimeEstimateMeter(cpu_tdp_watts=tdp, cpu_threads=threads)


def test_bad_tdp_environment_is_reported_and_skipped(monkeypatch, caplog):
    monkeypatch.setenv("HF_BIGSMALL_CPU_TDP_WATTS", "-20")
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        power = resolve_cpu_power(cpu_model="AMD EPYC")
    assert power.origin.startswith("default") and "must be positive" in caplog.text
    monkeypatch.setenv("HF_BIGSMALL_CPU_TDP_WATTS", "16")
    assert resolve_cpu_power(cpu_model="Some CPU").origin == "environment"


class FlakyGpuMeter(EnergyMeter):
    energy_source = "nvml"
    measures_cpu = False

    def __init__(self):
        self.calls = 0

    def read(self):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("GPU is lost")
        return {"nvml/GPU-1": 7.0}


def test_failing_gpu_meter_is_dropped_and_its_energy_kept(caplog):
    tracker = EnergyTracker([FlakyGpuMeter(), CpuTimeEstimateMeter()])
    tracker.read()
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        readings = tracker.read()
    assert readings["nvml/GPU-1"] == 7.0
    assert [m.energy_source for m in tracker.meters] == ["estimate"]
    assert "no longer measured" in caplog.text and tracker.describe()["failures"]


def test_grid_intensity_origins(monkeypatch):
    monkeypatch.delenv("HF_BIGSMALL_GRID_INTENSITY", raising=False)
    assert resolve_grid_intensity(100).origin == "user"
    france = resolve_grid_intensity(country_iso_code="fra")
    assert france.g_per_kwh == GRID_INTENSITY_G_PER_KWH["FRA"] and "FRA" in france.origin
    default = resolve_grid_intensity()
    assert default.g_per_kwh == WORLD_AVERAGE_G_PER_KWH and default.origin.startswith("default")
    assert default.co2_grams(3.6e6) == pytest.approx(WORLD_AVERAGE_G_PER_KWH)  # 1 kWh


@pytest.mark.parametrize("kwargs, message", [
    ({"grid_intensity_g_per_kwh": -1}, "outside"),
    ({"grid_intensity_g_per_kwh": 450_000}, "outside"),
    ({"country_iso_code": "FR"}, "alpha-3"),
    ({"country_iso_code": "ATL"}, "No grid intensity"),
])
def test_bad_grid_intensity_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_grid_intensity(**kwargs)


def test_bad_grid_intensity_environment_falls_back(monkeypatch, caplog):
    monkeypatch.setenv("HF_BIGSMALL_GRID_INTENSITY", "abc")
    with caplog.at_level(logging.WARNING, logger="hf_bigsmall.energy"):
        assert resolve_grid_intensity().origin.startswith("default")
    assert "not a number" in caplog.text
