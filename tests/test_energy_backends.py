"""NVML logic against a fake pynvml (real GPU tests are marked `gpu`), CodeCarbon with a fake
module, and the Hub's co2_eq_emissions metadata."""

import importlib.machinery
import json
import sys
import time
import types

import pytest
import torch

from hf_bigsmall.energy.card import add_co2_to_model_card, co2_eq_emissions
from hf_bigsmall.energy.meters import select_meters
from hf_bigsmall.utils import import_utils
from tests.testing_utils import requires_package

requires_nvml = requires_package("pynvml", "nvidia-ml-py")


class FakeNVMLError(Exception):
    pass


def fake_pynvml(energy_mj=None, power_mw=100_000):
    """A pynvml whose one GPU (UUID GPU-fake-0) returns `energy_mj` in turn, or has no counter."""
    module = types.ModuleType("pynvml")
    module.__spec__ = importlib.machinery.ModuleSpec("pynvml", None)
    module.NVMLError = FakeNVMLError
    module.looked_up = []
    counter = iter(energy_mj or [])

    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByUUID = lambda uuid: module.looked_up.append(uuid) or f"handle:{uuid}"
    module.nvmlDeviceGetName = lambda handle: "Fake GPU"
    module.nvmlDeviceGetPowerUsage = lambda handle: power_mw

    def total_energy(handle):
        if energy_mj is None:
            raise FakeNVMLError("Not Supported")  # pre-Volta
        return next(counter)

    module.nvmlDeviceGetTotalEnergyConsumption = total_energy
    return module


@pytest.fixture
def fake_gpu(monkeypatch):
    """CUDA device 0 of this process is the NVML device with UUID GPU-fake-0 (as if
    CUDA_VISIBLE_DEVICES=3 had remapped it: NVML would call it device 3)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: types.SimpleNamespace(uuid=f"fake-{index}"))

    def install(module):
        monkeypatch.setitem(sys.modules, "pynvml", module)
        import hf_bigsmall.energy.meters.nvml as nvml

        monkeypatch.setattr(nvml, "is_pynvml_available", lambda: True)
        return module

    return install


def test_nvml_counter_found_by_uuid_and_negative_differences_dropped(fake_gpu, tmp_path):
    pynvml = fake_gpu(fake_pynvml(energy_mj=[1_000, 3_000, 500, 1_500]))
    meters = select_meters("cuda", powercap_root=tmp_path)
    assert [m.energy_source for m in meters] == ["nvml", "estimate"]
    gpu = meters[0]
    assert pynvml.looked_up == ["GPU-fake-0"]  # by UUID, never by index
    assert gpu.read() == {"nvml/GPU-fake-0": pytest.approx(2.0)}  # 3000 - 1000 mJ
    assert gpu.read() == {"nvml/GPU-fake-0": pytest.approx(2.0)}  # 500 < 3000: driver reload, dropped
    assert gpu.read() == {"nvml/GPU-fake-0": pytest.approx(3.0)}  # counting resumes from 500
    assert "total energy counter" in gpu.describe()["method"]


def test_nvml_power_sampling_for_gpus_without_counter(fake_gpu, tmp_path):
    fake_gpu(fake_pynvml(energy_mj=None, power_mw=100_000))  # 100 W
    from hf_bigsmall.energy.meters.nvml import NvmlMeter

    meter = NvmlMeter(sample_interval_s=0.01)
    time.sleep(0.3)
    joules = meter.read()["nvml/GPU-fake-0"]
    meter.close()
    assert 100 * 0.2 <= joules <= 100 * 0.35
    assert "power sampled" in meter.describe()["method"]


def test_nvml_missing_is_reported_and_cpu_still_measured(monkeypatch, tmp_path, caplog):
    import hf_bigsmall.energy.meters.nvml as nvml

    monkeypatch.setattr(nvml, "is_pynvml_available", lambda: False)
    with caplog.at_level("WARNING", logger="hf_bigsmall.energy"):
        meters = select_meters("cuda:0", powercap_root=tmp_path)
    assert [m.energy_source for m in meters] == ["estimate"]
    assert 'hf-bigsmall[energy]' in caplog.text


def fake_codecarbon():
    module = types.ModuleType("codecarbon")
    module.__spec__ = importlib.machinery.ModuleSpec("codecarbon", None)

    class OfflineEmissionsTracker:
        instances = []

        def __init__(self, **kwargs):
            self.kwargs = kwargs
            self._total_energy = types.SimpleNamespace(kWh=0.0)
            OfflineEmissionsTracker.instances.append(self)

        def start(self):
            self.started = True

        def flush(self):
            self._total_energy.kWh += 0.001  # 3.6 kJ per measurement
            return 0.0

        def stop(self):
            self.stopped = True

    module.OfflineEmissionsTracker = OfflineEmissionsTracker
    return module


def test_codecarbon_backend_offline_with_explicit_country(monkeypatch, tmp_path):
    module = fake_codecarbon()
    monkeypatch.setitem(sys.modules, "codecarbon", module)
    import_utils._is_package_available.cache_clear()
    try:
        (meter,) = select_meters("cpu", backend="codecarbon", country_iso_code="FRA", powercap_root=tmp_path)
        tracker = module.OfflineEmissionsTracker.instances[-1]
        assert tracker.kwargs["country_iso_code"] == "FRA" and tracker.kwargs["tracking_mode"] == "process"
        assert tracker.started
        ((key, joules),) = meter.read().items()
        assert key.startswith("codecarbon/") and joules == pytest.approx(3600.0)
        assert meter.read()[key] == pytest.approx(7200.0)
        meter.close()
        assert tracker.stopped
        with pytest.raises(ValueError, match="country_iso_code"):
            select_meters("cpu", backend="codecarbon", powercap_root=tmp_path)
    finally:
        import_utils._is_package_available.cache_clear()


def test_codecarbon_missing_names_the_extra(monkeypatch, tmp_path):
    import hf_bigsmall.energy.meters.codecarbon as backend

    monkeypatch.setattr(backend, "is_codecarbon_available", lambda: False)
    monkeypatch.setattr(import_utils, "_is_package_available", lambda name: False)
    with pytest.raises(ImportError, match=r"hf-bigsmall\[codecarbon\]"):
        select_meters("cpu", backend="codecarbon", country_iso_code="FRA", powercap_root=tmp_path)


RECORD = {
    "energy_source": "estimate",
    "co2_grams": 12.3456789,
    "training_type": "fine-tuning",
    "hardware": "AMD EPYC (2 threads)",
    "country_iso_code": None,
    "grid_intensity_g_per_kwh": 481.0,
    "grid_intensity_origin": "default (world average, Ember 2023)",
    "meters": [{"energy_source": "estimate", "watts_per_thread": 3.5, "origin": "default (3.5 W per thread)"}],
}


def test_co2_eq_emissions_from_a_record_or_its_folder(tmp_path):
    (tmp_path / "energy.json").write_text(json.dumps(RECORD))
    for source in (RECORD, tmp_path, tmp_path / "energy.json"):
        metadata = co2_eq_emissions(source)
        assert metadata["emissions"] == 12.3457
        assert metadata["training_type"] == "fine-tuning" and metadata["hardware_used"] == "AMD EPYC (2 threads)"
        assert "geographical_location" not in metadata  # nothing is guessed
        assert "estimate" in metadata["source"] and "3.50 W per thread" in metadata["source"] and "481 gCO2eq/kWh" in metadata["source"]
    assert co2_eq_emissions(RECORD, geographical_location="Paris, France")["geographical_location"] == "Paris, France"
    with pytest.raises(ValueError, match="co2_grams"):
        co2_eq_emissions({"energy_joules": 1.0})


@pytest.mark.parametrize(
    "run, suffix",
    [
        ({}, None),  # written before records had a status
        ({"status": "complete", "global_step": 8, "max_steps": 8}, None),
        ({"status": "aborted", "global_step": 3, "max_steps": 8}, " (run aborted at step 3 of 8)"),
    ],
)
def test_co2_eq_emissions_of_an_aborted_run_says_so(run, suffix):
    metadata = co2_eq_emissions({**RECORD, **run})
    assert metadata["emissions"] == 12.3457  # what it used is stated, not refused
    if suffix is None:
        assert metadata["source"] == co2_eq_emissions(RECORD)["source"] and "aborted" not in metadata["source"]
    else:
        assert metadata["source"].endswith(suffix)


def test_negative_co2_grams_is_refused_naming_the_record(tmp_path):
    (tmp_path / "energy.json").write_text(json.dumps({**RECORD, "co2_grams": -0.5}))
    with pytest.raises(ValueError, match=r"energy\.json has co2_grams -0\.5.*damaged"):
        co2_eq_emissions(tmp_path / "energy.json")
    with pytest.raises(ValueError, match="This record has co2_grams -0.5"):
        co2_eq_emissions({**RECORD, "co2_grams": -0.5})


def test_add_co2_to_model_card_keeps_the_card(tmp_path):
    from huggingface_hub import ModelCard

    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: apache-2.0\ntags:\n- distillation\n---\n# My student\n\nSome text.\n")
    add_co2_to_model_card(readme, RECORD, training_type="distillation")
    card = ModelCard.load(readme)
    assert card.data.license == "apache-2.0" and card.data.tags == ["distillation"]
    assert card.data.co2_eq_emissions["training_type"] == "distillation"
    assert "# My student" in card.content and not (tmp_path / "README.md.tmp").exists()


@pytest.mark.gpu
@requires_nvml
def test_nvml_measures_a_real_gpu_workload():
    from hf_bigsmall.energy.meters.nvml import NvmlMeter

    meter = NvmlMeter()
    start = meter.read()
    x = torch.randn(4096, 4096, device="cuda")
    end_time = time.time() + 2.0
    while time.time() < end_time:
        x = torch.tanh(x @ x)
    joules = sum(meter.read().values()) - sum(start.values())
    meter.close()
    assert 10 < joules < 2000  # 2 s of a busy GPU: tens to hundreds of watts
    (key,) = start
    assert key == f"nvml/{meter.uuids[0]}" and key.startswith("nvml/GPU-")


@pytest.mark.gpu
@requires_nvml
def test_nvml_device_uuid_matches_nvml_under_cuda_visible_devices():
    import pynvml

    from hf_bigsmall.energy.meters.nvml import cuda_device_uuid

    pynvml.nvmlInit()
    nvml_uuids = [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(pynvml.nvmlDeviceGetCount())]
    nvml_uuids = [u.decode() if isinstance(u, bytes) else u for u in nvml_uuids]
    for index in range(torch.cuda.device_count()):
        assert cuda_device_uuid(index) in nvml_uuids


@pytest.mark.gpu
@requires_nvml
def test_measure_inference_on_gpu_uses_nvml():
    from transformers import BertForSequenceClassification

    from hf_bigsmall import measure_inference
    from tests.testing_utils import random_token_batch, tiny_bert_config

    model = BertForSequenceClassification(tiny_bert_config()).cuda()
    result = measure_inference(model, [random_token_batch(32, 32, seed=i) for i in range(4)], min_duration_s=1.0)
    assert "nvml" in result.energy_source.split("+") and result.device.startswith("cuda")
    assert result.joules_per_sample > 0 and result.latency_ms_p50 > 0
