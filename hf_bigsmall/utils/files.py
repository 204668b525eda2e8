"""Writing files and folders so that a reader never finds a half-written one.

Everything the kit writes goes first to a `.partial` sibling, then is renamed into place in one
step: a crash, a full disk or Ctrl-C mid-write leaves the previous file (or no file), never a
truncated one, and the leftover `.partial` is what the Hub upload ignores.

Each writer's temporary names are its own (`<name>.<writer>.partial`, and the hidden
`.<name>.<writer>.replaced` an old folder is moved aside to, with `<writer>` the tag of
`hf_bigsmall.utils.writers`): two runs writing the same target at once never delete or overwrite
each other's half-written data. What an interrupted run left is removed by the next write of the
same target once its writer is gone (`remove_leftovers`), never while it may still be writing.

Every folder the kit writes this way carries a small marker file of its own (`.hf_bigsmall.json`,
which the Hub upload leaves out like every hidden file). Only a folder holding that marker, or an
empty one, is ever replaced (an output may narrow that rule, or name its own earlier folders from before
the marker: `is_replaceable`): any other folder at that path is the user's, and is refused with a
`ValueError` that names it, before anything is written, and again when the new folder is renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers.utils import logging

from .writers import (
    WRITER_TAG_PATTERN,
    folder_clock,
    may_be_leftover,
    release_writer,
    writer_is_gone,
    writer_partial,
    writer_tag,
)

logger = logging.get_logger(__name__)

PARTIAL_SUFFIX = ".partial"
# the old folder `publish_dir` moves aside (as a hidden sibling) while the new one takes its place
REPLACED_SUFFIX = ".replaced"
# the marker of a folder the kit wrote (and so may replace); its content is checked, not only its name
KIT_MARKER = ".hf_bigsmall.json"
_MARKER_CONTENT = {"written_by": "hf_bigsmall"}
# how often `publish_dir` tries again when another writer's folder takes the target first
PUBLISH_ATTEMPTS = 5


class NotReplaceableError(ValueError):
    """A file, a link or a folder that the kit may not replace stands where it would write; it is left as it is."""


def leftover_match(target: str | os.PathLike, name: str) -> re.Match | None:
    """Whether `name` is one of the temporary siblings the kit writes `target` through; its groups `machine`, `pid`.

    `<name>.<writer>.partial` (the new file or folder), `.<name>.<writer>.replaced` (an old folder moved aside),
    `.<name>.<writer>.genai` (an ONNX Runtime GenAI build), and the names of older versions of the kit
    (`<name>.partial`, `.<name>.replaced`, `.<name>.replaced-<pid>`, `.<name>.genai-<random>`), whose writer
    is unnamed (`machine` and `pid` None): such a folder falls under the time rule of
    `hf_bigsmall.utils.writers.writer_is_gone`, such a file is never removed (`may_be_leftover`).
    """
    target_name = re.escape(Path(target).name)
    match = re.fullmatch(rf"(?P<hidden>\.?){target_name}(?:\.{WRITER_TAG_PATTERN})?\.(?P<kind>partial|replaced|genai)"
                         rf"|\.{target_name}\.(?:replaced-\d+|genai-[a-z0-9_]{{8}})", name)
    if match is None or match["kind"] is None:  # None: an older version's hidden name
        return match
    # a `.partial` is a visible sibling, the others hidden ones; a build always names its writer
    if (match["kind"] == "partial") == bool(match["hidden"]) or (match["kind"] == "genai" and not match["machine"]):
        return None
    return match


def final_name(name: str) -> str:
    """The name a `.partial` file or folder called `name` gets once complete (`name` itself if it is none)."""
    return re.sub(rf"(?:\.{WRITER_TAG_PATTERN})?\.partial$", "", name)


def _leftovers(target: Path) -> list[tuple[Path, re.Match]]:
    """The temporary siblings of `target` (see `leftover_match`) that are no links, with their matches."""
    try:
        return [(entry, match) for entry in sorted(target.parent.iterdir())
                if (match := leftover_match(target, entry.name)) and not entry.is_symlink()]
    except OSError:  # no folder yet: nothing left in it
        return []


def _restore(target: Path, found: list[tuple[Path, re.Match]], now: float) -> Path | None:
    """Rename back to `target` the old folder a swap killed between its two renames left aside; None if there is none.

    Only where nothing is at `target`, only a `.<name>.<writer>.replaced` folder whose writer is gone, and only one
    still holding the kit's marker: `publish_dir` removes the marker first when it deletes the old folder, so a
    folder that has it was moved aside whole, never half deleted. Of several, the one written last comes back.
    """
    if target.exists() or target.is_symlink():
        return None
    whole = [entry for entry, match in found
             if match["kind"] == "replaced" and match["machine"] and entry.is_dir() and is_kit_folder(entry)
             and writer_is_gone(entry, match["machine"], match["pid"], now)]
    for entry in sorted(whole, key=lambda entry: (entry / KIT_MARKER).stat().st_mtime, reverse=True):
        try:
            entry.rename(target)
        except OSError:  # another run put it (or another folder) back first
            continue
        logger.warning(f"put {entry} back at {target}: a run writing {target} was stopped after moving it aside, "
                       "before the new folder took its place")
        return entry
    return None


def restore_moved_aside(target: str | os.PathLike) -> Path | None:
    """Put back a folder that a swap killed between its two renames left aside (see `publish_dir`).

    A run that decides from what is at `target` (reuse a saved teacher, or train a new one) calls this first, so it
    sees the old folder rather than nothing. Returns the name it was put back from, or None.
    """
    target = Path(target)
    found = _leftovers(target)
    return _restore(target, found, folder_clock(target.parent)) if found else None


def remove_leftovers(target: str | os.PathLike, restore: bool = True) -> list[Path]:
    """Remove what interrupted writes of `target` left beside it (see `leftover_match`) once their writers are gone.

    A leftover whose writer may still be running is left (and logged), as is a link, a file whose name carries no
    writer tag (`<name>.partial` of a user's, or of an older version), and a `.partial` folder that holds something
    but not the kit's marker. An old folder that a swap killed between its two renames left
    aside, with nothing at `target`, is the only copy of it: with `restore` (the default) it is put back at
    `target` rather than removed (`restore_moved_aside`). Returns the paths removed.
    """
    target = Path(target)
    found = _leftovers(target)
    removed = []
    now = folder_clock(target.parent) if found else 0.0
    restored = _restore(target, found, now) if found and restore else None
    for entry, match in found:
        if entry == restored:
            continue
        if not may_be_leftover(entry, match["machine"]):
            logger.debug(f"left {entry}: a file with a leftover's name but no writer tag may be anyone's")
            continue
        if not writer_is_gone(entry, match["machine"], match["pid"], now):
            logger.info(f"left {entry}: its writer may still be running (another run writing {target}?)")
            continue
        if entry.is_dir():
            # a `.partial` name is one a user might pick too: only the kit's own (or an empty one) goes
            if not entry.name.startswith(".") and any(entry.iterdir()) and not is_kit_folder(entry):
                logger.info(f"left {entry}: it has the name of a leftover but was not written by hf_bigsmall")
                continue
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        logger.info(f"removed {entry}, left by an interrupted write of {target}")
        removed.append(entry)
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(partial)` to write the file, then rename it to `path` (replacing any old one).

    If `write` fails, the partial file is removed and `path` is left as it was. The partial file's name is
    this writer's own (`<name>.<writer>.partial`); what interrupted writers of `path` left is removed first.
    """
    path = Path(path)
    remove_leftovers(path)
    partial = writer_partial(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        release_writer(partial)
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


def _holds_users_files(folder: Path, is_replaceable: Callable[[Path], bool]) -> bool | None:
    """Whether the folder at `folder` holds anything and is not `is_replaceable`; None where it was moved meanwhile.

    Another writer publishing the same folder moves it aside for an instant: a marker read by path then finds
    nothing, though the folder is the kit's. Only an answer about one folder, there from first look to last, counts.
    """
    try:
        before = folder.lstat()
        unmarked = any(folder.iterdir()) and not is_replaceable(folder)
        after = folder.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return unmarked if (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino) else None


def check_replaceable(folder: str | os.PathLike, is_replaceable: Callable[[Path], bool] | None = None) -> None:
    """Raise unless `folder` is missing, an empty folder, or a folder the kit wrote (its marker inside).

    `is_replaceable` narrows or widens "a folder the kit wrote" for one kind of output (`is_kit_folder` if None);
    a file or a link is refused whatever it says.

    Raises:
        NotReplaceableError: a `ValueError`: `folder` is a file, a link, or a folder with anything in it that the
            kit did not write; the message names it. Nothing is changed.
    """
    folder, is_replaceable = Path(folder), is_replaceable or is_kit_folder
    for _ in range(PUBLISH_ATTEMPTS):
        try:
            mode = folder.lstat().st_mode  # one look: a folder another writer moves aside is missing, not a file
        except FileNotFoundError:
            return
        if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
            raise NotReplaceableError(f"{folder} already exists and is not a folder hf_bigsmall wrote (a file or a "
                                      "link): it is left as it is. Choose another output folder, or move or delete it "
                                      "yourself.")
        unmarked = _holds_users_files(folder, is_replaceable)
        if unmarked is not None:
            break
    # moved on every look: only the kit's writers swap folders at its targets
    if unmarked:
        raise NotReplaceableError(f"{folder} already exists and was not written by hf_bigsmall (it has no "
                                  f"{KIT_MARKER}): it is left as it is, with everything in it. Choose another output "
                                  "folder, or move or delete it yourself.")


def fresh_partial_dir(final_dir: str | os.PathLike) -> Path:
    """The empty, marked `<final_dir>.<writer>.partial` folder (this writer's own) a model folder is written into.

    Checks first that `final_dir` may be replaced (see `check_replaceable`); what interrupted runs left beside it
    is removed once their writers are gone (`remove_leftovers`), while another run's live `.partial` is kept.
    """
    check_replaceable(final_dir)
    Path(final_dir).parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(final_dir)
    partial = writer_partial(final_dir)
    partial.mkdir()  # a new name: never a folder of another writer's
    mark_kit_folder(partial)
    return partial


def _rename_into_place(source: Path, target: Path) -> bool:
    """Rename the folder `source` to `target`; False, with nothing changed, where a folder took `target` first.

    A folder is never renamed onto one that holds anything (ENOTEMPTY or EEXIST; every folder the kit publishes holds
    its marker): at a target that was free a moment ago, that is another writer's rename that came first.
    """
    try:
        source.rename(target)
    except OSError as error:
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST) and target.is_dir() and not target.is_symlink():
            return False
        raise
    return True


def _remove_moved_aside(replaced: Path) -> None:
    """Delete a folder `publish_dir` moved aside, its marker first: a removal stopped halfway leaves no folder that
    looks whole and would be put back (`restore_moved_aside`).

    What cannot be deleted (a folder or file this process may not change) is kept, under a name no later run takes
    for a leftover to put back or remove (`.<name>.<writer>.kept`), with a warning naming it: the new folder is in
    place all the same.
    """
    errors: list[str] = []

    def note(function, path, error) -> None:  # shutil.rmtree's onerror: go on, and say what stayed
        errors.append(f"{path}: {error[1] if isinstance(error, tuple) else error}")

    try:
        try:
            (replaced / KIT_MARKER).unlink(missing_ok=True)
        except OSError as error:
            errors.append(f"{replaced / KIT_MARKER}: {error}")
        else:
            shutil.rmtree(replaced, onerror=note)
        if errors and replaced.exists():
            kept = replaced.with_name(replaced.name[: -len(REPLACED_SUFFIX)] + ".kept")
            try:
                replaced.rename(kept)
            except OSError:
                kept = replaced
            logger.warning("The old folder, replaced by the new one, could not be deleted and was kept at %s (%s): "
                           "delete it yourself.", kept, "; ".join(errors[:3]))
    finally:
        release_writer(replaced)  # interrupted, it is a leftover the next write of its target removes


def publish_dir(partial: str | os.PathLike, final_dir: str | os.PathLike,
                is_replaceable: Callable[[Path], bool] | None = None) -> Path:
    """Move a completely written `partial` folder to `final_dir`, replacing an older one the kit wrote.

    Two processes publishing the same folder at the same instant: the one that renames last wins, and `final_dir`
    holds one writer's whole folder at every moment but between a swap's two renames (see `restore_moved_aside`).
    A writer whose rename meets another's folder arriving first replaces it as it would an older one, and tries
    `PUBLISH_ATTEMPTS` times in all. `is_replaceable` is `check_replaceable`'s, for an output that only some of the
    kit's folders may replace.

    Raises:
        ValueError: `final_dir` is a folder the kit did not write (see `check_replaceable`); it and
            `partial` are left as they are.
        FileExistsError: another process published `final_dir` first on every attempt; its folder stays in place,
            and `partial` is removed.
    """
    final_dir, partial, is_replaceable = Path(final_dir), Path(partial), is_replaceable or is_kit_folder
    for _ in range(PUBLISH_ATTEMPTS):
        # again: the folder may have appeared while `partial` was written
        check_replaceable(final_dir, is_replaceable)
        mark_kit_folder(partial)
        if not final_dir.exists():
            if _rename_into_place(partial, final_dir):
                release_writer(partial)
                return final_dir
            continue  # another writer published it meanwhile: replaced below, like an older folder
        # renamed aside, not deleted in place: a crash or Ctrl-C while a large old folder was being deleted left it
        # half gone (its marker too, so the next run refused it) with the new one still in `partial`
        # hidden (never uploaded), and this writer's own: another run's swap of the same folder never deletes it
        replaced = final_dir.with_name(f".{final_dir.name}.{writer_tag()}{REPLACED_SUFFIX}")
        try:
            final_dir.rename(replaced)
        except FileNotFoundError:  # another writer moved it aside first
            release_writer(replaced)
            continue
        try:
            someone_elses = not stat.S_ISDIR(replaced.lstat().st_mode) or _holds_users_files(replaced, is_replaceable)
        except OSError:  # a folder it cannot read: not one the kit wrote
            someone_elses = True
        if someone_elses:
            # checked while the target was free or the kit's, a file, link or folder of someone else's took its
            # place since: it goes back untouched (only this writer uses `replaced`), and the check refuses it by name
            try:
                replaced.rename(final_dir)
            except OSError as error:
                raise ValueError(f"{final_dir} appeared while it was being replaced and was not written by "
                                 f"hf_bigsmall: it was moved to {replaced}, where it is kept; move it back yourself."
                                 ) from error
            release_writer(replaced)
            check_replaceable(final_dir, is_replaceable)  # the refusal, on the last attempt too
            continue
        try:
            placed = _rename_into_place(partial, final_dir)
        except BaseException:
            if not final_dir.exists():
                replaced.rename(final_dir)  # the old folder back in place: a failed swap loses nothing
            raise
        # placed or not, a whole folder is at `final_dir`, newer than the one moved aside
        _remove_moved_aside(replaced)
        if placed:
            release_writer(partial)
            return final_dir
    shutil.rmtree(partial, ignore_errors=True)
    release_writer(partial)
    raise FileExistsError(f"{final_dir} was not replaced: another process published it at the same time, "
                          f"{PUBLISH_ATTEMPTS} times in a row, and its whole folder is the one in place. This run's "
                          "copy was removed; run it again, or give each run its own output folder.")


@contextmanager
def publishing(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Write a folder in a `.partial` sibling of its own and put it in place only once the block completes.

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
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # half a folder is worth nothing: the old one stays in place
        release_writer(partial)
        raise
    publish_dir(partial, final_dir)
