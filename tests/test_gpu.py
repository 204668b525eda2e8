"""What only a CUDA GPU can show, for benchmarks/gpu_check.sh: bf16 distillation with pruning and energy
on one GPU, through accelerate's single-GPU config and through its FSDP2 config. Skipped without a GPU."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from tests.testing_utils import REPO_ROOT, run_accelerate

SCRIPT = REPO_ROOT / "tests" / "scripts" / "gpu_distil_prune.py"
CONFIGS = {"single_gpu": REPO_ROOT / "accelerate_configs" / "single_gpu.yaml",
           "fsdp2": REPO_ROOT / "accelerate_configs" / "fsdp.yaml"}


@pytest.mark.gpu
@pytest.mark.parametrize("setup", CONFIGS)
def test_bf16_distillation_with_pruning_and_energy_on_one_gpu(tmp_path, setup):
    run_accelerate(SCRIPT, str(tmp_path), num_processes=1, config_file=CONFIGS[setup], timeout=300)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["cuda"] and result["device"].startswith("cuda") and result["world_size"] == 1
    assert result["teacher_dtype"] == "torch.bfloat16"
    # the Trainer really ran FSDP2: the student's parameters are DTensors (a silent fallback fails here)
    assert result["is_fsdp_enabled"] == result["student_dtensors"] == (setup == "fsdp2")
    assert result["masked_nonzero"] == 0 and result["mask_fraction"] == pytest.approx(0.5, abs=1e-3)
    assert result["losses_finite"] and result["logged_steps"] == [2, 4, 6, 8]

    weights = load_file(str(tmp_path / "student" / "model.safetensors"))
    masks = load_file(str(tmp_path / "student" / "sparsity_masks.safetensors"))
    assert masks
    for name, mask in masks.items():
        assert torch.equal(weights[name] == 0, mask), name
    energy = json.loads((tmp_path / "energy.json").read_text())
    assert energy["energy_joules"] > 0
    if importlib.util.find_spec("pynvml") is not None:
        assert any(key.startswith("nvml/") for key in energy["by_device"]), energy["by_device"]
