"""The buffering sensor, visibility, deletion and the dead-letter queue, against the stack's SQS."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from _support import FakeTI, Resources, send

pytestmark = pytest.mark.integration


def _depth(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), \
        int(attrs["ApproximateNumberOfMessagesNotVisible"])


def test_collect_takes_more_than_ten_at_ten_per_call_and_deletes_none(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.sqs import collect_messages

    sqs = clients.client("sqs")
    sent = send(sqs, resources.queue_url, 35)
    got = collect_messages(sqs, resources.queue_url, 30, visibility_timeout=60,
                           wait_seconds=0, expected=35)
    assert len(got.messages) == 30 and got.calls == 3
    assert {m["MessageId"] for m in got.messages} <= set(sent)
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "1" for m in got.messages)
    assert _depth(sqs, resources.queue_url) == (5, 30), "received, invisible, not deleted"

    rest = collect_messages(sqs, resources.queue_url, 30, visibility_timeout=60,
                            wait_seconds=0, expected=5)
    assert len(rest.messages) == 5 and rest.calls == 1, "a short answer ends the collection"


def test_the_sensor_waits_then_returns_a_partial_batch_in_the_sqs_sensor_shape(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.sqs import SqsBufferingSensor

    sqs = clients.client("sqs")
    send(sqs, resources.queue_url, 12, bucket=resources.bucket)
    sensor = SqsBufferingSensor(task_id="wait_for_messages", env="dev")
    assert sensor.mode == "reschedule"
    resources.configure(max_messages=50, max_wait_seconds=300, poke_interval_seconds=7)
    ti = FakeTI()
    assert sensor.poke({"ti": ti}) is False, "12 of 50, and the wait is not over"
    assert sensor.poke_interval == 7, "the poke interval comes from the Variable"
    assert "messages" not in ti.xcoms
    assert _depth(sqs, resources.queue_url) == (12, 0), "waiting receives nothing"

    ti.first_reschedule = datetime.now(UTC) - timedelta(seconds=301)
    assert sensor.poke({"ti": ti}) is True
    messages = ti.xcoms["messages"]
    assert len(messages) == 12
    assert {"MessageId", "ReceiptHandle", "Body", "MD5OfBody"} <= set(messages[0])
    assert "received 12 message(s)" in ti.xcoms["report"]
    assert "in 2 receive call(s)" in ti.xcoms["report"]
    assert _depth(sqs, resources.queue_url) == (0, 12)


def test_the_sensor_returns_at_once_when_the_batch_is_full(clients: Any,
                                                           resources: Resources) -> None:
    from smserve_dags.operators.sqs import SqsBufferingSensor

    send(clients.client("sqs"), resources.queue_url, 20)
    resources.configure(max_messages=20, max_wait_seconds=3600)
    ti = FakeTI()
    assert SqsBufferingSensor(task_id="s", env="dev").poke({"ti": ti}) is True
    assert len(ti.xcoms["messages"]) == 20
    assert "in 2 receive call(s)" in ti.xcoms["report"]


def test_the_sensor_fails_clearly_without_a_connection(resources: Resources,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.sqs import SqsBufferingSensor

    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT")
    ti = FakeTI()
    with pytest.raises(AirflowFailException, match="'aws_default' is not defined"):
        SqsBufferingSensor(task_id="s", env="dev").poke({"ti": ti})
    assert "AIRFLOW_CONN_AWS_DEFAULT" in ti.xcoms["report"]


def test_an_unknown_queue_is_a_clear_failure(resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.sqs import SqsBufferingSensor

    resources.configure(queue="no-such-queue")
    with pytest.raises(AirflowFailException, match="SQS queue 'no-such-queue' does not exist"):
        SqsBufferingSensor(task_id="s", env="dev").poke({"ti": FakeTI()})


def test_a_retried_sensor_receives_the_failed_trys_messages_again_and_deletes_none(
        clients: Any, resources: Resources) -> None:
    # a scheduler hiccup marks a poke that received a batch failed: Airflow retries the
    # sensor, and the messages it had received come back; none is lost or deleted
    from smserve_dags.operators.sqs import SqsBufferingSensor

    sqs = clients.client("sqs")
    sent = send(sqs, resources.queue_url, 3, bucket=resources.bucket)
    resources.configure(max_messages=3, visibility_timeout_seconds=1)
    sensor = SqsBufferingSensor(task_id="wait_for_messages", env="dev")
    assert sensor.retries == 2, "a hiccup is retried"
    first = FakeTI(try_number=1)
    assert sensor.poke({"ti": first}) is True
    assert {m["MessageId"] for m in first.xcoms["messages"]} == set(sent)

    deadline = time.monotonic() + 60
    while _depth(sqs, resources.queue_url) != (3, 0):  # back after the visibility timeout
        assert time.monotonic() < deadline, "the failed try's messages never came back"
        time.sleep(0.2)
    second = FakeTI(try_number=2)
    assert sensor.poke({"ti": second}) is True
    again = second.xcoms["messages"]
    assert {m["MessageId"] for m in again} == set(sent)
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in again} == {"2"}


def test_the_poke_interval_has_a_floor_in_reschedule_mode(resources: Resources) -> None:
    from smserve_dags.operators.sqs import SqsBufferingSensor

    resources.configure(max_messages=50, max_wait_seconds=300, poke_interval_seconds=1,
                        min_reschedule_seconds=5)
    rescheduled = SqsBufferingSensor(task_id="s", env="dev")
    assert rescheduled.poke({"ti": FakeTI()}) is False
    assert rescheduled.poke_interval == 5, "no faster than the scheduler keeps up"
    poking = SqsBufferingSensor(task_id="s", env="dev", mode="poke")
    assert poking.poke({"ti": FakeTI()}) is False
    assert poking.poke_interval == 1


def test_a_missing_bucket_fails_the_sensor_before_it_receives_anything(
        clients: Any, resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.sqs import SqsBufferingSensor

    sqs = clients.client("sqs")
    send(sqs, resources.queue_url, 4, bucket=resources.bucket)
    resources.configure(bucket=f"{resources.bucket}-gone", max_messages=4)
    ti = FakeTI()
    with pytest.raises(AirflowFailException,
                       match=f"S3 bucket '{resources.bucket}-gone' does not exist; create it, "
                             "or fix 'bucket' in Variable smserve_dev"):
        SqsBufferingSensor(task_id="s", env="dev").poke({"ti": ti})
    assert "does not exist" in ti.xcoms["report"]
    assert "messages" not in ti.xcoms
    assert _depth(sqs, resources.queue_url) == (4, 0), "nothing received, nothing deleted"


def test_visibility_extension_and_deletion_report_stale_receipt_handles(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.sqs import collect_messages, delete_batch, extend_visibility

    sqs = clients.client("sqs")
    send(sqs, resources.queue_url, 3)
    got = collect_messages(sqs, resources.queue_url, 10, visibility_timeout=30,
                           wait_seconds=0).messages
    assert extend_visibility(sqs, resources.queue_url, got, 600) == []
    stale = {**got[0], "ReceiptHandle": "not-a-receipt-handle-any-more"}
    result = delete_batch(sqs, resources.queue_url, [stale, *got[1:]])
    assert sorted(result.deleted) == sorted(m["MessageId"] for m in got[1:])
    assert list(result.stale) == [got[0]["MessageId"]]
    assert "ReceiptHandleIsInvalid" in result.stale[got[0]["MessageId"]]
    assert result.failed == {}
    assert _depth(sqs, resources.queue_url) == (0, 1), "only the processed ones are gone"


def test_dead_letter_reads_the_redrive_policy(clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.deadletter import dead_letter

    sqs = clients.client("sqs")
    sqs.send_message(QueueUrl=resources.dead_letter_url, MessageBody="old poison")
    found = dead_letter(sqs, resources.queue_url)
    assert found.max_receive_count == 3
    assert found.queue.endswith("-dlq") and found.depth == 1
    assert "after 3 receive(s) SQS moves a message to the dead-letter queue" in found.describe()
    bare = sqs.create_queue(QueueName=f"{found.queue}-bare")["QueueUrl"]
    assert "no redrive policy" in dead_letter(sqs, bare).describe()


def test_a_batch_larger_than_max_xcom_bytes_fails_and_goes_back_to_the_queue(
        clients: Any, resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.sqs import SqsBufferingSensor

    sqs = clients.client("sqs")
    sent = set(send(sqs, resources.queue_url, 30, bucket=resources.bucket, prefix="k" * 200))
    resources.configure(max_messages=30, max_xcom_bytes=4096)
    ti = FakeTI()
    with pytest.raises(AirflowFailException) as info:
        SqsBufferingSensor(task_id="s", env="dev").poke({"ti": ti})
    message = str(info.value)
    assert "the batch is too large for an XCom" in message
    assert "over max_xcom_bytes = 4096" in message
    assert "set max_messages to " in message and "in Variable smserve_dev" in message
    assert "none deleted" in message
    assert "messages" not in ti.xcoms and ti.xcoms["report"] == message
    assert _depth(sqs, resources.queue_url) == (30, 0), "every message is visible again"
    fits = int(message.split("set max_messages to ")[1].split()[0])
    assert 1 <= fits < 30

    resources.configure(max_messages=fits, max_xcom_bytes=4096)
    again = FakeTI()
    assert SqsBufferingSensor(task_id="s", env="dev").poke({"ti": again}) is True
    got = again.xcoms["messages"]
    assert len(got) == fits and {m["MessageId"] for m in got} <= sent
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "2" for m in got), \
        "received once by the failed try, nothing lost"
    assert len(json.dumps(got)) <= 4096


def test_visibility_and_deletion_of_many_chunks_keep_the_messages_order(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.sqs import collect_messages, delete_batch, extend_visibility

    sqs = clients.client("sqs")
    send(sqs, resources.queue_url, 35)
    got = collect_messages(sqs, resources.queue_url, 35, visibility_timeout=30,
                           wait_seconds=0, expected=35).messages
    assert len(got) == 35
    stale_at = (3, 12, 27, 34)  # in the first, second, third and last call's chunk
    batch = [{**m, "ReceiptHandle": f"stale-{i}"} if i in stale_at else m
             for i, m in enumerate(got)]
    ids = [m["MessageId"] for m in got]
    assert extend_visibility(sqs, resources.queue_url, batch, 600) == [ids[i] for i in stale_at]
    result = delete_batch(sqs, resources.queue_url, batch)
    assert result.deleted == [m for i, m in enumerate(ids) if i not in stale_at]
    assert list(result.stale) == [ids[i] for i in stale_at]
    assert result.failed == {}
    assert _depth(sqs, resources.queue_url) == (0, 4), "only the ones with a live handle are gone"
