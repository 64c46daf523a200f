"""A guard between ``smserve serve`` and multi-model-server: the tree ends with its parent.

``python -m serving.server.guard [--pdeathsig] [--remove DIR] PARENT_PID -- COMMAND...`` runs
COMMAND (the MMS launcher) and makes sure nothing it starts outlives the
guard's parent process:

- it watches its parent: it is re-parented when the parent dies, so
  ``getppid()`` changes (checked every 0.1 s, and once before COMMAND starts,
  for a parent that died first). With ``--pdeathsig`` it also asks Linux for
  SIGTERM at once (``PR_SET_PDEATHSIG``); Linux sends that when the parent
  *thread* ends, so the supervisor asks for it only when it starts the guard
  from its main thread;
- it is a child subreaper (``PR_SET_CHILD_SUBREAPER``): when the MMS launcher
  dies, its Java front end is re-parented to the guard, not to init, and so are
  the Python workers when Java dies; every one of them stays a descendant;
- on SIGTERM, SIGINT or SIGHUP, on its parent's death, and when COMMAND exits,
  it sends SIGTERM to every descendant, SIGKILL after a grace period to those
  left, reaps them, and exits with COMMAND's status (128 + signal when it
  was told to stop);
- when its parent died, it also removes DIR (the run directory the parent
  would have removed).

Only the standard library; it imports nothing else of ``serving``. Elsewhere
than Linux the prctl calls are skipped and the guard only forwards stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
#: Seconds descendants get between SIGTERM and SIGKILL (Java takes ~0.7 s to stop gracefully
#: and has nothing to flush: a stopped server should not cost a job that long).
GRACE = 0.5


def set_parent_death_signal(signo: int = signal.SIGTERM) -> bool:
    """Ask Linux to send ``signo`` to this process when its parent thread ends."""
    return _prctl(PR_SET_PDEATHSIG, int(signo))


def _prctl(option: int, value: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (by parent links in ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child in children.get(pid, []):
            if child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _reap() -> None:
    """Collect every exited child (re-parented orphans included)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def end_all(grace: float = GRACE) -> None:
    """SIGTERM to every descendant, SIGKILL to those left after ``grace``; reap them."""
    me = os.getpid()
    deadline = time.monotonic() + grace
    signo = signal.SIGTERM
    while True:
        _reap()
        left = descendants(me)
        if not left:
            return
        if time.monotonic() >= deadline:
            signo = signal.SIGKILL
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signo)
        time.sleep(0.05)


def main(argv: list[str]) -> int:
    """Run the command under guard; returns its exit status."""
    pdeathsig, remove = False, None
    while argv and argv[0].startswith("--") and argv[0] != "--":
        if argv[0] == "--pdeathsig":
            pdeathsig, argv = True, argv[1:]
        elif argv[0] == "--remove" and len(argv) > 1:
            remove, argv = Path(argv[1]), argv[2:]
        else:
            break
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: python -m serving.server.guard [--pdeathsig] [--remove DIR] "
                         "PARENT_PID -- COMMAND...\n")
        return 2
    parent = int(argv[0])
    stop: list[int] = []

    def _stop(signo: int, frame: object) -> None:
        stop.append(signo)

    for signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signo, _stop)
    if pdeathsig:
        set_parent_death_signal(signal.SIGTERM)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.getppid() != parent:  # the parent died before we asked
        return 128 + signal.SIGTERM
    try:
        child = subprocess.Popen(argv[2:])
    except OSError as err:
        sys.stderr.write(f"smserve: error: cannot start {argv[2]}: {err}\n")
        return 127
    code: int | None = None
    try:
        while not stop:
            code = child.poll()
            if code is not None:
                break
            if os.getppid() != parent:
                stop.append(signal.SIGTERM)
                break
            time.sleep(0.1)
    finally:
        end_all()
        if remove is not None and os.getppid() != parent:  # nobody else will clean up
            shutil.rmtree(remove, ignore_errors=True)
    if stop:
        return 128 + stop[0]
    return code if code is not None and code >= 0 else 128 + (-(code or 0))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
