"""The embedded stack's ECR with a real registry: push, pull back by digest, and the bad input.

Real parts only: the stack (moto + our ECR front), Debian's ``docker-registry``
server, the Docker engine. The images are tiny ones imported from a tarball
(nothing is built); what is under test is the push path, which is the same
for the smserve images.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from docker.errors import DockerException

from serving._ecr import RegistryLogin, registry_login
from serving.cli import main
from serving.errors import ConfigError, ImageError
from serving.imagepush import push_image
from serving.images import Quiet, connect
from serving.local.stack import LocalStack
from serving.settings import Settings
from tests.helpers import stand_in_image


def _client(stack: LocalStack, service: str) -> Any:
    return boto3.client(service, endpoint_url=stack.endpoint_url, region_name=stack.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def engine(stack: LocalStack) -> Iterator[Any]:
    """A Docker client; skips without an engine or without the stack's registry."""
    if stack.registry_address is None:
        pytest.skip("the embedded stack runs no registry: apt-get install -y docker-registry")
    try:
        client = connect(dict(Settings.from_environ().environ), timeout=300)
    except ImageError as err:
        pytest.skip(f"no Docker engine: {err}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture()
def ecr(stack: LocalStack) -> Any:
    """A plain boto3 ECR client for the stack."""
    return _client(stack, "ecr")


@pytest.fixture()
def repo(stack: LocalStack) -> Iterator[str]:
    """A repository name no other test uses; the engine's names for it are removed after."""
    name = f"reg-test/r{uuid.uuid4().hex[:10]}"
    yield name
    try:
        client = connect(dict(Settings.from_environ().environ), timeout=60)
    except ImageError:
        return
    prefix = f"{stack.registry_address}/{name}"
    for image in client.api.images():
        for ref in (image.get("RepoTags") or []) + (image.get("RepoDigests") or []):
            if ref.startswith(prefix):
                with contextlib.suppress(DockerException):  # gone with the tag removed before
                    client.api.remove_image(ref, noprune=True)
    client.close()


def _other_image(engine: Any, text: str) -> str:
    """A tiny image whose content is ``text`` (imported, not built)."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = text.encode()
        info = tarfile.TarInfo("content")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    name = f"smserve-test-other:{uuid.uuid4().hex[:8]}"
    engine.api.import_image_from_data(data.getvalue(), repository=name.split(":")[0],
                                      tag=name.split(":")[1])
    return name


def _local_tags(engine: Any, prefix: str) -> list[str]:
    return [t for image in engine.api.images() for t in (image.get("RepoTags") or [])
            if t.startswith(prefix)]


@pytest.mark.docker
def test_a_pushed_image_is_in_ecr_and_pulls_back_by_digest(
        stack: LocalStack, engine: Any, ecr: Any, repo: str) -> None:
    source = stand_in_image()
    assert source is not None
    result = push_image(source, repo, "v1", ecr, engine, Quiet(), region=stack.region,
                        create_repository=True)
    assert result.uri == f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}:v1"
    assert result.repository_created and result.digest and result.digest.startswith("sha256:")
    details = ecr.describe_images(repositoryName=repo)["imageDetails"]
    assert [(d["imageDigest"], d["imageTags"]) for d in details] == [(result.digest, ["v1"])]
    got = ecr.batch_get_image(repositoryName=repo, imageIds=[{"imageDigest": result.digest}])
    manifest = json.loads(got["images"][0]["imageManifest"])
    assert manifest["schemaVersion"] == 2 and manifest["layers"]

    reference = stack.ecr.pull_reference(result.pinned)
    assert reference == f"{stack.registry_address}/{repo}@{result.digest}"
    for name in _local_tags(engine, f"{stack.registry_address}/{repo}"):
        engine.api.remove_image(name, noprune=True)
    login = registry_login(ecr)
    pulled = engine.images.pull(f"{stack.registry_address}/{repo}", tag=result.digest,
                                auth_config=login.auth_config())
    assert pulled.id == engine.api.inspect_image(source)["Id"]
    assert f"{stack.registry_address}/{repo}@{result.digest}" in pulled.attrs["RepoDigests"]

    again = push_image(source, repo, "v1", ecr, engine, Quiet(), region=stack.region)
    assert again.already_there and again.digest == result.digest
    ecr.delete_repository(repositoryName=repo, force=True)
    assert stack.registry is not None and stack.registry.tags(repo) == []


@pytest.mark.docker
def test_an_immutable_tag_naming_other_content_is_refused_before_any_upload(
        stack: LocalStack, engine: Any, ecr: Any, repo: str) -> None:
    first = _other_image(engine, "first")
    second = _other_image(engine, "second")
    try:
        pushed = push_image(first, repo, "v1", ecr, engine, Quiet(), region=stack.region,
                            create_repository=True)
        with pytest.raises(ConfigError, match=rf"tag v1 of ECR repository {repo} already names "
                                              r"other content .* push under a new tag \(--tag\)"):
            push_image(second, repo, "v1", ecr, engine, Quiet(), region=stack.region)
        details = ecr.describe_images(repositoryName=repo)["imageDetails"]
        assert [d["imageDigest"] for d in details] == [pushed.digest]
    finally:
        ecr.delete_repository(repositoryName=repo, force=True)
        for name in (first, second):
            engine.api.remove_image(name, noprune=True)


@pytest.mark.docker
def test_a_wrong_token_is_refused_and_leaves_no_tag_and_no_repository(
        stack: LocalStack, engine: Any, ecr: Any, repo: str) -> None:
    source = stand_in_image()
    wrong = RegistryLogin("AWS", "not-the-token", str(stack.registry_address))
    with pytest.raises(ImageError, match=r"the registry refused the ECR login for .*"
                                         r"the token is wrong or has expired"):
        push_image(str(source), repo, "v1", ecr, engine, Quiet(), region=stack.region,
                   create_repository=True, login=wrong)
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_repositories(repositoryNames=[repo])
    assert _local_tags(engine, f"{stack.registry_address}/{repo}") == []


@pytest.mark.docker
def test_a_missing_repository_is_ecrs_error_and_nothing_is_made(
        stack: LocalStack, engine: Any, ecr: Any, repo: str) -> None:
    with pytest.raises(ConfigError, match=rf"ECR repository {repo} does not exist in us-east-1 "
                                          r"\(.*RepositoryNotFoundException.*\); create it"):
        push_image(str(stand_in_image()), repo, "v1", ecr, engine, Quiet(),
                   region=stack.region)
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_repositories(repositoryNames=[repo])


@pytest.mark.docker
def test_cli_push_prints_digest_and_uri_and_records_them(
        stack: LocalStack, engine: Any, ecr: Any, repo: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tag = f"t{uuid.uuid4().hex[:8]}"
    engine.api.tag(stand_in_image(), "smserve-cpu", tag=tag)
    for key, value in stack.environ().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SMSERVE_IMAGES_FILE", str(tmp_path / "images.json"))
    try:
        code = main(["image", "push", "--flavor", "cpu", "--repository", repo, "--tag", tag,
                     "--create-repository"])
        out = capsys.readouterr().out.strip().splitlines()
    finally:
        engine.api.remove_image(f"smserve-cpu:{tag}", noprune=True)
    assert code == 0
    digest = out[0].removeprefix("digest ")
    uri = f"123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}:{tag}"
    assert out[-1] == uri
    assert out[1] == f"by digest 123456789012.dkr.ecr.us-east-1.amazonaws.com/{repo}@{digest}"
    recorded = json.loads((tmp_path / "images.json").read_text())["images"]["cpu"]
    assert (recorded["uri"], recorded["digest"]) == (uri, digest)
    assert recorded["endpoint"] == stack.endpoint_url
    sm = _client(stack, "sagemaker")
    sm.create_model(ModelName=f"cli-{tag}", ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
                    PrimaryContainer={"Image": recorded["pinned"], "ModelDataUrl": "s3://b/k"})
    sm.delete_model(ModelName=f"cli-{tag}")
    ecr.delete_repository(repositoryName=repo, force=True)


def test_a_stack_without_a_registry_says_so_and_refuses_the_login() -> None:
    settings = Settings.from_environ({"SMSERVE_REGISTRY_BINARY": ""})
    with LocalStack(settings=settings) as bare:
        assert bare.registry_address is None
        assert bare.notices and "apt-get install -y docker-registry" in bare.notices[0]
        with pytest.raises(ClientError, match="runs no registry") as info:
            _client(bare, "ecr").get_authorization_token()
        assert info.value.response["Error"]["Code"] == "ServerException"


@pytest.mark.docker
def test_deletes_and_reset_in_ecr_delete_in_the_registry(engine: Any, repo: str) -> None:
    with LocalStack() as own:
        assert own.registry is not None
        ecr = _client(own, "ecr")
        first = push_image(str(stand_in_image()), repo, "v1", ecr, engine, Quiet(),
                           region=own.region, create_repository=True)
        other = _other_image(engine, "kept")
        try:
            push_image(other, repo, "v2", ecr, engine, Quiet(), region=own.region)
        finally:
            engine.api.remove_image(other, noprune=True)
            for name in _local_tags(engine, f"{own.registry_address}/{repo}"):
                engine.api.remove_image(name, noprune=True)
        assert own.registry.tags(repo) == ["v1", "v2"]
        ecr.batch_delete_image(repositoryName=repo, imageIds=[{"imageTag": "v1"}])
        assert own.registry.tags(repo) == ["v2"]
        assert own.registry.manifest(repo, str(first.digest)) is None
        assert [d["imageTags"] for d in ecr.describe_images(repositoryName=repo)["imageDetails"]
                ] == [["v2"]], "the deleted tag does not come back from the registry"
        own.reset()
        assert own.registry.tags(repo) == []
