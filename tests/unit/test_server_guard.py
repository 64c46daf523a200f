"""The guard under multi-model-server: its whole tree ends with it, or with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for the MMS launcher: starts a "java" that starts a "worker" in a
# session of its own, writes their pids, then (LAUNCHER_MODE) exits or waits.
LAUNCHER = textwrap.dedent('''
    import os, subprocess, sys, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    java = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\\n"
        "w = subprocess.Popen(%r, start_new_session=True)\\n"
        "open(sys.argv[1], 'a').write(f'worker {w.pid}\\\\n')\\n"
        "time.sleep(600)") % (sleeper,), sys.argv[1]])
    with open(sys.argv[1], "a") as fh:
        fh.write(f"launcher {os.getpid()}\\njava {java.pid}\\n")
    if os.environ.get("LAUNCHER_MODE") == "exit":
        while open(sys.argv[1]).read().count("\\n") < 3:
            time.sleep(0.02)
        sys.exit(0)
    time.sleep(600)
''')


def _pids(path: Path, timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        pids = {name: int(pid) for name, pid in
                (line.split() for line in text.splitlines() if line.strip())}
        if len(pids) == 3:
            return pids
        assert time.monotonic() < deadline, f"only {pids} started"
        time.sleep(0.05)


def _gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _guard(parent: int, pids: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "serving.server.guard", *extra, str(parent), "--",
            sys.executable, "-c", LAUNCHER, str(pids)]


@pytest.fixture()
def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_ends_the_whole_tree(signo: int, tmp_path: Path,
                                           env: dict[str, str]) -> None:
    pids = tmp_path / "pids"
    guard = subprocess.Popen(_guard(os.getpid(), pids), env=env)
    launcher, java, worker = _order(pids)
    guard.send_signal(signo)
    assert guard.wait(timeout=15) == 128 + signo
    assert _gone([launcher, java, worker]) == []


def _order(pids: Path) -> tuple[int, int, int]:
    found = _pids(pids)
    return found["launcher"], found["java"], found["worker"]


def test_helpers_left_by_a_launcher_that_exits_are_ended(tmp_path: Path,
                                                         env: dict[str, str]) -> None:
    pids = tmp_path / "pids"
    guard = subprocess.Popen(_guard(os.getpid(), pids),
                             env={**env, "LAUNCHER_MODE": "exit"})
    launcher, java, worker = _order(pids)
    assert guard.wait(timeout=15) == 0  # the launcher's status
    assert _gone([launcher, java, worker]) == []


def test_the_tree_ends_when_the_parent_is_killed(tmp_path: Path, env: dict[str, str]) -> None:
    pids, folder = tmp_path / "pids", tmp_path / "run"
    folder.mkdir()
    # the parent: a process that starts the guard from its main thread, then waits
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f'''
        import os, subprocess, sys, time
        cmd = {_guard(0, pids, "--pdeathsig", "--remove", str(folder))!r}
        cmd[cmd.index("0")] = str(os.getpid())
        subprocess.Popen(cmd)
        time.sleep(600)
    ''')], env=env)
    launcher, java, worker = _order(pids)
    parent.kill()
    parent.wait()
    assert _gone([launcher, java, worker]) == []
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not folder.exists()  # the run directory nobody else would remove


def test_usage_errors_exit_2(env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "serving.server.guard", "nope"], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "usage:" in proc.stderr
