"""One running serving container, as :class:`~serving.runners.docker.DockerRunner` starts it.

Internal to :mod:`serving.runners`. :class:`DockerContainer` has the
interface the data plane drives (``.url``, ``.stop()``, ``.log_tail()``,
``.process.poll()``), over a container of the Docker SDK; a container that
is garbage-collected unstopped is removed all the same.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

#: Lines of a container's output kept for error messages.
TAIL_LINES = 40


class _Exit:
    """``Popen``-like ``poll()`` for a container: its exit code once it has stopped."""

    def __init__(self, container: DockerContainer) -> None:
        self._container = container

    def poll(self) -> int | None:
        return self._container.exit_code()


class DockerContainer:
    """One running serving container.

    Attributes:
        index: its position among the job's containers.
        port: the loopback port it is reached on.
        url: ``http://127.0.0.1:PORT``.
        id: the engine's container id.
        process: ``.poll()`` gives the exit code once it stopped, else None.
    """

    def __init__(self, index: int, container: Any, port: int, *, grace: float = 10.0,
                 log: Callable[[str], None] | None = None) -> None:
        self.index = index
        self.container = container
        self.id: str = container.id
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.grace = grace
        self.process = _Exit(self)
        self._stopped = False
        self._lock = threading.Lock()
        self._lines: deque[str] = deque(maxlen=TAIL_LINES)
        self._finalizer = weakref.finalize(self, force_remove, container)
        self._follower: threading.Thread | None = None
        if log is not None:
            self._follower = threading.Thread(target=self._follow, args=(log,), daemon=True,
                                              name=f"docker-log-{index}")
            self._follower.start()

    def exit_code(self) -> int | None:
        """The exit code once the container has stopped, else None."""
        try:
            self.container.reload()
        except Exception:
            return -1  # gone
        state = self.container.attrs.get("State") or {}
        if state.get("Running") or state.get("Status") in ("created", "running", "restarting"):
            return None
        return int(state.get("ExitCode", -1))

    def alive(self) -> bool:
        """True while the container runs."""
        return self.exit_code() is None

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines the container printed."""
        try:
            raw = self.container.logs(tail=lines)
        except Exception:
            return "\n".join(list(self._lines)[-lines:])
        text: str = raw.decode("utf-8", "replace").rstrip("\n")
        return text

    def stop(self, grace: float | None = None) -> None:
        """Stop the container (SIGTERM, SIGKILL after ``grace`` s) and remove it; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            with contextlib.suppress(Exception):
                self.container.stop(timeout=int(self.grace if grace is None else grace))
        finally:
            self._finalizer()

    def _follow(self, log: Callable[[str], None]) -> None:
        with contextlib.suppress(Exception):
            for raw in self.container.logs(stream=True, follow=True):
                for line in raw.decode("utf-8", "replace").splitlines():
                    self._lines.append(line)
                    log(f"[container {self.index}] {line}")

    def __enter__(self) -> DockerContainer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"DockerContainer(index={self.index}, url={self.url!r}, id={self.id[:12]!r})"


def force_remove(container: Any) -> None:
    """Remove ``container`` whatever its state (errors ignored: it may be gone already)."""
    with contextlib.suppress(Exception):
        container.remove(force=True)
