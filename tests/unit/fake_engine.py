"""A small fake Docker Engine API on a loopback port, recording every request.

It speaks just enough of the Engine API for the Docker SDK calls smserve
makes: version negotiation, ``/_ping``, ``/info``, ``/build`` (streamed JSON
progress), image inspect, tag and push (streamed JSON, ``X-Registry-Auth``),
and containers (create, start, inspect, logs, stop, delete). A started
container really listens: the fake starts a tiny HTTP server answering
``GET /ping`` on the container's host port, so a runner's health check runs
for real. Point a client at it with ``DOCKER_HOST=tcp://127.0.0.1:PORT``.
"""

from __future__ import annotations

import io
import json
import re
import struct
import tarfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Any

API_VERSION = "1.45"
#: What an engine without a route to Docker Hub answers a pull with.
NO_REGISTRY = ('Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io '
               'on 127.0.0.53:53: server misbehaving')
#: What an engine without the NVIDIA runtime answers a container start that asks for a GPU.
NO_GPU = 'could not select device driver "" with capabilities: [[gpu]]'


@dataclass
class Recorded:
    """One request the fake engine received."""

    method: str
    path: str  # without the /vX.Y prefix
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def tar_names(self) -> list[str]:
        """The regular files in a tar body (a build context)."""
        with tarfile.open(fileobj=io.BytesIO(self.body)) as tar:
            return sorted(m.name for m in tar.getmembers() if m.isfile())


@dataclass
class FakeContainer:
    """A container the fake 'runs'."""

    id: str
    config: dict[str, Any]
    status: str = "created"
    exit_code: int = 0
    logs: bytes = b""
    server: HTTPServer | None = None
    behaviour: str = "healthy"


class _Ping(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "Healthy"}' if self.path == "/ping" else b"{}"
        self.send_response(200 if self.path == "/ping" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _frame(text: str, stream: int = 1) -> bytes:
    payload = text.encode()
    return struct.pack(">BxxxL", stream, len(payload)) + payload


@dataclass
class FakeEngine:
    """The fake engine; use as a context manager.

    Attributes:
        requests: what it received, in order.
        images: image names (``name:tag``) that exist.
        build_events / push_events: the JSON lines ``/build`` and ``/push`` stream.
        pull_events: the JSON lines ``/images/create`` (a pull) streams; by default the
            error an engine that cannot reach Docker Hub reports.
        container_behaviour: ``healthy`` (answers /ping) or ``exit`` (exits at once, code 3).
        operating_system: what ``/info`` reports.
        image_env: an image's ``Config.Env`` (none by default).
        runtimes: the runtimes ``/info`` reports; without ``nvidia`` a container that asks
            for a GPU fails to start with the engine's message.
    """

    images: set[str] = field(default_factory=set)
    build_events: list[dict[str, Any]] = field(default_factory=list)
    push_events: list[dict[str, Any]] = field(default_factory=list)
    pull_events: list[dict[str, Any]] = field(default_factory=lambda: [
        {"status": "Pulling from library/x"},
        {"errorDetail": {"message": NO_REGISTRY}, "error": NO_REGISTRY}])
    runtimes: tuple[str, ...] = ("io.containerd.runc.v2", "runc")
    image_env: dict[str, list[str]] = field(default_factory=dict)
    container_behaviour: str = "healthy"
    operating_system: str = "Ubuntu 22.04.4 LTS"
    requests: list[Recorded] = field(default_factory=list)
    containers: dict[str, FakeContainer] = field(default_factory=dict)

    def __post_init__(self) -> None:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _dispatch(self) -> None:
                engine._handle(self)

            do_GET = do_POST = do_DELETE = do_HEAD = _dispatch

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``tcp://127.0.0.1:PORT``, for DOCKER_HOST."""
        return f"tcp://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeEngine:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for container in self.containers.values():
            self._halt(container)

    def __enter__(self) -> FakeEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def calls(self, method: str, pattern: str) -> list[Recorded]:
        """Recorded requests with ``method`` whose path fully matches ``pattern``."""
        return [r for r in self.requests if r.method == method and re.fullmatch(pattern, r.path)]

    # --- the API ------------------------------------------------------------------------------

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(h.path)
        path = re.sub(r"^/v[0-9.]+(?=/)", "", urllib.parse.unquote(parsed.path))
        query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
        body = self._read_body(h)
        with self._lock:
            self.requests.append(Recorded(h.command, path, query, dict(h.headers.items()), body))
        method = h.command
        if path == "/version":
            return self._json(h, 200, {"ApiVersion": API_VERSION, "Version": "28.2.2",
                                       "Os": "linux"})
        if path == "/_ping":
            return self._text(h, 200, b"OK")
        if path == "/info":
            return self._json(h, 200, {"OperatingSystem": self.operating_system,
                                       "Name": "fake-engine",
                                       "Runtimes": {r: {} for r in self.runtimes}})
        if method == "POST" and path == "/images/create":
            if not any("error" in e or "errorDetail" in e for e in self.pull_events):
                self.images.add(f"{query['fromImage']}:{query.get('tag') or 'latest'}")
            return self._stream(h, self.pull_events)
        if method == "POST" and path == "/build":
            tag = query.get("t")
            if tag and not any("error" in e or "errorDetail" in e for e in self.build_events):
                self.images.add(tag)
            return self._stream(h, self.build_events)
        match = re.fullmatch(r"/images/(.+)/(json|tag|push)", path)
        if match:
            name, action = match.groups()
            if action == "json":
                if name not in self.images:
                    return self._json(h, 404, {"message": f"No such image: {name}"})
                return self._json(h, 200, {"Id": "sha256:" + "ab" * 32, "RepoTags": [name],
                                           "Config": {"Env": self.image_env.get(name, [])}})
            if action == "tag":
                if name not in self.images:
                    return self._json(h, 404, {"message": f"No such image: {name}"})
                self.images.add(f"{query['repo']}:{query.get('tag', 'latest')}")
                return self._text(h, 201, b"")
            return self._stream(h, self.push_events)
        if method == "POST" and path == "/containers/create":
            return self._create(h, body)
        match = re.fullmatch(r"/containers/([^/]+)(?:/(start|stop|json|logs))?", path)
        if match and match.group(1) in self.containers:
            container = self.containers[match.group(1)]
            action = match.group(2)
            if action == "start":
                host_config = container.config.get("HostConfig") or {}
                if host_config.get("DeviceRequests") and "nvidia" not in self.runtimes:
                    return self._json(h, 500, {"message": NO_GPU})
                self._run(container)
                return self._text(h, 204, b"")
            if action == "stop":
                self._halt(container)
                return self._text(h, 204, b"")
            if action == "json":
                return self._json(h, 200, self._inspect(container))
            if action == "logs":
                data = b"".join(_frame(line + "\n") for line in
                                container.logs.decode().splitlines())
                return self._text(h, 200, data, "application/vnd.docker.raw-stream")
            if method == "DELETE":
                self._halt(container)
                del self.containers[container.id]
                return self._text(h, 204, b"")
        return self._json(h, 404, {"message": f"fake engine: no route for {method} {path}"})

    def _create(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        config = json.loads(body)
        if config.get("Image") not in self.images:
            return self._json(h, 404, {"message": f"No such image: {config.get('Image')}"})
        cid = f"{len(self.containers) + 1:064x}"
        self.containers[cid] = FakeContainer(cid, config, behaviour=self.container_behaviour)
        return self._json(h, 201, {"Id": cid, "Warnings": []})

    def _port(self, container: FakeContainer) -> int:
        host_config = container.config.get("HostConfig") or {}
        if host_config.get("NetworkMode") == "host":
            env = dict(item.split("=", 1) for item in container.config.get("Env") or [])
            return int(env["SAGEMAKER_BIND_TO_PORT"])
        return int(host_config["PortBindings"]["8080/tcp"][0]["HostPort"])

    def _run(self, container: FakeContainer) -> None:
        if container.behaviour == "exit":
            container.status, container.exit_code = "exited", 3
            container.logs = b"smserve: error: the model failed to load: boom\n"
            return
        server = HTTPServer(("127.0.0.1", self._port(container)), _Ping)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        container.server = server
        container.status = "running"
        container.logs = b"smserve: model ready\n"

    def _halt(self, container: FakeContainer) -> None:
        if container.server is not None:
            container.server.shutdown()
            container.server.server_close()
            container.server = None
        if container.status == "running":
            container.status, container.exit_code = "exited", 143

    def _inspect(self, container: FakeContainer) -> dict[str, Any]:
        running = container.status == "running"
        return {"Id": container.id, "Config": {"Tty": False, **container.config},
                "HostConfig": container.config.get("HostConfig") or {},
                "State": {"Status": container.status, "Running": running,
                          "ExitCode": container.exit_code}}

    # --- responses ----------------------------------------------------------------------------

    def _json(self, h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        self._text(h, status, json.dumps(payload).encode(), "application/json")

    def _text(self, h: BaseHTTPRequestHandler, status: int, data: bytes,
              content_type: str = "text/plain") -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def _stream(self, h: BaseHTTPRequestHandler, events: list[dict[str, Any]]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for event in events:
            line = json.dumps(event).encode() + b"\r\n"
            h.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")
