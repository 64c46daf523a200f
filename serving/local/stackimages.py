"""Images in the embedded stack's ECR for code that creates models there (the demo, tests, set-ups).

``CreateModel`` on the embedded stack accepts only images its ECR holds (as
on AWS). :func:`stack_images` makes sure each flavor has one, in
``smserve-<flavor>:<tag>``, the best way the machine allows:

1. already there (a tag that ECR holds): used as it is;
2. a Docker engine and the stack's registry: a local image is pushed for real
   (layers and all; see :mod:`serving.imagepush`): ``sources[flavor]`` when
   given (a small stand-in, for tests), else ``smserve-<flavor>:<tag>`` when
   ``push_built`` (the Docker runner pulls it back from the registry);
3. otherwise the image is recorded with ECR's ``PutImage`` only (a manifest,
   no layers).

2 with a stand-in and 3 are honest only while the process runner runs the
models (``SMSERVE_CONTAINER_RUNNER=process``, the default): it runs
``smserve serve`` from this environment and never pulls the image, so what
``CreateModel`` checks (that ECR holds the URI) is all that matters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from serving import __version__
from serving.local.ecr import put_placeholder


def _held(ecr: Any, repository: str, tag: str) -> str | None:
    try:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except (ecr.exceptions.ImageNotFoundException, ecr.exceptions.RepositoryNotFoundException):
        return None
    details = found.get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def _engine(environ: Mapping[str, str]) -> Any:
    from serving.errors import ImageError
    from serving.images import connect

    try:
        return connect(environ, timeout=600)
    except ImageError:
        return None


def _has_image(client: Any, name: str) -> bool:
    from docker.errors import DockerException, ImageNotFound

    try:
        client.api.inspect_image(name)
    except (ImageNotFound, DockerException):
        return False
    return True


def _untag(engine: Any, source: str, uri: str) -> None:
    """Drop the engine's ``127.0.0.1:PORT/...`` tag a push made (the stack's registry is
    temporary; the image stays under its own name)."""
    from docker.errors import DockerException

    tail = uri.split("/", 1)[1]
    for name in engine.api.inspect_image(source).get("RepoTags") or []:
        if name.startswith("127.0.0.1:") and name.split("/", 1)[1] == tail:
            with contextlib.suppress(DockerException):
                engine.api.remove_image(name, noprune=True)


def stack_images(clients: Any, flavors: Iterable[str], *, registry: bool,
                 tag: str = __version__, sources: Mapping[str, str] | None = None,
                 push_built: bool = False,
                 echo: Callable[[str], None] | None = None) -> dict[str, str]:
    """An ECR image URI per flavor that the stack's ``CreateModel`` accepts (see module doc).

    Args:
        clients: a :class:`~serving.aws.ClientFactory` pointed at the stack.
        flavors: ``cpu``, ``gpu``.
        registry: the stack runs a registry (``LocalStack.registry_address`` is set).
        tag: the tag to use.
        sources: flavor -> the local image to push as that flavor's (a stand-in).
        push_built: push ``smserve-<flavor>:<tag>`` where it is built and no source is given.
        echo: receives one line per flavor saying how its image got there.
    """
    from serving.imagepush import push_image
    from serving.images import Quiet

    say = echo or (lambda _line: None)
    ecr = clients.client("ecr")
    wanted = dict(sources or {})
    engine = _engine(clients.settings.environ) if registry and (wanted or push_built) else None
    uris: dict[str, str] = {}
    try:
        for flavor in flavors:
            repository = f"smserve-{flavor}"
            try:
                found = ecr.describe_repositories(repositoryNames=[repository])
                base = found["repositories"][0]["repositoryUri"]
            except ecr.exceptions.RepositoryNotFoundException:
                base = ecr.create_repository(repositoryName=repository,
                                             imageTagMutability="IMMUTABLE"
                                             )["repository"]["repositoryUri"]
            uri = f"{base}:{tag}"
            uris[flavor] = uri
            if _held(ecr, repository, tag):
                continue
            source = wanted.get(flavor) or (f"smserve-{flavor}:{tag}" if push_built else "")
            if engine is not None and source and _has_image(engine, source):
                result = push_image(source, repository, tag, ecr, engine, Quiet(),
                                    region=clients.settings.region)
                _untag(engine, source, result.uri)
                say(f"pushed {source} to the stack's registry as {uri} ({result.digest})")
            else:
                digest = put_placeholder(ecr, repository, tag)
                say(f"recorded {uri} in the stack's ECR with PutImage only ({digest}; no "
                    "layers: the process runner does not pull it)")
    finally:
        if engine is not None:
            engine.close()
    return uris
