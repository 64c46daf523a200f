"""A full local disk, said as such: "no space left on <path>, <free>/<needed>".

Writes that fail with ENOSPC (or EDQUOT, a quota) are turned into
:class:`~serving.errors.NoSpaceError` by :func:`no_space`, which names the
path, how much is free on its file system and how much the write needed;
:func:`guard` does it for a block of code.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from serving.errors import NoSpaceError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_full(err: BaseException) -> bool:
    """True when ``err`` (or what caused it) is a full disk or an exceeded quota."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, NoSpaceError):
            return True
        if isinstance(current, OSError) and current.errno in _FULL:
            return True
        current = current.__cause__ or current.__context__
    return False


def human(size: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; None -> ``"unknown"``."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def free_bytes(path: str | os.PathLike[str]) -> int | None:
    """Bytes free on the file system holding ``path`` (its nearest existing parent)."""
    here = Path(path)
    for candidate in (here, *here.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(candidate).free
    return None


def no_space(path: str | os.PathLike[str], needed: int | None, what: str = "") -> NoSpaceError:
    """The error for a write to ``path`` that found the disk full.

    Args:
        path: the file or folder being written.
        needed: bytes the write needed (None: unknown).
        what: what was being written ("the model data", "the container log").
    """
    free = free_bytes(path)
    doing = f" while writing {what}" if what else ""
    return NoSpaceError(
        f"no space left on {path}, {human(free)} free/{human(needed)} needed{doing}; free "
        "space on that disk or point TMPDIR at a larger one", path=str(path), free=free,
        needed=needed)


@contextlib.contextmanager
def guard(path: str | os.PathLike[str], needed: int | None, what: str = "") -> Iterator[None]:
    """Turn a full disk inside the block into :func:`no_space` for ``path``."""
    try:
        yield
    except NoSpaceError:
        raise
    except Exception as err:
        if is_full(err):
            raise no_space(path, needed, what) from err
        raise
