"""Containers without Docker: the model server in a subprocess, one private ``/opt/ml`` each.

:class:`ProcessRunner` starts the command the image runs (``smserve serve``
by default) once per container, each with:

- a private directory shaped like ``/opt/ml`` (``model/`` holds hard links
  to the model's files, or copies across file systems) given as
  ``SAGEMAKER_BASE_DIR``;
- its own free loopback port below 32767, given as ``SAGEMAKER_BIND_TO_PORT``;
- the runner's environment, then the container environment passed to
  :meth:`ProcessRunner.start` (see :func:`serving.transform.params.container_environment`);
- its output drained from a pipe into ``container.log`` in that directory
  (and optionally line by line into a callback) by a thread that keeps reading
  when the file cannot be written: :attr:`Container.disk_error` then says why.

It waits until ``GET /ping`` answers 200 and is not "Unhealthy" (each ping
times out after ``ping_timeout``), fails fast with the log's last lines when
the process exits, and gives up after ``startup_timeout``. A start that fails
for a reason outside the model (the process exited before the model was
loaded and no ``model_error.txt`` says the model failed: a port taken between
choosing and binding it, a JVM that could not start under load) is tried
again on a new port, ``start_attempts`` times in all; the error names every
try. Each process is the leader of its own session and process group;
:meth:`Container.stop` ends the whole group, the session and every
descendant (SIGTERM, then SIGKILL after a grace period). No error path leaves
a process behind, and a container never stopped is killed at interpreter
exit. ``smserve serve`` ends itself (and multi-model-server) when the process
that started it dies, so a killed runner leaves no server behind either.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from serving import scratch
from serving.errors import ServerStartError
from serving.ports import free_port
from serving.runners._logs import LogPump
from serving.runners._procs import terminate
from serving.runners._start import TAIL_LINES, Startable, StartGroup, start_all, wait_healthy
from serving.server.markers import MODEL_ERROR_FILE, MODEL_READY_FILE

_PORT_CLASH = ("Address already in use", "BindException", "port is in use")
#: What ``smserve serve`` says when it could not start for a reason outside the model.
_OUTSIDE_MODEL = (*_PORT_CLASH, "is in use", "multi-model-server exited",
                  "worker died before", "cannot start")


def default_command() -> list[str]:
    """``python -m serving.cli serve``, with this interpreter."""
    return [sys.executable, "-m", "serving.cli", "serve"]


def _kill_group(pid: int, base_dir: Path | None = None) -> None:
    """At interpreter exit, for a container never stopped: its group, then its folder."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if base_dir is not None:
        shutil.rmtree(base_dir, ignore_errors=True)


class Container:
    """One running model server process.

    Attributes:
        index: its position among the job's containers.
        port: the loopback port it listens on.
        url: ``http://127.0.0.1:PORT``.
        base_dir: its private ``/opt/ml``-shaped directory.
        log_path: its output.
    """

    def __init__(self, index: int, process: subprocess.Popen[bytes], port: int, base_dir: Path,
                 log_path: Path, *, host: str = "127.0.0.1", grace: float = 10.0,
                 keep_files: bool = False, pump: LogPump | None = None) -> None:
        self.index = index
        self.process = process
        self.port = port
        self.url = f"http://{host}:{port}"
        self.base_dir = base_dir
        self.log_path = log_path
        self.grace = grace
        self.keep_files = keep_files
        self._pump = pump
        self._stopped = False
        self._gone = threading.Event()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _kill_group, process.pid,
                                           None if keep_files else base_dir)

    @property
    def pid(self) -> int:
        """The server process id (also its process group id)."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the server process runs."""
        return self.process.poll() is None

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last ``lines`` lines of the container's output."""
        if self._pump is None:
            return ""
        if self.process.poll() is not None:
            self._pump.stop()  # its last words are still in the pipe: read them first
        return self._pump.tail(lines)

    @property
    def disk_error(self) -> str | None:
        """Why the container's log could not be written (a full disk), or None.

        The message reads "no space left on <path>, <free>/<needed>" for a full
        disk; the output is still drained either way.
        """
        if self._pump is None or self._pump.write_error is None:
            return None
        from serving import diskspace

        err = self._pump.write_error
        if diskspace.is_full(err):
            return diskspace.no_space(self.base_dir, self._pump.write_needed,
                                      "the container log").message
        return f"cannot write the container log {self.log_path}: {err}"

    def stop(self, grace: float | None = None) -> None:
        """End the process group: SIGTERM, then SIGKILL after ``grace`` seconds.

        Safe to call twice, from any thread: a second call returns once the
        first has finished. Removes the private directory unless ``keep_files``.
        """
        with self._lock:
            first = not self._stopped
            self._stopped = True
        if not first:
            self._gone.wait()
            return
        try:
            terminate(self.process, self.grace if grace is None else grace)
        finally:
            self._finalizer.detach()
            if self._pump is not None:
                self._pump.stop()
            if not self.keep_files:
                shutil.rmtree(self.base_dir, ignore_errors=True)
            self._gone.set()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Container(index={self.index}, url={self.url!r}, pid={self.pid})"


class ProcessRunner:
    """Starts model servers as local processes.

    Args:
        command: the server command (default: ``python -m serving.cli serve``).
        env: the base environment of every container (default: the process
            environment, through :class:`~serving.settings.Settings`).
        startup_timeout: seconds a container may take to answer ``/ping``.
        ping_timeout: seconds each ``/ping`` may take.
        log: receives the containers' output lines, prefixed ``[container N]``.
        stop_grace: seconds between SIGTERM and SIGKILL.
        keep_files: keep each container's private directory (and log) after stop.
        poll_interval: seconds between pings.
        start_attempts: tries per container when a start fails for a reason
            outside the model (each on a new port).
    """

    def __init__(self, command: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                 startup_timeout: float = 120.0, ping_timeout: float = 2.0, *,
                 log: Callable[[str], None] | None = None, stop_grace: float = 10.0,
                 keep_files: bool = False, poll_interval: float = 0.1,
                 start_attempts: int = 3) -> None:
        if env is None:
            from serving.settings import Settings

            env = Settings.from_environ().environ
        self.command = list(command) if command is not None else default_command()
        # `smserve serve` says when model_fn has finished (MMS's /ping says
        # "Healthy" before its model is even registered); other commands are
        # judged by /ping alone.
        self.ready_marker = command is None
        self.env = dict(env)
        self.startup_timeout = startup_timeout
        self.ping_timeout = ping_timeout
        self.log = log
        self.stop_grace = stop_grace
        self.keep_files = keep_files
        self.poll_interval = poll_interval
        self.start_attempts = max(1, start_attempts)

    def start(self, model_dir: Path, environment: Mapping[str, str] | None = None,
              count: int = 1) -> list[Container]:
        """Start ``count`` containers serving ``model_dir``, concurrently.

        Args:
            model_dir: an extracted model (what goes to ``/opt/ml/model``; code in ``code/``).
            environment: the container environment (model's, job's, ``SAGEMAKER_*``).
            count: how many containers.

        Returns:
            the healthy containers, in index order. Stop them (or use them as
            context managers) when done.

        Raises:
            ServerStartError: one did not come up; all of them are stopped then.
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ServerStartError(f"model directory {model_dir} does not exist",
                                   model_dir=str(model_dir))
        return start_all(count, lambda index, group: self._start_one(
            model_dir, environment or {}, index, group), thread_name_prefix="start")

    def _start_one(self, model_dir: Path, environment: Mapping[str, str], index: int,
                   group: StartGroup[Container]) -> Container:
        failures: list[str] = []
        for attempt in range(1, self.start_attempts + 1):
            container = self._spawn(model_dir, environment, index)
            group.add(container)
            try:
                wait_healthy(container, group.abort,
                             where=f"container {container.index} (port {container.port})",
                             startup_timeout=self.startup_timeout,
                             ping_timeout=self.ping_timeout, poll_interval=self.poll_interval,
                             loaded=self._loaded(container))
                return container
            except ServerStartError as err:
                retry = (attempt < self.start_attempts and not group.abort.is_set()
                         and self._outside_model(container))
                container.stop(grace=2.0)
                group.discard(container)
                if not retry:
                    if failures:
                        err.message += ("\nEarlier tries of this container, each on a new "
                                        "port: " + "; ".join(failures))
                        err.args = (err.message,)
                    raise
                first = err.message.splitlines()[0]
                failures.append(f"try {attempt}: {first}")
                if self.log:
                    self.log(f"[container {index}] start failed outside the model ({first}); "
                             f"trying again on another port ({attempt + 1} of "
                             f"{self.start_attempts})")
        raise AssertionError("unreachable")

    def _outside_model(self, container: Container) -> bool:
        """Whether a failed start is worth another try: not the model's own failure.

        The process must have exited (a start that timed out already had its
        time) and no ``model_error.txt`` says ``model_fn`` or the handler
        failed; a taken port is always worth it.
        """
        tail = container.log_tail()
        if any(s in tail for s in _PORT_CLASH):
            return True
        if container.process.poll() is None:
            return False
        if (container.base_dir / "run" / MODEL_ERROR_FILE).exists():
            return False
        said = [line for line in tail.splitlines() if line.startswith("smserve: error:")]
        return not said or any(s in said[-1] for s in _OUTSIDE_MODEL)

    def _spawn(self, model_dir: Path, environment: Mapping[str, str], index: int) -> Container:
        base = scratch.make(f"smserve-container{index}-")
        try:
            shutil.copytree(model_dir, base / "model", symlinks=True, copy_function=_link_or_copy)
            port = free_port()
            env = {**self.env, **environment, "SAGEMAKER_BASE_DIR": str(base),
                   "SAGEMAKER_BIND_TO_PORT": str(port), "PYTHONUNBUFFERED": "1",
                   "SMSERVE_RUN_DIR": str(base / "run")}
            log_path = base / "container.log"
            process = subprocess.Popen(self.command, env=env, cwd=base, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except OSError as err:
            shutil.rmtree(base, ignore_errors=True)
            from serving import diskspace

            if diskspace.is_full(err):
                raise ServerStartError(diskspace.no_space(base, _size(model_dir),
                                                          f"container {index}'s model").message,
                                       model_dir=str(model_dir)) from err
            raise ServerStartError(f"cannot start container {index} ({' '.join(self.command)})"
                                   f": {err}", model_dir=str(model_dir)) from err
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        assert process.stdout is not None
        pump = LogPump(process.stdout, log_path, self.log, prefix=f"[container {index}] ")
        return Container(index, process, port, base, log_path, grace=self.stop_grace,
                         keep_files=self.keep_files, pump=pump)

    def _loaded(self, container: Container) -> Callable[[], bool] | None:
        """Whether ``smserve serve`` says model_fn has finished (None: /ping alone judges)."""
        if not self.ready_marker:
            return None
        return (container.base_dir / "run" / MODEL_READY_FILE).exists


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


__all__ = ["TAIL_LINES", "Container", "ProcessRunner", "StartGroup", "Startable", "default_command",
           "start_all", "wait_healthy"]
