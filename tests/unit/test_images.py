"""serving.images and `smserve image`: names, the ECR flow on the embedded stack, and the
Docker SDK calls checked against a fake Engine API (no Docker engine needed here)."""

from __future__ import annotations

import base64
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from serving import __version__, _image_bases, images
from serving._ecr import aws_error
from serving.aws import ClientFactory
from serving.cli import main
from serving.errors import ConfigError, ImageError
from serving.local.stack import LocalStack
from serving.settings import BASE_IMAGE_ARGS, Settings
from tests.unit.fake_engine import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
BUILD_OK = [
    {"stream": "Step 1/3 : FROM python:3.11-slim-bookworm AS build\n"},
    {"stream": " ---> 0123456789ab\n"},
    {"stream": "Step 2/3 : RUN pip install ...\n"},
    {"stream": "Step 3/3 : ENTRYPOINT [\"smserve\"]\n"},
    {"aux": {"ID": "sha256:" + "cd" * 32}},
    {"stream": "Successfully built cdcdcdcdcdcd\n"},
]
PUSH_OK = [
    {"status": "The push refers to repository [x]"},
    {"status": "Preparing", "progressDetail": {}, "id": "layer1"},
    {"status": "Preparing", "progressDetail": {}, "id": "layer2"},
    {"status": "Layer already exists", "progressDetail": {}, "id": "layer2"},
    {"status": "Pushing", "progressDetail": {"current": 500, "total": 1000}, "id": "layer1"},
    {"status": "Pushing", "progressDetail": {"current": 1000, "total": 1000}, "id": "layer1"},
    {"status": "Pushed", "progressDetail": {}, "id": "layer1"},
    {"status": "0.1.0: digest: sha256:" + "ef" * 32 + " size: 1234"},
    {"progressDetail": {}, "aux": {"Tag": "0.1.0", "Digest": "sha256:" + "ef" * 32,
                                   "Size": 1234}},
]
REFUSED = [
    {"status": "Preparing", "progressDetail": {}, "id": "layer1"},
    {"errorDetail": {"message": "tag invalid: The image tag '0.1.0' already exists in the "
                                "'smserve-cpu' repository and cannot be overwritten because "
                                "the repository is immutable."},
     "error": "tag invalid: The image tag '0.1.0' already exists"},
]


class Recorder:
    """A Progress that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.bars: list[tuple[int, int, str]] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def bar(self, done: int, total: int, text: str) -> None:
        self.bars.append((done, total, text))


#: The Dockerfiles' default bases, which the fake engine has (as a machine that pulled them).
BASES = {image for flavor in images.FLAVORS
         for image in _image_bases.declared(images.dockerfile_for(flavor, ROOT)).values()}


@pytest.fixture()
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEngine]:
    for arg in BASE_IMAGE_ARGS:  # the Dockerfiles' defaults, whatever this machine exports
        monkeypatch.delenv(f"SMSERVE_{arg}", raising=False)
    with FakeEngine(images=set(BASES), build_events=list(BUILD_OK),
                    push_events=list(PUSH_OK)) as fake:
        yield fake


@pytest.fixture()
def docker_client(engine: FakeEngine) -> Iterator[Any]:
    client = images.connect({"DOCKER_HOST": engine.url}, timeout=10)
    try:
        yield client
    finally:
        client.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _repo(request: pytest.FixtureRequest) -> str:
    return "t/" + request.node.name.lower().replace("_", "-")[:60]


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", ["tpu", "CPU", "", "cuda"])
def test_unknown_flavor_is_a_config_error_naming_the_choices(flavor: str) -> None:
    with pytest.raises(ConfigError, match="use one of: cpu, gpu"):
        images.check_flavor(flavor)


@pytest.mark.parametrize("name", ["ab", "smserve-gpu", "team/smserve-gpu", "a.b_c-d/e0/f",
                                  "x" * 256])
def test_valid_repository_names_pass(name: str) -> None:
    assert images.check_repository(name) == name


@pytest.mark.parametrize("name", ["a", "x" * 257, "Smserve", "bad_", "-abc", "a//b", "a/",
                                  "a..b", "a b", "a:b", "/abc"])
def test_repository_names_breaking_ecr_rules_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="repository name"):
        images.check_repository(name)


@pytest.mark.parametrize("tag", [".x", "-x", "a" * 129, "a b", "a/b", ""])
def test_bad_tags_are_refused(tag: str) -> None:
    with pytest.raises(ConfigError, match="not a valid image tag"):
        images.check_tag(tag)


def test_missing_dockerfile_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no Dockerfile at .*containers/gpu/Dockerfile"):
        images.dockerfile_for("gpu", tmp_path)


def test_both_dockerfiles_are_found_in_the_repository() -> None:
    for flavor in images.FLAVORS:
        assert images.dockerfile_for(flavor, ROOT).is_file()


# --- the ECR flow on the embedded stack -------------------------------------------------------


def test_repository_is_created_once_with_scan_on_push_and_immutable_tags(
        clients: ClientFactory, request: pytest.FixtureRequest) -> None:
    ecr = clients.client("ecr")
    name = _repo(request)
    first, created = images.ensure_repository(ecr, name)
    again, created_again = images.ensure_repository(ecr, name)
    assert (created, created_again) == (True, False)
    assert first["repositoryArn"] == again["repositoryArn"]
    stored = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
    assert stored["imageScanningConfiguration"] == {"scanOnPush": True}
    assert stored["imageTagMutability"] == "IMMUTABLE"


@pytest.fixture()
def registry(stack: LocalStack) -> str:
    """The address of the stack's registry (skips where docker-registry is not installed)."""
    if stack.registry_address is None:
        pytest.skip("the embedded stack runs no registry: apt-get install -y docker-registry")
    return stack.registry_address


def test_login_decodes_the_token_and_takes_the_registry_from_proxy_endpoint(
        clients: ClientFactory, registry: str) -> None:
    ecr = clients.client("ecr")
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    login = images.registry_login(ecr)
    assert (login.username, login.password) == (user, password) == ("AWS", password)
    assert login.endpoint == data["proxyEndpoint"]
    assert login.registry == re.sub(r"^[a-z]+://", "", data["proxyEndpoint"]) == registry
    assert login.auth_config() == {"username": "AWS", "password": password,
                                   "serveraddress": login.registry}
    assert password not in repr(login)
    assert images.image_uri(login.registry, "team/smserve-gpu", "0.1.0") == (
        f"{registry}/team/smserve-gpu:0.1.0")


def test_missing_credentials_are_one_line_saying_what_to_set(
        stack: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        engine: FakeEngine, docker_client: Any) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = Settings.from_environ({"AWS_ENDPOINT_URL": stack.endpoint_url,
                                      "AWS_REGION": "us-east-1"})
    engine.images.add("smserve-cpu:0.1.0")
    with pytest.raises(ImageError) as caught:
        images.push("cpu", "smserve-cpu", None, "0.1.0", ClientFactory(settings),
                    docker_client, Recorder())
    message = str(caught.value)
    assert "no AWS credentials" in message and "AWS_ACCESS_KEY_ID" in message
    assert "\n" not in message


@pytest.mark.parametrize(("code", "expected"), [
    ("ExpiredTokenException", "have expired"),
    ("ExpiredToken", "have expired"),
    ("UnrecognizedClientException", "does not accept these credentials"),
    ("AccessDeniedException", "not allowed to"),
    ("ThrottlingException", "AWS refused"),
])
def test_aws_errors_become_one_line_saying_what_to_fix(code: str, expected: str) -> None:
    err = ClientError({"Error": {"Code": code, "Message": "The security token\nis bad"}},
                      "GetAuthorizationToken")
    message = str(aws_error(err, "use ECR", "smserve image push ..."))
    assert expected in message
    assert "\n" not in message


# --- the Docker SDK calls, against the fake engine -----------------------------------------------


def test_no_reachable_engine_is_one_line_and_exit_6(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{_closed_port()}")
    assert main(["image", "build", "--flavor", "cpu", "--context", str(ROOT)]) == 6
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "no Docker engine is reachable at DOCKER_HOST=tcp://127.0.0.1:" in err
    assert "Connection refused" in err and "start Docker" in err
    assert images.engine_available({"DOCKER_HOST": f"tcp://127.0.0.1:{_closed_port()}"}) is False


def test_connect_pings_the_engine(engine: FakeEngine, docker_client: Any) -> None:
    assert engine.calls("GET", "/_ping")
    assert images.engine_available({"DOCKER_HOST": engine.url})


def test_build_sends_the_context_and_streams_progress(engine: FakeEngine,
                                                      docker_client: Any) -> None:
    progress = Recorder()
    image_id = images.build("cpu", "0.1.0", ROOT, docker_client, progress,
                            build_args={"EXTRA_REQUIREMENTS": "scipy==1.11.4"})
    assert image_id == "sha256:" + "cd" * 32
    (call,) = engine.calls("POST", "/build")
    assert call.query["t"] == "smserve-cpu:0.1.0"
    assert call.query["dockerfile"] == "containers/cpu/Dockerfile"
    assert call.query["platform"] == "linux/amd64"
    assert json.loads(call.query["buildargs"]) == {"EXTRA_REQUIREMENTS": "scipy==1.11.4"}
    dockerfile = ROOT / "containers" / "cpu" / "Dockerfile"
    assert call.tar_names() == images.context_files(ROOT, dockerfile)
    assert "Step 2/3 : RUN pip install ..." in progress.lines
    assert progress.lines[-1].startswith("built smserve-cpu:0.1.0")


def test_a_failed_build_step_is_one_line_naming_the_step(engine: FakeEngine,
                                                         docker_client: Any) -> None:
    engine.build_events = [
        {"stream": "Step 1/3 : FROM python:3.11-slim-bookworm AS build\n"},
        {"stream": "Step 2/3 : RUN pip install nope\n"},
        {"errorDetail": {"code": 1, "message": "The command '/bin/sh -c pip install nope' "
                                               "returned a non-zero code: 1"},
         "error": "The command returned a non-zero code: 1"},
    ]
    with pytest.raises(ImageError) as caught:
        images.build("gpu", "0.1.0", ROOT, docker_client, Recorder())
    message = str(caught.value)
    assert "at Step 2/3" in message and "non-zero code: 1" in message
    assert "smserve image build --flavor gpu" in message and "\n" not in message


def test_a_failed_build_at_a_from_step_advises_another_base(engine: FakeEngine,
                                                            docker_client: Any) -> None:
    engine.build_events = [
        {"stream": "Step 1/3 : FROM ${PYTHON_IMAGE} AS deps\n"},
        {"errorDetail": {"message": "pull access denied for nope, repository does not exist"},
         "error": "pull access denied"},
    ]
    with pytest.raises(ImageError) as caught:
        images.build("cpu", "0.1.0", ROOT, docker_client, Recorder())
    message = str(caught.value)
    assert "pull access denied" in message and "base image" in message
    assert "--build-arg <ARG>=IMAGE" in message and "fix the Dockerfile" not in message


def test_a_base_image_that_cannot_be_pulled_is_named_with_the_fix(
        engine: FakeEngine, docker_client: Any) -> None:
    engine.images.discard("python:3.11-slim-bookworm")
    with pytest.raises(ImageError) as caught:
        images.build("cpu", "0.1.0", ROOT, docker_client, Recorder())
    message = str(caught.value)
    assert message.startswith("the base image python:3.11-slim-bookworm (PYTHON_IMAGE) is not "
                              "on the Docker engine and could not be pulled: Get ")
    assert "registry-1.docker.io" in message
    assert "SMSERVE_PYTHON_IMAGE=IMAGE" in message and "--build-arg PYTHON_IMAGE=IMAGE" in message
    assert "fix the Dockerfile" not in message and "\n" not in message
    (pull,) = engine.calls("POST", "/images/create")
    assert pull.query["fromImage"] == "python" and pull.query["tag"] == "3.11-slim-bookworm"
    assert engine.calls("POST", "/build") == []
    assert "smserve-cpu:0.1.0" not in engine.images


def test_a_missing_base_is_pulled_before_the_build(engine: FakeEngine,
                                                  docker_client: Any) -> None:
    engine.images.discard("ubuntu:22.04")
    engine.pull_events = [{"status": "Pulling from library/ubuntu"},
                          {"status": "Status: Downloaded newer image for ubuntu:22.04"}]
    progress = Recorder()
    images.build("gpu", "0.1.0", ROOT, docker_client, progress)
    assert "pulling the base image ubuntu:22.04 (BUILD_IMAGE)" in progress.lines
    assert [c.query["fromImage"] for c in engine.calls("POST", "/images/create")] == ["ubuntu"]
    assert len(engine.calls("POST", "/build")) == 1


def test_with_pulling_off_a_missing_base_fails_before_any_pull(engine: FakeEngine,
                                                               docker_client: Any) -> None:
    with pytest.raises(ImageError) as caught:
        images.build("gpu", "0.1.0", ROOT, docker_client, Recorder(), pull_bases=False,
                     build_args={"CUDA_IMAGE": "stand/in:1"})
    assert str(caught.value).startswith("the base image stand/in:1 (CUDA_IMAGE) is not on the "
                                        "Docker engine and pulling is off")
    assert engine.calls("POST", "/images/create") == [] and engine.calls("POST", "/build") == []


def test_cli_build_takes_the_bases_from_the_environment(
        engine: FakeEngine, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    engine.images |= {"stand/python:1", "stand/debian:1"}
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    monkeypatch.setenv("SMSERVE_PYTHON_IMAGE", "stand/python:1")
    monkeypatch.setenv("SMSERVE_BUILD_IMAGE", "stand/debian:1")
    monkeypatch.setenv("SMSERVE_CUDA_IMAGE", "stand/debian:1")
    assert main(["image", "build", "--flavor", "cpu", "--context", str(ROOT)]) == 0
    assert main(["image", "build", "--flavor", "gpu", "--context", str(ROOT), "--build-arg",
                 "CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04"]) == 0
    cpu, gpu = (json.loads(c.query["buildargs"]) for c in engine.calls("POST", "/build"))
    assert cpu == {"PYTHON_IMAGE": "stand/python:1"}  # only what the Dockerfile declares
    assert gpu == {"BUILD_IMAGE": "stand/debian:1",  # an explicit --build-arg wins
                   "CUDA_IMAGE": "nvidia/cuda:12.4.1-runtime-ubuntu22.04"}
    assert engine.calls("POST", "/images/create") == []
    err = capsys.readouterr().err
    assert "on PYTHON_IMAGE=stand/python:1" in err


def test_cli_build_with_no_pull_and_a_missing_base_exits_6(
        engine: FakeEngine, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    monkeypatch.setenv("SMSERVE_PYTHON_IMAGE", "not/here:1")
    assert main(["image", "build", "--flavor", "cpu", "--no-pull", "--context", str(ROOT)]) == 6
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("smserve: error: the base image not/here:1 (PYTHON_IMAGE)")
    assert engine.calls("POST", "/build") == []


def test_push_tags_and_pushes_with_the_ecr_login(engine: FakeEngine, docker_client: Any,
                                                 clients: ClientFactory, registry: str,
                                                 request: pytest.FixtureRequest) -> None:
    engine.images.add("smserve-cpu:0.1.0")
    repo = _repo(request)
    progress = Recorder()
    result = images.push("cpu", repo, None, "0.1.0", clients, docker_client, progress,
                         create_repository=True)
    login = images.registry_login(clients.client("ecr"))
    target = f"{login.registry}/{repo}"
    described = clients.client("ecr").describe_repositories(repositoryNames=[repo])
    assert result.uri == f"{described['repositories'][0]['repositoryUri']}:0.1.0"
    assert result.digest == "sha256:" + "ef" * 32
    assert result.repository_created is True

    assert engine.calls("GET", "/images/smserve-cpu:0.1.0/json")
    (tag,) = engine.calls("POST", "/images/smserve-cpu:0.1.0/tag")
    assert (tag.query["repo"], tag.query["tag"]) == (target, "0.1.0")
    (pushed,) = engine.calls("POST", f"/images/{target}/push")
    assert pushed.query["tag"] == "0.1.0"
    auth = json.loads(base64.urlsafe_b64decode(pushed.headers["X-Registry-Auth"]))
    assert auth == {"username": "AWS", "password": login.password,
                    "serveraddress": login.registry}

    assert progress.bars[-1][:2] == (1000, 1000)
    assert progress.bars[-1][2] == "2/2 layers pushed, 1 already there"
    assert any(line.startswith(f"ECR repository {repo}: created (tags immutable, scan on push "
                               "on)") for line in progress.lines)

    again = images.push("cpu", repo, None, "0.1.0", clients, docker_client, Recorder())
    assert again.repository_created is False and again.uri == result.uri


def test_a_push_the_registry_refuses_is_one_line_and_exit_6(
        engine: FakeEngine, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], registry: str, clients: ClientFactory) -> None:
    engine.images.add("smserve-cpu:0.1.0")
    engine.push_events = list(REFUSED)
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    code = main(["image", "push", "--flavor", "cpu", "--repository", "t/refused-push",
                 "--tag", "0.1.0", "--create-repository"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 6
    assert last.startswith("smserve: error: the registry refused ")
    assert "already exists" in last and "push a new tag (--tag)" in last
    # no repository half made: the one this push created is gone again
    ecr = clients.client("ecr")
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_repositories(repositoryNames=["t/refused-push"])


def test_push_without_the_local_image_says_to_build_it(engine: FakeEngine, docker_client: Any,
                                                       clients: ClientFactory) -> None:
    with pytest.raises(ImageError, match=r"no local image smserve-gpu:0.2.0; build it first: "
                                         r"smserve image build --flavor gpu --tag 0.2.0"):
        images.push("gpu", "smserve-gpu", None, "0.2.0", clients, docker_client, Recorder())
    assert not engine.calls("POST", r"/images/.*/push")


def test_cli_push_prints_the_image_uri_last(engine: FakeEngine, aws_env: dict[str, str],
                                            monkeypatch: pytest.MonkeyPatch, registry: str,
                                            tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    engine.images.add(f"smserve-gpu:{__version__}")
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    monkeypatch.setenv("SMSERVE_IMAGES_FILE", str(tmp_path / "images.json"))
    assert main(["image", "push", "--flavor", "gpu", "--repository", "cli/smserve-gpu",
                 "--create-repository"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].endswith(f".dkr.ecr.us-east-1.amazonaws.com/cli/smserve-gpu:{__version__}")
    recorded = json.loads((tmp_path / "images.json").read_text())["images"]["gpu"]
    assert recorded["uri"] == out[-1] and recorded["endpoint"] == aws_env["AWS_ENDPOINT_URL"]


def test_cli_push_to_a_missing_repository_says_to_create_it(
        engine: FakeEngine, aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], clients: ClientFactory) -> None:
    engine.images.add("smserve-cpu:0.1.0")
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    code = main(["image", "push", "--flavor", "cpu", "--repository", "t/never-made",
                 "--tag", "0.1.0"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert "ECR repository t/never-made does not exist in us-east-1" in last
    assert "--create-repository" in last and "RepositoryNotFoundException" in last
    assert not engine.calls("POST", r"/images/.*/(tag|push)")
    ecr = clients.client("ecr")
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_repositories(repositoryNames=["t/never-made"])


def test_cli_build_prints_the_image_name(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    assert main(["image", "build", "--flavor", "gpu", "--tag", "t1", "--context",
                 str(ROOT)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "smserve-gpu:t1"


# --- bad input and dry runs through the CLI ------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["image", "build", "--flavor", "tpu"],
    ["image", "push", "--flavor", "tpu", "--repository", "ok-name"],
    ["image", "push", "--flavor", "cpu", "--repository", "Not_OK"],
    ["image", "push", "--flavor", "cpu", "--repository", "x"],
    ["image", "build", "--flavor", "cpu", "--tag=-bad"],
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], engine: FakeEngine,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    assert main([*argv, "--dry-run"]) == 2
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("smserve: error: ") for line in err)
    assert engine.requests == []


def test_missing_dockerfile_through_the_cli(tmp_path: Path, engine: FakeEngine,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    assert main(["image", "build", "--flavor", "cpu", "--context", str(tmp_path)]) == 2
    assert "no Dockerfile at" in capsys.readouterr().err
    assert engine.requests == []


def test_build_dry_run_prints_the_steps_and_touches_nothing(
        engine: FakeEngine, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    assert main(["image", "build", "--flavor", "gpu", "--tag", "0.9.0", "--context", str(ROOT),
                 "--build-arg", "EXTRA_REQUIREMENTS=scipy==1.11.4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: nothing is built, pushed or created")
    assert f"DOCKER_HOST={engine.url}" in out
    assert "files, " in out and "MB after .dockerignore" in out
    assert ("build containers/gpu/Dockerfile for linux/amd64 as smserve-gpu:0.9.0 "
            "--build-arg EXTRA_REQUIREMENTS=...") in out
    assert engine.requests == []


def test_push_dry_run_prints_the_steps_and_touches_nothing(
        engine: FakeEngine, clients: ClientFactory, aws_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine.url)
    assert main(["image", "push", "--flavor", "cpu", "--repository", "dry/run-only",
                 "--region", "eu-west-1", "--tag", "1.2.3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for step in ("CreateRepository with scan on push and immutable tags",
                 "GetAuthorizationToken",
                 "tag smserve-cpu:1.2.3 as <account>.dkr.ecr.eu-west-1.amazonaws.com/"
                 "dry/run-only:1.2.3",
                 "print the image URI for CreateModel"):
        assert step in out
    assert engine.requests == []
    names = [r["repositoryName"] for r in
             clients.client("ecr").describe_repositories()["repositories"]]
    assert "dry/run-only" not in names


# --- with a real engine --------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.timeout(3600)
def test_the_cpu_image_builds_for_real() -> None:
    """Skips, saying what is missing, with no engine or no base image at hand (never pulls
    unasked); otherwise builds smserve-cpu from this tree (tests/docker_images.py)."""
    from tests.docker_images import engine_or_skip, serving_image

    image = serving_image("cpu")
    client = engine_or_skip()
    try:
        inspected = client.api.inspect_image(image)
        labels = inspected["Config"]["Labels"]
        assert labels["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
        assert "SMSERVE_BIND_HOST=0.0.0.0" in inspected["Config"]["Env"]
        assert inspected["Config"]["Cmd"] == ["serve"]
    finally:
        client.close()
