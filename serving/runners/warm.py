"""Warm model servers: a job reuses a server already serving its model in its environment.

A :class:`WarmPool` keeps the containers that finished a job, keyed by what
they serve: the model's digest (every file of the extracted model, by path
and bytes) and the whole container environment (the runner's base and the
job's), so allow-lists and ``SAGEMAKER_*`` settings are part of the key and
nothing is reused across environments. :meth:`WarmPool.start` hands out an
idle server with the job's key, after checking that its process still runs
and answers ``/ping``, or starts a new one with the pool's
:class:`~serving.runners.process.ProcessRunner`; :meth:`WarmPool.release`
puts it back. A server is used by one job at a time: two jobs asking for the
same model at once get two servers. Idle servers stop after
``idle_timeout`` seconds (:meth:`WarmPool.reap`, run by a thread once
:meth:`WarmPool.start_reaper` is called).

Lifetimes: the pool belongs to a long-lived process the user started (the
embedded stack of ``smserve local up``); its servers are that process's
children and :meth:`WarmPool.close` stops them all. A standalone
``smserve transform`` never uses a pool: it starts cold and cleans up.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from serving.runners._health import ping
from serving.runners.process import Container, ProcessRunner

#: Seconds an idle server is kept (``smserve local up``'s default).
IDLE_TIMEOUT_S = 300.0


def model_digest(model_dir: str | Path) -> str:
    """SHA-256 over every file of an extracted model: relative path and bytes, in order."""
    root = Path(model_dir)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def pool_key(digest: str, environment: Mapping[str, str]) -> str:
    """The key a server is kept under: the model's digest and the whole environment."""
    env = json.dumps(sorted(environment.items()), separators=(",", ":"))
    return hashlib.sha256(f"{digest}\n{env}".encode()).hexdigest()


@dataclass
class WarmServer:
    """One server the pool knows: what it serves, and since when it is idle."""

    key: str
    name: str
    container: Container
    idle_since: float | None = None
    jobs: int = 0

    def describe(self, now: float) -> str:
        """One line for ``smserve local up``: name, pid, URL, state, jobs served."""
        state = ("busy" if self.idle_since is None
                 else f"idle {now - self.idle_since:.0f} s")
        return (f"{self.name}: pid {self.container.pid}, {self.container.url}, {state}, "
                f"{self.jobs} job(s)")


class WarmPool:
    """Servers kept warm between jobs; see the module docstring.

    Args:
        runner: starts new servers (its ``env`` is part of every key).
        idle_timeout: seconds an idle server is kept.
        clock: the time (tests pass their own).
        log: receives one line per server started, reused, replaced or stopped.
        ping_timeout: seconds the health check before a reuse may take.
    """

    def __init__(self, runner: ProcessRunner, *, idle_timeout: float = IDLE_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[[str], None] | None = None, ping_timeout: float = 2.0) -> None:
        self.runner = runner
        self.idle_timeout = idle_timeout
        self._clock = clock
        self._log = log or (lambda _line: None)
        self.ping_timeout = ping_timeout
        self._lock = threading.Lock()
        self._servers: list[WarmServer] = []
        self._closed = False
        self._reaper: threading.Thread | None = None
        self._stop_reaper = threading.Event()

    # --- handing out servers -------------------------------------------------------------

    def key(self, model_dir: str | Path, environment: Mapping[str, str]) -> str:
        """The key for ``model_dir`` served with ``environment`` on the runner's base."""
        return pool_key(model_digest(model_dir), {**self.runner.env, **environment})

    def start(self, model_dir: str | Path, environment: Mapping[str, str] | None = None, *,
              name: str = "") -> tuple[Container, bool]:
        """A healthy server for the model: ``(container, reused)``.

        Release it with :meth:`release` when the job is done (never stop it
        yourself while the pool holds it).

        Raises:
            ServerStartError: no warm server, and a new one did not come up.
            RuntimeError: the pool is closed.
        """
        env = dict(environment or {})
        key = self.key(model_dir, env)
        label = name or Path(model_dir).name
        warm = self._take(key)
        if warm is not None:
            self._log(f"warm server reused for {label} (pid {warm.container.pid}, "
                      f"{warm.jobs - 1} earlier job(s))")
            return warm.container, True
        (container,) = self.runner.start(Path(model_dir), env, count=1)
        with self._lock:
            closed = self._closed
            if not closed:
                self._servers.append(WarmServer(key, label, container, jobs=1))
        if closed:
            container.stop()
            raise RuntimeError("the warm pool is closed")
        self._log(f"server started for {label} (pid {container.pid}); it stays warm "
                  f"{self.idle_timeout:g} s after each job")
        return container, False

    def _take(self, key: str) -> WarmServer | None:
        """An idle, healthy server with ``key``, marked busy; the dead ones are dropped."""
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the warm pool is closed")
                found = next((s for s in self._servers
                              if s.key == key and s.idle_since is not None), None)
                if found is None:
                    return None
                found.idle_since = None  # busy: no other job gets it
            problem = self._problem(found.container)
            if problem is None:
                found.jobs += 1
                return found
            self._log(f"warm server for {found.name} (pid {found.container.pid}) {problem}; "
                      "starting a fresh one")
            self._drop(found)

    def _problem(self, container: Container) -> str | None:
        if not container.alive():
            return f"had exited (code {container.process.poll()})"
        ready, said = ping(container.port, self.ping_timeout)
        return None if ready else f"did not answer /ping ({said})"

    def release(self, container: Container, *, reusable: bool = True) -> None:
        """Give a server back after a job; it stays warm when ``reusable`` and alive.

        Pass ``reusable=False`` when the job stopped it or doubts it (a
        connection error, a stop request): it is stopped now.
        """
        with self._lock:
            server = next((s for s in self._servers if s.container is container), None)
            keep = (server is not None and reusable and not self._closed
                    and container.alive())
            if keep and server is not None:
                server.idle_since = self._clock()
        if server is None:
            container.stop()
        elif not keep:
            self._drop(server)

    def _drop(self, server: WarmServer) -> None:
        with self._lock:
            if server in self._servers:
                self._servers.remove(server)
        server.container.stop()

    # --- idle servers, listing, the end ----------------------------------------------------

    def reap(self) -> list[str]:
        """Stop the servers idle for longer than ``idle_timeout``; one line per server."""
        now = self._clock()
        with self._lock:
            old = [s for s in self._servers if s.idle_since is not None
                   and now - s.idle_since >= self.idle_timeout]
            for server in old:
                self._servers.remove(server)
        lines = []
        for server in old:
            server.container.stop()
            lines.append(f"warm server for {server.name} (pid {server.container.pid}) stopped "
                         f"after {self.idle_timeout:g} s idle")
            self._log(lines[-1])
        return lines

    def start_reaper(self, interval: float = 5.0) -> None:
        """Run :meth:`reap` every ``interval`` seconds in a thread, until :meth:`close`."""
        def loop() -> None:
            while not self._stop_reaper.wait(interval):
                self.reap()

        if self._reaper is None:
            self._reaper = threading.Thread(target=loop, name="warm-reaper", daemon=True)
            self._reaper.start()

    def pids(self) -> list[int]:
        """The process ids of the servers the pool holds, busy or idle."""
        with self._lock:
            return [s.container.pid for s in self._servers]

    def servers(self) -> list[str]:
        """One line per server the pool holds (busy or idle), for ``smserve local up``."""
        now = self._clock()
        with self._lock:
            return [s.describe(now) for s in self._servers]

    def close(self) -> None:
        """Stop every server, busy ones included, and the reaper (idempotent)."""
        self._stop_reaper.set()
        with self._lock:
            self._closed = True
            servers, self._servers = self._servers, []
        for server in servers:
            server.container.stop()
        if self._reaper is not None and self._reaper is not threading.current_thread():
            self._reaper.join(10)

    def __enter__(self) -> WarmPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

