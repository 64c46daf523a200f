"""What a record may touch: bucket allow-list, output prefixes, plain relative keys; no I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from serving.errors import BadRequest, Forbidden
from serving.s3refs.records import MAX_KEY_BYTES, RejectedRecord, RequestRecord, show
from serving.settings import Settings

_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def validate(record: RequestRecord, settings: Settings) -> None:
    """Check that ``record`` only names what a model with ``settings`` may touch.

    Raises:
        BadRequest: ``record`` is a :class:`RejectedRecord` (its error), a
            malformed bucket or key (empty segment, backslash, control
            character, over 1024 bytes), no inputs, or an output that is
            also an input.
        Forbidden: the bucket is not on ``SMSERVE_ALLOWED_BUCKETS``, a key is
            absolute or climbs (``..``), or ``output_path`` is outside
            ``SMSERVE_OUTPUT_PREFIXES``.
    """
    if isinstance(record, RejectedRecord):
        raise record.error
    validate_output(record, settings)
    if not isinstance(record.inputs, Mapping) or not record.inputs:
        raise BadRequest("a record needs at least one input in 'inputs'", field="inputs")
    for name, key in record.inputs.items():
        check_key(key, f"inputs[{name!r}]")
    if record.output_path in record.inputs.values():
        raise BadRequest(f"output_path {record.output_path!r} is also an input; outputs "
                         "may not overwrite inputs", field="output_path")


def validate_output(record: RequestRecord, settings: Settings) -> None:
    """Check the record's bucket and ``output_path`` alone (where its answer may be written).

    Raises:
        BadRequest, Forbidden: as :func:`validate`.
    """
    bucket = record.bucket
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise BadRequest(f"bucket {show(bucket)} is not a valid S3 bucket name",
                         field="bucket")
    allowed = settings.allowed_buckets
    if "*" not in allowed and bucket not in allowed:
        raise Forbidden(f"bucket {bucket!r} is not on the allow-list; add it to "
                        "SMSERVE_ALLOWED_BUCKETS", bucket=bucket, field="bucket")
    check_key(record.output_path, "output_path")
    if not any(under(record.output_path, p) for p in settings.output_prefixes):
        shown = ", ".join(repr(p) for p in settings.output_prefixes) or "none"
        raise Forbidden(f"output_path {record.output_path!r} is outside the allowed output "
                        f"prefixes ({shown}); write under one of them or add a prefix to "
                        "SMSERVE_OUTPUT_PREFIXES", field="output_path")


def check_key(key: Any, field: str) -> None:
    """Refuse a key that is not a plain relative S3 key.

    Raises:
        BadRequest: empty, over 1024 bytes, a control character, a backslash,
            an empty segment.
        Forbidden: absolute, or a ``.``/``..`` segment.
    """
    if not isinstance(key, str) or not key:
        raise BadRequest(f"{field} must be a non-empty key, got {show(key)}", field=field)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{field} {show(key)} is not valid Unicode", field=field) from None
    if size > MAX_KEY_BYTES:
        raise BadRequest(f"{field} is {size} bytes; S3 keys are at most {MAX_KEY_BYTES}",
                         field=field)
    if _CONTROL.search(key) or "\\" in key:
        raise BadRequest(f"{field} {show(key)} has a control character or a backslash; "
                         "use plain '/'-separated keys", field=field)
    if key.startswith("/"):
        raise Forbidden(f"{field} {show(key)} is absolute; keys are relative to the bucket "
                        "(drop the leading '/')", field=field)
    parts = key.split("/")
    if any(p in {".", ".."} for p in parts):
        raise Forbidden(f"{field} {show(key)} has a '.' or '..' segment; name the key "
                        "directly", field=field)
    if "" in parts:
        raise BadRequest(f"{field} {show(key)} has an empty segment ('//' or a trailing '/'); "
                         "name an object, not a folder", field=field)


def under(key: str, prefix: str) -> bool:
    """Whether ``key`` lies under ``prefix`` ("" = anywhere; "a" means the folder "a/")."""
    prefix = prefix.lstrip("/")
    if not prefix:
        return True
    if not prefix.endswith("/"):
        prefix += "/"
    return key.startswith(prefix)

