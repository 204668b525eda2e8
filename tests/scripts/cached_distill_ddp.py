"""Two processes cache a teacher's logits into one cache, then distil from it with no teacher.

    accelerate launch --config_file accelerate_configs/multi_cpu.yaml tests/scripts/cached_distill_ddp.py OUTPUT_JSON
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import GPT2LMHeadModel, set_seed

from hf_bigsmall import DistillationConfig, DistillationTrainer, cache_teacher_logits, load_teacher_logits
from hf_bigsmall.distillation.cache import read_manifest, target_mask, topk_targets
from tests.test_distillation import causal_dataset
from tests.testing_utils import exit_launched_rank, tiny_gpt2_config


def main(output_json: str) -> None:
    set_seed(0)  # same teacher and student weights on both ranks
    teacher = GPT2LMHeadModel(tiny_gpt2_config())
    student = GPT2LMHeadModel(tiny_gpt2_config(n_layer=2))
    dataset = causal_dataset(n=16)
    folder = Path(output_json + ".cache")
    cache_teacher_logits(teacher, dataset, folder, top_k=8, shard_size=4, logprob_dtype="float32")
    record = read_manifest(folder)
    loaded = load_teacher_logits(folder, dataset)

    # the same targets as the teacher gives in one process
    teacher.eval()
    with torch.no_grad():
        batch = {k: torch.tensor(dataset[k]) for k in ("input_ids", "attention_mask", "labels")}
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        ids, logprobs, _ = topk_targets(logits[target_mask(batch["labels"], batch["attention_mask"], True)], 8)
    stored_ids = np.concatenate(loaded["teacher_topk_ids"]).reshape(-1, 8)
    stored_logprobs = np.concatenate(loaded["teacher_topk_logprobs"]).reshape(-1, 8)
    equal = bool((stored_ids == ids.numpy()).all() and np.allclose(stored_logprobs, logprobs.numpy(), atol=1e-5))

    args = DistillationConfig(
        output_dir=output_json + ".out", per_device_train_batch_size=2, max_steps=4, learning_rate=1e-2,
        logging_steps=2, report_to="none", save_strategy="no", ddp_find_unused_parameters=False, seed=0,
    )
    trainer = DistillationTrainer(model=student, teacher_model=None, args=args, train_dataset=loaded)
    before = torch.cat([p.detach().flatten().clone() for p in student.parameters()])
    trainer.train()
    after = torch.cat([p.detach().flatten() for p in student.parameters()])
    gathered = [torch.zeros_like(after) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, after)
    shards_by_rank: dict[str, list[int]] = {}
    for shard in record["shards"]:
        shards_by_rank.setdefault(str(shard["process_index"]), []).append(shard["index"])
    result = {
        "world_size": dist.get_world_size(),
        "shards_by_rank": shards_by_rank,
        "num_rows": record["num_rows"],
        "equal_to_single_process": equal,
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
