"""Tests for serving.check.watch: what counts as a change to a model folder."""

from __future__ import annotations

import os
from pathlib import Path

from serving.check.watch import changed, snapshot


def test_snapshot_sees_files_and_leaves_out_caches_and_hidden_files(tmp_path: Path) -> None:
    (tmp_path / "serving.py").write_text("x = 1\n")
    (tmp_path / "sample_data" / "a").mkdir(parents=True)
    (tmp_path / "sample_data" / "a" / "b.npy").write_bytes(b"123")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "serving.cpython-311.pyc").write_bytes(b"")
    (tmp_path / ".serving.py.swp").write_bytes(b"")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    assert sorted(snapshot(tmp_path)) == ["sample_data/a/b.npy", "serving.py"]
    assert snapshot(tmp_path)["sample_data/a/b.npy"][0] == 3


def test_changed_names_added_removed_and_modified_files(tmp_path: Path) -> None:
    handler, model = tmp_path / "serving.py", tmp_path / "model.py"
    handler.write_text("a")
    model.write_text("b")
    before = snapshot(tmp_path)
    assert changed(before, snapshot(tmp_path)) == []
    stat = handler.stat()
    os.utime(handler, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    model.unlink()
    (tmp_path / "new.py").write_text("c")
    assert changed(before, snapshot(tmp_path)) == ["model.py", "new.py", "serving.py"]


def test_a_missing_folder_has_an_empty_snapshot(tmp_path: Path) -> None:
    assert snapshot(tmp_path / "gone") == {}
