"""Scratch folders that name their owner, so that a killed command's are removed later.

A command stopped by SIGKILL (or the OOM killer, or a power cut) cannot remove
its temporary folders. Every one smserve makes comes from :func:`make`, whose
name carries the owner's process id and start time::

    /tmp/smserve-job-4242.1873301-k3j2h1x0

:func:`reap` (run when a command starts) removes the ``smserve-*`` folders of
the temporary directory whose owner is gone: no such process, or a process
with the same id that started at another time (the id was reused). A folder
whose name does not say its owner (made by someone else, or by an older
smserve) is never touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Every scratch folder's name starts with this.
PREFIX = "smserve-"
# <prefix><pid>.<start time>-<mkdtemp's 8 random characters>
_OWNED = re.compile(r"-(\d+)\.(\d+)-[A-Za-z0-9_]{8}$")


def start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot; None: no such process.

    Where ``/proc`` is missing (not Linux) a live process reads as 0.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return 0


def _owner_tag() -> str:
    pid = os.getpid()
    return f"{pid}.{start_time(pid) or 0}-"


def make(prefix: str, parent: Path | None = None) -> Path:
    """A new folder named ``<prefix><pid>.<start time>-XXXXXXXX`` (``prefix`` starts ``smserve-``).

    Args:
        prefix: what the folder is, e.g. ``"smserve-job-"``.
        parent: where (the temporary directory by default).
    """
    return Path(tempfile.mkdtemp(prefix=prefix + _owner_tag(), dir=parent))


@contextlib.contextmanager
def folder(prefix: str) -> Iterator[Path]:
    """:func:`make`, removed when the block ends (a ``TemporaryDirectory`` that names its owner)."""
    path = make(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def owner_gone(name: str) -> bool:
    """True when ``name`` is a scratch folder's name whose owner process no longer runs."""
    found = _OWNED.search(name)
    if not name.startswith(PREFIX) or found is None:
        return False
    pid, started = int(found.group(1)), int(found.group(2))
    now = start_time(pid)
    if now is None:
        return True
    return bool(started and now and now != started)


def reap(parent: Path | None = None) -> list[Path]:
    """Remove the scratch folders under ``parent`` (the temporary directory) whose owner is gone.

    Returns:
        the folders removed. Errors (a folder removed meanwhile, no permission)
        are skipped: this is housekeeping and never fails a command.
    """
    where = Path(parent or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(os.scandir(where))
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or not owner_gone(entry.name):
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        if not os.path.lexists(entry.path):
            removed.append(Path(entry.path))
    return removed
