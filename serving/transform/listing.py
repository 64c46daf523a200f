"""Which objects a job reads, and which key each one's output gets.

``S3Prefix``: every object whose key starts with the prefix *string*,
listed recursively, page after page: ``data/train`` also matches
``data/train-extra.csv``. Keys ending in ``/`` (the zero-byte "folder"
markers consoles create) are left out.

``ManifestFile``: the URI names a JSON array whose first element is
``{"prefix": "s3://bucket/some/prefix/"}`` and whose other elements are keys
relative to it. A key listed twice is read once.

Output key: ``S3OutputPath`` (a ``/`` is added unless it ends with one or is
the bucket itself) + the input key relative to the input prefix + ``.out``.
For a prefix that ends inside a key name (``data/train`` for
``data/train-extra.csv``) what the service does is **unconfirmed**; by
default the relative part is whatever follows the prefix string
(``-extra.csv``, leading ``/`` removed), and ``relative_to="folder"``
measures it from the prefix's last ``/`` instead (``train-extra.csv``).
When the prefix is the whole key, the key's last path segment is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.errors import ConfigError, TransformError
from serving.transform.spec import TransformJobSpec, parse_s3_uri

RELATIVE_TO = ("prefix", "folder")


@dataclass(frozen=True)
class InputObject:
    """One input object of a job.

    Attributes:
        bucket: its bucket.
        key: its key.
        rel: the part of the key its output key is built from.
        size: bytes, when the listing said.
    """

    bucket: str
    key: str
    rel: str
    size: int | None = None

    @property
    def name(self) -> str:
        """``bucket/key``, as failure reasons name it."""
        return f"{self.bucket}/{self.key}"

    @property
    def uri(self) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{self.key}"


def _client_code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(err).__name__))


def relative_key(key: str, prefix: str, relative_to: str = "prefix") -> str:
    """The part of ``key`` after ``prefix`` that names its output (see the module docstring)."""
    if relative_to not in RELATIVE_TO:
        raise ValueError(f"relative_to={relative_to!r}; use one of {RELATIVE_TO}")
    base = prefix if relative_to == "prefix" else prefix[: prefix.rfind("/") + 1]
    rel = key[len(base):].lstrip("/")
    return rel or key.rsplit("/", 1)[-1]


def output_location(spec: TransformJobSpec, obj: InputObject) -> tuple[str, str]:
    """``(bucket, key)`` of ``obj``'s output object."""
    bucket, prefix = parse_s3_uri(spec.output_uri, "TransformOutput.S3OutputPath")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, f"{prefix}{obj.rel}.out"


def list_inputs(s3: Any, spec: TransformJobSpec, *, relative_to: str = "prefix",
                log: Callable[[str], None] | None = None) -> list[InputObject]:
    """The job's input objects, sorted by key.

    Raises:
        TransformError: nothing to read (with what to do), a missing bucket or
            manifest, or a manifest that is not the documented shape.
    """
    if spec.data_type == "ManifestFile":
        objects = _from_manifest(s3, spec)
    else:
        objects = _from_prefix(s3, spec, relative_to)
    if not objects:
        raise TransformError(f"no objects under {spec.input_uri}; upload input or fix S3Uri",
                             uri=spec.input_uri)
    if log:
        log(f"{len(objects)} input object(s) from {spec.input_uri}")
    return objects


def _from_prefix(s3: Any, spec: TransformJobSpec, relative_to: str) -> list[InputObject]:
    bucket, prefix = spec.input_bucket, spec.input_prefix
    out = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue
                out.append(InputObject(bucket, key, relative_key(key, prefix, relative_to),
                                       item.get("Size")))
    except Exception as err:  # botocore ClientError and friends
        code = _client_code(err)
        raise TransformError(f"cannot list {spec.input_uri}: {code}; check the bucket name in "
                             "S3Uri and that it exists", uri=spec.input_uri) from err
    return sorted(out, key=lambda o: o.key)


def _from_manifest(s3: Any, spec: TransformJobSpec) -> list[InputObject]:
    uri = spec.input_uri
    try:
        body = s3.get_object(Bucket=spec.input_bucket, Key=spec.input_prefix)["Body"].read()
    except Exception as err:
        raise TransformError(f"cannot read the manifest {uri}: {_client_code(err)}; upload it "
                             "or fix S3Uri", uri=uri) from err
    shape = ('a JSON array: [{"prefix": "s3://bucket/prefix/"}, "relative/key1", ...]')
    try:
        doc = json.loads(body)
    except ValueError as err:
        raise TransformError(f"manifest {uri} is not JSON; it must be {shape}", uri=uri) from err
    if (not isinstance(doc, list) or not doc or not isinstance(doc[0], dict)
            or not isinstance(doc[0].get("prefix"), str)):
        raise TransformError(f"manifest {uri} must be {shape}", uri=uri)
    try:
        bucket, prefix = parse_s3_uri(doc[0]["prefix"], f"manifest {uri} prefix")
    except ConfigError as err:
        # The manifest is input, not the request: it fails the job with a reason.
        raise TransformError(err.message, key=uri) from err
    seen: set[str] = set()
    out = []
    for index, entry in enumerate(doc[1:], start=1):
        if not isinstance(entry, str) or not entry:
            raise TransformError(f"manifest {uri} element {index} is {entry!r}; every element "
                                 "after the first must be a key relative to the prefix",
                                 uri=uri)
        key = prefix + entry
        if key in seen:
            continue
        seen.add(key)
        out.append(InputObject(bucket, key, entry.lstrip("/") or key.rsplit("/", 1)[-1]))
    return sorted(out, key=lambda o: o.key)
