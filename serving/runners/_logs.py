"""Container output: drained from its pipe into a log file, a tail and a callback.

:class:`LogPump` reads a container's stdout (a pipe) in a thread and appends
it to the container's log file. Reading never stops while the process writes:
when the file cannot be written (a full disk, a removed folder) the first such
error is kept (:attr:`LogPump.write_error`) and the lines still reach the
in-memory tail and the callback, so the server never blocks on a full pipe
and its last words are still there to quote.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO


class LogPump:
    """Drains ``stream`` into ``path``, a tail of recent lines and ``callback``.

    Args:
        stream: the process's stdout (binary pipe); closed when it ends.
        path: the log file (created or appended to).
        callback: receives each line without its newline, with ``prefix``.
        prefix: put before every line handed to ``callback``.
        keep: how many recent lines the in-memory tail holds.
    """

    def __init__(self, stream: IO[bytes], path: Path,
                 callback: Callable[[str], None] | None = None, prefix: str = "",
                 keep: int = 200) -> None:
        self.path = path
        self._stream = stream
        self._callback = callback
        self._prefix = prefix
        self._tail: deque[bytes] = deque(maxlen=keep)
        self._lock = threading.Lock()
        #: The first error writing the log file (None while it is written).
        self.write_error: OSError | None = None
        #: How many bytes the write that failed wanted to write.
        self.write_needed = 0
        self._thread = threading.Thread(target=self._run, name=f"log-{path.parent.name}",
                                        daemon=True)
        self._thread.start()

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the process printed (from memory, not the file)."""
        with self._lock:
            last = list(self._tail)[-lines:]
        return b"".join(last).decode("utf-8", "replace").rstrip("\n")

    def stop(self, timeout: float = 2.0) -> None:
        """Wait (up to ``timeout``) for the rest of the output: the pipe ends with the process."""
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            out: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - closed below
        except OSError as err:
            self.write_error, out = err, None
        try:
            for raw in self._stream:
                with self._lock:
                    self._tail.append(raw)
                if out is not None:
                    out = self._write(out, raw)
                if self._callback is not None:
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    # a broken callback must not stop the draining
                    with contextlib.suppress(Exception):
                        self._callback(self._prefix + line)
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the process is gone
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()
            if out is not None:
                with contextlib.suppress(OSError):
                    out.close()

    def _write(self, out: IO[bytes], raw: bytes) -> IO[bytes] | None:
        try:
            out.write(raw)
            out.flush()
            return out
        except OSError as err:
            self.write_error, self.write_needed = err, len(raw)
            with contextlib.suppress(OSError):
                out.close()
            return None
