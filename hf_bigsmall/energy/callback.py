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

Values go through `trainer.log`, so they reach `log_history` and every `report_to` integration.
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
  "meters": [{"energy_source": "estimate", "method": "...", "watts_per_thread": 3.5, "origin": "..."}],
  "failures": [],                          # meters that failed mid-run and what replaced them
  "evaluation": {"energy_joules": ..., "energy_kwh": ..., "co2_grams": ..., "num_samples": ..., "windows": 2},
  "prediction": {...}
}
```
"""

from __future__ import annotations

import copy
import functools
import os
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..utils.files import atomic_write_json
from ..utils.trainer import find_trainer
from .card import ENERGY_FILE_NAME, add_co2_to_model_card, load_energy_record
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

    Args:
        trainer (`Trainer`, *optional*): the trainer to log through; the callback adds itself to
            it. A callback passed as `Trainer(callbacks=[...])` or added with `add_callback` finds
            its trainer itself (evaluations run before training are then measured only if it was
            passed at construction).
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
            `trainer.create_model_card()` and `trainer.push_to_hub()` write.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from hf_bigsmall import EnergyCallback
    >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[EnergyCallback(country_iso_code="FRA")])
    >>> trainer.train()
    >>> [entry["energy_joules"] for entry in trainer.state.log_history if "energy_joules" in entry]
    >>> # output_dir/energy.json holds the totals, the meters and the grid intensity used
    ```
    """

    def __init__(
        self,
        trainer=None,
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
        self._trainer = None
        self._tracker: EnergyTracker | None = None
        self._mark: dict[str, float] = {}
        self._unlogged: dict[str, float] = {}  # gathered training energy not yet in an interval log
        self._unlogged_samples = 0
        self._unlogged_tokens = 0
        self._last_gather_step = 0
        self._last_tokens = 0
        self._training = False
        self._logging = False
        self._disabled = False
        if trainer is not None:
            self.attach(trainer)

    # ---- Trainer wiring -------------------------------------------------------------------
    def attach(self, trainer) -> None:
        """Log through `trainer` and measure its evaluations and predictions.

        The Trainer fires no event when an evaluation starts, so its `evaluation_loop` (shared by
        `evaluate` and `predict`) is wrapped on this instance to open and close the window, and
        `create_model_card` so that the card it writes carries `co2_eq_emissions`.
        """
        self._trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        for name, wrapper in (("evaluation_loop", self._measure_evaluation), ("create_model_card", self._create_model_card)):
            method = getattr(trainer, name)
            if isinstance(getattr(method, "_energy_callback", None), EnergyCallback):
                method = method.__wrapped__  # replace the wrapper of an earlier EnergyCallback
            bound = functools.partial(wrapper, method)
            functools.update_wrapper(bound, method)
            bound._energy_callback = self
            setattr(trainer, name, bound)


    def _default_training_type(self) -> str:
        return "distillation" if getattr(self._trainer, "teacher_model", None) is not None else "fine-tuning"

    def _ensure_attached(self) -> None:
        if self._trainer is None:
            trainer = find_trainer(self)
            if trainer is not None:
                self.attach(trainer)

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
        """Log numbers through the trainer, then add the source label to that history entry."""
        if self._trainer is None:
            return
        self._logging = True
        try:
            self._trainer.log(dict(figures))
        finally:
            self._logging = False
        entry = state.log_history[-1] if state.log_history else {}
        if all(entry.get(key) == value for key, value in figures.items()):
            entry["energy_source"] = label

    # ---- events ------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        self._guard("on_init_end", self._ensure_attached)

    def on_train_begin(self, args, state, control, **kwargs):
        self._guard("on_train_begin", self._train_begin, args, state)

    def _train_begin(self, args, state) -> None:
        self._ensure_attached()
        if self._trainer is None:
            warn_once(
                "EnergyCallback could not find its Trainer: energy goes to energy.json only. "
                "Pass it as EnergyCallback(trainer=...) or call callback.attach(trainer)."
            )
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

    def on_step_end(self, args, state, control, **kwargs):
        if self._tracker is not None and not self._disabled:
            self._tracker.poll()
            if control.should_save:
                # the checkpoint's trainer_state.json is written before on_save: bring totals up
                # to this step now, on every process (gathering is collective)
                self._guard("on_step_end", self._gather_training, args, state)

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
        if state.is_world_process_zero and not self._disabled:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                self._guard("on_save", self._write, args, state, folder, gather=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self._training:
            self._training = False
            self._guard("on_train_end", self._write, args, state, args.output_dir)

    def _measure_evaluation(self, evaluation_loop, *args, **kwargs):
        """Wraps `trainer.evaluation_loop`: the evaluation or prediction is one window."""
        if self._disabled:
            return evaluation_loop(*args, **kwargs)
        trainer = self._trainer
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        description = kwargs.get("description", args[1] if len(args) > 1 else "Evaluation")
        phase = "prediction" if description == "Prediction" else "evaluation"
        start = self._guard("evaluation start", self._window_start, trainer.args, trainer.state)
        output = evaluation_loop(*args, **kwargs)
        if start is not None:
            self._guard("evaluation end", self._window_end, trainer.args, trainer.state, start, phase, prefix, output)
        return output

    def _window_start(self, args, state) -> dict[str, float]:
        if self._training:
            self._gather_training(args, state)  # the training before it is not evaluation energy
            return self._mark
        return self._ensure_tracker(args).read()

    def _window_end(self, args, state, start, phase, prefix, output) -> None:
        reading = self._tracker.read()
        if self._training:
            self._mark = reading
        merged = gather_readings(subtract(reading, start))
        joules = sum(merged.values())
        samples = int(output.num_samples or 0)
        totals = self.totals[phase]
        totals["energy_joules"] += joules
        totals["num_samples"] += samples
        totals["windows"] += 1
        self._note_sources(merged)
        # added to the metrics the Trainer logs and returns, so they are logged with them
        output.metrics.update(self._figures(f"{prefix}_", joules, samples, None, label_sources(merged)))
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
            "training_type": self.training_type or self._default_training_type(),
            "global_step": getattr(getattr(self._trainer, "state", None), "global_step", None),
            "resumed_from_step": self.resumed_from_step,
            "meters": meters,
            "failures": [f for part in parts for f in part.get("failures", [])],
            "evaluation": phase("evaluation"),
            "prediction": phase("prediction"),
        }

    def _write(self, args, state, folder: str, gather: bool = True) -> None:
        part = self._local_part()
        parts = gather_objects(part) if gather else [part]  # collective: every process is here
        if not state.is_world_process_zero:
            return
        record = self.record(parts)
        record["global_step"] = state.global_step
        os.makedirs(folder, exist_ok=True)
        atomic_write_json(os.path.join(folder, ENERGY_FILE_NAME), record)  # readers never see half a file

    def _create_model_card(self, create_model_card, *args, **kwargs):
        """Wraps `trainer.create_model_card` (also run by `push_to_hub`) to add `co2_eq_emissions`."""
        result = create_model_card(*args, **kwargs)
        if self.add_to_model_card and self._trainer.is_world_process_zero():
            self._guard("create_model_card", self._add_co2_to_card, self._trainer.args.output_dir)
        return result

    def _add_co2_to_card(self, output_dir: str) -> None:
        readme = os.path.join(output_dir, "README.md")
        written = os.path.join(output_dir, ENERGY_FILE_NAME)
        # energy.json holds what every process measured; this process alone knows less
        record = load_energy_record(written) if os.path.isfile(written) else self.record()
        if os.path.isfile(readme) and record["energy_joules"] > 0:
            add_co2_to_model_card(readme, record)

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
