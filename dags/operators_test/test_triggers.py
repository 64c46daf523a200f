"""Deferrable waits against the stack: the triggers fire, the operators defer and resume.

Each trigger runs here as the triggerer runs it (``run()`` on an event loop,
its first event), against the embedded stack through the Airflow connection.
The operators are called as the task runner calls them: ``execute`` raises
``TaskDeferred`` (the task goes ``deferred``), the trigger's event goes to
``execute_complete``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from typing import Any

import pytest

from _support import FakeTI, Resources, make_work, send

pytestmark = pytest.mark.integration

needs_sagemaker = pytest.mark.skipif(
    importlib.util.find_spec("serving.local.sagemaker") is None,
    reason="the embedded stack's SageMaker API (serving/local/sagemaker/) is missing")

MODEL = "clip_stats"


def fire(trigger: Any) -> dict[str, Any]:
    """The trigger's first event, as the triggerer would get it (after a serialize round trip)."""
    from airflow.sdk._shared.module_loading import import_string

    classpath, kwargs = trigger.serialize()
    again = import_string(classpath)(**json.loads(json.dumps(kwargs)))

    async def first() -> Any:
        return await anext(again.run())

    payload: dict[str, Any] = asyncio.run(first()).payload
    return payload


def deferred(call: Any, *args: Any) -> Any:
    """Call ``call``; it must defer. Returns the ``TaskDeferred``."""
    from airflow.sdk.exceptions import TaskDeferred

    with pytest.raises(TaskDeferred) as info:
        call(*args)
    assert info.value.method_name == "execute_complete"
    return info.value


def test_both_triggers_serialize_to_their_class_path_and_back() -> None:
    from airflow.sdk._shared.module_loading import import_string

    from smserve_dags.triggers import QueueBatchTrigger, TransformJobTrigger

    for trigger in (
            TransformJobTrigger(job_name="smserve-clip-stats-0123456789ab-1",
                                aws_conn_id="aws_default", poll_seconds=30, started=1.5e9,
                                deadline=1.5e9 + 3600, variable="smserve_dev"),
            QueueBatchTrigger(queue_url="http://127.0.0.1:1/1/q", max_messages=250,
                              aws_conn_id=None, poll_seconds=5, started=1.5e9, deadline=None,
                              variable="smserve_main")):
        classpath, kwargs = trigger.serialize()
        assert classpath.startswith("smserve_dags.triggers.")
        rebuilt = import_string(classpath)(**json.loads(json.dumps(kwargs)))
        assert type(rebuilt) is type(trigger)
        assert rebuilt.serialize() == (classpath, kwargs)


@needs_sagemaker
def test_the_transform_defers_and_resumes_when_its_job_completes(
        clients: Any, resources: Resources) -> None:
    from airflow.sdk.exceptions import TaskDeferred

    from smserve_dags.operators.transform import BatchTransformOperator, job_name
    from smserve_dags.triggers import TransformJobTrigger

    ti = FakeTI(run_id="manual__deferred")
    work = make_work(clients, resources, ti, 2, MODEL)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    deferral = deferred(operator.execute, {"ti": ti})
    name = job_name(ti.dag_id, ti.run_id, MODEL, work["batch"], 1)
    trigger = deferral.trigger
    assert isinstance(trigger, TransformJobTrigger) and trigger.job_name == name
    assert trigger.poll_seconds == 0.5, "the poll interval comes from the Variable"
    assert trigger.deadline is not None
    assert trigger.deadline - trigger.started == 6 * 3600, "transform_timeout_seconds"
    assert "report" not in ti.xcoms, "nothing reported while the job runs"

    retry = FakeTI(run_id=ti.run_id, try_number=2)
    try:  # a retry waits for the earlier try's job, or adopts it if it completed already
        operator.execute({"ti": retry})
        assert retry.xcoms["report"]["job"] == name
    except TaskDeferred as waiting:
        assert waiting.trigger.job_name == name

    event = fire(trigger)
    assert (event["status"], event["job"], event["state"]) == ("ended", name, "Completed")
    assert event["started"] == trigger.started, "the wait's start comes back with the event"
    operator.execute_complete({"ti": ti}, event)
    report = ti.xcoms["report"]
    assert (report["status"], report["written"], report["job"]) == ("done", 2, name)
    assert report["wait"] == "deferred"
    found = clients.client("sagemaker").list_transform_jobs(NameContains=name[:-2])
    assert [j["TransformJobName"] for j in found["TransformJobSummaries"]] == [name]


@needs_sagemaker
def test_a_job_that_ends_within_the_hold_costs_no_deferral(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.transform import BatchTransformOperator, job_name

    resources.configure(transform_hold_seconds=120)
    ti = FakeTI(run_id="manual__held")
    work = make_work(clients, resources, ti, 2, MODEL)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)

    operator.execute({"ti": ti})  # no TaskDeferred: the job ended while the task polled it

    report = ti.xcoms["report"]
    name = job_name(ti.dag_id, ti.run_id, MODEL, work["batch"], 1)
    assert (report["status"], report["written"], report["job"]) == ("done", 2, name)
    assert "wait" not in report, "the task waited itself, it never deferred"
    found = clients.client("sagemaker").describe_transform_job(TransformJobName=name)
    assert found["TransformJobStatus"] == "Completed"


@needs_sagemaker
def test_in_reschedule_mode_only_the_first_poke_of_a_try_holds(
        clients: Any, resources: Resources) -> None:
    from datetime import UTC, datetime

    from airflow.sdk.exceptions import AirflowRescheduleException

    from smserve_dags.operators.transform import BatchTransformOperator

    resources.configure(transform_hold_seconds=120, deferrable=False)
    # a later poke of the try (the scheduler rescheduled it before): no hold, the slot goes back
    ti = FakeTI(run_id="manual__rescheduled", first_reschedule=datetime.now(UTC))
    work = make_work(clients, resources, ti, 2, MODEL)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    with pytest.raises(AirflowRescheduleException):
        operator.execute({"ti": ti})
    assert "report" not in ti.xcoms

    first = FakeTI(run_id="manual__rescheduled")  # the try's first poke holds until the end
    operator.execute({"ti": first})
    assert first.xcoms["report"]["status"] == "done"


@needs_sagemaker
def test_a_failed_job_fires_with_its_reason_and_fails_the_task(
        clients: Any, resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from serving.transform.spec import parse_s3_uri

    from smserve_dags.operators.transform import BatchTransformOperator

    ti = FakeTI(run_id="manual__deferred-fails")
    work = make_work(clients, resources, ti, 2, MODEL)
    bucket, key = parse_s3_uri(work["request_uri"], "request")
    clients.client("s3").delete_object(Bucket=bucket, Key=key)  # the job finds no input
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    event = fire(deferred(operator.execute, {"ti": ti}).trigger)
    assert event["status"] == "ended" and event["state"] == "Failed"
    reason = event["failure_reason"]
    assert reason and key in reason
    with pytest.raises(AirflowFailException) as info:
        operator.execute_complete({"ti": ti}, event)
    assert f"{event['job']} failed: {reason}" in str(info.value)
    assert ti.xcoms["report"]["status"] == "failed"


@needs_sagemaker
def test_a_stopped_job_fires_stopped_and_the_time_limit_applies(
        clients: Any, resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.transform import BatchTransformOperator

    ti = FakeTI(run_id="manual__deferred-stops")
    work = make_work(clients, resources, ti, 2, MODEL)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    trigger = deferred(operator.execute, {"ti": ti}).trigger
    trigger.deadline = trigger.started  # the time limit is over at the first look
    late = fire(trigger)
    if late["status"] == "timeout":  # (unless the job ended before the first look)
        assert late["state"] in ("InProgress", "Stopping")
        with pytest.raises(AirflowFailException) as info:
            operator.execute_complete({"ti": ti}, late)
        assert "raise transform_timeout_seconds in Variable smserve_dev" in str(info.value)
        assert "clear this task: it adopts the job" in str(info.value)

    clients.client("sagemaker").stop_transform_job(TransformJobName=trigger.job_name)
    trigger.deadline = None
    event = fire(trigger)
    assert (event["status"], event["state"]) == ("ended", "Stopped")
    with pytest.raises(AirflowFailException) as info:
        operator.execute_complete({"ti": FakeTI(run_id=ti.run_id)}, event)
    assert f"transform job {trigger.job_name} stopped" in str(info.value)


def test_an_unknown_job_is_an_error_event_that_fails_the_task(
        clients: Any, resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.transform import BatchTransformOperator
    from smserve_dags.triggers import TransformJobTrigger

    event = fire(TransformJobTrigger(
        job_name="smserve-nothing-000000000000-1", aws_conn_id="aws_default", poll_seconds=1,
        started=time.time(), deadline=None, variable="smserve_dev"))
    assert event["status"] == "error" and event["retryable"] is False
    assert "smserve-nothing-000000000000-1 is unknown to SageMaker" in event["message"]
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work={"batch": "b"})
    ti = FakeTI()
    with pytest.raises(AirflowFailException, match="unknown to SageMaker"):
        operator.execute_complete({"ti": ti}, event)
    assert ti.xcoms["report"]["status"] == "failed"


def test_a_connection_that_points_nowhere_is_a_retryable_error_event(
        resources: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from smserve_dags.operators.sqs import SqsBufferingSensor
    from smserve_dags.triggers import QueueBatchTrigger, TransformJobTrigger

    monkeypatch.setenv("AIRFLOW_CONN_NOWHERE", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing", "extra": {
            "region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}}))
    common: dict[str, Any] = {"aws_conn_id": "nowhere", "poll_seconds": 1, "started": time.time(),
              "deadline": None, "variable": "smserve_dev"}
    for trigger in (TransformJobTrigger(job_name="smserve-x-000000000000-1", **common),
                    QueueBatchTrigger(queue_url=resources.queue_url, max_messages=5, **common)):
        event = fire(trigger)
        assert event["status"] == "error" and event["retryable"] is True
        assert "cannot reach AWS" in event["message"]
        assert "check that Airflow connection 'nowhere'" in event["message"]
    ti = FakeTI()
    with pytest.raises(AirflowException, match="cannot reach AWS") as info:
        SqsBufferingSensor(task_id="s", env="dev").execute_complete({"ti": ti}, event)
    assert not isinstance(info.value, AirflowFailException), "retried: the network may be back"

    event = fire(QueueBatchTrigger(queue_url=resources.queue_url, max_messages=5,
                                   **{**common, "aws_conn_id": "undefined_conn"}))
    assert event["retryable"] is False
    assert "Airflow connection 'undefined_conn' is not defined" in event["message"]


def test_the_queue_trigger_fires_on_a_full_batch_and_at_the_deadline(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.triggers import QueueBatchTrigger

    sqs = clients.client("sqs")
    send(sqs, resources.queue_url, 6)
    common: dict[str, Any] = {"queue_url": resources.queue_url, "aws_conn_id": "aws_default",
              "poll_seconds": 0.2, "started": time.time(), "variable": "smserve_dev"}
    full = fire(QueueBatchTrigger(max_messages=6, deadline=time.time() + 3600, **common))
    assert (full["status"], full["visible"]) == ("ready", 6)
    deadline = time.time() + 1
    partial = fire(QueueBatchTrigger(max_messages=50, deadline=deadline, **common))
    assert (partial["status"], partial["visible"]) == ("ready", 6)
    assert time.time() >= deadline, "fewer than asked: it fired at the deadline"
    visible = sqs.get_queue_attributes(QueueUrl=resources.queue_url, AttributeNames=[
        "ApproximateNumberOfMessages"])["Attributes"]["ApproximateNumberOfMessages"]
    assert visible == "6", "the trigger only looks; it receives nothing"


def test_the_sensor_defers_then_receives_the_batch_when_the_trigger_fires(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.sqs import SqsBufferingSensor
    from smserve_dags.triggers import QueueBatchTrigger

    send(clients.client("sqs"), resources.queue_url, 4, bucket=resources.bucket)
    resources.configure(max_messages=50, max_wait_seconds=1, poke_interval_seconds=0.2)
    sensor = SqsBufferingSensor(task_id="wait_for_messages", env="dev")
    ti = FakeTI()
    trigger = deferred(sensor.execute, {"ti": ti}).trigger
    assert isinstance(trigger, QueueBatchTrigger) and trigger.deadline is not None
    assert (trigger.max_messages, trigger.poll_seconds, trigger.deadline - trigger.started) == \
        (50, 0.2, 1), "the batch size, the interval and max_wait_seconds from the Variable"
    assert "messages" not in ti.xcoms

    sensor.execute_complete({"ti": ti}, fire(trigger))
    assert len(ti.xcoms["messages"]) == 4
    assert "received 4 message(s)" in ti.xcoms["report"]
    assert "in the triggerer (deferred)" in ti.xcoms["report"]


def test_deferrable_false_keeps_the_reschedule_mode(clients: Any, resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowRescheduleException

    from smserve_dags.operators.sqs import SqsBufferingSensor

    send(clients.client("sqs"), resources.queue_url, 2)
    resources.configure(deferrable=False, max_messages=50, max_wait_seconds=600)
    with pytest.raises(AirflowRescheduleException):
        SqsBufferingSensor(task_id="s", env="dev").execute({"ti": FakeTI()})
