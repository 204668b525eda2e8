"""The kit under real FSDP2 sharding: two CPU processes, parameters split as DTensors (torch's `fully_shard`).

accelerate starts no FSDP without a GPU, so tests/scripts/fsdp2_two_processes.py shards tiny Llama
models itself and drives the pruning callback, the distillation loss and the energy callback; this
test checks what each process and the saved folder hold. One launch of two processes, about 30 s.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from tests.testing_utils import REPO_ROOT, run_torchrun


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("fsdp2")
    run_torchrun(REPO_ROOT / "tests" / "scripts" / "fsdp2_two_processes.py", str(output_dir))
    ranks = [json.loads((output_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return output_dir, ranks


@pytest.mark.multiprocess
def test_two_processes_really_shard(fsdp2_run):
    _, ranks = fsdp2_run
    for rank in ranks:
        # a run that fell back to one process, or to DDP's whole copies, fails here
        assert rank["world_size"] == 2
        assert rank["dtensor_parameters"] and rank["teacher_sharded_dtensors"]
        assert rank["local_rows"] * 2 == rank["global_rows"]


@pytest.mark.multiprocess
def test_masks_on_shards_stay_exact_and_are_saved(fsdp2_run):
    output_dir, ranks = fsdp2_run
    for rank in ranks:
        assert rank["violations_after_each_step"] == [0] * 6
        assert rank["mask_sparsity_by_step"][-1] == pytest.approx(0.5, abs=1e-3)
    assert ranks[0]["masks_checksum"] == ranks[1]["masks_checksum"]  # both processes hold the same masks
    assert all("schedule='imp'" in rank["imp_refused"] for rank in ranks)

    folder = output_dir / "pruned"
    weights, masks = load_file(str(folder / "model.safetensors")), load_file(str(folder / "sparsity_masks.safetensors"))
    assert len(masks) == 28  # 4 layers x 7 projections
    for name, mask in masks.items():
        assert torch.equal(weights[name] == 0, mask), name
    # the record counts every shard's zeros, not one process's
    block = AutoConfig.from_pretrained(folder).sparsity
    assert block["global_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert block["zero_params"] == sum(int(mask.sum()) for mask in masks.values())
    reloaded = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    assert all(torch.equal(reloaded[name], weights[name]) for name in masks)


@pytest.mark.multiprocess
@pytest.mark.parametrize("structure, fraction", [("neurons", 0.5), ("2:4", 0.5)])
def test_structured_and_n_m_masks_of_a_sharded_model_are_the_whole_models(fsdp2_run, structure, fraction):
    _, ranks = fsdp2_run
    for rank in ranks:
        assert rank[structure]["masks_match"]
        assert rank[structure]["violations"] == 0
        assert rank[structure]["mask_fraction"] == pytest.approx(fraction, abs=1e-3)


@pytest.mark.multiprocess
def test_sharded_student_distils_as_one_process(fsdp2_run):
    _, ranks = fsdp2_run
    for rank in ranks:
        for name, loss in rank["sharded_loss"].items():  # teacher whole and teacher sharded
            assert loss == pytest.approx(rank["reference_loss"], rel=1e-5), name
        # one SGD step of lr 1 moved weights by up to ~0.1; the sharded step lands on the same weights
        assert rank["max_step"] > 1e-2
        assert rank["max_weight_difference_after_step"] < 1e-5


@pytest.mark.multiprocess
def test_energy_of_the_shared_package_is_counted_once(fsdp2_run):
    output_dir, _ = fsdp2_run
    record = json.loads((output_dir / "energy.json").read_text())
    assert record["num_processes"] == 2
    (package,) = [key for key in record["by_device"] if key.startswith("rapl/")]
    assert record["by_device"][package] == pytest.approx(3.0)  # both processes saw 3 J: counted once
    estimates = [key for key in record["by_device"] if key.startswith("estimate/")]
    assert len(estimates) == 2 and all(record["by_device"][key] > 0 for key in estimates)
    assert record["energy_joules"] == pytest.approx(sum(record["by_device"].values()))
