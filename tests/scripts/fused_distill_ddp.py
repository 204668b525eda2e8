"""One step of fused-loss distillation of a causal LM, in two processes or one.

    accelerate launch --config_file accelerate_configs/multi_cpu.yaml tests/scripts/fused_distill_ddp.py OUTPUT_JSON

DDP is left to find unused parameters (the Trainer's default for a model without gradient
checkpointing), the case where an output layer used outside the model's forward would break it.
With plain SGD the parameters after one step show the gradient itself, not Adam's normalised one.
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaForCausalLM, set_seed

from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student
from tests.test_distillation import causal_dataset
from tests.testing_utils import exit_launched_rank, tiny_llama_config


def train(output_dir: str, batch_size: int, record: dict | None = None) -> torch.Tensor:
    """The student's parameters, flattened, after one step on the same 4 sequences."""
    set_seed(0)  # same teacher and student weights on every rank
    teacher = LlamaForCausalLM(tiny_llama_config())
    student = make_student(teacher, num_layers=2)
    args = DistillationConfig(
        output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=1, learning_rate=0.5, optim="sgd",
        max_grad_norm=0.0, report_to="none", save_strategy="no", seed=0, use_cpu=True, temperature=2.0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=causal_dataset(n=4))
    trainer.train()
    if record is not None:
        record["student_wrapped_in_ddp"] = isinstance(trainer.model_wrapped, DistributedDataParallel)
        record["find_unused_parameters"] = getattr(trainer.model_wrapped, "find_unused_parameters", None)
        record["fused"] = trainer._fused_refusal is None
    return torch.cat([p.detach().flatten() for p in student.parameters()])


def main(output_json: str) -> None:
    result = {"world_size": dist.get_world_size() if dist.is_initialized() else 1}
    parameters = train(output_json + ".out", batch_size=2, record=result)
    result["world_size"] = dist.get_world_size()
    result["parameters"] = parameters.tolist()
    if dist.get_rank() == 0:
        with open(output_json, "w") as handle:
            json.dump(result, handle)
    exit_launched_rank()


if __name__ == "__main__":
    main(sys.argv[1])
