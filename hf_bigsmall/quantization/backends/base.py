"""The quantization-backend registry: `QuantizationBackend`, `register_quantization_backend` and the look-ups.

The package's docstring says what a backend is; its built-ins register here as user code does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ...utils import import_utils
from ...utils.heads import TEXT_CLASSIFICATION, TEXT_GENERATION

# the tasks `quantize` and `compare_models` know (pipeline tags)
TASKS = (TEXT_CLASSIFICATION, TEXT_GENERATION)


@dataclass(frozen=True)
class QuantizationBackend:
    """One quantization backend (a serving engine and its export), registered by name.

    Args:
        name: what `quantize(..., backend=name)`, the CLI's `--backend` and the `backend` of the
            folder's `quantization` record say.
        tasks: the tasks it takes, among `"text-classification"` and `"text-generation"`.
        devices: where its models run (`"cpu"`, `"cuda"`).
        schemes: method -> what that method stores (`{"int8": "int8 weights, ..."}`); the methods
            `quantize(..., method=...)` accepts for this backend.
        export: `export(model_dir: Path, output_dir: Path, method: str) -> Path` writes the folder.
            It checks everything before writing, writes through `hf_bigsmall.utils.files.publishing`
            (so the folder carries the kit's marker and appears whole or not at all) and puts a
            `quantization` record (`method`, `scheme`, `backend`, `device`, `source`) in its
            `config.json`; `write_quantized_folder` does all of that around a function of yours.
        how_to_use: `how_to_use(where: str, record: dict, *, architecture: str | None = None,
            from_hub: bool = False) -> str`: the markdown (code blocks) a model card's "How to use"
            shows for a folder this backend wrote, loaded from `where` (a folder or a Hub id).
        runner: `runner(folder, num_threads=None)` -> an object `compare_models` measures like a model
            (keyword tensors in, `.logits` out; `config`, `task`, `device`, `parameter_counts()`;
            optionally `measure_generation(prompts, new_tokens=...)` for causal LMs, and
            `outputs_depend_on_batch = True` when one input's outputs change with the inputs padded
            into its batch, as with activations quantized with one scale per call: `compare_models`
            then scores its quality one input at a time, unpadded). None: the folder loads with plain
            transformers `from_pretrained`.
        is_export: `is_export(folder) -> bool`, whether a folder is one of this backend's exports.
            By default: its `config.json` carries a `quantization` record whose `backend` is `name`.
        check: `check(method, device)`, further checks of a request (a GPU's capability, ...), run
            before anything is loaded; raises `ValueError`.
        extra: the pip extra of hf-bigsmall that installs it (`pip install "hf-bigsmall[extra]"`).
        requires: the modules it imports; missing ones raise an `ImportError` that names the extra.
        auto_devices: devices on which `backend="auto"` picks it.
        description: one line saying what it is, for error messages and docs.
        loading: one line saying how to load a folder it wrote, `{path}` (and `{auto_class}`, the
            transformers class of the source's head, and `{file}`, the file its record names) filled in; `hf-bigsmall quantize` and `quantize`'s
            log print it. Empty: they print `how_to_use` instead.
        model_card: whether `quantize` writes the kit's model card (README.md) into the folder, for
            formats served from the folder as it is (GGUF for llama.cpp and Ollama).
        calibrated_schemes: the methods whose export takes calibration data: for them
            `quantize(..., calibration=...)` calls `export(model_dir, output_dir, method,
            calibration=calibration)` (token-id sequences, or a dataset with `input_ids`); for any
            other method, and for backends without any, `quantize` refuses calibration.

    Example:

    ```python
    from hf_bigsmall.quantization.backends import get_quantization_backend

    backend = get_quantization_backend("onnxruntime")
    print(backend.methods, backend.extra, backend.is_available())
    ```
    """

    name: str
    tasks: tuple[str, ...]
    devices: tuple[str, ...]
    schemes: Mapping[str, str]
    export: Callable[..., Path]
    how_to_use: Callable[..., str]
    runner: Callable[..., Any] | None = None
    is_export: Callable[[Path], bool] | None = None
    check: Callable[[str, str], None] | None = None
    extra: str | None = None
    requires: tuple[str, ...] = ()
    auto_devices: tuple[str, ...] = ()
    description: str = ""
    loading: str = ""
    model_card: bool = False
    calibrated_schemes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or self.name == "auto":
            raise ValueError(f"A quantization backend needs a non-empty name other than 'auto', got {self.name!r}.")
        for attribute in ("tasks", "devices", "requires", "auto_devices", "calibrated_schemes"):
            value = getattr(self, attribute)
            if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
                raise TypeError(f"QuantizationBackend {self.name!r}: {attribute} must be a tuple of non-empty strings, "
                                f"got {value!r}.")
            object.__setattr__(self, attribute, tuple(value))
        if not self.tasks or not self.devices:
            raise ValueError(f"QuantizationBackend {self.name!r} needs at least one task and one device.")
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown:
            raise ValueError(f"QuantizationBackend {self.name!r}: unknown task(s) {unknown}; the kit measures {TASKS}.")
        if not set(self.auto_devices) <= set(self.devices):
            raise ValueError(f"QuantizationBackend {self.name!r}: auto_devices {self.auto_devices} must be among its "
                             f"devices {self.devices}.")
        if (not isinstance(self.schemes, Mapping) or not self.schemes
                or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in self.schemes.items())):
            raise TypeError(f"QuantizationBackend {self.name!r}: schemes must be a non-empty mapping of method -> "
                            f"description (str -> str), got {self.schemes!r}.")
        object.__setattr__(self, "schemes", MappingProxyType(dict(self.schemes)))
        if not set(self.calibrated_schemes) <= set(self.schemes):
            raise ValueError(f"QuantizationBackend {self.name!r}: calibrated_schemes {self.calibrated_schemes} must be "
                             f"among its schemes {tuple(self.schemes)}.")
        for attribute in ("export", "how_to_use"):
            if not callable(getattr(self, attribute)):
                raise TypeError(f"QuantizationBackend {self.name!r}: {attribute} must be callable, "
                                f"got {getattr(self, attribute)!r}.")
        for attribute in ("runner", "is_export", "check"):
            value = getattr(self, attribute)
            if value is not None and not callable(value):
                raise TypeError(f"QuantizationBackend {self.name!r}: {attribute} must be callable or None, "
                                f"got {value!r}.")
        if not isinstance(self.description, str) or not isinstance(self.loading, str):
            raise TypeError(f"QuantizationBackend {self.name!r}: description and loading must be strings.")
        if self.extra is not None and (not isinstance(self.extra, str) or not self.extra):
            raise TypeError(f"QuantizationBackend {self.name!r}: extra must be a pip extra's name or None, "
                            f"got {self.extra!r}.")

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods it offers, in the order its schemes were declared."""
        return tuple(self.schemes)

    def missing_modules(self) -> list[str]:
        return [module for module in self.requires if not import_utils._is_package_available(module)]

    def is_available(self) -> bool:
        """Whether every module it needs is installed."""
        return not self.missing_modules()

    def require(self) -> None:
        """Raise an `ImportError` naming the extra to install if a module it needs is missing."""
        purpose = f"the {self.name} quantization backend" + (f" ({self.description})" if self.description else "")
        for module in self.requires:
            import_utils.require(module, extra=self.extra, purpose=purpose)

    def load_instructions(self, folder: str | os.PathLike, record: Mapping[str, Any],
                          architecture: str | None = None) -> str:
        """How to load `folder`: the `loading` line filled in, or the `how_to_use` snippet."""
        if self.loading:
            head = "ForCausalLM" if architecture and architecture.endswith(("ForCausalLM", "LMHeadModel")) else (
                "ForSequenceClassification")
            return self.loading.format(path=folder, auto_class=f"AutoModel{head}", file=record.get("file") or "")
        return self.how_to_use(str(folder), dict(record), architecture=architecture)

    def recognizes(self, folder: str | os.PathLike) -> bool:
        """Whether `folder` is one of this backend's exports (see `is_export`)."""
        folder = Path(folder)
        if self.is_export is not None:
            return bool(self.is_export(folder))
        return (_record_of(folder) or {}).get("backend") == self.name


def _record_of(folder: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = config.get("quantization") if isinstance(config, dict) else None
    return record if isinstance(record, dict) else None


_REGISTRY: dict[str, QuantizationBackend] = {}


def register_quantization_backend(backend: QuantizationBackend, *, overwrite: bool = False) -> QuantizationBackend:
    """Make `backend` known by its name to `quantize`, the CLI and `compare_models`; returns it.

    Raises:
        TypeError: `backend` is not a `QuantizationBackend`.
        ValueError: a backend of that name is registered already and `overwrite` is False.
    """
    if not isinstance(backend, QuantizationBackend):
        raise TypeError(f"register_quantization_backend takes a QuantizationBackend, got {type(backend).__name__}.")
    if backend.name in _REGISTRY and not overwrite:
        raise ValueError(f"A quantization backend named {backend.name!r} is registered already: choose another name, "
                         "or pass overwrite=True to replace it.")
    _REGISTRY[backend.name] = backend
    return backend


def get_quantization_backend(name: str) -> QuantizationBackend:
    """The backend registered as `name`.

    Raises:
        ValueError: no backend has that name; the message lists the registered ones.
    """
    backend = _REGISTRY.get(name) if isinstance(name, str) else None
    if backend is None:
        raise ValueError(f"Unknown quantization backend {name!r}: registered backends are "
                         f"{quantization_backend_names()} "
                         "(or 'auto'). Register it with register_quantization_backend(...) before quantizing with it.")
    return backend


def quantization_backend_names() -> list[str]:
    """The registered backends' names, in registration order (built-ins first)."""
    return list(_REGISTRY)


def quantization_backends() -> list[QuantizationBackend]:
    """The registered backends, in registration order."""
    return list(_REGISTRY.values())


def auto_backend(device: str) -> QuantizationBackend | None:
    """The backend `backend="auto"` picks on `device`: the first registered with it in `auto_devices`."""
    return next((backend for backend in _REGISTRY.values() if device in backend.auto_devices), None)


def backend_of_folder(folder: str | os.PathLike) -> QuantizationBackend | None:
    """The registered backend whose export `folder` is, or None (a plain transformers checkpoint, say).

    The backend its `quantization` record names comes first: another backend's `is_export` may claim the
    folder too (ONNX Runtime's takes any folder with a `model.onnx`), and would run it with the wrong runner.
    """
    name = (_record_of(Path(folder)) or {}).get("backend")
    named = _REGISTRY.get(name) if isinstance(name, str) else None
    if named is not None and named.recognizes(folder):
        return named
    return next((backend for backend in _REGISTRY.values() if backend.recognizes(folder)), None)


def load_runner(folder: str | os.PathLike, num_threads: int | None = None) -> Any | None:
    """The runner of the backend that wrote `folder`, or None when transformers loads it (no runner)."""
    backend = backend_of_folder(folder)
    if backend is None or backend.runner is None:
        return None
    backend.require()
    return backend.runner(Path(folder), num_threads=num_threads)


# the shared export helper, then the built-ins, each registering itself as user code would
