"""Helpers of the operators' call tests: a stand-in task instance, test resources, messages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import pytest


@dataclass
class FakeTI:
    """What the operators use of a running task instance."""

    dag_id: str = "op_test"
    run_id: str = "manual__2026-11-29T10:00:00+00:00"
    task_id: str = "task"
    try_number: int = 1
    map_index: int = -1
    first_reschedule: datetime | None = None
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value, default=str)  # XCom values must be JSON-ready
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get(key)

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return self.first_reschedule


@dataclass
class Resources:
    """One test's bucket and queue, and the ``dev`` Variable that names them."""

    bucket: str
    queue_url: str
    dead_letter_url: str
    model_prefix: str
    monkeypatch: pytest.MonkeyPatch
    images: dict[str, str] = field(default_factory=dict)

    def configure(self, **settings: Any) -> None:
        value = {"external_bucket": f"{self.bucket}-ext", "bucket": self.bucket,
                 "queue": self.queue_url, "sagemaker_model_prefix": self.model_prefix,
                 "images": self.images,
                 "max_wait_seconds": 0, "poke_interval_seconds": 1,
                 "transform_poll_seconds": 0.5, "receive_wait_seconds": 0,
                 "min_reschedule_seconds": 0, **settings}
        self.monkeypatch.setenv("AIRFLOW_VAR_SMSERVE_DEV", json.dumps(value))


def send(sqs: Any, url: str, count: int, bucket: str = "b", prefix: str = "k") -> list[str]:
    """``count`` messages naming ``bucket``/``prefix-i``; returns their ids."""
    ids: list[str] = []
    for start in range(0, count, 10):
        answer = sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"bucket": bucket,
                                                      "key": f"{prefix}-{start + i:03d}"})}
            for i in range(min(10, count - start))])
        ids += [e["MessageId"] for e in answer["Successful"]]
    return ids


def make_work(clients: Any, resources: Resources, ti: FakeTI, count: int,
              model: str) -> dict[str, Any]:
    """``count`` clips uploaded, and what ``model``'s ``requests`` task returns for them."""
    from airflow.sdk.execution_time.context import set_current_context

    from local_test.clips import upload_clips

    from smserve_dags.operators.requests import prepare_requests

    keys = upload_clips(clients.client("s3"), resources.bucket, "videos/2026/11/top/", count)
    batch = {"batch": "b" * 16, "bucket": resources.bucket, "queue_url": resources.queue_url,
             "keys": keys, "message_ids": []}
    with set_current_context(cast(Any, {"ti": ti})):
        work: dict[str, Any] = prepare_requests.function(model, "dev", batch, [])
    return work
