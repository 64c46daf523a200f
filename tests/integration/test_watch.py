"""smserve dev (watch mode), run as a user runs it: saves, a syntax error, a deleted folder.

``smserve dev`` runs as a subprocess on a copy of ``models/clip_stats``; the
test waits for the lines it prints after each change (never for a fixed
time), and at the end that nothing it started is left running.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import TAG_VAR, kill_tagged

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WAIT_S = 120


class Dev:
    """A running ``smserve dev`` and the lines it has printed."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.tag = uuid.uuid4().hex
        env = {**os.environ, "PYTHONPATH": str(ROOT), TAG_VAR: self.tag,
               "SETUPTOOLS_USE_DISTUTILS": "stdlib", "PYTHONDONTWRITEBYTECODE": "1"}
        for key in [k for k in env if k.startswith("AWS_") or k == "SMSERVE_ALLOWED_BUCKETS"]:
            del env[key]
        self.proc = subprocess.Popen([str(BIN / "smserve"), "dev", str(folder), *args],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def expect(self, text: str) -> list[str]:
        """Wait for a line holding ``text``; returns the lines printed since the last wait."""
        deadline = time.monotonic() + WAIT_S
        seen: list[str] = []
        while True:
            try:
                line = self._queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {WAIT_S} s:\n" + "\n".join(seen))
            if line is None:
                pytest.fail(f"smserve dev exited {self.proc.wait()} before printing {text!r}:\n"
                            + "\n".join(seen))
            seen.append(line)
            self.lines.append(line)
            if text in line:
                return seen

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            left = kill_tagged(self.tag, wait=10)
            assert not left, "left running:\n" + "\n".join(left)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    folder = tmp_path / "clip_stats"
    shutil.copytree(ROOT / "models" / "clip_stats", folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture()
def dev(model: Path) -> Iterator[Dev]:
    running = Dev(model)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()


def save(path: Path, text: str) -> None:
    """Write ``text`` as an editor does: the file's mtime moves on even within one tick."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def test_dev_reruns_on_save_and_recovers_from_a_syntax_error(dev: Dev, model: Path) -> None:
    first = dev.expect("[ok] handlers in-process")
    assert any(line.startswith(f"watching {model}") for line in first)
    assert any("ok: " in line and "(handlers in-process)" in line for line in first)
    done = dev.expect("] local batch transform, ")
    assert any("(as a local batch transform)" in line for line in done), "\n".join(done)
    assert done[-1].startswith("[ok] local batch transform")

    handlers = model / "serving.py"
    good = handlers.read_text()
    line_no = next(i for i, line in enumerate(good.splitlines(), 1)
                   if line.startswith("def model_fn("))
    save(handlers, good.replace("def model_fn(", "def model_fn(((", 1))
    broken = dev.expect("[FAILED] handlers in-process")
    assert any("serving.py: checking the handlers" in line for line in broken), broken
    assert any(f"{handlers}, line {line_no}: syntax error" in line for line in broken), broken
    assert not any("checking the sample as a local batch transform" in line for line in broken)

    save(handlers, good + "\n# saved again\n")
    fixed = dev.expect("[ok] handlers in-process")
    assert any("ok: " in line and "(handlers in-process)" in line for line in fixed)
    dev.expect("checking the sample as a local batch transform")
    save(handlers, good)  # a save while the transform runs: it stops, and the check reruns
    again = dev.expect("[ok] handlers in-process")
    assert "(transform interrupted: the files changed)" in again, again
    dev.expect("] local batch transform, ")
    assert dev.stop() == 0
    assert dev.expect("stopped watching")[-1].startswith(f"stopped watching {model} after 4 ")


def test_dev_waits_for_a_deleted_folder_then_checks_it_again(model: Path,
                                                              tmp_path: Path) -> None:
    running = Dev(model, "--no-transform")
    try:
        running.expect("[ok] handlers in-process")
        kept = tmp_path / "kept"
        shutil.move(model, kept)
        running.expect(f"{model} is gone or empty; waiting for it to come back")
        shutil.move(kept, model)
        back = running.expect("[ok] handlers in-process")
        assert any(f"{model} is back: checking the handlers" in line for line in back), back
        assert not any("local batch transform" in line for line in back)
    finally:
        assert running.stop() == 0
