"""Triggers of the deferrable waits: the triggerer watches, no worker slot is held.

With ``deferrable`` on (the default; see :mod:`smserve_dags.config`) the
transform task and the buffering sensor ``defer()`` to one of these, and the
triggerer runs it; when it fires, the task resumes in a worker and does the
rest as in reschedule mode:

- :class:`TransformJobTrigger` describes one transform job every
  ``poll_seconds`` until it is no longer ``InProgress``/``Stopping`` and
  fires ``{"status": "ended", "state": ..., "failure_reason": ...}``;
- :class:`QueueBatchTrigger` reads the queue's ``ApproximateNumberOfMessages``
  every ``poll_seconds`` and fires ``{"status": "ready", "visible": n}`` once
  ``max_messages`` are visible or at the deadline, with fewer.

Both fire ``{"status": "timeout", ...}`` at their deadline (an absolute epoch
time, so a re-deferral keeps it) where one applies, and ``{"status":
"error", "message": ..., "retryable": ...}`` when AWS cannot be reached, the
connection is not defined, or the job is unknown; they delete nothing.
Every event carries the trigger's ``started`` and ``deadline`` back (the
task reads them there: ``dag.test()`` drops the ``kwargs`` of ``defer()``).

boto3 calls run in a thread (``asyncio.to_thread``), never on the event
loop; clients come from the Airflow connection (``aws_conn_id``), as the
tasks' hooks make them. The triggerer imports these by the class path
``smserve_dags.triggers.<name>``: the folder that holds ``smserve_dags``
(the DAGs folder) must be on its ``sys.path`` (``PYTHONPATH``); the
triggerer, unlike the dag-processor and task runs, does not add it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from smserve_dags.config import ConfigError
from smserve_dags.operators.aws import Aws, describe_error, error_code, job_missing

__all__ = ["RUNNING", "QueueBatchTrigger", "TransformJobTrigger", "approximate_count"]

#: Transform job states that are not over yet.
RUNNING = ("InProgress", "Stopping")


def approximate_count(sqs: Any, url: str) -> int:
    """``ApproximateNumberOfMessages`` of the queue (visible messages)."""
    answer = sqs.get_queue_attributes(QueueUrl=url,
                                      AttributeNames=["ApproximateNumberOfMessages"])
    return int(answer.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))


def _error(message: str, retryable: bool, **extra: Any) -> TriggerEvent:
    return TriggerEvent({"status": "error", "message": message, "retryable": retryable,
                         **extra})


def _unreachable(what: str, conn_id: str | None, err: BaseException) -> str:
    return (f"cannot reach AWS to {what} ({describe_error(err)}); check that Airflow "
            f"connection {conn_id!r} (its credentials, region and endpoint_url) points at a "
            "reachable AWS, then clear the task")


class _AwsTrigger(BaseTrigger):
    """What both triggers share: the connection, the poll interval, the deadline."""

    def __init__(self, *, aws_conn_id: str | None, poll_seconds: float, started: float,
                 deadline: float | None, variable: str) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id
        self.poll_seconds = float(poll_seconds)
        self.started = float(started)
        self.deadline = None if deadline is None else float(deadline)
        self.variable = variable

    def _common(self) -> dict[str, Any]:
        return {"aws_conn_id": self.aws_conn_id, "poll_seconds": self.poll_seconds,
                "started": self.started, "deadline": self.deadline, "variable": self.variable}

    def _event(self, payload: dict[str, Any]) -> TriggerEvent:
        return TriggerEvent({**payload, "started": self.started, "deadline": self.deadline})

    def _connect(self) -> Aws:
        aws = Aws(self.aws_conn_id, self.variable)
        aws.check_connection()
        return aws

    async def _pause(self) -> None:
        left = self.poll_seconds if self.deadline is None else \
            min(self.poll_seconds, max(0.0, self.deadline - time.time()))
        await asyncio.sleep(left)

    def _past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline


class TransformJobTrigger(_AwsTrigger):
    """Fires when transform job ``job_name`` ends (or at ``deadline``, or on an error).

    Args:
        job_name: the job to watch.
        aws_conn_id: the Airflow connection (None: boto3's default chain).
        poll_seconds: between two ``DescribeTransformJob`` calls.
        started: when the task began waiting (epoch seconds), echoed back.
        deadline: give up at this epoch time (the transform's time limit).
        variable: the settings' Variable, for messages.
    """

    def __init__(self, *, job_name: str, aws_conn_id: str | None, poll_seconds: float,
                 started: float, deadline: float | None, variable: str) -> None:
        super().__init__(aws_conn_id=aws_conn_id, poll_seconds=poll_seconds, started=started,
                         deadline=deadline, variable=variable)
        self.job_name = job_name

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and keyword arguments (JSON-ready)."""
        return f"{__name__}.TransformJobTrigger", {"job_name": self.job_name, **self._common()}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Describe the job until it ends; one event."""
        try:
            aws = await asyncio.to_thread(self._connect)
            client = await asyncio.to_thread(lambda: aws.sagemaker)
        except ConfigError as err:
            yield self._event_error(str(err), False)
            return
        except Exception as err:
            yield self._event_error(_unreachable(f"watch transform job {self.job_name}",
                                                 self.aws_conn_id, err), True)
            return
        while True:
            try:
                found = await asyncio.to_thread(client.describe_transform_job,
                                                TransformJobName=self.job_name)
            except Exception as err:
                if job_missing(err):
                    yield self._event_error(
                        f"transform job {self.job_name} is unknown to SageMaker (was it "
                        f"created with another connection than {self.aws_conn_id!r}?); clear "
                        "the task to create it again", False)
                elif error_code(err):
                    yield self._event_error(f"SageMaker refused DescribeTransformJob "
                                            f"{self.job_name}: {describe_error(err)}", True)
                else:
                    yield self._event_error(_unreachable(f"watch transform job {self.job_name}",
                                                         self.aws_conn_id, err), True)
                return
            state = str(found["TransformJobStatus"])
            if state not in RUNNING:
                self.log.info("transform job %s is %s", self.job_name, state)
                yield self._event({"status": "ended", "job": self.job_name, "state": state,
                                   "failure_reason": found.get("FailureReason")})
                return
            if self._past_deadline():
                yield self._event({"status": "timeout", "job": self.job_name, "state": state})
                return
            await self._pause()

    def _event_error(self, message: str, retryable: bool) -> TriggerEvent:
        return self._event(_error(message, retryable, job=self.job_name).payload)


class QueueBatchTrigger(_AwsTrigger):
    """Fires when ``max_messages`` are visible on the queue, or at ``deadline`` with fewer.

    Args:
        queue_url: the queue.
        max_messages: the batch size.
        aws_conn_id: the Airflow connection (None: boto3's default chain).
        poll_seconds: between two looks at the queue.
        started: when the task began waiting (epoch seconds), echoed back.
        deadline: fire at this epoch time whatever is visible (``max_wait_seconds``).
        variable: the settings' Variable, for messages.
    """

    def __init__(self, *, queue_url: str, max_messages: int, aws_conn_id: str | None,
                 poll_seconds: float, started: float, deadline: float | None,
                 variable: str) -> None:
        super().__init__(aws_conn_id=aws_conn_id, poll_seconds=poll_seconds, started=started,
                         deadline=deadline, variable=variable)
        self.queue_url = queue_url
        self.max_messages = int(max_messages)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and keyword arguments (JSON-ready)."""
        return f"{__name__}.QueueBatchTrigger", {
            "queue_url": self.queue_url, "max_messages": self.max_messages, **self._common()}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Look at the queue until the batch is full or the deadline passed; one event."""
        try:
            aws = await asyncio.to_thread(self._connect)
            client = await asyncio.to_thread(lambda: aws.sqs)
        except ConfigError as err:
            yield self._event(_error(str(err), False).payload)
            return
        except Exception as err:
            yield self._event(_error(_unreachable(f"read queue {self.queue_url}",
                                                  self.aws_conn_id, err), True).payload)
            return
        while True:
            try:
                visible = await asyncio.to_thread(approximate_count, client, self.queue_url)
            except Exception as err:
                message = (f"SQS refused {self.queue_url}: {describe_error(err)}"
                           if error_code(err) else
                           _unreachable(f"read queue {self.queue_url}", self.aws_conn_id, err))
                yield self._event(_error(message, True).payload)
                return
            if visible >= self.max_messages or self._past_deadline():
                yield self._event({"status": "ready", "visible": visible})
                return
            self.log.info("%d message(s) visible on %s; waiting for %d", visible,
                          self.queue_url, self.max_messages)
            await self._pause()
