"""`hf-bigsmall quickstart`: a big model made small, measured, in one command that runs offline.

Fine-tune the teacher on the task (reused by a second run made from the same teacher, data and
settings; anything else trains it again, saying why), distill a student made with
`make_student`, prune its feed-forward neurons while distilling on, compact it, then measure all four
side by side and write everything to one folder:

```
bigsmall_output/                       (--task causal-lm writes to bigsmall_output_causal_lm/ by default)
  bigsmall_run.json   which pipeline wrote the folder: a run of the other one refuses it
  teacher/ student/ student-pruned/ student-compact/ student-trimmed/   each loads with plain from_pretrained
  student-int8/ teacher-int8/          ONNX Runtime int8: onnxruntime.InferenceSession("<folder>/model.onnx")
  teacher_logits/   the teacher's logits, cached once for both distillation stages (energy.json: that pass's energy)
  augmented.json    with --augment_ratio: the augmented copies of the training texts, made once
  report.md  report.json  quality_vs_latency.png  quality_vs_size.png  quality_vs_energy.png
```

Every training run is measured with `EnergyCallback` (the teacher's fine-tuning included: its
`energy.json` stays with it when a later run reuses it), and every model folder gets an
`emissions.json` (`hf_bigsmall.energy.lineage`): its own run plus the runs of the models it was made
from, which its card's `co2_eq_emissions` and the report state.

`--transfer_set` and `--augment_ratio` (off by default: see BENCHMARKS.md) add unlabelled rows that
the teacher labels through the same cache, beside the labelled ones (`hf_bigsmall.data`).

`student-trimmed` is the compacted student with its vocabulary trimmed to the tokens of the
training texts (`--no_trim_vocabulary` leaves it out). `student-int8` and `teacher-int8` are the
trimmed student (the compacted one with `--no_trim_vocabulary`) and the teacher quantized to int8 for
the CPU (`hf_bigsmall.quantization`), so the report answers whether the small model beats simply
quantizing the big one (`--no_quantize` leaves them out).

A folder written by the other pipeline (`--task causal-lm`) is refused before anything is written
(`check_output_dir`), so the two never mix; a rerun of the same pipeline replaces what it makes again
and removes what an earlier run of it made but this one does not (`--no_quantize` removes the int8
folders, for example).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import assets
from .distillation.cache import is_teacher_logit_cache
from .distillation.record import DistillationRecord
from .reporting.plots import comparison_plot_names
from .reporting.report import check_report_writable
from .utils.console import echo
from .utils.files import (
    atomic_write_json,
    check_replaceable,
    fresh_partial_dir,
    publish_dir,
    publishing,
    remove_leftovers,
)
from .utils.import_utils import is_matplotlib_available

# (teacher steps, distillation steps, pruning steps, batch size, evaluation samples, latency samples):
# under 5 minutes on a quiet 2-core CPU by default (see BENCHMARKS.md), a minute or two with --fast
_BUDGETS = {"default": (80, 240, 160, 32, 500, 20), "fast": (6, 6, 6, 16, 64, 5)}
STAGES = 6
RUN_RECORD = "bigsmall_run.json"
DEFAULT_OUTPUT_DIRS = {"text-classification": "bigsmall_output", "causal-lm": "bigsmall_output_causal_lm"}
# model -> (the models it was made from, how it was made, whether that trains); a distilled model's
# teacher is one of its ancestors
_LINEAGE = {
    "teacher": ((), "fine-tuning", True),
    "student": (("teacher",), "distillation", True),
    "student-pruned": (("student", "teacher"), "pruning while distilling", True),
    "student-compact": (("student-pruned",), "compaction", False),
    "student-trimmed": (("student-compact",), "vocabulary trimming", False),
    "student-int8": (("student-compact",), "int8 quantization", False),  # student-trimmed's when there is one
    "teacher-int8": (("teacher",), "int8 quantization", False),
}


@dataclass
class QuickstartArguments:
    """Options of `hf-bigsmall quickstart` (each is a `--flag` on the command line)."""

    task: str = field(default="text-classification", metadata={
        "help": "text-classification (this pipeline) or causal-lm (an LLM pruned by importance and healed by "
                "distillation: `--task causal-lm --help` lists its options).",
        "choices": ["text-classification", "causal-lm"]})
    teacher: str = field(default=assets.MINILM, metadata={
        "help": "Teacher: a backbone to fine-tune (no task head, like the default MiniLM) or a classifier "
                "already fine-tuned, as a local folder, a Hub id or an embedded name."})
    dataset: str = field(default=assets.ROTTEN_TOMATOES, metadata={
        "help": "Classification dataset with `text` and `label` columns: embedded name or Hub id."})
    output_dir: str = field(default=DEFAULT_OUTPUT_DIRS["text-classification"], metadata={
        "help": "Folder that receives everything. A folder holding a `--task causal-lm` run's results is refused."})
    student_layers: int = field(default=3, metadata={"help": "Transformer layers of the student."})
    student_teacher_layers: str | None = field(default=None, metadata={
        "help": "Teacher layers the student starts from, one per student layer, comma-separated (e.g. 0,2,5; "
                "default: spread over the teacher, first and last included)."})
    student_hidden_size: int | None = field(default=None, metadata={
        "help": "Width of the student (default: the teacher's, so it starts from the teacher's weights)."})
    target_sparsity: float = field(default=0.25, metadata={
        "help": "Fraction of each FFN layer's neurons pruned, in [0, 1); compaction then removes them. 0 skips pruning "
                "and compaction: the distilled student is trimmed and quantized. 0.25 halved the int8 student's "
                "accuracy gap to the int8 teacher against 0.5, at the same speed (BENCHMARKS.md)."})
    trim_vocabulary: bool = field(default=True, metadata={
        "help": "Also write student-trimmed: the compacted student keeping only the tokens of the training "
                "texts (WordPiece teachers such as BERT and MiniLM)."})
    cache_teacher_logits: bool = field(default=True, metadata={
        "help": "Run the teacher once over the training rows both distillation stages draw from and distil from its "
                "cached logits (teacher_logits/), instead of running it at every step of both stages."})
    transfer_set: str | None = field(default=None, metadata={
        "help": "Unlabelled text the teacher labels for the student, beside the labelled set (soft targets only): "
                f"{'embedded/rotten_tomatoes_full'!r} (the full Rotten Tomatoes corpus, the labelled dataset's reviews "
                "removed), a folder of .txt files (one text per line), a .txt/.csv/.json file or a dataset name. "
                "Texts of any split of the labelled dataset are removed by their normalised text. Off by default."})
    transfer_samples: int | None = field(default=None, metadata={
        "help": "Transfer-set texts used (a seeded random subset; default: all of them)."})
    augment_ratio: float = field(default=0.0, metadata={
        "help": "Augmented copies per labelled training text (TinyBERT word replacement with neighbours from the "
                "teacher's input embeddings), labelled by the teacher; 0 (default): none."})
    augment_probability: float = field(default=0.4, metadata={
        "help": "Chance that a word of an augmented copy is replaced by one of its neighbours."})
    quantize: bool = field(default=True, metadata={
        "help": "Also write student-int8 and teacher-int8: the trimmed (else compacted) student and the teacher "
                "quantized to int8 with ONNX Runtime (needs `pip install \"hf-bigsmall[onnx]\"`)."})
    fast: bool = field(default=False, metadata={"help": "A run of a minute or two (CI, smoke test)."})
    teacher_steps: int | None = field(default=None, metadata={"help": "Teacher fine-tuning steps."})
    distill_steps: int | None = field(default=None, metadata={
        "help": "Distillation steps (default 240: with the 160 pruning steps, student-int8 level with teacher-int8 "
                "over 3 seeds; 120 + 80 left it 0.65 point below, BENCHMARKS.md)."})
    prune_steps: int | None = field(default=None, metadata={
        "help": "Pruning steps, distillation going on (default 160)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Limit the training set."})
    eval_samples: int | None = field(default=None, metadata={"help": "Samples the comparison measures."})
    batch_size: int | None = field(default=None, metadata={"help": "Training batch size (32; 16 with --fast)."})
    max_length: int = field(default=64, metadata={"help": "Truncate inputs to this many tokens."})
    group_by_length: bool = field(default=True, metadata={
        "help": "Distil and prune on batches of reviews of similar length, in random order "
                "(train_sampling_strategy='group_by_length', shuffle_length_groups): they pad to about half the tokens "
                "of random batches, so a step costs less at the same accuracy (BENCHMARKS.md). The teacher is "
                "fine-tuned on random batches either way."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of every stage."})
    temperature: float = field(default=2.0, metadata={"help": "Distillation temperature."})
    alpha_kd: float = field(default=0.5, metadata={"help": "Weight of the soft-target loss."})
    seed: int = field(default=42, metadata={"help": "Random seed."})

    def __post_init__(self):
        if self.task != "text-classification":
            raise ValueError(f"task must be 'text-classification' here, got {self.task!r}: run the causal-lm pipeline "
                             "with `hf-bigsmall quickstart --task causal-lm`.")
        if self.student_layers < 1:
            raise ValueError(f"student_layers must be at least 1, got {self.student_layers}.")
        if self.student_teacher_layers is not None:
            layers = [part.strip() for part in str(self.student_teacher_layers).split(",")]
            if not all(part.isdigit() for part in layers) or len(layers) != self.student_layers:
                raise ValueError(f"student_teacher_layers must name {self.student_layers} teacher layer(s), one per "
                                 f"student layer, as comma-separated indices (e.g. "
                                 f"{','.join(map(str, range(self.student_layers)))}), got {self.student_teacher_layers!r}.")
        from .utils.checks import check_finite

        check_finite("target_sparsity", self.target_sparsity, "in [0, 1)")
        check_finite("alpha_kd", self.alpha_kd, "in [0, 1]")
        for name in ("learning_rate", "temperature"):
            if check_finite(name, getattr(self, name), "> 0") <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}.")
        if not 0.0 <= self.alpha_kd <= 1.0:
            raise ValueError(f"alpha_kd must be in [0, 1] (the task loss gets 1 - alpha_kd), got {self.alpha_kd}.")
        teacher_steps, distill_steps, prune_steps, batch_size, eval_samples, latency = _BUDGETS[
            "fast" if self.fast else "default"]
        # only an unset option takes the budget's value: an explicit 0 is refused below, never replaced
        self.teacher_steps = teacher_steps if self.teacher_steps is None else self.teacher_steps
        self.distill_steps = distill_steps if self.distill_steps is None else self.distill_steps
        self.prune_steps = prune_steps if self.prune_steps is None else self.prune_steps
        self.batch_size = batch_size if self.batch_size is None else self.batch_size
        self.eval_samples = eval_samples if self.eval_samples is None else self.eval_samples
        self.latency_samples = latency
        if self.transfer_samples is not None and self.transfer_samples < 1:
            raise ValueError(f"transfer_samples must be a positive number, got {self.transfer_samples}.")
        if check_finite("augment_ratio", self.augment_ratio, ">= 0") < 0:
            raise ValueError(f"augment_ratio must be >= 0 (copies per training text), got {self.augment_ratio}.")
        if not 0.0 < check_finite("augment_probability", self.augment_probability, "in (0, 1]") <= 1.0:
            raise ValueError(f"augment_probability must be in (0, 1], got {self.augment_probability}.")
        if (self.transfer_set or self.augment_ratio) and not self.cache_teacher_logits:
            raise ValueError("--transfer_set and --augment_ratio have the teacher label the extra texts once, through "
                             "the teacher-logit cache: drop --no_cache_teacher_logits.")
        for name in ("teacher_steps", "distill_steps", "prune_steps", "batch_size", "eval_samples", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive number, got {getattr(self, name)}.")


# what only one pipeline writes: tells which wrote a folder that has no RUN_RECORD (made before it existed)
_ONLY_WRITTEN_BY = {
    "causal-lm": ("importance.json", "pruning.json", "teacher-corrected"),
    "text-classification": ("teacher_logits", "student-compact", "student-trimmed", "student-int8", "teacher-int8"),
}


# what each pipeline writes at the top of its folder besides its model folders, the report and the plots
_TOP_LEVEL_FILES = {"causal-lm": ("importance.json", "importance.png", "pruning.json"), "text-classification": ()}


def _task_of_folder(output_dir: Path) -> str | None:
    """The quickstart pipeline whose results `output_dir` holds, or None when it holds none."""
    record = output_dir / RUN_RECORD
    if record.is_file() and _read_task(record) is not None:  # one that is not the kit's is refused by check_output_dir
        return _read_task(record)
    report = output_dir / "report.json"
    if report.is_file():
        task = _read_task(report)
        return {"text-generation": "causal-lm", "text-classification": "text-classification"}.get(task)
    for task, names in _ONLY_WRITTEN_BY.items():
        if any((output_dir / name).exists() for name in names):
            return task
    config = output_dir / "teacher" / "config.json"
    if config.is_file():
        return "causal-lm" if "ForCausalLM" in config.read_text(encoding="utf-8") else "text-classification"
    return None


def check_output_dir(output_dir: Path, task: str) -> None:
    """Refuse a folder that holds the results of the other quickstart pipeline, before anything is written.

    The two pipelines write models under the same names (`teacher/`, `student/`, `report.json`): one
    run into the other's folder would replace some of its models, leave the others beside them, and
    give every card a report about other models.

    Raises:
        ValueError: `output_dir` holds another pipeline's results; the message names it and the fix.
    """
    found = _task_of_folder(output_dir) if output_dir.is_dir() else None
    if found is not None and found != task:
        raise ValueError(
            f"{output_dir} holds the results of a `--task {found}` quickstart run; this is a `--task {task}` run, "
            f"and mixing them would leave one run's models and cards beside the other's report. Pass another "
            f"--output_dir (the default for --task {task} is {DEFAULT_OUTPUT_DIRS[task]}), or delete that folder.")
    # a report or a plot of the user's there is refused now, not after the training
    check_report_writable(output_dir, comparison_plot_names(task == "causal-lm") if is_matplotlib_available() else ())
    # the pipeline's own files beside them are replaced only in a folder this pipeline wrote: its run record,
    # or (a folder from before the record existed) the kit's report, which the check above let through
    record = output_dir / RUN_RECORD
    ours = (output_dir / "report.json").is_file() or (
        record.is_file() and _read_task(record) == task)
    for name in (RUN_RECORD, *_TOP_LEVEL_FILES[task]):
        path = output_dir / name
        if (path.exists() or path.is_symlink()) and not (ours and path.is_file() and not path.is_symlink()):
            raise ValueError(f"{path} exists and {output_dir} is not a folder this pipeline wrote (no {RUN_RECORD} of a "
                             f"`--task {task}` run): {path.name} is left as it is. Pass another --output_dir, or move "
                             "or delete that file yourself.")


def _read_task(record: Path) -> str | None:
    try:
        content = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content.get("task") if isinstance(content, dict) else None


def record_run(output_dir: Path, task: str, **details: str) -> None:
    """Write `bigsmall_run.json`: which pipeline (and teacher, dataset) wrote this folder."""
    atomic_write_json(output_dir / RUN_RECORD, {"task": task, **details})


def check_cache_replaceable(folder: Path) -> None:
    """Raise unless `folder` may be removed: missing, empty, a folder the kit marked, or a teacher-logit cache."""
    if not is_teacher_logit_cache(folder):
        check_replaceable(folder)  # only a folder the kit wrote: one of the user's is refused, named


def drop_stale(folder: Path) -> None:
    """Remove a folder that an earlier run of the same pipeline left and this one does not make.

    What interrupted writes of it left (`.partial` folders) goes too, once their writers are gone; another run's
    live one is kept.
    """
    if folder.exists() or folder.is_symlink():
        check_cache_replaceable(folder)
        shutil.rmtree(folder)
        echo(f"      removed {folder}: an earlier run left it, this one does not make it")
    for path in remove_leftovers(folder, restore=False):  # an old copy moved aside is not put back: it goes too
        echo(f"      removed {path}: an interrupted earlier run left it")


def drop_stale_augmentation(path: Path) -> None:
    """Remove the augmented copies an earlier run cached at `path` when this run makes none.

    Only a cache the kit wrote goes; a file of the same name that is not one stays as it is.
    """
    from .data.augment import is_augmentation_cache

    if is_augmentation_cache(path):
        path.unlink()
        echo(f"      removed {path}: an earlier run left it, this one does not make it")
    elif path.exists():
        echo(f"      left {path} as it is: not an augmentation cache this pipeline wrote")


def _stage(number: int, text: str) -> float:
    echo(f"\n[{number}/{STAGES}] {text}")
    return time.perf_counter()


def _done(start: float, where: Path) -> None:
    echo(f"      done in {time.perf_counter() - start:.0f} s -> {where}")


def _training_arguments(args: QuickstartArguments, output_dir: Path, max_steps: int) -> dict:
    return dict(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64, learning_rate=args.learning_rate, warmup_steps=0.1,
        logging_steps=max(1, max_steps // 5), save_strategy="no", eval_strategy="no", report_to="none",
        seed=args.seed, disable_tqdm=False,
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        shuffle_length_groups=args.group_by_length,
    )


def _teacher_layers(args: QuickstartArguments) -> list[int] | None:
    """`--student_teacher_layers` as indices (checked as digits by `QuickstartArguments`), or None when not given."""
    if args.student_teacher_layers is None:
        return None
    return [int(part) for part in str(args.student_teacher_layers).split(",")]


def _check_student_layers(args: QuickstartArguments, teacher_config) -> None:
    """Refuse a student deeper than the teacher, or made from layers it lacks, before the teacher is fine-tuned."""
    depth = getattr(teacher_config, "num_hidden_layers", None)
    if depth is None:  # make_student says what it needs
        return
    if args.student_layers > depth:
        raise ValueError(f"--student_layers {args.student_layers} is more than the teacher's {depth} layers; nothing "
                         "was written. Choose fewer.")
    layers = _teacher_layers(args)
    if layers is not None:
        if not all(0 <= layer < depth for layer in layers):
            raise ValueError(f"--student_teacher_layers {args.student_teacher_layers} names a layer the teacher lacks: "
                             f"its layers are 0 to {depth - 1}; nothing was written.")


def _distill(args, student, teacher, dataset, tokenizer, final_dir: Path, max_steps: int, callbacks: list) -> Path:
    """Train `student` against `teacher`, writing to `<final_dir>.<writer>.partial` and renaming when complete."""
    from transformers import DataCollatorWithPadding

    from . import DistillationConfig, DistillationTrainer, EnergyCallback

    partial = fresh_partial_dir(final_dir)
    config = DistillationConfig(**_training_arguments(args, partial, max_steps), temperature=args.temperature,
                                alpha_kd=args.alpha_kd, alpha_ce=1.0 - args.alpha_kd)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config, train_dataset=dataset["train"],
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        callbacks=[EnergyCallback(training_type="distillation"), *callbacks],
    )
    trainer.train()
    trainer.save_model(str(partial))
    # a model folder appears only once complete: an interrupted run never leaves a half-written one
    return publish_dir(partial, final_dir)


def _extra_rows(args: QuickstartArguments, teacher, tokenizer, train, output_dir: Path):
    """The unlabelled rows the teacher labels beside the labelled set (`--transfer_set`, `--augment_ratio`).

    Returns `(datasets, record)`: tokenised rows with labels -100, and what they are, for the cards.
    No text of any split of the labelled dataset enters them (compared by normalised text).
    """
    from .data.mixture import extra_training_rows

    if not args.transfer_set and not args.augment_ratio:
        return [], {}
    extras, record = extra_training_rows(
        teacher, tokenizer, assets.load_text_dataset(args.dataset), output_dir / "augmented.json",
        transfer_set=args.transfer_set, transfer_samples=args.transfer_samples, augment_ratio=args.augment_ratio,
        augment_probability=args.augment_probability, seed=args.seed, max_length=args.max_length,
        # the labelled texts in use (--max_train_samples may keep a part), as the tokenizer reads them
        train_texts=tokenizer.batch_decode([list(ids) for ids in train["input_ids"]], skip_special_tokens=True)
        if args.augment_ratio else None)
    if "transfer_set" in record:
        transfer = record["transfer_set"]
        echo(f"      transfer set: {transfer['samples']:,} texts from {args.transfer_set} "
             f"({transfer['overlapping']:,} in the labelled dataset and {transfer['repeats']:,} repeats removed)")
    if "augmentation" in record:
        augmentation = record["augmentation"]
        echo(f"      augmentation: {augmentation['samples']:,} copies of the {augmentation['source_texts']:,} training "
             f"texts, words replaced by their neighbours in the teacher's embeddings -> {output_dir / 'augmented.json'}")
    return extras, record


def _estimate_labelling(teacher, rows, collator, batch_size: int = 64) -> float:
    """Seconds the teacher will take over `rows`, from the time of one batch (the first is timed twice: warm-up)."""
    import torch

    batch = collator([rows[i] for i in range(min(batch_size, len(rows)))])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        teacher(**inputs)
        start = time.perf_counter()
        teacher(**inputs)
    return (time.perf_counter() - start) * len(rows) / max(1, len(batch["input_ids"]))


def _cached_train_dataset(args: QuickstartArguments, teacher, train, cache_dir: Path, extras=(), tokenizer=None):
    """The training rows the distillation stages draw from, carrying the teacher's cached logits.

    Both stages together draw at most `max(distill_steps, prune_steps) * batch_size` rows per stage,
    so only that many labelled rows (a seeded random subset when the training set is larger) are
    cached, followed by every extra (unlabelled) row. A cache left by an earlier run is reused when
    it matches, and replaced when it does not.
    """
    from . import cache_teacher_logits, load_teacher_logits

    rows = max(args.distill_steps, args.prune_steps) * args.batch_size
    if rows < len(train):
        train = train.shuffle(seed=args.seed).select(range(rows)).flatten_indices()
    if extras:
        from transformers import DataCollatorWithPadding

        from .data import mix_with_labelled

        train = mix_with_labelled(train, *extras)
        if len(train) > rows:
            echo(f"      the {len(train):,} training rows are more than the {rows:,} each stage draws: raise "
                 "--distill_steps / --prune_steps for the student to see them all")
        if not (cache_dir / "manifest.json").is_file():
            seconds = _estimate_labelling(teacher, train, DataCollatorWithPadding(tokenizer))
            echo(f"      the teacher labels {len(train):,} rows: about {seconds / 60:.1f} min on this machine")
    from .energy.work import measure_work

    if (cache_dir / "energy.json").is_file():  # written once a measured labelling pass completed
        try:
            cache_teacher_logits(teacher, train, cache_dir, batch_size=64)  # returns at once when it matches
            return load_teacher_logits(cache_dir, train)
        except ValueError:  # another teacher or other rows than an earlier run's: make it anew
            pass
    # made under the meter, so the teacher's labelling pass counts in the students' lineage
    check_cache_replaceable(cache_dir)  # a folder of the user's at that name is refused, never removed
    shutil.rmtree(cache_dir, ignore_errors=True)
    with measure_work(cache_dir, "teacher labelling"):
        cache_teacher_logits(teacher, train, cache_dir, batch_size=64)
    return load_teacher_logits(cache_dir, train)


def _evaluation_split(dataset_name: str) -> str:
    # the split the teacher was evaluated on (load_classification_dataset's choice), held out from training
    from .utils.heads import evaluation_split

    splits = assets.load_text_dataset(dataset_name)
    split = evaluation_split(splits)
    if split is None:
        raise ValueError(f"{dataset_name} has no 'validation' or 'test' split to compare the models on "
                         f"(it has {list(splits)}).")
    return split


def _quantize_stage(args: QuickstartArguments, teacher_dir: Path, student_dir: Path, output_dir: Path) -> dict[str, Path]:
    """Stage 5: the smallest student and the teacher, int8 on the CPU; {} when --no_quantize or no backend."""
    from .utils.import_utils import is_onnxruntime_available

    if not args.quantize:
        return {}
    start = _stage(5, f"Quantized: {student_dir.name} and the teacher, int8 with ONNX Runtime")
    if not is_onnxruntime_available():  # on by default: say so and go on without it
        echo('      quantization skipped: ONNX Runtime is not installed (pip install "hf-bigsmall[onnx]")')
        return {}
    from .quantization import quantize

    quantized = {"student-int8": quantize(student_dir, output_dir / "student-int8"),
                 "teacher-int8": quantize(teacher_dir, output_dir / "teacher-int8")}
    _done(start, quantized["student-int8"])
    return quantized


def run_quickstart(args: QuickstartArguments) -> Path:
    """Run the whole pipeline; returns the output folder (see the module docstring for its layout)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from . import EnergyCallback, MagnitudePruningCallback, compact, make_student
    from .data.augment import is_augmentation_cache
    from .energy.lineage import build_lineage, save_lineage
    from .hub.card import build_model_card, hub_id
    from .quantization.config import is_onnx_folder
    from .reporting.compare import compare_models
    from .reporting.report import markdown_table, timing_lines
    from .tasks.text_classification import (
        TEACHER_INPUTS_NAME,
        align_labels,
        classification_teacher,
        has_classification_head,
        load_classification_dataset,
    )

    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    teacher_dir, student_dir = output_dir / "teacher", output_dir / "student"
    pruned_dir, compact_dir = output_dir / "student-pruned", output_dir / "student-compact"
    trimmed_dir = output_dir / "student-trimmed"
    echo(f"hf-bigsmall quickstart: {args.teacher} on {args.dataset}"
          f"{' (--fast)' if args.fast else ''}; everything goes to {output_dir.resolve()}")

    check_output_dir(output_dir, "text-classification")
    eval_split = _evaluation_split(args.dataset)  # checked before any training
    augmented = output_dir / "augmented.json"
    if args.augment_ratio and augmented.exists() and not is_augmentation_cache(augmented):
        raise ValueError(f"{augmented} exists and is not an augmentation cache this pipeline wrote; nothing was "
                         "written. Move or delete it, or choose another --output_dir.")

    start = _stage(1, f"Teacher: fine-tune {args.teacher} ({args.teacher_steps} steps; reused if made from the same inputs)")
    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_model(args.teacher))
    if args.trim_vocabulary:
        from .pruning.vocabulary import trimming_unsupported

        reason = trimming_unsupported(tokenizer)
        if reason is not None:  # on by default: say so and go on without it
            echo(f"      vocabulary trimming skipped: {reason}")
            args.trim_vocabulary = False
    dataset = load_classification_dataset(tokenizer, args.dataset, max_length=args.max_length,
                                          max_train_samples=args.max_train_samples,
                                          max_eval_samples=args.eval_samples, seed=args.seed)
    if has_classification_head(args.teacher):  # a trained classifier: its ids, not the dataset's, name the classes
        dataset = align_labels(dataset, AutoConfig.from_pretrained(assets.resolve_model(args.teacher)))
    _check_student_layers(args, AutoConfig.from_pretrained(assets.resolve_model(args.teacher)))
    output_dir.mkdir(parents=True, exist_ok=True)  # only once the dataset is known to be usable
    record_run(output_dir, "text-classification", teacher=args.teacher, dataset=args.dataset)
    inputs_record = teacher_dir / TEACHER_INPUTS_NAME  # what made the teacher: reused only if the inputs match
    recorded = inputs_record.read_text() if inputs_record.is_file() else None
    earlier = (teacher_dir / "config.json").is_file()
    teacher_path = classification_teacher(
        args.teacher, dataset, tokenizer, teacher_dir, max_steps=args.teacher_steps, learning_rate=args.learning_rate,
        per_device_train_batch_size=args.batch_size, seed=args.seed, disable_tqdm=False,
        callbacks=[EnergyCallback(training_type="fine-tuning")])  # what the big model cost, kept in its energy.json
    reused = recorded is not None and inputs_record.is_file() and inputs_record.read_text() == recorded
    copied = Path(teacher_path) != teacher_dir
    if copied:  # a classifier already: copy it so the folder holds every model
        with publishing(teacher_dir) as partial:  # nothing left of an earlier run's teacher
            shutil.copytree(teacher_path, partial, dirs_exist_ok=True)
    tokenizer.save_pretrained(teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    if reused:
        echo(f"      reused the teacher fine-tuned by an earlier run in {teacher_dir}")
    elif earlier:
        echo(f"      replaced the teacher an earlier run left in {teacher_dir}: it was made from other inputs")
    _done(start, teacher_dir)

    start = _stage(2, f"Student: {args.student_layers} layers made from the teacher, distilled ({args.distill_steps} steps)")
    student = make_student(teacher, num_layers=args.student_layers, hidden_size=args.student_hidden_size,
                           teacher_layers=_teacher_layers(args))
    extras, training_data = _extra_rows(args, teacher, tokenizer, dataset["train"], output_dir)
    if not args.augment_ratio:
        drop_stale_augmentation(output_dir / "augmented.json")
    distill_teacher, distill_data = teacher, dataset
    if args.cache_teacher_logits:  # the teacher runs once here; both distillation stages read its logits
        distill_teacher = None
        distill_data = {"train": _cached_train_dataset(args, teacher, dataset["train"], output_dir / "teacher_logits",
                                                       extras, tokenizer)}
    if training_data:  # what the student saw, for its card (kept by the trainer's own record)
        labelled = sum(1 for label in distill_data["train"]["labels"] if label != -100)
        # each stage draws steps x batch rows: fewer than the mixture holds, so the card says how many
        drawn = args.distill_steps * args.batch_size
        DistillationRecord.from_dict({"training_data": {"labelled": labelled, **training_data, "rows_drawn": drawn}}
                                     ).write(student.config)
        echo(f"      teacher logits cached for {len(distill_data['train']):,} training rows -> "
             f"{output_dir / 'teacher_logits'}")
    _distill(args, student, distill_teacher, distill_data, tokenizer, student_dir, args.distill_steps, callbacks=[])
    _done(start, student_dir)

    models = {"teacher": teacher_dir, "student": student_dir}
    if args.target_sparsity > 0:
        start = _stage(3, f"Pruned student: {args.target_sparsity:.0%} of FFN neurons removed by magnitude while "
                          f"distilling on ({args.prune_steps} steps)")
        pruning = MagnitudePruningCallback(target_sparsity=args.target_sparsity, schedule="cubic", structure="neurons")
        student = AutoModelForSequenceClassification.from_pretrained(student_dir)
        _distill(args, student, distill_teacher, distill_data, tokenizer, pruned_dir, args.prune_steps,
                 callbacks=[pruning])
        _done(start, pruned_dir)

        start = _stage(4, "Compact student: pruned neurons physically removed"
                          + (", then the vocabulary trimmed to the training texts" if args.trim_vocabulary else ""))
        smallest = compact(AutoModelForSequenceClassification.from_pretrained(pruned_dir))
        with publishing(compact_dir) as partial:
            smallest.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
        models.update({"student-pruned": pruned_dir, "student-compact": compact_dir})
    else:  # nothing to prune: the distilled student is the one trimmed and quantized
        echo(f"\n[3/{STAGES}] Pruned student: skipped (--target_sparsity 0)")
        start = _stage(4, "Vocabulary of the student trimmed to the training texts" if args.trim_vocabulary
                       else "Compact student: skipped (nothing was pruned)")
        smallest = AutoModelForSequenceClassification.from_pretrained(student_dir)
    if args.trim_vocabulary:
        from .pruning.vocabulary import trim_vocabulary

        texts = assets.load_text_dataset(args.dataset)["train"]["text"]
        trimmed, trimmed_tokenizer = trim_vocabulary(smallest, tokenizer, texts)
        with publishing(trimmed_dir) as partial:
            trimmed.save_pretrained(partial)
            trimmed_tokenizer.save_pretrained(partial)
        models["student-trimmed"] = trimmed_dir
        record = trimmed.config.vocabulary_trimming
        echo(f"      vocabulary trimmed to the {record['vocab_size']:,} of {record['original_vocab_size']:,} tokens "
              f"that the {record['num_texts']:,} training texts use -> {trimmed_dir}")
    _done(start, models.get("student-trimmed", models.get("student-compact", student_dir)))
    # the int8 student is the smallest fp32 student quantized: the trimmed one when there is one (in int8 it was 0.5
    # point more accurate than the untrimmed one over 3 seeds, better in 7 of 9 runs: BENCHMARKS.md "Closing the
    # int8 gap")
    int8_source = next(name for name in ("student-trimmed", "student-compact", "student") if name in models)
    models.update(_quantize_stage(args, teacher_dir, models[int8_source], output_dir))
    # the report and the cards must not meet what an earlier run (--quantize, a trimmed vocabulary) left
    for name in ("student-pruned", "student-compact", "student-trimmed", "student-int8", "teacher-int8"):
        if name not in models:
            drop_stale(output_dir / name)
    if not args.cache_teacher_logits:
        drop_stale(output_dir / "teacher_logits")

    # every model carries the emissions of the runs it came from: its own plus its ancestors'
    labelling = output_dir / "teacher_logits"
    for name, folder in models.items():
        parents, run, trained = _LINEAGE[name]
        if name == "student-int8":
            parents = (int8_source,)
        if name == "student-trimmed" and "student-compact" not in models:
            parents = ("student",)
        if name == "teacher" and copied:
            run = "fine-tuned before this run"  # its energy.json, if it came with one, counts
        parent_dirs = [models[p] for p in parents]
        if name in ("student", "student-pruned") and args.cache_teacher_logits:
            parent_dirs.append(labelling)  # the teacher's labelling pass the distillation learned from
        save_lineage(folder, build_lineage(folder, parent_dirs, name=name, run=run, trained=trained))

    start = _stage(6, f"Compare: quality, size, latency, throughput and energy on {args.eval_samples} test samples")
    comparison = compare_models(models, args.dataset, split=eval_split,
                                max_samples=args.eval_samples, max_length=args.max_length,
                                latency_samples=args.latency_samples, output_dir=output_dir)
    for folder in models.values():
        build_model_card(folder, base_model=hub_id(args.teacher), dataset=args.dataset).save(folder / "README.md")
    _done(start, output_dir / "report.md")

    echo("\n" + "\n".join([markdown_table(comparison.to_dict()), *timing_lines(comparison.to_dict())]))
    echo(f"\nEverything is in {output_dir.resolve()}:")
    for name, folder in models.items():
        loads = "ONNX Runtime int8" if is_onnx_folder(folder) else "from_pretrained-ready"
        echo(f"  {name:<16} {folder}/  ({loads}, README.md model card)")
    echo(f"  report           {output_dir / 'report.md'}, {output_dir / 'report.json'}")
    echo(f"  plots            {output_dir / 'quality_vs_latency.png'}, {output_dir / 'quality_vs_size.png'}, "
          f"{output_dir / 'quality_vs_energy.png'}")
    students = [folder for name, folder in models.items() if name.startswith("student")]
    echo(f"Share one with: hf-bigsmall push {students[-1]} <your-name>/<repo>")
    return output_dir
