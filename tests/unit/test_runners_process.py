"""The process runner: real processes on free ports, started, pinged and always stopped."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from serving.errors import ServerStartError
from serving.runners._health import is_healthy
from serving.runners.process import Container, ProcessRunner

# A stand-in for `smserve serve`: what it does is chosen by FAKE_MODE.
SERVER = textwrap.dedent('''
    import json, os, subprocess, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    mode = os.environ.get("FAKE_MODE", "ok")
    base = os.environ["SAGEMAKER_BASE_DIR"]
    port = int(os.environ["SAGEMAKER_BIND_TO_PORT"])
    pids = os.environ.get("FAKE_PIDS")
    if pids:
        with open(pids, "a") as fh:
            fh.write(f"{os.getpid()}\\n")
    print(f"fake server starting on {port}", flush=True)
    if mode == "exit":
        print("model_fn failed: ValueError: no weights.npz in model/", file=sys.stderr)
        sys.exit(3)
    if mode == "one-fails":
        try:
            os.close(os.open(os.environ["FAKE_LOCK"], os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            print("second container refuses to start", flush=True)
            sys.exit(4)
    if mode == "flaky":  # fails once outside the model (like a JVM that could not start)
        try:
            os.close(os.open(os.environ["FAKE_LOCK"], os.O_CREAT | os.O_EXCL))
            print("smserve: error: multi-model-server exited with status 1", flush=True)
            sys.exit(3)
        except FileExistsError:
            pass
    if mode == "model-fails":
        os.makedirs(os.path.join(base, "run"), exist_ok=True)
        with open(os.path.join(base, "run", "model_error.txt"), "w") as fh:
            fh.write("ValueError: no weights")
        print("smserve: error: the model failed to load: ValueError: no weights", flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(600)
    if mode == "child":
        # In a session (and group) of its own: only the tree snapshot can find it.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                                 start_new_session=True)
        with open(pids, "a") as fh:
            fh.write(f"{child.pid}\\n")
    unhealthy = 3  # "loading": the first pings answer 200 {"status": "Unhealthy"}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/ping":
                global unhealthy
                loading = mode == "loading" and unhealthy > 0
                if loading:
                    unhealthy -= 1
                status = "Unhealthy" if loading else "Healthy"
                self._answer(200, json.dumps({"status": status}).encode())
            elif self.path == "/env":
                keys = [k for k in os.environ if k.startswith(("SAGEMAKER", "MODEL_", "BASE_"))]
                files = sorted(os.path.relpath(os.path.join(d, f), base)
                               for d, _, fs in os.walk(base) for f in fs)
                self._answer(200, json.dumps({"env": {k: os.environ[k] for k in keys},
                                              "files": files}).encode())
            else:
                self._answer(404, b"")

    print("ready", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
''')


@pytest.fixture()
def script(tmp_path: Path) -> list[str]:
    path = tmp_path / "fake_server.py"
    path.write_text(SERVER)
    return [sys.executable, str(path)]


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model-src"
    (model / "code").mkdir(parents=True)
    (model / "weights.npz").write_bytes(b"weights")
    (model / "code" / "serving.py").write_text("def model_fn(d):\n    return d\n")
    return model


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def pids_in(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def get_json(container: Container, path: str) -> dict:
    with urllib.request.urlopen(container.url + path, timeout=5) as resp:
        return json.loads(resp.read())


def test_starts_containers_each_with_its_own_dir_port_and_environment(
        script: list[str], model_dir: Path) -> None:
    runner = ProcessRunner(script, env={"BASE_VAR": "1", "PATH": os.environ.get("PATH", "")},
                           startup_timeout=30)
    containers = runner.start(model_dir, {"MODEL_MODE": "fast", "SAGEMAKER_BATCH": "true"},
                              count=2)
    try:
        assert [c.index for c in containers] == [0, 1]
        assert len({c.port for c in containers}) == 2
        assert all(c.port < 32767 for c in containers)
        for c in containers:
            info = get_json(c, "/env")
            assert info["env"] == {"BASE_VAR": "1", "MODEL_MODE": "fast",
                                   "SAGEMAKER_BATCH": "true",
                                   "SAGEMAKER_BASE_DIR": str(c.base_dir),
                                   "SAGEMAKER_BIND_TO_PORT": str(c.port)}
            assert "model/weights.npz" in info["files"]
            assert "model/code/serving.py" in info["files"]
            assert "fake server starting" in c.log_tail()
    finally:
        for c in containers:
            c.stop()
    for c in containers:
        assert gone(c.pid)
        assert not c.base_dir.exists()
    assert (model_dir / "weights.npz").read_bytes() == b"weights"  # the source is untouched


def test_a_command_that_exits_fails_fast_with_its_log(script: list[str], model_dir: Path,
                                                      tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    runner = ProcessRunner(script, env={"FAKE_MODE": "exit", "FAKE_PIDS": str(pids)},
                           startup_timeout=60)
    with pytest.raises(ServerStartError) as info:
        runner.start(model_dir, {})
    message = str(info.value)
    assert "exited with code 3 before answering /ping" in message
    assert "model_fn failed: ValueError: no weights.npz in model/" in message
    assert all(gone(pid) for pid in pids_in(pids))


def test_a_command_that_never_answers_times_out_and_is_stopped(
        script: list[str], model_dir: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    runner = ProcessRunner(script, env={"FAKE_MODE": "hang", "FAKE_PIDS": str(pids)},
                           startup_timeout=1, stop_grace=1)
    with pytest.raises(ServerStartError, match=r"did not answer /ping with 200 \(healthy\) "
                                               r"within 1 s"):
        runner.start(model_dir, {})
    assert pids_in(pids) and all(gone(pid) for pid in pids_in(pids))


def test_unhealthy_200_is_not_ready(script: list[str], model_dir: Path) -> None:
    runner = ProcessRunner(script, env={"FAKE_MODE": "loading"}, startup_timeout=30)
    (container,) = runner.start(model_dir, {})
    # start() returned after the three "Unhealthy" answers: the next one is healthy.
    with container, urllib.request.urlopen(container.url + "/ping", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "Healthy"}
    assert gone(container.pid)


def test_stop_ends_every_descendant_even_in_another_group(script: list[str], model_dir: Path,
                                           tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    runner = ProcessRunner(script, env={"FAKE_MODE": "child", "FAKE_PIDS": str(pids)},
                           startup_timeout=30)
    (container,) = runner.start(model_dir, {})
    server, child = pids_in(pids)
    assert not gone(child)
    container.stop()
    container.stop()  # twice is fine
    deadline = time.monotonic() + 30  # a safety net: the loop ends when the child is gone
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(server) and gone(child)


def test_one_failing_container_stops_the_others(script: list[str], model_dir: Path,
                                                tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    env = {"FAKE_MODE": "one-fails", "FAKE_PIDS": str(pids), "FAKE_LOCK": str(tmp_path / "lk")}
    runner = ProcessRunner(script, env=env, startup_timeout=30, start_attempts=1)
    with pytest.raises(ServerStartError, match="exited with code 4"):
        runner.start(model_dir, {}, count=2)
    assert len(pids_in(pids)) == 2
    assert all(gone(pid) for pid in pids_in(pids))


def test_a_start_that_fails_outside_the_model_is_tried_again_on_a_new_port(
        script: list[str], model_dir: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    lines: list[str] = []
    env = {"FAKE_MODE": "flaky", "FAKE_PIDS": str(pids), "FAKE_LOCK": str(tmp_path / "lk")}
    runner = ProcessRunner(script, env=env, startup_timeout=30, log=lines.append)
    (container,) = runner.start(model_dir, {})
    with container, urllib.request.urlopen(container.url + "/ping", timeout=5) as resp:
        assert resp.status == 200
    first, second = pids_in(pids)
    assert gone(first) and gone(second)
    assert any("trying again on another port (2 of 3)" in line for line in lines)


def test_a_start_that_keeps_failing_outside_the_model_names_every_try(
        script: list[str], model_dir: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    env = {"FAKE_MODE": "one-fails", "FAKE_PIDS": str(pids), "FAKE_LOCK": str(tmp_path / "lk")}
    os.close(os.open(tmp_path / "lk", os.O_CREAT))  # every start refuses
    runner = ProcessRunner(script, env=env, startup_timeout=30, start_attempts=2)
    with pytest.raises(ServerStartError) as caught:
        runner.start(model_dir, {})
    assert "second container refuses to start" in caught.value.message  # its own words
    assert "Earlier tries of this container, each on a new port: try 1:" in caught.value.message
    assert len(pids_in(pids)) == 2
    assert all(gone(pid) for pid in pids_in(pids))


def test_a_model_that_fails_to_load_is_not_tried_again(script: list[str], model_dir: Path,
                                                        tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    runner = ProcessRunner(script, env={"FAKE_MODE": "model-fails", "FAKE_PIDS": str(pids)},
                           startup_timeout=30)
    with pytest.raises(ServerStartError, match="the model failed to load: ValueError"):
        runner.start(model_dir, {})
    assert len(pids_in(pids)) == 1


def test_log_lines_are_streamed_to_the_callback(script: list[str], model_dir: Path) -> None:
    lines: list[str] = []
    runner = ProcessRunner(script, env={}, startup_timeout=30, log=lines.append,
                           keep_files=True)
    (container,) = runner.start(model_dir, {})
    container.stop()
    assert any(line.startswith("[container 0] fake server starting") for line in lines)
    assert container.log_path.exists()  # keep_files


def test_a_missing_command_or_model_dir_is_a_start_error(model_dir: Path) -> None:
    with pytest.raises(ServerStartError, match="cannot start container 0"):
        ProcessRunner(["/nonexistent/smserve"], env={}).start(model_dir, {})
    with pytest.raises(ServerStartError, match="does not exist"):
        ProcessRunner(["true"], env={}).start(model_dir / "nope", {})


@pytest.mark.parametrize(
    ("status", "body", "ready"),
    [(200, b"", True), (200, b'{"status": "Healthy"}', True),
     (200, b'{"status": "Unhealthy"}', False), (200, b'{"status": "Partial Healthy"}', False),
     (503, b"", False), (200, b"Unhealthy", False)],
)
def test_is_healthy(status: int, body: bytes, ready: bool) -> None:
    assert is_healthy(status, body) is ready
