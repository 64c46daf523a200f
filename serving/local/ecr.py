"""The embedded stack's ECR, with real images: moto's ECR API in front of a real registry.

How ECR-shaped URIs map to the local registry:

- repositories, their settings and their URIs are moto's:
  ``123456789012.dkr.ecr.<region>.amazonaws.com/<repository>`` (``DescribeRepositories``);
- ``GetAuthorizationToken`` answers with the login of the stack's registry
  (user ``AWS``, a password made up at start) and ``proxyEndpoint`` =
  ``http://127.0.0.1:PORT``: the registry to push to and pull from, as on AWS
  the ``proxyEndpoint`` is the registry behind the repository URIs;
- an image pushed there as ``127.0.0.1:PORT/<repository>:<tag>`` *is*
  ``<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>`` (and
  ``...@<digest>``): before ``DescribeImages``, ``BatchGetImage``,
  ``ListImages`` and ``CreateModel``'s image check, the registry's tags of
  every repository moto knows are recorded in moto with ``PutImage`` (the
  manifest and its digest as the registry serves them);
- deleting images or a repository in ECR deletes them in the registry too,
  and ``/moto-api/reset`` empties it.

Without a registry (no ``docker-registry`` binary), ``GetAuthorizationToken``
is refused with a line saying what to install, and images exist only as
recorded with ``PutImage`` (:func:`put_placeholder` records one for the
process runner, which never pulls it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from serving.imageuri import NON_ECR, ImageUri, ImageUriError, parse_image_uri
from serving.local.registry import USER, LocalRegistry
from serving.local.sagemaker.apierrors import ValidationException

TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921."
_READS = {"DescribeImages", "BatchGetImage", "ListImages", "DescribeImageScanFindings"}
_CONTENT_TYPE = "application/x-amz-json-1.1"
_log = logging.getLogger("smserve.local.ecr")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class LocalEcr:
    """The images of one stack's ECR (one account, one region), and the registry under them.

    Args:
        account: the stack's account.
        region: the stack's region.
        registry: the running registry, or None (images only as ``PutImage`` records them).
    """

    def __init__(self, account: str, region: str, registry: LocalRegistry | None) -> None:
        self.account = account
        self.region = region
        self.registry = registry
        self._lock = threading.Lock()

    def _backend(self) -> Any:
        from moto.ecr.models import ecr_backends

        return ecr_backends[self.account][self.region]

    # --- the registry, mirrored into moto --------------------------------------------------

    def sync(self) -> None:
        """Record in moto every tag the registry holds for a repository moto knows."""
        if self.registry is None:
            return
        backend = self._backend()
        with self._lock:
            for name, repository in list(backend.repositories.items()):
                known = {(img.image_digest, tag) for img in repository.images
                         for tag in img.image_tags}
                for tag in self.registry.tags(name):
                    manifest = self.registry.manifest(name, tag)
                    if manifest is None or (manifest.digest, tag) in known:
                        continue
                    try:
                        backend.put_image(name, manifest.body, tag, manifest.media_type,
                                          manifest.digest)
                    except Exception as err:  # an immutable tag moto already holds
                        _log.warning("ECR keeps its %s:%s (%s)", name, tag, err)

    def find(self, uri: ImageUri) -> str | None:
        """The digest of the image ``uri`` names in this ECR, or None."""
        if (uri.account, uri.region) != (self.account, self.region):
            return None
        self.sync()
        repository = self._backend().repositories.get(uri.repository)
        if repository is None:
            return None
        for image in repository.images:
            if uri.digest and image.image_digest != uri.digest:
                continue
            if uri.tag and uri.tag not in image.image_tags:
                continue
            return str(image.image_digest)
        return None

    def check_image(self, image: str) -> None:
        """``CreateModel``'s check of a container's ``Image``, with the service's messages.

        Raises:
            ValidationException: not an ECR URI, no tag or digest, or no such image here.
        """
        try:
            uri = parse_image_uri(image)
        except ImageUriError as err:
            if err.problem == NON_ECR:
                raise ValidationException(
                    f'Using non-ECR image "{image}" without Vpc repository access mode is not '
                    f"supported. ({err.message})") from None
            raise ValidationException(f'ECR image "{image}" is invalid. ({err.message})'
                                      ) from None
        if self.find(uri) is None:
            where = f"{self.account}.dkr.ecr.{self.region}.amazonaws.com"
            raise ValidationException(
                f"Requested image {image} not found. (This stack's ECR is {where}; push the "
                "image first: smserve image push --flavor cpu|gpu --repository NAME, and use "
                "the URI it prints.)")

    def pull_reference(self, image: str) -> str:
        """Where the engine pulls ``image`` (an ECR URI of this stack) from: the registry.

        ``<account>.dkr.ecr.<region>.amazonaws.com/repo:tag`` ->
        ``127.0.0.1:PORT/repo@sha256:...`` (the digest ECR holds for it).

        Raises:
            ValidationException: as :meth:`check_image`, or the stack has no registry.
        """
        self.check_image(image)
        if self.registry is None:
            raise ValidationException(f"{image} is recorded in ECR only (the stack runs no "
                                      "registry: apt-get install docker-registry)")
        uri = parse_image_uri(image)
        return f"{self.registry.address}/{uri.repository}@{self.find(uri)}"

    def token(self) -> dict[str, Any]:
        """``GetAuthorizationToken``'s answer: the registry's login, valid 12 hours."""
        assert self.registry is not None
        secret = f"{USER}:{self.registry.password}".encode()
        import base64

        expires = dt.datetime.now(dt.UTC) + dt.timedelta(hours=12)
        return {"authorizationData": [{
            "authorizationToken": base64.b64encode(secret).decode(),
            "expiresAt": expires.timestamp(),
            "proxyEndpoint": self.registry.url}]}

    # --- deletes, mirrored into the registry -------------------------------------------------

    def forget_repository(self, name: str) -> None:
        """Delete ``name``'s manifests and tags from the registry (after ``DeleteRepository``)."""
        root = self._storage()
        if root is not None:
            shutil.rmtree(root / "repositories" / name, ignore_errors=True)

    def forget_images(self, name: str, digests: Iterable[str]) -> None:
        """Delete manifests from the registry (after ``BatchDeleteImage``)."""
        root = self._storage()
        if root is None:
            return
        digests = set(digests)
        for digest in digests:
            algo, _, hexa = digest.partition(":")
            shutil.rmtree(root / "repositories" / name / "_manifests" / "revisions" / algo / hexa,
                          ignore_errors=True)
        tags = root / "repositories" / name / "_manifests" / "tags"
        for tag in list(tags.iterdir()) if tags.is_dir() else []:
            link = tag / "current" / "link"
            if link.is_file() and link.read_text().strip() in digests:
                shutil.rmtree(tag, ignore_errors=True)

    def forget_all(self) -> None:
        """Empty the registry (after ``/moto-api/reset``)."""
        root = self._storage()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def _storage(self) -> Path | None:
        if self.registry is None or self.registry.storage is None:
            return None
        return self.registry.storage / "docker" / "registry" / "v2"


def put_placeholder(ecr: Any, repository: str, tag: str) -> str:
    """Record an image in ECR with ``PutImage`` only (no layers): for stacks without a registry.

    Honest only where nothing pulls the image: the process runner runs
    ``smserve serve`` from this environment, so ``CreateModel`` needs an image
    ECR holds but nothing needs its layers. Returns the image's digest.
    """
    config = json.dumps({"smserve": "placeholder", "repository": repository, "tag": tag})
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config.encode()).hexdigest()},
        "layers": []})
    try:
        image = ecr.put_image(repositoryName=repository, imageTag=tag, imageManifest=manifest,
                              imageDigest="sha256:" + hashlib.sha256(manifest.encode()
                                                                     ).hexdigest())
    except ecr.exceptions.ImageAlreadyExistsException:
        found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
        return str(found["imageDetails"][0]["imageDigest"])
    return str(image["image"]["imageId"]["imageDigest"])


class EcrMiddleware:
    """Serves the ECR calls that touch the registry; hands the rest to ``app`` (moto).

    Args:
        app: the next WSGI app.
        ecr: the stack's images.
    """

    def __init__(self, app: WsgiApp, ecr: LocalEcr) -> None:
        self.app = app
        self.ecr = ecr

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        path = environ.get("PATH_INFO", "")
        if path.rstrip("/") == "/moto-api/reset" and environ.get("REQUEST_METHOD") == "POST":
            self.ecr.forget_all()
        if not target.startswith(TARGET_PREFIX):
            return self.app(environ, start_response)
        operation = target[len(TARGET_PREFIX):]
        if operation == "GetAuthorizationToken":
            if self.ecr.registry is None:
                return _respond(start_response, 400, {
                    "__type": "ServerException",
                    "message": "the embedded stack runs no registry, so there is nothing to "
                               "log in to or push to; install one (apt-get install -y "
                               "docker-registry) and restart the stack"})
            return _respond(start_response, 200, self.ecr.token())
        if operation in _READS:
            self.ecr.sync()
            return self.app(environ, start_response)
        if operation not in ("BatchDeleteImage", "DeleteRepository"):
            return self.app(environ, start_response)
        return self._delete(operation, environ, start_response)

    def _delete(self, operation: str, environ: dict[str, Any], start_response: StartResponse
                ) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        request = json.loads(body or b"{}")
        status: list[str] = []

        def capture(code: str, headers: Any, *rest: Any) -> Any:
            status.append(code)
            return start_response(code, headers, *rest)

        chunks = list(self.app(environ, capture))
        if status and status[0].startswith("200"):
            name = str(request.get("repositoryName", ""))
            answer = json.loads(b"".join(chunks) or b"{}")
            if operation == "DeleteRepository":
                self.ecr.forget_repository(name)
            else:
                self.ecr.forget_images(name, [i["imageDigest"] for i in
                                              answer.get("imageIds", []) if "imageDigest" in i])
        return chunks


def _respond(start_response: StartResponse, status: int, doc: dict[str, Any]) -> list[bytes]:
    from http import HTTPStatus

    body = json.dumps(doc).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}", [
        ("Content-Type", _CONTENT_TYPE), ("Content-Length", str(len(body)))])
    return [body]
