"""Two processes distil on shuffled length groups for 3 epochs; rank 0 writes which rows each epoch trained on,
and whether a run saved 3 steps into its second epoch and resumed trains on the batches the whole run did.

Run by tests/test_sampling.py under `accelerate launch` (2 CPU processes, gloo). Row identity: input_ids[0] = 5 + index.
The students have dropout, so the processes' global random states drift apart during the first epoch: a sampler
drawing from it would split two different orders between them from the second epoch on.
"""

import json
import sys

import torch
import torch.distributed as dist
from datasets import Dataset
from transformers import BertForSequenceClassification, set_seed

from hf_bigsmall import DistillationConfig, DistillationTrainer, make_student
from tests.testing_utils import exit_launched_rank, pad_rows, tiny_bert_config

ROWS, PER_DEVICE, EPOCHS = 64, 4, 3


def train(output: str, data: Dataset, seen: list, max_steps: int, save_steps: int | None = None,
          resume: str | None = None) -> None:
    set_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    student = make_student(teacher, num_layers=1)

    def collate(features):
        seen.append([feature["input_ids"][0] - 5 for feature in features])
        return pad_rows(features)

    args = DistillationConfig(output_dir=output, per_device_train_batch_size=PER_DEVICE, max_steps=max_steps,
                              report_to="none", save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
                              seed=0, learning_rate=1e-3, disable_tqdm=True, ddp_find_unused_parameters=False,
                              train_sampling_strategy="group_by_length", shuffle_length_groups=True)
    DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                        data_collator=collate).train(resume_from_checkpoint=resume)


def main(output: str) -> None:
    lengths = torch.randint(2, 40, (ROWS,), generator=torch.Generator().manual_seed(3)).tolist()
    rows = [[5 + index] + [7] * (length - 1) for index, length in enumerate(lengths)]
    data = Dataset.from_dict({"input_ids": rows, "labels": [index % 2 for index in range(ROWS)]})
    steps_per_epoch = ROWS // (PER_DEVICE * 2)
    seen, cut, resumed = [], [], []
    train(output + ".whole", data, seen, steps_per_epoch * EPOCHS)
    mine = seen[-steps_per_epoch * EPOCHS:]  # the trainer may collate a few rows first to check them
    # saved 3 steps into the second epoch, then resumed from there by a new trainer
    saved = steps_per_epoch + 3
    train(output + ".cut", data, cut, steps_per_epoch * 2, save_steps=saved)
    train(output + ".cut", data, resumed, steps_per_epoch * 2, resume=f"{output}.cut/checkpoint-{saved}")
    resumed_as_whole = resumed[-(steps_per_epoch - 3):] == mine[saved:steps_per_epoch * 2]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    resumed_everywhere = [None] * dist.get_world_size()
    dist.all_gather_object(resumed_everywhere, resumed_as_whole)
    if dist.get_rank() == 0:
        epochs = [[row for batches in everyone for batch in batches[epoch * steps_per_epoch:(epoch + 1) * steps_per_epoch]
                   for row in batch] for epoch in range(EPOCHS)]
        # the spread of lengths inside each step's batches on both processes together
        spreads = [max(lengths[row] for batches in everyone for row in batches[step])
                   - min(lengths[row] for batches in everyone for row in batches[step]) for step in range(len(mine))]
        json.dump({"world_size": dist.get_world_size(), "epochs": epochs, "spreads": spreads,
                   "length_range": max(lengths) - min(lengths), "resumed_as_whole": resumed_everywhere},
                  open(output, "w"))
    exit_launched_rank()


if __name__ == "__main__":
    main(sys.argv[1])
