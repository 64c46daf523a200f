"""The real model server (multi-model-server through ``serve.start``) over HTTP.

One server on ``models/frame_features`` serves most tests in this module; the
stack is the session's moto server. Other tests start a server of their own
only where they must (a model that fails to load, the ``/opt/ml`` layout,
SIGTERM to ``serve_forever``).
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import psutil
import pytest
import requests

from local_test.clips import upload_clips
from serving.aws import ClientFactory
from serving.errors import ServerStartError
from serving.local.stack import LOCAL_CREDENTIALS, LocalStack
from serving.package import stage
from serving.ports import free_port, is_free
from serving.server import mms, serve
from serving.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FRAME_FEATURES = ROOT / "models" / "frame_features"
FRAMES = 8
FEATURE_DIM = 64
MB = 1024 * 1024
RESPONSE_TIMEOUT = "77"
HTTP_TIMEOUT = 60
#: A model that fails to load must stop the server within this many seconds.
FAIL_FAST_S = 15.0


# --- fixtures ------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """What the module's tests read from S3."""

    bucket: str
    other_bucket: str
    clips: list[str]
    pickled: str
    flat: str


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def s3(stack: LocalStack) -> Any:
    """An S3 client for the stack (credentials passed in, not set in os.environ)."""
    session = boto3.session.Session(
        aws_access_key_id=LOCAL_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=LOCAL_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=LOCAL_CREDENTIALS["AWS_SESSION_TOKEN"],
    )
    return ClientFactory(Settings.from_environ(stack.environ()), session=session).client("s3")


@pytest.fixture(scope="module")
def data(s3: Any) -> Data:
    """A bucket on the allow-list with clips and bad arrays, and one that is not on it."""
    tag = uuid.uuid4().hex[:8]
    bucket, other = f"it-server-{tag}", f"it-server-other-{tag}"
    for name in (bucket, other):
        s3.create_bucket(Bucket=name)
    clips = upload_clips(s3, bucket, "clips/", 2, frames=FRAMES)
    pickled, flat = "clips/pickled.npy", "clips/flat.npy"
    s3.put_object(Bucket=bucket, Key=pickled,
                  Body=_npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True))
    s3.put_object(Bucket=bucket, Key=flat, Body=_npy(np.zeros((32, 32), dtype=np.uint8)))
    s3.put_object(Bucket=other, Key=clips[0], Body=s3.get_object(
        Bucket=bucket, Key=clips[0])["Body"].read())
    return Data(bucket, other, clips, pickled, flat)


@pytest.fixture(scope="module")
def server_environ(stack: LocalStack, data: Data) -> dict[str, str]:
    """The environment a server gets: ours (PATH, for java), the stack's, SageMaker's."""
    return {
        **os.environ,
        **stack.environ(),
        "SMSERVE_ALLOWED_BUCKETS": data.bucket,
        "SMSERVE_OUTPUT_PREFIXES": "results/",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "1",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": RESPONSE_TIMEOUT,
        "SMSERVE_STARTUP_TIMEOUT": "120",
    }


@dataclass
class Running:
    """The module's server and every line MMS printed."""

    process: serve.ServerProcess
    port: int
    log: list[str]
    start_s: float

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def run_dir(self) -> Path:
        return self.process.run_dir


@pytest.fixture(scope="module")
def server(server_environ: dict[str, str]) -> Iterator[Running]:
    """frame_features (source layout, staged into the run dir) on a free port."""
    settings = Settings.from_environ(server_environ)
    port = free_port()
    log: list[str] = []
    started = time.monotonic()
    process = serve.start(settings, FRAME_FEATURES, port, echo=log.append)
    try:
        yield Running(process, port, log, time.monotonic() - started)
    finally:
        process.stop()
        shutil.rmtree(process.run_dir, ignore_errors=True)


# --- helpers -------------------------------------------------------------------


def _post(url: str, body: bytes, content_type: str | None,
          accept: str | None = None) -> requests.Response:
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    return requests.post(url + "/invocations", data=body, headers=headers, timeout=HTTP_TIMEOUT)


def _ping(url: str) -> int:
    return requests.get(url + "/ping", timeout=HTTP_TIMEOUT).status_code


def _keys(s3: Any, bucket: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _load_output(s3: Any, bucket: str, key: str) -> np.ndarray:
    raw = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return np.load(io.BytesIO(raw), allow_pickle=False)


def _mentioning(text: str) -> list[psutil.Process]:
    """Live processes with ``text`` somewhere in their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        if any(text in part for part in proc.info.get("cmdline") or ()):
            found.append(proc)
    return found


def _left_behind(text: str, timeout: float = 10.0) -> list[str]:
    """Processes still mentioning ``text`` once ``timeout`` has passed (SIGKILL is quick)."""
    deadline = time.monotonic() + timeout
    while True:
        left = _mentioning(text)
        if not left or time.monotonic() > deadline:
            return [" ".join(p.info.get("cmdline") or ())[:200] for p in left]
        time.sleep(0.1)


# --- the healthy server ----------------------------------------------------------


def test_ping_answers_200(server: Running) -> None:
    resp = requests.get(server.url + "/ping", timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200
    assert resp.json() == {"status": "Healthy"}
    assert server.start_s < 60


def test_server_processes_carry_the_run_dir(server: Running) -> None:
    """What the no-process-left-behind checks below rely on: MMS names its run dir."""
    cmdlines = [" ".join(p.info["cmdline"]) for p in _mentioning(str(server.run_dir))]
    assert any("com.amazonaws.ml.mms.ModelServer" in c for c in cmdlines), cmdlines
    assert any("model_service_worker" in c for c in cmdlines), cmdlines


def test_config_properties_honour_sagemaker_variables(server: Running) -> None:
    text = (server.run_dir / "config.properties").read_text()
    props = dict(line.split("=", 1) for line in text.splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["default_response_timeout"] == RESPONSE_TIMEOUT
    assert props["default_workers_per_model"] == "1"
    # Our handler enforces the limit (a JSON 413); MMS's own cap is twice it.
    assert props["max_request_size"] == str(2 * MB)
    assert props["inference_address"] == f"http://127.0.0.1:{server.port}"
    assert props["default_service_handler"] == mms.HANDLER_SERVICE
    # ...and MMS read them.
    log = "\n".join(server.log)
    assert "Default workers per model: 1" in log
    assert f"Maximum Request Size: {2 * MB}" in log


def test_properties_follow_settings_without_a_server() -> None:
    settings = Settings.from_environ({
        "SAGEMAKER_MODEL_SERVER_TIMEOUT": "5",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "3",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "7",
    })
    lines = mms.properties(settings, 23456).splitlines()
    assert "default_response_timeout=5" in lines
    assert "default_workers_per_model=3" in lines
    assert f"max_request_size={2 * 7 * MB}" in lines  # the handler enforces 7 MB itself
    assert "inference_address=http://127.0.0.1:23456" in lines

    defaults = mms.properties(Settings.from_environ({}), 23456)
    assert "default_response_timeout=60" in defaults.splitlines()
    assert "default_workers_per_model" not in defaults  # MMS's own default
    # MMS's default limit, 6,553,500 bytes, is enforced by our handler (the
    # reference page's trap, reproduced with a clear 413); MMS's cap is twice it.
    assert "max_request_size=13107000" in defaults.splitlines()


def test_request_writes_features_then_skips_then_overwrites(server: Running, data: Data,
                                                            s3: Any) -> None:
    key = "results/frame_features/clip-000.npy"
    record = {"bucket": data.bucket, "inputs": {"video": data.clips[0]}, "output_path": key}

    first = _post(server.url, json.dumps(record).encode(), "application/json")
    assert first.status_code == 200, first.text
    assert first.headers["Content-Type"].startswith("application/json")
    answer = first.json()
    assert answer["status"] == "written"
    assert (answer["bucket"], answer["key"]) == (data.bucket, key)
    features = _load_output(s3, data.bucket, key)
    assert features.shape == (FRAMES, FEATURE_DIM)
    assert features.dtype == np.float32
    assert answer["bytes"] == s3.head_object(Bucket=data.bucket, Key=key)["ContentLength"]

    again = _post(server.url, json.dumps(record).encode(), "application/json")
    assert again.status_code == 200, again.text
    assert again.json() == {**answer, "status": "skipped"}

    forced = _post(server.url, json.dumps({**record, "overwrite": True}).encode(),
                   "application/json")
    assert forced.status_code == 200, forced.text
    assert forced.json()["status"] == "written"
    np.testing.assert_array_equal(_load_output(s3, data.bucket, key), features)


def test_json_lines_body_gets_one_result_per_record(server: Running, data: Data,
                                                    s3: Any) -> None:
    records: list[dict[str, Any]] = [{"bucket": data.bucket, "inputs": {"video": clip},
                "output_path": f"results/jsonlines/{i}.npy"} for i, clip in enumerate(data.clips)]
    body = "".join(json.dumps(r) + "\n" for r in records).encode()

    resp = _post(server.url, body, "application/jsonlines", accept="application/jsonlines")

    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("application/jsonlines")
    results = [json.loads(line) for line in resp.text.splitlines()]
    assert [(r["status"], r["key"]) for r in results] == [
        ("written", rec["output_path"]) for rec in records]
    for rec in records:
        assert _load_output(s3, data.bucket, rec["output_path"]).shape == (FRAMES, FEATURE_DIM)


# --- bad input -------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request the server must refuse, and what the refusal must say."""

    body: Callable[[Data], bytes]
    content_type: str | None
    status: int
    error: str
    hint: str


def _record(**changes: Any) -> Callable[[Data], bytes]:
    def make(data: Data) -> bytes:
        record: dict[str, Any] = {"bucket": data.bucket, "inputs": {"video": data.clips[1]},
                                  "output_path": "results/bad/out.npy"}
        for name, value in changes.items():
            value = value(data) if callable(value) else value
            if value is None:
                record.pop(name)
            else:
                record[name] = value
        return json.dumps(record).encode()

    return make


BAD: dict[str, Bad] = {
    "malformed-json": Bad(lambda d: b'{"bucket": "x", "inputs": ', "application/json", 400,
                          "BadRequest", "not valid JSON"),
    "missing-output-path": Bad(_record(output_path=None), "application/json", 400,
                               "BadRequest", "'output_path' is missing"),
    "bucket-not-allowed": Bad(_record(bucket=lambda d: d.other_bucket), "application/json", 403,
                              "Forbidden", "SMSERVE_ALLOWED_BUCKETS"),
    "dotdot-output": Bad(_record(output_path="results/../escaped.npy"), "application/json", 403,
                         "Forbidden", "'..'"),
    "absolute-output": Bad(_record(output_path="/results/bad/out.npy"), "application/json", 403,
                           "Forbidden", "drop the leading '/'"),
    "output-outside-prefix": Bad(_record(output_path="elsewhere/out.npy"), "application/json",
                                 403, "Forbidden", "SMSERVE_OUTPUT_PREFIXES"),
    "missing-input-object": Bad(_record(inputs={"video": "clips/no-such-clip.npy"}),
                                "application/json", 404, "InputNotFound", "does not exist"),
    "pickled-npy": Bad(_record(inputs=lambda d: {"video": d.pickled}), "application/json", 400,
                       "BadRequest", "allow_pickle=False"),
    "wrong-shape": Bad(_record(inputs=lambda d: {"video": d.flat}), "application/json", 422,
                       "InvalidInput", "expected T x H x W x 3"),
    "text-plain": Bad(_record(), "text/plain", 415, "UnsupportedContentType",
                      "application/json or application/jsonlines"),
    "xml": Bad(lambda d: b"<record/>", "application/xml", 415, "UnsupportedContentType",
               "application/json or application/jsonlines"),
    "no-content-type": Bad(_record(), None, 400, "BadRequest", "set it to the type of the body"),
}


#: Cases about one record: the answer is a 200 with that record ``failed`` (per-record outcomes).
PER_RECORD = {"missing-output-path", "bucket-not-allowed", "dotdot-output", "absolute-output",
              "output-outside-prefix", "missing-input-object", "pickled-npy", "wrong-shape"}


@pytest.mark.parametrize("case", [c for n, c in BAD.items() if n in PER_RECORD],
                         ids=[n for n in BAD if n in PER_RECORD])
def test_a_bad_record_is_answered_failed_and_writes_no_output(server: Running, data: Data,
                                                              s3: Any, case: Bad) -> None:
    before = {b: _keys(s3, b) for b in (data.bucket, data.other_bucket)}
    good = {"bucket": data.bucket, "inputs": {"video": data.clips[0]},
            "output_path": f"results/bad/good-{case.error}-{case.status}.npy", "overwrite": True}
    body = case.body(data) + b"\n" + json.dumps(good).encode()

    resp = _post(server.url, body, "application/jsonlines")

    assert resp.status_code == 200, resp.text
    assert "Traceback" not in resp.text
    bad, ok = [json.loads(line) for line in resp.text.splitlines()]
    assert (bad["status"], bad["error"]) == ("failed", case.error), bad
    assert case.hint in bad["message"]
    assert ok["status"] == "written"  # its neighbour is written whatever it does
    assert _ping(server.url) == 200
    after = {b: _keys(s3, b) for b in before}
    new = set(after[data.bucket]) - set(before[data.bucket])
    assert good["output_path"] in new
    # nothing of the bad record but, where it may write, its error document
    assert new - {good["output_path"]} <= {"results/bad/out.npy.error.json"}
    assert after[data.other_bucket] == before[data.other_bucket]
    s3.delete_object(Bucket=data.bucket, Key=good["output_path"])
    s3.delete_object(Bucket=data.bucket, Key="results/bad/out.npy.error.json")


@pytest.mark.parametrize("case", [c for n, c in BAD.items() if n not in PER_RECORD],
                         ids=[n for n in BAD if n not in PER_RECORD])
def test_bad_input_is_refused_with_a_json_error(server: Running, data: Data, s3: Any,
                                                case: Bad) -> None:
    before = {b: _keys(s3, b) for b in (data.bucket, data.other_bucket)}

    resp = _post(server.url, case.body(data), case.content_type)

    if case.content_type is None:
        assert "Content-Type" not in resp.request.headers
    assert resp.status_code == case.status, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    assert "Traceback" not in resp.text
    body = resp.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == case.error
    assert case.hint in body["message"]
    assert _ping(server.url) == 200
    assert {b: _keys(s3, b) for b in before} == before


def test_body_over_the_payload_limit_gets_a_json_413(server: Running, data: Data,
                                                     s3: Any) -> None:
    """Over SAGEMAKER_MAX_PAYLOAD_IN_MB: 413 with a message naming the limit."""
    before = _keys(s3, data.bucket)
    record = _record(output_path="results/bad/too-big.npy")(data)
    body = record + b" " * (3 * MB // 2 - len(record))  # valid JSON, 1.5 MB

    resp = _post(server.url, body, "application/json")

    assert resp.status_code == 413, resp.text[:300]
    assert resp.json()["error"] == "PayloadTooLarge"
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in resp.json()["message"]
    assert f"{MB:,}" in resp.json()["message"]
    assert "Traceback" not in resp.text
    assert _ping(server.url) == 200
    assert _keys(s3, data.bucket) == before
    # The server still answers real work afterwards.
    small = _post(server.url, _record(output_path="results/after-413.npy")(data),
                  "application/json")
    assert small.status_code == 200, small.text


# --- start-up failures -------------------------------------------------------------


def _model_folder(root: Path, serving_py: str) -> Path:
    folder = root / "model-src"
    folder.mkdir()
    (folder / "serving.py").write_text(textwrap.dedent(serving_py))
    return folder


BROKEN: dict[str, tuple[str, str]] = {
    "model-fn-raises": ("""
        def model_fn(model_dir):
            raise RuntimeError("no weights here")

        def predict_fn(data, model):
            return data
    """, "no weights here"),
    "syntax-error": ("""
        def model_fn(model_dir:
            return None
    """, "syntax error"),
    "missing-module": ("""
        import smserve_no_such_module_xyz

        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return data
    """, "smserve_no_such_module_xyz"),
}


@pytest.mark.parametrize("source,cause", list(BROKEN.values()), ids=list(BROKEN))
def test_model_that_fails_to_load_stops_the_server_fast(server_environ: dict[str, str],
                                                        tmp_path: Path, source: str,
                                                        cause: str) -> None:
    folder = _model_folder(tmp_path, source)
    run_dir = tmp_path / "run"
    # Fast means on the worker's word, not at the start-up timeout: with an hour's
    # timeout, only the model_error.txt the worker wrote can end start().
    settings = Settings.from_environ({**server_environ, "SMSERVE_STARTUP_TIMEOUT": "3600"})

    with pytest.raises(ServerStartError) as caught:
        serve.start(settings, folder, free_port(), run_dir=run_dir, echo=lambda line: None)

    assert "the model failed to load" in str(caught.value)
    assert cause in str(caught.value)
    assert cause in (run_dir / "model_error.txt").read_text()
    assert _left_behind(str(run_dir)) == []


def test_port_in_use_is_refused_before_anything_starts(server_environ: dict[str, str],
                                                       tmp_path: Path) -> None:
    settings = Settings.from_environ(server_environ)
    run_dir = tmp_path / "run"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServerStartError) as caught:
            serve.start(settings, FRAME_FEATURES, port, run_dir=run_dir)
    assert f"port {port}" in str(caught.value)
    assert "--port" in str(caught.value)
    assert not run_dir.exists()


# --- the image's entry point ---------------------------------------------------------


def test_no_model_argument_without_a_model_says_where_to_put_it(
        server_environ: dict[str, str], tmp_path: Path) -> None:
    settings = Settings.from_environ({**server_environ, "SAGEMAKER_BASE_DIR": str(tmp_path)})
    with pytest.raises(ServerStartError) as caught:
        serve.start(settings, None, free_port(), run_dir=tmp_path / "run")
    assert str(tmp_path / "model" / "code" / "serving.py") in str(caught.value)
    assert "SAGEMAKER_BASE_DIR" in str(caught.value)


def test_no_model_argument_serves_the_base_dir_model(server_environ: dict[str, str],
                                                     data: Data, s3: Any,
                                                     tmp_path: Path) -> None:
    base = tmp_path / "opt-ml"
    stage(FRAME_FEATURES, base / "model")
    settings = Settings.from_environ({**server_environ, "SAGEMAKER_BASE_DIR": str(base)})

    process = serve.start(settings, None, free_port(), echo=lambda line: None)
    try:
        assert _ping(process.url) == 200
        assert (process.run_dir / "model_ready.txt").read_text() == str((base / "model")
                                                                         .resolve())
        assert not (process.run_dir / "model").exists()  # served in place, not staged
        key = "results/base-dir/clip-001.npy"
        resp = _post(process.url, _record(output_path=key)(data), "application/json")
        assert resp.status_code == 200, resp.text
        assert resp.json()["status"] == "written"
        assert _load_output(s3, data.bucket, key).shape == (FRAMES, FEATURE_DIM)
    finally:
        process.stop()
        shutil.rmtree(process.run_dir, ignore_errors=True)
    assert _left_behind(str(process.run_dir)) == []


# --- SIGTERM ---------------------------------------------------------------------------


def _smserve_serve(folder: Path, port: int) -> list[str]:
    """``smserve serve FOLDER --port N``: serve_forever behind the CLI, as the runner starts it."""
    return [sys.executable, "-m", "serving.cli", "serve", str(folder), "--port", str(port)]


def _kill(proc: subprocess.Popen[Any], children: list[psutil.Process]) -> None:
    """Kill ``proc`` and ``children`` where they still run."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for child in children:
        if child.is_running():
            child.kill()


def test_sigterm_stops_smserve_serve_cleanly(server_environ: dict[str, str]) -> None:
    port = free_port()
    proc = subprocess.Popen(_smserve_serve(FRAME_FEATURES, port), cwd=ROOT, env=server_environ,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    output: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip())
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, "smserve serve exited early:\n" + "\n".join(output[-30:])
            output.append(line)
            if "model ready" in line:
                break
        assert _ping(f"http://127.0.0.1:{port}") == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("java" in " ".join(c.cmdline()) for c in children)

        proc.send_signal(signal.SIGTERM)

        assert proc.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        assert is_free(port)
    finally:
        _kill(proc, children)


def test_sigterm_while_the_model_loads_stops_promptly(server_environ: dict[str, str],
                                                      tmp_path: Path) -> None:
    """A stop request during a slow model_fn must not wait for the load to finish."""
    marker = tmp_path / "loading"
    folder = _model_folder(tmp_path, f"""
        import pathlib, time

        def model_fn(model_dir):
            pathlib.Path({str(marker)!r}).write_text("loading")
            time.sleep(120)

        def predict_fn(data, model):
            return data
    """)
    proc = subprocess.Popen(_smserve_serve(folder, free_port()), cwd=ROOT, env=server_environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, f"smserve serve exited with {proc.returncode}"
            assert time.monotonic() < deadline, "model_fn never started"
            time.sleep(0.1)
        children = psutil.Process(proc.pid).children(recursive=True)

        proc.send_signal(signal.SIGTERM)

        assert proc.wait(timeout=FAIL_FAST_S) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        _kill(proc, children)
