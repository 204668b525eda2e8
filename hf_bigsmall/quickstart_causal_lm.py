"""`hf-bigsmall quickstart --task causal-lm`: an LLM made smaller by importance, healed by distillation.

Offline on the embedded SmolLM2-135M and news corpus: measure the importance of every block, FFN
neuron, head and hidden channel on calibration text (Minitron, Sreenivas et al. 2024; Block
Influence, Men et al. 2024), keep the most important blocks and neurons, heal the pruned student by
distillation from the unpruned teacher, then measure them side by side:

```
bigsmall_output_causal_lm/
  bigsmall_run.json                      which pipeline wrote the folder (see `quickstart.check_output_dir`)
  teacher/ student-pruned/ student/      each loads with plain from_pretrained, README.md model card
  teacher-corrected/                     with --correct_teacher_steps only
  importance.json  importance.png        what was measured, per layer
  teacher-int8/ student-int8/            served the way LLMs are served by the fastest installed engine
  teacher-int4/ student-int4/            (`SERVING_BACKENDS`): ONNX Runtime GenAI int8/int4, else llama.cpp GGUF
  report.md  report.json  quality_vs_size.png  quality_vs_energy.png  quality_vs_decode_speed.png
```

`student-pruned` is the pruned model before healing; `student` is the healed one. Every model folder
carries `emissions.json`: its own run plus the runs it was made from. The teacher and the healed
student are also served in 8 and 4 bits by one engine, built from their saved folders, so the report
answers whether the small model still decodes faster than the big one once both are served the way
LLMs are served, at what cost in perplexity, and which models are not worth serving at all (dominated
on perplexity and decode speed). `--no_quantize` leaves them out.

With `--correct_teacher_steps N`, the teacher is first fine-tuned on the corpus (Minitron's teacher
correction): a teacher that never saw the data hands the student a distribution that does not fit it.
By default it learns from the blocks right after the healing ones (`--correct_teacher_data disjoint`),
not from the healing blocks themselves. The student is then cut from, and distilled by, the
corrected teacher; the original stays in the comparison as the model the user started from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import assets
from .distillation.record import DistillationRecord, TeacherCorrectionRecord
from .quickstart import DEFAULT_OUTPUT_DIRS, check_output_dir, drop_stale, record_run
from .utils.console import echo
from .utils.files import KIT_MARKER, atomic_write_json, fresh_partial_dir, publish_dir, publishing
from .utils.import_utils import _is_package_available, require
from .utils.precision import native_bf16

# The engines (`quantize` backends) that can serve the teacher and the student, fastest at equal quality
# first, and the precisions they serve them at. The quickstart serves with the first one installed: the
# one place its engine is chosen (BENCHMARKS.md, "Serving engines side by side": at 1 thread GenAI int8
# decoded 1.2x to 1.35x faster than llama.cpp Q8_0 at the same perplexity, GenAI int4 1.35x to 1.55x faster
# than llama.cpp Q4_0 at a worse one). llama.cpp serves where GenAI is not installed (onnxruntime-genai
# 0.18 needs Python 3.11+).
SERVING_BACKENDS = ("onnxruntime-genai", "gguf")
# what each engine needs importable to export and to run what it exported, and the extra that installs it
_ENGINE_MODULES = {"gguf": (("gguf", "llama_cpp"), "llamacpp"),
                   "onnxruntime-genai": (("onnxruntime_genai", "onnx_ir"), "genai")}
SERVED_METHODS = ("int8", "int4")
# training blocks that calibrate the served int4 models with --calibrate_int4 (GPTQ), as `quantize
# --calibration_dataset` takes by default (BENCHMARKS.md, "GPTQ-calibrated GenAI int4")
INT4_CALIBRATION_BLOCKS = 32
SERVED_MODELS = ("teacher", "student")  # the original teacher: quantizing it is what a user would do instead

# (calibration samples, healing steps, batch size, evaluation articles, latency samples)
_BUDGETS = {"default": (128, 120, 4, 64, 10), "fast": (8, 2, 2, 6, 2)}
TINY_TEACHER = "tiny-random-llama"


@dataclass
class CausalLMQuickstartArguments:
    """Options of `hf-bigsmall quickstart --task causal-lm` (each is a `--flag` on the command line)."""

    task: str = field(default="causal-lm", metadata={
        "help": "causal-lm (this pipeline) or text-classification (`hf-bigsmall quickstart --help`).",
        "choices": ["text-classification", "causal-lm"]})
    teacher: str = field(default=assets.SMOLLM2, metadata={
        "help": f"Causal LM teacher (GPT-2 or Llama-style): a folder, a Hub id, an embedded name, or "
                f"{TINY_TEACHER!r} (a random 4-layer Llama with SmolLM2's tokenizer, for smoke tests)."})
    dataset: str = field(default=assets.NEWS, metadata={
        "help": "Text corpus with a `text` column and a held-out split: embedded name or Hub id."})
    output_dir: str = field(default=DEFAULT_OUTPUT_DIRS["causal-lm"], metadata={
        "help": "Folder that receives everything. A folder holding a text-classification run's results is refused."})
    student_layers: int | None = field(default=None, metadata={
        "help": "Blocks the student keeps, the most important by Block Influence (default: 4/5 of the "
                "teacher's, 24 of SmolLM2's 30)."})
    intermediate_size: int | None = field(default=None, metadata={
        "help": "FFN width of every kept block, its most important neurons (default: 5/6 of the teacher's, "
                "a multiple of 8: 1280 of SmolLM2's 1536; together 30% fewer non-embedding parameters)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Query heads kept (Llama)."})
    num_key_value_heads: int | None = field(default=None, metadata={"help": "Key/value groups kept (Llama)."})
    hidden_size: int | None = field(default=None, metadata={"help": "Hidden channels kept (Llama)."})
    fast: bool = field(default=False, metadata={"help": "A run of about a minute (CI, smoke test)."})
    calibration_samples: int | None = field(default=None, metadata={"help": "Calibration blocks (128)."})
    heal_steps: int | None = field(default=None, metadata={"help": "Distillation steps that heal the student."})
    batch_size: int | None = field(default=None, metadata={"help": "Training batch size, in blocks."})
    block_size: int = field(default=128, metadata={"help": "Tokens per block (training, calibration, evaluation)."})
    eval_samples: int | None = field(default=None, metadata={"help": "Held-out articles the comparison measures."})
    learning_rate: float = field(default=3e-4, metadata={
        "help": "Peak learning rate of the healing (cosine, 10% warm-up); 3e-4 healed SmolLM2 faster than 1e-3 "
                "(BENCHMARKS.md)."})
    bf16: bool | None = field(default=None, metadata={
        "help": "Heal (and correct the teacher) under bf16 autocast, weights in float32: `--bf16 true` or `--bf16 "
                "false`. Default: on where the hardware computes bf16 natively (an Ampere or newer CUDA GPU, a CPU with "
                "AMX-BF16 or AVX512-BF16), off elsewhere, where emulated bf16 trains slower than float32. On the "
                "2-core AMX Xeon of BENCHMARKS.md it healed the default student faster at the same held-out "
                "perplexity (BENCHMARKS.md). The choice and why are in bigsmall_run.json.",
        "nargs": "?", "const": True})
    temperature: float = field(default=1.0, metadata={"help": "Distillation temperature."})
    alpha_kd: float = field(default=0.5, metadata={
        "help": "Weight of the teacher's soft targets; the next-token loss gets 1 - alpha_kd. Minitron heals with "
                "logit distillation alone (1.0) from a teacher that knows the data; SmolLM2 never saw the news "
                "corpus, and there 0.5 healed better than either loss alone (BENCHMARKS.md)."})
    alpha_hidden: float = field(default=0.0, metadata={
        "help": "Weight of hidden-state distillation between each kept block and the teacher block it came from "
                "(0: logits only). Needs the teacher's hidden_size."})
    correct_teacher_steps: int = field(default=0, metadata={
        "help": "Teacher correction (Minitron): first fine-tune the teacher with the next-token loss for this many "
                "steps (batch size, schedule and bf16 as the healing's; data: correct_teacher_data), then measure "
                "importance on it, prune it and distil from it. Saved as teacher-corrected/ and compared beside the "
                "original teacher. 0: the teacher as it is. At the default budget it healed no better than the "
                "teacher as it is, in 1.7x the time (BENCHMARKS.md)."})
    correct_teacher_data: str = field(default="disjoint", metadata={
        "help": "What the teacher correction trains on: 'disjoint' (as many blocks as it needs, right after the "
                "healing blocks in the training split, so the teacher's soft targets on the healing blocks are not "
                "ones it has just fitted) or 'healing' (the healing blocks themselves, as Minitron does at scale). "
                "On the 61 k-token default, disjoint healed better (BENCHMARKS.md).",
        "choices": ["healing", "disjoint"]})
    correct_teacher_learning_rate: float | None = field(default=None, metadata={
        "help": "Peak learning rate of the teacher correction (default: the healing's learning_rate)."})
    quantize: bool = field(default=True, metadata={
        "help": "Also serve the teacher and the healed student the way LLMs are served: teacher-int8, student-int8, "
                "teacher-int4 and student-int4 with the fastest installed engine, ONNX Runtime GenAI (int8/int4 "
                "MatMulNBits; `pip install \"hf-bigsmall[genai]\"`) or else llama.cpp (GGUF Q8_0 and Q4_K_M or "
                "Q4_0; `pip install \"hf-bigsmall[llamacpp]\"`), measured beside the PyTorch models. "
                "--no_quantize leaves them out."})
    calibrate_int4: bool = field(default=False, metadata={
        "help": "Quantize the 4-bit matrices of teacher-int4 and student-int4 by GPTQ, calibrated on the first "
                f"{INT4_CALIBRATION_BLOCKS} training blocks, instead of round-to-nearest (ONNX Runtime GenAI only): "
                "x1.03 of fp32 perplexity instead of x1.09 on SmolLM2 and its student, same size and speed, for 20 to 45 s "
                "of CPU per model (BENCHMARKS.md, '--calibrate_int4'). Off by default to keep the "
                "run within 10 minutes."})
    seed: int = field(default=42, metadata={"help": "Random seed."})

    def __post_init__(self):
        if self.task != "causal-lm":
            raise ValueError(f"task must be 'causal-lm' here, got {self.task!r}.")
        if not 0.0 <= self.alpha_kd <= 1.0:
            raise ValueError(f"alpha_kd must be in [0, 1] (the next-token loss gets 1 - alpha_kd), got {self.alpha_kd}.")
        calibration, heal, batch, eval_samples, latency = _BUDGETS["fast" if self.fast else "default"]
        # only an unset option takes the budget's value: an explicit 0 is refused below, never replaced
        self.calibration_samples = calibration if self.calibration_samples is None else self.calibration_samples
        self.heal_steps = self.heal_steps if self.heal_steps is not None else heal
        self.batch_size = batch if self.batch_size is None else self.batch_size
        self.eval_samples = eval_samples if self.eval_samples is None else self.eval_samples
        self.latency_samples = latency
        # bf16 where the hardware has it, unless the user said otherwise; `bf16_origin` says which
        native = native_bf16()
        if self.bf16 is None:
            self.bf16 = native is not None
            self.bf16_origin = f"default: {native}" if native else "default: no native bf16 on this machine"
        else:
            self.bf16_origin = f"--bf16 {str(self.bf16).lower()}"
        for name in ("calibration_samples", "batch_size", "block_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}.")
        if self.alpha_hidden and self.hidden_size is not None:
            raise ValueError("alpha_hidden compares hidden states of the teacher's width: leave hidden_size unset "
                             "or set alpha_hidden=0.")
        if self.heal_steps < 0:
            raise ValueError(f"heal_steps must be >= 0, got {self.heal_steps}.")
        if self.correct_teacher_steps < 0:
            raise ValueError(f"correct_teacher_steps must be >= 0 (0 leaves the teacher as it is), got "
                             f"{self.correct_teacher_steps}.")
        if self.correct_teacher_data not in ("healing", "disjoint"):
            raise ValueError(f"correct_teacher_data must be 'healing' or 'disjoint', got {self.correct_teacher_data!r}.")
        if self.correct_teacher_learning_rate is not None and not self.correct_teacher_learning_rate > 0:
            raise ValueError(f"correct_teacher_learning_rate must be a positive number, got "
                             f"{self.correct_teacher_learning_rate}.")
        if self.student_layers is not None and self.student_layers < 1:
            raise ValueError(f"student_layers={self.student_layers} would remove every layer: keep at least 1.")
        if self.calibrate_int4 and not self.quantize:
            raise ValueError("--calibrate_int4 calibrates the served int4 models, which --no_quantize leaves out: drop "
                             "one of the two.")


def tiny_random_llama(tokenizer):
    """A random 4-layer Llama (grouped-query attention) with SmolLM2's vocabulary: seconds instead of minutes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    return LlamaForCausalLM(config)


class _Stages:
    """Numbers the stages of a run, `[2/6] ...`, and times each."""

    def __init__(self, total: int):
        self.total, self.number = total, 0

    def __call__(self, text: str) -> float:
        self.number += 1
        echo(f"\n[{self.number}/{self.total}] {text}")
        return time.perf_counter()


def _done(start: float, where: Path) -> None:
    echo(f"      done in {time.perf_counter() - start:.0f} s -> {where}")


def _save(model, tokenizer, folder: Path, importance=None) -> Path:
    """Write a model folder through a `.partial` of its own, so an interrupted run never leaves half of one."""
    with publishing(folder) as partial:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        if importance is not None:
            importance.save(partial)
    return folder


def _teacher(args: CausalLMQuickstartArguments):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.teacher == TINY_TEACHER:
        tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_path())
        return tiny_random_llama(tokenizer).eval(), tokenizer
    path = assets.resolve_model(args.teacher)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tokenizer


def _precision(args: CausalLMQuickstartArguments) -> str:
    """How the training stages compute, and why: `bf16 autocast (default: CPU with AMX-BF16)`."""
    return f"{'bf16 autocast' if args.bf16 else 'float32'} ({args.bf16_origin})"


def _default_layers(depth: int) -> int:
    return max(1, round(depth * 0.8))


def _default_intermediate(teacher) -> int | None:
    config = teacher.config
    width = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
    return max(8, int(width * 5 / 6) // 8 * 8)


def _training_arguments(args: CausalLMQuickstartArguments, output_dir: Path, steps: int, learning_rate: float) -> dict:
    """What the correction and the healing share: cosine schedule, 10% warm-up, no checkpoints."""
    import torch

    # TrainingArguments refuses bf16 without a GPU unless told that the CPU is meant; training runs there anyway
    on_cpu = args.bf16 and not torch.cuda.is_available()
    return dict(output_dir=str(output_dir), max_steps=max(steps, 1), per_device_train_batch_size=args.batch_size,
                learning_rate=learning_rate, warmup_steps=0.1, lr_scheduler_type="cosine",
                logging_steps=max(1, steps // 10), save_strategy="no", eval_strategy="no", report_to="none",
                seed=args.seed, disable_tqdm=False, bf16=args.bf16, **({"use_cpu": True} if on_cpu else {}))


def _correct_teacher(args: CausalLMQuickstartArguments, teacher, tokenizer, train, folder: Path) -> None:
    """Fine-tune `teacher` in place on `train` (next-token loss) and save it to `folder`.

    The caller reloads it from `folder` rather than going on with this object: after a `bf16` run its
    `forward` still runs under the Trainer's autocast, and the optimizer state would stay alive."""
    from transformers import TrainingArguments, default_data_collator

    from . import BigSmallTrainer, EnergyCallback

    partial = fresh_partial_dir(folder)
    learning_rate = args.correct_teacher_learning_rate or args.learning_rate
    TeacherCorrectionRecord(  # read by its model card
        source=args.teacher, dataset=args.dataset, tokens=args.correct_teacher_steps * args.batch_size
        * args.block_size, steps=args.correct_teacher_steps, data=args.correct_teacher_data,
        learning_rate=learning_rate).write(teacher.config)
    trainer = BigSmallTrainer(model=teacher.train(), args=TrainingArguments(**_training_arguments(
                                  args, partial, args.correct_teacher_steps, learning_rate)),
                              train_dataset=train, data_collator=default_data_collator, processing_class=tokenizer,
                              callbacks=[EnergyCallback(training_type="fine-tuning")])
    trainer.train()
    trainer.save_model(str(partial))
    tokenizer.save_pretrained(partial)
    publish_dir(partial, folder)


# how each model was made: the folders it came from, the run, whether that run trained it
_LINEAGE = {
    "teacher": ((), "pretrained checkpoint, not trained here", True),
    "teacher-corrected": (("teacher",), "teacher correction (fine-tuning on the corpus)", True),
    "student-pruned": (("{source}",), "importance pruning (calibration only)", False),
    "student": (("student-pruned", "{source}"), "distillation", True),
    **{f"{name}-{method}": ((name,), f"{method} quantization ({{backend}})", False)
       for name in SERVED_MODELS for method in SERVED_METHODS},
}


def serving_backend() -> str | None:
    """The first of `SERVING_BACKENDS` whose packages are installed (the fastest measured), or None."""
    for backend in SERVING_BACKENDS:
        if all(_is_package_available(module) for module in _ENGINE_MODULES[backend][0]):
            return backend
    return None


def served_names() -> list[str]:
    """The folders the serving stage writes, 8-bit pair first: `teacher-int8`, `student-int8`, `teacher-int4`, ..."""
    return [f"{name}-{method}" for method in SERVED_METHODS for name in SERVED_MODELS]


def _serve(sources: dict[str, Path], output_dir: Path, backend: str | None = None,
           calibration=None) -> tuple[dict[str, Path], str | None]:
    """Serve every model of `sources` at every `SERVED_METHODS` precision with `backend` (default:
    `serving_backend()`, the fastest engine installed); `calibration` (token-id blocks) calibrates the int4
    builds by GPTQ (ONNX Runtime GenAI only).

    Returns the folders written, by name, and why nothing was served (None when all were). Every source
    is checked before the first build, so a model the engine cannot take (a GPT-2 teacher, heads of a
    size its attention kernel refuses) or a missing engine leaves no half of the pairs behind; a build
    that fails after its checks is an error, not a skip.
    """
    from .quantization import quantize

    backend = backend or serving_backend()
    if backend is None:
        return {}, ("no serving engine is installed: `pip install \"hf-bigsmall[genai]\"` (ONNX Runtime GenAI, the "
                    "fastest measured; Python 3.11+) or `pip install \"hf-bigsmall[llamacpp]\"` (llama.cpp; builds "
                    "from source).")
    if calibration is not None and backend != "onnxruntime-genai":
        raise ValueError(f"GPTQ calibration of the int4 builds needs ONNX Runtime GenAI, but {backend} serves here: "
                         "`pip install \"hf-bigsmall[genai]\"` or drop --calibrate_int4.")
    targets = {f"{name}-{method}": (source, method) for method in SERVED_METHODS for name, source in sources.items()}
    for name in targets:  # a folder of the user's in the way is an error, never a reason to skip serving
        check_served_folder(output_dir / name)
    try:
        for name, (source, method) in targets.items():
            _check_servable(backend, source, output_dir / name, method)
    except (ImportError, ValueError) as error:
        return {}, str(error)
    return {name: quantize(source, output_dir / name, method=method, backend=backend,
                           **({"calibration": calibration} if calibration is not None and method == "int4" else {}))
            for name, (source, method) in targets.items()}, None


def check_served_folder(folder: Path) -> None:
    """Raise unless `folder` is missing, empty (but for the kit's marker), or a served model (a quantized export)
    the kit wrote.

    The serving stage replaces such a folder with a new build, or removes it when this run serves nothing (the
    report must not meet an earlier run's served model); any other folder there is the user's, refused before
    the run starts rather than left to stop it after the training.

    Raises:
        ValueError: `folder` is a file, a link, or a folder with something in it that is not the kit's quantized
            export; the message names it. Nothing is changed.
    """
    from .quantization.genai import is_kit_export

    if folder.is_symlink() or (folder.exists() and (not folder.is_dir() or _holds_more_than_the_marker(folder))
                               and not is_kit_export(folder)):
        raise ValueError(f"{folder} already exists and is not a served model hf_bigsmall wrote (a quantized export): "
                         "it is left as it is, with everything in it. Pass another --output_dir, or move or delete "
                         "it yourself.")


def _holds_more_than_the_marker(folder: Path) -> bool:
    return any(entry.name != KIT_MARKER for entry in folder.iterdir())


def _check_servable(backend: str, source: Path, target: Path, method: str) -> None:
    """What `quantize(..., backend=backend)` checks before it builds: raises ImportError or ValueError."""
    modules, extra = _ENGINE_MODULES[backend]
    for module in modules:
        require(module, extra=extra, purpose=f"serving causal LMs with {backend}")
    if backend == "onnxruntime-genai":
        from .quantization.genai import check_genai_source

        check_genai_source(source, target, method)
    else:
        from .quantization.config import check_quantized_output
        from .quantization.gguf_export import check_gguf_request

        check_gguf_request(source, method)
        check_quantized_output(source, target)


def run_causal_lm_quickstart(args: CausalLMQuickstartArguments) -> Path:
    """Run the whole pipeline; returns the output folder (see the module docstring for its layout)."""
    import gc

    import torch
    from transformers import AutoModelForCausalLM, default_data_collator, set_seed

    from . import DistillationConfig, DistillationTrainer, EnergyCallback, make_student
    from .energy.lineage import build_lineage, save_lineage
    from .hub.card import build_model_card, hub_id
    from .pruning.importance import compute_importance
    from .pruning.targets import _architecture
    from .pruning.width import _validate_targets, prune_width
    from .reporting.compare import compare_models
    from .reporting.report import markdown_table, served_verdict, timing_lines
    from .tasks.causal_lm import load_causal_lm_dataset

    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    teacher_dir, pruned_dir, student_dir = output_dir / "teacher", output_dir / "student-pruned", output_dir / "student"
    corrected_dir = output_dir / "teacher-corrected"
    correct = args.correct_teacher_steps > 0
    stage = _Stages(5 + correct + args.quantize)
    echo(f"hf-bigsmall quickstart --task causal-lm: {args.teacher} on {args.dataset}"
          f"{' (--fast)' if args.fast else ''}; everything goes to {output_dir.resolve()}")

    check_output_dir(output_dir, "causal-lm")
    serving = serving_backend()
    if args.calibrate_int4 and serving != "onnxruntime-genai":
        raise ValueError("--calibrate_int4 calibrates ONNX Runtime GenAI's int4 builds, and "
                         f"{serving or 'no engine'} would serve here: `pip install \"hf-bigsmall[genai]\"` "
                         "(Python 3.11+) or drop --calibrate_int4.")
    for name in served_names():  # replaced or removed by the serving stage, after the training: checked now
        check_served_folder(output_dir / name)
    start = stage(f"Teacher and data: {args.teacher}, {args.dataset} in blocks of {args.block_size} tokens")
    teacher, tokenizer = _teacher(args)
    depth = teacher.config.num_hidden_layers
    layers = args.student_layers or _default_layers(depth)
    if layers > depth:
        raise ValueError(f"student_layers={layers} is more than the teacher's {depth} layers.")
    intermediate_size = _default_intermediate(teacher) if args.intermediate_size is None else args.intermediate_size
    widths = dict(intermediate_size=intermediate_size, num_attention_heads=args.num_attention_heads,
                  num_key_value_heads=args.num_key_value_heads, hidden_size=args.hidden_size)
    widths = {name: value for name, value in widths.items() if value is not None}
    _validate_targets(teacher, _architecture(teacher), *(widths.get(name) for name in
                      ("intermediate_size", "num_attention_heads", "num_key_value_heads", "hidden_size")))
    heal_samples = args.heal_steps * args.batch_size
    # the student heals on the same first blocks with or without a correction; the correction trains on
    # them too (several epochs when it has more steps) or on as many blocks right after them (disjoint)
    correct_samples = args.correct_teacher_steps * args.batch_size
    train_samples = max(heal_samples, args.calibration_samples)
    disjoint = correct and args.correct_teacher_data == "disjoint"
    dataset = load_causal_lm_dataset(tokenizer, args.dataset, block_size=args.block_size, seed=args.seed,
                                     max_train_samples=train_samples + (correct_samples if disjoint else 0))
    correction_rows = dataset["train"]
    if disjoint:
        if len(dataset["train"]) < train_samples + correct_samples:
            raise ValueError(f"--correct_teacher_data disjoint needs {train_samples + correct_samples:,} training blocks "
                             f"of {args.block_size} tokens ({train_samples:,} to heal and calibrate on, "
                             f"{correct_samples:,} to correct on); "
                             f"{args.dataset} has {len(dataset['train']):,}: lower correct_teacher_steps or use "
                             "--correct_teacher_data healing.")
        correction_rows = dataset["train"].select(range(train_samples, train_samples + correct_samples))
        dataset["train"] = dataset["train"].select(range(train_samples))
    output_dir.mkdir(parents=True, exist_ok=True)
    record_run(output_dir, "causal-lm", teacher=args.teacher, dataset=args.dataset,
               training_precision="bf16 autocast" if args.bf16 else "float32", training_precision_origin=args.bf16_origin)
    _save(teacher, tokenizer, teacher_dir)
    _done(start, teacher_dir)

    source, source_dir = "teacher", teacher_dir
    if correct:
        rows = "the blocks after the healing and calibration ones" if disjoint else "the healing blocks"
        start = stage(f"Correct the teacher: fine-tune it on {rows}, {args.correct_teacher_steps} steps of "
                      f"{args.batch_size} x {args.block_size} tokens ({correct_samples * args.block_size:,} tokens), "
                      f"{_precision(args)}")
        _correct_teacher(args, teacher, tokenizer, correction_rows, corrected_dir)
        del teacher
        gc.collect()  # the trained object, its optimizer state and the Trainer's autocast wrapper
        teacher = AutoModelForCausalLM.from_pretrained(corrected_dir, dtype=torch.float32).eval()
        source, source_dir = "teacher-corrected", corrected_dir
        _done(start, corrected_dir)
    else:
        drop_stale(corrected_dir)  # the report and push should not meet an older run's corrected teacher

    start = stage(f"Importance of blocks, heads, neurons and channels on {args.calibration_samples} calibration "
                  f"blocks" + (" (of the corrected teacher)" if correct else ""))
    importance = compute_importance(teacher, dataset["train"], num_samples=args.calibration_samples)
    importance.save(output_dir)
    order = importance.blocks.argsort().tolist()
    echo(f"      least important blocks (Block Influence): {order[: depth - layers]}")
    _done(start, output_dir / "importance.json")

    start = stage(f"Prune: keep the {layers} most important of {depth} blocks"
                  + "".join(f", {name}={value}" for name, value in widths.items()))
    student = make_student(teacher, num_layers=layers, teacher_layers="importance", importance=importance)
    DistillationRecord.from_config(student.config).update({"teacher": args.teacher}).write(student.config)
    from .utils.import_utils import is_matplotlib_available

    if is_matplotlib_available():  # importance.png again, now with the dropped blocks marked
        from .pruning.importance import IMPORTANCE_PLOT_NAME, plot_importance

        plot_importance(importance, output_dir / IMPORTANCE_PLOT_NAME,
                        kept_layers=student.config.distillation["teacher_layers"])
    if correct:  # make_student copied the teacher's own record: the student keeps it under its distillation
        correction = TeacherCorrectionRecord.from_config(student.config).to_dict()
        del student.config.teacher_correction
        DistillationRecord.from_config(student.config).update(
            {"teacher_correction": {k: v for k, v in correction.items() if k != "from"}}).write(student.config)
    kept = importance.select_layers(student.config.distillation["teacher_layers"])
    if widths:
        prune_width(student, kept, **widths)
    _save(student, tokenizer, pruned_dir, importance=kept)
    _done(start, pruned_dir)

    start = stage(f"Heal: distil from the {'corrected' if correct else 'unpruned'} teacher, {args.heal_steps} steps "
                  f"of {args.batch_size} x {args.block_size} tokens ({heal_samples * args.block_size:,} tokens), "
                  f"{_precision(args)}")
    partial = fresh_partial_dir(student_dir)
    config = DistillationConfig(
        **_training_arguments(args, partial, args.heal_steps, args.learning_rate), temperature=args.temperature,
        alpha_kd=args.alpha_kd, alpha_ce=1.0 - args.alpha_kd, alpha_hidden=args.alpha_hidden,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config, train_dataset=dataset["train"],
        data_collator=default_data_collator, processing_class=tokenizer,
        callbacks=[EnergyCallback(training_type="distillation")],
    )
    if args.heal_steps:
        trainer.train()
    trainer.save_model(str(partial))
    kept.save(partial)
    publish_dir(partial, student_dir)
    _done(start, student_dir)

    models = {"teacher": teacher_dir, **({source: source_dir} if correct else {}), "student-pruned": pruned_dir,
              "student": student_dir}
    served: dict[str, Path] = {}
    backend = serving_backend()
    if args.quantize:
        engine = {"gguf": "llama.cpp (GGUF)", "onnxruntime-genai": "ONNX Runtime GenAI"}.get(backend, "no engine")
        start = stage(f"Serve the teacher and the student with {engine}, the fastest engine installed "
                      f"({', '.join(SERVING_BACKENDS)} in order), {' and '.join(SERVED_METHODS)}, built from their "
                      "saved folders" + (", int4 calibrated by GPTQ on training blocks" if args.calibrate_int4 else ""))
        del trainer, teacher
        gc.collect()  # the healing's teacher and optimizer state: the builds load each model again
        calibration = None
        if args.calibrate_int4:  # training blocks, never the held-out ones the report scores
            calibration = dataset["train"].select(range(min(INT4_CALIBRATION_BLOCKS, len(dataset["train"]))))["input_ids"]
        served, why_not = _serve({"teacher": teacher_dir, "student": student_dir}, output_dir, backend, calibration)
        if why_not:
            echo(f"      not served: {why_not}")
        _done(start, output_dir / served_names()[-1] if served else output_dir)
    for name in served_names():  # the report and the cards must not meet an earlier run's served models
        if name not in served:
            drop_stale(output_dir / name)
    models.update(served)
    # every model carries the emissions of the runs it came from: its own plus its ancestors'
    for name, folder in models.items():
        parents, run, trained = _LINEAGE[name]
        parents = [models[parent.format(source=source)] for parent in parents]
        trained = trained and not (name == "student" and args.heal_steps == 0)
        save_lineage(folder, build_lineage(folder, parents, name=name, run=run.format(backend=backend),
                                           trained=trained))

    start = stage(f"Compare: perplexity on {args.eval_samples} held-out articles, size, prefill latency, decode "
                  "tokens/s and energy per token (student-pruned is timed as student: the same shape)")
    comparison = compare_models(models, args.dataset, split="test", max_samples=args.eval_samples,
                                max_length=args.block_size, batch_size=8, latency_samples=args.latency_samples,
                                output_dir=output_dir, generation_prompts=1 if args.fast else 3,
                                prompt_tokens=args.block_size // 2, new_tokens=8 if args.fast else 32,
                                # the healed student is the pruned one with other weights: timed once, shown in both
                                speed_from={"student-pruned": "student"})
    base_model = None if args.teacher == TINY_TEACHER else hub_id(args.teacher)
    for folder in models.values():
        build_model_card(folder, base_model=base_model, dataset=args.dataset).save(folder / "README.md")
    summary = {"teacher_layers": student.config.distillation["teacher_layers"], "widths": widths,
               "heal_tokens": heal_samples * args.block_size if args.heal_steps else 0,
               "teacher_correction_tokens": correct_samples * args.block_size,
               "calibration_samples": importance.num_samples}
    atomic_write_json(output_dir / "pruning.json", summary)
    _done(start, output_dir / "report.md")

    report = comparison.to_dict()
    echo("\n" + "\n".join([markdown_table(report), *timing_lines(report)]))
    verdict = served_verdict(report)
    if verdict:
        echo("\nServed the way LLMs are served, student against teacher in the same engine and precision:\n"
             + "\n".join(verdict))
    echo(f"\nEverything is in {output_dir.resolve()}:")
    for name, folder in models.items():
        loads = ("from_pretrained-ready" if name not in served else "llama.cpp/Ollama-ready GGUF"
                 if backend == "gguf" else "onnxruntime_genai.Model-ready")
        echo(f"  {name:<17} {folder}/  ({loads}, README.md model card, emissions.json)")
    echo(f"  importance        {output_dir / 'importance.json'}, {output_dir / 'importance.png'}")
    echo(f"  report            {output_dir / 'report.md'}, {output_dir / 'report.json'}")
    return output_dir
