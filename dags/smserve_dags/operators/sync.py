"""The sync DAG's work: copy one month of one camera angle from the external bucket, queue it.

An object is copied when our bucket has no object of the same key, size and
ETag (or the same size and the source's ETag in its ``source-etag``
metadata, which each copy carries: a copy of a multipart upload gets a new
ETag). Each object copied gets one SQS message (sent 10 per call)::

    {"bucket": "my-videos", "key": "videos/2026/11/front/a.npy", "size": 123,
     "etag": "\\"9b2c...\\"", "source": "s3://partner-videos/videos/2026/11/front/a.npy"}

When a message cannot be sent, its copy is deleted again, so the next run
copies and queues the object once more instead of skipping it for good.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow.sdk import get_current_context, task

from smserve_dags.config import ConfigError, load_config
from smserve_dags.operators.aws import Aws, describe_error, error_code
from smserve_dags.operators.report import fail, report_message
from smserve_dags.operators.sqs import SQS_BATCH, queue_url

__all__ = ["SyncResult", "camera_angles", "month_back", "sync_month", "sync_prefix"]

log = logging.getLogger("smserve.sync")

#: Copies made at the same time.
COPY_CONCURRENCY = 8
#: Objects larger than this are copied in parts (CopyObject's limit is 5 GiB).
SINGLE_COPY_LIMIT = 5 * 1024**3
SOURCE_ETAG = "source-etag"


def month_back(when: datetime, months: int) -> tuple[int, int]:
    """``(year, month)`` ``months`` before the month of ``when``."""
    index = when.year * 12 + when.month - 1 - months
    return index // 12, index % 12 + 1


@dataclass(frozen=True)
class SyncResult:
    """What syncing one prefix did.

    Attributes:
        source: ``s3://external/prefix``.
        listed: objects under the prefix in the external bucket.
        copied: keys copied (and queued).
        unchanged: objects we already had.
        failed: key -> why it was not copied or not queued.
    """

    source: str
    listed: int
    copied: list[str] = field(default_factory=list)
    unchanged: int = 0
    failed: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The result as report lines."""
        if not self.listed:
            return [f"{self.source}: no objects (nothing to copy)"]
        head = (f"{self.source}: {self.listed} object(s): {len(self.copied)} copied and "
                f"queued, {self.unchanged} unchanged, {len(self.failed)} failed")
        return [head, *(f"{k}: {why}" for k, why in self.failed.items())]


def _listing(s3: Any, bucket: str, prefix: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if not item["Key"].endswith("/"):
                out[item["Key"]] = (int(item["Size"]), str(item.get("ETag", "")))
    return out


def _copy(s3: Any, source: str, target: str, key: str, size: int, etag: str) -> None:
    head = s3.head_object(Bucket=source, Key=key)
    extra: dict[str, Any] = {
        "Metadata": {**head.get("Metadata", {}), SOURCE_ETAG: etag},
        "MetadataDirective": "REPLACE",
        "ContentType": head.get("ContentType") or "binary/octet-stream",
    }
    copy_source = {"Bucket": source, "Key": key}
    if size <= SINGLE_COPY_LIMIT:
        s3.copy_object(CopySource=copy_source, Bucket=target, Key=key, **extra)
    else:
        from boto3.s3.transfer import TransferConfig

        s3.copy(copy_source, target, key, ExtraArgs=extra,
                Config=TransferConfig(multipart_threshold=SINGLE_COPY_LIMIT,
                                      multipart_chunksize=512 * 1024**2))


def _same(s3: Any, bucket: str, key: str, ours: tuple[int, str] | None,
          theirs: tuple[int, str]) -> bool:
    if ours is None or ours[0] != theirs[0]:
        return False
    if ours[1] == theirs[1]:
        return True
    metadata = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
    return bool(metadata.get(SOURCE_ETAG) == theirs[1])


def _send(sqs: Any, url: str, bodies: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Send ``(key, body)`` messages 10 per call; returns key -> why for those not sent."""
    refused: dict[str, str] = {}
    for start in range(0, len(bodies), SQS_BATCH):
        chunk = bodies[start:start + SQS_BATCH]
        entries = [{"Id": str(i), "MessageBody": body} for i, (_, body) in enumerate(chunk)]
        try:
            answer = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        except Exception as err:
            refused.update({k: f"SendMessageBatch failed: {describe_error(err)}"
                            for k, _ in chunk})
            continue
        for bad in answer.get("Failed") or []:
            refused[chunk[int(bad["Id"])][0]] = f"not queued: {bad.get('Code')}: " \
                                                 f"{bad.get('Message', '')}"
    return refused


def sync_prefix(s3: Any, sqs: Any, url: str, source: str, target: str,
                prefix: str) -> SyncResult:
    """Copy the new and changed objects under ``prefix`` and queue one message per copy.

    Raises:
        Exception: listing a bucket failed (no such bucket, no permission).
    """
    theirs = _listing(s3, source, prefix)
    ours = _listing(s3, target, prefix)
    todo: list[str] = []
    unchanged = 0
    for key, meta in theirs.items():
        if _same(s3, target, key, ours.get(key), meta):
            unchanged += 1
        else:
            todo.append(key)
    failed: dict[str, str] = {}

    def copy(key: str) -> str | None:
        try:
            _copy(s3, source, target, key, *theirs[key])
        except Exception as err:
            return f"copy failed: {describe_error(err)}"
        return None

    with ThreadPoolExecutor(max(1, min(COPY_CONCURRENCY, len(todo) or 1))) as pool:
        outcomes = list(pool.map(copy, todo))
    copied = []
    for key, why in zip(todo, outcomes, strict=True):
        if why is None:
            copied.append(key)
        else:
            failed[key] = why
    bodies = [(key, json.dumps({"bucket": target, "key": key, "size": theirs[key][0],
                                "etag": theirs[key][1], "source": f"s3://{source}/{key}"}))
              for key in copied]
    refused = _send(sqs, url, bodies)
    for key, why in refused.items():  # no message: take the copy back, so the next run retries
        try:
            s3.delete_object(Bucket=target, Key=key)
        except Exception as err:
            why += f"; and deleting the copy failed ({describe_error(err)}): delete it by hand"
        failed[key] = why
    queued = [k for k in copied if k not in refused]
    return SyncResult(f"s3://{source}/{prefix}", len(theirs), queued, unchanged, failed)


@task(retries=0)
def camera_angles(env: str) -> list[str]:
    """The camera angles to sync (one mapped task each), from the Variable."""
    ti = get_current_context()["ti"]
    try:
        cfg = load_config(env)
        Aws(cfg.aws_conn_id, cfg.variable).check_connection()
    except ConfigError as err:
        fail(ti, str(err))
    report_message(ti, f"camera angles: {', '.join(cfg.camera_angles)} (from "
                       f"s3://{cfg.external_bucket} to s3://{cfg.bucket}, queue {cfg.queue})")
    return list(cfg.camera_angles)


def _run_time(context: Mapping[str, Any]) -> datetime:
    dag_run = context.get("dag_run")
    when = getattr(dag_run, "run_after", None) or context.get("logical_date")
    if not isinstance(when, datetime):
        raise RuntimeError("the DAG run has neither run_after nor a logical date")
    return when


@task(retries=1)
def sync_month(angle: str, env: str, months_back: int) -> dict[str, Any]:
    """Sync one camera angle of the run's month (``months_back=0``) or an earlier one."""
    context = get_current_context()
    ti = context["ti"]
    try:
        cfg = load_config(env)
        aws = Aws(cfg.aws_conn_id, cfg.variable)
        aws.check_connection()
        url = queue_url(aws.sqs, cfg.queue)
    except ConfigError as err:
        fail(ti, str(err))
    year, month = month_back(_run_time(context), months_back)
    prefix = cfg.month_prefix(year, month, angle)
    try:
        result = sync_prefix(aws.s3, aws.sqs, url, cfg.external_bucket, cfg.bucket, prefix)
    except Exception as err:
        code = error_code(err)
        if code == "NoSuchBucket":
            fail(ti, f"bucket {cfg.external_bucket} or {cfg.bucket} does not exist "
                     f"({describe_error(err)}); create it or fix the Variable {cfg.variable}")
        if code:
            fail(ti, f"syncing s3://{cfg.external_bucket}/{prefix} failed: "
                     f"{describe_error(err)}")
        raise
    report_message(ti, result.lines())
    if result.failed:
        raise RuntimeError(f"{len(result.failed)} object(s) of {result.source} were not "
                           "copied and queued; the report says why")
    return {"source": result.source, "listed": result.listed, "copied": result.copied,
            "unchanged": result.unchanged}
