"""The simulated day's real parts: the local SageMaker API's start-up delay, and a scaled hour.

Both run real model servers behind the embedded stack (moto on loopback, the
SageMaker API, ``smserve serve`` per container) and look at what a user
would: job states and log streams, objects in S3, messages on the queue.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from serving.aws import ClientFactory
from serving.capacity import load_config
from serving.capacity.model import arrived_in
from serving.capacity.simulate import BUCKET, QUEUE, RESULTS, simulate_day
from serving.local.stack import LocalStack
from serving.local.stackimages import stack_images
from serving.package import build_archive
from serving.settings import Settings
from tests.helpers import TAG_VAR, kill_tagged

ROOT = Path(__file__).resolve().parents[2]
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
JSONL = "application/jsonlines"
ECHO = """
def model_fn(model_dir):
    return None


def transform_fn(model, body, content_type, accept):
    return body, accept
"""


@pytest.fixture()
def tag(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A value only the processes this test starts carry; none may be left afterwards."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(TAG_VAR, value)
    monkeypatch.setenv("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    yield value
    left = kill_tagged(value, 10.0, width=160)
    assert not left, "processes left running:\n" + "\n".join(left)


def _wait_for(what: str, check: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def test_every_job_waits_the_startup_delay_and_a_stop_cuts_it_short(
        tag: str, tmp_path: Path) -> None:
    settings = Settings.from_environ({**os.environ, "SMSERVE_LOCAL_JOB_STARTUP_SECONDS": "900"})
    with LocalStack(settings=settings) as stack:
        def client(service: str) -> Any:
            return boto3.client(service, endpoint_url=stack.endpoint_url,
                                region_name=stack.region, aws_access_key_id="testing",
                                aws_secret_access_key="testing")

        sm, s3, logs = client("sagemaker"), client("s3"), client("logs")
        s3.create_bucket(Bucket="delay")
        folder = tmp_path / "echo"
        folder.mkdir()
        (folder / "serving.py").write_text(ECHO)
        s3.upload_file(str(build_archive(folder, tmp_path / "echo.tar.gz")), "delay",
                       "models/echo.tar.gz")
        s3.put_object(Bucket="delay", Key="in/a.jsonl", Body=b'{"x": 1}\n')
        image = stack_images(ClientFactory(stack.settings()), ("cpu",), registry=False)["cpu"]
        sm.create_model(ModelName="echo", ExecutionRoleArn=ROLE, PrimaryContainer={
            "Image": image, "ModelDataUrl": "s3://delay/models/echo.tar.gz"})
        sm.create_transform_job(
            TransformJobName="delayed", ModelName="echo",
            TransformInput={"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": "s3://delay/in/"}}, "ContentType": JSONL},
            TransformOutput={"S3OutputPath": "s3://delay/out/"},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})

        def data_log() -> list[str]:
            try:
                events = logs.get_log_events(logGroupName="/aws/sagemaker/TransformJobs",
                                             logStreamName="delayed/data-log",
                                             startFromHead=True)["events"]
            except logs.exceptions.ResourceNotFoundException:
                return []
            return [e["message"] for e in events]

        _wait_for("the provisioning line",
                  lambda: any("provisioning for 900 s" in line for line in data_log()))
        assert sm.describe_transform_job(
            TransformJobName="delayed")["TransformJobStatus"] == "InProgress"
        sm.stop_transform_job(TransformJobName="delayed")
        _wait_for("Stopped", lambda: sm.describe_transform_job(
            TransformJobName="delayed")["TransformJobStatus"] == "Stopped")
        streams = [s["logStreamName"] for s in logs.describe_log_streams(
            logGroupName="/aws/sagemaker/TransformJobs",
            logStreamNamePrefix="delayed/")["logStreams"]]
        assert streams == ["delayed/data-log"]  # no container was started
        assert "Contents" not in s3.list_objects_v2(Bucket="delay", Prefix="out/")


def test_a_scaled_hour_runs_every_arriving_clip_through_the_real_pipeline(tag: str) -> None:
    cfg = load_config(ROOT / "capacity.toml", ROOT / "models")
    cfg = replace(cfg, arrivals=replace(cfg.arrivals, clips_per_hour=60))
    seen: dict[str, Any] = {}

    def look(clients: ClientFactory) -> None:
        s3, sqs = clients.client("s3"), clients.client("sqs")
        buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]
                   if b["Name"].startswith(f"{BUCKET}-run-")]
        for model in cfg.models:
            seen[model] = sum(
                len(page.get("Contents", [])) for bucket in buckets
                for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=bucket, Prefix=f"{RESULTS}{model}/batches/"))
        url = sqs.get_queue_url(QueueName=QUEUE)["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        seen["queue"] = sum(int(v) for v in attributes.values())

    sim = simulate_day(cfg, ROOT / "models", scale=288, hours=1, start_hour=17,
                       echo=lambda _line: None, before_stop=look)
    measured = sim.measured
    assert measured.arrived == arrived_in(cfg, 1, 17)  # the planned clips, all sent
    assert measured.runs >= 1
    assert all(r.records <= cfg.dag.max_messages for r in sim.runs)
    # every processed clip has every model's output; the rest wait on the queue
    assert {m: seen[m] for m in cfg.models} == {m: measured.processed for m in cfg.models}
    assert seen["queue"] == measured.arrived - measured.processed
    assert measured.jobs == {m: measured.runs for m in cfg.models}
    # each job waited the scaled start-up before its containers started
    walls = [seconds for run in sim.runs for seconds in run.jobs.values()]
    assert walls and min(walls) >= sim.startup_delay * sim.scale
    assert sim.predicted.arrived == measured.arrived
