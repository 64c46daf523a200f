"""The images file: which ECR image each flavor's models run on, as ``smserve image push`` left it.

``smserve image push`` writes one entry per flavor to ``SMSERVE_IMAGES_FILE``
(default ``.smserve/images.json``, next to where it ran)::

    {"images": {"cpu": {
        "uri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu:0.1.0",
        "digest": "sha256:...",
        "pinned": "123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu@sha256:...",
        "endpoint": "http://127.0.0.1:4566",   # null for AWS itself
        "pushed_at": "2026-12-07T07:00:00+00:00"}}}

``smserve pipeline run --api`` and the Airflow model set-up read it through
:func:`image_uris`: ``SMSERVE_IMAGE_CPU`` / ``SMSERVE_IMAGE_GPU`` first (an
ECR URI with a tag or digest), then the file's entry for the flavor, if it
was pushed to the same endpoint (an embedded stack's, or AWS's). Never a
local tag: CreateModel on AWS cannot pull one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from serving.errors import ConfigError
from serving.imageuri import parse_image_uri


def read(path: Path) -> dict[str, dict[str, Any]]:
    """The file's entries, flavor -> entry (none when the file does not exist).

    Raises:
        ConfigError: the file is not the JSON this module writes.
    """
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        images = doc["images"]
        if not isinstance(images, dict) or not all(isinstance(e, dict) and "uri" in e
                                                   for e in images.values()):
            raise ValueError("each image needs a uri")
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{path} is not an images file ({err}); delete it and push again "
                          "(smserve image push ...)", path=str(path)) from None
    return {str(k): dict(v) for k, v in images.items()}


def record(path: Path, flavor: str, uri: str, digest: str | None,
           endpoint: str | None) -> dict[str, Any]:
    """Record ``flavor``'s pushed image in the file (written whole, atomically)."""
    parsed = parse_image_uri(uri)
    entry: dict[str, Any] = {
        "uri": uri, "digest": digest,
        "pinned": str(parsed.with_digest(digest)) if digest else None,
        "endpoint": endpoint or None,
        "pushed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    images = read(path)
    images[flavor] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".images-", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        json.dump({"images": images}, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)
    return entry


def image_uris(settings: Any, flavors: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """The configured image URI of each flavor, and the flavors that have none.

    Args:
        settings: :class:`~serving.settings.Settings` (``image_uris``, ``images_file``,
            ``endpoint_url``).
        flavors: the flavors wanted.

    Raises:
        ConfigError: an ``SMSERVE_IMAGE_<FLAVOR>`` or a recorded URI that is not an ECR
            image URI with a tag or digest.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    recorded = read(Path(settings.images_file))
    for flavor in flavors:
        given: Mapping[str, str] = settings.image_uris
        if flavor in given:
            where = f"SMSERVE_IMAGE_{flavor.upper()}"
            uri = given[flavor]
        elif flavor in recorded and (recorded[flavor].get("endpoint") or None) == (
                settings.endpoint_url or None):
            where = f"{settings.images_file} ({flavor})"
            uri = str(recorded[flavor]["uri"])
        else:
            missing.append(flavor)
            continue
        try:
            parse_image_uri(uri)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err.message}", uri=uri) from None
        found[flavor] = uri
    return found, missing


def require(settings: Any, flavors: Iterable[str]) -> dict[str, str]:
    """:func:`image_uris`, or a ConfigError naming the flavors without one and the fix."""
    found, missing = image_uris(settings, flavors)
    if missing:
        where = settings.endpoint_url or "AWS"
        raise ConfigError(
            f"no ECR image for the {', '.join(missing)} model(s) at {where}: push one "
            f"(smserve image push --flavor {missing[0]} --repository smserve-{missing[0]}), "
            f"or set SMSERVE_IMAGE_{missing[0].upper()} to an ECR image URI with a tag",
            flavors=missing)
    return found
