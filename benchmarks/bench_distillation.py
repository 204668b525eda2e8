"""Cost of one online distillation step next to its irreducible parts, measured side by side.

    python benchmarks/bench_distillation.py                       # MiniLM teacher, 3-layer student
    python benchmarks/bench_distillation.py --task causal_lm      # SmolLM2-135M teacher, 8-layer student
    python benchmarks/bench_distillation.py --task llama_128k --batch_size 1 --seq_len 2048 \
        --compare_materialised                                    # random Llama, 128,256-token vocabulary

For the same student, batch and optimizer it times, interleaved (A, B, C, A, B, C, ...) so that a
shared machine's load hits all three alike:
  A. plain fine-tuning step of the student (`Trainer.training_step` + optimizer step),
  B. forward pass of the teacher alone (eval, no_grad),
  C. online distillation step (`DistillationTrainer.training_step` + optimizer step),
(every other round in reverse order), and reports medians, steps/s and the ratio C / (A + B): the target is <= 1.10, i.e. our loss
machinery adds under 10% to the irreducible cost. Peak memory of each (GPU: max allocated; CPU:
peak resident set, one fresh process per mode) is printed as well.

For causal LMs C runs the fused LM-head loss (the default); `--compare_materialised` adds
D. the same distillation step from materialised logits (`fused_lm_head_loss=False`), interleaved
with the others. `--memory_modes` measures the peak of only some modes (e.g. at 8,192 tokens,
where a materialised step does not fit), `--no_timing` skips the timed rounds. `--before PATH` adds
E. the same distillation step run by another copy of the package (e.g. `--before ../before/hf_bigsmall`,
an older checkout), imported under another name in the same process and interleaved with the others,
so that a change to the loss is timed against the code before it under the same load.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODES = ("student_step", "teacher_forward", "distill_step", "materialised_step", "before_step")


def import_package_copy(path: str):
    """The package at `path` (a folder holding `__init__.py`) imported as `hf_bigsmall_before`."""
    folder = Path(path).resolve()
    spec = importlib.util.spec_from_file_location("hf_bigsmall_before", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["hf_bigsmall_before"] = module
    spec.loader.exec_module(module)
    return module


def build(task: str, batch_size: int, seq_len: int, device: str, alpha_hidden: float, kd_chunk_size: int | None,
          loss: dict | None = None, before: str | None = None):
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainingArguments,
    )

    from hf_bigsmall import DistillationConfig, DistillationTrainer, assets, make_student

    torch.manual_seed(0)
    loss = loss or {}
    if task == "classification":
        teacher = AutoModelForSequenceClassification.from_pretrained(assets.minilm_path(), num_labels=2)
        student = make_student(teacher, num_layers=3)
        labels = torch.randint(0, 2, (batch_size,))
    elif task == "llama_128k":  # a Llama-3-sized vocabulary on a small body: the logits dominate
        teacher = LlamaForCausalLM(LlamaConfig(
            vocab_size=128256, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=max(seq_len, 2048), tie_word_embeddings=True))
        student = make_student(teacher, num_layers=2)
        labels = None
    else:
        teacher = AutoModelForCausalLM.from_pretrained(assets.smollm2_path())
        student = make_student(teacher, num_layers=8)
        labels = None
    vocab = teacher.config.vocab_size
    input_ids = torch.randint(1000, vocab, (batch_size, seq_len))
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    batch["labels"] = input_ids.clone() if labels is None else labels

    common = dict(output_dir="/tmp/bench_distillation", report_to="none", use_cpu=device == "cpu",
                  max_grad_norm=1.0, learning_rate=1e-5, bf16=device == "cuda")
    plain_student = make_student(teacher, num_layers=student.config.num_hidden_layers)
    plain_student.load_state_dict(student.state_dict())
    plain = Trainer(model=plain_student, args=TrainingArguments(**common))
    distill_args = dict(common, alpha_hidden=alpha_hidden, kd_chunk_size=kd_chunk_size, **loss)
    distill = DistillationTrainer(model=student, teacher_model=teacher, args=DistillationConfig(**distill_args))
    materialised_student = make_student(teacher, num_layers=student.config.num_hidden_layers)
    materialised_student.load_state_dict(student.state_dict())
    materialised = DistillationTrainer(model=materialised_student, teacher_model=teacher,
                                       args=DistillationConfig(**distill_args, fused_lm_head_loss=False))
    trainers = [plain, distill, materialised]
    if before:
        # its modules, not its lazy top-level names (those point at `hf_bigsmall`, i.e. this copy)
        name = import_package_copy(before).__name__
        before_trainer = importlib.import_module(f"{name}.distillation.trainer").DistillationTrainer
        before_config = importlib.import_module(f"{name}.distillation.config").DistillationConfig
        before_student = make_student(teacher, num_layers=student.config.num_hidden_layers)
        before_student.load_state_dict(student.state_dict())
        distill.before = before_trainer(model=before_student, teacher_model=teacher, args=before_config(**distill_args))
        trainers.append(distill.before)
    for trainer in trainers:
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
    return plain, distill, materialised, batch


def one_step(trainer, batch):
    model = trainer.model_wrapped
    inputs = trainer._prepare_inputs(dict(batch))
    num_items = trainer._get_num_items_in_batch([inputs], trainer.args.device)
    trainer.training_step(model, inputs, num_items)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def runner(mode, plain, distill, materialised, batch):
    if mode == "student_step":
        return lambda: one_step(plain, batch)
    if mode == "distill_step":
        return lambda: one_step(distill, batch)
    if mode == "materialised_step":
        return lambda: one_step(materialised, batch)
    if mode == "before_step":
        return lambda: one_step(distill.before, batch)
    teacher = distill.teacher_model
    inputs = distill._prepare_inputs({k: v for k, v in batch.items() if k != "labels"})

    def forward():
        with torch.no_grad():
            teacher(**inputs)

    return forward


def synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_for(args):
    loss = {name: getattr(args, name) for name in ("kd_loss", "temperature", "alpha_kd") if getattr(args, name) is not None}
    if "alpha_kd" in loss:
        loss["alpha_ce"] = 1.0 - loss["alpha_kd"]
    return build(args.task, args.batch_size, args.seq_len, args.device, args.alpha_hidden, args.kd_chunk_size, loss,
                 args.before)


def timed_modes(args) -> tuple[str, ...]:
    modes = MODES[:4] if args.compare_materialised else MODES[:3]
    return modes + ("before_step",) if args.before else modes


def time_interleaved(args) -> dict[str, list[float]]:
    plain, distill, materialised, batch = build_for(args)
    steps = {mode: runner(mode, plain, distill, materialised, batch) for mode in timed_modes(args)}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {mode: [] for mode in steps}
    for round_index in range(args.repeats):
        # every other round runs the modes in reverse order, so that no mode always follows the same one
        order = list(steps.items())
        for mode, step in order[::-1] if round_index % 2 else order:
            synchronize()
            start = time.perf_counter()
            step()
            synchronize()
            times[mode].append(time.perf_counter() - start)
    return times


def peak_memory(args, mode: str) -> float:
    """Peak memory in MB of `mode` alone, in a fresh process (CPU) or after a reset (GPU)."""
    plain, distill, materialised, batch = build_for(args)
    # only the measured mode's trainer keeps its models: the others' would count in the peak
    keep = {"student_step": plain, "distill_step": distill, "materialised_step": materialised}.get(mode)
    step = runner(mode, plain if keep is plain else None,
                  distill if mode in ("distill_step", "teacher_forward", "before_step") else None,
                  materialised if keep is materialised else None, batch)
    del plain, distill, materialised, keep
    gc.collect()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        return torch.cuda.max_memory_allocated() / 2**20
    for _ in range(2):
        step()
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["classification", "causal_lm", "llama_128k"], default="classification")
    parser.add_argument("--kd_loss", default=None, help="divergence (default: DistillationConfig's)")
    parser.add_argument("--temperature", type=float, default=None, help="default: DistillationConfig's")
    parser.add_argument("--alpha_kd", type=float, default=None, help="alpha_ce is 1 - alpha_kd; default: the config's")
    parser.add_argument("--compare_materialised", action="store_true",
                        help="also time the distillation step from materialised logits (fused_lm_head_loss=False)")
    parser.add_argument("--memory_modes", default=None, help="comma-separated modes whose peak memory to measure")
    parser.add_argument("--no_timing", action="store_true", help="measure peak memory only")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--alpha_hidden", type=float, default=0.0)
    parser.add_argument("--kd_chunk_size", type=int, default=None,
                        help="rows per KD chunk (default: automatic; a number above batch x seq_len turns chunking off)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--before", default=None,
                        help="folder of another copy of the package (e.g. an older checkout's hf_bigsmall) whose "
                             "distillation step is timed beside this one's")
    parser.add_argument("--memory_of", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.memory_of:
        print(json.dumps({"peak_mb": peak_memory(args, args.memory_of)}))
        return

    times = {} if args.no_timing else time_interleaved(args)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    memory = {}
    default_memory_modes = [mode for mode in timed_modes(args) if mode != "before_step"]
    for mode in args.memory_modes.split(",") if args.memory_modes else default_memory_modes:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--memory_of", mode]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=dict(os.environ)).stdout
        memory[mode] = json.loads(out.strip().splitlines()[-1])["peak_mb"]

    print(f"task={args.task} batch={args.batch_size}x{args.seq_len} kd_chunk_size={args.kd_chunk_size or 'auto'} device={args.device} "
          f"kd_loss={args.kd_loss or 'default'} T={args.temperature or 'default'} alpha_kd={args.alpha_kd or 'default'} "
          f"torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"{'mode':<18} {'median s/step':>14} {'steps/s':>9} {'peak MB':>9}")
    for mode in MODES:
        if mode in medians or mode in memory:
            median = medians.get(mode, float("nan"))
            print(f"{mode:<18} {median:>14.4f} {1 / median:>9.2f} {memory.get(mode, float('nan')):>9.0f}")
    if not times:
        return
    if "materialised_step" in medians:
        paired = statistics.median(a / b for a, b in zip(times["distill_step"], times["materialised_step"]))
        print(f"fused / materialised distillation step: {medians['distill_step'] / medians['materialised_step']:.3f} "
              f"(median of per-round ratios {paired:.3f})")
    ratio = medians["distill_step"] / (medians["student_step"] + medians["teacher_forward"])
    paired = statistics.median(
        c / (a + b) for a, b, c in zip(times["student_step"], times["teacher_forward"], times["distill_step"])
    )
    print(f"distill / (student + teacher forward): {ratio:.3f} (median of per-round ratios {paired:.3f}; target <= 1.10)")
    if "before_step" in medians:
        paired = statistics.median(
            c / (a + b) for a, b, c in zip(times["student_step"], times["teacher_forward"], times["before_step"]))
        ratio = medians["before_step"] / (medians["student_step"] + medians["teacher_forward"])
        print(f"before / (student + teacher forward): {ratio:.3f} (median of per-round ratios {paired:.3f})")
        paired = statistics.median(a / b for a, b in zip(times["distill_step"], times["before_step"]))
        print(f"distill / before: {medians['distill_step'] / medians['before_step']:.3f} "
              f"(median of per-round ratios {paired:.3f})")
    print("per-round seconds: " + json.dumps({mode: [round(t, 3) for t in values] for mode, values in times.items()}))


if __name__ == "__main__":
    main()
