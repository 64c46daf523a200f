"""Container log files: their last lines, and following them into a callback."""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of ``path`` (decoded leniently); empty if it is missing."""
    try:
        with open(path, "rb") as fh:
            last = deque(fh, maxlen=lines)
    except OSError:
        return ""
    return b"".join(last).decode("utf-8", "replace").rstrip("\n")


class LogFollower:
    """Reads lines appended to a file and hands each to ``callback``, in a thread.

    Args:
        path: the file (the process writes it; we only read).
        callback: receives each line without its newline, with ``prefix``.
        prefix: put before every line, like ``[container 0] ``.
        interval: seconds between looks when there is nothing new.
    """

    def __init__(self, path: Path, callback: Callable[[str], None], prefix: str = "",
                 interval: float = 0.1) -> None:
        self._path = path
        self._callback = callback
        self._prefix = prefix
        self._interval = interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-{path.parent.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Hand over what is left in the file, then end the thread."""
        self._done.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            fh = open(self._path, "rb")  # noqa: SIM115 - closed below, read in a loop
        except OSError:
            return
        with fh:
            partial = b""
            while True:
                finishing = self._done.is_set()
                chunk = fh.readline()
                if chunk:
                    partial += chunk
                    if partial.endswith(b"\n"):
                        self._emit(partial)
                        partial = b""
                    continue
                if finishing:
                    if partial:
                        self._emit(partial)
                    return
                self._done.wait(self._interval)

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        # a broken callback must not stop the container's log file
        with contextlib.suppress(Exception):
            self._callback(self._prefix + line)
