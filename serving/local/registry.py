"""A real image registry behind the embedded stack's ECR: Debian's ``docker-registry``.

:class:`LocalRegistry` runs the Docker Distribution registry server
(``apt-get install docker-registry``) on a free loopback port, with its
storage in a temporary folder and one login: user ``AWS`` and a password
made up when it starts, the one the stack's ``GetAuthorizationToken``
hands out (see :mod:`serving.local.ecr`). The Docker engine treats
``127.0.0.0/8`` registries as insecure-allowed, so a push to
``127.0.0.1:PORT/<repository>:<tag>`` needs no TLS.

It also reads the registry back for the stack's ECR (tags, manifests and
their digests) through the registry's HTTP API.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from serving import scratch
from serving.errors import StackError
from serving.ports import free_port

#: The user ECR's authorization token names.
USER = "AWS"
#: Manifest media types asked for (the engine pushes Docker v2 schema 2; OCI too).
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.oci.image.index.v1+json")
#: Set to the path of a ``registry`` binary to use another one; empty turns the registry off.
BINARY_VARIABLE = "SMSERVE_REGISTRY_BINARY"
DEFAULT_BINARY = "docker-registry"


@dataclass(frozen=True)
class Manifest:
    """One image manifest as the registry serves it."""

    digest: str
    media_type: str
    body: str


def find_binary(environ: Mapping[str, str]) -> str | None:
    """The registry server to run: ``$SMSERVE_REGISTRY_BINARY`` or ``docker-registry`` on PATH.

    Returns None when there is none (or the variable is set to the empty string).
    """
    chosen = environ.get(BINARY_VARIABLE)
    if chosen is not None:
        return shutil.which(chosen) if chosen else None
    return shutil.which(DEFAULT_BINARY)


class LocalRegistry:
    """The registry server in a subprocess on ``127.0.0.1``.

    Args:
        binary: the ``registry`` executable (see :func:`find_binary`).
        port: the port (None: a free one).
    """

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(24)
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: the registry part of an image name the engine pushes to."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.address}"

    @property
    def storage(self) -> Path | None:
        """The folder the registry keeps images in (None when stopped)."""
        return self._dir / "data" if self._dir is not None else None

    def start(self, timeout: float = 20.0) -> LocalRegistry:
        """Start the server and wait until ``/v2/`` answers (401: it asks for the login)."""
        import bcrypt

        self._dir = scratch.make("smserve-registry-")
        hashed = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=6)).decode()
        (self._dir / "htpasswd").write_text(f"{USER}:{hashed}\n")
        (self._dir / "config.json").write_text(json.dumps(self._config()))
        self._log = (self._dir / "registry.log").open("wb")
        try:
            self._process = subprocess.Popen(
                [self.binary, "serve", str(self._dir / "config.json")],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env={"PATH": "/usr/local/bin:/usr/bin:/bin"},  # nothing of ours leaks in
                preexec_fn=_dies_with_us())
        except OSError as err:
            self.stop()
            raise StackError(f"cannot start the registry {self.binary}: {err}") from err
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self.log_tail()
                self.stop()
                raise StackError(f"the registry {self.binary} exited at start: {tail}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise StackError(f"the registry on {self.address} did not answer within {timeout:.0f} s")

    def _config(self) -> dict[str, Any]:
        assert self._dir is not None
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(self._dir / "data")},
                        "delete": {"enabled": True}},
            "http": {"addr": self.address, "secret": secrets.token_hex(16)},
            "auth": {"htpasswd": {"realm": "smserve-local-ecr",
                                  "path": str(self._dir / "htpasswd")}},
        }

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/v2/", timeout=2):
                return True
        except urllib.error.HTTPError as err:
            return err.code == 401
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 5) -> str:
        """The last lines the server wrote, on one line."""
        if self._dir is None or not (self._dir / "registry.log").exists():
            return "(no log)"
        text = (self._dir / "registry.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """Stop the server and delete its storage (idempotent)."""
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait(timeout=10)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # --- reading it back ------------------------------------------------------------------

    def _request(self, path: str, accept: str = "application/json",
                 method: str = "GET") -> tuple[Mapping[str, str], bytes]:
        token = base64.b64encode(f"{USER}:{self.password}".encode()).decode()
        req = urllib.request.Request(self.url + path, method=method, headers={
            "Authorization": f"Basic {token}", "Accept": accept})
        with urllib.request.urlopen(req, timeout=10) as answer:
            return dict(answer.headers.items()), answer.read()

    def tags(self, repository: str) -> list[str]:
        """The tags of ``repository`` (none when the registry has no such repository)."""
        try:
            _, body = self._request(f"/v2/{repository}/tags/list")
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return []
            raise
        return sorted(json.loads(body).get("tags") or [])

    def manifest(self, repository: str, reference: str) -> Manifest | None:
        """The manifest ``repository:reference`` (a tag or a digest) names, or None."""
        try:
            headers, body = self._request(f"/v2/{repository}/manifests/{reference}",
                                          accept=", ".join(MANIFEST_TYPES))
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise
        lower = {k.lower(): v for k, v in headers.items()}
        return Manifest(lower.get("docker-content-digest", ""),
                        lower.get("content-type", MANIFEST_TYPES[0]), body.decode())

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _dies_with_us() -> Callable[[], object] | None:
    """In the child: SIGTERM when this process ends, even by SIGKILL (Linux; main thread only,
    since the signal follows the thread that started the child)."""
    import threading

    from serving.server.guard import set_parent_death_signal

    if threading.current_thread() is not threading.main_thread():
        return None
    return set_parent_death_signal
