"""Exports a benchmark keeps in its work folder, reused by a later run only when made from the same thing.

A benchmark that exports a model (GenAI, GGUF, ONNX) names the export after the model's short name and the
settings, so a later run with the same name but another source folder, other weights, other settings or another
version of the kit would otherwise measure a stale export without a word. `is_current` says whether an export
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


def fingerprint(source: str | os.PathLike, settings: dict[str, Any]) -> dict[str, Any]:
    """What an export of `source` with `settings` depends on: the source's files (name, size, modification
    time), the settings and the kit's version."""
    import hf_bigsmall

    source = Path(source).resolve()
    paths = sorted(path for path in source.rglob("*") if path.is_file()) if source.is_dir() else [source]
    files = [[str(path.relative_to(source)) if source.is_dir() else path.name, path.stat().st_size,
              path.stat().st_mtime_ns] for path in paths]
    return {"source": str(source), "files": files, "settings": settings, "hf_bigsmall": hf_bigsmall.__version__}


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
