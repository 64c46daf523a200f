"""The SageMaker Python SDK against the embedded stack: ``sagemaker-core``'s resources.

Why ``sagemaker-core`` (``sagemaker.core.resources``) and not SDK v2's
``Transformer``: it is the SDK's current generation (SDK 3.x moved its
low-level layer and local mode there; DESIGN.md), it installs next to this
project's pins (numpy 1.26 kept, boto3 1.44; 19 small packages), where v2 is
the ~1 GB ``sagemaker`` package; and it is a thin, typed layer over exactly
the calls a pipeline makes (``CreateModel``/``DescribeModel``,
``CreateTransformJob``, ``DescribeTransformJob`` polled by
``TransformJob.wait``, ``ListTransformJobs``), deserialising every answer into
pydantic shapes generated from the service model, so it also checks that our
answers have the real response shapes.

Skipped when ``sagemaker-core`` is not installed.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from local_test.clips import upload_clips
from serving.local.stack import LocalStack
from serving.modelspec import load_spec
from serving.package import build_archive
from serving.pipeline import build_requests
from serving.settings import Settings
from serving.transform.transfer import encode_records
from tests.helpers import stack_image_uris

pytest.importorskip("sagemaker.core.resources", reason="sagemaker-core is not installed "
                    "(pip install sagemaker-core==2.27.0 with numpy<2 kept)")

pytestmark = pytest.mark.integration

FEATURES = Path(__file__).resolve().parents[2] / "models" / "frame_features"
JSONL = "application/jsonlines"


@pytest.fixture(scope="module")
def sdk_stack() -> Iterator[LocalStack]:
    """A stack of its own (the SDK caches clients per process; a fresh endpoint is clearer)."""
    stack = LocalStack(settings=Settings.from_environ(
        {**os.environ, "SETUPTOOLS_USE_DISTUTILS": "stdlib"})).start()
    try:
        yield stack
    finally:
        stack.stop()


def test_transform_job_create_and_wait_with_sagemaker_core(
        sdk_stack: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sagemaker.core.resources import Model, TransformJob
    from sagemaker.core.shapes import (
        ContainerDefinition,
        TransformDataSource,
        TransformInput,
        TransformOutput,
        TransformResources,
        TransformS3DataSource,
    )

    for key, value in sdk_stack.environ().items():
        monkeypatch.setenv(key, value)
    session = boto3.session.Session(region_name=sdk_stack.region)
    s3: Any = session.client("s3")
    bucket = f"sdk-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    archive = build_archive(FEATURES, tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), bucket, "models/frame_features/model.tar.gz")
    keys = upload_clips(s3, bucket, "clips/", 2)
    spec = load_spec(FEATURES)
    requests = build_requests(spec, bucket, keys, specs={spec.name: spec})
    s3.put_object(Bucket=bucket, Key="requests/part-0.jsonl", Body=encode_records(requests))

    model = Model.create(
        model_name="frame-features-sdk", session=session, region=sdk_stack.region,
        execution_role_arn="arn:aws:iam::123456789012:role/sagemaker-execution",
        primary_container=ContainerDefinition(
            image=stack_image_uris(sdk_stack)["gpu"],
            model_data_url=f"s3://{bucket}/models/frame_features/model.tar.gz",
            environment={"SMSERVE_ALLOWED_BUCKETS": bucket,
                         "SMSERVE_OUTPUT_PREFIXES": "results/"}))
    assert model.model_arn.endswith(":model/frame-features-sdk")

    job = TransformJob.create(
        transform_job_name="sdk-" + uuid.uuid4().hex[:8], model_name=model.model_name,
        session=session, region=sdk_stack.region,
        transform_input=TransformInput(
            data_source=TransformDataSource(s3_data_source=TransformS3DataSource(
                s3_data_type="S3Prefix", s3_uri=f"s3://{bucket}/requests/")),
            content_type=JSONL, split_type="Line"),
        transform_output=TransformOutput(s3_output_path=f"s3://{bucket}/out/", accept=JSONL,
                                         assemble_with="Line"),
        transform_resources=TransformResources(instance_type="ml.m5.large", instance_count=1),
        batch_strategy="MultiRecord", max_payload_in_mb=6)
    assert job.transform_job_status == "InProgress"
    started = time.monotonic()
    job.wait(poll=1, timeout=300)

    assert job.transform_job_status == "Completed"
    assert job.transform_end_time >= job.transform_start_time >= job.creation_time
    body = s3.get_object(Bucket=bucket, Key="out/part-0.jsonl.out")["Body"].read()
    answers = [json.loads(line) for line in body.splitlines()]
    assert [a["status"] for a in answers] == ["written", "written"]
    for request in requests:
        assert s3.head_object(Bucket=bucket, Key=request.output_path)["ContentLength"] > 0
    listed = [j.transform_job_name for j in TransformJob.get_all(
        name_contains=job.transform_job_name, session=session, region=sdk_stack.region)]
    assert listed == [job.transform_job_name]
    assert time.monotonic() - started < 300
