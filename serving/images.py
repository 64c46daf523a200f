"""Build the serving images and push them to ECR, through the Docker SDK for Python.

Two flavors, one Dockerfile each, both built from the repository root as
context (``.dockerignore`` keeps it to the wheel's sources)::

    cpu   containers/cpu/Dockerfile   -> smserve-cpu:<tag>
    gpu   containers/gpu/Dockerfile   -> smserve-gpu:<tag>

:func:`build` streams the engine's build output; :func:`push` makes sure the
ECR repository exists (scan on push, immutable tags), logs in with
``GetAuthorizationToken``, tags the local image for the registry and pushes
it, reporting progress, and returns the image URI for ``CreateModel``.
:func:`build_plan` and :func:`push_plan` say what those would do, touching
neither the engine nor AWS (``--dry-run``).

The Docker SDK (``docker``) is imported only here, only when used. Every
failure a person can fix is one line: a :class:`~serving.errors.ConfigError`
for bad input (flavor, repository name, tag, a missing Dockerfile), an
:class:`~serving.errors.ImageError` for the rest (no engine, a failed build
step, missing or expired AWS credentials, a push the registry refused).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving import __version__, _image_bases
from serving._ecr import (
    RegistryLogin,
    ensure_repository,
    registry_login,
)
from serving._image_stream import Progress, Quiet, follow_build, one_line
from serving.errors import ConfigError, ImageError
from serving.imagepush import PushResult

__all__ = [
    "FLAVORS", "PLATFORM", "Progress", "PushResult", "Quiet", "RegistryLogin", "build",
    "build_plan", "check_flavor", "check_repository", "check_tag", "connect", "context_files",
    "default_tag", "dockerfile_for", "engine_available", "ensure_repository", "image_uri",
    "local_image", "push", "push_plan", "registry_login",
]

FLAVORS: tuple[str, ...] = ("cpu", "gpu")
#: SageMaker runs x86-64 images; build for it on any machine (an arm64 laptop too).
PLATFORM = "linux/amd64"
#: ECR's repository name rule (CreateRepository's ``repositoryName`` pattern).
REPOSITORY_PATTERN = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
#: Docker's (and ECR's) tag rule.
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


# --- names and files ------------------------------------------------------------------------


def check_flavor(flavor: str) -> str:
    """``flavor`` if it is one of :data:`FLAVORS`, else a ConfigError saying which are."""
    if flavor not in FLAVORS:
        raise ConfigError(f"unknown image flavor {flavor!r}; use one of: {', '.join(FLAVORS)} "
                          "(--flavor cpu or --flavor gpu)", flavor=flavor)
    return flavor


def check_repository(name: str) -> str:
    """``name`` if ECR accepts it as a repository name, else a ConfigError saying why not."""
    if not 2 <= len(name) <= 256:
        raise ConfigError(f"ECR repository name {name!r} has {len(name)} characters; use 2 to "
                          "256", repository=name)
    if not REPOSITORY_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a valid ECR repository name; use lowercase letters, digits and "
            "single '.', '_' or '-' between them, with '/' for namespaces "
            "(like team/smserve-gpu)", repository=name)
    return name


def check_tag(tag: str) -> str:
    """``tag`` if Docker and ECR accept it, else a ConfigError."""
    if not TAG_PATTERN.fullmatch(tag):
        raise ConfigError(f"{tag!r} is not a valid image tag; use up to 128 letters, digits, "
                          "'_', '.' and '-', not starting with '.' or '-' (like 0.1.0)", tag=tag)
    return tag


def default_tag() -> str:
    """The tag used when none is given: the toolkit's version."""
    return __version__


def local_image(flavor: str, tag: str) -> str:
    """The local image name: ``smserve-<flavor>:<tag>``."""
    return f"smserve-{flavor}:{tag}"


def dockerfile_for(flavor: str, context_dir: Path) -> Path:
    """``<context>/containers/<flavor>/Dockerfile``, or a ConfigError if it is missing."""
    check_flavor(flavor)
    path = Path(context_dir) / "containers" / flavor / "Dockerfile"
    if not path.is_file():
        raise ConfigError(f"no Dockerfile at {path}; run from the repository root or pass "
                          "--context DIR (the folder that has containers/)", path=str(path))
    return path


def image_uri(registry: str, repository: str, tag: str) -> str:
    """``<registry>/<repository>:<tag>``, the ``Image`` of ``CreateModel``."""
    return f"{registry}/{repository}:{tag}"


def ignore_patterns(context_dir: Path) -> list[str]:
    """The patterns of ``<context>/.dockerignore`` (none when there is no such file)."""
    path = Path(context_dir) / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(context_dir: Path, dockerfile: Path) -> list[str]:
    """The files a build sends, relative to ``context_dir``, sorted (``.dockerignore`` honoured).

    The same selection the Docker SDK makes when it packs the context; the
    Dockerfile and ``.dockerignore`` are always sent.
    """
    from docker.utils.build import exclude_paths

    root = Path(context_dir).resolve()
    relative = Path(dockerfile).resolve().relative_to(root).as_posix()
    kept = exclude_paths(str(root), ignore_patterns(root), dockerfile=relative)
    return sorted(p for p in kept if (root / p).is_file())


# --- the engine ---------------------------------------------------------------------------


def _where(environ: Mapping[str, str]) -> str:
    host = environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={host}" if host else "the default Docker socket or context"


def connect(environ: Mapping[str, str], timeout: float = 60.0) -> Any:
    """A ``docker.DockerClient`` for the engine ``environ`` names (DOCKER_HOST, TLS, context).

    Raises:
        ImageError: the Docker SDK is missing, or no engine answers there.
    """
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise ImageError("the Docker SDK for Python is not installed; pip install "
                         "'docker==7.2.0' (the image commands need it)") from None
    try:
        client = docker.DockerClient.from_env(environment=dict(environ), timeout=int(timeout))
        client.ping()
    except (DockerException, OSError) as err:
        reason = _engine_reason(err)
        raise ImageError(f"no Docker engine is reachable at {_where(environ)} ({reason}); "
                         "start Docker, or set DOCKER_HOST to a running engine") from err
    return client


def _engine_reason(err: BaseException) -> str:
    """The root cause of a failed connection, in a few words ("Connection refused")."""
    text = str(err)
    for pattern in (r"\[Errno -?\d+\] ([^'\")\]]+)", r"Error\(-?\d+, '([^']+)'\)"):
        found = re.findall(pattern, text)
        if found:
            return str(found[-1]).strip()
    return one_line(text)[:200] or type(err).__name__


def engine_available(environ: Mapping[str, str], timeout: float = 5.0) -> bool:
    """True when an engine answers at the place ``environ`` names."""
    try:
        client = connect(environ, timeout)
    except ImageError:
        return False
    client.close()
    return True


def build(flavor: str, tag: str, context_dir: Path, client: Any, progress: Progress,
          *, build_args: Mapping[str, str] | None = None, platform: str = PLATFORM,
          pull_bases: bool = True, no_cache: bool = False) -> str:
    """Build ``smserve-<flavor>:<tag>`` from ``context_dir``, streaming the engine's output.

    Args:
        flavor: ``cpu`` or ``gpu``.
        tag: the local image's tag.
        context_dir: the repository root (has ``containers/<flavor>/Dockerfile``).
        client: a ``docker.DockerClient`` (see :func:`connect`).
        progress: receives each line of build output.
        build_args: ``--build-arg`` values (``EXTRA_REQUIREMENTS``, the base
            images ``PYTHON_IMAGE``/``BUILD_IMAGE``/``CUDA_IMAGE``...).
        platform: the target platform (SageMaker runs ``linux/amd64``).
        pull_bases: pull base images the engine lacks (False: that is an error).
        no_cache: build every step again (the layer cache is not used).

    Returns:
        the built image's id. The tag is set only when the build succeeded
        (intermediate containers are removed on failure too).

    Raises:
        ConfigError: bad flavor or tag, no Dockerfile.
        ImageError: a base image is missing and cannot be pulled (named, with
            how to build on another), or a build step failed (the engine's
            message, on one line).
    """
    from docker.errors import APIError, DockerException

    check_tag(tag)
    dockerfile = dockerfile_for(flavor, context_dir)
    name = local_image(flavor, tag)
    relative = dockerfile.resolve().relative_to(Path(context_dir).resolve()).as_posix()
    bases = _image_bases.resolve(dockerfile, build_args)
    progress.line(f"building {name} from {relative} for {platform} on "
                  + ", ".join(f"{arg}={image}" for arg, image in bases.items()))
    _image_bases.ensure(client, bases, progress, pull=pull_bases)
    try:
        stream = client.api.build(path=str(context_dir), dockerfile=relative, tag=name, rm=True,
                                  forcerm=True, decode=True, platform=platform,
                                  nocache=no_cache,
                                  buildargs=dict(build_args or {}))
        image_id = follow_build(stream, progress, flavor)
    except (APIError, DockerException, OSError) as err:
        reason = getattr(err, "explanation", None) or str(err)
        raise ImageError(f"docker build of {name} failed: {one_line(str(reason))}; fix it and "
                         f"rerun: smserve image build --flavor {flavor} --tag {tag}") from err
    progress.line(f"built {name}" + (f" ({image_id})" if image_id else ""))
    return image_id or name


# --- push ---------------------------------------------------------------------------------


def _ecr_client(clients: Any, region: str | None) -> Any:
    from serving.aws import ClientFactory

    if region and region != clients.settings.region:
        clients = ClientFactory(clients.settings.with_changes(region=region))
    return clients.client("ecr")


def push(flavor: str, repository: str, region: str | None, tag: str, clients: Any,
         docker_client: Any, progress: Progress, *,
         create_repository: bool = False) -> PushResult:
    """Push ``smserve-<flavor>:<tag>`` to ECR as ``<repository URI>:<tag>``.

    See :func:`serving.imagepush.push_image` for what happens (all or nothing).

    Args:
        flavor: ``cpu`` or ``gpu``: which local image.
        repository: the ECR repository.
        region: the ECR region (None: the client factory's).
        tag: the local image's tag, also the pushed tag.
        clients: a :class:`~serving.aws.ClientFactory`.
        docker_client: a ``docker.DockerClient`` (see :func:`connect`).
        progress: receives steps as lines and the upload as a bar.
        create_repository: create the repository if it is missing.

    Returns:
        the pushed image's URI (for ``CreateModel``), digest, and whether the
        repository was created now.

    Raises:
        ConfigError: bad flavor, repository name or tag; no such repository;
            an immutable tag that names other content.
        ImageError: no local image, AWS credentials missing or expired, the
            registry refused the push.
    """
    from serving.imagepush import push_image

    check_flavor(flavor)
    check_repository(repository)
    check_tag(tag)
    source = local_image(flavor, tag)
    retry = f"smserve image push --flavor {flavor} --repository {repository} --tag {tag}"
    ecr = _ecr_client(clients, region)
    try:
        return push_image(source, repository, tag, ecr, docker_client, progress,
                          region=region or clients.settings.region,
                          create_repository=create_repository, retry=retry)
    except ImageError as err:
        if err.message.startswith("no local image"):
            raise ImageError(f"no local image {source}; build it first: smserve image build "
                             f"--flavor {flavor} --tag {tag}") from None
        raise


# --- dry run ------------------------------------------------------------------------------


def build_plan(flavor: str, tag: str, context_dir: Path, environ: Mapping[str, str],
               build_args: Mapping[str, str] | None = None,
               platform: str = PLATFORM) -> list[str]:
    """What :func:`build` would do, one step a line; touches neither the engine nor AWS."""
    check_tag(tag)
    dockerfile = dockerfile_for(flavor, context_dir)
    root = Path(context_dir).resolve()
    relative = dockerfile.resolve().relative_to(root).as_posix()
    try:
        files = context_files(root, dockerfile)
        size = sum((root / f).stat().st_size for f in files)
        sent = f"{len(files)} files, {size / 1e6:.2f} MB after .dockerignore"
    except ImportError:
        sent = "size unknown: the Docker SDK is not installed"
    args = "".join(f" --build-arg {k}=..." for k in sorted(build_args or {}))
    bases = _image_bases.resolve(dockerfile, build_args)
    return [
        f"check the Docker engine at {_where(environ)} (GET /_ping)",
        "base images (pulled if the engine lacks them): "
        + ", ".join(f"{arg}={image}" for arg, image in bases.items()),
        f"send the build context {root} ({sent})",
        f"build {relative} for {platform} as {local_image(flavor, tag)}{args} "
        "(POST /build, output streamed)",
    ]


def push_plan(flavor: str, repository: str, region: str, tag: str,
              environ: Mapping[str, str]) -> list[str]:
    """What :func:`push` would do, one step a line; touches neither the engine nor AWS."""
    check_flavor(flavor)
    check_repository(repository)
    check_tag(tag)
    source = local_image(flavor, tag)
    registry = f"<account>.dkr.ecr.{region}.amazonaws.com"
    uri = image_uri(registry, repository, tag)
    return [
        f"check the Docker engine at {_where(environ)} and that {source} exists",
        f"ECR in {region}: DescribeRepositories {repository}; if missing and "
        "--create-repository is given, CreateRepository with scan on push and immutable tags "
        "(else stop: no such repository)",
        f"ECR DescribeImages {repository}:{tag}: if the tag names other content and tags are "
        "immutable, stop; if it names this image, nothing to push",
        "ECR GetAuthorizationToken: decode user:password, take the registry from proxyEndpoint",
        f"tag {source} as {uri}",
        f"push {uri} with the ECR login (X-Registry-Auth), upload shown as a progress bar; "
        "on failure remove that tag (and a repository made in step 2)",
        f"print the image URI for CreateModel: {uri}, and its digest",
        "record both in the images file (SMSERVE_IMAGES_FILE, default .smserve/images.json)",
    ]


