"""Files and folders appear whole or not at all."""

import json
import os
from pathlib import Path

import pytest

from hf_bigsmall.utils.files import (
    KIT_MARKER,
    atomic_write,
    atomic_write_json,
    final_name,
    fresh_partial_dir,
    is_kit_folder,
    publish_dir,
    publishing,
    remove_leftovers,
    restore_moved_aside,
)
from hf_bigsmall.utils.writers import machine_tag, writer_partial


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"version": 1})

    def fail(partial):
        partial.write_text('{"version": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_published_folder_replaces_the_old_one_only_when_complete(tmp_path):
    final = tmp_path / "student"
    with publishing(final) as partial:
        (partial / "config.json").write_text("{}")
    assert (final / "config.json").is_file() and not partial.exists()

    with pytest.raises(RuntimeError):
        with publishing(final) as partial:
            (partial / "model.safetensors").write_text("half")
            raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in final.iterdir()) == [KIT_MARKER, "config.json"]  # the old folder is untouched

    with publishing(final) as partial:  # a folder the kit wrote is replaced whole
        (partial / "model.safetensors").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == [KIT_MARKER, "model.safetensors"]


@pytest.mark.parametrize("refused", ["marker", "a file"])
def test_an_old_folder_that_cannot_be_deleted_is_kept_and_the_new_one_is_published(tmp_path, monkeypatch, caplog,
                                                                                   refused):
    # an old folder this process may not change (another user's, a read-only folder): the new folder is in place, so
    # the run succeeds and says where the old one was kept, instead of failing after the fact or keeping it silently
    import shutil as shutil_module

    from hf_bigsmall.utils import files

    final = tmp_path / "student"
    with publishing(final) as partial:
        (partial / "config.json").write_text("old")
        (partial / "model.bin").write_text("old weights")
    if refused == "marker":
        unlink = Path.unlink

        def refuse(self, *args, **kwargs):
            if self.parent.name.endswith(".replaced"):
                raise PermissionError(13, "Permission denied", str(self))
            return unlink(self, *args, **kwargs)

        monkeypatch.setattr(Path, "unlink", refuse)
    else:
        rmtree = shutil_module.rmtree

        def refuse(path, ignore_errors=False, onerror=None, **kwargs):
            path = Path(path)
            if path.name.endswith(".replaced"):  # everything goes but the weights, which it may not delete
                for entry in path.iterdir():
                    if entry.name != "model.bin":
                        entry.unlink()
                onerror(os.unlink, str(path / "model.bin"), (PermissionError, PermissionError(13, "denied"), None))
                return None
            return rmtree(path, ignore_errors=ignore_errors, onerror=onerror, **kwargs)

        monkeypatch.setattr(files.shutil, "rmtree", refuse)
    with caplog.at_level("WARNING"), publishing(final) as partial:
        (partial / "config.json").write_text("new")
    assert (final / "config.json").read_text() == "new"
    kept = [path for path in tmp_path.iterdir() if path.name.startswith(".student.")]
    assert len(kept) == 1 and kept[0].name.endswith(".kept") and (kept[0] / "model.bin").read_text() == "old weights"
    assert str(kept[0]) in caplog.text
    monkeypatch.undo()
    # kept aside under its own name: never put back in the new folder's place, nor removed as a leftover
    shutil_module.rmtree(final)
    assert restore_moved_aside(final) is None and not final.exists()
    assert remove_leftovers(final) == [] and kept[0].exists()


def test_an_interrupted_replacement_never_leaves_the_folder_half_deleted(tmp_path, monkeypatch):
    """The old folder was deleted in place before the new one was renamed: Ctrl-C in that deletion left a
    half-deleted folder (marker gone, so refused next time) and the finished new one only in `.partial`."""
    import shutil

    from hf_bigsmall.utils import files

    final = tmp_path / "teacher"
    with publishing(final) as partial:
        (partial / "config.json").write_text("old")
        (partial / "model.safetensors").write_text("old weights")
    partial = fresh_partial_dir(final)
    (partial / "config.json").write_text("new")
    (partial / "model.safetensors").write_text("new weights")
    real_rmtree = shutil.rmtree

    def interrupted_rmtree(path, *args, **kwargs):
        if (path / "config.json").is_file() and (path / "config.json").read_text() == "old":
            (path / KIT_MARKER).unlink(missing_ok=True)  # deleting the old folder, then Ctrl-C
            raise KeyboardInterrupt
        real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", interrupted_rmtree)
    with pytest.raises(KeyboardInterrupt):
        publish_dir(partial, final)
    monkeypatch.undo()
    assert is_kit_folder(final) and (final / "model.safetensors").read_text() == "new weights"
    # the next publication clears what the interrupted one left aside
    with publishing(final) as partial:
        (partial / "config.json").write_text("newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def _contents(folder):
    return {path.relative_to(folder): path.read_text() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("marker", [None, "not json", '{"written_by": "someone else"}'])
def test_a_folder_the_kit_did_not_write_is_refused_and_left_whole(tmp_path, marker):
    final = tmp_path / "student"
    user = final
    (user / "data").mkdir(parents=True)
    (user / "model.gguf").write_text("weights")
    (user / "data" / "notes.txt").write_text("keep me")
    if marker is not None:
        (user / KIT_MARKER).write_text(marker)
    before = _contents(user)
    written = []
    with pytest.raises(ValueError, match=f"{user} already exists and was not written by hf_bigsmall"):
        with publishing(final) as partial:
            written.append(partial)
    assert written == [] and _contents(user) == before
    with pytest.raises(ValueError, match=f"{user} already exists"):
        fresh_partial_dir(final)
    assert _contents(user) == before


def test_publishing_refuses_a_file_or_a_link_and_accepts_an_empty_folder(tmp_path):
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(ValueError, match="a file or a link"):
        fresh_partial_dir(tmp_path / "a-file")
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "mine.txt").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(ValueError, match="a file or a link"):
        fresh_partial_dir(tmp_path / "link")
    assert (tmp_path / "a-file").read_text() == "mine" and (tmp_path / "target" / "mine.txt").is_file()

    (tmp_path / "empty").mkdir()
    with publishing(tmp_path / "empty") as partial:
        (partial / "config.json").write_text("{}")
    assert is_kit_folder(tmp_path / "empty") and (tmp_path / "empty" / "config.json").is_file()


def test_a_folder_that_appears_during_the_write_is_not_replaced(tmp_path):
    final = tmp_path / "student"
    partial = fresh_partial_dir(final)
    (partial / "config.json").write_text("{}")
    final.mkdir()
    (final / "notes.txt").write_text("written meanwhile")
    with pytest.raises(ValueError, match="was not written by hf_bigsmall"):
        publish_dir(partial, final)
    assert (final / "notes.txt").read_text() == "written meanwhile" and (partial / "config.json").is_file()


def _user_files(folder):
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_text("weights")
    return _contents(folder)


@pytest.mark.parametrize("name", ["student.partial", f"student.{machine_tag()}-1-0123abcd.partial"])
def test_a_folder_of_the_users_at_a_partial_name_is_left_whole_and_written_around(tmp_path, name):
    """The kit writes through a `.partial` of its own: a folder of the user's at such a name, even one that looks
    like an old leftover, is never emptied or removed."""
    final, user = tmp_path / "student", tmp_path / name
    before = _user_files(user)
    for path in (user, *user.rglob("*")):
        os.utime(path, (0, 0))  # untouched for decades
    with publishing(final) as partial:
        assert partial != user
        (partial / "config.json").write_text("{}")
    assert _contents(user) == before and (final / "config.json").is_file()


def _finished_process_id():
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def test_two_writers_of_one_folder_never_delete_each_others_partial(tmp_path):
    final = tmp_path / "student"
    first = fresh_partial_dir(final)
    (first / "model.safetensors").write_text("first, half written")
    second = fresh_partial_dir(final)  # a second run into the same folder starts meanwhile
    assert first != second and final_name(first.name) == final_name(second.name) == "student"
    (second / "model.safetensors").write_text("second")
    publish_dir(second, final)
    assert (first / "model.safetensors").read_text() == "first, half written"  # still being written
    (first / "model.safetensors").write_text("first")
    publish_dir(first, final)
    assert (final / "model.safetensors").read_text() == "first"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["student"]


def test_a_live_writers_partial_is_kept_and_a_gone_writers_is_removed(tmp_path):
    machine = machine_tag()
    running = os.getppid()  # a process that runs (pytest's parent)
    names = {
        "gone": f"student.{machine}-{_finished_process_id()}-0123abcd.partial",  # its writer ended
        "running": f"student.{machine}-{running}-0123abcd.partial",  # its writer still runs
        "elsewhere": "student.ffffffff-1-0123abcd.partial",  # another machine's, changed just now
        "elsewhere-old": "student.ffffffff-2-0123abcd.partial",  # another machine's, untouched for hours
        "replaced": f".student.{machine}-{_finished_process_id()}-0123abcd.replaced",  # an interrupted swap's
        "old-version": ".student.replaced",  # an older version's name, untouched for hours
        "other-target": f"teacher.{machine}-{_finished_process_id()}-0123abcd.partial",  # another folder's
    }
    for key, name in names.items():
        with publishing(tmp_path / name.strip(".").split(".")[0]) as partial:  # a kit folder, renamed below
            (partial / "model.safetensors").write_text(key)
        (tmp_path / name.strip(".").split(".")[0]).rename(tmp_path / name)
        if key in ("elsewhere-old", "old-version"):
            for path in (tmp_path / name, *(tmp_path / name).rglob("*")):
                os.utime(path, (0, 0))
    with publishing(tmp_path / "student") as partial:
        (partial / "model.safetensors").write_text("new")
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == sorted(["student", names["running"], names["elsewhere"], names["other-target"]])
    assert (tmp_path / names["running"] / "model.safetensors").read_text() == "running"


def test_an_atomic_write_removes_only_the_partial_files_of_gone_writers(tmp_path):
    path = tmp_path / "report.json"
    gone = tmp_path / f"report.json.{machine_tag()}-{_finished_process_id()}-0123abcd.partial"
    running = tmp_path / f"report.json.{machine_tag()}-{os.getppid()}-0123abcd.partial"
    for leftover in (gone, running):
        leftover.write_text("half")
    atomic_write_json(path, {"version": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.json", running.name])
    assert remove_leftovers(path) == []


def test_temporary_names_are_ignored_by_the_hub_upload(tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    from hf_bigsmall.hub.push import IGNORE_PATTERNS

    names = [writer_partial(tmp_path / "README.md").name, writer_partial(tmp_path / "student").name + "/config.json",
             f".student.{machine_tag()}-1-0123abcd.replaced/config.json", "config.json"]
    assert list(filter_repo_objects(names, ignore_patterns=IGNORE_PATTERNS)) == ["config.json"]


def test_a_swap_killed_between_its_renames_gets_the_old_folder_back(tmp_path):
    """Killed after the old folder was moved aside and before the new one took its place, a swap left the only
    copy of the old folder at `.student.<writer>.replaced`: the next write removed it as a leftover, and when that
    write failed too nothing was left at all."""
    final = tmp_path / "student"
    with publishing(final) as partial:
        (partial / "model.safetensors").write_text("old")
    writer = f"{machine_tag()}-{_finished_process_id()}-0123abcd"
    final.rename(tmp_path / f".student.{writer}.replaced")  # the first rename of the killed swap
    with publishing(tmp_path / f"student.{writer}") as new:  # its complete new folder, never renamed into place
        (new / "model.safetensors").write_text("new")
    (tmp_path / f"student.{writer}").rename(tmp_path / f"student.{writer}.partial")
    with pytest.raises(RuntimeError, match="interrupted again"):
        with publishing(final):
            raise RuntimeError("interrupted again")
    assert (final / "model.safetensors").read_text() == "old" and is_kit_folder(final)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["student"]


def test_an_old_folder_whose_removal_was_interrupted_is_never_put_back(tmp_path, monkeypatch):
    """The old folder moved aside loses the kit's marker before it is removed: one half removed (the swap done, its
    removal interrupted) is a leftover to delete, never a folder to restore where the new one is missing."""
    import shutil

    from hf_bigsmall.utils import files

    final, remove = tmp_path / "student", shutil.rmtree
    with publishing(final) as partial:
        (partial / "model.safetensors").write_text("old")

    class Interrupted(BaseException):  # as Ctrl-C is
        pass

    def interrupted(path, *args, **kwargs):  # stopped while the old folder is being removed, its weights gone
        (tmp_path / path / "model.safetensors").unlink()
        raise Interrupted

    with pytest.raises(Interrupted):
        with publishing(final) as partial:
            (partial / "model.safetensors").write_text("new")
            monkeypatch.setattr(files.shutil, "rmtree", interrupted)
    monkeypatch.setattr(files.shutil, "rmtree", remove)
    remove(final)  # the new folder deleted since, by hand
    with pytest.raises(RuntimeError, match="interrupted again"):
        with publishing(final):
            raise RuntimeError("interrupted again")
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_two_machines_of_one_host_name_without_proc_have_different_writer_tags(monkeypatch):
    """Without /proc (macOS, a BSD) the machine tag was the host name alone: two laptops both called "MacBook-Pro"
    writing one shared folder took each other's running writers, whose process ids they cannot see, for gone ones
    and deleted their half-written folders. The hardware address tells them apart."""
    import secrets
    import uuid

    from hf_bigsmall.utils import writers

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(writers.socket, "gethostname", lambda: "MacBook-Pro")
    monkeypatch.setattr(writers.Path, "read_text", no_proc)
    monkeypatch.setattr(writers.os, "readlink", no_proc)
    tags = set()
    for node in (0x3C22FB000001, 0x3C22FB000002):  # two network cards' addresses (not uuid's random stand-in)
        monkeypatch.setattr(uuid, "getnode", lambda node=node: node)
        tags.add(writers.machine_tag())
    assert len(tags) == 2
    # where it finds no address, uuid makes one up (multicast bit set), anew in each process: left out
    monkeypatch.setattr(uuid, "getnode", lambda: 0x010000000000 | secrets.randbits(40))
    assert writers.machine_tag() == writers.machine_tag()


def test_a_tag_taken_by_another_thread_while_the_live_tags_are_read_breaks_no_write(tmp_path, monkeypatch):
    """Two threads writing at once (exports in a thread pool): one took a writer tag while the other went through the
    live tags, and the other's write failed with "Set changed size during iteration"."""
    from hf_bigsmall.utils import writers

    class TakenMeanwhile(set):
        def __iter__(self):  # another thread runs between two steps of the iteration
            for tag in super().__iter__():
                writers.writer_tag()
                yield tag

    first, second = (f"{machine_tag()}-{os.getpid()}-{suffix}" for suffix in ("aaaaaaaa", "bbbbbbbb"))
    monkeypatch.setattr(writers, "_LIVE_TAGS", TakenMeanwhile([first, second]))
    leftover = tmp_path / f"student.{machine_tag()}-{os.getpid()}-0123abcd.partial"
    assert writers.writer_is_gone(leftover, machine_tag(), str(os.getpid()), 0.0)
    writers.release_writer(tmp_path / f"student.{first}.partial")
    assert first not in writers._LIVE_TAGS and second in writers._LIVE_TAGS


@pytest.mark.parametrize("name", ["model.onnx.partial", ".model.onnx.replaced", ".model.onnx.replaced-12345"])
def test_a_file_without_a_writer_tag_is_never_removed_as_a_leftover(tmp_path, name):
    """A leftover's name alone does not make it the kit's: a plain file at `<target>.partial` (a user's own, or an
    older version's) carries no writer tag, and a file has no marker to prove it is the kit's: it stays, however
    old. A tagged file of a writer that is gone still goes."""
    import time

    target = tmp_path / "model.onnx"
    users = tmp_path / name
    users.write_bytes(b"the user's own bytes")
    tagged = tmp_path / f"model.onnx.{machine_tag()}-{_finished_process_id()}-0123abcd.partial"
    tagged.write_bytes(b"half")
    seven_hours_ago = time.time() - 7 * 3600  # past STALE_PARTIAL_SECONDS (6 h)
    for path in (users, tagged):
        os.utime(path, (seven_hours_ago, seven_hours_ago))
    atomic_write(target, lambda partial: partial.write_bytes(b"model"))
    assert users.read_bytes() == b"the user's own bytes"
    assert not tagged.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", name])
    # a folder target too: its writes remove the same names
    with publishing(tmp_path / "student") as partial:
        (partial / "config.json").write_text("{}")
    (tmp_path / name.replace("model.onnx", "student")).write_bytes(b"mine")
    os.utime(tmp_path / name.replace("model.onnx", "student"), (seven_hours_ago, seven_hours_ago))
    with publishing(tmp_path / "student") as partial:
        (partial / "config.json").write_text("{}")
    assert (tmp_path / name.replace("model.onnx", "student")).read_bytes() == b"mine"


def _another_writer_publishes_first(monkeypatch, tmp_path, times=1):
    """Make another writer's complete folder appear at the target just before this writer's rename puts its own there,
    as a second process publishing the same folder at the same instant does; returns the folders it published."""
    from hf_bigsmall.utils import files

    rename_into_place, published = files._rename_into_place, []

    def race(source, target):
        if len(published) < times and not target.exists():
            other = fresh_partial_dir(target)
            (other / "model.safetensors").write_text(f"other writer {len(published)}")
            other.rename(target)
            published.append(f"other writer {len(published)}")
        return rename_into_place(source, target)

    monkeypatch.setattr(files, "_rename_into_place", race)
    return published


@pytest.mark.parametrize("earlier", [False, True], ids=["new-folder", "replacing-an-earlier-one"])
def test_two_writers_publishing_one_folder_at_once_leave_one_whole_folder(tmp_path, monkeypatch, earlier):
    """A second process published the same folder between this one's check and its rename: the rename met a full
    folder and raised a bare OSError (ENOTEMPTY), leaving the earlier folder moved aside and the partial behind."""
    final = tmp_path / "student"
    if earlier:
        with publishing(final) as partial:
            (partial / "model.safetensors").write_text("earlier")
    published = _another_writer_publishes_first(monkeypatch, tmp_path)
    with publishing(final) as partial:
        (partial / "model.safetensors").write_text("this writer")
    assert published == ["other writer 0"]
    assert (final / "model.safetensors").read_text() == "this writer" and is_kit_folder(final)  # the last one wins
    assert sorted(path.name for path in tmp_path.iterdir()) == ["student"]  # no partial, nothing moved aside


def test_a_writer_that_loses_every_race_says_so_and_cleans_up(tmp_path, monkeypatch):
    final = tmp_path / "student"
    published = _another_writer_publishes_first(monkeypatch, tmp_path, times=100)
    with pytest.raises(FileExistsError, match=f"{final}.*another process published it at the same time"):
        with publishing(final) as partial:
            (partial / "model.safetensors").write_text("this writer")
    assert not partial.exists()
    # the target holds the last folder another writer published, whole; nothing of this writer's is left
    assert (final / "model.safetensors").read_text() == published[-1] and is_kit_folder(final)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["student"]


def test_a_kit_folder_another_writer_swaps_while_it_is_checked_is_not_taken_for_the_users(tmp_path, monkeypatch):
    """Between seeing the folder hold files and reading its marker, another process moved it aside to put its own in
    place: the marker read found nothing, and the check refused the kit's own folder as the user's."""
    from hf_bigsmall.utils import files

    final = tmp_path / "student"
    with publishing(final) as partial:
        (partial / "config.json").write_text("{}")
    is_kit_folder_now = files.is_kit_folder

    def moved_aside_meanwhile(folder):
        if Path(folder) == final and final.exists():  # another writer's first rename of its swap
            final.rename(tmp_path / f".student.{machine_tag()}-1-0123abcd.replaced")
        return is_kit_folder_now(folder)

    monkeypatch.setattr(files, "is_kit_folder", moved_aside_meanwhile)
    files.check_replaceable(final)


@pytest.mark.parametrize("appears", ["folder", "file"])
@pytest.mark.parametrize("earlier", [False, True], ids=["free-target", "earlier-kit-folder"])
def test_what_appears_at_the_target_after_the_check_is_never_moved_aside_and_deleted(tmp_path, monkeypatch, earlier,
                                                                                    appears):
    """The check found the target free (or the kit's), then a folder or file of the user's took its place before the
    swap: the swap moved it aside unchecked and deleted it as the old folder (a file survived only by an error)."""
    import shutil

    from hf_bigsmall.utils import files

    final = tmp_path / "student"
    if earlier:
        with publishing(final) as partial:
            (partial / "config.json").write_text("{}")
    partial = fresh_partial_dir(final)
    (partial / "model.safetensors").write_text("this writer")
    check, users = files.check_replaceable, final / "notes.txt" if appears == "folder" else final

    def users_own_lands_after(folder, *args):
        check(folder, *args)
        if not users.is_file():  # the user's own, in place of whatever was checked
            shutil.rmtree(final, ignore_errors=True)
            users.parent.mkdir(exist_ok=True)
            users.write_text("keep me")

    monkeypatch.setattr(files, "check_replaceable", users_own_lands_after)
    with pytest.raises(ValueError, match="not (a folder hf_bigsmall wrote|written by hf_bigsmall)"):
        publish_dir(partial, final)
    assert users.read_text() == "keep me" and (appears == "file" or [p.name for p in final.iterdir()] == ["notes.txt"])
    assert (partial / "model.safetensors").read_text() == "this writer"  # left as it is, as for any refusal
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["student", partial.name])


def test_an_unreadable_folder_that_appears_after_the_check_goes_back_in_place(tmp_path, monkeypatch):
    """A folder the swap moved aside and could not read (PermissionError) stayed aside with the target missing."""
    from hf_bigsmall.utils import files

    final = tmp_path / "student"
    partial = fresh_partial_dir(final)
    check, holds_users_files = files.check_replaceable, files._holds_users_files

    def users_folder_lands_after(folder, *args):
        check(folder, *args)
        if not final.exists():
            final.mkdir()
            (final / "notes.txt").write_text("keep me")

    def unreadable_aside(folder, *args):
        if folder.name.endswith(".replaced"):
            raise PermissionError(13, "Permission denied", str(folder))
        return holds_users_files(folder, *args)

    monkeypatch.setattr(files, "check_replaceable", users_folder_lands_after)
    monkeypatch.setattr(files, "_holds_users_files", unreadable_aside)
    with pytest.raises(ValueError, match="was not written by hf_bigsmall"):
        publish_dir(partial, final)
    assert (final / "notes.txt").read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(["student", partial.name])
