"""SmolLM2-135M made smaller by importance and healed by distillation, against two baselines.

    python benchmarks/bench_importance_pruning.py --heal_steps 40 --output importance_bench.json
    python benchmarks/bench_importance_pruning.py --importance_only   # time compute_importance alone
    python benchmarks/bench_importance_pruning.py --speed_only --threads 1 --rounds 5   # generation speed alone

Measured in one run, with the same students' shape and the same training tokens for all three:
  A. importance: the blocks of highest Block Influence and the FFN neurons of highest activation,
     healed by logit distillation from the unpruned teacher (Minitron's recipe);
  a. evenly spaced blocks (make_student's default), same FFN pruning, same distillation;
  b. importance pruning as in A, healed by plain next-token cross-entropy.
For each: held-out perplexity on the news test split (before and after healing), non-embedding
parameters, and against the teacher at batch 1 on CPU: prefill latency and decode tokens/s,
timed interleaved (teacher, student, teacher, ...) so a shared machine's load hits both alike.
The time of `compute_importance` on 128 calibration windows is printed too.

With --correct_teacher_steps, the teacher is first fine-tuned on the healing rows (Minitron's teacher
correction): the students are cut from it (or from the original, --prune_from original) and the KD runs
learn from it. The corrected teacher's own held-out perplexity is recorded beside the original's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def non_embedding(model) -> int:
    return model.num_parameters() - model.get_input_embeddings().weight.numel()


@torch.no_grad()
def perplexity(model, blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Held-out perplexity, in float32 for a model `heal` trained (it removes the Trainer's autocast wrapper)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size]
        loss = model(input_ids=batch, labels=batch).loss
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        total, count = total + loss.item() * tokens, count + tokens
    return math.exp(total / count)


@torch.no_grad()
def generation_speed(models: dict, prompt: torch.Tensor, new_tokens: int, rounds: int) -> dict:
    """Prefill latency and decode tokens/s at batch 1, models timed in turn each round (medians).

    Each is measured twice: on the wall clock, and on the process's CPU time (`time.process_time`).
    On a machine shared with other jobs the wall clock mostly measures the others; the CPU time
    the process itself spent (with one thread, `--threads 1`) is what the model costs.
    """
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    times = {name: {f"{kind}_{clock}": [] for kind in ("prefill", "decode") for clock in clocks} for name in models}
    for model in models.values():  # warm-up
        model.eval()
        model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    for _ in range(rounds):
        for name, model in models.items():
            start = {clock: read() for clock, read in clocks.items()}
            model(input_ids=prompt, use_cache=True)
            prefill = {clock: read() - start[clock] for clock, read in clocks.items()}
            start = {clock: read() for clock, read in clocks.items()}
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            for clock, read in clocks.items():
                total = read() - start[clock]
                times[name][f"prefill_{clock}"].append(prefill[clock])
                # generate runs the prefill again: take it out, leaving the decode steps
                times[name][f"decode_{clock}"].append(new_tokens / max(total - prefill[clock], 1e-9))
    result = {}
    for name, measured in times.items():
        result[name] = {}
        for clock in clocks:
            result[name][f"prefill_ms_{clock}"] = 1000 * statistics.median(measured[f"prefill_{clock}"])
            result[name][f"decode_tokens_per_s_{clock}"] = statistics.median(measured[f"decode_{clock}"])
    return result


class PerplexityCurve:
    """Held-out perplexity every `every` optimizer steps of a healing run (a `TrainerCallback`)."""

    def __init__(self, blocks: torch.Tensor, every: int, tokens_per_step: int):
        from transformers import TrainerCallback

        self.blocks, self.every, self.tokens_per_step, self.points = blocks, every, tokens_per_step, []
        curve = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if curve.every and state.global_step % curve.every == 0 and state.global_step < state.max_steps:
                    curve.points.append((state.global_step * curve.tokens_per_step, perplexity(model, curve.blocks)))
                    model.train()

        self.callback = _Callback()


def _tail_trainer(tail: str):
    """A DistillationTrainer whose cached loss estimates the teacher's softened tail as `tail` says, to compare."""
    from hf_bigsmall import DistillationTrainer
    from hf_bigsmall.distillation import trainer as trainer_module

    class TailTrainer(DistillationTrainer):
        def _cached_kd(self, student_logits, inputs, labels=None):
            mask = trainer_module.target_mask(inputs.get("labels"), inputs.get("attention_mask"),
                                              shift=self.teacher_logits_record["shift_labels"])
            return trainer_module.cached_distillation_losses(
                student_logits, inputs["teacher_topk_ids"], inputs["teacher_topk_logprobs"],
                inputs["teacher_tail_logprob"], self.args.temperature, mask=mask, labels=labels, reduction="sum",
                chunk_size=max(1, trainer_module.KD_CHUNK_LOGITS // student_logits.shape[-1]), tail=tail)

    return TailTrainer


def heal(student, teacher, train, steps: int, batch_size: int, learning_rate: float, use_kd: bool, output_dir: str,
         bf16: bool = False, callbacks=(), temperature: float = 1.0, tail: str = "uniform", alpha_kd: float = 1.0):
    """Heal `student` for `steps` steps: logit KD from `teacher` (or from the cached columns of `train`
    when `teacher` is None), or plain next-token CE when `use_kd` is False. Returns the wall seconds."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    from hf_bigsmall import DistillationConfig, DistillationTrainer

    common = dict(output_dir=output_dir, max_steps=steps, per_device_train_batch_size=batch_size,
                  learning_rate=learning_rate, warmup_steps=0.1, lr_scheduler_type="cosine", logging_steps=8,
                  save_strategy="no", eval_strategy="no", report_to="none", seed=0, disable_tqdm=True, bf16=bf16,
                  use_cpu=not torch.cuda.is_available())
    if use_kd:
        # Minitron heals with logit distillation alone (forward KL, T = 1; alpha_kd=1)
        args = DistillationConfig(**common, alpha_kd=alpha_kd, alpha_ce=1.0 - alpha_kd, temperature=temperature)
        trainer_class = _tail_trainer(tail) if tail != "uniform" and teacher is None else DistillationTrainer
        trainer = trainer_class(model=student, teacher_model=teacher, args=args, train_dataset=train,
                                      data_collator=default_data_collator, callbacks=list(callbacks))
    else:
        columns = [name for name in train.column_names if name in ("input_ids", "attention_mask", "labels")]
        trainer = Trainer(model=student, args=TrainingArguments(**common), train_dataset=train.select_columns(columns),
                          data_collator=default_data_collator, callbacks=list(callbacks))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    # with bf16=True accelerate leaves its autocast wrapper on the model's forward: take it off, so the
    # healed model is evaluated (and used as a teacher, and timed) in float32 like the models it is compared with
    trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
    return seconds


def corrected_teacher(teacher, train, args, record, eval_blocks):
    """Minitron's teacher correction: the teacher fine-tuned by next-token CE on the healing rows, so the
    distribution it hands the student fits the healing data. Loaded from `args.corrected_teacher` when saved."""
    from transformers import AutoModelForCausalLM

    import copy

    from hf_bigsmall.utils.files import publishing

    folder = Path(args.corrected_teacher) if args.corrected_teacher else None
    steps = args.correct_teacher_steps
    made = {"steps": steps, "rows": min(len(train), steps * args.batch_size), "batch_size": args.batch_size,
            "block_size": args.block_size, "learning_rate": args.learning_rate, "bf16": args.bf16}
    if folder is not None and (folder / "correction.json").is_file():  # written last: the folder is complete
        recorded = json.loads((folder / "correction.json").read_text())
        if steps and recorded != made:
            raise SystemExit(f"--corrected_teacher {folder} was made by {recorded}, not by this run's {made}: "
                             "pass another folder, or drop --correct_teacher_steps to reuse it as it is")
        corrected = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        record(corrected_teacher={"loaded_from": str(folder), **recorded,
                                  "perplexity": perplexity(corrected, eval_blocks)})
        return corrected
    if not steps:
        raise SystemExit(f"--corrected_teacher {folder} holds no corrected teacher: pass --correct_teacher_steps")
    corrected = copy.deepcopy(teacher).train()
    seconds = heal(corrected, None, train.select(range(made["rows"])), steps, args.batch_size, args.learning_rate,
                   use_kd=False, output_dir="/tmp/bench_importance_correction", bf16=args.bf16)
    corrected.eval()
    if folder is not None:
        with publishing(folder) as partial:  # a run killed mid-save leaves no folder that looks complete
            corrected.save_pretrained(partial)
            (partial / "correction.json").write_text(json.dumps(made, indent=2))
    record(corrected_teacher={**made, "tokens": steps * args.batch_size * args.block_size, "seconds": seconds,
                              "perplexity": perplexity(corrected, eval_blocks), "load": os.getloadavg()})
    return corrected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student_layers", type=int, default=24)
    parser.add_argument("--intermediate_size", type=int, default=1280)
    parser.add_argument("--heal_steps", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--calibration_samples", type=int, default=128)
    parser.add_argument("--eval_blocks", type=int, default=48)
    parser.add_argument("--decode_tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--importance", default=None,
                        help="folder or importance.json saved earlier: reuse it instead of measuring (not timed)")
    parser.add_argument("--importance_only", action="store_true", help="time compute_importance and stop")
    parser.add_argument("--speed_only", action="store_true", help="time generation and stop")
    parser.add_argument("--runs", default="importance+kd,even+kd,importance+ce",
                        help="which students to heal (one process per run lets them share a loaded machine)")
    parser.add_argument("--skip_speed", action="store_true")
    parser.add_argument("--skip_teacher", action="store_true")
    parser.add_argument("--output", default="importance_bench.json")
    parser.add_argument("--bf16", action="store_true", help="train under bf16 autocast (fp32 weights and evaluation)")
    parser.add_argument("--teacher_logits", default=None,
                        help="KD runs read the teacher's top-k from this cache folder (made first when missing, "
                             "under bf16 autocast with --bf16), so no teacher runs during training")
    parser.add_argument("--top_k", type=int, default=128)
    parser.add_argument("--logprob_dtype", default="uint8", help="storage of the cached log-probabilities")
    parser.add_argument("--tail_samples", type=int, default=0, help="tokens drawn outside the top-k per target")
    parser.add_argument("--temperature", type=float, default=1.0, help="KD temperature (Minitron heals at 1)")
    parser.add_argument("--alpha_kd", type=float, default=1.0,
                        help="KD runs: weight of the teacher's soft targets, the next-token loss gets the rest")
    parser.add_argument("--tail", choices=["uniform", "student"], default="uniform",
                        help="cached runs: how the teacher's softened tail is estimated under T != 1")
    parser.add_argument("--cache_rows", type=int, default=None,
                        help="rows the cache covers (default: the run's own); shorter runs use its first rows")
    parser.add_argument("--eval_every", type=int, default=0, help="held-out perplexity every N steps (a curve)")
    parser.add_argument("--correct_teacher_steps", type=int, default=0,
                        help="Minitron's teacher correction: first fine-tune the teacher (next-token CE) on the "
                             "healing rows for this many steps; KD runs then learn from the corrected teacher")
    parser.add_argument("--corrected_teacher", default=None,
                        help="folder of the corrected teacher: loaded when it exists, else written after correction")
    parser.add_argument("--prune_from", choices=["corrected", "original"], default="corrected",
                        help="with a corrected teacher: which teacher the students are cut from (Minitron: corrected)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_bigsmall import assets, make_student
    from hf_bigsmall.pruning.importance import Importance, compute_importance
    from hf_bigsmall.pruning.width import prune_width
    from hf_bigsmall.tasks.causal_lm import load_causal_lm_dataset

    results: dict = {"args": vars(args), "load_at_start": os.getloadavg()}

    def record(**values):
        results.update(values)
        Path(args.output).write_text(json.dumps(results, indent=2))
        print(json.dumps(values), flush=True)

    path = assets.smollm2_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    data = load_causal_lm_dataset(tokenizer, assets.NEWS, block_size=args.block_size)
    rows = args.heal_steps * args.batch_size
    cache_rows = max(args.cache_rows or rows, rows)
    # the cache covers the first cache_rows shuffled rows, so runs of any length up to it share one cache
    train_all = data["train"].shuffle(seed=0).select(range(cache_rows))
    train = train_all.select(range(rows))
    step = max(1, len(data["eval"]) // args.eval_blocks)
    eval_blocks = torch.tensor(data["eval"].select(range(0, step * args.eval_blocks, step))["input_ids"])

    if args.importance:
        importance = Importance.load(args.importance)
    else:
        start, cpu_start = time.perf_counter(), time.process_time()
        importance = compute_importance(teacher, data["train"], num_samples=args.calibration_samples,
                                        seq_len=args.block_size)
        # CPU seconds of this process: with --threads N, about N x the wall time of a quiet machine
        record(importance_seconds=time.perf_counter() - start, importance_cpu_seconds=time.process_time() - cpu_start,
               importance_load=os.getloadavg())
        importance.save(Path(args.output).with_suffix(""))
        if args.importance_only:
            return
    record(least_important_blocks=importance.blocks.argsort().tolist())
    if not args.speed_only and not args.skip_teacher:
        record(teacher={"non_embedding_params": non_embedding(teacher),
                        "perplexity": perplexity(teacher, eval_blocks)})
    original = teacher
    if args.prune_from == "original" and not (args.correct_teacher_steps or args.corrected_teacher):
        raise SystemExit("--prune_from original only means something with a corrected teacher "
                         "(--correct_teacher_steps or --corrected_teacher)")
    if args.correct_teacher_steps or args.corrected_teacher:
        teacher = corrected_teacher(teacher, train, args, record, eval_blocks)
    # the units kept are those the original teacher's importance ranks highest, so only the weights differ
    source = teacher if args.prune_from == "corrected" else original

    def build(selection):
        student = make_student(source, args.student_layers, teacher_layers=selection, importance=importance)
        kept = importance.select_layers(student.config.distillation["teacher_layers"])
        if args.intermediate_size:
            prune_width(student, kept, intermediate_size=args.intermediate_size)
        return student

    # speed depends on the shape only, which the three students share: timed before any healing
    prompt = eval_blocks[:1, :32]
    speed = {} if args.skip_speed else generation_speed({"teacher": teacher, "student": build("importance")}, prompt,
                                                        args.decode_tokens, args.rounds)
    for clock in ("wall", "cpu") if speed else ():
        speed[f"decode_speedup_{clock}"] = (speed["student"][f"decode_tokens_per_s_{clock}"]
                                            / speed["teacher"][f"decode_tokens_per_s_{clock}"])
        speed[f"prefill_speedup_{clock}"] = speed["teacher"][f"prefill_ms_{clock}"] / speed["student"][f"prefill_ms_{clock}"]
    if speed:
        record(speed=speed, speed_load=os.getloadavg())
    if args.speed_only:
        return

    runs = {"importance+kd": ("importance", True), "even+kd": (None, True), "importance+ce": ("importance", False)}
    cached_train = None
    if args.teacher_logits and any(runs[name][1] for name in args.runs.split(",")):
        from contextlib import nullcontext

        from hf_bigsmall import cache_teacher_logits, load_teacher_logits
        from hf_bigsmall.distillation.cache import weights_fingerprint

        manifest = Path(args.teacher_logits) / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("teacher_fingerprint") != weights_fingerprint(teacher):
            raise SystemExit(f"{args.teacher_logits} holds the logits of another teacher (the original one, or "
                             "another correction): pass a new folder")
        if not manifest.is_file():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else nullcontext():
                cache_teacher_logits(teacher, train_all, args.teacher_logits, top_k=args.top_k, batch_size=8,
                                     logprob_dtype=args.logprob_dtype, tail_samples=args.tail_samples)
            record(cache_seconds=time.perf_counter() - start, cache_tokens=len(train_all) * args.block_size)
        cached_train = load_teacher_logits(args.teacher_logits, train_all)
        if len(train) < len(train_all):
            cached_train = cached_train.select(range(len(train)))
    tokens_per_step = args.batch_size * args.block_size
    for name in args.runs.split(","):
        selection, use_kd = runs[name]
        student = build(selection)
        before = perplexity(student, eval_blocks)
        curve = PerplexityCurve(eval_blocks, args.eval_every, tokens_per_step)
        from_cache = use_kd and cached_train is not None
        seconds = heal(student, None if from_cache else teacher, cached_train if from_cache else train,
                       args.heal_steps, args.batch_size, args.learning_rate, use_kd,
                       output_dir=f"/tmp/bench_importance_{name}", bf16=args.bf16, callbacks=[curve.callback],
                       temperature=args.temperature, tail=args.tail, alpha_kd=args.alpha_kd)
        tokens = args.heal_steps * tokens_per_step
        record(**{name: {
            "teacher_layers": student.config.distillation["teacher_layers"],
            "non_embedding_params": non_embedding(student),
            "fewer_non_embedding": 1 - non_embedding(student) / non_embedding(teacher),
            "perplexity_pruned": before, "perplexity_healed": perplexity(student, eval_blocks),
            "curve": curve.points, "from_cache": from_cache,
            "heal_tokens": tokens, "heal_seconds": seconds, "heal_tokens_per_s": tokens / seconds,
            "load": os.getloadavg(),
        }})
    record(load_at_end=os.getloadavg())


if __name__ == "__main__":
    main()
