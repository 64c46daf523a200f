"""What the process and Docker runners share: starting N containers at once, and waiting for one.

:func:`start_all` starts containers concurrently and stops every one of them
when one fails or the caller is interrupted; :func:`wait_healthy` pings one
until it is healthy, it exits, another fails, or time runs out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, Protocol, TypeVar

from serving.errors import ServerStartError
from serving.runners._health import ping

TAIL_LINES = 40


class _Exits(Protocol):
    def poll(self) -> int | None: ...


class Startable(Protocol):
    """What :func:`start_all` and :func:`wait_healthy` need of a container."""

    @property
    def index(self) -> int: ...

    @property
    def port(self) -> int: ...

    @property
    def process(self) -> _Exits: ...

    def log_tail(self, lines: int = TAIL_LINES) -> str: ...

    def stop(self, grace: float | None = None) -> None: ...


_C = TypeVar("_C", bound=Startable)


class StartGroup(Generic[_C]):
    """The containers of one :func:`start_all` call, and the flag that abandons their start.

    A worker adds its container as soon as it exists (so an interrupted start
    stops it) and discards it once it has stopped it itself.
    """

    def __init__(self) -> None:
        self.abort = threading.Event()
        self._lock = threading.Lock()
        self._started: list[_C] = []

    def add(self, container: _C) -> None:
        with self._lock:
            self._started.append(container)

    def discard(self, container: _C) -> None:
        with self._lock:
            if container in self._started:
                self._started.remove(container)

    def started(self) -> list[_C]:
        """The containers added and not discarded, in index order."""
        with self._lock:
            return sorted(self._started, key=lambda c: c.index)


def start_all(count: int, start_one: Callable[[int, StartGroup[_C]], _C], *,
              thread_name_prefix: str) -> list[_C]:
    """Run ``start_one(index, group)`` for ``range(count)`` concurrently.

    ``start_one`` adds its container to ``group`` and returns it once healthy.
    The first failure sets ``group.abort`` (the others give up), and every
    container still in the group is stopped before the error is raised again;
    so is an interruption of the caller.

    Returns:
        the containers, in index order.
    """
    group: StartGroup[_C] = StartGroup()
    try:
        with ThreadPoolExecutor(max(1, count), thread_name_prefix=thread_name_prefix) as pool:
            try:
                futures = [pool.submit(start_one, i, group) for i in range(count)]
                first: BaseException | None = None
                for future in futures:
                    try:
                        future.result()
                    except Exception as err:
                        group.abort.set()
                        first = first or err
                if first is not None:
                    raise first
            except BaseException:
                group.abort.set()
                raise
    except BaseException:
        for container in group.started():
            container.stop(grace=2.0)
        raise
    return group.started()


def wait_healthy(container: Startable, abort: threading.Event, *, where: str,
                 startup_timeout: float, ping_timeout: float, poll_interval: float,
                 loaded: Callable[[], bool] | None = None) -> None:
    """Ping ``container`` until it is healthy (and ``loaded()``, when given).

    Raises:
        ServerStartError: it exited, ``abort`` was set, or ``startup_timeout``
            passed; ``where`` names it in the message.
    """
    deadline = time.monotonic() + startup_timeout
    state = "no answer yet"
    while True:
        code = container.process.poll()
        if code is not None:
            raise ServerStartError(
                f"{where} exited with code {code} before answering /ping; the model "
                f"failed to load or the server could not start. Last log lines:\n"
                f"{container.log_tail()}", exit_code=code)
        if abort.is_set():
            raise ServerStartError(f"{where}: start abandoned because another container "
                                   "failed to start")
        ready, state = ping(container.port, ping_timeout)
        if ready and loaded is not None:
            ready = loaded()
            state = state if ready else "waiting for the model to load"
        if ready:
            return
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{where} did not answer /ping with 200 (healthy) within "
                f"{startup_timeout:g} s (last: {state}); raise the start-up timeout "
                f"if the model loads slowly. Last log lines:\n{container.log_tail()}")
        time.sleep(poll_interval)
