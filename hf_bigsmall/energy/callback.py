"""`EnergyCallback`: energy and CO2 of training, evaluation and prediction, logged through the Trainer.

Windows measured:
- each logging interval of training: one extra `log_history` entry right after the trainer's own
  (`energy_joules`, `energy_kwh`, `co2_grams`, `energy_joules_per_sample`,
  `energy_joules_per_token` when `include_num_input_tokens_seen` is on, `energy_is_estimate`,
  `energy_estimate_watts_per_thread` when the CPU-time estimate is used, and running totals
  `energy_total_kwh`, `co2_total_grams`);
- the whole training: an entry after the trainer's final metrics (`train_energy_joules`,
  `train_energy_kwh`, `train_co2_grams`, per sample and per token);
- each evaluation and prediction: `eval_energy_joules`, `eval_energy_kwh`, `eval_co2_grams`,
  `eval_energy_joules_per_sample`, `eval_energy_is_estimate` (the prefix follows
  `metric_key_prefix`) added to the metrics the Trainer logs and returns.

Under a trainer with `BigSmallTrainerMixin` (`DistillationTrainer`, `BigSmallTrainer`), values go
through `trainer.log`, so they reach `log_history` and every `report_to` integration, and every
`evaluate`/`predict` call is a window. Under a plain `Trainer` the callback has its events only:
entries are appended to `state.log_history` (not sent to integrations), and only evaluations run
during training are measured (from the step or epoch end that triggers them to `on_evaluate`).
Integrations take numbers only (TensorBoard and MLflow drop strings with a warning at every step),
so `energy_source` travels as a number, `energy_is_estimate` (1.0 when any CPU-time estimate or
CodeCarbon figure is included), and its label is added to this callback's own `log_history`
entries and to `energy.json`.

Across processes, every window is gathered to all processes and added up by device key (see
`distributed.py`): a GPU or CPU package is never counted twice, estimates of separate processes
are added. Samples are counted as optimizer steps x the total train batch size.

`energy.json`, written atomically to `output_dir` at the end of training (and into every checkpoint
folder), schema version 1:

```
{
  "schema_version": 1,
  "energy_source": "estimate",            # sources that contributed, joined by "+"
  "is_estimate": true,
  "energy_joules": 1234.5,                 # whole training, all processes, restored on resume
  "energy_kwh": 0.000343,
  "co2_grams": 0.165,
  "num_samples": 2048, "num_tokens": null,
  "joules_per_sample": 0.6, "joules_per_token": null,
  "by_source": {"estimate": 1234.5},
  "by_device": {"estimate/host/1234": 1234.5},
  "grid_intensity_g_per_kwh": 481.0,
  "grid_intensity_origin": "default (world average, ...)",
  "country_iso_code": null,
  "hardware": "AMD EPYC (2 threads)",
  "num_processes": 1,
  "training_type": "fine-tuning",
  "global_step": 200, "resumed_from_step": null,
  "status": "complete",                    # "in progress" (checkpoint), "aborted" (train() raised), or null
                                           # when this callback measured no training (evaluations only)
  "max_steps": 200,                        # the steps training was set to run, null without training
  "meters": [{"energy_source": "estimate", "method": "...", "watts_per_thread": 3.5, "origin": "..."}],
  "failures": [],                          # meters that failed mid-run and what replaced them
  "evaluation": {"energy_joules": ..., "energy_kwh": ..., "co2_grams": ..., "num_samples": ..., "windows": 2},
  "prediction": {...}
}
```

A callback that has not trained (an evaluation script run later on a trained model's `output_dir`) keeps
the training run of the `energy.json` already there: its windows are added to that file's `evaluation` and
`prediction` totals, read once, so successive `evaluate()` calls are counted once each. A file that cannot
be read is replaced by this callback's own record, with a warning. Once the callback trains, its record
replaces the file.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..trainer_context import running_trainer
from ..utils.files import atomic_write_json
from .card import ENERGY_FILE_NAME, load_energy_record
from .carbon import resolve_grid_intensity
from .distributed import gather_objects, gather_readings
from .meters import BACKENDS, select_meters
from .meters.base import JOULES_PER_KWH, logger, warn_once
from .meters.estimate import resolve_cpu_power
from .tracker import EnergyTracker, is_estimate, label_sources, source_of, subtract

SCHEMA_VERSION = 1


def _empty_totals() -> dict[str, Any]:
    return {
        "train": {"energy_joules": 0.0, "num_samples": 0, "by_device": {}},
        "evaluation": {"energy_joules": 0.0, "num_samples": 0, "windows": 0},
        "prediction": {"energy_joules": 0.0, "num_samples": 0, "windows": 0},
        "sources": [],
    }


class EnergyCallback(TrainerCallback, ExportableState):
    """Measures the energy and CO2 of training, evaluation and prediction and logs them.

    The meters are chosen for the trainer's device (see `select_meters`): NVML on NVIDIA GPUs,
    RAPL for the CPU when readable, else an estimate from process CPU time, labelled `estimate`
    with the watts per thread it assumed. A meter failing mid-run is reported once, what it
    measured is kept, and the estimate takes over; the callback never stops training.

    What a plain `Trainer` gets and what needs [`BigSmallTrainerMixin`] is in the module docstring.

    Args:
        backend (`str`, defaults to `"auto"`): CPU meter, one of `"auto"`, `"rapl"`,
            `"estimate"`, `"codecarbon"` (needs `country_iso_code`).
        cpu_tdp_watts (`float`, *optional*), cpu_threads (`int`, *optional*): CPU package TDP and
            hardware threads for the estimate (default: a table by CPU model, else 3.5 W/thread).
        grid_intensity_g_per_kwh (`float`, *optional*): gCO2eq per kWh of your electricity.
        country_iso_code (`str`, *optional*): ISO 3166-1 alpha-3 country, for the intensity table
            and the model card's `geographical_location`.
        training_type (`str`, *optional*): written to the model card (`"pre-training"`,
            `"fine-tuning"`, `"distillation"`, ...); by default `"distillation"` when the trainer
            has a `teacher_model` (`DistillationTrainer`), else `"fine-tuning"`.
        add_to_model_card (`bool`, defaults to `True`): add `co2_eq_emissions` to the README.md that
            `create_model_card()` and `push_to_hub()` of a `BigSmallTrainerMixin` trainer write.

    Example:

    ```python
    >>> from hf_bigsmall import BigSmallTrainer, EnergyCallback
    >>> trainer = BigSmallTrainer(model, args, train_dataset=train, callbacks=[EnergyCallback(country_iso_code="FRA")])
    >>> trainer.train()
    >>> [entry["energy_joules"] for entry in trainer.state.log_history if "energy_joules" in entry]
    >>> # output_dir/energy.json holds the totals, the meters and the grid intensity used
    ```
    """

    def __init__(
        self,
        *,
        backend: str = "auto",
        cpu_tdp_watts: float | None = None,
        cpu_threads: int | None = None,
        grid_intensity_g_per_kwh: float | None = None,
        country_iso_code: str | None = None,
        training_type: str | None = None,
        add_to_model_card: bool = True,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
        if backend == "codecarbon" and not country_iso_code:
            raise ValueError("backend='codecarbon' needs country_iso_code (e.g. 'FRA'): it runs offline and never guesses.")
        if training_type is not None and (not isinstance(training_type, str) or not training_type):
            raise ValueError(f"training_type must be a non-empty string such as 'fine-tuning', got {training_type!r}.")
        resolve_cpu_power(cpu_tdp_watts, cpu_threads)  # raises ValueError on a bad TDP, before training
        self.intensity = resolve_grid_intensity(grid_intensity_g_per_kwh, country_iso_code)
        self.backend = backend
        self.cpu_tdp_watts = cpu_tdp_watts
        self.cpu_threads = cpu_threads
        self.grid_intensity_g_per_kwh = grid_intensity_g_per_kwh
        self.country_iso_code = country_iso_code
        self.training_type = training_type
        self.add_to_model_card = add_to_model_card

        self.totals = _empty_totals()
        self.resumed_from_step: int | None = None
        self._training_type_seen = "fine-tuning"
        self._global_step: int | None = None
        self._status: str | None = None  # "in progress", "complete" or "aborted" once training started
        self._max_steps: int | None = None
        self._tracker: EnergyTracker | None = None
        self._mark: dict[str, float] = {}
        self._unlogged: dict[str, float] = {}  # gathered training energy not yet in an interval log
        self._unlogged_samples = 0
        self._unlogged_tokens = 0
        self._last_gather_step = 0
        self._last_tokens = 0
        self._training = False
        self._trained = False  # trained at least once: this callback's record is the whole file
        self._existing_records: dict[str, dict[str, Any] | None] = {}  # energy.json found before a first write
        self._logging = False
        self._disabled = False
        self._pending_evaluation: dict[str, float] | None = None  # plain Trainer: start of an evaluation in training
        self._window_starts: list[dict[str, float] | None] = []  # open evaluation_loop windows (nested: a stack)

    def _ensure_tracker(self, args) -> EnergyTracker:
        if self._tracker is None:
            meters = select_meters(
                args.device, backend=self.backend, cpu_tdp_watts=self.cpu_tdp_watts, cpu_threads=self.cpu_threads,
                country_iso_code=self.country_iso_code,
            )
            self._tracker = EnergyTracker(meters)
            self._mark = self._tracker.read()
            if self._tracker.is_estimate:
                warn_once(
                    "EnergyCallback: no energy counter for the CPU here, so its energy is an ESTIMATE "
                    f"(process CPU time x W per thread): {self._tracker.describe()['meters']}"
                )
        return self._tracker

    def _guard(self, hook: str, function, *args, **kwargs):
        """Run a hook; an unexpected error disables the callback instead of stopping training."""
        if self._disabled:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as error:  # energy accounting must never take training down
            self._disabled = True
            logger.exception("EnergyCallback stopped measuring after an error in %s: %s", hook, error)
            return None

    # ---- windows ---------------------------------------------------------------------------
    def _gather_training(self, args, state) -> None:
        """Close the current piece of training: gather it over processes and add it to totals."""
        tracker = self._ensure_tracker(args)
        reading = tracker.read()
        local = subtract(reading, self._mark)
        self._mark = reading
        merged = gather_readings(local)
        train = self.totals["train"]
        for key, joules in merged.items():
            train["by_device"][key] = train["by_device"].get(key, 0.0) + joules
            self._unlogged[key] = self._unlogged.get(key, 0.0) + joules
        train["energy_joules"] += sum(merged.values())
        samples = (state.global_step - self._last_gather_step) * self._total_batch_size(args)
        self._last_gather_step = state.global_step
        train["num_samples"] += samples
        self._unlogged_samples += samples
        tokens = state.num_input_tokens_seen - self._last_tokens
        self._last_tokens = state.num_input_tokens_seen
        self._unlogged_tokens += tokens
        self._note_sources(merged)

    def _note_sources(self, readings: dict[str, float]) -> None:
        self.totals["sources"] = sorted({*self.totals["sources"], *(source_of(k) for k in readings)})

    @staticmethod
    def _total_batch_size(args) -> int:
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)

    def _figures(self, prefix: str, joules: float, samples: int, tokens: int | None, label: str) -> dict[str, float]:
        figures = {
            f"{prefix}energy_joules": joules,
            f"{prefix}energy_kwh": joules / JOULES_PER_KWH,
            f"{prefix}co2_grams": self.intensity.co2_grams(joules),
            f"{prefix}energy_is_estimate": float(is_estimate(label)),
        }
        watts = [m["watts_per_thread"] for m in (self._tracker.describe()["meters"] if self._tracker else []) if "watts_per_thread" in m]
        if is_estimate(label) and watts:
            # the estimate's parameter travels with its figures (its origin is in energy.json)
            figures[f"{prefix}energy_estimate_watts_per_thread"] = watts[-1]
        if samples:
            figures[f"{prefix}energy_joules_per_sample"] = joules / samples
        if tokens:
            figures[f"{prefix}energy_joules_per_token"] = joules / tokens
        return figures

    def _log(self, state, figures: dict[str, float], label: str) -> None:
        """Log numbers through the trainer, then add the source label to that history entry.

        Without a `BigSmallTrainerMixin` trainer running, the entry goes to `log_history` only.
        """
        trainer = running_trainer(self)
        if trainer is None:
            state.log_history.append({**figures, "energy_source": label, "step": state.global_step})
            return
        self._logging = True
        try:
            trainer.log(dict(figures))
        finally:
            self._logging = False
        entry = state.log_history[-1] if state.log_history else {}
        if all(entry.get(key) == value for key, value in figures.items()):
            entry["energy_source"] = label

    # ---- events ------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._guard("on_train_begin", self._train_begin, args, state)

    def _train_begin(self, args, state) -> None:
        trainer = running_trainer(self)
        if trainer is None:
            warn_once(
                "EnergyCallback under a plain Trainer: energy goes to log_history and energy.json but not to report_to "
                "integrations, and evaluations outside training are not measured. Mix hf_bigsmall.BigSmallTrainerMixin "
                "into the trainer class (or use BigSmallTrainer) for both."
            )
        self._training_type_seen = "distillation" if getattr(trainer, "teacher_model", None) is not None else "fine-tuning"
        self._ensure_tracker(args)
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        if state.global_step > 0 and saved:
            # resuming: totals from the checkpoint's trainer_state.json, not a fresh start. Copied,
            # never shared: with `restore_callback_states_from_checkpoint` the Trainer hands this
            # instance the very dict that sits in `state.stateful_callbacks`.
            self.totals = copy.deepcopy(saved["attributes"]["totals"])
            self.resumed_from_step = state.global_step
        else:
            self.totals = {**copy.deepcopy(self.totals), "train": _empty_totals()["train"]}
            self.resumed_from_step = None
        self._mark = self._tracker.read()
        self._unlogged, self._unlogged_samples, self._unlogged_tokens = {}, 0, 0
        self._last_gather_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen
        self._training = True
        self._trained = True
        self._status, self._max_steps = "in progress", state.max_steps

    def on_step_end(self, args, state, control, **kwargs):
        if self._tracker is not None and not self._disabled:
            self._tracker.poll()
            self._before_save_or_evaluate("on_step_end", args, state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        # epoch strategies set should_save/should_evaluate here (DefaultFlowCallback runs first)
        if self._tracker is not None and not self._disabled:
            self._before_save_or_evaluate("on_epoch_end", args, state, control)

    def _before_save_or_evaluate(self, hook: str, args, state, control) -> None:
        """The Trainer saves and evaluates right after `on_step_end` and `on_epoch_end`: close the training
        window first. `control` is the same on every process, so all of them gather (a collective) or none."""
        if not (control.should_save or control.should_evaluate):
            return
        # the checkpoint's trainer_state.json is written before on_save: totals must be up to this step
        self._guard(hook, self._gather_training, args, state)
        if control.should_evaluate and self._training:
            # the evaluation comes next; a plain Trainer fires no event when it starts
            self._pending_evaluation = dict(self._mark)

    def on_evaluate(self, args, state, control, metrics=None, eval_dataloader=None, **kwargs):
        start, self._pending_evaluation = self._pending_evaluation, None
        if start is None or metrics is None or self._disabled:
            return  # measured by a BigSmallTrainerMixin evaluation_loop, or not in training
        prefix = next((key[: -len("_runtime")] for key in metrics if key.endswith("_runtime")), "eval")
        samples = _dataset_size(eval_dataloader)
        if samples is None:
            samples = round(metrics.get(f"{prefix}_samples_per_second", 0.0) * metrics.get(f"{prefix}_runtime", 0.0))
        # the Trainer logged `metrics` before this event: the figures go in their own entry
        self._guard("on_evaluate", self._window_end, args, state, start, "evaluation", prefix, metrics, samples, True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._logging or not self._training or logs is None:
            return
        if "loss" in logs:
            self._guard("on_log", self._log_interval, args, state)
        elif "train_runtime" in logs:
            self._guard("on_log", self._log_training_total, args, state)

    def _log_interval(self, args, state) -> None:
        self._gather_training(args, state)
        joules = sum(self._unlogged.values())
        label = label_sources(self._unlogged)
        figures = self._figures("", joules, self._unlogged_samples, self._unlogged_tokens, label)
        total = self.totals["train"]["energy_joules"]
        figures["energy_total_kwh"] = total / JOULES_PER_KWH
        figures["co2_total_grams"] = self.intensity.co2_grams(total)
        self._log(state, figures, label)
        self._unlogged, self._unlogged_samples, self._unlogged_tokens = {}, 0, 0

    def _log_training_total(self, args, state) -> None:
        self._gather_training(args, state)
        train = self.totals["train"]
        label = label_sources(train["by_device"])
        figures = self._figures("train_", train["energy_joules"], train["num_samples"], state.num_input_tokens_seen, label)
        self._log(state, figures, label)

    def on_save(self, args, state, control, **kwargs):
        # the Trainer calls on_save on every process after a checkpoint, so its record gathers every
        # process's meters (a collective), as the one at the end of training does
        if not self._disabled:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self._guard("on_save", self._write, args, state, folder, into_existing_folder=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self._training:
            self._training = False
            self._status = "complete"
            self._guard("on_train_end", self._write, args, state, args.output_dir)

    def on_train_abort(self, args, state, control, **kwargs):
        """`BigSmallTrainerMixin.train` ended by an exception: training is over, so a later `evaluate()` is a
        window of its own and writes `energy.json`. In one process the energy used up to the exception is
        written now, as at the end of training; with several, nothing that needs the others is attempted
        (they may be gone)."""
        if not self._training:
            return
        self._training = False
        self._status = "aborted"  # never read as a finished training, here or in a later evaluation's write
        self._pending_evaluation = None
        if args.world_size == 1:
            self._guard("on_train_abort", self._write_aborted, args, state)

    def _write_aborted(self, args, state) -> None:
        self._gather_training(args, state)
        self._write(args, state, args.output_dir)

    # ---- BigSmallTrainerMixin events: every evaluation and prediction is one window ---------------
    def on_evaluation_loop_begin(self, args, state, control, description: str = "Evaluation",
                                 metric_key_prefix: str = "eval", **kwargs):
        self._pending_evaluation = None  # measured here, not from the step that triggered it
        if not self._training:
            trainer = running_trainer(self)
            self._training_type_seen = "distillation" if getattr(trainer, "teacher_model", None) is not None else "fine-tuning"
        self._window_starts.append(self._guard("evaluation start", self._window_start, args, state))

    def on_evaluation_loop_end(self, args, state, control, output=None, description: str = "Evaluation",
                               metric_key_prefix: str = "eval", **kwargs):
        start = self._window_starts.pop() if self._window_starts else None
        if start is None or output is None:
            return
        phase = "prediction" if description == "Prediction" else "evaluation"
        # added to the metrics the Trainer logs and returns, so they are logged with them
        self._guard("evaluation end", self._window_end, args, state, start, phase, metric_key_prefix, output.metrics,
                    int(output.num_samples or 0), False)

    def _window_start(self, args, state) -> dict[str, float]:
        if self._training:
            self._gather_training(args, state)  # the training before it is not evaluation energy
            return self._mark
        return self._ensure_tracker(args).read()

    def _window_end(self, args, state, start, phase, prefix, metrics, samples, log_separately) -> None:
        reading = self._tracker.read()
        if self._training:
            self._mark = reading
        merged = gather_readings(subtract(reading, start))
        joules = sum(merged.values())
        totals = self.totals[phase]
        totals["energy_joules"] += joules
        totals["num_samples"] += samples
        totals["windows"] += 1
        self._note_sources(merged)
        label = label_sources(merged)
        figures = self._figures(f"{prefix}_", joules, samples, None, label)
        metrics.update(figures)
        if log_separately:
            self._log(state, figures, label)
        if not self._training:
            self._write(args, state, args.output_dir)

    # ---- energy.json and the model card --------------------------------------------------------
    def _local_part(self) -> dict[str, Any]:
        """What this process knows about its meters, to be gathered into `energy.json`."""
        info = self._tracker.describe() if self._tracker else {"meters": []}
        return {"meters": info["meters"], "failures": info.get("failures", []),
                "hardware": self._tracker.hardware() if self._tracker else None}

    def record(self, parts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The `energy.json` content (see the module docstring for the schema); `parts` are the
        gathered `_local_part()` of every process (default: this process only)."""
        train = self.totals["train"]
        joules, samples = train["energy_joules"], train["num_samples"]
        tokens = self._last_tokens or None
        parts = parts or [self._local_part()]
        by_source: dict[str, float] = {}
        for key, value in train["by_device"].items():
            by_source[source_of(key)] = by_source.get(source_of(key), 0.0) + value
        meters = []
        for part in parts:
            meters += [m for m in part["meters"] if m not in meters]

        def phase(name):
            data = self.totals[name]
            return {**{k: data[k] for k in ("energy_joules", "num_samples", "windows")},
                    "energy_kwh": data["energy_joules"] / JOULES_PER_KWH,
                    "co2_grams": self.intensity.co2_grams(data["energy_joules"])}

        return {
            "schema_version": SCHEMA_VERSION,
            "energy_source": label_sources(train["by_device"]) if train["by_device"] else "+".join(self.totals["sources"]),
            "is_estimate": is_estimate("+".join(self.totals["sources"])),
            "energy_joules": joules,
            "energy_kwh": joules / JOULES_PER_KWH,
            "co2_grams": self.intensity.co2_grams(joules),
            "num_samples": samples,
            "num_tokens": tokens,
            "joules_per_sample": joules / samples if samples else None,
            "joules_per_token": joules / tokens if tokens else None,
            "by_source": by_source,
            "by_device": dict(train["by_device"]),
            "grid_intensity_g_per_kwh": self.intensity.g_per_kwh,
            "grid_intensity_origin": self.intensity.origin,
            "country_iso_code": self.intensity.country_iso_code,
            "hardware": " | ".join(sorted({p["hardware"] for p in parts if p.get("hardware")})),
            "num_processes": len(parts),
            "training_type": self.training_type or self._training_type_seen,
            "global_step": self._global_step,
            "resumed_from_step": self.resumed_from_step,
            "status": self._status,
            "max_steps": self._max_steps,
            "meters": meters,
            "failures": [f for part in parts for f in part.get("failures", [])],
            "evaluation": phase("evaluation"),
            "prediction": phase("prediction"),
        }

    def _write(self, args, state, folder: str, into_existing_folder: bool = False) -> None:
        parts = gather_objects(self._local_part())  # collective: every process is here
        if not state.is_world_process_zero or (into_existing_folder and not os.path.isdir(folder)):
            return
        self._global_step = state.global_step
        try:
            record = self.record(parts)
            if not self._trained:
                record = self._add_to_existing(os.path.join(folder, ENERGY_FILE_NAME), record)
            os.makedirs(folder, exist_ok=True)
            atomic_write_json(os.path.join(folder, ENERGY_FILE_NAME), record)  # readers never see half a file
        except Exception as error:
            # the main process alone is here: were this error to switch the callback off there only, the next
            # collective (a gather at a save or an evaluation) would wait forever for it. Only this file is lost.
            logger.exception("EnergyCallback could not write %s: %s", os.path.join(folder, ENERGY_FILE_NAME), error)

    def _add_to_existing(self, path: str, record: dict[str, Any]) -> dict[str, Any]:
        """`record` of evaluations alone, added to the `energy.json` that was at `path` before this callback
        first wrote there (read once: later writes add to the same baseline, never to their own)."""
        key = os.path.realpath(path)  # `out` and `./out` are one file, with one baseline
        if key not in self._existing_records:
            self._existing_records[key] = _read_existing_record(path)
        existing = self._existing_records[key]
        if existing is None:
            return record
        merged = {**existing, "is_estimate": bool(existing.get("is_estimate")) or record["is_estimate"]}
        for phase in ("evaluation", "prediction"):
            before, ours = existing.get(phase) or {}, record[phase]
            joules = before.get("energy_joules", 0.0) + ours["energy_joules"]
            merged[phase] = {
                "energy_joules": joules,
                "num_samples": before.get("num_samples", 0) + ours["num_samples"],
                "windows": before.get("windows", 0) + ours["windows"],
                "energy_kwh": joules / JOULES_PER_KWH,
                # each run's grams at its own grid intensity
                "co2_grams": before.get("co2_grams", 0.0) + ours["co2_grams"],
            }
        return merged

    # ---- resume ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "backend": self.backend,
                "cpu_tdp_watts": self.cpu_tdp_watts,
                "cpu_threads": self.cpu_threads,
                "grid_intensity_g_per_kwh": self.grid_intensity_g_per_kwh,
                "country_iso_code": self.country_iso_code,
                "training_type": self.training_type,
                "add_to_model_card": self.add_to_model_card,
            },
            "attributes": {"totals": copy.deepcopy(self.totals)},
        }


def _read_existing_record(path: str) -> dict[str, Any] | None:
    """The `energy.json` at `path` to add evaluations to; None when there is none or it is damaged (warned)."""
    if not os.path.isfile(path):
        return None
    try:
        record = load_energy_record(path)
        if not isinstance(record, dict):
            raise ValueError("it is not a JSON object")  # noqa: TRY004 - a damaged file
        for phase in ("evaluation", "prediction"):
            figures = record.get(phase) or {}
            if not isinstance(figures, dict) or not all(
                _is_figure(figures.get(key, 0)) for key in ("energy_joules", "num_samples", "windows", "co2_grams")
            ):
                raise ValueError(f"its {phase} totals are not finite numbers")
    except (OSError, ValueError) as error:
        logger.warning("EnergyCallback: cannot read %s (%s): it is replaced by this callback's own record, without "
                       "the training run it may have held.", path, error)
        return None
    return record


def _is_figure(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def _dataset_size(dataloader) -> int | None:
    try:
        return len(dataloader.dataset)
    except (AttributeError, TypeError):  # no dataloader, or an iterable dataset
        return None
