"""Nothing outlives its parent: each command as a real subprocess, each signal, no process left.

Every process a test starts carries the test's tag in its environment (the
model server, the guard, the MMS launcher, Java, the workers inherit it), so
"nothing left" means: no process with that tag runs a few seconds after the
signal (polled, never a fixed sleep). Each test also gives its command a
private TMPDIR, so leftover temporary folders are seen too; after a SIGKILL (no
clean-up possible) the next smserve command must remove them (serving/scratch.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest

from local_test.clips import upload_clips
from serving.aws import ClientFactory
from serving.local.stack import LocalStack
from serving.package import build_archive
from serving.pipeline import output_key
from serving.ports import free_port
from serving.settings import Settings
from tests.diskfull import fill, small_disk
from tests.helpers import TAG_VAR, kill_tagged, tagged, wait_or_dump

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIP_STATS = ROOT / "models" / "clip_stats"
FEATURES = ROOT / "models" / "frame_features"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
#: Seconds the processes get to end after the signal (a deadline, polled).
DEADLINE = 20.0

SLOW = '''\
"""A model whose record says where to leave a mark, then how long to take."""
import json, time
from pathlib import Path

def model_fn(model_dir):
    return "slow"

def transform_fn(model, body, content_type, accept):
    record = json.loads(body.splitlines()[0])
    Path(record["mark"]).write_text("started")
    for step in range(record["sleep"] * 10):
        print(f"still working: step {step}", flush=True)
        time.sleep(0.1)
    return json.dumps({"slept": record["sleep"]}), "application/jsonlines"
'''


# --- processes ------------------------------------------------------------------------------------


@pytest.fixture()
def tag() -> Iterator[str]:
    """This test's tag; whatever still carries it afterwards is killed and fails the test."""
    value = uuid.uuid4().hex
    yield value
    described = kill_tagged(value, wait=1.0)
    assert not described, "processes left running:\n" + "\n".join(described)


#: Each test's private TMPDIR, by tag: a process started with a clean environment (the
#: stack's docker-registry) does not carry the tag, but its command line names a folder there.
_SCRATCH: dict[str, Path] = {}


@pytest.fixture()
def scratch(tag: str) -> Iterator[Path]:
    """A private TMPDIR for the command under test (short: MMS's unix socket lives there)."""
    path = Path(tempfile.mkdtemp(prefix="lt-"))
    _SCRATCH[tag] = path
    yield path
    _SCRATCH.pop(tag, None)
    shutil.rmtree(path, ignore_errors=True)


def _env(tag: str, scratch: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({TAG_VAR: tag, "TMPDIR": str(scratch), "SETUPTOOLS_USE_DISTUTILS": "stdlib",
                "PYTHONPATH": str(ROOT), **extra})
    return env


def _spawn(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "serving.cli", *args], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait_for(what: str, check: Callable[[], bool], proc: subprocess.Popen[str] | None = None,
              timeout: float = 180.0, explain: Callable[[], object] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the command exited {proc.returncode} before {what}:\n{out}")
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s: {explain()}"
        time.sleep(0.1)


def _names(tag: str) -> list[str]:
    """Command lines of the processes tagged ``tag`` or naming a path in its TMPDIR."""
    procs = {proc.pid: proc for proc in tagged(tag)}
    where = _SCRATCH.get(tag)
    if where is not None:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(str(where) in arg for arg in proc.info["cmdline"] or ()):
                procs.setdefault(proc.pid, proc)
    names = []
    for proc in procs.values():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                names.append(" ".join(proc.cmdline()))
        except psutil.Error:
            continue
    return names


def _has(tag: str, needle: str) -> Callable[[], bool]:
    return lambda: any(needle in name for name in _names(tag))


def _all_gone(tag: str, timeout: float = DEADLINE) -> list[str]:
    """Poll until no process carries ``tag``; what is still running at the deadline."""
    deadline = time.monotonic() + timeout
    left = _names(tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _names(tag)
    return left


def _leftover_files(scratch: Path) -> list[str]:
    return sorted(str(p.relative_to(scratch)) for p in scratch.iterdir())


def _next_command_clears(tag: str, scratch: Path) -> None:
    """What a SIGKILLed command left in ``scratch`` is gone after the next command starts."""
    done = subprocess.run([sys.executable, "-m", "serving.cli", "plan", "--config",
                           str(scratch / "missing.toml")], cwd=ROOT, env=_env(tag, scratch),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert _leftover_files(scratch) == []


STOPS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL]


# --- smserve serve --------------------------------------------------------------------------------


@pytest.mark.parametrize("signo", STOPS, ids=lambda s: signal.Signals(s).name)
def test_serve_leaves_nothing_after_any_signal(signo: int, tag: str, scratch: Path) -> None:
    proc = _spawn("serve", str(CLIP_STATS), "--port", str(free_port()), env=_env(tag, scratch))
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        for line in proc.stdout:
            seen.append(line)
            if "model ready" in line:
                break
        else:
            pytest.fail(f"smserve serve exited {proc.wait()} before the model was ready:\n"
                        + "".join(seen[-40:]))
        assert _has(tag, "java")(), _names(tag)  # the whole tree is up: guard, MMS, workers
        assert _leftover_files(scratch)  # its run directory
        proc.send_signal(signo)
        wait_or_dump(proc, DEADLINE, proc.stdout)
        assert _all_gone(tag) == []
        assert _leftover_files(scratch) == []
    finally:
        proc.kill()
        proc.wait()


# --- smserve transform ----------------------------------------------------------------------------


def _records(bucket: str, clips: list[str]) -> bytes:
    return "".join(json.dumps({"bucket": bucket, "inputs": {"video": key},
                               "output_path": output_key("frame_features", key, suffix=".npy"),
                               "overwrite": False}) + "\n" for key in clips).encode()


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_transform_leaves_nothing_after_a_signal_during_the_job(
        signo: int, tag: str, scratch: Path, stack: LocalStack, clients: ClientFactory,
        bucket: str, tmp_path: Path) -> None:
    # The model marks its record and then takes its time: the signal lands mid-record
    # however fast or slow the machine is.
    model, mark = tmp_path / "slow", tmp_path / "started"
    model.mkdir()
    (model / "serving.py").write_text(SLOW)
    clients.client("s3").put_object(
        Bucket=bucket, Key="requests/a.jsonl",
        Body=json.dumps({"mark": str(mark), "sleep": 600}).encode() + b"\n")
    env = _env(tag, scratch, **stack.environ(), SMSERVE_ALLOWED_BUCKETS=bucket)
    proc = _spawn("transform", "--model", str(model), "--input", f"s3://{bucket}/requests/",
                  "--output", f"s3://{bucket}/out/", env=env)
    try:
        _wait_for("the model to start on its record", mark.exists, proc)
        assert _has(tag, "java")(), _names(tag)
        proc.send_signal(signo)
        code = wait_or_dump(proc, DEADLINE, proc.stdout)
        out = proc.stdout.read() if proc.stdout else ""
        assert _all_gone(tag) == []
        if signo == signal.SIGKILL:
            assert code == -signal.SIGKILL
            _next_command_clears(tag, scratch)
            return
        assert code == 128 + signo, out
        assert f"stopped by {signal.Signals(signo).name}" in out
        assert "Traceback" not in out
        assert _leftover_files(scratch) == []
    finally:
        proc.kill()
        proc.wait()


# --- smserve local up -----------------------------------------------------------------------------


def _exports(proc: subprocess.Popen[str]) -> dict[str, str]:
    assert proc.stdout is not None
    env: dict[str, str] = {}
    for line in proc.stdout:
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").strip().partition("=")
            env[key] = value
            if key == "AWS_SESSION_TOKEN":
                return env
    pytest.fail(f"smserve local up exited {proc.wait()} before printing its exports")


def _client(env: dict[str, str], service: str) -> Any:
    return boto3.client(service, endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _job_story(env: dict[str, str], sm: Any, name: str) -> str:
    """The job's description and the last lines of its logs (for a failing assertion)."""
    logs = _client(env, "logs")
    group = "/aws/sagemaker/TransformJobs"
    text = [str(sm.describe_transform_job(TransformJobName=name))]
    for stream in logs.describe_log_streams(logGroupName=group)["logStreams"]:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream["logStreamName"],
                                     startFromHead=True)["events"]
        text += [f"== {stream['logStreamName']}", *(e["message"] for e in events[-30:])]
    return "\n".join(text)


def _slow_image(env: dict[str, str]) -> str:
    """An image URI the stack's ECR holds, for CreateModel (as on AWS, it refuses others).

    Recorded with PutImage only: the stack's jobs run the model with the process
    runner, which never pulls the image.
    """
    from serving.aws import ClientFactory
    from serving.local.stackimages import stack_images

    clients = ClientFactory(Settings.from_environ({**env, "AWS_ACCESS_KEY_ID": "testing",
                                                   "AWS_SECRET_ACCESS_KEY": "testing"}))
    return stack_images(clients, ("cpu",), registry=False)["cpu"]


def _slow_job(env: dict[str, str], tmp_path: Path, mark: Path, *,
              padding: int = 0, sleep: int = 600) -> tuple[Any, str]:
    """A model that takes its time, and a job for it: (sagemaker client, job name).

    Args:
        padding: bytes of incompressible data the model archive also holds.
        sleep: seconds the model takes over the job's one record.
    """
    s3, sm = _client(env, "s3"), _client(env, "sagemaker")
    label = uuid.uuid4().hex[:8]
    bucket = f"slow-{label}"
    s3.create_bucket(Bucket=bucket)
    folder = tmp_path / bucket
    folder.mkdir()
    (folder / "serving.py").write_text(SLOW)
    if padding:
        (folder / "padding.bin").write_bytes(os.urandom(padding))
    archive = build_archive(folder, tmp_path / f"{bucket}.tar.gz")
    s3.upload_file(str(archive), bucket, "model.tar.gz")
    s3.put_object(Bucket=bucket, Key="in/a.jsonl",
                  Body=json.dumps({"mark": str(mark), "sleep": sleep}).encode() + b"\n")
    sm.create_model(ModelName=bucket, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": _slow_image(env), "ModelDataUrl": f"s3://{bucket}/model.tar.gz"})
    name = f"job-{label}"
    sm.create_transform_job(
        TransformJobName=name, ModelName=bucket,
        TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                        "S3Uri": f"s3://{bucket}/in/"}},
                        "ContentType": "application/jsonlines", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://{bucket}/out/",
                         "Accept": "application/jsonlines"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        BatchStrategy="SingleRecord")
    return sm, name


def _ended(sm: Any, name: str, timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described: dict[str, Any] = sm.describe_transform_job(TransformJobName=name)
        if described["TransformJobStatus"] not in ("InProgress", "Stopping"):
            return described
        assert time.monotonic() < deadline, f"{name} is still {described['TransformJobStatus']}"
        time.sleep(0.1)


@contextmanager
def _local_up_running_a_slow_job(
        tag: str, scratch: Path, tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[str], dict[str, str], Any, str]]:
    """``smserve local up`` with a job whose model is busy on its record.

    Yields ``(process, its exports, a SageMaker client, the job name)``; the process is
    killed at the end, whatever the test did to it.
    """
    proc = _spawn("local", "up", env=_env(tag, scratch))
    try:
        env = _exports(proc)
        mark = tmp_path / "started"
        sm, name = _slow_job(env, tmp_path, mark)
        _wait_for("the job's model to start on its record", mark.exists, proc,
                  explain=lambda: _job_story(env, sm, name))
        yield proc, env, sm, name
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("signo", [signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_local_up_leaves_nothing_after_a_signal_during_a_job(
        signo: int, tag: str, scratch: Path, tmp_path: Path) -> None:
    with _local_up_running_a_slow_job(tag, scratch, tmp_path) as (proc, _, _, _):
        proc.send_signal(signo)
        code = wait_or_dump(proc, DEADLINE, proc.stdout)
        assert _all_gone(tag) == []
        assert code == (-signo if signo == signal.SIGKILL else 128 + signo)
        if signo != signal.SIGKILL:
            assert _leftover_files(scratch) == []
        else:
            _next_command_clears(tag, scratch)


# --- a job whose container's entry process dies -------------------------------------------------


def test_a_job_whose_entry_process_is_killed_fails_with_that_reason(
        tag: str, scratch: Path, tmp_path: Path) -> None:
    with _local_up_running_a_slow_job(tag, scratch, tmp_path) as (proc, _, sm, name):
        (entry,) = [p for p in tagged(tag) if "serving.cli serve" in " ".join(p.cmdline())]
        entry.kill()
        described = _ended(sm, name, DEADLINE)
        assert described["TransformJobStatus"] == "Failed"
        reason = described["FailureReason"]
        assert "entry process of container" in reason and "killed by SIGKILL" in reason, reason
        assert f"{name}/i-" in reason  # names its log stream
        # the container's whole tree went with it; only the stack itself still runs
        assert [n for n in _all_gone_but(tag, proc.pid)] == []
        proc.send_signal(signal.SIGTERM)
        assert wait_or_dump(proc, DEADLINE, proc.stdout) == 128 + signal.SIGTERM


def _all_gone_but(tag: str, keep: int, timeout: float = DEADLINE) -> list[str]:
    def others() -> list[str]:
        names = []
        for p in tagged(tag):
            try:
                if p.pid != keep:
                    names.append(" ".join(p.cmdline()))
            except psutil.Error:
                continue
        return names

    deadline = time.monotonic() + timeout
    left = others()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = others()
    return left


# --- full disks -----------------------------------------------------------------------------------


def test_full_disks_fail_jobs_at_once_naming_the_disk(tag: str, tmp_path: Path) -> None:
    with small_disk("2m") as disk:
        proc = _spawn("local", "up", env=_env(tag, disk))
        try:
            env = _exports(proc)
            # 1. the model data does not fit: the download fails, saying why
            ballast = fill(disk, leave=64 * 1024)
            sm, name = _slow_job(env, tmp_path, tmp_path / "never", padding=256 * 1024)
            described = _ended(sm, name)
            reason = described.get("FailureReason", "")
            assert described["TransformJobStatus"] == "Failed"
            assert f"no space left on {disk}" in reason, reason
            assert "needed while writing the model data s3://" in reason, reason
            assert "Make sure the object exists" not in reason
            ballast.unlink()
            # 2. the disk fills up while the job runs: the container log cannot be
            #    written; the job fails at once, and its server is not left blocked
            mark = tmp_path / "started"
            sm, name = _slow_job(env, tmp_path, mark)
            _wait_for("the job's model to start on its record", mark.exists, proc,
                      explain=lambda: _job_story(env, sm, name))
            fill(disk)
            described = _ended(sm, name, DEADLINE)
            reason = described.get("FailureReason", "")
            assert described["TransformJobStatus"] == "Failed"
            assert f"no space left on {disk}" in reason, reason
            assert "the container log" in reason, reason
            assert _all_gone_but(tag, proc.pid) == []
            proc.send_signal(signal.SIGTERM)
            assert wait_or_dump(proc, DEADLINE, proc.stdout) == 128 + signal.SIGTERM
        finally:
            proc.kill()
            proc.wait()


# --- starts under load ----------------------------------------------------------------------------


def test_many_jobs_started_at_once_on_busy_cores_all_complete(tag: str, scratch: Path,
                                                              tmp_path: Path) -> None:
    """Six jobs (six JVMs) start together while every core spins: none fails to start."""
    cores = os.cpu_count() or 2
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                env={**os.environ, TAG_VAR: tag}) for _ in range(cores)]
    proc = _spawn("local", "up", env=_env(tag, scratch))
    try:
        env = _exports(proc)
        jobs = [_slow_job(env, tmp_path, tmp_path / f"mark{i}", sleep=0) for i in range(6)]
        outcomes = {name: _ended(sm, name, timeout=600) for sm, name in jobs}
        failed = {name: d.get("FailureReason") for name, d in outcomes.items()
                  if d["TransformJobStatus"] != "Completed"}
        assert failed == {}
        assert all((tmp_path / f"mark{i}").exists() for i in range(6))
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


# --- smserve local up --state ---------------------------------------------------------------------


def _banner(proc: subprocess.Popen[str]) -> tuple[str, dict[str, str]]:
    """The lines before the exports, and the exports."""
    assert proc.stdout is not None
    lines: list[str] = []
    env: dict[str, str] = {}
    for line in proc.stdout:
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").strip().partition("=")
            env[key] = value
            if key == "AWS_SESSION_TOKEN":
                return "".join(lines), env
        else:
            lines.append(line)
    pytest.fail(f"smserve local up exited {proc.wait()} before its exports:\n{''.join(lines)}")


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_local_up_stopped_while_it_prints_its_banner(signo: int, tag: str, scratch: Path) -> None:
    """A signal between the stack's start and its last export line still stops the stack.

    (It used to land outside the stop's ``try``: the command said "stopped" and then
    never exited. A slow machine widens that window; here the first line is the cue.)
    """
    proc = _spawn("local", "up", env=_env(tag, scratch))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("# embedded AWS stack"), first
        proc.send_signal(signo)
        code = wait_or_dump(proc, DEADLINE, proc.stdout)
        out = proc.stdout.read()
        assert code == 128 + signo, out
        assert "Traceback" not in out
        assert _all_gone(tag) == []
        assert _leftover_files(scratch) == []
    finally:
        proc.kill()
        proc.wait()


def test_local_up_without_state_says_a_restart_loses_everything(tag: str, scratch: Path) -> None:
    proc = _spawn("local", "up", env=_env(tag, scratch))
    try:
        banner, _ = _banner(proc)
        assert "state is NOT kept" in banner and "--state DIR" in banner
        proc.send_signal(signal.SIGINT)
        assert wait_or_dump(proc, DEADLINE, proc.stdout) == 130
    finally:
        proc.kill()
        proc.wait()


def test_local_up_state_survives_a_restart(tag: str, scratch: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _spawn("local", "up", "--state", str(state), env=_env(tag, scratch))
    try:
        banner, env = _banner(proc)
        assert f"state is kept in {state}" in banner and "nothing to restore yet" in banner
        s3, sqs = _client(env, "s3"), _client(env, "sqs")
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="a/b c.bin", Body=b"\x00\x01binary",
                      ContentType="application/x-npy", Metadata={"origin": "test"})
        s3.put_object(Bucket="kept", Key="same.txt", Body=b"\x00\x01binary")
        dlq = sqs.create_queue(QueueName="work-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"})
        work = sqs.create_queue(QueueName="work", Attributes={
            "RedrivePolicy": policy, "VisibilityTimeout": "1"})["QueueUrl"]
        sqs.send_message(QueueUrl=work, MessageBody="first", MessageAttributes={
            "reason": {"DataType": "String", "StringValue": "kept"}})
        assert sqs.receive_message(QueueUrl=work, MaxNumberOfMessages=1)["Messages"]
        sqs.send_message(QueueUrl=work, MessageBody="second")
        done_mark, run_mark = tmp_path / "done", tmp_path / "running"
        sm, finished = _slow_job(env, tmp_path, done_mark, sleep=0)
        assert _ended(sm, finished)["TransformJobStatus"] == "Completed"
        sm, running = _slow_job(env, tmp_path, run_mark)
        _wait_for("the second job's model to start", run_mark.exists, proc,
                  explain=lambda: _job_story(env, sm, running))
        proc.send_signal(signal.SIGTERM)
        assert wait_or_dump(proc, 60, proc.stdout) == 128 + signal.SIGTERM
        assert _all_gone(tag) == []
    finally:
        proc.kill()
        proc.wait()

    proc = _spawn("local", "up", "--state", str(state), env=_env(tag, scratch))
    try:
        banner, env = _banner(proc)
        # kept/: 2; each model bucket: model.tar.gz, in/a.jsonl; the finished job: its .out
        assert "restored 3 buckets, 7 objects, 2 queues, 2 models, 2 jobs" in banner, banner
        s3, sqs, sm = _client(env, "s3"), _client(env, "sqs"), _client(env, "sagemaker")
        got = s3.get_object(Bucket="kept", Key="a/b c.bin")
        assert got["Body"].read() == b"\x00\x01binary"
        assert got["ContentType"] == "application/x-npy" and got["Metadata"] == {
            "origin": "test"}
        assert s3.get_object(Bucket="kept", Key="same.txt")["Body"].read() == b"\x00\x01binary"
        work = sqs.get_queue_url(QueueName="work")["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=work, AttributeNames=["All"])["Attributes"]
        assert json.loads(attrs["RedrivePolicy"])["maxReceiveCount"] in (3, "3")
        received = sqs.receive_message(QueueUrl=work, MaxNumberOfMessages=10,
                                       AttributeNames=["ApproximateReceiveCount"],
                                       MessageAttributeNames=["All"])["Messages"]
        counts = {m["Body"]: int(m["Attributes"]["ApproximateReceiveCount"]) for m in received}
        assert counts == {"first": 2, "second": 1}  # the earlier receive is remembered
        first = next(m for m in received if m["Body"] == "first")
        assert first["MessageAttributes"]["reason"]["StringValue"] == "kept"
        assert sm.describe_transform_job(TransformJobName=finished)[
            "TransformJobStatus"] == "Completed"
        interrupted = sm.describe_transform_job(TransformJobName=running)
        assert interrupted["TransformJobStatus"] == "Failed"
        assert "the embedded stack stopped" in interrupted["FailureReason"]
        assert len(sm.list_models()["Models"]) == 2
        proc.send_signal(signal.SIGHUP)
        assert wait_or_dump(proc, 60, proc.stdout) == 128 + signal.SIGHUP
    finally:
        proc.kill()
        proc.wait()


# --- smserve pipeline run -------------------------------------------------------------------------


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_pipeline_run_leaves_nothing_after_a_signal(
        signo: int, tag: str, scratch: Path, stack: LocalStack, clients: ClientFactory,
        bucket: str) -> None:
    upload_clips(clients.client("s3"), bucket, "videos/", 2)
    env = _env(tag, scratch, **stack.environ(), SMSERVE_ALLOWED_BUCKETS=bucket)
    proc = _spawn("pipeline", "run", "--input", f"s3://{bucket}/videos/", "--models",
                  "clip_stats", env=env)
    try:
        _wait_for("a model server (java)", _has(tag, "java"), proc)
        proc.send_signal(signo)
        code = wait_or_dump(proc, DEADLINE, proc.stdout)
        assert _all_gone(tag) == []
        if signo == signal.SIGKILL:
            _next_command_clears(tag, scratch)
            return
        out = proc.stdout.read() if proc.stdout else ""
        assert code == 128 + signo, out
        assert _leftover_files(scratch) == []
    finally:
        proc.kill()
        proc.wait()
