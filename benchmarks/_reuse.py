"""Exports a benchmark keeps in its work folder, reused by a later run only when made from the same thing.

A benchmark that exports a model (GenAI, GGUF, ONNX) names the export after the model's short name and the
settings, so a later run with the same name but another source folder, other weights, other settings, other kit
code (another default) or another engine version would otherwise measure a stale export without a word. `is_current` says whether an export
was made from `source` as it is now, with `settings`; `record` writes that beside the export once it is made.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECORD_SUFFIX = ".bench_source.json"


def _record_path(target: Path) -> Path:
    # beside the export, not in it: an export folder holds only what its engine reads
    return target.with_name(target.name + RECORD_SUFFIX)


# the libraries an export's bytes depend on, beside the kit's own code
# (the GPU builds of the engines install under their own distribution names)
_LIBRARIES = ("transformers", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxruntime-genai",
              "onnxruntime-genai-cuda", "onnx-ir", "gguf", "llama-cpp-python", "torchao")


def _kit_code() -> str:
    """A hash of the kit's Python sources: an export made by other code (another default) is not reused. Its version
    number alone would not tell, as it does not change with every commit."""
    import hashlib

    import hf_bigsmall

    digest = hashlib.sha256()
    package = Path(hf_bigsmall.__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint(source: str | os.PathLike, settings: dict[str, Any]) -> dict[str, Any]:
    """What an export of `source` with `settings` depends on: the source's files (name, size, modification
    time), the settings, the kit's code and the versions of the libraries that write and read exports."""
    source = Path(source).resolve()
    paths = sorted(path for path in source.rglob("*") if path.is_file()) if source.is_dir() else [source]
    files = [[str(path.relative_to(source)) if source.is_dir() else path.name, path.stat().st_size,
              path.stat().st_mtime_ns] for path in paths]
    return {"source": str(source), "files": files, "settings": settings, "hf_bigsmall_code": _kit_code(),
            "libraries": _library_versions()}


def is_current(target: str | os.PathLike, source: str | os.PathLike, settings: dict[str, Any]) -> bool:
    """True when `target` exists and was recorded as made from `source` as it is now, with `settings`."""
    target = Path(target)
    record_path = _record_path(target)
    if not target.exists() or not record_path.is_file():
        return False
    try:
        return json.loads(record_path.read_text()) == json.loads(json.dumps(fingerprint(source, settings)))
    except (OSError, ValueError):
        return False


def record(target: str | os.PathLike, source: str | os.PathLike, settings: dict[str, Any]) -> None:
    """Note that `target` was just made from `source` with `settings` (see `is_current`)."""
    _record_path(Path(target)).write_text(json.dumps(fingerprint(source, settings), indent=1))


def forget(target: str | os.PathLike) -> None:
    """Drop the record before `target` is made again: an export interrupted halfway is never taken as current."""
    _record_path(Path(target)).unlink(missing_ok=True)
