"""Copying a month of one camera angle, against the stack's S3 and SQS."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from _support import Resources

pytestmark = pytest.mark.integration

PREFIX = "videos/2026/11/front/"


def test_month_back_crosses_years() -> None:
    from smserve_dags.operators.sync import month_back

    assert month_back(datetime(2026, 11, 29), 0) == (2026, 11)
    assert month_back(datetime(2026, 1, 5), 1) == (2025, 12)
    assert month_back(datetime(2026, 3, 31), 14) == (2025, 1)


def _messages(sqs: Any, url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        if not got.get("Messages"):
            return found
        found += [json.loads(m["Body"]) for m in got["Messages"]]


def test_new_objects_are_copied_and_queued_once(clients: Any, resources: Resources) -> None:
    from local_test.clips import upload_clips

    from smserve_dags.operators.sync import SOURCE_ETAG, sync_prefix

    s3, sqs = clients.client("s3"), clients.client("sqs")
    external = f"{resources.bucket}-ext"
    keys = upload_clips(s3, external, PREFIX, 3)
    s3.put_object(Bucket=external, Key="videos/2026/11/rear/other.npy", Body=b"x")

    first = sync_prefix(s3, sqs, resources.queue_url, external, resources.bucket, PREFIX)

    assert (first.listed, sorted(first.copied), first.unchanged, first.failed) == \
        (3, keys, 0, {})
    copy = s3.head_object(Bucket=resources.bucket, Key=keys[0])
    source = s3.head_object(Bucket=external, Key=keys[0])
    assert copy["Metadata"][SOURCE_ETAG] == source["ETag"]
    assert copy["ContentType"] == source["ContentType"]
    bodies = _messages(sqs, resources.queue_url)
    assert sorted(b["key"] for b in bodies) == keys
    assert bodies[0]["bucket"] == resources.bucket
    assert bodies[0]["source"].startswith(f"s3://{external}/{PREFIX}")

    s3.put_object(Bucket=external, Key=keys[1], Body=b"a new version of the clip")
    second = sync_prefix(s3, sqs, resources.queue_url, external, resources.bucket, PREFIX)
    assert (second.copied, second.unchanged) == ([keys[1]], 2)
    assert [b["key"] for b in _messages(sqs, resources.queue_url)] == [keys[1]]
    assert "3 object(s): 1 copied and queued, 2 unchanged, 0 failed" in second.lines()[0]


def test_an_empty_prefix_copies_nothing(clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.sync import sync_prefix

    result = sync_prefix(clients.client("s3"), clients.client("sqs"), resources.queue_url,
                         f"{resources.bucket}-ext", resources.bucket, PREFIX)
    assert result.listed == 0
    assert result.lines() == [f"s3://{resources.bucket}-ext/{PREFIX}: no objects (nothing to "
                              "copy)"]


def test_a_copy_whose_message_cannot_be_sent_is_taken_back(clients: Any,
                                                          resources: Resources) -> None:
    from local_test.clips import upload_clips

    from smserve_dags.operators.sync import sync_prefix

    s3 = clients.client("s3")
    keys = upload_clips(s3, f"{resources.bucket}-ext", PREFIX, 2)
    gone = resources.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    result = sync_prefix(s3, clients.client("sqs"), gone, f"{resources.bucket}-ext",
                         resources.bucket, PREFIX)
    assert result.copied == [] and sorted(result.failed) == keys
    assert "SendMessageBatch failed" in result.failed[keys[0]]
    listed = s3.list_objects_v2(Bucket=resources.bucket, Prefix=PREFIX)
    assert listed.get("KeyCount", 0) == 0, "the next run copies and queues them again"
