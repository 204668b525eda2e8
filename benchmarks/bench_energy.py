"""Cost of energy accounting: training step time with and without EnergyCallback, and import cost.

    OMP_NUM_THREADS=1 python benchmarks/bench_energy.py --steps 60 --repeats 7

Runs are interleaved (without, with, without, with, ...) so that load from other processes on a
shared machine hits both sides alike; medians and their ratio are printed. The import cost is
measured in fresh interpreters with `python -X importtime`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


def timed_energy_callback():
    """An EnergyCallback that adds up the wall time spent inside its own event hooks."""
    import time

    from hf_bigsmall import EnergyCallback

    class TimedEnergyCallback(EnergyCallback):
        seconds = 0.0

    for hook in ("on_init_end", "on_train_begin", "on_step_end", "on_log", "on_save", "on_train_end"):
        def timed(self, *args, _hook=getattr(EnergyCallback, hook), **kwargs):
            tic = time.perf_counter()
            try:
                return _hook(self, *args, **kwargs)
            finally:
                type(self).seconds += time.perf_counter() - tic

        setattr(TimedEnergyCallback, hook, timed)
    return TimedEnergyCallback()


def train_seconds(with_energy: bool, steps: int, logging_steps: int) -> tuple[float, float]:
    """(train_runtime, seconds spent inside EnergyCallback) of one short training."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, PrinterCallback, TrainingArguments

    from hf_bigsmall import BigSmallTrainer  # the full path: figures go through trainer.log

    class Data(torch.utils.data.Dataset):
        def __init__(self, size=512, seq_len=64):
            generator = torch.Generator().manual_seed(0)
            self.input_ids = torch.randint(1, 1000, (size, seq_len), generator=generator)
            self.labels = torch.randint(0, 2, (size,), generator=generator)

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, index):
            return {"input_ids": self.input_ids[index], "labels": self.labels[index]}

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=512, max_position_embeddings=64, num_labels=2)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=16,
                                 logging_steps=logging_steps, save_strategy="no", report_to="none",
                                 use_cpu=True, disable_tqdm=True, log_level="error")
        energy = timed_energy_callback() if with_energy else None
        trainer = BigSmallTrainer(BertForSequenceClassification(config), args, train_dataset=Data(),
                                  callbacks=[energy] if energy else [])
        trainer.remove_callback(PrinterCallback)  # keep the benchmark's output readable
        runtime = trainer.train().metrics["train_runtime"]
        return runtime, type(energy).seconds if energy else 0.0


def import_ms(module: str, repeats: int) -> tuple[float, float, list[str]]:
    """Median cumulative import time of `module` (ms), the part spent in hf_bigsmall's own
    modules (ms), and which heavy modules were loaded (torch itself imports pynvml when present)."""
    cumulative, own, heavy = [], [], []
    probe = f"import {module}, sys; print([m for m in ('torch', 'transformers', 'pynvml') if m in sys.modules])"
    for _ in range(repeats):
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True,
                                cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, check=True)
        own_us = 0
        for line in result.stderr.splitlines():
            match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)$", line)
            if not match:
                continue
            if match.group(3).startswith("hf_bigsmall"):
                own_us += int(match.group(1))
            if match.group(3) == module:
                cumulative.append(int(match.group(2)) / 1000)
        own.append(own_us / 1000)
        heavy = eval(result.stdout.strip())  # the list printed by the probe
    return statistics.median(cumulative), statistics.median(own), heavy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    options = parser.parse_args()

    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    train_seconds(False, 5, options.logging_steps)  # warm-up: first-use costs land in neither side
    without, with_energy, inside = [], [], []
    for repeat in range(options.repeats):
        # alternate which side runs first, so that neither always follows the other
        for side in ((False, True) if repeat % 2 == 0 else (True, False)):
            runtime, hook_seconds = train_seconds(side, options.steps, options.logging_steps)
            if side:
                with_energy.append(runtime)
                inside.append(hook_seconds / runtime)
            else:
                without.append(runtime)
    base, measured = statistics.median(without), statistics.median(with_energy)
    pair_ratios = [b / a for a, b in zip(without, with_energy)]
    print(f"training, {options.steps} steps, logging every {options.logging_steps}, {options.repeats} interleaved pairs")
    print(f"  without EnergyCallback: median {base / options.steps * 1000:.2f} ms/step")
    print(f"  with EnergyCallback:    median {measured / options.steps * 1000:.2f} ms/step")
    print(f"  ratio of medians {measured / base:.4f}; median of pair ratios {statistics.median(pair_ratios):.4f}")
    print(f"  time inside EnergyCallback's hooks: median {statistics.median(inside) * 100:.3f}% of train_runtime")

    for module in ("hf_bigsmall.energy.inference", "hf_bigsmall.energy.card", "hf_bigsmall.energy.callback"):
        ms, own_ms, heavy = import_ms(module, 5)
        print(f"import {module}: median {ms:.1f} ms cumulative, {own_ms:.1f} ms in hf_bigsmall modules; "
              f"heavy modules loaded: {heavy or 'none'}")


if __name__ == "__main__":
    main()
