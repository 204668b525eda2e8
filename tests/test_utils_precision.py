"""`native_bf16`: bf16 is native on CUDA GPUs that support it and on CPUs with AMX-BF16 or AVX512-BF16."""

import pytest
import torch

from hf_bigsmall.utils.precision import native_bf16

NO_BF16 = {"architecture": "x86_64", "avx512_f": True, "avx512_bw": True, "amx_tile": False, "amx_bf16": False,
           "avx512_bf16": False}


@pytest.mark.parametrize(
    "capabilities, expected",
    [
        ({**NO_BF16, "amx_tile": True, "amx_bf16": True, "avx512_bf16": True}, "CPU with AMX-BF16"),
        ({**NO_BF16, "avx512_bf16": True}, "CPU with AVX512-BF16"),
        (NO_BF16, None),  # AVX-512 alone emulates bf16: slower than float32
        ({"architecture": "arm64", "neon": True, "bf16": True}, None),  # not measured on Arm: not a default
    ],
)
def test_a_cpu_counts_by_its_bf16_instructions(monkeypatch, capabilities, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert native_bf16() == expected


@pytest.mark.parametrize("supported, expected", [(True, "CUDA GPU with bf16"), (False, None)])
def test_a_cuda_gpu_counts_by_what_torch_says_of_it(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {**NO_BF16, "amx_bf16": True})  # training runs on the GPU
    assert native_bf16() == expected


def test_a_cuda_gpu_that_only_emulates_bf16_does_not_count(monkeypatch):
    """A T4 or V100 (compute capability 7.x) runs bf16 only by emulation, slower than float32; torch's
    `is_bf16_supported()` says True for it unless told `including_emulation=False`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert native_bf16() is None


def test_torch_without_the_capability_probe_is_asked_the_older_way(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert native_bf16() == "CPU with AVX512-BF16"


def test_this_machine_is_answered_from_torch_itself():
    capabilities = torch.cpu.get_capabilities()
    answer = native_bf16()
    if torch.cuda.is_available():
        assert answer == ("CUDA GPU with bf16" if torch.cuda.is_bf16_supported() else None)
    else:
        assert (answer is not None) == bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))
