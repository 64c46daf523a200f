"""Checked against a peer: the SageMaker SDK's local-mode data plane and ours, side by side.

Both data planes run the same ``CreateTransformJob`` request over the same
input objects (the embedded stack's S3) against the same recording server:
a small HTTP "container" that records each request's headers and body and
answers deterministically (the body upper-cased; ``500`` for a body with
``boom``; a 2.5 s pause for ``slow``). The tests compare the requests each
sent and the outputs each wrote. Where they differ, the difference is one
the reference page documents (``shared/reference/batch-transform.md``, "What
the SDK's local mode gets wrong"), asserted explicitly, so a change on
either side shows up here.

The peer is ``sagemaker-core``'s local mode (``sagemaker/core/local/``),
read from the installed distribution; the test skips, saying so, when it is
not installed. Importing ``sagemaker.core`` would pull in the whole SDK, so
its files are laid out in a private directory instead and run in a
subprocess:

- verbatim: ``local/entities.py`` (``_LocalTransformJob``),
  ``local/data.py`` (listing, splitters, batch strategies), ``local/utils.py``
  (``move_to_destination``);
- lifted unchanged, function by function, from the SDK's own files:
  ``download_folder`` and the helpers it calls, ``get_config_value``,
  ``s3_path_join``, ``Session.upload_data``, ``LocalSagemakerRuntimeClient``
  (the HTTP client that calls ``/invocations``);
- patched: ``_SageMakerContainer`` starts nothing (the server is already
  running) and records what it was asked; ``get_docker_host()`` answers
  ``127.0.0.1`` (no ``docker context`` lookup); a session stand-in holds the
  local-mode config (``serving_port``, ``container_root``), an S3 resource on
  the stack and ``describe_model``; package ``__init__`` files are empty.

:class:`SdkLocalMode` is also what ``bench/local_transform.py`` uses.
"""

from __future__ import annotations

import ast
import gzip
import importlib.metadata
import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import QuietHandler, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
SDK_DISTRIBUTION = "sagemaker-core"
SDK_REQUIREMENT = "sagemaker-core==2.27.0"
JOB = "diff-job"

# --- the recording server ------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request the server got."""

    tag: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RecordingServer:
    """A deterministic "container" in a thread that records every request.

    Args:
        execution_parameters: the JSON ``/execution-parameters`` answers (None: 404).
        slow_seconds: how long a body containing ``slow`` waits.
    """

    def __init__(self, execution_parameters: Mapping[str, Any] | None = None,
                 slow_seconds: float = 2.5) -> None:
        self.execution_parameters = execution_parameters
        self.slow_seconds = slow_seconds
        self.tag = ""
        self.requests: list[Recorded] = []
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server.record(self.command, self.path, self.headers.items(), b"")
                if self.path == "/ping":
                    self._answer(200, b"")
                elif self.path == "/execution-parameters" and server.execution_parameters:
                    self._answer(200, json.dumps(server.execution_parameters).encode())
                else:
                    self._answer(404, b"")

            def do_POST(self) -> None:
                body = self._body()
                tag = server.record(self.command, self.path, self.headers.items(), body)
                server.enter(tag, +1)
                try:
                    if b"slow" in body:
                        time.sleep(server.slow_seconds)
                    if b"boom" in body:
                        self._answer(500, b'{"error": "PredictionError", "message": "boom"}')
                    else:
                        self._answer(200, body.upper())
                finally:
                    server.enter(tag, -1)

        self.server, self.thread = serve_in_thread(Handler)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def record(self, method: str, path: str, headers: Any, body: bytes) -> str:
        with self.lock:
            self.requests.append(Recorded(self.tag, method, path,
                                          {k.lower(): v for k, v in headers}, body))
            return self.tag

    def enter(self, tag: str, step: int) -> None:
        with self.lock:
            self.in_flight[tag] = self.in_flight.get(tag, 0) + step
            self.max_in_flight[tag] = max(self.max_in_flight.get(tag, 0), self.in_flight[tag])

    def of(self, tag: str, path: str = "/invocations") -> list[Recorded]:
        """The requests to ``path`` made while ``tag`` was set."""
        return [r for r in self.requests if r.tag == tag and r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the SDK's local mode, without Docker and without the rest of the SDK -----------------------


class SdkUnavailable(Exception):
    """The SDK's local mode cannot be laid out here (the message says why)."""


@dataclass
class SdkRun:
    """What one SDK local-mode job did.

    Attributes:
        state: ``_LocalTransformJob.state`` afterwards (``Completed`` or ``Creating``).
        error: the exception it raised, as ``Type: message``; None when it returned.
        seconds: wall time of ``_LocalTransformJob.start`` (listing to upload).
        container: what the container stand-in was asked (init, serve, stop_serving).
    """

    state: str
    error: str | None
    seconds: float
    container: list[dict[str, Any]] = field(default_factory=list)

    def calls(self, name: str) -> list[dict[str, Any]]:
        return [c for c in self.container if c["call"] == name]


def _lift(source: str, names: list[str], where: str, inside: str | None = None) -> str:
    """The source of the top-level ``names`` (or methods of class ``inside``), dedented."""
    body = ast.parse(source).body
    if inside is not None:
        classes = [n for n in body if isinstance(n, ast.ClassDef) and n.name == inside]
        if not classes:
            raise SdkUnavailable(f"class {inside} not found in {where}")
        body = classes[0].body
    found: dict[str, str] = {}
    for node in body:
        name = None
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            name = node.name
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
        if name in names:
            found[name] = textwrap.dedent(ast.get_source_segment(source, node, padded=True) or "")
    missing = [n for n in names if n not in found]
    if missing:
        raise SdkUnavailable(f"{', '.join(missing)} not found in {where}")
    return "\n\n".join(found[n] for n in names) + "\n"


def _sdk_driver() -> None:  # pragma: no cover - runs in the child process
    """Run one job (a JSON file named by argv[1]) through the SDK's local mode; print JSON."""
    import json
    import sys
    import time
    from pathlib import Path

    import boto3
    import sagemaker.core.common_utils  # data.py reaches both as attributes
    import sagemaker.core.config.config_manager  # noqa: F401
    import sagemaker.core.local.local_session as local_session
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.local import entities, utils

    job = json.loads(Path(sys.argv[1]).read_text())
    calls: list[dict[str, object]] = []

    def docker_host() -> str:
        return "127.0.0.1"

    for module in (utils, entities, local_session):
        module.get_docker_host = docker_host

    class Container:
        def __init__(self, instance_type: str, instance_count: int, image: str,
                     sagemaker_session: object = None, **kwargs: object) -> None:
            calls.append({"call": "init", "instance_type": instance_type,
                          "instance_count": instance_count, "image": image})

        def serve(self, model_data: str, environment: dict[str, str]) -> None:
            calls.append({"call": "serve", "environment": dict(environment)})

        def stop_serving(self) -> None:
            calls.append({"call": "stop_serving"})

    entities._SageMakerContainer = Container

    class LocalSession(Session):
        def __init__(self) -> None:
            self.config = {"local": {"serving_port": job["port"],
                                     "container_root": job["workdir"]}}
            self.boto_region_name = job["region"]
            self.boto_session = boto3.Session(region_name=job["region"])
            self.s3_resource = self.boto_session.resource("s3", endpoint_url=job["endpoint"])
            self.sagemaker_client = self
            self.sagemaker_runtime_client = local_session.LocalSagemakerRuntimeClient(self.config)

        def describe_model(self, name: str) -> dict[str, object]:
            return {"PrimaryContainer": {"Image": "smserve:local", "Environment": {},
                                         "ModelDataUrl": "s3://unused/model.tar.gz"}}

        def _get_account_id_if_default_bucket(self, bucket: str) -> None:
            return None

    request = job["request"]
    fixed = ("TransformJobName", "ModelName", "TransformInput", "TransformOutput",
             "TransformResources")
    kwargs = {k: v for k, v in request.items() if k not in fixed}
    transform = entities._LocalTransformJob(request["TransformJobName"],
                                            request["ModelName"], LocalSession())
    error = None
    started = time.perf_counter()
    try:  # what LocalSagemakerClient.create_transform_job does
        transform.start(request["TransformInput"], request["TransformOutput"],
                        request["TransformResources"], **kwargs)
    except Exception as err:
        error = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - started
    print(json.dumps({"state": transform.state, "error": error, "seconds": seconds,
                      "container": calls}))


class SdkLocalMode:
    """The SDK's local-mode transform, laid out in ``root`` (see the module docstring).

    Args:
        root: an empty directory to lay the modules out in.

    Raises:
        SdkUnavailable: ``sagemaker-core`` is not installed, or its layout is not
            the one this harness knows.
    """

    def __init__(self, root: Path) -> None:
        try:
            dist = importlib.metadata.distribution(SDK_DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            raise SdkUnavailable(f"{SDK_DISTRIBUTION} is not installed; pip install "
                                 f"'{SDK_REQUIREMENT}' (the dev extras) to compare with the "
                                 "SDK's local mode") from None
        self.version = dist.version
        self.root = root

        def read(rel: str) -> str:
            path = Path(str(dist.locate_file(rel)))
            if not path.is_file():
                raise SdkUnavailable(f"{SDK_DISTRIBUTION} {dist.version} has no {rel}; this "
                                     f"harness knows the layout of {SDK_REQUIREMENT}")
            return path.read_text()

        core = "sagemaker/core/"
        utils_src = read(core + "common_utils.py")
        files = {
            "sagemaker/__init__.py": "",
            core + "__init__.py": "",
            core + "config/__init__.py": "",
            core + "helper/__init__.py": "",
            core + "local/__init__.py": "",
            core + "local/data.py": read(core + "local/data.py"),
            core + "local/entities.py": read(core + "local/entities.py"),
            core + "local/utils.py": read(core + "local/utils.py"),
            core + "local/image.py": "class _SageMakerContainer:  # replaced by the driver\n"
                                     "    pass\n",
            core + "common_utils.py": (
                "from __future__ import annotations\nimport errno\nimport logging\nimport os\n"
                "from os.path import abspath\nimport botocore\nimport botocore.exceptions\n"
                "logger = logging.getLogger(__name__)\n\n" + _lift(
                    utils_src, ["_SENSITIVE_SYSTEM_PATHS", "DeferredError", "get_config_value",
                                "download_folder", "_download_files_under_prefix",
                                "validate_path_within_directory", "format_tags",
                                "_module_import_error"], "common_utils.py")),
            core + "config/config_manager.py": (
                "class SageMakerConfig:\n    @staticmethod\n" + textwrap.indent(_lift(
                    read(core + "config/config_manager.py"), ["get_config_value"],
                    "config_manager.py", inside="SageMakerConfig"), "    ")),
            core + "s3/__init__.py": "from functools import reduce\n\n\n" + _lift(
                read(core + "s3/utils.py"), ["s3_path_join"], "s3/utils.py"),
            core + "helper/session_helper.py": (
                "from __future__ import annotations\nimport os\nfrom typing import Optional\n"
                "from sagemaker.core.s3 import s3_path_join\n\n\nclass Session:\n"
                + textwrap.indent(_lift(read(core + "helper/session_helper.py"),
                                        ["upload_data", "determine_bucket_and_prefix"],
                                        "session_helper.py", inside="Session"), "    ")),
            core + "local/local_session.py": (
                "from __future__ import annotations\nimport logging\n"
                "from sagemaker.core.common_utils import get_config_value, _module_import_error\n"
                "from sagemaker.core.local.utils import get_docker_host\n"
                "logger = logging.getLogger(__name__)\n\n\n"
                "class LocalSession:  # entities imports it; the driver passes its own\n"
                "    pass\n\n\n" + _lift(
                    read(core + "local/local_session.py"), ["LocalSagemakerRuntimeClient"],
                    "local_session.py")),
            "sdk_driver.py": textwrap.dedent(inspect.getsource(_sdk_driver))
            + "\n\n_sdk_driver()\n",
        }
        for rel, text in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def run(self, request: Mapping[str, Any], port: int, environ: Mapping[str, str], *,
            endpoint: str, region: str = "us-east-1", timeout: float = 300) -> SdkRun:
        """Run ``request`` through the SDK's local mode against ``127.0.0.1:port``.

        Args:
            request: a ``CreateTransformJob`` request.
            port: where the (already running) container listens.
            environ: the child's environment (AWS credentials for the stack).
            endpoint: the S3 endpoint URL.
            region: the region.
            timeout: seconds before the child is killed.
        """
        with tempfile.TemporaryDirectory(prefix="sdk-job-") as work:
            job_file = Path(work) / "job.json"
            job_file.write_text(json.dumps({"request": request, "port": port,
                                            "endpoint": endpoint, "region": region,
                                            "workdir": work}))
            env = {**environ, "PYTHONPATH": str(self.root)}
            done = subprocess.run([sys.executable, str(self.root / "sdk_driver.py"),
                                   str(job_file)], env=env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"the SDK driver failed ({done.returncode}):\n{done.stderr}")
        doc = json.loads(lines[-1])
        return SdkRun(doc["state"], doc["error"], doc["seconds"], doc["container"])


def sdk_or_reason(root: Path) -> tuple[SdkLocalMode | None, str]:
    """The harness in ``root``, or None and why not."""
    try:
        return SdkLocalMode(root), ""
    except SdkUnavailable as err:
        return None, str(err)


# --- the comparison ------------------------------------------------------------------------------

pytestmark = pytest.mark.integration
MB = 1_048_576


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> SdkLocalMode:
    harness, reason = sdk_or_reason(tmp_path_factory.mktemp("sdk-local-mode"))
    if harness is None:
        pytest.skip(reason)
    return harness


def request(bucket: str, out: str, change: Callable[[dict[str, Any]], None] | None = None
            ) -> dict[str, Any]:
    """The job both sides run; ``change`` edits it (the same edit for both)."""
    req: dict[str, Any] = {
        "TransformJobName": JOB,
        "ModelName": "diff-model",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                            "S3Uri": f"s3://{bucket}/in/"}},
            "ContentType": "application/jsonlines",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": f"s3://{bucket}/{out}/",
                            "Accept": "application/jsonlines", "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
    }
    if change is not None:
        change(req)
    return req


@dataclass
class Pair:
    """Both runs of one job."""

    server: RecordingServer
    ours: Any  # JobResult
    sdk: SdkRun
    ours_out: dict[str, bytes]
    sdk_out: dict[str, bytes]

    def bodies(self, tag: str) -> list[bytes]:
        return [r.body for r in self.server.of(tag)]

    def sdk_outputs_without_job_level(self) -> dict[str, bytes]:
        """The SDK's outputs with the extra ``job_name/`` level removed (checked there)."""
        assert all(key.startswith(f"{JOB}/") for key in self.sdk_out), self.sdk_out
        return {key.removeprefix(f"{JOB}/"): body for key, body in self.sdk_out.items()}


def _outputs(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []):
        key = item["Key"]
        found[key.removeprefix(prefix)] = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return found


@pytest.fixture()
def compare(stack: Any, clients: Any, bucket: str, sdk: SdkLocalMode
            ) -> Callable[..., Pair]:
    from serving.transform.dataplane import DataPlane
    from serving.transform.spec import TransformJobSpec

    s3 = clients.client("s3")
    environ = {**os.environ, **stack.environ()}

    def run(objects: Mapping[str, bytes], change: Callable[[dict[str, Any]], None] | None = None,
            server: RecordingServer | None = None) -> Pair:
        for key, body in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=body)
        server = server or RecordingServer()
        try:
            server.tag = "ours"
            spec = TransformJobSpec.from_request(request(bucket, "ours", change))
            ours = DataPlane(s3, [server.url], spec, backoff=0, sleep=lambda _s: None).run()
            server.tag = "sdk"
            sdk_run = sdk.run(request(bucket, "sdk", change), server.port, environ,
                              endpoint=stack.endpoint_url)
        finally:
            server.close()
        return Pair(server, ours, sdk_run, _outputs(s3, bucket, "ours/"),
                    _outputs(s3, bucket, "sdk/"))

    return run


def _crashed(run: SdkRun, error: str) -> None:
    """A failure leaves the job ``Creating`` and the container running (never stopped)."""
    assert run.error is not None and run.error.startswith(error), run.error
    assert run.state == "Creating"
    assert run.calls("serve") and not run.calls("stop_serving")


# --- where the two agree --------------------------------------------------------------------------


def test_whole_objects_agree_but_for_the_job_name_level(compare: Callable[..., Pair]) -> None:
    def whole_json(req: dict[str, Any]) -> None:
        req["TransformInput"].update(SplitType="None", ContentType="application/json")
        req["TransformOutput"].update(Accept="application/json", AssembleWith="None")

    pair = compare({"in/a.json": b'{"a": 1}', "in/b.json": b'{"b": [2, "x"]}'}, whole_json)
    assert pair.ours.ok and pair.sdk.state == "Completed" and pair.sdk.error is None
    assert sorted(pair.bodies("ours")) == sorted(pair.bodies("sdk")) == [b'{"a": 1}',
                                                                         b'{"b": [2, "x"]}']
    for tag in ("ours", "sdk"):
        for call in pair.server.of(tag):
            assert (call.headers["content-type"], call.headers["accept"]) == (
                "application/json", "application/json")
        assert len(pair.server.of(tag, "/execution-parameters")) == 1
    assert pair.ours_out == {"a.json.out": b'{"A": 1}', "b.json.out": b'{"B": [2, "X"]}'}
    # Divergence: an extra job_name/ level in the SDK's output keys.
    assert set(pair.sdk_out) == {f"{JOB}/a.json.out", f"{JOB}/b.json.out"}
    assert pair.sdk_outputs_without_job_level() == pair.ours_out
    # Also observed (not on the reference list): the SDK's container environment says
    # SAGEMAKER_BATCH=True and always SAGEMAKER_MAX_CONCURRENT_TRANSFORMS=1.
    from serving.transform.params import container_environment
    from serving.transform.spec import TransformJobSpec

    ours_env = container_environment(TransformJobSpec.from_request(request("bkt", "o")))
    assert ours_env == {"SAGEMAKER_BATCH": "true", "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD",
                        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6"}
    assert pair.sdk.calls("serve")[0]["environment"] == {
        "SAGEMAKER_BATCH": "True", "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "1"}


# --- documented divergences -----------------------------------------------------------------------


def test_listing_is_not_recursive_and_lines_keep_their_newline(
        compare: Callable[..., Pair]) -> None:
    def string_prefix(req: dict[str, Any]) -> None:
        req["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] += "data"

    pair = compare({"in/data/a.jsonl": b'{"a": 1}\n{"b": 2}\n', "in/data/sub/b.jsonl": b"3\n",
                    "in/data-extra.jsonl": b"4\n"}, string_prefix)
    assert pair.ours.ok and pair.sdk.state == "Completed"
    assert set(pair.ours_out) == {"a.jsonl.out", "sub/b.jsonl.out", "-extra.jsonl.out"}
    # Divergence: non-recursive listing (sub/b.jsonl is downloaded, never sent).
    assert set(pair.sdk_outputs_without_job_level()) == {"a.jsonl.out", "-extra.jsonl.out"}
    assert b"3\n" not in pair.bodies("sdk")
    # Divergence: lines read in text mode keep their newline, so a MultiRecord body ends
    # with one and each answer gets a blank line after it.
    assert sorted(pair.bodies("ours")) == [b"3", b"4", b'{"a": 1}\n{"b": 2}']
    assert sorted(pair.bodies("sdk")) == [b"4\n", b'{"a": 1}\n{"b": 2}\n']
    assert pair.ours_out["a.jsonl.out"] == b'{"A": 1}\n{"B": 2}\n'
    assert pair.sdk_outputs_without_job_level()["a.jsonl.out"] == b'{"A": 1}\n{"B": 2}\n\n'


def test_text_mode_rewrites_crlf(compare: Callable[..., Pair]) -> None:
    def csv_single(req: dict[str, Any]) -> None:
        req["TransformInput"]["ContentType"] = "text/csv"
        req["TransformOutput"]["Accept"] = "text/csv"
        req["BatchStrategy"] = "SingleRecord"

    pair = compare({"in/a.csv": b"1,2\r\n3,4\r\n"}, csv_single)
    assert pair.bodies("ours") == [b"1,2\r", b"3,4\r"]  # bytes as they are
    assert pair.bodies("sdk") == [b"1,2\n", b"3,4\n"]  # universal newlines
    assert pair.ours_out == {"a.csv.out": b"1,2\r\n3,4\r\n"}
    assert pair.sdk_outputs_without_job_level() == {"a.csv.out": b"1,2\n\n3,4\n\n"}


def test_text_mode_crashes_on_bytes_that_are_not_utf8(compare: Callable[..., Pair]) -> None:
    pair = compare({"in/a.txt": b"caf\xe9\n"})
    assert pair.ours.ok and pair.bodies("ours") == [b"caf\xe9"]
    assert pair.ours_out == {"a.txt.out": b"CAF\xe9\n"}
    _crashed(pair.sdk, "UnicodeDecodeError")
    assert pair.bodies("sdk") == [] and pair.sdk_out == {}


def test_error_answers_are_written_as_output_without_retries(
        compare: Callable[..., Pair]) -> None:
    def two_retries(req: dict[str, Any]) -> None:
        req["ModelClientConfig"] = {"InvocationsMaxRetries": 2}

    pair = compare({"in/a.jsonl": b'"boom"\n', "in/b.jsonl": b"1\n"}, two_retries)
    # Ours: retried, then the object fails and no .out is written; the other goes on.
    assert pair.bodies("ours").count(b'"boom"') == 3
    assert [o.key for o in pair.ours.failed] == ["in/a.jsonl"]
    assert pair.ours.failed[0].error == ("ServerError: 500 (record 0, 3 tries): "
                                         "PredictionError: boom")
    assert pair.ours_out == {"b.jsonl.out": b"1\n"}
    # SDK: one try, the 500 body written into .out, and the job Completed.
    assert pair.bodies("sdk").count(b'"boom"\n') == 1
    assert pair.sdk.state == "Completed" and pair.sdk.error is None
    assert pair.sdk_outputs_without_job_level() == {
        "a.jsonl.out": b'{"error": "PredictionError", "message": "boom"}\n',
        "b.jsonl.out": b"1\n\n"}


def test_no_invocation_timeout(compare: Callable[..., Pair]) -> None:
    def one_second(req: dict[str, Any]) -> None:
        req["ModelClientConfig"] = {"InvocationsTimeoutInSeconds": 1, "InvocationsMaxRetries": 0}

    pair = compare({"in/a.jsonl": b'"slow"\n'}, one_second)
    assert (pair.ours.failed[0].error or "").startswith("Timeout (record 0, 1 tries)")
    assert pair.ours_out == {}
    assert pair.sdk.state == "Completed" and pair.sdk.seconds >= 2.5  # waited it out
    assert pair.sdk_outputs_without_job_level() == {"a.jsonl.out": b'"SLOW"\n\n'}


def test_multi_record_from_execution_parameters_crashes_the_sdk(
        compare: Callable[..., Pair]) -> None:
    def from_container(req: dict[str, Any]) -> None:
        del req["BatchStrategy"], req["MaxPayloadInMB"]

    server = RecordingServer({"BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 1})
    pair = compare({"in/a.jsonl": b"1\n2\n"}, from_container, server)
    assert pair.ours.ok and pair.bodies("ours") == [b"1\n2"]
    assert pair.ours.params["sources"]["BatchStrategy"] == "execution-parameters"
    _crashed(pair.sdk, "ValueError: Invalid Batch Strategy")
    assert pair.bodies("sdk") == []


def test_payload_is_measured_with_getsizeof(compare: Callable[..., Pair]) -> None:
    def one_mb(req: dict[str, Any]) -> None:
        req["MaxPayloadInMB"] = 1

    # Two 524,270-byte lines: 1,048,541 bytes with the newline between them, under 1 MB.
    # The SDK adds a newline to each (1,048,542 characters) and measures sys.getsizeof,
    # 49 bytes more for an ASCII str: over 1 MB, so it sends them apart.
    line_a, line_b = b"a" * 524_270, b"b" * 524_270
    pair = compare({"in/a.txt": line_a + b"\n" + line_b + b"\n"}, one_mb)
    assert pair.bodies("ours") == [line_a + b"\n" + line_b]
    assert len(pair.bodies("ours")[0]) <= MB
    assert pair.bodies("sdk") == [line_a + b"\n", line_b + b"\n"]


def test_oversize_first_record_sends_an_empty_request(compare: Callable[..., Pair]) -> None:
    def one_mb(req: dict[str, Any]) -> None:
        req["MaxPayloadInMB"] = 1

    big = b"x" * (MB + 10)
    pair = compare({"in/big.txt": big + b"\ny\n"}, one_mb)
    # Ours: the record over the limit fails its object; nothing is sent.
    assert pair.bodies("ours") == [] and pair.ours_out == {}
    assert (pair.ours.failed[0].error or "").startswith("PayloadTooLarge: record 0 is 1048586 "
                                                        "bytes")
    # SDK: an empty request first, then the oversize record anyway, and Completed.
    assert pair.bodies("sdk") == [b"", big + b"\n", b"y\n"]
    assert pair.sdk.state == "Completed"
    assert pair.sdk_outputs_without_job_level() == {
        "big.txt.out": b"\n" + big.upper() + b"\n\n" + b"Y\n\n"}


def test_content_type_is_required_by_the_sdk(compare: Callable[..., Pair]) -> None:
    def no_content_type(req: dict[str, Any]) -> None:
        del req["TransformInput"]["ContentType"]
        req["TransformInput"]["SplitType"] = "None"

    pair = compare({"in/a.bin": b"\x00\x01"}, no_content_type)
    (call,) = pair.server.of("ours")
    assert "content-type" not in call.headers and pair.ours.ok
    _crashed(pair.sdk, "KeyError: 'ContentType'")


def test_data_processing_is_ignored_by_the_sdk(compare: Callable[..., Pair]) -> None:
    def csv_join(req: dict[str, Any]) -> None:
        req["TransformInput"]["ContentType"] = "text/csv"
        req["TransformOutput"]["Accept"] = "text/csv"
        req["DataProcessing"] = {"InputFilter": "$[1:]", "JoinSource": "Input",
                                 "OutputFilter": "$[0,-1]"}

    pair = compare({"in/a.csv": b"id1,1,2\nid2,3,4\n"}, csv_join)
    assert pair.bodies("ours") == [b"1,2\n3,4"]
    assert pair.ours_out == {"a.csv.out": b"id1,2\nid2,4\n"}
    assert pair.bodies("sdk") == [b"id1,1,2\nid2,3,4\n"]
    assert pair.sdk_outputs_without_job_level() == {"a.csv.out": b"ID1,1,2\nID2,3,4\n\n"}


def test_compression_is_ignored_by_the_sdk(compare: Callable[..., Pair]) -> None:
    def gzip_whole(req: dict[str, Any]) -> None:
        req["TransformInput"].update(CompressionType="Gzip", SplitType="None",
                                     ContentType="application/json")

    packed = gzip.compress(b'{"a": 1}')
    pair = compare({"in/a.json.gz": packed}, gzip_whole)
    assert pair.bodies("ours") == [b'{"a": 1}']
    assert pair.bodies("sdk") == [packed]


def test_manifest_file_is_read_as_data_by_the_sdk(compare: Callable[..., Pair],
                                                  bucket: str) -> None:
    def manifest_whole(req: dict[str, Any]) -> None:
        source = req["TransformInput"]["DataSource"]["S3DataSource"]
        source.update(S3DataType="ManifestFile", S3Uri=source["S3Uri"] + "m.json")
        req["TransformInput"]["SplitType"] = "None"

    manifest = json.dumps([{"prefix": f"s3://{bucket}/in/data/"}, "a.json"]).encode()
    pair = compare({"in/m.json": manifest, "in/data/a.json": b'{"a": 1}'}, manifest_whole)
    assert pair.bodies("ours") == [b'{"a": 1}']
    assert pair.ours_out == {"a.json.out": b'{"A": 1}\n'}
    assert pair.bodies("sdk") == [manifest]
    assert set(pair.sdk_outputs_without_job_level()) == {"m.json.out"}


def test_kms_concurrency_and_instance_count_are_ignored_by_the_sdk(
        compare: Callable[..., Pair], clients: Any, bucket: str) -> None:
    def settings(req: dict[str, Any]) -> None:
        req.update(BatchStrategy="SingleRecord", MaxConcurrentTransforms=4)
        req["TransformOutput"]["KmsKeyId"] = "arn:aws:kms:us-east-1:123456789012:key/k1"
        req["TransformResources"]["InstanceCount"] = 2

    server = RecordingServer(slow_seconds=0.3)
    pair = compare({"in/a.txt": b"slow\n" * 4}, settings, server)
    assert pair.ours.ok and pair.sdk.state == "Completed"
    assert server.max_in_flight["ours"] >= 2 and server.max_in_flight["sdk"] == 1
    s3 = clients.client("s3")
    assert s3.head_object(Bucket=bucket, Key="ours/a.txt.out")["SSEKMSKeyId"].endswith("key/k1")
    assert "ServerSideEncryption" not in s3.head_object(Bucket=bucket,
                                                        Key=f"sdk/{JOB}/a.txt.out")
    assert pair.sdk.calls("init")[0]["instance_count"] == 1
    assert pair.sdk.calls("serve")[0]["environment"]["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] == "1"


def test_tfrecord_is_refused_by_the_sdk(compare: Callable[..., Pair]) -> None:
    from serving.transform._crc32c import masked_crc32c

    head = len(b"rec").to_bytes(8, "little")
    frame = (head + masked_crc32c(head).to_bytes(4, "little") + b"rec"
             + masked_crc32c(b"rec").to_bytes(4, "little"))

    def tfrecord(req: dict[str, Any]) -> None:
        req["TransformInput"]["SplitType"] = "TFRecord"
        req["TransformOutput"]["AssembleWith"] = "None"

    pair = compare({"in/a.tfrecord": frame}, tfrecord)
    assert pair.ours.ok and pair.bodies("ours") == [frame]
    _crashed(pair.sdk, "ValueError: Invalid Split Type: TFRecord")

