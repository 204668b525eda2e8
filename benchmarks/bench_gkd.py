"""Our JSD distillation step next to TRL's GKDTrainer with the same models, batch and beta.

    pip install --no-deps --target /tmp/trl trl      # TRL is not a dependency of hf_bigsmall
    PYTHONPATH=/tmp/trl python benchmarks/bench_gkd.py --batch_size 4 --seq_len 512

SmolLM2-135M teacher, 8-layer student made from it, one batch of random tokens. Both train on the
generalised JSD alone (`beta` 0.5, temperature 1; GKD's `lmbda=0`, i.e. off-policy, no generation):
TRL's `GKDTrainer.training_step` against `DistillationTrainer(kd_loss="jsd", alpha_kd=1, alpha_ce=0)`
(its default fused LM-head loss). Steps are timed interleaved (A, B, A, B, ...) in one process, and
the peak resident memory of each is measured in a fresh process of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("trl_gkd_step", "hf_bigsmall_jsd_step")


def build(args, modes=MODES):
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import DistillationConfig, DistillationTrainer, assets, make_student

    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_pretrained(assets.smollm2_path())
    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
    student = make_student(teacher, num_layers=8)
    input_ids = torch.randint(1000, teacher.config.vocab_size, (args.batch_size, args.seq_len))
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}
    common = dict(output_dir="/tmp/bench_gkd", report_to="none", use_cpu=True, max_grad_norm=1.0, learning_rate=1e-5,
                  bf16=False, gradient_checkpointing=False)
    trainers = {}
    if "trl_gkd_step" in modes:
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        copy = make_student(teacher, num_layers=8)
        copy.load_state_dict(student.state_dict())
        # GKDTrainer is an SFTTrainer and wants a conversational dataset; the step below feeds its own batch
        rows = Dataset.from_dict({"messages": [[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]]})
        trainers["trl_gkd_step"] = GKDTrainer(
            model=copy, teacher_model=teacher, processing_class=tokenizer, train_dataset=rows,
            args=GKDConfig(**common, lmbda=0.0, beta=args.beta, temperature=1.0, max_length=args.seq_len))
    if "hf_bigsmall_jsd_step" in modes:
        trainers["hf_bigsmall_jsd_step"] = DistillationTrainer(
            model=student, teacher_model=teacher,
            args=DistillationConfig(**common, kd_loss="jsd", jsd_beta=args.beta, temperature=1.0, alpha_kd=1.0,
                                    alpha_ce=0.0))
    for trainer in trainers.values():
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1

    def step(trainer):
        inputs = trainer._prepare_inputs(dict(batch))
        trainer.training_step(trainer.model_wrapped, inputs, trainer._get_num_items_in_batch([inputs], "cpu"))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return {mode: (lambda trainer=trainer: step(trainer)) for mode, trainer in trainers.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=512)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory_of", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_of:
        step = build(args, (args.memory_of,))[args.memory_of]
        for _ in range(2):
            step()
        with open("/proc/self/status") as status:
            peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024
        print(json.dumps({"peak_mb": peak}))
        return

    steps = build(args)
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {mode: [] for mode in steps}
    for _ in range(args.repeats):
        for mode, step in steps.items():
            start = time.perf_counter()
            step()
            times[mode].append(time.perf_counter() - start)
    memory = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--memory_of", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ)).stdout
        memory[mode] = json.loads(out.strip().splitlines()[-1])["peak_mb"]
    import trl

    print(f"batch={args.batch_size}x{args.seq_len} beta={args.beta} T=1 trl={trl.__version__} "
          f"torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'mode':<22} {'median s/step':>14} {'peak MB':>9}")
    for mode in MODES:
        print(f"{mode:<22} {statistics.median(times[mode]):>14.3f} {memory[mode]:>9.0f}")
    for mode in MODES:
        print(f"{mode:<22} rounds: " + ", ".join(f"{t:.2f}" for t in times[mode]))
    paired = statistics.median(b / a for a, b in zip(times["trl_gkd_step"], times["hf_bigsmall_jsd_step"]))
    print(f"hf_bigsmall / TRL GKD step time: median of per-round ratios {paired:.3f}")


if __name__ == "__main__":
    main()
