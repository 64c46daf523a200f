"""A small real file system for full-disk tests: a tmpfs mounted for the test, then unmounted.

Mounting needs root (CAP_SYS_ADMIN); where it is refused, the test is skipped
and says so.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_disk(size: str = "256k") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (mount's notation: ``256k``, ``2m``), unmounted on exit."""
    mountpoint = Path(tempfile.mkdtemp(prefix="smserve-small-disk-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(mountpoint)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        mountpoint.rmdir()
        pytest.skip(f"cannot mount a {size} tmpfs for a full-disk test (needs root): "
                    f"{mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)
        shutil.rmtree(mountpoint, ignore_errors=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` with one file until at most ``leave`` bytes are free; returns the file."""
    ballast = disk / "ballast"
    free = shutil.disk_usage(disk).free
    with open(ballast, "wb") as out:
        try:
            out.write(b"\0" * max(0, free - leave))
            out.flush()
        except OSError:
            pass  # full already: that was the point
    return ballast
