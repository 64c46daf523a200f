"""``smserve serve``: the image's ``serve`` entry point, and a local server.

The supervisor prepares a private run directory, writes multi-model-server's
configuration there, starts MMS in its own process group, and waits until the
model is loaded. If ``model_fn`` fails, it stops MMS and exits non-zero with
the cause, within seconds; if MMS dies later, it exits with MMS's status. On
SIGTERM, SIGINT or SIGHUP, and when its own parent process dies, it stops MMS
and everything MMS started.

Nothing outlives it, however it ends: MMS runs under
:mod:`serving.server.guard`, which ends the whole tree (the launcher, Java,
the workers, even once re-parented) when told to stop or when this
supervisor dies, SIGKILL included. MMS's output is drained whatever happens
to the place it is echoed to (a full disk, a closed terminal), so MMS never
blocks on a full pipe.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from serving import diskspace, scratch
from serving.errors import ServerStartError
from serving.ports import is_free
from serving.server import mms
from serving.server.markers import ANSWERED_MARK, MODEL_ERROR_FILE, MODEL_READY_FILE
from serving.settings import Settings

#: Lines of MMS's log that mean a worker could not load the model.
_WORKER_DIED = ("Backend worker process died", "Load model failed", "Failed to load model")


@dataclass
class ServerProcess:
    """A running model server, with the tail of its log."""

    process: subprocess.Popen[bytes]
    url: str
    run_dir: Path
    owns_run_dir: bool = True
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=60))
    worker_died: threading.Event = field(default_factory=threading.Event)
    #: How many refused or failed requests the workers' log has finished (markers.ANSWERED).
    answers_logged: int = 0
    pump_thread: threading.Thread | None = None
    _log_moved: threading.Condition = field(default_factory=threading.Condition)
    _log_ended: bool = False

    def pump(self, echo: Callable[[str], None]) -> None:
        """Forward MMS's output to ``echo`` and watch it for dead workers.

        An ``echo`` that fails (stdout on a full disk, a closed terminal) loses
        that line, not the pipe: reading goes on, so MMS never blocks.
        """
        assert self.process.stdout is not None
        try:
            for raw in self.process.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.tail.append(line)
                if any(marker in line for marker in _WORKER_DIED):
                    self.worker_died.set()
                with contextlib.suppress(Exception):
                    echo(line)
                if ANSWERED_MARK in line:
                    with self._log_moved:
                        self.answers_logged += 1
                        self._log_moved.notify_all()
        finally:
            with self._log_moved:
                self._log_ended = True
                self._log_moved.notify_all()

    def wait_answer_logged(self, after: int, timeout: float) -> bool:
        """Wait until the log has finished one more refused or failed request than ``after``.

        Args:
            after: :attr:`answers_logged` read before the request was sent.
            timeout: the most seconds to wait (an answer MMS gave by itself, say a
                503, is never logged by a worker).

        Returns:
            True once the worker's record (its traceback, for a 5xx) is in the log;
            False when the log ended, a worker died, or ``timeout`` passed first.
        """
        with self._log_moved:
            self._log_moved.wait_for(lambda: self.answers_logged > after or self._log_ended
                                     or self.worker_died.is_set(), timeout)
            return self.answers_logged > after

    def cleanup(self) -> None:
        """Remove the run directory, if this server made it."""
        if self.owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines MMS printed."""
        return "\n".join(list(self.tail)[-lines:])

    def stop(self, grace: float = 10.0) -> int:
        """Stop MMS and its workers (the whole process group); returns the exit status."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace)
        # MMS's Java frontend and Python workers are in the group too.
        _signal_group(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if self.pump_thread is not None and self.pump_thread is not threading.current_thread():
            self.pump_thread.join(5)  # every line MMS wrote reaches ``echo`` before this returns
        return self.process.returncode if self.process.returncode is not None else -9


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def resolve_model_dir(settings: Settings, model: Path | None, run_dir: Path) -> Path:
    """The directory MMS serves: ``<base>/model``, an extracted model, or a staged folder.

    A folder with ``code/`` inside is served as it is (an extracted
    ``model.tar.gz``). A model folder in source layout (``models/NAME``, with
    ``serving.py`` at its top) is staged into ``<run dir>/model`` with the
    same layout ``smserve package`` writes.
    """
    if model is None:
        model_dir = settings.model_dir
        if not (model_dir / "code" / settings.program).is_file():
            raise ServerStartError(
                f"no {model_dir / 'code' / settings.program}; mount the model at {model_dir} "
                "(SAGEMAKER_BASE_DIR changes the base) or pass a model folder: "
                "smserve serve models/NAME"
            )
        return model_dir.resolve()
    model = model.resolve()
    if not model.is_dir():
        raise ServerStartError(f"{model} is not a folder; pass a model folder (models/NAME) "
                               "or an extracted model.tar.gz")
    if (model / "code" / settings.program).is_file():
        return model
    if (model / settings.program).is_file():
        from serving.package import stage

        return stage(model, run_dir / "model")
    raise ServerStartError(
        f"{model} has no {settings.program} (nor code/{settings.program}); "
        "a model folder needs one (smserve new NAME writes one)"
    )


def _ping(url: str) -> str | None:
    """The status MMS reports on /ping, or None when it does not answer yet."""
    try:
        with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
            raw = resp.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None
    try:
        status = json.loads(raw or b"{}").get("status", "Healthy")
    except (ValueError, AttributeError):
        return "Healthy"
    return str(status)


def _print(line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # a full disk or a closed terminal
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def guarded(command: list[str], remove: Path | None = None) -> list[str]:
    """``command`` under :mod:`serving.server.guard`, watching this process.

    Args:
        command: what to run.
        remove: a folder the guard removes if this process dies first.
    """
    flag = ["--pdeathsig"] if threading.current_thread() is threading.main_thread() else []
    if remove is not None:
        flag += ["--remove", str(remove)]
    return [sys.executable, "-m", "serving.server.guard", *flag, str(os.getpid()), "--",
            *command]


def start(settings: Settings, model: Path | None = None, port: int | None = None,
          run_dir: Path | None = None, on_wait: Callable[[], None] | None = None,
          echo: Callable[[str], None] = _print) -> ServerProcess:
    """Start MMS for a model and wait until the model is loaded.

    Args:
        settings: the server's settings (port, timeouts, workers, payload).
        model: a model folder; None serves ``<base>/model`` (the image's way).
        port: overrides ``settings.port``.
        run_dir: where config, logs and the staged model go (default:
            ``SMSERVE_RUN_DIR``, else a new temporary directory). The worker
            writes ``model_ready.txt`` or ``model_error.txt`` there.
        on_wait: called on each poll while waiting (tests, progress).
        echo: where MMS's log lines go (default: this process's stdout).

    Raises:
        ServerStartError: the port is taken, the model folder is wrong, the
            model failed to load (message has the cause), MMS exited, or the
            model did not load within ``settings.startup_timeout``.
    """
    port = port or settings.port
    if not is_free(port, settings.bind_host):
        raise ServerStartError(
            f"port {port} on {settings.bind_host} is in use; stop what listens there or pass "
            "--port N (SAGEMAKER_BIND_TO_PORT)"
        )
    given = run_dir or settings.run_dir
    with diskspace.guard(given or Path(tempfile.gettempdir()), None,
                         "the server's run directory"):
        run_dir = given or scratch.make("smserve-serve-")
        (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(exist_ok=True)
        model_dir = resolve_model_dir(settings, model, run_dir)
        mms.write_config(settings, run_dir, port)
    env = dict(settings.environ)
    # model/code is NOT put on PYTHONPATH: its serving.py would shadow our
    # `serving` package. serving.handler loads the entry module by path.
    env.update({
        "SMSERVE_RUN_DIR": str(run_dir),
        # MMS keeps its pid file in the temp dir: a private one lets servers coexist.
        "TMPDIR": str(run_dir / "tmp"),
        "TEMP": str(run_dir / "tmp"),
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
        "SETUPTOOLS_USE_DISTUTILS": env.get("SETUPTOOLS_USE_DISTUTILS", "stdlib"),
        "PYTHONUNBUFFERED": "1",
    })
    # A process group of its own (stopped as one) in this session (so whoever
    # started us finds it by session id even once it is re-parented).
    process = subprocess.Popen(guarded(mms.command(run_dir, model_dir),
                                       remove=None if given else run_dir), cwd=run_dir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, process_group=0)
    server = ServerProcess(process, f"http://127.0.0.1:{port}", run_dir,
                           owns_run_dir=given is None)
    server.pump_thread = threading.Thread(target=server.pump, args=(echo,), name="mms-log",
                                          daemon=True)
    server.pump_thread.start()
    try:
        _wait_loaded(server, settings.startup_timeout, on_wait)
    except BaseException:
        server.stop(grace=2)
        raise
    return server


def _wait_loaded(server: ServerProcess, timeout: float,
                 on_wait: Callable[[], None] | None) -> None:
    error_file = server.run_dir / MODEL_ERROR_FILE
    ready_file = server.run_dir / MODEL_READY_FILE
    deadline = time.monotonic() + timeout
    while True:
        if error_file.exists():
            # The first paragraph is the cause; the traceback is in the log above.
            cause = error_file.read_text().strip().split("\n\n", 1)[0]
            raise ServerStartError(f"the model failed to load: {cause}")
        code = server.process.poll()
        if code is not None:
            raise ServerStartError(
                f"multi-model-server exited with status {code} before the model loaded "
                f"(is a Java runtime installed?); its last lines:\n{server.log_tail()}"
            )
        if server.worker_died.is_set():
            time.sleep(0.3)  # let the worker's traceback reach the tail
            if error_file.exists():
                continue
            raise ServerStartError(
                "the model server's worker died before the model loaded; its last lines:\n"
                + server.log_tail()
            )
        # MMS answers "Healthy" even with no model registered: wait for the worker's word.
        if ready_file.exists() and _ping(server.url) == "Healthy":
            return
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"the model did not load within {timeout:.0f} s; raise SMSERVE_STARTUP_TIMEOUT "
                "or look at the log for a slow or stuck model_fn"
            )
        if on_wait is not None:
            on_wait()
        time.sleep(0.1)


@contextlib.contextmanager
def running(settings: Settings, model: Path | None = None,
            port: int | None = None) -> Iterator[ServerProcess]:
    """A started server, stopped (with its run directory removed) on exit."""
    server = start(settings, model, port)
    try:
        yield server
    finally:
        server.stop()
        server.cleanup()


class _StopRequested(Exception):
    """SIGTERM, SIGINT or SIGHUP arrived (or the parent died) while the model was loading."""


#: The signals that stop the server (and run the same clean-up).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve_forever(settings: Settings, model: Path | None = None, port: int | None = None,
                  echo: Callable[[str], None] = _print) -> int:
    """Run the server in the foreground until a stop signal; returns the exit status.

    SIGTERM, SIGINT and SIGHUP stop it, and so does the death of the process
    that started it (it is re-parented: ``getppid()`` changes). A stop
    request while the model is still loading stops MMS at once (exit 0)
    rather than after ``model_fn`` returns.
    """
    stopping = False
    parent = os.getppid()

    def _stop(signo: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def _check_stop() -> None:
        nonlocal stopping
        stopping = stopping or os.getppid() != parent
        if stopping:
            raise _StopRequested

    previous = {sig: signal.signal(sig, _stop) for sig in STOP_SIGNALS}
    try:
        try:
            server = start(settings, model, port, on_wait=_check_stop)
        except _StopRequested:  # start() has stopped MMS already
            echo("smserve: stopped while the model was loading")
            return 0
        try:
            echo(f"smserve: model ready on {server.url} (POST /invocations, GET /ping); "
                 "Ctrl-C stops it")
            error_file = server.run_dir / MODEL_ERROR_FILE
            while not stopping:
                if os.getppid() != parent:
                    echo("smserve: the process that started this server has ended; stopping")
                    return 0
                code = server.process.poll()
                if code is not None:
                    echo(f"smserve: multi-model-server exited with status {code}")
                    return code or 1
                if error_file.exists():
                    echo("smserve: a model worker failed to reload the model; stopping: "
                         + error_file.read_text().splitlines()[0])
                    return 3
                time.sleep(0.2)
            return 0
        finally:
            server.stop()
            server.cleanup()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
