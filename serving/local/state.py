"""The embedded stack's state in a folder, so ``smserve local up --state DIR`` survives a restart.

What is kept: S3 buckets and objects (body, content type, user metadata),
SQS queues (their attributes, dead-letter queues first) and the messages on
them (body, message attributes, FIFO group and deduplication ids, and the
receive count, so a message one failure from its DLQ stays so), the
SageMaker API's models and its finished transform jobs. A job that was still
running when the stack stopped comes back ``Failed`` with a reason that says
so; nothing is run again. Not kept: ECR repositories and images, IAM, STS,
CloudWatch Logs, and S3 object versions (only the latest of each key).

:func:`save` runs when the stack stops (Ctrl-C, SIGTERM, SIGHUP); a stack
killed with SIGKILL keeps what the last clean stop saved. The folder holds
``state.json`` (replaced atomically, so an interrupted save keeps the old
one) and ``blobs/`` (object bodies by SHA-256, shared by equal bodies).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serving.errors import StackError

VERSION = 1
STATE_FILE = "state.json"
#: The reason a job still running at a stop is restored with.
INTERRUPTED = ("InternalServerError: the embedded stack stopped (smserve local up ended) while "
               "this job ran; its outputs may be partial; create the job again")
#: Queue attributes SQS computes itself (not given back to CreateQueue).
_COMPUTED = frozenset({"QueueArn", "ApproximateNumberOfMessages",
                       "ApproximateNumberOfMessagesNotVisible",
                       "ApproximateNumberOfMessagesDelayed", "CreatedTimestamp",
                       "LastModifiedTimestamp", "SqsManagedSseEnabled"})


def has_state(folder: Path) -> bool:
    """Whether ``folder`` holds a saved state."""
    return (folder / STATE_FILE).is_file()


def save(stack: Any, folder: Path, jobs: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Write the stack's state into ``folder``; returns counts of what was kept.

    Args:
        stack: a started :class:`~serving.local.stack.LocalStack`, still answering.
        folder: the state folder (created if missing).
        jobs: the SageMaker jobs, exported before the running ones were stopped
            (``stack.sagemaker.jobs.export(INTERRUPTED)``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    blobs = folder / "blobs"
    blobs.mkdir(exist_ok=True)
    doc: dict[str, Any] = {"version": VERSION, "saved_at": time.time(),
                           "region": stack.region}
    doc["s3"] = _save_s3(_client(stack, "s3"), blobs)
    doc["sqs"] = _save_sqs(stack)
    sagemaker = stack.sagemaker
    doc["sagemaker"] = {
        "models": [{"name": m.name, "arn": m.arn, "request": dict(m.request),
                    "creation_time": m.creation_time}
                   for m in _models(sagemaker)],
        "jobs": list(jobs),
    }
    fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
    with os.fdopen(fd, "w") as out:
        json.dump(doc, out, default=str)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, folder / STATE_FILE)
    _prune(blobs, {o["blob"] for b in doc["s3"] for o in b["objects"]})
    return {"buckets": len(doc["s3"]), "objects": sum(len(b["objects"]) for b in doc["s3"]),
            "queues": len(doc["sqs"]), "models": len(doc["sagemaker"]["models"]),
            "jobs": len(doc["sagemaker"]["jobs"])}


def load(stack: Any, folder: Path) -> dict[str, int]:
    """Put the state saved in ``folder`` into a freshly started, empty stack.

    Raises:
        StackError: the state file is unreadable or from another version.
    """
    try:
        doc = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise StackError(f"cannot read the stack state {folder / STATE_FILE} ({err}); move the "
                         "folder away to start empty, or pass another --state") from err
    if doc.get("version") != VERSION:
        raise StackError(f"{folder / STATE_FILE} is state version {doc.get('version')!r}; this "
                         f"smserve reads version {VERSION}; move the folder away to start empty")
    s3 = _client(stack, "s3")
    for bucket in doc["s3"]:
        extra = {}
        if stack.region != "us-east-1":
            extra = {"CreateBucketConfiguration": {"LocationConstraint": stack.region}}
        s3.create_bucket(Bucket=bucket["name"], **extra)
        for obj in bucket["objects"]:
            s3.put_object(Bucket=bucket["name"], Key=obj["key"],
                          Body=(folder / "blobs" / obj["blob"]).read_bytes(),
                          ContentType=obj["content_type"], Metadata=obj["metadata"])
    _load_sqs(stack, doc["sqs"])
    sagemaker = stack.sagemaker
    for model in doc["sagemaker"]["models"]:
        _restore_model(sagemaker.models, model)
    sagemaker.jobs.restore(doc["sagemaker"]["jobs"])
    return {"buckets": len(doc["s3"]), "objects": sum(len(b["objects"]) for b in doc["s3"]),
            "queues": len(doc["sqs"]), "models": len(doc["sagemaker"]["models"]),
            "jobs": len(doc["sagemaker"]["jobs"])}


def _client(stack: Any, service: str) -> Any:
    from serving.aws import ClientFactory

    return ClientFactory(stack.settings()).client(service)


# --- S3 -------------------------------------------------------------------------------------------


def _save_s3(s3: Any, blobs: Path) -> list[dict[str, Any]]:
    buckets = []
    for bucket in s3.list_buckets().get("Buckets", []):
        name = bucket["Name"]
        objects = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                got = s3.get_object(Bucket=name, Key=item["Key"])
                body = got["Body"].read()
                digest = hashlib.sha256(body).hexdigest()
                blob = blobs / digest
                if not blob.exists():
                    tmp = blob.with_suffix(".part")
                    tmp.write_bytes(body)
                    os.replace(tmp, blob)
                objects.append({"key": item["Key"], "blob": digest,
                                "content_type": got.get("ContentType") or
                                "binary/octet-stream",
                                "metadata": got.get("Metadata") or {}})
        buckets.append({"name": name, "objects": objects})
    return buckets


def _prune(blobs: Path, keep: set[str]) -> None:
    for blob in blobs.iterdir():
        if blob.name not in keep:
            with contextlib.suppress(OSError):
                blob.unlink()


# --- SQS (queues through the API; messages through moto's backend, in this process) -----------


def _sqs_backend(stack: Any) -> Any:
    from moto.sqs.models import sqs_backends

    from serving.local.sagemaker.resources import DEFAULT_ACCOUNT

    return sqs_backends[DEFAULT_ACCOUNT][stack.region]


def _save_sqs(stack: Any) -> list[dict[str, Any]]:
    sqs = _client(stack, "sqs")
    backend = _sqs_backend(stack)
    queues = []
    for url in sqs.list_queues().get("QueueUrls", []):
        name = url.rsplit("/", 1)[1]
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        attrs = {k: v for k, v in attributes.get("Attributes", {}).items()
                 if k not in _COMPUTED}
        queue = backend.get_queue(name)
        messages = [{"body": m.body, "attributes": m.message_attributes,
                     "group_id": m.group_id, "deduplication_id": m.deduplication_id,
                     "receive_count": m.approximate_receive_count}
                    for m in list(queue._messages)]
        queues.append({"name": name, "attributes": attrs, "messages": messages})
    # dead-letter queues first: a redrive policy must name a queue that exists
    queues.sort(key=lambda q: "RedrivePolicy" in q["attributes"])
    return queues


def _load_sqs(stack: Any, queues: list[dict[str, Any]]) -> None:
    sqs = _client(stack, "sqs")
    backend = _sqs_backend(stack)
    for queue in queues:
        sqs.create_queue(QueueName=queue["name"], Attributes=queue["attributes"])
        for saved in queue["messages"]:
            message = backend.send_message(
                queue["name"], saved["body"], message_attributes=saved["attributes"] or None,
                deduplication_id=saved["deduplication_id"], group_id=saved["group_id"])
            message.approximate_receive_count = int(saved["receive_count"] or 0)


# --- SageMaker ------------------------------------------------------------------------------------


def _models(sagemaker: Any) -> list[Any]:
    store = sagemaker.models
    with store._lock:  # the store has no listing of records; read it as it holds them
        return list(store._models.values())


def _restore_model(store: Any, saved: dict[str, Any]) -> None:
    from serving.local.sagemaker.models import ModelRecord

    record = ModelRecord(saved["name"], saved["arn"], saved["request"], saved["creation_time"])
    with store._lock:
        store._models.setdefault(record.name.lower(), record)
