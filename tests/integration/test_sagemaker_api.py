"""The embedded stack's SageMaker API, driven with plain boto3 as a user's code drives AWS.

One stack for the module (its containers carry a tag in their environment, so
the test can tell that none is left). Container starts cost seconds, so each
kind of container runs once: frame_features for the real run, and a tiny
"faulty" model whose records say what to do (answer, raise, hang, kill its
server) for the failures; one job with four objects covers a 500, an
oversized record and a timeout next to an object that succeeds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from local_test.clips import upload_clips
from serving.local.stack import LocalStack
from serving.modelspec import load_spec
from serving.package import build_archive
from serving.pipeline import build_requests
from serving.settings import Settings
from serving.transform.transfer import encode_records
from tests.helpers import TAG_VAR, kill_tagged, stack_image_uris

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ROOT / "models" / "frame_features"
GROUP = "/aws/sagemaker/TransformJobs"
JSONL = "application/jsonlines"

FAULTY = '''\
"""A model whose records say what to do: answer, raise, hang, or kill its own server."""
import json, os, signal, time

def model_fn(model_dir):
    if os.environ.get("FAULTY_LOAD") == "hang":
        time.sleep(3600)
    if os.environ.get("FAULTY_LOAD") == "raise":
        raise FileNotFoundError("weights.npz is not in the archive")
    return "faulty"

def transform_fn(model, body, content_type, accept):
    answers = []
    for line in body.split(b"\\n"):
        record = json.loads(line)
        action = record.get("action", "ok")
        if action == "fail":
            raise RuntimeError(f"boom: record {record['id']} asked to fail")
        if action == "hang":
            time.sleep(3600)
        if action == "die":
            os.killpg(os.getpgid(0), signal.SIGKILL)
        answers.append(json.dumps({"id": record["id"], "echo": record.get("value")}))
    return "\\n".join(answers), "application/jsonlines"
'''


# --- the stack, clients, processes --------------------------------------------------------------


@pytest.fixture(scope="module")
def tag() -> str:
    """A value only the containers this module's stacks start carry in their environment."""
    return uuid.uuid4().hex


def _base_settings(tag: str, **extra: str) -> Settings:
    return Settings.from_environ({**os.environ, TAG_VAR: tag,
                                  "SETUPTOOLS_USE_DISTUTILS": "stdlib", **extra})


@pytest.fixture(scope="module")
def sm_stack(tag: str) -> Iterator[LocalStack]:
    """An embedded stack whose containers carry the module's tag."""
    stack = LocalStack(settings=_base_settings(tag)).start()
    try:
        yield stack
    finally:
        stack.stop()


def _client(stack: LocalStack, service: str) -> Any:
    return boto3.client(service, endpoint_url=stack.endpoint_url, region_name=stack.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def images(sm_stack: LocalStack) -> dict[str, str]:
    """flavor -> an ECR URI the stack's ECR holds (a pushed stand-in; see helpers)."""
    return stack_image_uris(sm_stack)


@pytest.fixture(scope="module")
def sm(sm_stack: LocalStack) -> Any:
    """A plain boto3 SageMaker client for the stack."""
    return _client(sm_stack, "sagemaker")


@pytest.fixture(scope="module")
def s3(sm_stack: LocalStack) -> Any:
    """A plain boto3 S3 client for the stack."""
    return _client(sm_stack, "s3")


@pytest.fixture(scope="module")
def logs(sm_stack: LocalStack) -> Any:
    """A plain boto3 CloudWatch Logs client for the stack."""
    return _client(sm_stack, "logs")


@pytest.fixture(scope="module")
def bucket(s3: Any) -> str:
    """The module's bucket."""
    name = f"sm-api-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


def _no_process_left(tag: str, wait: float = 10.0) -> None:
    described = kill_tagged(tag, wait, width=160)
    assert not described, "container processes left running:\n" + "\n".join(described)


# --- models ---------------------------------------------------------------------------------------


def _upload_archive(s3: Any, bucket: str, folder: Path, key: str, tmp: Path) -> str:
    archive = build_archive(folder, tmp / f"{uuid.uuid4().hex}.tar.gz")
    s3.upload_file(str(archive), bucket, key)
    return f"s3://{bucket}/{key}"


@pytest.fixture(scope="module")
def features_model(sm: Any, s3: Any, bucket: str, tmp_path_factory: pytest.TempPathFactory,
                   images: dict[str, str]) -> str:
    """frame_features as a SageMaker model (its model.tar.gz in the stack's S3)."""
    url = _upload_archive(s3, bucket, FEATURES, "models/frame_features/model.tar.gz",
                          tmp_path_factory.mktemp("features"))
    sm.create_model(ModelName="frame-features", ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": images["gpu"],
        "ModelDataUrl": url,
        "Environment": {"SMSERVE_ALLOWED_BUCKETS": bucket,
                        "SMSERVE_OUTPUT_PREFIXES": "results/"}})
    return "frame-features"


ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"


@pytest.fixture(scope="module")
def faulty_url(s3: Any, bucket: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The faulty model's model.tar.gz in the stack's S3."""
    folder = tmp_path_factory.mktemp("faulty") / "faulty"
    folder.mkdir()
    (folder / "serving.py").write_text(FAULTY)
    return _upload_archive(s3, bucket, folder, "models/faulty/model.tar.gz", folder.parent)


@pytest.fixture(scope="module")
def faulty_model(sm: Any, faulty_url: str, images: dict[str, str]) -> str:
    """The faulty model."""
    sm.create_model(ModelName="faulty", ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": images["cpu"], "ModelDataUrl": faulty_url})
    return "faulty"


def _job(name: str, model: str, input_uri: str, output_uri: str, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "TransformJobName": name, "ModelName": model,
        "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                           "S3Uri": input_uri}},
                           "ContentType": JSONL, "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": JSONL, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        "BatchStrategy": "MultiRecord",
    }
    request.update(extra)
    return request


def _wait(sm: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described: dict[str, Any] = sm.describe_transform_job(TransformJobName=name)
        if described["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
            return described
        assert time.monotonic() < deadline, f"{name} still {described['TransformJobStatus']}"
        time.sleep(0.2)


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _lines(records: list[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(r).encode() for r in records) + b"\n"


def _events(logs: Any, stream: str) -> list[str]:
    events = logs.get_log_events(logGroupName=GROUP, logStreamName=stream,
                                 startFromHead=True)["events"]
    return [e["message"] for e in events]


# --- a real job ---------------------------------------------------------------------------------


def test_frame_features_job_runs_to_completed_with_outputs_in_s3(
        sm: Any, s3: Any, logs: Any, bucket: str, features_model: str, tag: str) -> None:
    keys = upload_clips(s3, bucket, "videos/2026/11/", 3)
    spec = load_spec(FEATURES)
    requests = build_requests(spec, bucket, keys, specs={spec.name: spec})
    s3.put_object(Bucket=bucket, Key="requests/features/batch-1.jsonl",
                  Body=encode_records(requests))
    name = "features-" + uuid.uuid4().hex[:8]
    started = time.monotonic()
    answer = sm.create_transform_job(**_job(
        name, features_model, f"s3://{bucket}/requests/features/",
        f"s3://{bucket}/transform-out/{name}/"))
    assert time.monotonic() - started < 2, "CreateTransformJob must answer at once"
    assert answer["TransformJobArn"] == \
        f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/{name}"
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] == "InProgress"

    sm.get_waiter("transform_job_completed_or_stopped").wait(
        TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    described = sm.describe_transform_job(TransformJobName=name)
    assert described["TransformJobStatus"] == "Completed"
    assert "FailureReason" not in described
    assert described["ModelName"] == features_model
    assert described["CreationTime"] <= described["TransformStartTime"] \
        <= described["TransformEndTime"]
    out = s3.get_object(Bucket=bucket, Key=f"transform-out/{name}/batch-1.jsonl.out")
    answers = [json.loads(line) for line in out["Body"].read().splitlines()]
    assert len(answers) == 3
    assert [a["status"] for a in answers] == ["written"] * 3
    for request in requests:
        assert s3.head_object(Bucket=bucket, Key=request.output_path)["ContentLength"] > 0

    listed = sm.list_transform_jobs(NameContains=name, StatusEquals="Completed")
    assert [j["TransformJobName"] for j in listed["TransformJobSummaries"]] == [name]
    streams = [s["logStreamName"] for s in logs.describe_log_streams(
        logGroupName=GROUP, logStreamNamePrefix=name)["logStreams"]]
    assert f"{name}/data-log" in streams
    container_streams = [s for s in streams if s.startswith(f"{name}/i-")]
    assert len(container_streams) == 1
    assert any("model loaded" in line or "Model" in line
               for line in _events(logs, container_streams[0]))
    _no_process_left(tag)


# --- validation: refused before anything runs ---------------------------------------------------


def _refused(call: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    error = info.value.response["Error"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return error["Code"], error["Message"]


@pytest.mark.parametrize(("change", "field", "constraint"), [
    ({"TransformJobName": "bad_name"}, "transformJobName", "regular expression pattern"),
    ({"TransformJobName": "x" * 64}, "transformJobName", "length less than or equal to 63"),
    ({"Environment": {f"VAR_{i}": "1" for i in range(17)}}, "environment",
     "length less than or equal to 16"),
    ({"BatchStrategy": "Everything"}, "batchStrategy", "enum value set"),
])
def test_invalid_requests_are_refused_naming_the_field(
        sm: Any, bucket: str, faulty_model: str, change: dict[str, Any], field: str,
        constraint: str) -> None:
    request = _job("valid-name", faulty_model, f"s3://{bucket}/in/", f"s3://{bucket}/out/")
    request.update(change)
    code, message = _refused(sm.create_transform_job, **request)
    assert code == "ValidationException"
    assert re.match(r"\d validation errors? detected: Value ", message), message
    assert f"at '{field}' failed to satisfy constraint: Member must" in message
    assert constraint in message


def test_payload_times_concurrency_over_100_is_refused(sm: Any, bucket: str,
                                                       faulty_model: str) -> None:
    code, message = _refused(sm.create_transform_job, **_job(
        "too-much", faulty_model, f"s3://{bucket}/in/", f"s3://{bucket}/out/",
        MaxPayloadInMB=10, MaxConcurrentTransforms=11))
    assert code == "ValidationException"
    assert "MaxConcurrentTransforms" in message and "MaxPayloadInMB" in message
    assert "100" in message


def test_unknown_model_and_unknown_job(sm: Any, bucket: str) -> None:
    code, message = _refused(sm.create_transform_job, **_job(
        "no-model", "no-such-model", f"s3://{bucket}/in/", f"s3://{bucket}/out/"))
    assert (code, message) == ("ValidationException", 'Could not find model '
                               '"arn:aws:sagemaker:us-east-1:123456789012:model/no-such-model".')
    code, message = _refused(sm.describe_model, ModelName="no-such-model")
    assert code == "ValidationException" and "Could not find model" in message
    code, message = _refused(sm.describe_transform_job, TransformJobName="no-such-job")
    assert code == "ValidationException" and "no-such-job" in message
    code, _ = _refused(sm.stop_transform_job, TransformJobName="no-such-job")
    assert code == "ResourceNotFound"


def test_models_create_describe_list_delete(sm: Any, faulty_url: str,
                                            images: dict[str, str]) -> None:
    names = [f"listed-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for name in names:
        sm.create_model(ModelName=name, PrimaryContainer={"Image": images["cpu"],
                                                          "ModelDataUrl": faulty_url})
    code, message = _refused(sm.create_model, ModelName=names[0],
                             PrimaryContainer={"Image": images["cpu"]})
    assert code == "ValidationException" and "already existing model" in message
    described = sm.describe_model(ModelName=names[0])
    assert described["ModelArn"].endswith(f":model/{names[0]}")
    assert described["PrimaryContainer"]["ModelDataUrl"] == faulty_url
    first = sm.list_models(NameContains="listed-", MaxResults=2, SortBy="Name",
                           SortOrder="Ascending")
    rest = sm.list_models(NameContains="listed-", MaxResults=2, SortBy="Name",
                          SortOrder="Ascending", NextToken=first["NextToken"])
    assert [m["ModelName"] for m in first["Models"] + rest["Models"]] == sorted(names)
    assert "NextToken" not in rest
    for name in names:
        sm.delete_model(ModelName=name)
    assert sm.list_models(NameContains="listed-")["Models"] == []


@pytest.mark.parametrize(("image", "expected"), [
    ("smserve-cpu:0.1.0", 'Using non-ECR image "smserve-cpu:0.1.0" without Vpc repository '
                          "access mode is not supported."),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu",
     'ECR image "123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu" is invalid.'),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu:never-pushed",
     "Requested image 123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu:never-pushed "
     "not found."),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/no-such-repo:0.1.0",
     "Requested image 123456789012.dkr.ecr.us-east-1.amazonaws.com/no-such-repo:0.1.0 "
     "not found."),
    ("123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu@sha256:" + "0" * 64,
     "Requested image 123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu@sha256:"),
])
def test_create_model_refuses_an_image_its_ecr_does_not_hold(
        sm: Any, faulty_url: str, images: dict[str, str], image: str, expected: str) -> None:
    name = f"refused-{uuid.uuid4().hex[:8]}"
    code, message = _refused(sm.create_model, ModelName=name, ExecutionRoleArn=ROLE,
                             PrimaryContainer={"Image": image, "ModelDataUrl": faulty_url})
    assert code == "ValidationException"
    assert message.startswith(expected)
    code, _ = _refused(sm.describe_model, ModelName=name)
    assert code == "ValidationException"  # nothing half made


def test_create_model_takes_the_image_by_digest_too(sm: Any, faulty_url: str,
                                                    sm_stack: LocalStack,
                                                    images: dict[str, str]) -> None:
    ecr = _client(sm_stack, "ecr")
    repo, tag = images["cpu"].split("/", 1)[1].split(":")
    digest = ecr.describe_images(repositoryName=repo, imageIds=[{"imageTag": tag}]
                                 )["imageDetails"][0]["imageDigest"]
    pinned = images["cpu"].rsplit(":", 1)[0] + "@" + digest
    name = f"pinned-{uuid.uuid4().hex[:8]}"
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE,
                    PrimaryContainer={"Image": pinned, "ModelDataUrl": faulty_url})
    assert sm.describe_model(ModelName=name)["PrimaryContainer"]["Image"] == pinned
    sm.delete_model(ModelName=name)


# --- jobs that fail before a container starts ---------------------------------------------------


def _corrupt_archives(s3: Any, bucket: str, tmp: Path) -> dict[str, str]:
    import io
    import tarfile

    urls = {}
    s3.put_object(Bucket=bucket, Key="bad-models/corrupt.tar.gz", Body=b"not a tar.gz at all")
    urls["corrupt"] = f"s3://{bucket}/bad-models/corrupt.tar.gz"
    for label, member in (("dotdot", "../escape.txt"), ("absolute", "/etc/evil.txt")):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            info = tarfile.TarInfo(member)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
        key = f"bad-models/{label}.tar.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
        urls[label] = f"s3://{bucket}/{key}"
    urls["missing"] = f"s3://{bucket}/bad-models/missing.tar.gz"
    return urls


def test_bad_model_data_and_empty_input_fail_the_job_with_what_to_change(
        sm: Any, s3: Any, bucket: str, faulty_url: str, tmp_path: Path, tag: str,
        images: dict[str, str]) -> None:
    s3.put_object(Bucket=bucket, Key="some-input/a.jsonl", Body=_lines([{"id": 0}]))
    urls = _corrupt_archives(s3, bucket, tmp_path)
    expected = {"missing": "404", "corrupt": "not a readable .tar.gz",
                "dotdot": "its path leads outside the destination",
                "absolute": "an absolute path"}
    run = uuid.uuid4().hex[:6]
    for label, url in urls.items():
        model = f"bad-{label}-{run}"
        sm.create_model(ModelName=model, PrimaryContainer={"Image": images["cpu"],
                                                           "ModelDataUrl": url})
        sm.create_transform_job(**_job(f"{model}-job", model, f"s3://{bucket}/some-input/",
                                       f"s3://{bucket}/out-{model}/"))
    sm.create_model(ModelName=f"good-{run}", PrimaryContainer={"Image": images["cpu"],
                                                                "ModelDataUrl": faulty_url})
    sm.create_transform_job(**_job(f"empty-{run}", f"good-{run}",
                                   f"s3://{bucket}/nothing-here/", f"s3://{bucket}/out-e/"))
    for label, url in urls.items():
        described = _wait(sm, f"bad-{label}-{run}-job", timeout=30)
        reason = described["FailureReason"]
        assert described["TransformJobStatus"] == "Failed"
        assert reason.startswith("ClientError: ") and url in reason
        assert expected[label] in reason, reason
        assert "smserve package" in reason
    described = _wait(sm, f"empty-{run}", timeout=30)
    assert described["TransformJobStatus"] == "Failed"
    assert f"no objects under s3://{bucket}/nothing-here/" in described["FailureReason"]
    assert _keys(s3, bucket, "out-") == []

    code, message = _refused(sm.create_transform_job, **_job(
        f"empty-{run}", f"good-{run}", f"s3://{bucket}/x/", f"s3://{bucket}/y/"))
    assert code == "ResourceInUse" and "already exists" in message
    first = sm.list_transform_jobs(NameContains=run, MaxResults=3, StatusEquals="Failed")
    second = sm.list_transform_jobs(NameContains=run, MaxResults=3, StatusEquals="Failed",
                                    NextToken=first["NextToken"])
    names = [j["TransformJobName"] for j in first["TransformJobSummaries"]
             + second["TransformJobSummaries"]]
    assert sorted(names) == sorted([f"bad-{label}-{run}-job" for label in urls] + [f"empty-{run}"])
    assert all(j["FailureReason"] for j in first["TransformJobSummaries"])
    _no_process_left(tag, wait=2)


# --- a job whose objects fail in different ways --------------------------------------------------

MIXED = {
    "a-ok.jsonl": [{"id": 0, "value": "x"}, {"id": 1, "value": "y"}],
    "b-fail.jsonl": [{"id": 0, "value": "fine"}, {"id": 1, "action": "fail"}],
    "c-big.jsonl": [{"id": 0, "value": "z" * 1_100_000}],
    "d-hang.jsonl": [{"id": 0, "action": "hang"}],
}


@pytest.fixture(scope="module")
def mixed_job(sm: Any, s3: Any, bucket: str, faulty_model: str) -> dict[str, Any]:
    """One job over four objects: one answers, one raises (500), one is too big, one hangs."""
    for key, records in MIXED.items():
        s3.put_object(Bucket=bucket, Key=f"mixed/{key}", Body=_lines(records))
    name = "mixed-" + uuid.uuid4().hex[:8]
    sm.create_transform_job(**_job(
        name, faulty_model, f"s3://{bucket}/mixed/", f"s3://{bucket}/mixed-out/{name}/",
        BatchStrategy="SingleRecord", MaxPayloadInMB=1, MaxConcurrentTransforms=1,
        ModelClientConfig={"InvocationsTimeoutInSeconds": 6, "InvocationsMaxRetries": 0}))
    return _wait(sm, name)


def test_failed_objects_are_named_in_the_failure_reason(mixed_job: dict[str, Any], s3: Any,
                                                        bucket: str, tag: str) -> None:
    name = mixed_job["TransformJobName"]
    reason = mixed_job["FailureReason"]
    assert mixed_job["TransformJobStatus"] == "Failed"
    assert len(reason) <= 1024
    assert reason.startswith("3 of 4 input object(s) failed: ")
    assert f"{bucket}/mixed/b-fail.jsonl: ServerError: 500 (record 1" in reason
    assert "transform_fn in serving.py raised RuntimeError" in reason, reason
    assert f"{bucket}/mixed/c-big.jsonl: PayloadTooLarge" in reason
    assert "MaxPayloadInMB=1" in reason
    assert f"{bucket}/mixed/d-hang.jsonl: Timeout" in reason
    assert "a-ok.jsonl" not in reason
    assert _keys(s3, bucket, f"mixed-out/{name}/") == [f"mixed-out/{name}/a-ok.jsonl.out"]
    body = s3.get_object(Bucket=bucket, Key=f"mixed-out/{name}/a-ok.jsonl.out")["Body"].read()
    assert [json.loads(line) for line in body.splitlines()] == [
        {"id": 0, "echo": "x"}, {"id": 1, "echo": "y"}]
    _no_process_left(tag)


def test_the_log_shows_the_failing_key_record_status_and_message(
        mixed_job: dict[str, Any], logs: Any, bucket: str) -> None:
    name = mixed_job["TransformJobName"]
    streams = sorted(s["logStreamName"] for s in logs.describe_log_streams(
        logGroupName=GROUP, logStreamNamePrefix=f"{name}/")["logStreams"])
    assert len(streams) == 2 and streams[0] == f"{name}/data-log"
    assert re.fullmatch(rf"{name}/i-[0-9a-f]{{17}}", streams[1])
    data = _events(logs, f"{name}/data-log")
    failing = [line for line in data if "b-fail.jsonl: record 1" in line]
    assert failing, data
    assert f"s3://{bucket}/mixed/b-fail.jsonl" in failing[0]
    assert "ServerError: 500" in failing[0]
    assert "transform_fn in serving.py raised RuntimeError" in failing[0]
    assert any(line.startswith(f"{name}: Failed: 3 of 4") for line in data)
    container = "\n".join(_events(logs, streams[1]))
    assert "RuntimeError: boom: record 1 asked to fail" in container
    found = logs.filter_log_events(logGroupName=GROUP, logStreamNamePrefix=name,
                                   filterPattern="boom")["events"]
    assert {e["logStreamName"] for e in found} == {streams[1]}


def test_a_container_that_dies_mid_job_fails_it(sm: Any, s3: Any, bucket: str,
                                                faulty_model: str, tag: str) -> None:
    s3.put_object(Bucket=bucket, Key="die/a.jsonl",
                  Body=_lines([{"id": 0}, {"id": 1, "action": "die"}, {"id": 2}]))
    name = "dies-" + uuid.uuid4().hex[:8]
    sm.create_transform_job(**_job(
        name, faulty_model, f"s3://{bucket}/die/", f"s3://{bucket}/die-out/",
        BatchStrategy="SingleRecord", ModelClientConfig={"InvocationsMaxRetries": 1}))
    described = _wait(sm, name)
    assert described["TransformJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert f"{bucket}/die/a.jsonl: ConnectionError (record 1" in reason
    assert "exited with code" in reason and f"{name}/i-" in reason
    assert _keys(s3, bucket, "die-out/") == []
    _no_process_left(tag)


def test_a_container_that_never_passes_ping_fails_the_job(
        tag: str, faulty_url: str, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="never/a.jsonl", Body=_lines([{"id": 0}]))
    settings = _base_settings(tag, SMSERVE_CONTAINER_STARTUP_TIMEOUT="6")
    with LocalStack(settings=settings) as stack:
        sm = _client(stack, "sagemaker")
        sm.create_model(ModelName="never-ready", PrimaryContainer={
            "Image": stack_image_uris(stack)["cpu"], "ModelDataUrl": faulty_url,
            "Environment": {"FAULTY_LOAD": "hang"}})
        sm.create_transform_job(**_job("never-ready", "never-ready", f"s3://{bucket}/never/",
                                       f"s3://{bucket}/never-out/"))
        described = _wait(sm, "never-ready", timeout=60)
    assert described["TransformJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith("AlgorithmError: the container did not pass the /ping health "
                             "check: ")
    assert "within 6 s" in reason and "SMSERVE_CONTAINER_STARTUP_TIMEOUT" in reason
    assert "never-ready/i-" in reason
    _no_process_left(tag)


def test_a_model_that_fails_to_load_fails_the_job_with_its_reason(
        sm: Any, s3: Any, bucket: str, faulty_url: str, tag: str,
        images: dict[str, str]) -> None:
    s3.put_object(Bucket=bucket, Key="broken/a.jsonl", Body=_lines([{"id": 0}]))
    sm.create_model(ModelName="broken-load", PrimaryContainer={
        "Image": images["cpu"], "ModelDataUrl": faulty_url,
        "Environment": {"FAULTY_LOAD": "raise"}})
    name = "broken-" + uuid.uuid4().hex[:8]
    sm.create_transform_job(**_job(name, "broken-load", f"s3://{bucket}/broken/",
                                   f"s3://{bucket}/broken-out/"))
    described = _wait(sm, name)
    assert described["TransformJobStatus"] == "Failed"
    reason = described["FailureReason"]
    assert reason.startswith("AlgorithmError: the container did not pass the /ping health "
                             "check: ")
    assert "exited with code" in reason
    assert "model_fn" in reason and "weights.npz is not in the archive" in reason, reason
    _no_process_left(tag)


def test_stop_a_running_job(sm: Any, s3: Any, logs: Any, bucket: str, faulty_model: str,
                            tag: str) -> None:
    s3.put_object(Bucket=bucket, Key="stop/a.jsonl", Body=_lines([{"id": 0, "action": "hang"}]))
    name = "stopped-" + uuid.uuid4().hex[:8]
    sm.create_transform_job(**_job(name, faulty_model, f"s3://{bucket}/stop/",
                                   f"s3://{bucket}/stop-out/"))
    deadline = time.monotonic() + 120
    while not any("BatchStrategy=" in line for line in _safe_events(logs, f"{name}/data-log")):
        described = sm.describe_transform_job(TransformJobName=name)
        assert described["TransformJobStatus"] == "InProgress", described
        assert time.monotonic() < deadline, "the job never reached its first invocation"
        time.sleep(0.3)
    time.sleep(0.5)
    sm.stop_transform_job(TransformJobName=name)
    assert sm.describe_transform_job(TransformJobName=name)["TransformJobStatus"] in (
        "Stopping", "Stopped")
    described = _wait(sm, name, timeout=30)
    assert described["TransformJobStatus"] == "Stopped"
    assert "FailureReason" not in described and "TransformEndTime" in described
    assert _keys(s3, bucket, "stop-out/") == []
    code, message = _refused(sm.stop_transform_job, TransformJobName=name)
    assert code == "ValidationException" and "Stopped" in message
    _no_process_left(tag)


def _safe_events(logs: Any, stream: str) -> list[str]:
    try:
        return _events(logs, stream)
    except ClientError:
        return []


# --- smserve replay ------------------------------------------------------------------------------


def _replay_env(stack: LocalStack, tag: str) -> dict[str, str]:
    return {**os.environ, **stack.environ(), TAG_VAR: tag, "SETUPTOOLS_USE_DISTUTILS": "stdlib"}


def test_replay_in_process_shows_the_failing_record(
        mixed_job: dict[str, Any], sm_stack: LocalStack, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from serving.cli import main

    for key, value in sm_stack.environ().items():
        monkeypatch.setenv(key, value)
    name = mixed_job["TransformJobName"]
    assert main(["replay", name]) == 1
    out, err = capsys.readouterr()
    assert "mixed/b-fail.jsonl" in out
    assert "request 1 of 2 (record 0, " in out and ": 200, " in out
    assert "request 2 of 2 (record 1, " in out and ": 500: " in out
    assert "RuntimeError: boom: record 1 asked to fail" in err
    assert "serving.py" in err  # the model's own frame

    assert main(["replay", name, "--object", "mixed/b-fail.jsonl", "--record", "0"]) == 0
    assert '{"id": 0, "echo": "fine"}' in capsys.readouterr().out
    assert main(["replay", name, "--object", "mixed/c-big.jsonl"]) == 1
    assert "over MaxPayloadInMB=1" in capsys.readouterr().out


def test_replay_with_the_model_server_in_the_foreground(
        mixed_job: dict[str, Any], sm_stack: LocalStack, tag: str) -> None:
    name = mixed_job["TransformJobName"]
    done = subprocess.run([sys.executable, "-m", "serving.cli", "replay", name, "--server",
                           "--object", "mixed/b-fail.jsonl"], env=_replay_env(sm_stack, tag),
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "request 2 of 2 (record 1, " in done.stdout and ": 500: " in done.stdout
    assert "RuntimeError: boom: record 1 asked to fail" in done.stdout  # the server's log
    assert "1 of 2 request(s) succeeded" in done.stdout
    _no_process_left(tag)
