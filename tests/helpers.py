"""Helpers several test modules share (a plain module: ``from tests.helpers import ...``).

Fixtures live in ``tests/conftest.py``; this module holds what is called:
finding the processes a module started, undoing what loading a handler module
does to the interpreter, a recording HTTP server's common parts, and a scratch
copy of the repository's scaffolding.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
#: The variable that marks the processes a test module starts (its value: the module's tag).
TAG_VAR = "SMSERVE_TEST_TAG"


# --- no process left behind -------------------------------------------------------------------


def wait_or_dump(proc: subprocess.Popen[str], timeout: float,
                 output: IO[str] | None = None) -> int:
    """``proc.wait(timeout)``; past it, fail with every thread's stack of the stuck command.

    smserve commands print their threads' stacks on SIGUSR1 (``serving/cli.py``); they
    land in ``output`` (the command's stderr, or its merged stdout), read after the kill.
    """
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGUSR1)
        time.sleep(2.0)  # let faulthandler write before the kill
        proc.kill()
        proc.wait()
        text = output.read() if output is not None else "(output not captured)"
        args = proc.args
        command = " ".join(map(str, args)) if isinstance(args, list | tuple) else str(args)
        raise AssertionError(f"{command} did not exit within "
                             f"{timeout:g} s; its output and threads:\n{text[-12000:]}") from None


def tagged(tag: str) -> list[psutil.Process]:
    """The processes whose environment has ``TAG_VAR=tag``."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get(TAG_VAR) == tag:
                found.append(proc)
        except (psutil.Error, OSError):
            continue  # gone, a zombie, or not ours to read
    return found


def kill_tagged(tag: str, wait: float = 10.0, width: int = 200) -> list[str]:
    """Give the processes tagged ``tag`` ``wait`` seconds to end, then kill those left.

    Returns:
        one line per process that was still running, ``PID: COMMAND LINE``
        (cut at ``width`` characters); empty when none was.
    """
    deadline = time.monotonic() + wait
    left = tagged(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = tagged(tag)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid}: {' '.join(proc.cmdline())[:width]}")
            proc.kill()
        except psutil.Error:
            continue
    return described


# --- handler modules --------------------------------------------------------------------------


@contextmanager
def handler_imports_undone() -> Iterator[None]:
    """Undo, on exit, what ``serving.handler.load_handlers`` does to sys.path and sys.modules."""

    path, modules = list(sys.path), dict(sys.modules)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - set(modules):
            del sys.modules[name]
        # A name that existed before may now be another folder's module (two model
        # folders' model.py): put each one back, or the next test imports a stranger.
        for name, module in modules.items():
            if sys.modules.get(name) is not module:
                sys.modules[name] = module


# --- recording HTTP servers -------------------------------------------------------------------


class QuietHandler(BaseHTTPRequestHandler):
    """The base of the tests' HTTP "containers": HTTP/1.1, no access log, plain answers."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        """The request body, chunked or with a Content-Length."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                out += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return out
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_in_thread(handler: type[BaseHTTPRequestHandler], port: int = 0
                    ) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A threading HTTP server on ``127.0.0.1:port`` (0: any free port), serving in a thread.

    Stop it with ``server.shutdown()`` and ``server.server_close()``.
    """
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return server, thread


# --- a scratch repository ---------------------------------------------------------------------


def make_repo(dest: Path) -> Path:
    """The parts of the repository a model's author works in: models/, tests/, pyproject.toml."""
    shutil.copytree(ROOT / "models", dest / "models",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "tests").mkdir()
    for name in ("__init__.py", "conftest.py"):
        shutil.copy(ROOT / "tests" / name, dest / "tests" / name)
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


# --- images the embedded stack's CreateModel accepts -------------------------------------------

#: A tiny local image the tests push where smserve-<flavor> is not built.
STAND_IN = "smserve-test-stand-in:tiny"


def stand_in_image(environ: dict[str, str] | None = None) -> str | None:
    """:data:`STAND_IN` on the engine (imported from a one-file tarball, nothing built).

    Returns None where no Docker engine is reachable.
    """
    import io
    import os
    import tarfile

    from serving.errors import ImageError
    from serving.images import connect

    try:
        client = connect(dict(os.environ if environ is None else environ), timeout=120)
    except ImageError:
        return None
    try:
        try:
            client.api.inspect_image(STAND_IN)
        except Exception:
            data = io.BytesIO()
            with tarfile.open(fileobj=data, mode="w") as tar:
                body = b"a stand-in for smserve-cpu/gpu: the process runner never runs it\n"
                info = tarfile.TarInfo("README")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            name, _, tag = STAND_IN.partition(":")
            client.api.import_image_from_data(data.getvalue(), repository=name, tag=tag)
        return STAND_IN
    finally:
        client.close()


def stack_image_uris(stack: Any) -> dict[str, str]:
    """ECR URIs of a cpu and a gpu image that ``stack``'s ECR holds, for ``CreateModel``.

    :data:`STAND_IN` pushed for real to the stack's registry where it has one
    and an engine is reachable (not the built smserve images: gigabytes), else
    recorded with ``PutImage`` only. Honest for these tests: the embedded SageMaker API
    runs each model with the process runner (``smserve serve`` from this
    checkout), which never pulls the image; ``CreateModel`` only needs a URI
    that ECR holds, as on AWS.
    """
    from serving.aws import ClientFactory
    from serving.local.stackimages import stack_images

    clients = ClientFactory(stack.settings())
    stand_in = stand_in_image(dict(clients.settings.environ)) if stack.registry_address else None
    sources = {"cpu": stand_in, "gpu": stand_in} if stand_in else {}
    return stack_images(clients, ("cpu", "gpu"), registry=stack.registry_address is not None,
                        sources=sources)
