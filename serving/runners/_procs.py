"""Ending a container's processes: its process group and every descendant.

A server may start helpers in process groups of their own (the model server
supervisor puts multi-model-server in a new group, so it can stop it), so
killing the group alone could leave them behind. We take a snapshot of the
tree before signalling and make sure every process in it has ended. A
container is started as the leader of a new session, and its helpers stay in
that session, so they are found even once re-parented (their supervisor was
killed). Linux's ``/proc`` gives the tree; elsewhere only the group is
signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

_PROC = Path("/proc")


def _table() -> dict[int, tuple[int, int, str, int]]:
    """pid -> (parent pid, process group, state, session) for every process we can see."""
    rows: dict[int, tuple[int, int, str, int]] = {}
    for stat in _PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            rows[int(stat.parent.name)] = (int(fields[1]), int(fields[2]), fields[0],
                                           int(fields[3]))
        except (OSError, IndexError, ValueError):
            continue  # it ended while we looked
    return rows


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies do not count)."""
    if not _PROC.is_dir():
        alive = set()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                alive.add(pid)
        return alive
    table = _table()
    return {pid for pid in pids if pid in table and table[pid][2] not in ("Z", "X")}


def tree(pid: int) -> set[int]:
    """``pid``, its descendants and the members of its process group and session."""
    if not _PROC.is_dir():
        return {pid}
    table = _table()
    found = {pid} | {p for p, (_, group, _, session) in table.items()
                     if pid in (group, session)}
    frontier = set(found)
    while frontier:
        frontier = {p for p, (parent, _, _, _) in table.items()
                    if parent in frontier and p not in found}
        found |= frontier
    return found


def _signal(pids: set[int], group: int, signo: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signo)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signo)


def _wait(pids: set[int], deadline: float) -> set[int]:
    left = running(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = running(left)
    return left


def terminate(process: subprocess.Popen[bytes], grace: float) -> None:
    """End ``process`` (a process group leader) and everything it started.

    SIGTERM to the group (the leader forwards it to helpers of its own); once
    the leader has ended, SIGTERM to helpers it left running; SIGKILL to
    whatever of the tree is left after ``grace`` seconds.
    """
    pid = process.pid
    members = tree(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=max(0.0, grace))
    if process.poll() is None:
        members |= tree(pid)
    left = _wait(members, min(deadline, time.monotonic() + 0.5))
    if left and process.poll() is not None:
        # The leader is gone but left helpers running: ask them directly, briefly.
        _signal(left, pid, signal.SIGTERM)
        left = _wait(left, max(deadline, time.monotonic() + 1.0))
    if left or process.poll() is None:
        _signal(left, pid, signal.SIGKILL)
    process.wait()
    _wait(members, time.monotonic() + 5.0)
