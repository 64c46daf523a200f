"""The SQS side of a run: buffer messages, keep them invisible while models run, delete them.

:class:`SqsBufferingSensor` collects up to ``max_messages`` (more than SQS's
10 per call) or whatever has arrived after ``max_wait_seconds``, and pushes
them as XCom ``messages``, the shape the provider's ``SqsSensor`` uses. It
never deletes: a message leaves the queue only in :func:`delete_batch`,
after every model succeeded; until then a failed run's messages come back
after their visibility timeout, and after the queue's ``maxReceiveCount``
SQS moves them to the dead-letter queue.

The sensor holds nothing while it waits: deferred (``deferrable``, the
default), the triggerer looks at ``ApproximateNumberOfMessages``
(:class:`~smserve_dags.triggers.QueueBatchTrigger`); in ``reschedule`` mode
each poke that is not ready does. Once ready it receives, at most 10
messages per call, until it has ``max_messages`` or the queue is drained, so
a full batch of N messages costs ``ceil(N / 10)`` receive calls. A batch
whose JSON passes ``max_xcom_bytes`` fails the task (see :func:`_too_large`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from airflow.sdk import BaseSensorOperator

from smserve_dags.config import ConfigError, PipelineConfig, load_config
from smserve_dags.operators.aws import Aws, describe_error, each, error_code
from smserve_dags.operators.report import fail, report_message, trigger_failed
from smserve_dags.triggers import QueueBatchTrigger, approximate_count

__all__ = [
    "DeleteResult",
    "SqsBufferingSensor",
    "collect_messages",
    "delete_batch",
    "extend_visibility",
    "queue_url",
]

log = logging.getLogger("smserve.sqs")

#: SQS's most entries per receive, batch send, batch change and batch delete.
SQS_BATCH = 10
_STALE = frozenset({"ReceiptHandleIsInvalid", "InvalidParameterValue",
                    "AWS.SimpleQueueService.ReceiptHandleIsInvalid"})


def queue_url(sqs: Any, queue: str) -> str:
    """The URL of ``queue`` (a URL is returned as is).

    Raises:
        ConfigError: no such queue.
    """
    if queue.startswith(("https://", "http://")):
        return queue
    try:
        url: str = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    except Exception as err:
        if error_code(err) in ("AWS.SimpleQueueService.NonExistentQueue",
                               "QueueDoesNotExist"):
            raise ConfigError(f"SQS queue {queue!r} does not exist; create it (with a redrive "
                              "policy to a dead-letter queue), or fix 'queue' in the "
                              "Variable") from err
        raise
    return url


def _chunks(items: Sequence[Any], size: int = SQS_BATCH) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass(frozen=True)
class Received:
    """What one collection got.

    Attributes:
        messages: the messages, as ``ReceiveMessage`` gives them, each once.
        calls: ``ReceiveMessage`` calls made.
        size: bytes of the messages as JSON (what the XCom holds).
        over: the collection stopped because ``size`` passed ``max_bytes``.
    """

    messages: list[dict[str, Any]]
    calls: int
    size: int = 0
    over: bool = False


def json_size(value: Any) -> int:
    """Bytes of ``value`` as JSON (UTF-8), what an XCom of it stores."""
    return len(json.dumps(value, default=str).encode())


def collect_messages(sqs: Any, url: str, max_messages: int, *, visibility_timeout: int,
                     wait_seconds: int = 1, expected: int | None = None,
                     max_bytes: int | None = None) -> Received:
    """Receive up to ``max_messages``, at most 10 per call, without deleting any.

    Stops at ``max_messages``, at an empty answer, once the messages take
    more than ``max_bytes`` as JSON (``over``: no more is received than shows
    that the batch is too large), or once it has at least ``expected``
    messages (what the queue said it held) and a call returned fewer than
    asked: no receive is spent to find out that the queue is empty.

    Args:
        sqs: a boto3 SQS client.
        url: the queue.
        max_messages: the most to take.
        visibility_timeout: seconds each message stays invisible to others.
        wait_seconds: long-poll wait of each call.
        expected: messages the queue held (``ApproximateNumberOfMessages``).
        max_bytes: the most the messages may take as JSON (None: no limit).
    """
    got: dict[str, dict[str, Any]] = {}
    calls = size = 0
    while len(got) < max_messages:
        want = min(SQS_BATCH, max_messages - len(got))
        answer = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=want, WaitTimeSeconds=wait_seconds,
            VisibilityTimeout=visibility_timeout,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"])
        calls += 1
        batch = answer.get("Messages") or []
        for message in batch:
            if message["MessageId"] not in got:
                got[message["MessageId"]] = message
                size += json_size(message) + 2  # ", " between list items
        if max_bytes is not None and size > max_bytes:
            return Received(list(got.values()), calls, size, over=True)
        if not batch:
            break
        if expected is not None and len(got) >= expected and len(batch) < want:
            break
    return Received(list(got.values()), calls, size)


class SqsBufferingSensor(BaseSensorOperator):
    """Wait for a batch of messages: ``max_messages`` of them, or what came in ``max_wait_seconds``.

    Pushes the messages (possibly none) as XCom ``messages`` (the provider's
    ``SqsSensor`` shape: a list of ``ReceiveMessage`` entries) and deletes
    none. The queue, the batch size, the wait and the visibility timeout come
    from the environment's Variable when it runs (see ``smserve_dags/config.py``).
    With ``deferrable`` (the default) it waits in the triggerer
    (:class:`~smserve_dags.triggers.QueueBatchTrigger`, task state
    ``deferred``) and receives in :meth:`execute_complete`; otherwise it pokes
    in ``reschedule`` mode every ``poke_interval_seconds`` (at least
    ``min_reschedule_seconds``). A failed try is retried (``retries``,
    default 2) unless the settings are wrong; a retry receives afresh: what
    the failed try received is invisible until its visibility timeout, then
    received again (its receive count one higher). A batch larger than
    ``max_xcom_bytes`` fails the task; its messages are made visible again.

    Args:
        env: the settings' environment (``main``, ``dev``).
        **kwargs: for ``BaseSensorOperator`` (``mode`` is ``reschedule``).
    """

    ui_color = "#f2e6f1"

    def __init__(self, *, env: str, **kwargs: Any) -> None:
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("timeout", 24 * 3600)
        kwargs.setdefault("poke_interval", 30)
        # a scheduler hiccup (a poke marked failed though it succeeded) is retried; nothing is
        # lost: the sensor never deletes, and what a failed try received comes back to the
        # queue after its visibility timeout. Bad settings fail at once (AirflowFailException).
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=30))
        super().__init__(**kwargs)
        self.env = env

    def execute(self, context: Any) -> Any:
        """Defer to the triggerer (``deferrable``), or poke in reschedule mode."""
        ti = context["ti"]
        try:
            deferrable = load_config(self.env).deferrable
        except ConfigError as err:
            fail(ti, str(err))
        if not deferrable:
            return super().execute(context)
        cfg, aws, url = self._prepare(ti)
        self._step(ti, cfg, aws, url, time.time(), resumed=False)
        return None

    def execute_complete(self, context: Any, event: Mapping[str, Any]) -> None:
        """The trigger fired: receive and push the batch (or defer again, or fail)."""
        ti = context["ti"]
        if event.get("status") == "error":
            trigger_failed(ti, event)
        cfg, aws, url = self._prepare(ti)
        self._step(ti, cfg, aws, url, float(event["started"]), resumed=True)

    def poke(self, context: Any) -> bool:
        """Collect and push the batch when it is full or the wait is over; otherwise wait."""
        ti = context["ti"]
        cfg, aws, url = self._prepare(ti)
        started = ti.get_first_reschedule_date(context) or datetime.now(UTC)
        waited = (datetime.now(UTC) - started).total_seconds()
        visible = self._count(ti, aws, url)
        if not self._ready(cfg, url, visible, waited):
            return False
        self._collect(ti, cfg, aws, url, visible, waited)
        return True

    # --- the parts -------------------------------------------------------------------------

    def _prepare(self, ti: Any) -> tuple[PipelineConfig, Aws, str]:
        try:
            cfg = load_config(self.env)
            self.poke_interval = cfg.interval(cfg.poke_interval_seconds, self.mode)
            aws = Aws(cfg.aws_conn_id, cfg.variable)
            aws.check_connection()
            url = queue_url(aws.sqs, cfg.queue)
            # before anything is received: a batch that cannot be read would come back
            # each run, one receive nearer the dead-letter queue
            aws.check_bucket(cfg.bucket)
        except ConfigError as err:
            fail(ti, str(err))
        return cfg, aws, url

    @staticmethod
    def _count(ti: Any, aws: Aws, url: str) -> int:
        try:
            return approximate_count(aws.sqs, url)
        except Exception as err:
            if not error_code(err):
                raise
            fail(ti, f"SQS refused {url}: {describe_error(err)}")

    @staticmethod
    def _ready(cfg: PipelineConfig, url: str, visible: int, waited: float) -> bool:
        if visible < cfg.max_messages and waited < cfg.max_wait_seconds:
            log.info("%d message(s) visible on %s; waiting for %d or %.0f s more",
                     visible, url, cfg.max_messages, cfg.max_wait_seconds - waited)
            return False
        return True

    def _step(self, ti: Any, cfg: PipelineConfig, aws: Aws, url: str, started: float, *,
              resumed: bool) -> None:
        """Collect if the batch is ready; otherwise defer until it is."""
        waited = time.time() - started
        visible = self._count(ti, aws, url)
        if self._ready(cfg, url, visible, waited):
            self._collect(ti, cfg, aws, url, visible, waited,
                          " in the triggerer (deferred)" if resumed else "")
            return
        self.defer(trigger=QueueBatchTrigger(
            queue_url=url, max_messages=cfg.max_messages, aws_conn_id=cfg.aws_conn_id,
            poll_seconds=cfg.poke_interval_seconds, started=started,
            deadline=started + cfg.max_wait_seconds, variable=cfg.variable),
            method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def _collect(self, ti: Any, cfg: PipelineConfig, aws: Aws, url: str, visible: int,
                 waited: float, where: str = "") -> None:
        try:
            begun = time.monotonic()
            received = collect_messages(aws.sqs, url, cfg.max_messages,
                                        visibility_timeout=cfg.visibility_timeout_seconds,
                                        wait_seconds=cfg.receive_wait_seconds, expected=visible,
                                        max_bytes=cfg.max_xcom_bytes)
        except Exception as err:
            if not error_code(err):
                raise
            fail(ti, f"SQS refused {url}: {describe_error(err)}")
        if received.over:
            _too_large(ti, cfg, aws, url, received)
        ti.xcom_push(key="messages", value=received.messages)
        lines = [f"received {len(received.messages)} message(s) from {url} in {received.calls} "
                 f"receive call(s) ({time.monotonic() - begun:.2f} s), after waiting "
                 f"{waited:.1f} s{where} (batch of up to {cfg.max_messages}, or what came in "
                 f"{cfg.max_wait_seconds:g} s)"]
        more, skip = self.received(ti, cfg, aws, url, received.messages)
        report_message(ti, lines + more if more else lines[0])
        if skip:  # this task succeeds; the tasks right after it are skipped (a short circuit)
            from airflow.sdk import TriggerRule
            from airflow.sdk.exceptions import DownstreamTasksSkipped

            log.info("skipping the tasks after this one: %s", skip)
            raise DownstreamTasksSkipped(tasks=[t.task_id for t in self.downstream_list
                                                if t.trigger_rule == TriggerRule.ALL_SUCCESS])

    def received(self, ti: Any, cfg: PipelineConfig, aws: Aws, url: str,
                 messages: list[dict[str, Any]]) -> tuple[list[str], str | None]:
        """Act on the pushed messages (a subclass's hook; here nothing).

        Returns:
            lines for the task's report, and why the tasks right after this one
            are to be skipped (None: they run); the others follow their trigger
            rules, as after a short circuit.
        """
        return [], None


def _too_large(ti: Any, cfg: PipelineConfig, aws: Aws, url: str, received: Received) -> NoReturn:
    """Fail: the batch would not fit in an XCom. Its messages become visible again at once."""
    count = len(received.messages)
    fits = max(1, cfg.max_xcom_bytes * count // max(1, received.size) * 9 // 10)
    lost = extend_visibility(aws.sqs, url, received.messages, 0)
    back = (f"its {count} received message(s) are back on the queue (visible again; their "
            "receive count is one higher), none deleted")
    if lost:
        back += f"; {len(lost)} could not be made visible and return after their visibility " \
                "timeout"
    fail(ti, f"the batch is too large for an XCom: the first {count} message(s) from {url} "
             f"already take {received.size} bytes as JSON, over max_xcom_bytes = "
             f"{cfg.max_xcom_bytes}; set max_messages to {min(fits, cfg.max_messages - 1)} or "
             f"fewer in Variable {cfg.variable} (messages here average "
             f"{received.size // max(1, count)} bytes), or send smaller messages (the "
             f"bucket and key, not the data); {back}")


def _entries(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    return [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]


def extend_visibility(sqs: Any, url: str, messages: Sequence[Mapping[str, Any]],
                      seconds: int) -> list[str]:
    """Keep ``messages`` invisible for ``seconds`` more; returns the ids that could not be.

    A few calls run at once. A message whose receipt handle went stale (its visibility ran
    out and someone received it again) cannot be extended; it is returned, not raised.
    """
    def change(chunk: Sequence[Mapping[str, Any]]) -> list[str]:
        entries = [{**e, "VisibilityTimeout": seconds} for e in _entries(chunk)]
        answer = sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        return [chunk[int(failure["Id"])]["MessageId"] for failure in answer.get("Failed") or []]

    return [message_id for lost in each(change, _chunks(list(messages))) for message_id in lost]


@dataclass(frozen=True)
class DeleteResult:
    """What deleting a batch did.

    Attributes:
        deleted: ids of the messages deleted.
        stale: id -> why, for messages whose receipt handle no longer works
            (they were received again after their visibility timeout; the
            next run skips their finished work).
        failed: id -> why, for other refusals.
    """

    deleted: list[str]
    stale: dict[str, str]
    failed: dict[str, str]


def delete_batch(sqs: Any, url: str, messages: Sequence[Mapping[str, Any]]) -> DeleteResult:
    """Delete ``messages`` (10 per call, a few calls at once, the result in their order).

    Stale receipt handles are reported, not raised.
    """
    deleted: list[str] = []
    stale: dict[str, str] = {}
    failed: dict[str, str] = {}
    chunks = list(_chunks(list(messages)))
    for chunk, answer in zip(chunks, each(lambda chunk: sqs.delete_message_batch(
            QueueUrl=url, Entries=_entries(chunk)), chunks), strict=True):
        for ok in answer.get("Successful") or []:
            deleted.append(chunk[int(ok["Id"])]["MessageId"])
        for bad in answer.get("Failed") or []:
            message_id = chunk[int(bad["Id"])]["MessageId"]
            why = f"{bad.get('Code', '?')}: {bad.get('Message', '')}".strip(": ")
            (stale if bad.get("Code") in _STALE else failed)[message_id] = why
    return DeleteResult(deleted, stale, failed)
