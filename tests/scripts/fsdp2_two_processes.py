"""The kit's pieces on models sharded by torch's FSDP2, two CPU processes, for tests/test_fsdp2.py.

    python -m torch.distributed.run --nproc_per_node 2 tests/scripts/fsdp2_two_processes.py OUTPUT_DIR

accelerate runs no FSDP without a GPU (an FSDP config with use_cpu silently trains with DDP), so
the models here are sharded with `torch.distributed.fsdp.fully_shard` under gloo, and the kit's
pieces are driven through their public events and functions, as a training loop would:

- pruning: `MagnitudePruningCallback` events around AdamW steps; after every step the shard of
  each masked weight that this process holds is checked for exact zeros; the model is then
  gathered and saved with `save_pruned_model`; FFN-neuron and 2:4 masks of a sharded model are
  compared with those of the same model whole;
- distillation: `DistillationTrainer.compute_loss` on a sharded student, with the teacher whole
  and sharded, each process on half the batch, against one process on the whole batch; then one
  AdamW step of each, compared weight by weight;
- energy: `EnergyCallback` around the whole run, both processes reading one shared package
  counter (a RAPL-shaped folder that rank 0 advances by 3 J) and an estimate each.

Rank N writes OUTPUT_DIR/rank{N}.json; rank 0 saves OUTPUT_DIR/pruned and OUTPUT_DIR/energy.json.
"""

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from transformers import LlamaForCausalLM, TrainerControl, TrainerState, TrainingArguments

from hf_bigsmall import DistillationConfig, DistillationTrainer, EnergyCallback, MagnitudePruningCallback, make_student
from hf_bigsmall.energy import callback as callback_module
from hf_bigsmall.energy.meters import CpuTimeEstimateMeter, RaplMeter
from hf_bigsmall.pruning.io import save_pruned_model
from hf_bigsmall.utils.distributed import shard_like, shutdown_process_group
from tests.testing_utils import TINY_VOCAB, tiny_llama_config

PRUNING_STEPS = 6


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 as its documentation lays it out: each decoder layer, then the root."""
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight whole, on every process (collective)."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
    return {name: tensor.detach().clone() for name, tensor in get_model_state_dict(model, options=options).items()}


def tokens(rows: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(1, TINY_VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def unmasked_zero_violations(model: torch.nn.Module, callback: MagnitudePruningCallback) -> int:
    """Masked entries of this process's shards that are not exactly zero."""
    params = dict(model.named_parameters())
    count = 0
    for name, mask in callback.masks.items():
        param = params[name]
        local_mask = shard_like(mask, param)
        local_mask = local_mask.to_local() if isinstance(local_mask, DTensor) else local_mask
        local = param.to_local() if isinstance(param, DTensor) else param
        count += int((local.detach()[local_mask] != 0).sum())
    return count


def prune(output_dir: Path, rank: int, result: dict) -> None:
    torch.manual_seed(0)
    model = shard(LlamaForCausalLM(tiny_llama_config()))
    weight = model.model.layers[0].mlp.up_proj.weight
    result["dtensor_parameters"] = all(isinstance(p, DTensor) for p in model.parameters())
    result["local_rows"], result["global_rows"] = weight.to_local().shape[0], weight.shape[0]

    # weight decay and momentum would move pruned weights off zero if the masks did not hold
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="linear", start_step=0, end_step=4,
                                        pruning_frequency=2)
    args = TrainingArguments(output_dir=str(output_dir / "train"), use_cpu=True, report_to="none")
    state, control = TrainerState(max_steps=PRUNING_STEPS), TrainerControl()
    callback.on_train_begin(args, state, control, model=model, optimizer=optimizer)
    violations, sparsity_by_step = [], []
    for step in range(PRUNING_STEPS):
        batch = tokens(2, 12, seed=100 * rank + step)  # each process its own data
        model(**batch).loss.backward()
        callback.on_pre_optimizer_step(args, state, control)
        optimizer.step()
        optimizer.zero_grad()
        callback.on_optimizer_step(args, state, control)
        violations.append(unmasked_zero_violations(model, callback))
        state.global_step += 1
        callback.on_step_end(args, state, control, model=model, optimizer=optimizer)
        sparsity_by_step.append(sum(int(m.sum()) for m in callback.masks.values())
                                / sum(m.numel() for m in callback.masks.values()))
    result["violations_after_each_step"] = violations
    result["mask_sparsity_by_step"] = sparsity_by_step
    result["masks_checksum"] = [int(m.flatten().nonzero().sum()) for _, m in sorted(callback.masks.items())]

    callback.on_train_end(args, state, control, model=model)
    imp = MagnitudePruningCallback(target_sparsity=0.5, schedule="imp", imp_rounds=2, steps_per_round=2)
    try:
        imp.on_train_begin(args, TrainerState(max_steps=4), control, model=model, optimizer=optimizer)
        result["imp_refused"] = ""
    except ValueError as error:  # its rounds are saved by rank 0 alone: refused before anything changes
        result["imp_refused"] = str(error)
    full = full_state(model)
    save_pruned_model(model, output_dir / "pruned", state_dict=full, is_main_process=rank == 0)


def prune_structured(output_dir: Path, result: dict) -> None:
    """FFN neurons and 2:4 blocks, one shot: the masks of the sharded model are those of the whole one."""
    args = TrainingArguments(output_dir=str(output_dir / "train"), use_cpu=True, report_to="none")
    control = TrainerControl()
    for structure in ("neurons", "2:4"):
        torch.manual_seed(0)
        whole = LlamaForCausalLM(tiny_llama_config())
        expected = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", structure=structure)
        expected.on_train_begin(args, TrainerState(max_steps=2), control, model=copy.deepcopy(whole))
        model = shard(whole)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="one_shot", structure=structure)
        state = TrainerState(max_steps=2)
        callback.on_train_begin(args, state, control, model=model, optimizer=optimizer)
        for step in range(2):
            model(**tokens(2, 12, seed=step)).loss.backward()
            callback.on_pre_optimizer_step(args, state, control)
            optimizer.step()
            optimizer.zero_grad()
            callback.on_optimizer_step(args, state, control)
            state.global_step += 1
            callback.on_step_end(args, state, control, model=model, optimizer=optimizer)
        result[structure] = {
            "masks_match": callback.masks.keys() == expected.masks.keys() and all(
                torch.equal(callback.masks[name], expected.masks[name]) for name in expected.masks),
            "violations": unmasked_zero_violations(model, callback),
            "mask_fraction": (sum(int(mask.sum()) for mask in callback.masks.values())
                              / sum(mask.numel() for mask in callback.masks.values())),
        }


def distil(rank: int, world_size: int, output_dir: Path, result: dict) -> None:
    torch.manual_seed(1)
    teacher = LlamaForCausalLM(tiny_llama_config()).eval()
    student = make_student(teacher, num_layers=2)
    batch = tokens(4, 12, seed=7)  # the same whole batch on every process
    num_items = int((batch["labels"][:, 1:] != -100).sum())  # the targets of the whole batch
    half = {key: value[2 * rank:2 * rank + 2] for key, value in batch.items()}
    args = DistillationConfig(output_dir=str(output_dir / "distil"), use_cpu=True, report_to="none",
                              save_strategy="no", alpha_kd=0.5, alpha_ce=0.5, temperature=2.0)

    # one process, the whole batch, nothing sharded
    reference = copy.deepcopy(student)
    start = {name: tensor.detach().clone() for name, tensor in student.state_dict().items()}
    whole = DistillationTrainer(model=reference, teacher_model=copy.deepcopy(teacher), args=args)
    reference_loss = whole.compute_loss(reference, batch, num_items_in_batch=num_items)
    reference_loss.backward()
    # SGD, not AdamW: its step is proportional to the gradient, so a gradient off by a factor shows
    torch.optim.SGD(reference.parameters(), lr=1.0).step()
    result["reference_loss"] = reference_loss.item()
    reference_state = {name: tensor.detach() for name, tensor in reference.state_dict().items()}

    # the sharded student, half the batch on each process: with the whole teacher, then a sharded one
    sharded = shard(copy.deepcopy(student))
    sharded_teacher = shard(copy.deepcopy(teacher))
    result["teacher_sharded_dtensors"] = all(isinstance(p, DTensor) for p in sharded_teacher.parameters())
    losses = {}
    for name, distiller in (
        ("teacher_whole", DistillationTrainer(model=sharded, teacher_model=copy.deepcopy(teacher), args=args)),
        ("teacher_sharded", DistillationTrainer(model=sharded, teacher_model=sharded_teacher, args=args)),
    ):
        loss = distiller.compute_loss(sharded, half, num_items_in_batch=num_items)
        summed = loss.detach().clone()
        dist.all_reduce(summed)  # each part is normalised by the whole batch's targets: they add up
        losses[name] = (loss, float(summed))
    result["sharded_loss"] = {name: value for name, (_, value) in losses.items()}
    loss = losses["teacher_whole"][0]
    # FSDP2 averages gradients over processes; the Trainer scales the loss by the world size likewise
    (loss * world_size).backward()
    torch.optim.SGD(sharded.parameters(), lr=1.0).step()
    stepped = full_state(sharded)
    result["max_weight_difference_after_step"] = max(
        float((stepped[name] - reference_state[name]).abs().max()) for name in reference_state)
    result["max_step"] = max(float((reference_state[name] - start[name]).abs().max()) for name in reference_state)


def main(output_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    result = {"world_size": world_size}

    powercap = output_dir / "powercap" / "intel-rapl:0"
    if rank == 0:
        powercap.mkdir(parents=True, exist_ok=True)
        for name, value in (("name", "package-0"), ("max_energy_range_uj", "262143328850"), ("energy_uj", "0")):
            (powercap / name).write_text(f"{value}\n")
    dist.barrier()
    callback_module.select_meters = lambda *a, **k: [CpuTimeEstimateMeter(cpu_tdp_watts=40, cpu_threads=10),
                                                     RaplMeter(output_dir / "powercap")]
    energy = EnergyCallback()
    energy_args = TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none",
                                    per_device_train_batch_size=2)
    energy_state, control = TrainerState(max_steps=PRUNING_STEPS), TrainerControl()
    energy.on_train_begin(energy_args, energy_state, control)

    prune(output_dir, rank, result)
    prune_structured(output_dir, result)
    distil(rank, world_size, output_dir, result)

    if rank == 0:
        (powercap / "energy_uj").write_text("3000000\n")  # the shared package used 3 J
    dist.barrier()  # both processes read the counter after it moved: each sees the 3 J
    energy_state.global_step = PRUNING_STEPS
    energy.on_log(energy_args, energy_state, control, logs={"train_runtime": 1.0})
    energy.on_train_end(energy_args, energy_state, control)
    result["energy_history"] = energy_state.log_history

    (output_dir / f"rank{rank}.json").write_text(json.dumps(result))
    shutdown_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
