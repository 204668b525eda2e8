"""Writing files and folders so that a reader never finds a half-written one.

Everything the kit writes goes first to a `.partial` sibling, then is renamed into place in one
step: a crash, a full disk or Ctrl-C mid-write leaves the previous file (or no file), never a
truncated one, and the leftover `.partial` is what the Hub upload ignores.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_SUFFIX = ".partial"


def partial_path(path: str | os.PathLike) -> Path:
    """The `.partial` sibling that `path` is written to before it is renamed into place."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(partial)` to write the file, then rename it to `path` (replacing any old one).

    If `write` fails, the partial file is removed and `path` is left as it was.
    """
    path = Path(path)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write `data` as indented JSON to `path` atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def fresh_partial_dir(final_dir: str | os.PathLike) -> Path:
    """The empty `.partial` folder a model folder is written into (a leftover of a crash is removed)."""
    partial = partial_path(final_dir)
    shutil.rmtree(partial, ignore_errors=True)
    return partial


def publish_dir(partial: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Move a completely written `partial` folder to `final_dir`, replacing an older one."""
    final_dir = Path(final_dir)
    shutil.rmtree(final_dir, ignore_errors=True)
    Path(partial).rename(final_dir)
    return final_dir


@contextmanager
def publishing(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a folder in a `.partial` sibling and put it in place only once the block completes.

    Example:

    ```python
    >>> with publishing("out/student") as folder:
    ...     model.save_pretrained(folder)
    ...     tokenizer.save_pretrained(folder)
    ```
    """
    partial = fresh_partial_dir(final_dir)
    yield partial
    publish_dir(partial, final_dir)
