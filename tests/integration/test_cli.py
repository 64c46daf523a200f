"""The ``smserve`` command, run as a user runs it: a subprocess, its exit code, its output.

Every command runs with an environment pointed at the embedded stack (the
``stack`` fixture) and carrying a per-module tag, so that after each test we
can tell whether a process it started (a model server, a Java frontend, a
worker, a stack) is still running.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import psutil
import pytest

from local_test.clips import upload_clips
from serving.aws import ClientFactory
from serving.cli import build_parser
from serving.local.stack import LocalStack
from serving.pipeline import output_key
from serving.ports import free_port
from tests.helpers import TAG_VAR, kill_tagged, wait_or_dump

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
#: The command line of a test's own crash in the CLI (an uncaught exception in main()).
CLI_FRAME = 'serving/cli.py", line'


# --- running the command ----------------------------------------------------------------------


def _command() -> list[str]:
    """The installed console script when there is one, else ``python -m serving.cli``."""
    script = Path(sys.executable).with_name("smserve")
    return [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli"]


@pytest.fixture(scope="module")
def tag() -> str:
    """A value only the processes this module starts carry in their environment."""
    return uuid.uuid4().hex


@pytest.fixture(scope="module")
def base_env(stack: LocalStack, tag: str) -> dict[str, str]:
    """A small, explicit environment: the stack, the interpreter's PATH, the tag."""
    env = {k: os.environ[k] for k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "JAVA_HOME")
           if k in os.environ}
    bin_dir = str(Path(sys.executable).parent)
    env.update(stack.environ())
    env.update({
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "/usr/bin:/bin"),
        "SETUPTOOLS_USE_DISTUTILS": "stdlib",
        "SMSERVE_ALLOWED_BUCKETS": "*",
        TAG_VAR: tag,
    })
    return env


def smserve(*args: str, env: Mapping[str, str], timeout: float = 180.0,
            cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``smserve ARGS`` to completion."""
    return subprocess.run([*_command(), *args], env=dict(env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def assert_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str,
                 log_tail: bool = False) -> None:
    """``proc`` exited ``code`` with ``smserve: error: ...`` naming every needle.

    Args:
        log_tail: the message may end with a container's log (which can hold
            the model's own traceback); only a crash of the CLI itself is refused.
    """
    shown = f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == code, shown
    first = proc.stderr.lstrip().splitlines()[0] if proc.stderr.strip() else ""
    assert first.startswith("smserve: error: "), shown
    if log_tail:
        assert CLI_FRAME not in proc.stderr, shown
    else:
        assert "Traceback" not in proc.stderr, shown
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in the message\n{shown}"


# --- no process left behind -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_leftover_processes(tag: str) -> Iterator[None]:
    """After each test, nothing it started (model server, Java, workers, stack) still runs."""
    yield
    described = kill_tagged(tag)
    assert not described, "processes left running:\n" + "\n".join(described)


# --- S3 helpers -------------------------------------------------------------------------------


def _request(bucket: str, video_key: str) -> dict[str, Any]:
    return {"bucket": bucket, "inputs": {"video": video_key},
            "output_path": output_key("frame_features", video_key, suffix=".npy"),
            "overwrite": False}


def _put_requests(s3: Any, bucket: str, key: str, records: list[dict[str, Any]]) -> None:
    body = "".join(json.dumps(r) + "\n" for r in records)
    s3.put_object(Bucket=bucket, Key=key, Body=body.encode())


def _keys(s3: Any, bucket: str, prefix: str = "") -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def _job_env(base_env: dict[str, str], bucket: str) -> dict[str, str]:
    """The environment of a transform that may only touch ``bucket`` and write results/."""
    return {**base_env, "SMSERVE_ALLOWED_BUCKETS": bucket, "SMSERVE_OUTPUT_PREFIXES": "results/"}


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", free_port()))
    sock.listen(1)
    return sock


# --- help --------------------------------------------------------------------------------------


def _command_paths(parser: argparse.ArgumentParser,
                   prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _command_paths(sub, (*prefix, name))


#: Every command and subcommand: the issue's, and whatever serving/commands/ adds.
COMMANDS = sorted({(), ("serve",), ("package",), ("transform",), ("local",), ("local", "up"),
                   ("demo",), *_command_paths(build_parser())})


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "smserve")
def test_help_exits_0(words: tuple[str, ...], base_env: dict[str, str]) -> None:
    proc = smserve(*words, "--help", env=base_env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(" ".join(["usage: smserve", *words])), proc.stdout
    assert proc.stderr == ""


def test_version_and_no_command(base_env: dict[str, str]) -> None:
    proc = smserve("--version", env=base_env, timeout=30)
    assert proc.returncode == 0
    assert proc.stdout.startswith("smserve ")
    proc = smserve(env=base_env, timeout=30)
    assert proc.returncode == 2
    assert "usage: smserve" in proc.stderr and "Traceback" not in proc.stderr


# --- package ----------------------------------------------------------------------------------


def test_package_twice_gives_identical_archives(tmp_path: Path,
                                                base_env: dict[str, str]) -> None:
    first, second = tmp_path / "a" / "model.tar.gz", tmp_path / "b"
    second.mkdir()
    proc = smserve("package", "models/frame_features", "-o", str(first), env=base_env)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {first}" in proc.stdout
    # A folder as -o: the archive goes inside it, under the standard name.
    proc = smserve("package", "models/frame_features", "-o", str(second), env=base_env)
    assert proc.returncode == 0, proc.stderr
    assert first.read_bytes() == (second / "model.tar.gz").read_bytes()

    with tarfile.open(first, "r:gz") as tar:
        names = set(tar.getnames())
        weights = tar.extractfile("weights.npz")
        assert weights is not None
        assert weights.read() == (MODELS / "frame_features" / "weights.npz").read_bytes()
    assert {"weights.npz", "code/serving.py", "code/model.py", "code/model.toml"} <= names
    assert not any(n.endswith(("make_weights.py", "sample_request.json", ".pyc"))
                   for n in names), names


def test_package_missing_folder(tmp_path: Path, base_env: dict[str, str]) -> None:
    missing = tmp_path / "no-such-model"
    out = tmp_path / "model.tar.gz"
    proc = smserve("package", str(missing), "-o", str(out), env=base_env)
    assert_error(proc, 2, str(missing), "models/NAME")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no partial archive either


# --- transform: the good path -----------------------------------------------------------------


def test_transform_writes_one_answer_per_record(clients: ClientFactory, bucket: str,
                                                base_env: dict[str, str]) -> None:
    s3 = clients.client("s3")
    clips = upload_clips(s3, bucket, "videos/", 3)
    first = [_request(bucket, clips[2]), _request(bucket, clips[0])]
    second = [_request(bucket, clips[1])]
    _put_requests(s3, bucket, "requests/a.jsonl", first)
    _put_requests(s3, bucket, "requests/nested/b.jsonl", second)

    proc = smserve("transform", "--model", "models/frame_features",
                   "--input", f"s3://{bucket}/requests/", "--output", f"s3://{bucket}/out/",
                   env=_job_env(base_env, bucket))

    assert proc.returncode == 0, proc.stderr
    assert "2/2 objects ok, 3 records" in proc.stdout
    assert f"s3://{bucket}/out/a.jsonl.out" in proc.stdout
    assert f"s3://{bucket}/out/nested/b.jsonl.out" in proc.stdout
    assert "Traceback" not in proc.stderr
    assert _keys(s3, bucket, "out/") == {"out/a.jsonl.out", "out/nested/b.jsonl.out"}
    for out_key, records in (("out/a.jsonl.out", first), ("out/nested/b.jsonl.out", second)):
        body = s3.get_object(Bucket=bucket, Key=out_key)["Body"].read()
        assert body.endswith(b"\n")
        answers = [json.loads(line) for line in body.decode().splitlines()]
        assert [a["key"] for a in answers] == [r["output_path"] for r in records]
        assert {a["status"] for a in answers} == {"written"}
    for record in first + second:
        raw = s3.get_object(Bucket=bucket, Key=record["output_path"])["Body"].read()
        features = np.load(io.BytesIO(raw), allow_pickle=False)
        assert features.shape == (8, 64) and features.dtype == np.float32
        assert np.isfinite(features).all()


# --- transform: bad input ---------------------------------------------------------------------


def test_transform_empty_input_prefix(clients: ClientFactory, bucket: str,
                                      base_env: dict[str, str]) -> None:
    clients.client("s3").put_object(Bucket=bucket, Key="elsewhere/a.jsonl", Body=b"{}\n")
    uri = f"s3://{bucket}/nothing-here/"
    proc = smserve("transform", "--model", "models/frame_features", "--input", uri,
                   "--output", f"s3://{bucket}/out/", env=_job_env(base_env, bucket))
    assert_error(proc, 4, uri)
    assert _keys(clients.client("s3"), bucket, "out/") == set()


def test_transform_unreadable_model_archive(tmp_path: Path, base_env: dict[str, str]) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"this is not a gzip'd tar\n" * 20)
    proc = smserve("transform", "--model", str(archive), "--input", "s3://some-bucket/in/",
                   "--output", "s3://some-bucket/out/", env=base_env, timeout=60)
    assert_error(proc, 2, str(archive), "smserve package")


def test_transform_missing_model(tmp_path: Path, base_env: dict[str, str]) -> None:
    missing = tmp_path / "models" / "nope"
    proc = smserve("transform", "--model", str(missing), "--input", "s3://some-bucket/in/",
                   "--output", "s3://some-bucket/out/", env=base_env, timeout=60)
    assert_error(proc, 2, str(missing))


BROKEN_HANDLERS = textwrap.dedent('''
    """A model whose model_fn fails, as one with corrupt weights does."""


    def model_fn(model_dir):
        raise RuntimeError("weights.npz is corrupt: {marker}")


    def predict_fn(data, model):
        return data
''')


def test_transform_model_that_fails_to_load(tmp_path: Path, clients: ClientFactory, bucket: str,
                                            base_env: dict[str, str]) -> None:
    marker = uuid.uuid4().hex[:12]
    model = tmp_path / "broken_model"
    model.mkdir()
    (model / "serving.py").write_text(BROKEN_HANDLERS.format(marker=marker))
    s3 = clients.client("s3")
    _put_requests(s3, bucket, "requests/a.jsonl", [_request(bucket, "videos/clip-000.npy")])

    # With an hour's start-up timeout, only the worker's word on model_fn can end the
    # run before the 10-minute guard below.
    env = {**_job_env(base_env, bucket), "SMSERVE_STARTUP_TIMEOUT": "3600",
           "SMSERVE_CONTAINER_STARTUP_TIMEOUT": "3600"}
    proc = smserve("transform", "--model", str(model), "--input", f"s3://{bucket}/requests/",
                   "--output", f"s3://{bucket}/out/", env=env, timeout=600)

    assert_error(proc, 3, f"RuntimeError: weights.npz is corrupt: {marker}", log_tail=True)
    assert "model failed to load" in proc.stderr
    assert _keys(s3, bucket, "out/") == set()


@pytest.mark.parametrize("flag, value", [
    ("--max-payload-mb", "abc"),
    ("--max-payload-mb", "-1"),
    ("--split-type", "Foo"),
    ("--batch-strategy", "Whole"),
    ("--assemble-with", "Comma"),
    ("--compression", "zip"),
    ("--instance-count", "two"),
    ("--max-concurrent", "1.5"),
])
def test_transform_bad_flag_value_is_a_usage_error(flag: str, value: str,
                                                   base_env: dict[str, str]) -> None:
    proc = smserve("transform", "--model", "models/frame_features",
                   "--input", "s3://some-bucket/in/", "--output", "s3://some-bucket/out/",
                   flag, value, env=base_env, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "usage: smserve transform" in proc.stderr
    assert f"argument {flag}: " in proc.stderr and value in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("flag, value, field", [
    ("--instance-count", "0", "InstanceCount"),
    ("--max-payload-mb", "101", "MaxPayloadInMB"),
])
def test_transform_out_of_range_value(flag: str, value: str, field: str,
                                      base_env: dict[str, str]) -> None:
    proc = smserve("transform", "--model", "models/frame_features",
                   "--input", "s3://some-bucket/in/", "--output", "s3://some-bucket/out/",
                   flag, value, env=base_env, timeout=30)
    assert_error(proc, 2, field, value)


def test_transform_requires_model_input_output(base_env: dict[str, str]) -> None:
    proc = smserve("transform", "--input", "s3://some-bucket/in/", env=base_env, timeout=30)
    assert proc.returncode == 2
    assert "--model" in proc.stderr and "--output" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("which, uri", [
    ("--input", "http://some-bucket/in/"),
    ("--input", "some-bucket/in/"),
    ("--output", "/tmp/out/"),
    ("--output", "s3://"),
])
def test_transform_uri_that_is_not_s3(which: str, uri: str, base_env: dict[str, str]) -> None:
    uris = {"--input": "s3://some-bucket/in/", "--output": "s3://some-bucket/out/", which: uri}
    proc = smserve("transform", "--model", "models/frame_features", "--input", uris["--input"],
                   "--output", uris["--output"], env=base_env, timeout=30)
    assert_error(proc, 2, repr(uri), "s3://BUCKET/PREFIX")


def test_transform_record_with_missing_input_object(clients: ClientFactory, bucket: str,
                                                    base_env: dict[str, str]) -> None:
    s3 = clients.client("s3")
    clips = upload_clips(s3, bucket, "videos/", 1)
    missing = "videos/was-never-uploaded.npy"
    _put_requests(s3, bucket, "requests/good.jsonl", [_request(bucket, clips[0])])
    _put_requests(s3, bucket, "requests/missing.jsonl", [_request(bucket, missing)])

    proc = smserve("transform", "--model", "models/frame_features",
                   "--input", f"s3://{bucket}/requests/", "--output", f"s3://{bucket}/out/",
                   env=_job_env(base_env, bucket))

    # A missing input fails its record, not the request: the container answers 200 with that
    # record's outcome, the job completes (as on SageMaker), an error document lands beside
    # the record's output, and the good object is written.
    assert proc.returncode == 0, proc.stderr
    assert _keys(s3, bucket, "out/") == {"out/good.jsonl.out", "out/missing.jsonl.out"}
    answer = json.loads(s3.get_object(Bucket=bucket, Key="out/missing.jsonl.out")["Body"].read())
    outcome = answer[0] if isinstance(answer, list) else answer
    assert outcome["status"] == "failed" and f"s3://{bucket}/{missing}" in outcome["message"]
    failed_output = _request(bucket, missing)["output_path"]
    assert _keys(s3, bucket, "results/") == {_request(bucket, clips[0])["output_path"],
                                            f"{failed_output}.error.json"}


# --- local up ---------------------------------------------------------------------------------


def _end(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` if it still runs; close its pipes."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(5)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def _read_lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_local_up_serves_s3_and_stops_on_signal(signo: int, base_env: dict[str, str]) -> None:
    port = free_port()
    env = {k: v for k, v in base_env.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen([*_command(), "local", "up", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
        exports: dict[str, str] = {}
        deadline = time.monotonic() + 30
        while "AWS_SESSION_TOKEN" not in exports:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail("smserve local up printed no export lines within 30 s")
            if line is None:
                pytest.fail(f"smserve local up exited {proc.wait()}: {proc.stderr.read()}")
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").strip().partition("=")
                exports[name] = value
        assert exports["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"

        # A plain boto3 client, configured only from what was printed.
        s3 = boto3.client("s3", endpoint_url=exports["AWS_ENDPOINT_URL"],
                          region_name=exports["AWS_DEFAULT_REGION"],
                          aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"],
                          aws_session_token=exports["AWS_SESSION_TOKEN"])
        s3.create_bucket(Bucket="local-up-check")
        s3.put_object(Bucket="local-up-check", Key="a/b.txt", Body=b"hello")
        assert s3.get_object(Bucket="local-up-check", Key="a/b.txt")["Body"].read() == b"hello"
        sqs = boto3.client("sqs", endpoint_url=exports["AWS_ENDPOINT_URL"],
                           region_name=exports["AWS_DEFAULT_REGION"],
                           aws_access_key_id=exports["AWS_ACCESS_KEY_ID"],
                           aws_secret_access_key=exports["AWS_SECRET_ACCESS_KEY"])
        assert sqs.create_queue(QueueName="local-up-check")["QueueUrl"]

        proc.send_signal(signo)
        code = wait_or_dump(proc, 20, proc.stderr)
        stderr = proc.stderr.read()
        assert code == 128 + signo, stderr  # as a shell reports a command a signal stopped
        assert "Traceback" not in stderr
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        _end(proc)


def _start_local_up(env: Mapping[str, str]
                    ) -> tuple[subprocess.Popen[str], dict[str, str], queue.Queue[str | None]]:
    """``smserve local up``, the ``export`` lines it printed, and the lines it prints next."""
    proc = subprocess.Popen([*_command(), "local", "up"], env=dict(env), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True).start()
    exports: dict[str, str] = {}
    deadline = time.monotonic() + 30
    while "AWS_SESSION_TOKEN" not in exports:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            _end(proc)
            pytest.fail("smserve local up printed no export lines within 30 s")
        if line is None:
            pytest.fail(f"smserve local up exited {proc.wait()}")
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = value
    return proc, exports, lines


def _printed(lines: queue.Queue[str | None], text: str, timeout: float = 60) -> str:
    """The next line ``smserve local up`` prints that holds ``text``."""
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"smserve local up did not print {text!r}:\n" + "".join(seen))
        if line is None:
            pytest.fail(f"smserve local up ended before printing {text!r}:\n" + "".join(seen))
        seen.append(line)
        if text in line:
            return line


def test_local_up_allows_its_buckets_and_a_refused_bucket_says_why(tmp_path: Path,
                                                        base_env: dict[str, str]) -> None:
    """A model created with boto3 and no Environment reads and writes the stack's buckets;
    one whose allow-list leaves the bucket out fails each record, saying how to set the list;
    a second job on the first model reuses its warm server, and none outlives local up."""
    from serving.modelspec import load_spec
    from serving.package import build_archive
    from serving.pipeline import build_requests
    from serving.transform.transfer import encode_records

    env = {k: v for k, v in base_env.items()
           if not k.startswith("AWS_") and k != "SMSERVE_ALLOWED_BUCKETS"}
    env["PYTHONPATH"] = str(ROOT)  # this tree's serving, not an installed one
    proc, exports, printed = _start_local_up(env)
    try:
        assert exports["SMSERVE_ALLOWED_BUCKETS"] == "'*'"
        kw = {"endpoint_url": exports["AWS_ENDPOINT_URL"],
              "region_name": exports["AWS_DEFAULT_REGION"],
              "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
        s3, sm = boto3.client("s3", **kw), boto3.client("sagemaker", **kw)
        bucket = "local-up-allow"
        s3.create_bucket(Bucket=bucket)
        keys = upload_clips(s3, bucket, "videos/", 2)
        spec = load_spec(MODELS / "clip_stats")
        requests = build_requests(spec, bucket, keys, specs={spec.name: spec})
        s3.put_object(Bucket=bucket, Key="requests/r.jsonl", Body=encode_records(requests))
        archive = build_archive(spec.folder, tmp_path / "model.tar.gz")
        s3.upload_file(str(archive), bucket, "models/clip_stats.tar.gz")
        from serving.aws import ClientFactory as Clients
        from serving.local.stackimages import stack_images
        from serving.settings import Settings

        image = stack_images(Clients(Settings.from_environ({**env, **{
            k: v.strip("'") for k, v in exports.items()}})), ("cpu",), registry=False)["cpu"]
        container = {"Image": image, "ModelDataUrl": f"s3://{bucket}/models/clip_stats.tar.gz"}
        role = "arn:aws:iam::123456789012:role/sagemaker"
        sm.create_model(ModelName="stats", ExecutionRoleArn=role, PrimaryContainer=container)
        sm.create_model(ModelName="stats-elsewhere", ExecutionRoleArn=role, PrimaryContainer={
            **container, "Environment": {"SMSERVE_ALLOWED_BUCKETS": "elsewhere"}})
        for model in ("stats", "stats-elsewhere"):
            sm.create_transform_job(
                TransformJobName=f"{model}-job", ModelName=model, BatchStrategy="MultiRecord",
                TransformInput={"DataSource": {"S3DataSource": {
                    "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/requests/"}},
                    "ContentType": "application/jsonlines", "SplitType": "Line"},
                TransformOutput={"S3OutputPath": f"s3://{bucket}/out/{model}/",
                                 "Accept": "application/jsonlines", "AssembleWith": "Line"},
                TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
        described = {}
        deadline = time.monotonic() + 120
        while len(described) < 2:
            for model in ("stats", "stats-elsewhere"):
                job = sm.describe_transform_job(TransformJobName=f"{model}-job")
                if job["TransformJobStatus"] not in ("InProgress", "Stopping"):
                    described[model] = job
            assert time.monotonic() < deadline, "the jobs did not end within 120 s"
            time.sleep(0.2)
        assert described["stats"]["TransformJobStatus"] == "Completed", described["stats"]
        for request in requests:
            assert s3.head_object(Bucket=bucket, Key=request.output_path)["ContentLength"] > 0
        # A record naming a bucket outside the model's allow-list fails alone (the container
        # answers 200 with its outcome), so the job completes, as on SageMaker; the outcome
        # says what the allow-list is and how to set it.
        refused = described["stats-elsewhere"]
        assert refused["TransformJobStatus"] == "Completed", refused
        outs = s3.list_objects_v2(Bucket=bucket, Prefix="out/stats-elsewhere/")["Contents"]
        outcomes = [json.loads(line) for item in outs for line in s3.get_object(
            Bucket=bucket, Key=item["Key"])["Body"].read().splitlines() if line.strip()]
        assert outcomes and all(o["status"] == "failed" for o in outcomes), outcomes
        assert all("not on the allow-list" in o["message"]
                   and "SMSERVE_ALLOWED_BUCKETS" in o["message"] for o in outcomes), outcomes

        started = _printed(printed, "server started for stats ")
        pid = int(started.split("(pid ")[1].split(")")[0])
        s3.delete_object(Bucket=bucket, Key=requests[0].output_path)
        sm.create_transform_job(
            TransformJobName="stats-again", ModelName="stats", BatchStrategy="MultiRecord",
            TransformInput={"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/requests/"}},
                "ContentType": "application/jsonlines", "SplitType": "Line"},
            TransformOutput={"S3OutputPath": f"s3://{bucket}/out/again/",
                             "Accept": "application/jsonlines", "AssembleWith": "Line"},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
        reused = _printed(printed, "warm server reused for stats ")
        assert f"(pid {pid}, 1 earlier job(s))" in reused, reused
        deadline = time.monotonic() + 120
        while (status := sm.describe_transform_job(TransformJobName="stats-again")[
                "TransformJobStatus"]) == "InProgress":
            assert time.monotonic() < deadline, "stats-again did not end within 120 s"
            time.sleep(0.2)
        assert status == "Completed"
        assert s3.head_object(Bucket=bucket, Key=requests[0].output_path)["ContentLength"] > 0

        proc.send_signal(signal.SIGTERM)
        assert wait_or_dump(proc, 60, proc.stderr) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10  # the warm servers stop with local up
        while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, f"warm server {pid} outlived smserve local up"
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        _end(proc)


def _port_in_time_wait() -> int:
    """A port nothing listens on, whose last server-side connection sits in TIME_WAIT.

    What a server leaves behind for up to a minute after it stopped, when it
    closed a connection first (moto answers ``Connection: close``).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
    listener.bind(("127.0.0.1", free_port()))
    listener.listen(1)
    port = int(listener.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    accepted, _ = listener.accept()
    listener.close()
    accepted.close()  # the server side closes first ...
    client.recv(1)  # ... the client sees the end of the stream ...
    client.close()  # ... and closes too: the server side is now in TIME_WAIT
    return port


def test_local_up_restarts_on_a_port_in_time_wait(base_env: dict[str, str]) -> None:
    port = _port_in_time_wait()
    proc = subprocess.Popen([*_command(), "local", "up", "--port", str(port)], env=base_env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert first.startswith("# embedded AWS stack"), proc.stderr.read()
        proc.send_signal(signal.SIGTERM)  # stopped by a signal: exit 128+n
        assert wait_or_dump(proc, 20, proc.stderr) == 128 + signal.SIGTERM
    finally:
        _end(proc)


def test_local_up_port_in_use(base_env: dict[str, str]) -> None:
    with _listening_socket() as sock:
        port = sock.getsockname()[1]
        proc = smserve("local", "up", "--port", str(port), env=base_env, timeout=30)
    assert_error(proc, 5, f"port {port}", "--port")


# --- serve ------------------------------------------------------------------------------------


def test_serve_port_in_use(base_env: dict[str, str]) -> None:
    with _listening_socket() as sock:
        port = sock.getsockname()[1]
        proc = smserve("serve", "models/frame_features", "--port", str(port), env=base_env,
                       timeout=60)
    assert_error(proc, 3, f"port {port}", "--port")


# --- demo -------------------------------------------------------------------------------------


def test_demo(base_env: dict[str, str]) -> None:
    env = {k: v for k, v in base_env.items() if not k.startswith(("AWS_", "SMSERVE_"))
           or k == TAG_VAR}
    proc = smserve("demo", env=env, timeout=240)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    run1, _, run2 = out.partition("run 2:")
    assert run2, out
    rows = [line for line in run1.splitlines()
            if line.strip().startswith("videos/2026/11/clip-")]
    assert len(rows) == 6, out
    for number, row in enumerate(rows):
        clip, top_class, prob, where = row.split()
        assert clip == f"videos/2026/11/clip-{number:03d}.npy"
        assert 0.0 < float(prob) <= 1.0 and top_class
        assert where == ("s3://smserve-demo/results/scene_classifier/videos/2026/11/"
                         f"clip-{number:03d}.json")
    assert "frame_features     6 records: 6 written" in run1
    assert "scene_classifier   6 records: 6 written" in run1
    assert "frame_features     6 records: 6 skipped" in run2
    assert "scene_classifier   6 records: 6 skipped" in run2
    assert "unexpected" not in out
    assert "stopped the embedded stack" in out
    assert "Traceback" not in proc.stderr
