"""Push a local image to ECR (AWS's, or the embedded stack's real registry), all or nothing.

:func:`push_image` is the one path: the repository must exist (or is created
when asked: scan on push, immutable tags), the ECR login comes from
``GetAuthorizationToken`` (user, password and the registry to push to, its
``proxyEndpoint``), the image's URI is the repository's ``repositoryUri``
plus the tag (on AWS the two hosts are one; on the embedded stack the
registry is ``127.0.0.1:PORT`` and the URI stays ECR-shaped, see
:mod:`serving.local.ecr`). A tag that already names other content in a
repository with immutable tags is refused before any layer moves; the same
content under the same tag is not pushed again. A push that fails removes
the tag it made on the engine and a repository it created.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from serving._ecr import aws_error, registry_login, repository_settings
from serving._image_stream import Progress, follow_push, one_line
from serving.errors import ConfigError, ImageError


@dataclass(frozen=True)
class PushResult:
    """A pushed image.

    Attributes:
        uri: ``<registry>/<repository>:<tag>`` (the ``Image`` of ``CreateModel``).
        digest: the manifest's digest (``sha256:...``), or None if the registry gave none.
        repository_created: the repository was created by this push.
        already_there: the tag already named this content; nothing was uploaded.
    """

    uri: str
    digest: str | None
    repository_created: bool
    already_there: bool = False

    @property
    def pinned(self) -> str:
        """The URI by digest, ``<registry>/<repository>@sha256:...`` (the tag's URI without one)."""
        if not self.digest:
            return self.uri
        return f"{self.uri.rpartition(':')[0]}@{self.digest}"


def _repository(ecr: Any, name: str, region: str, create: bool, retry: str
                ) -> tuple[dict[str, Any], bool]:
    try:
        found = ecr.describe_repositories(repositoryNames=[name])["repositories"]
        return dict(found[0]), False
    except ecr.exceptions.RepositoryNotFoundException as err:
        if not create:
            raise ConfigError(
                f"ECR repository {name} does not exist in {region} ({one_line(str(err))}); "
                f"create it by adding --create-repository: {retry} --create-repository",
                repository=name) from None
    try:
        made = ecr.create_repository(repositoryName=name,
                                     imageScanningConfiguration={"scanOnPush": True},
                                     imageTagMutability="IMMUTABLE")
        return dict(made["repository"]), True
    except ecr.exceptions.RepositoryAlreadyExistsException:  # created meanwhile
        return dict(ecr.describe_repositories(repositoryNames=[name])["repositories"][0]), False


def _tagged_digest(ecr: Any, repository: str, tag: str) -> str | None:
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except ecr.exceptions.ImageNotFoundException:
        return None
    details = found.get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def push_image(source: str, repository: str, tag: str, ecr: Any, docker_client: Any,
               progress: Progress, *, region: str, create_repository: bool = False,
               retry: str = "smserve image push", login: Any = None) -> PushResult:
    """Push the engine's image ``source`` to ECR as ``<repository>:<tag>``.

    Args:
        source: a local image (``smserve-cpu:0.1.0``).
        repository: the ECR repository.
        tag: the tag to push.
        ecr: a boto3 ECR client.
        docker_client: a ``docker.DockerClient``.
        progress: receives steps as lines and the upload as a bar.
        region: the ECR region (for messages).
        create_repository: create the repository when it is missing (else a ConfigError).
        retry: the command to rerun, for messages.
        login: a :class:`~serving._ecr.RegistryLogin` to use instead of a fresh one.

    Raises:
        ConfigError: no such repository (and not asked to create it), or an immutable
            ``tag`` already names other content.
        ImageError: no such local image, AWS refused, the registry refused (a wrong or
            expired token included).
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from docker.errors import APIError, DockerException, ImageNotFound

    try:
        local = docker_client.api.inspect_image(source)
    except ImageNotFound:
        raise ImageError(f"no local image {source}; build it first (smserve image build)"
                         ) from None
    except (APIError, DockerException, OSError) as err:
        raise ImageError(f"the Docker engine could not look up {source}: "
                         f"{one_line(str(err))}") from err
    try:
        described, created = _repository(ecr, repository, region, create_repository, retry)
    except (BotoCoreError, ClientError) as err:
        raise aws_error(err, "use ECR", retry) from err
    done = False
    try:
        result = _push(local, source, described, tag, ecr, docker_client, progress,
                       created, retry, login)
        done = True
        return result
    finally:
        if not done and created:
            ecr.delete_repository(repositoryName=repository, force=True)
            progress.line(f"deleted ECR repository {repository}, which this push created")


def _push(local: dict[str, Any], source: str, described: dict[str, Any], tag: str, ecr: Any,
          docker_client: Any, progress: Progress, created: bool, retry: str,
          login: Any) -> PushResult:
    from botocore.exceptions import BotoCoreError, ClientError
    from docker.errors import APIError, DockerException

    repository = str(described["repositoryName"])
    uri = f"{described['repositoryUri']}:{tag}"
    state = ("created" if created else "exists") + repository_settings(described)
    progress.line(f"ECR repository {repository}: {state}")
    try:
        existing = None if created else _tagged_digest(ecr, repository, tag)
        login = login or registry_login(ecr)
    except (BotoCoreError, ClientError) as err:
        raise aws_error(err, "use ECR", retry) from err
    target = f"{login.registry}/{repository}"
    if existing is not None:
        if f"{target}@{existing}" in (local.get("RepoDigests") or []):
            progress.line(f"{uri} already names this image ({existing}); nothing to push")
            return PushResult(uri, existing, False, already_there=True)
        if str(described.get("imageTagMutability", "MUTABLE")).startswith("IMMUTABLE"):
            raise ConfigError(
                f"tag {tag} of ECR repository {repository} already names other content "
                f"({existing}) and its tags are immutable; push under a new tag (--tag)",
                repository=repository, tag=tag)
    progress.line(f"logged in to {login.registry} as {login.username}")
    tagged = False
    try:
        if not docker_client.api.tag(source, target, tag=tag):
            raise ImageError(f"the Docker engine did not tag {source} as {target}:{tag}; "
                             f"rerun: {retry}")
        tagged = True
        progress.line(f"tagged {source} as {target}:{tag}")
        stream = docker_client.api.push(target, tag=tag, stream=True, decode=True,
                                        auth_config=login.auth_config())
        digest = follow_push(stream, progress, uri, tag)
    except (APIError, DockerException, OSError) as err:
        _untag(docker_client, f"{target}:{tag}", tagged)
        raise ImageError(f"pushing {uri} failed: {one_line(str(err))}; rerun: {retry}") from err
    except ImageError:
        _untag(docker_client, f"{target}:{tag}", tagged)
        raise
    progress.line(f"pushed {uri}" + (f" ({digest})" if digest else ""))
    return PushResult(uri, digest, created)


def _untag(docker_client: Any, name: str, tagged: bool) -> None:
    """Remove the registry tag a failed push made (the image itself stays)."""
    if not tagged:
        return
    from docker.errors import APIError, DockerException

    with contextlib.suppress(APIError, DockerException, OSError):
        docker_client.api.remove_image(name, noprune=True)
