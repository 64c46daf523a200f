"""Scratch folders name their owner; the next command removes those of owners that are gone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serving import scratch


def _dead_pid() -> int:
    """The id of a process that has ended (and been waited for)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_folder_names_this_process_and_when_it_started(tmp_path: Path) -> None:
    made = scratch.make("smserve-job-", tmp_path)
    assert made.is_dir() and made.parent == tmp_path
    pid, started = made.name.removeprefix("smserve-job-").split("-")[0].split(".")
    assert int(pid) == os.getpid()
    assert int(started) == scratch.start_time(os.getpid())
    assert not scratch.owner_gone(made.name)


def test_reap_removes_only_folders_whose_owner_is_gone(tmp_path: Path) -> None:
    mine = scratch.make("smserve-job-", tmp_path)
    (mine / "inside").write_text("in use")
    dead = tmp_path / f"smserve-job-{_dead_pid()}.12345-abcd1234"
    (dead / "deep").mkdir(parents=True)
    (dead / "deep" / "half-written.out").write_text("x")
    # Our own id with another start time: the id was reused by a later process.
    reused = tmp_path / f"smserve-sagemaker-job-{os.getpid()}.1-zz99zz99"
    reused.mkdir()
    foreign = [tmp_path / "smserve-job-abc", tmp_path / "other-1.2-abcd1234",
               tmp_path / f"smserve-old-{_dead_pid()}"]
    for path in foreign:
        path.mkdir()
    a_file = tmp_path / f"smserve-file-{_dead_pid()}.5-abcd1234"
    a_file.write_text("not a folder")

    removed = scratch.reap(tmp_path)

    assert sorted(removed) == sorted([dead, reused])
    assert mine.is_dir() and (mine / "inside").read_text() == "in use"
    assert all(path.is_dir() for path in foreign)
    assert a_file.exists()


def test_reap_of_a_missing_directory_is_quiet(tmp_path: Path) -> None:
    assert scratch.reap(tmp_path / "nowhere") == []


def test_the_context_manager_removes_its_folder() -> None:
    with scratch.folder("smserve-package-") as path:
        (path / "model.tar.gz").write_bytes(b"x")
        assert not scratch.owner_gone(path.name)
    assert not path.exists()


def test_a_command_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    left = tmp_path / f"smserve-job-{_dead_pid()}.777-abcd1234"
    (left / "model").mkdir(parents=True)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    # Any command that runs (this one fails on its missing config) cleans up first.
    done = subprocess.run([sys.executable, "-m", "serving.cli", "plan", "--config",
                           str(tmp_path / "missing.toml")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert not left.exists()
