"""bf16 distillation of a tiny Llama with pruning and energy, for tests/test_gpu.py.

    python tests/scripts/gpu_distil_prune.py OUTPUT_DIR
    accelerate launch --config_file FSDP2_CONFIG --num_processes 1 tests/scripts/gpu_distil_prune.py OUTPUT_DIR

`DistillationTrainer` with `MagnitudePruningCallback` and `EnergyCallback`, bf16, on the GPU when
there is one. The script records what it saw (device, whether the Trainer ran FSDP and the student's
parameters were DTensors, masked entries that are not zero, the logged losses) in
OUTPUT_DIR/result.json and saves the student in OUTPUT_DIR/student; the test decides what must hold.
Without a GPU it runs on the CPU in fp32, which only checks that the script itself works.
"""

import json
import math
import sys
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaForCausalLM

from hf_bigsmall import DistillationConfig, DistillationTrainer, EnergyCallback, MagnitudePruningCallback, make_student
from hf_bigsmall.utils.distributed import full_tensor, shutdown_process_group
from tests.testing_utils import TINY_VOCAB, tiny_llama_config

MAX_STEPS = 8


def main(output_dir: Path) -> None:
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(tiny_llama_config())
    student = make_student(teacher, num_layers=2)
    input_ids = torch.randint(1, TINY_VOCAB, (64, 32), generator=torch.Generator().manual_seed(0))
    dataset = Dataset.from_dict({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                                 "labels": input_ids.clone()})
    pruning = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic", end_step=6, pruning_frequency=2)
    args = DistillationConfig(
        output_dir=str(output_dir), max_steps=MAX_STEPS, per_device_train_batch_size=8, learning_rate=1e-3,
        weight_decay=0.1, logging_steps=2, save_strategy="no", report_to="none", use_cpu=not cuda, bf16=cuda,
        teacher_dtype="bfloat16" if cuda else None, alpha_kd=0.5, alpha_ce=0.5, temperature=2.0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                                  callbacks=[pruning, EnergyCallback()])
    trainer.train()

    from torch.distributed.tensor import DTensor

    params = dict(trainer.model.named_parameters())
    violations = 0
    for name, mask in pruning.masks.items():
        whole = full_tensor(params[name].detach())
        violations += int((whole[mask.to(whole.device)] != 0).sum())
    result = {
        "cuda": cuda,
        "device": str(next(trainer.model.parameters()).device),
        "world_size": trainer.args.world_size,
        "is_fsdp_enabled": trainer.is_fsdp_enabled,
        "student_dtensors": all(isinstance(p, DTensor) for p in trainer.model.parameters()),
        "teacher_dtype": str(next(trainer.teacher_model.parameters()).dtype),
        "masked_nonzero": violations,
        "mask_fraction": (sum(int(mask.sum()) for mask in pruning.masks.values())
                          / sum(mask.numel() for mask in pruning.masks.values())),
        "losses_finite": all(math.isfinite(entry[key]) for entry in trainer.state.log_history
                             for key in ("loss", "loss_kd", "loss_ce") if key in entry),
        "logged_steps": [entry["step"] for entry in trainer.state.log_history if "loss" in entry],
    }
    trainer.save_model(str(output_dir / "student"))
    if trainer.is_world_process_zero():
        (output_dir / "result.json").write_text(json.dumps(result))
    del trainer
    shutdown_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
