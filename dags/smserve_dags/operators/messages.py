"""What a batch of SQS messages asks for: the objects to run the models on, and what is wrong.

A message names one object of our bucket, as the sync DAG sends it::

    {"bucket": "my-videos", "key": "videos/2026/11/front/clip-000.npy", ...}

or is an S3 event notification (``{"Records": [{"s3": {"bucket": {"name": ...},
"object": {"key": ...}}}]}``). A message that cannot be used (not JSON, no
key, another bucket, a key that cannot become an output key, an object that
does not exist) is set aside with the reason: it is not processed and not
deleted, so it comes back after its visibility timeout and, after the
queue's ``maxReceiveCount``, lands on the dead-letter queue.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

__all__ = ["BadMessage", "Batch", "batch_id", "object_refs", "parse_batch"]


@dataclass(frozen=True)
class BadMessage:
    """A message that is left on the queue.

    Attributes:
        message_id: its ``MessageId``.
        reason: what is wrong with it.
        receive_count: ``ApproximateReceiveCount`` (0: unknown).
    """

    message_id: str
    reason: str
    receive_count: int = 0


@dataclass(frozen=True)
class Batch:
    """The usable part of a batch.

    Attributes:
        keys: the input objects' keys (each once), in the order they arrived.
        message_ids: messages whose every object is usable.
        bad: the messages left on the queue.
    """

    keys: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    bad: list[BadMessage] = field(default_factory=list)


def batch_id(message_ids: Sequence[str]) -> str:
    """A short, stable id of a set of messages (the same ones, in any order, give the same id)."""
    return hashlib.sha256("\n".join(sorted(message_ids)).encode()).hexdigest()[:16]


def _show(text: str, limit: int = 80) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def object_refs(body: str) -> list[tuple[str, str]]:
    """``(bucket, key)`` of every object a message body names.

    Raises:
        ValueError: the body is not one of the two shapes; the message says why.
    """
    try:
        value = json.loads(body)
    except ValueError:
        raise ValueError(f"the body is not JSON: {_show(body)}") from None
    if not isinstance(value, Mapping):
        raise ValueError(f"the body is JSON but not an object: {_show(body)}")
    if "Records" in value:
        refs = []
        records = value["Records"]
        if not isinstance(records, list) or not records:
            raise ValueError("'Records' is not a non-empty list of S3 event records")
        for i, record in enumerate(records):
            try:
                s3 = record["s3"]
                refs.append((str(s3["bucket"]["name"]), unquote_plus(str(s3["object"]["key"]))))
            except (KeyError, TypeError):
                raise ValueError(f"Records[{i}] is not an S3 event record (no "
                                 "s3.bucket.name / s3.object.key)") from None
        return refs
    bucket, key = value.get("bucket"), value.get("key")
    if not isinstance(bucket, str) or not bucket or not isinstance(key, str) or not key:
        raise ValueError('the body names no object; send {"bucket": "...", "key": "..."} '
                         f"(got {_show(body)})")
    return [(bucket, key)]


def _receive_count(message: Mapping[str, Any]) -> int:
    try:
        return int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 0))
    except (TypeError, ValueError):
        return 0


def parse_batch(messages: Sequence[Mapping[str, Any]], bucket: str,
                exists: Any = None, check_key: Any = None) -> Batch:
    """Split ``messages`` into the objects to process and the messages to leave.

    Args:
        messages: ``ReceiveMessage`` entries.
        bucket: the pipeline's bucket; a message naming another one is left.
        exists: ``exists(keys) -> set of keys that exist`` (None: no check).
        check_key: ``check_key(key)`` raises ``ValueError`` for a key that
            cannot be an input (None: no check).
    """
    wanted: dict[str, list[str]] = {}
    bad: list[BadMessage] = []
    for message in messages:
        message_id = str(message.get("MessageId", "?"))
        count = _receive_count(message)
        try:
            refs = object_refs(str(message.get("Body", "")))
            for ref_bucket, key in refs:
                if ref_bucket != bucket:
                    raise ValueError(f"it names s3://{ref_bucket}/{key}, but this pipeline "
                                     f"reads bucket {bucket}")
                if check_key is not None:
                    check_key(key)
        except ValueError as err:
            bad.append(BadMessage(message_id, str(err), count))
            continue
        wanted[message_id] = [key for _, key in refs]
    found: set[str] | None = None
    if exists is not None:
        found = exists(sorted({k for keys in wanted.values() for k in keys}))
    usable: list[str] = []
    keys: dict[str, None] = {}
    counts = {str(m.get("MessageId", "?")): _receive_count(m) for m in messages}
    for message_id, message_keys in wanted.items():
        missing = [k for k in message_keys if found is not None and k not in found]
        if missing:
            bad.append(BadMessage(message_id, f"s3://{bucket}/{missing[0]} does not exist (was "
                                              "it deleted after the message was sent?)",
                                  counts[message_id]))
            continue
        usable.append(message_id)
        keys.update(dict.fromkeys(message_keys))
    return Batch(list(keys), usable, bad)
