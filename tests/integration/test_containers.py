"""Every example model in the real serving images, on a real Docker engine.

Both images are built from this tree once per session (the layer cache makes
that seconds after the first time; see :mod:`tests.docker_images`), then:
the demo with ``SMSERVE_CONTAINER_RUNNER=docker`` (all three models in
containers), a plain boto3 ``CreateTransformJob`` on the embedded stack with
the docker runner, and ``smserve check --serve`` in the model's image. Skips
say what is missing: no engine, or base images the engine lacks.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from local_test.clips import upload_clips
from serving import images
from serving.aws import ClientFactory
from serving.cli import main
from serving.errors import ImageError
from serving.local.stack import LocalStack
from serving.local.stackimages import stack_images
from serving.modelspec import load_spec
from serving.package import build_archive
from serving.pipeline import build_requests
from serving.runners._gpu import nvidia_runtime
from serving.settings import Settings
from serving.transform.transfer import encode_records
from tests.docker_images import ROOT, Lines, bases_or_skip, engine_or_skip, serving_image

pytestmark = [pytest.mark.docker, pytest.mark.integration, pytest.mark.timeout(1800)]

JSONL = "application/jsonlines"
GROUP = "/aws/sagemaker/TransformJobs"


@pytest.fixture(scope="module")
def engine() -> Iterator[Any]:
    client = engine_or_skip()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def cpu_image() -> str:
    return serving_image("cpu")


@pytest.fixture(scope="module")
def gpu_image() -> str:
    return serving_image("gpu")


def _cpu_note(engine: Any) -> str:
    """What the runner label says about a GPU image on this engine."""
    return "on the GPU" if nvidia_runtime(engine) else "on the CPU: the engine has no NVIDIA"


# --- the images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", images.FLAVORS)
def test_both_images_build_with_what_sagemaker_and_the_runner_need(
        flavor: str, engine: Any, request: pytest.FixtureRequest) -> None:
    image = request.getfixturevalue(f"{flavor}_image")
    config = engine.api.inspect_image(image)["Config"]
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Labels"]["org.opencontainers.image.title"] == f"smserve-{flavor}"
    assert "SMSERVE_BIND_HOST=0.0.0.0" in config["Env"]
    assert config["Cmd"] == ["serve"] and config["User"] == "1000:1000"
    wants_gpu = any(e.startswith("NVIDIA_VISIBLE_DEVICES=") for e in config["Env"])
    assert wants_gpu == (flavor == "gpu")
    # the smserve inside is this tree's: its version answers
    out = engine.containers.run(image, ["--version"], remove=True)
    assert out.decode().strip().endswith(images.default_tag())


def test_a_failed_build_step_leaves_no_tagged_image(engine: Any, cpu_image: str) -> None:
    tag = f"failed-{uuid.uuid4().hex[:8]}"
    args = {**bases_or_skip(engine, "cpu"),
            "EXTRA_REQUIREMENTS": "smserve-no-such-package==0.0.0"}
    progress = Lines()
    with pytest.raises(ImageError) as caught:
        images.build("cpu", tag, ROOT, engine, progress, build_args=args)
    message = caught.value.message
    assert "docker build failed at Step" in message and "non-zero code" in message
    assert "smserve image build --flavor cpu" in message
    with pytest.raises(Exception, match="No such image"):
        engine.api.inspect_image(images.local_image("cpu", tag))


# --- every model in the images -----------------------------------------------------------------


def test_the_demo_runs_all_three_models_in_containers(
        cpu_image: str, gpu_image: str, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from serving.demo import run_demo

    monkeypatch.setenv("SMSERVE_CONTAINER_RUNNER", "docker")
    lines: list[str] = []
    assert run_demo(ROOT / "models", clips=3, echo=lines.append) == 0, "\n".join(lines)
    summary = {line.split()[0]: line for line in lines if " records: 3 written" in line}
    assert set(summary) == {"clip_stats", "frame_features", "scene_classifier"}, lines
    assert summary["clip_stats"].endswith(f"-> docker {cpu_image})")
    assert summary["scene_classifier"].endswith(f"-> docker {cpu_image})")
    assert f"-> docker {gpu_image} ({_cpu_note(engine)}" in summary["frame_features"]
    progress = [line for line in lines if "frame_features    done" in line]
    assert progress and f"-> docker {gpu_image}" in progress[0]
    table = [line for line in lines if "s3://smserve-demo/results/scene_classifier/" in line]
    assert len(table) == 3


def _client(stack: LocalStack, service: str) -> Any:
    return boto3.client(service, endpoint_url=stack.endpoint_url, region_name=stack.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_a_boto3_transform_job_on_the_stack_runs_in_the_models_image(
        gpu_image: str, engine: Any, tmp_path: Any) -> None:
    settings = Settings.from_environ({**os.environ, "SMSERVE_CONTAINER_RUNNER": "docker",
                                      "SETUPTOOLS_USE_DISTUTILS": "stdlib"})
    stack = LocalStack(settings=settings).start()
    try:
        sm, s3, logs = (_client(stack, s) for s in ("sagemaker", "s3", "logs"))
        bucket = f"containers-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        folder = ROOT / "models" / "frame_features"
        archive = build_archive(folder, tmp_path / "model.tar.gz")
        s3.upload_file(str(archive), bucket, "models/frame_features/model.tar.gz")
        if stack.registry_address is None:
            pytest.skip("the stack runs no registry (apt-get install -y docker-registry): the "
                        "job's image cannot be pushed to its ECR")
        # As on AWS: the image is pushed to ECR, and the job pulls it from there by digest.
        # A tag of this test's own: moto's ECR records are per process, so another stack of
        # this test session may already hold smserve-gpu:<version> from its own registry.
        uri = stack_images(ClientFactory(stack.settings()), ("gpu",), registry=True,
                           tag=f"t-{uuid.uuid4().hex[:8]}", sources={"gpu": gpu_image})["gpu"]
        sm.create_model(
            ModelName="features-in-image",
            ExecutionRoleArn="arn:aws:iam::123456789012:role/sagemaker-execution",
            PrimaryContainer={"Image": uri,
                              "ModelDataUrl": f"s3://{bucket}/models/frame_features/model.tar.gz",
                              "Environment": {"SMSERVE_ALLOWED_BUCKETS": bucket,
                                              "SMSERVE_OUTPUT_PREFIXES": "results/"}})
        keys = upload_clips(s3, bucket, "videos/", 2)
        spec = load_spec(folder)
        requests = build_requests(spec, bucket, keys, specs={spec.name: spec})
        s3.put_object(Bucket=bucket, Key="requests/batch-1.jsonl", Body=encode_records(requests))
        name = "in-image-" + uuid.uuid4().hex[:8]
        sm.create_transform_job(
            TransformJobName=name, ModelName="features-in-image", BatchStrategy="MultiRecord",
            TransformInput={"DataSource": {"S3DataSource": {
                "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/requests/"}},
                "ContentType": JSONL, "SplitType": "Line"},
            TransformOutput={"S3OutputPath": f"s3://{bucket}/out/", "Accept": JSONL,
                             "AssembleWith": "Line"},
            TransformResources={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1})
        described = _wait(sm, name)
        assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
        out = s3.get_object(Bucket=bucket, Key="out/batch-1.jsonl.out")["Body"].read()
        answers = [json.loads(line) for line in out.splitlines()]
        assert [a["status"] for a in answers] == ["written", "written"]
        for request in requests:
            assert s3.head_object(Bucket=bucket, Key=request.output_path)["ContentLength"] > 0
        data_log = [e["message"] for e in logs.get_log_events(
            logGroupName=GROUP, logStreamName=f"{name}/data-log", startFromHead=True)["events"]]
        pulled = stack.ecr.pull_reference(uri)
        said = [line for line in data_log if f"image {uri} (docker {pulled}" in line]
        assert said and _cpu_note(engine) in said[0], data_log[:5]
    finally:
        stack.stop()


def _wait(sm: Any, name: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        described: dict[str, Any] = sm.describe_transform_job(TransformJobName=name)
        if described["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
            return described
        assert time.monotonic() < deadline, f"{name} still {described['TransformJobStatus']}"
        time.sleep(0.25)


def test_check_serve_runs_the_model_in_its_image(cpu_image: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SMSERVE_CONTAINER_RUNNER", "docker")
    code = main(["check", str(ROOT / "models" / "clip_stats"), "--serve"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"docker {cpu_image}, ready on http://127.0.0.1:" in out
    assert "HTTP 200" in out and "answered its sample request" in out
