"""ECR image URIs: ``<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>`` or ``@<digest>``.

The ``Image`` of ``CreateModel`` must be such a URI on SageMaker: a tag or a
digest is required, and the registry must be ECR. :func:`parse_image_uri`
reads one and says exactly what is wrong with a bad one (the ``problem``
attribute of the error tells the three cases apart, so the embedded SageMaker
API can answer each with the service's own message). Nothing here talks to
AWS or to Docker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from serving.errors import ConfigError

#: ``<account>.dkr.ecr.<region>.amazonaws.com`` (``.com.cn`` in the China regions).
ECR_HOST = re.compile(r"(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\."
                      r"(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)\.amazonaws\.com(?:\.cn)?")
#: ECR's repository name rule.
REPOSITORY = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")
#: Docker's tag rule.
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
#: A content digest as ECR gives it.
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")

#: ``problem`` values of the :class:`ImageUriError` raised by :func:`parse_image_uri`.
NON_ECR, NO_REFERENCE, MALFORMED = "non-ecr", "no-reference", "malformed"


class ImageUriError(ConfigError):
    """An image URI SageMaker would refuse; ``problem`` is ``non-ecr``, ``no-reference`` or
    ``malformed``."""

    code = "ImageUriError"

    def __init__(self, message: str, *, uri: str, problem: str) -> None:
        super().__init__(message, uri=uri, problem=problem)
        self.uri = uri
        self.problem = problem


@dataclass(frozen=True)
class ImageUri:
    """One ECR image: where it lives and which content (a tag, a digest, or both)."""

    account: str
    region: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def registry(self) -> str:
        """``<account>.dkr.ecr.<region>.amazonaws.com``."""
        return ecr_registry(self.account, self.region)

    @property
    def reference(self) -> str:
        """What a registry looks the image up by: the digest when there is one, else the tag."""
        return self.digest or str(self.tag)

    def with_digest(self, digest: str) -> ImageUri:
        """The same image pinned to ``digest`` (``repo@sha256:...``, no tag)."""
        return ImageUri(self.account, self.region, self.repository, None, digest)

    def __str__(self) -> str:
        base = f"{self.registry}/{self.repository}"
        if self.digest:
            return f"{base}@{self.digest}"
        return f"{base}:{self.tag}"


def ecr_registry(account: str, region: str) -> str:
    """ECR's registry host for ``account`` in ``region``."""
    return f"{account}.dkr.ecr.{region}.amazonaws.com"


def ecr_uri(account: str, region: str, repository: str, *, tag: str | None = None,
            digest: str | None = None) -> str:
    """The URI of an ECR image (checked: a bad part raises :class:`ImageUriError`)."""
    ref = f"@{digest}" if digest else f":{tag}" if tag else ""
    return str(parse_image_uri(f"{ecr_registry(account, region)}/{repository}{ref}"))


def parse_image_uri(text: str) -> ImageUri:
    """Read an ECR image URI.

    Args:
        text: ``<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>``, ``...@sha256:<hex>``
            or ``...:<tag>@sha256:<hex>``.

    Raises:
        ImageUriError: not on ECR (``non-ecr``), no tag or digest (``no-reference``),
            or a part that breaks ECR's rules (``malformed``); the message says what to fix.
    """
    uri = text.strip()
    host, slash, rest = uri.partition("/")
    found = ECR_HOST.fullmatch(host)
    if not slash or found is None:
        raise ImageUriError(
            f"image {uri!r} is not in ECR; SageMaker pulls only "
            "<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>: push it with "
            "`smserve image push` and use the URI it prints", uri=uri, problem=NON_ECR)
    name, at, digest = rest.partition("@")
    repository, tag = name, None
    if ":" in name:
        repository, _, tag = name.rpartition(":")
    if not at and tag is None:
        raise ImageUriError(
            f"image {uri!r} has no tag or digest; add one, like {uri}:0.1.0 or "
            f"{uri}@sha256:<digest>", uri=uri, problem=NO_REFERENCE)
    if not REPOSITORY.fullmatch(repository) or not 2 <= len(repository) <= 256:
        raise ImageUriError(
            f"image {uri!r}: {repository!r} is not an ECR repository name (lowercase letters, "
            "digits, single '.', '_' or '-' between them, '/' for namespaces)",
            uri=uri, problem=MALFORMED)
    if tag is not None and not TAG.fullmatch(tag):
        raise ImageUriError(f"image {uri!r}: {tag!r} is not a valid tag (up to 128 letters, "
                            "digits, '_', '.', '-')", uri=uri, problem=MALFORMED)
    if at and not DIGEST.fullmatch(digest):
        raise ImageUriError(f"image {uri!r}: {digest!r} is not a digest (sha256: and 64 "
                            "lowercase hex digits)", uri=uri, problem=MALFORMED)
    return ImageUri(found["account"], found["region"], repository, tag, digest or None)
