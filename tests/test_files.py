"""Files and folders appear whole or not at all."""

import json

import pytest

from hf_bigsmall.utils.files import (
    KIT_MARKER,
    atomic_write,
    atomic_write_json,
    fresh_partial_dir,
    is_kit_folder,
    partial_path,
    publish_dir,
    publishing,
)


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
        if (path / KIT_MARKER).is_file() and (path / "config.json").read_text() == "old":
            (path / KIT_MARKER).unlink()  # deleting the old folder, then Ctrl-C
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


@pytest.mark.parametrize("where", ["final", "partial"])
@pytest.mark.parametrize("marker", [None, "not json", '{"written_by": "someone else"}'])
def test_a_folder_the_kit_did_not_write_is_refused_and_left_whole(tmp_path, where, marker):
    final = tmp_path / "student"
    user = final if where == "final" else partial_path(final)
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
