"""Two processes train with EnergyCallback; each writes what it measured alone, rank 0 the totals.

    accelerate launch --config_file accelerate_configs/multi_cpu.yaml tests/scripts/energy_two_processes.py OUT_DIR

Both processes read the same RAPL-shaped counter (one CPU package shared by the machine), which
rank 0 advances by 1 J per step, and each has its own CPU-time estimate. The merged total must
count the package once and every estimate once.
"""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hf_bigsmall import EnergyCallback
from hf_bigsmall.energy import callback as callback_module
from hf_bigsmall.energy.meters import CpuTimeEstimateMeter, RaplMeter
from tests.scripts.energy_utils import TinyClassificationData
from tests.testing_utils import exit_launched_rank, tiny_bert_config


class SharedPackage(TrainerCallback):
    """Rank 0 advances the shared package counter; every rank notes what its own meter saw."""

    def __init__(self, energy, powercap, out_dir):
        self.energy, self.powercap, self.out_dir = energy, powercap, out_dir

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = dict(self.energy._mark)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            (self.powercap / "intel-rapl:0" / "energy_uj").write_text(f"{state.global_step * 1_000_000}\n")

    def on_train_end(self, args, state, control, **kwargs):
        end = self.energy._mark  # the reading taken at the final gather
        own = {k: end[k] - self.start.get(k, 0.0) for k in end if k.startswith("estimate/")}
        Path(self.out_dir, f"part-{args.process_index}.json").write_text(json.dumps(own))


def main():
    out_dir = Path(sys.argv[1])
    powercap = out_dir / "powercap"
    if int(os.environ.get("RANK", "0")) == 0:
        (powercap / "intel-rapl:0").mkdir(parents=True, exist_ok=True)
        for name, value in (("name", "package-0"), ("max_energy_range_uj", "262143328850"), ("energy_uj", "0")):
            (powercap / "intel-rapl:0" / name).write_text(f"{value}\n")
    args = TrainingArguments(
        output_dir=str(out_dir), max_steps=4, per_device_train_batch_size=4, logging_steps=2, save_strategy="steps", save_steps=2,
        report_to="none", use_cpu=True, disable_tqdm=True, ddp_find_unused_parameters=False,
    )
    assert args.world_size == 2, f"expected 2 processes, got world size {args.world_size}"
    with args.main_process_first():  # rank 1 waits until rank 0 has written the counter tree
        pass
    callback_module.select_meters = lambda *a, **k: [CpuTimeEstimateMeter(cpu_tdp_watts=40, cpu_threads=10), RaplMeter(powercap)]

    energy = EnergyCallback()
    torch.manual_seed(0)
    trainer = Trainer(BertForSequenceClassification(tiny_bert_config()), args, train_dataset=TinyClassificationData(),
                      callbacks=[energy, SharedPackage(energy, powercap, out_dir)])
    trainer.train()
    if trainer.is_world_process_zero():
        Path(out_dir, "log_history.json").write_text(json.dumps(trainer.state.log_history))
    exit_launched_rank()


if __name__ == "__main__":
    main()
