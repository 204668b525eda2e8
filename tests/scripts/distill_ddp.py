"""Two-process distillation run launched by tests/test_distillation.py::test_two_processes.

    accelerate launch --config_file accelerate_configs/multi_cpu.yaml tests/scripts/distill_ddp.py OUTPUT_JSON
"""

import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import BertForSequenceClassification, set_seed

from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student
from tests.test_distillation import classification_dataset
from tests.testing_utils import exit_launched_rank, tiny_bert_config


def main(output_json: str) -> None:
    set_seed(0)  # same teacher and student weights on both ranks, as from one checkpoint
    teacher = BertForSequenceClassification(tiny_bert_config())
    student = make_student(teacher, num_layers=2, hidden_size=16)
    args = DistillationConfig(
        output_dir=str(output_json) + ".out", per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2,
        logging_steps=2, report_to="none", save_strategy="no", alpha_hidden=1.0,
        ddp_find_unused_parameters=False, seed=0,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset(n=16)
    )
    before = torch.cat([p.detach().flatten().clone() for p in student.parameters()])
    trainer.train()

    after = torch.cat([p.detach().flatten() for p in student.parameters()])
    gathered = [torch.zeros_like(after) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, after)
    result = {
        "world_size": dist.get_world_size(),
        "args_world_size": trainer.args.world_size,
        "student_wrapped_in_ddp": isinstance(trainer.model_wrapped, DistributedDataParallel),
        "teacher_wrapped_in_ddp": isinstance(trainer.teacher_model, DistributedDataParallel),
        "teacher_training": trainer.teacher_model.training,
        "students_identical": all(torch.equal(gathered[0], other) for other in gathered[1:]),
        "student_changed": not torch.equal(before, after),
        "log_history": trainer.state.log_history,
    }
    if dist.get_rank() == 0:
        with open(output_json, "w") as handle:
            json.dump(result, handle)
    exit_launched_rank()


if __name__ == "__main__":
    main(sys.argv[1])
