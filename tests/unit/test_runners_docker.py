"""DockerRunner: the containers it asks the engine for, checked against a fake Engine API whose
'containers' really answer /ping; and, where an engine and the image exist, the real image."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import images
from serving.errors import ImageError, ServerStartError
from serving.runners.docker import DockerRunner, container_env
from tests.unit.fake_engine import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "smserve-cpu:0.1.0"
BASE_ENV = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:4566",
    "AWS_ENDPOINT_URL_S3": "http://localhost:4566/",
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1", "AWS_PROFILE": "dev",
    "SMSERVE_ALLOWED_BUCKETS": "b1", "SMSERVE_RUN_DIR": "/host/run",
    "SAGEMAKER_BASE_DIR": "/host/opt/ml", "PATH": "/host/bin", "HOME": "/root",
}


@pytest.fixture()
def engine() -> Iterator[FakeEngine]:
    with FakeEngine(images={IMAGE}) as fake:
        yield fake


@pytest.fixture()
def client(engine: FakeEngine) -> Iterator[Any]:
    c = images.connect({"DOCKER_HOST": engine.url}, timeout=10)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "code").mkdir(parents=True)
    (folder / "code" / "serving.py").write_text("def model_fn(d):\n    return d\n")
    return folder


def _env(config: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config["Env"])


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(url + "/ping", timeout=5) as resp:
        return bool(resp.status == 200)


def test_container_env_forwards_settings_not_host_paths() -> None:
    env = container_env(BASE_ENV, {"SAGEMAKER_BATCH": "true", "SMSERVE_ALLOWED_BUCKETS": "b2"},
                        port=8080, bind_host="0.0.0.0", rewrite_loopback=True, home=None)
    assert env == {
        "AWS_ENDPOINT_URL": "http://host.docker.internal:4566",
        "AWS_ENDPOINT_URL_S3": "http://host.docker.internal:4566/",
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "SMSERVE_ALLOWED_BUCKETS": "b2", "SAGEMAKER_BATCH": "true",
        "SAGEMAKER_BIND_TO_PORT": "8080", "SMSERVE_BIND_HOST": "0.0.0.0",
    }


def test_host_network_on_a_linux_engine(engine: FakeEngine, client: Any,
                                        model_dir: Path) -> None:
    runner = DockerRunner(IMAGE, client, BASE_ENV, startup_timeout=20)
    assert runner.resolved_network() == "host"
    containers = runner.start(model_dir, {"SAGEMAKER_BATCH": "true"}, count=2)
    try:
        assert [c.index for c in containers] == [0, 1]
        assert all(_healthy(c.url) for c in containers)
        assert all(c.process.poll() is None for c in containers)
        creates = engine.calls("POST", "/containers/create")
        assert len(creates) == 2
        config = creates[0].json()
        assert config["Image"] == IMAGE and config["Cmd"] == ["serve"]
        host = config["HostConfig"]
        assert host["NetworkMode"] == "host"
        assert host["Binds"] == [f"{model_dir.resolve()}:/opt/ml/model:ro"]
        assert config["User"] == f"{os.getuid()}:{os.getgid()}"
        assert config["Labels"]["smserve.runner"] == "docker"
        env = _env(config)
        port = int(env["SAGEMAKER_BIND_TO_PORT"])
        assert {c.port for c in containers} >= {port} and port < 32767
        assert env["SMSERVE_BIND_HOST"] == "127.0.0.1"
        assert env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:4566"
        assert env["HOME"] == "/tmp" and env["SAGEMAKER_BATCH"] == "true"
        for absent in ("PATH", "AWS_PROFILE", "SMSERVE_RUN_DIR", "SAGEMAKER_BASE_DIR"):
            assert absent not in env
        assert "DeviceRequests" not in host or not host["DeviceRequests"]
    finally:
        for container in containers:
            container.stop(grace=1)
    assert len(engine.calls("POST", r"/containers/[0-9a-f]+/stop")) == 2
    assert len(engine.calls("DELETE", r"/containers/[0-9a-f]+")) == 2
    assert engine.containers == {}


def test_bridge_network_and_gpus_on_docker_desktop(engine: FakeEngine, client: Any,
                                                   model_dir: Path) -> None:
    engine.operating_system = "Docker Desktop"
    engine.runtimes = ("runc", "nvidia")
    runner = DockerRunner(IMAGE, client, BASE_ENV, gpus="all", user=None, startup_timeout=20)
    (container,) = runner.start(model_dir)
    try:
        assert _healthy(container.url)
        config = engine.calls("POST", "/containers/create")[0].json()
        host = config["HostConfig"]
        assert host["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1",
                                                      "HostPort": str(container.port)}]}
        assert host["ExtraHosts"] == ["host.docker.internal:host-gateway"]
        assert host["DeviceRequests"][0]["Count"] == -1
        assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
        assert "User" not in config or not config["User"]
        env = _env(config)
        assert env["SAGEMAKER_BIND_TO_PORT"] == "8080" and env["SMSERVE_BIND_HOST"] == "0.0.0.0"
        assert env["AWS_ENDPOINT_URL"] == "http://host.docker.internal:4566"
    finally:
        container.stop(grace=1)
    assert container.process.poll() is not None


def test_a_container_that_exits_fails_fast_with_its_log(engine: FakeEngine, client: Any,
                                                        model_dir: Path) -> None:
    engine.container_behaviour = "exit"
    runner = DockerRunner(IMAGE, client, BASE_ENV, startup_timeout=20)
    with pytest.raises(ServerStartError) as caught:
        runner.start(model_dir)
    assert "exited with code 3 before answering /ping" in caught.value.message
    assert "the model failed to load: boom" in caught.value.message
    assert engine.containers == {}, "the failed container is removed"


def test_a_missing_image_says_to_build_it(engine: FakeEngine, client: Any,
                                          model_dir: Path) -> None:
    runner = DockerRunner("smserve-gpu:9.9.9", client, BASE_ENV)
    with pytest.raises(ServerStartError, match=r"no local image smserve-gpu:9\.9\.9; build it"):
        runner.start(model_dir)


def test_a_gpu_image_without_an_nvidia_runtime_runs_on_the_cpu(engine: FakeEngine, client: Any,
                                                               model_dir: Path) -> None:
    engine.images.add("smserve-gpu:1.0")
    engine.image_env["smserve-gpu:1.0"] = ["NVIDIA_VISIBLE_DEVICES=all"]
    lines: list[str] = []
    runner = DockerRunner("smserve-gpu:1.0", client, BASE_ENV, startup_timeout=20,
                          log=lines.append)
    (container,) = runner.start(model_dir)
    container.stop(grace=1)
    host = engine.calls("POST", "/containers/create")[0].json()["HostConfig"]
    assert not host.get("DeviceRequests")
    said = [line for line in lines if "NVIDIA" in line]
    assert said == ["smserve-gpu:1.0: on the CPU: the engine has no NVIDIA runtime; no GPU "
                    "device request: the model runs on the CPU (SMSERVE_DOCKER_GPUS=all asks "
                    "for a GPU anyway)"]
    assert runner.describe() == ("docker smserve-gpu:1.0 (on the CPU: the engine has no NVIDIA "
                                 "runtime)")
    # the same image where the engine has the NVIDIA runtime asks for every GPU
    engine.runtimes = ("runc", "nvidia")
    gpu_runner = DockerRunner("smserve-gpu:1.0", client, BASE_ENV, startup_timeout=20)
    (container,) = gpu_runner.start(model_dir)
    container.stop(grace=1)
    host = engine.calls("POST", "/containers/create")[1].json()["HostConfig"]
    assert host["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert gpu_runner.describe() == "docker smserve-gpu:1.0 (on the GPU)"
    # a CPU image never asks, and there is nothing to say about it
    assert DockerRunner(IMAGE, client, BASE_ENV).describe() == f"docker {IMAGE}"


def test_a_gpu_asked_for_and_not_had_shows_the_engines_whole_message(
        engine: FakeEngine, client: Any, model_dir: Path) -> None:
    from tests.unit.fake_engine import NO_GPU

    runner = DockerRunner(IMAGE, client, BASE_ENV, gpus="all", startup_timeout=20)
    with pytest.raises(ServerStartError) as caught:
        runner.start(model_dir)
    message = caught.value.message
    assert message.startswith(f"the Docker engine could not start container 0 from {IMAGE}: "
                              f"{NO_GPU} (HTTP 500); the container asked for every GPU")
    assert "SMSERVE_DOCKER_GPUS=auto" in message and "..." not in message
    assert engine.containers == {}, "the container that could not start is removed"
    with pytest.raises(ValueError, match="gpus must be one of auto, all, none"):
        DockerRunner(IMAGE, client, BASE_ENV, gpus="yes")


def test_for_flavor_needs_an_engine(engine: FakeEngine) -> None:
    runner = DockerRunner.for_flavor("gpu", {"DOCKER_HOST": engine.url}, "1.0")
    assert (runner.image, runner.gpus) == ("smserve-gpu:1.0", "auto")
    runner = DockerRunner.for_flavor("gpu", {"DOCKER_HOST": engine.url,
                                             "SMSERVE_DOCKER_GPUS": "none"})
    assert runner.gpus == "none"
    with pytest.raises(ImageError, match="no Docker engine is reachable"):
        DockerRunner.for_flavor("cpu", {"DOCKER_HOST": "tcp://127.0.0.1:1"})


@pytest.mark.docker
@pytest.mark.timeout(600)
def test_the_real_cpu_image_serves_a_model(request: pytest.FixtureRequest) -> None:
    from local_test.docker_harness import harness_environ, running_image
    from tests.docker_images import serving_image

    environ = dict(os.environ)
    serving_image("cpu")  # built from this tree, or a skip saying what is missing
    stack = request.getfixturevalue("stack")
    with running_image(ROOT / "models" / "frame_features", "cpu",
                       harness_environ(stack, environ)) as containers:
        assert _healthy(containers[0].url)


def test_choose_runner(engine: FakeEngine) -> None:
    from serving.errors import ConfigError
    from serving.runners.docker import choose_runner
    from serving.runners.process import ProcessRunner

    assert isinstance(choose_runner("process", "cpu", {"PATH": "/bin"}), ProcessRunner)
    docker = choose_runner("docker", "gpu", {"DOCKER_HOST": engine.url}, tag="2.0")
    assert isinstance(docker, DockerRunner) and docker.image == "smserve-gpu:2.0"
    with pytest.raises(ConfigError, match="SMSERVE_CONTAINER_RUNNER='k8s' is not a runner"):
        choose_runner("k8s", "cpu", {})


def test_the_stacks_jobs_with_the_docker_runner_and_no_engine_fail_saying_so() -> None:
    """SMSERVE_CONTAINER_RUNNER=docker on the embedded stack: CreateTransformJob runs the
    model's Image on the engine DOCKER_HOST names; with none there, the job fails at once
    with the reason (a real stack and boto3; no container is started)."""
    import time

    import boto3

    from serving.local.stack import LocalStack
    from serving.settings import Settings

    settings = Settings.from_environ({**os.environ, "SMSERVE_CONTAINER_RUNNER": "docker",
                                      "DOCKER_HOST": "tcp://127.0.0.1:1"})
    stack = LocalStack(settings=settings).start()
    try:
        sm = boto3.client("sagemaker", endpoint_url=stack.endpoint_url, region_name=stack.region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        sm.create_model(ModelName="in-image", ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
                        PrimaryContainer={"Image": IMAGE,
                                          "ModelDataUrl": "s3://no-engine-bucket/model.tar.gz"})
        sm.create_transform_job(
            TransformJobName="no-engine", ModelName="in-image",
            TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                            "S3Uri": "s3://no-engine-bucket/in/"}}},
            TransformOutput={"S3OutputPath": "s3://no-engine-bucket/out/"},
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
        deadline = time.monotonic() + 60
        while (described := sm.describe_transform_job(TransformJobName="no-engine")
               )["TransformJobStatus"] == "InProgress":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert described["TransformJobStatus"] == "Failed"
        assert described["FailureReason"].startswith(
            "ClientError: no Docker engine is reachable at DOCKER_HOST=tcp://127.0.0.1:1")
    finally:
        stack.stop()
