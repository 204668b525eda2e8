"""Writing files and folders so that a reader never finds a half-written one.

Everything the kit writes goes first to a `.partial` sibling, then is renamed into place in one
step: a crash, a full disk or Ctrl-C mid-write leaves the previous file (or no file), never a
truncated one, and the leftover `.partial` is what the Hub upload ignores.

Every folder the kit writes this way carries a small marker file of its own (`.hf_bigsmall.json`,
which the Hub upload leaves out like every hidden file). Only a folder holding that marker, or an
empty one, is ever replaced: any other folder at that path is the user's, and is refused with a
`ValueError` that names it, before anything is written.
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
# the old folder `publish_dir` moves aside (as a hidden sibling) while the new one takes its place
REPLACED_SUFFIX = ".replaced"
# the marker of a folder the kit wrote (and so may replace); its content is checked, not only its name
KIT_MARKER = ".hf_bigsmall.json"
_MARKER_CONTENT = {"written_by": "hf_bigsmall"}


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


def is_kit_folder(folder: str | os.PathLike) -> bool:
    """True for a folder the kit wrote: it holds the kit's marker file with the kit's content."""
    marker = Path(folder) / KIT_MARKER
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("written_by") == _MARKER_CONTENT["written_by"]


def mark_kit_folder(folder: str | os.PathLike) -> None:
    """Write the kit's marker into `folder` (created if missing), so a later run may replace the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not is_kit_folder(folder):
        (folder / KIT_MARKER).write_text(json.dumps(_MARKER_CONTENT) + "\n", encoding="utf-8")


def check_replaceable(folder: str | os.PathLike) -> None:
    """Raise unless `folder` is missing, an empty folder, or a folder the kit wrote (its marker inside).

    Raises:
        ValueError: `folder` is a file, a link, or a folder with anything in it that the kit did not
            write; the message names it. Nothing is changed.
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise ValueError(f"{folder} already exists and is not a folder hf_bigsmall wrote (a file or a link): it is "
                         "left as it is. Choose another output folder, or move or delete it yourself.")
    if any(folder.iterdir()) and not is_kit_folder(folder):
        raise ValueError(f"{folder} already exists and was not written by hf_bigsmall (it has no {KIT_MARKER}): it is "
                         "left as it is, with everything in it. Choose another output folder, or move or delete it "
                         "yourself.")


def fresh_partial_dir(final_dir: str | os.PathLike) -> Path:
    """The empty, marked `.partial` folder a model folder is written into.

    Checks first that `final_dir` may be replaced (see `check_replaceable`); a `.partial` leftover of
    an interrupted run is removed, one that the kit did not write is refused the same way.
    """
    check_replaceable(final_dir)
    partial = partial_path(final_dir)
    check_replaceable(partial)
    shutil.rmtree(partial, ignore_errors=True)
    mark_kit_folder(partial)
    return partial


def publish_dir(partial: str | os.PathLike, final_dir: str | os.PathLike) -> Path:
    """Move a completely written `partial` folder to `final_dir`, replacing an older one the kit wrote.

    Raises:
        ValueError: `final_dir` is a folder the kit did not write (see `check_replaceable`); it and
            `partial` are left as they are.
    """
    final_dir = Path(final_dir)
    check_replaceable(final_dir)  # again: the folder may have appeared while `partial` was written
    mark_kit_folder(partial)
    if not final_dir.exists():
        Path(partial).rename(final_dir)
        return final_dir
    # renamed aside, not deleted in place: a crash or Ctrl-C while a large old folder was being deleted left it
    # half gone (its marker too, so the next run refused it) with the new one still in `partial`
    replaced = final_dir.with_name(f".{final_dir.name}{REPLACED_SUFFIX}")  # hidden: never uploaded
    shutil.rmtree(replaced, ignore_errors=True)  # what an interrupted earlier swap left
    final_dir.rename(replaced)
    Path(partial).rename(final_dir)
    shutil.rmtree(replaced, ignore_errors=True)
    return final_dir


@contextmanager
def publishing(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a folder in a `.partial` sibling and put it in place only once the block completes.

    The `.partial` folder exists (empty but for the kit's marker) when the block starts. A folder
    at `final_dir` that the kit did not write is refused before the block runs.

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
