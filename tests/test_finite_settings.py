"""Every float setting refuses NaN and infinities before anything trains (NaN passes `<= 0`)."""

import math

import pytest
import torch

NAN, INF = math.nan, math.inf


def distillation_config(tmp_path, **kwargs):
    from hf_bigsmall import DistillationConfig

    return DistillationConfig(output_dir=str(tmp_path), report_to="none", **kwargs)


def quickstart_arguments(tmp_path, **kwargs):
    from hf_bigsmall.quickstart import QuickstartArguments

    return QuickstartArguments(output_dir=str(tmp_path / "out"), **kwargs)


def pruning_callback(tmp_path, **kwargs):
    from hf_bigsmall import MagnitudePruningCallback

    return MagnitudePruningCallback(**kwargs)


def energy_callback(tmp_path, **kwargs):
    from hf_bigsmall import EnergyCallback

    return EnergyCallback(**kwargs)


def inference(tmp_path, **kwargs):
    from hf_bigsmall import measure_inference

    return measure_inference(torch.nn.Identity(), [{"input": torch.zeros(1)}], **kwargs)


def kd(tmp_path, **kwargs):
    from hf_bigsmall.losses import kd_loss

    return kd_loss(torch.randn(2, 3), torch.randn(2, 3), **kwargs)


CASES = [
    (distillation_config, "temperature"), (distillation_config, "alpha_kd"), (distillation_config, "alpha_ce"),
    (distillation_config, "alpha_hidden"), (distillation_config, "alpha_attention"),
    (distillation_config, "jsd_beta"),
    (quickstart_arguments, "target_sparsity"), (quickstart_arguments, "alpha_kd"),
    (quickstart_arguments, "temperature"), (quickstart_arguments, "learning_rate"),
    (pruning_callback, "target_sparsity"), (pruning_callback, "initial_sparsity"),
    (energy_callback, "cpu_tdp_watts"), (energy_callback, "grid_intensity_g_per_kwh"),
    (inference, "min_duration_s"),
    (kd, "temperature"),
]


@pytest.mark.parametrize("value", [NAN, INF, -INF], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("build, name", CASES, ids=[f"{build.__name__}-{name}" for build, name in CASES])
def test_non_finite_float_settings_are_refused_naming_the_field(tmp_path, build, name, value):
    with pytest.raises(ValueError, match=name):
        build(tmp_path, **{name: value})
    assert not (tmp_path / "out").exists()


def test_finite_settings_still_pass(tmp_path):
    config = distillation_config(tmp_path, temperature=3.0, alpha_kd=1.0, alpha_ce=0.0, jsd_beta=0.3)
    assert (config.temperature, config.alpha_kd, config.jsd_beta) == (3.0, 1.0, 0.3)


@pytest.mark.parametrize("raw", ["nan", "inf"])
def test_non_finite_environment_numbers_are_reported_and_skipped(monkeypatch, raw):
    from hf_bigsmall.energy.carbon import INTENSITY_ENV_VAR, resolve_grid_intensity

    monkeypatch.setenv(INTENSITY_ENV_VAR, raw)
    intensity = resolve_grid_intensity()
    assert math.isfinite(intensity.g_per_kwh) and intensity.origin != "environment"
