"""Masks under DDP: two real gloo processes must end with identical masks and weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.testing_utils import REPO_ROOT, run_accelerate


@pytest.mark.multiprocess
def test_two_processes_hold_identical_masks_and_weights(tmp_path):
    run_accelerate(REPO_ROOT / "tests" / "scripts" / "prune_ddp.py", str(tmp_path))
    assert [json.loads((tmp_path / f"rank{r}.json").read_text())["world_size"] for r in (0, 1)] == [2, 2]
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert set(rank0) == set(rank1)
    masks = [k for k in rank0 if k.startswith("mask::")]
    assert masks and sum(int(rank0[k].sum()) for k in masks) > 0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # the masked entries are zero on both ranks
    for key in masks:
        param = rank0["param::" + key.removeprefix("mask::")]
        assert bool((param[rank0[key].bool()] == 0).all())
