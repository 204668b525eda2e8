"""Two-process pruning run for tests/test_pruning_distributed.py.

    accelerate launch --config_file accelerate_configs/multi_cpu.yaml tests/scripts/prune_ddp.py OUTPUT_DIR

Each rank writes its masks and weights to OUTPUT_DIR/rank{N}.safetensors and its world size to
OUTPUT_DIR/rank{N}.json, so the test can check that all ranks hold the same masks and weights.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from hf_bigsmall import MagnitudePruningCallback
from tests.pruning_utils import pruning_trainer, tiny_bert, training_args
from tests.testing_utils import exit_launched_rank


def main(output_dir: Path) -> None:
    # A different initialisation on each rank: DDP must broadcast rank 0's weights, and the masks
    # computed from them must then agree everywhere.
    rank = int(__import__("os").environ.get("RANK", 0))
    model = tiny_bert(seed=rank)
    callback = MagnitudePruningCallback(target_sparsity=0.5, schedule="cubic")
    args = training_args(output_dir, max_steps=6, gradient_accumulation_steps=2, ddp_find_unused_parameters=False)
    trainer = pruning_trainer(model, args, callback)
    trainer.train()

    state = trainer.accelerator.state
    tensors = {f"mask::{n}": m.to(torch.uint8) for n, m in callback.masks.items()}
    tensors.update({f"param::{n}": p.detach().contiguous() for n, p in model.named_parameters()})
    save_file(tensors, str(output_dir / f"rank{state.process_index}.safetensors"))
    (output_dir / f"rank{state.process_index}.json").write_text(json.dumps({"world_size": state.num_processes}))
    exit_launched_rank()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
