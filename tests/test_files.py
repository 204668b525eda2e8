"""Files and folders appear whole or not at all."""

import json

import pytest

from hf_bigsmall.utils.files import atomic_write, atomic_write_json, publishing


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
        (partial).mkdir()
        (partial / "config.json").write_text("{}")
    assert (final / "config.json").is_file() and not partial.exists()

    with pytest.raises(RuntimeError):
        with publishing(final) as partial:
            partial.mkdir()
            (partial / "model.safetensors").write_text("half")
            raise RuntimeError("killed mid-save")
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]  # the old folder is untouched
