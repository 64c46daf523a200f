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

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from serving import __version__
from serving.errors import ConfigError, ImageError

FLAVORS: tuple[str, ...] = ("cpu", "gpu")
#: SageMaker runs x86-64 images; build for it on any machine (an arm64 laptop too).
PLATFORM = "linux/amd64"
#: ECR's repository name rule (CreateRepository's ``repositoryName`` pattern).
REPOSITORY_PATTERN = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
#: Docker's (and ECR's) tag rule.
TAG_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_AUTH_CODES = {"UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
               "AuthFailure", "SignatureDoesNotMatch"}
_EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
_DENIED_CODES = {"AccessDenied", "AccessDeniedException"}


class Progress(Protocol):
    """Where long work reports: whole lines, and a bar that redraws in place."""

    def line(self, text: str) -> None:
        """One line of output (a build step, a state change)."""

    def bar(self, done: int, total: int, text: str) -> None:
        """Progress of the current step: ``done`` of ``total`` bytes, described by ``text``."""


class Quiet:
    """A :class:`Progress` that discards everything."""

    def line(self, text: str) -> None:
        """Discard ``text``."""

    def bar(self, done: int, total: int, text: str) -> None:
        """Discard the update."""


@dataclass(frozen=True)
class RegistryLogin:
    """What ``GetAuthorizationToken`` gave: the registry and how to log in to it."""

    username: str
    password: str = ""
    registry: str = ""
    endpoint: str = ""

    def auth_config(self) -> dict[str, str]:
        """The Docker SDK's ``auth_config`` (sent as the ``X-Registry-Auth`` header)."""
        return {"username": self.username, "password": self.password,
                "serveraddress": self.registry}

    def __repr__(self) -> str:  # never show the password
        return f"RegistryLogin(username={self.username!r}, registry={self.registry!r})"


@dataclass(frozen=True)
class PushResult:
    """A pushed image."""

    uri: str
    digest: str | None
    repository_created: bool


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
    return _one_line(text)[:200] or type(err).__name__


def engine_available(environ: Mapping[str, str], timeout: float = 5.0) -> bool:
    """True when an engine answers at the place ``environ`` names."""
    try:
        client = connect(environ, timeout)
    except ImageError:
        return False
    client.close()
    return True


def build(flavor: str, tag: str, context_dir: Path, client: Any, progress: Progress,
          *, build_args: Mapping[str, str] | None = None, platform: str = PLATFORM) -> str:
    """Build ``smserve-<flavor>:<tag>`` from ``context_dir``, streaming the engine's output.

    Args:
        flavor: ``cpu`` or ``gpu``.
        tag: the local image's tag.
        context_dir: the repository root (has ``containers/<flavor>/Dockerfile``).
        client: a ``docker.DockerClient`` (see :func:`connect`).
        progress: receives each line of build output.
        build_args: ``--build-arg`` values (``EXTRA_REQUIREMENTS``...).
        platform: the target platform (SageMaker runs ``linux/amd64``).

    Returns:
        the built image's id.

    Raises:
        ConfigError: bad flavor or tag, no Dockerfile.
        ImageError: a build step failed (the message is the engine's, on one line).
    """
    from docker.errors import APIError, DockerException

    check_tag(tag)
    dockerfile = dockerfile_for(flavor, context_dir)
    name = local_image(flavor, tag)
    relative = dockerfile.resolve().relative_to(Path(context_dir).resolve()).as_posix()
    progress.line(f"building {name} from {relative} for {platform}")
    try:
        stream = client.api.build(path=str(context_dir), dockerfile=relative, tag=name, rm=True,
                                  forcerm=True, decode=True, platform=platform,
                                  buildargs=dict(build_args or {}))
        image_id = _follow_build(stream, progress, flavor)
    except (APIError, DockerException, OSError) as err:
        raise ImageError(f"docker build of {name} failed: {_one_line(str(err))}; fix it and "
                         f"rerun: smserve image build --flavor {flavor} --tag {tag}") from err
    progress.line(f"built {name}" + (f" ({image_id})" if image_id else ""))
    return image_id or name


def _follow_build(events: Iterable[Mapping[str, Any]], progress: Progress, flavor: str) -> str:
    image_id = ""
    step = ""
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = _one_line(str(detail.get("message") or event.get("error") or "unknown"))
            where = f" at {step}" if step else ""
            raise ImageError(f"docker build failed{where}: {message}; fix the Dockerfile or the "
                             f"context and rerun: smserve image build --flavor {flavor}")
        text = event.get("stream")
        if isinstance(text, str):
            for line in text.splitlines():
                if line.strip():
                    if line.startswith("Step "):
                        step = line.split(" : ", 1)[0]
                    progress.line(line.rstrip())
        elif "status" in event:  # pulling a base image
            status = " ".join(str(event[k]) for k in ("id", "status") if event.get(k))
            if "progressDetail" not in event or not event.get("progressDetail"):
                progress.line(status)
        aux = event.get("aux")
        if isinstance(aux, Mapping) and aux.get("ID"):
            image_id = str(aux["ID"])
    return image_id


# --- ECR ----------------------------------------------------------------------------------


def _aws_error(err: Exception, action: str, retry: str) -> ImageError:
    """One line for a failed AWS call, saying what to fix."""
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
        TokenRetrievalError,
        UnauthorizedSSOTokenError,
    )

    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return ImageError(f"no AWS credentials to {action}; set AWS_PROFILE, or "
                          f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and rerun: {retry}")
    if isinstance(err, TokenRetrievalError | UnauthorizedSSOTokenError):
        return ImageError(f"the AWS credentials have expired ({_one_line(str(err))}); refresh "
                          f"them (aws sso login) and rerun: {retry}")
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        text = _one_line(str(err.response.get("Error", {}).get("Message", "")) or str(err))
        if code in _EXPIRED_CODES:
            return ImageError(f"the AWS credentials have expired ({code}); refresh them "
                              f"(aws sso login, or new session credentials) and rerun: {retry}")
        if code in _AUTH_CODES:
            return ImageError(f"AWS does not accept these credentials ({code}: {text}); check "
                              f"AWS_PROFILE / AWS_ACCESS_KEY_ID and rerun: {retry}")
        if code in _DENIED_CODES:
            return ImageError(f"not allowed to {action} ({text}); the caller needs the ECR "
                              "permissions CreateRepository, DescribeRepositories, "
                              "GetAuthorizationToken and the layer-upload ones")
        return ImageError(f"AWS refused to {action}: {code}: {text}")
    return ImageError(f"could not {action}: {_one_line(str(err))}; check the network and "
                      f"AWS_ENDPOINT_URL, then rerun: {retry}")


def ensure_repository(ecr: Any, name: str) -> tuple[dict[str, Any], bool]:
    """The repository ``name``, created if missing (scan on push, immutable tags).

    Returns:
        ``(repository description, whether it was created now)``.
    """
    try:
        found = ecr.describe_repositories(repositoryNames=[name])["repositories"]
        return dict(found[0]), False
    except ecr.exceptions.RepositoryNotFoundException:
        pass
    try:
        created = ecr.create_repository(
            repositoryName=name,
            imageScanningConfiguration={"scanOnPush": True},
            imageTagMutability="IMMUTABLE",
        )
        return dict(created["repository"]), True
    except ecr.exceptions.RepositoryAlreadyExistsException:  # created meanwhile
        return dict(ecr.describe_repositories(repositoryNames=[name])["repositories"][0]), False


def registry_login(ecr: Any) -> RegistryLogin:
    """Decode ``GetAuthorizationToken``: user and password, and the registry's address."""
    data = ecr.get_authorization_token()["authorizationData"][0]
    try:
        decoded = base64.b64decode(data["authorizationToken"], validate=True).decode()
    except (ValueError, UnicodeDecodeError) as err:
        raise ImageError("ECR returned an authorization token that is not base64 "
                         "'user:password'") from err
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise ImageError("ECR returned an authorization token without 'user:password'")
    endpoint = str(data.get("proxyEndpoint") or "")
    registry = re.sub(r"^[a-z]+://", "", endpoint).rstrip("/")
    if not registry:
        raise ImageError("ECR returned no proxyEndpoint with the authorization token")
    return RegistryLogin(username, password, registry, endpoint)


# --- push ---------------------------------------------------------------------------------


def _ecr_client(clients: Any, region: str | None) -> Any:
    from serving.aws import ClientFactory

    if region and region != clients.settings.region:
        clients = ClientFactory(clients.settings.with_changes(region=region))
    return clients.client("ecr")


def push(flavor: str, repository: str, region: str | None, tag: str, clients: Any,
         docker_client: Any, progress: Progress) -> PushResult:
    """Push ``smserve-<flavor>:<tag>`` to ECR as ``<registry>/<repository>:<tag>``.

    Args:
        flavor: ``cpu`` or ``gpu``: which local image.
        repository: the ECR repository (created if missing).
        region: the ECR region (None: the client factory's).
        tag: the local image's tag, also the pushed tag.
        clients: a :class:`~serving.aws.ClientFactory`.
        docker_client: a ``docker.DockerClient`` (see :func:`connect`).
        progress: receives steps as lines and the upload as a bar.

    Returns:
        the pushed image's URI (for ``CreateModel``), digest, and whether the
        repository was created now.

    Raises:
        ConfigError: bad flavor, repository name or tag.
        ImageError: no local image, AWS credentials missing or expired, the
            registry refused the push.
    """
    from botocore.exceptions import BotoCoreError, ClientError
    from docker.errors import APIError, DockerException, ImageNotFound

    check_flavor(flavor)
    check_repository(repository)
    check_tag(tag)
    source = local_image(flavor, tag)
    retry = f"smserve image push --flavor {flavor} --repository {repository} --tag {tag}"
    try:
        docker_client.api.inspect_image(source)
    except ImageNotFound:
        raise ImageError(f"no local image {source}; build it first: smserve image build "
                         f"--flavor {flavor} --tag {tag}") from None
    except (APIError, DockerException, OSError) as err:
        raise ImageError(f"the Docker engine could not look up {source}: "
                         f"{_one_line(str(err))}") from err

    ecr = _ecr_client(clients, region)
    try:
        described, created = ensure_repository(ecr, repository)
        login = registry_login(ecr)
    except (BotoCoreError, ClientError) as err:
        raise _aws_error(err, "use ECR", retry) from err
    settings = ("created" if created else "exists") + _repository_settings(described)
    progress.line(f"ECR repository {repository}: {settings}")
    progress.line(f"logged in to {login.registry} as {login.username}")

    target = f"{login.registry}/{repository}"
    uri = image_uri(login.registry, repository, tag)
    try:
        if not docker_client.api.tag(source, target, tag=tag):
            raise ImageError(f"the Docker engine did not tag {source} as {uri}; rerun: {retry}")
        progress.line(f"tagged {source} as {uri}")
        stream = docker_client.api.push(target, tag=tag, stream=True, decode=True,
                                        auth_config=login.auth_config())
        digest = _follow_push(stream, progress, uri, tag)
    except ImageError:
        raise
    except (APIError, DockerException, OSError) as err:
        raise ImageError(f"pushing {uri} failed: {_one_line(str(err))}; rerun: {retry}") from err
    progress.line(f"pushed {uri}" + (f" ({digest})" if digest else ""))
    return PushResult(uri, digest, created)


def _repository_settings(repo: Mapping[str, Any]) -> str:
    scan = bool((repo.get("imageScanningConfiguration") or {}).get("scanOnPush"))
    mutability = str(repo.get("imageTagMutability") or "MUTABLE").lower()
    return f" (tags {mutability}, scan on push {'on' if scan else 'off'})"


def _refused(message: str, uri: str, tag: str) -> str:
    low = message.lower()
    if "already exists" in low or "immutable" in low:
        return (f"the registry refused {uri}: {message}; tags are immutable there: build and "
                f"push a new tag (--tag), not {tag} again")
    if "denied" in low or "unauthorized" in low or "authentication" in low:
        return (f"the registry refused {uri}: {message}; check that the credentials may push "
                "to this repository (ecr:InitiateLayerUpload, ecr:PutImage...) and rerun")
    return f"the registry refused {uri}: {message}; fix that and rerun the push"


def _follow_push(events: Iterable[Mapping[str, Any]], progress: Progress, uri: str,
                 tag: str) -> str | None:
    layers = _LayerProgress()
    digest: str | None = None
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = _one_line(str(detail.get("message") or event.get("error") or "unknown"))
            raise ImageError(_refused(message, uri, tag))
        aux = event.get("aux")
        if isinstance(aux, Mapping) and aux.get("Digest"):
            digest = str(aux["Digest"])
        lines, bar = layers.update(event)
        for line in lines:
            progress.line(line)
        if bar is not None:
            progress.bar(bar[0], bar[1], layers.describe())
    return digest


class _LayerProgress:
    """Folds the engine's per-layer push events into totals for one bar."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.done: set[str] = set()
        self.existing: set[str] = set()
        self._last: tuple[int, int] = (-1, -1)

    def describe(self) -> str:
        """``pushed 3/7 layers (2 already there)``."""
        layers = set(self.sizes) | set(self.sent) | self.done | self.existing
        extra = f", {len(self.existing)} already there" if self.existing else ""
        return f"{len(self.done)}/{len(layers)} layers pushed{extra}"

    def update(self, event: Mapping[str, Any]) -> tuple[list[str], tuple[int, int] | None]:
        """What to report for ``event``: lines to print, and ``(done, total)`` bytes or None."""
        layer = str(event.get("id") or "")
        status = str(event.get("status") or "")
        detail = event.get("progressDetail") or {}
        if not layer:
            keep = status and not status.startswith("The push refers")
            return ([status] if keep else []), None
        if status == "Pushing" and isinstance(detail, Mapping):
            if detail.get("total"):
                self.sizes[layer] = int(detail["total"])
            self.sent[layer] = int(detail.get("current") or 0)
        elif status == "Pushed":
            self.done.add(layer)
            self.sent[layer] = self.sizes.get(layer, self.sent.get(layer, 0))
        elif status == "Layer already exists":
            self.existing.add(layer)
            self.done.add(layer)
        else:
            self.sizes.setdefault(layer, 0)
        total = sum(self.sizes.values())
        done = min(total, sum(self.sent.values()))
        percent = (100 * done // total) if total else 0
        key = (percent, len(self.done))
        if key == self._last:
            return [], None
        self._last = key
        return [], (done, total)


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
    return [
        f"check the Docker engine at {_where(environ)} (GET /_ping)",
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
        f"ECR in {region}: DescribeRepositories {repository}; if missing, CreateRepository "
        "with scan on push and immutable tags",
        "ECR GetAuthorizationToken: decode user:password, take the registry from proxyEndpoint",
        f"tag {source} as {uri}",
        f"push {uri} with the ECR login (X-Registry-Auth), upload shown as a progress bar",
        f"print the image URI for CreateModel: {uri}",
    ]


def _one_line(text: str) -> str:
    """``text`` on one line: whitespace collapsed, at most 400 characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= 400 else flat[:397] + "..."
