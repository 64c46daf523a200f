"""The inference DAG end to end: ``dag.test()`` against the embedded stack, real transform jobs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.dags.conftest import requires_sagemaker, summary_row

pytestmark = [pytest.mark.integration, requires_sagemaker]

MODELS = ("frame_features", "scene_classifier", "clip_stats")


def _now() -> datetime:
    return datetime.now(UTC)


def test_a_batch_runs_every_model_then_a_rerun_skips_everything(make_pipeline: Any) -> None:
    pipeline = make_pipeline()
    keys = pipeline.seed(3)
    pipeline.queue(keys)

    first = pipeline.run()

    assert first.state == "success", first.summary
    assert set(first.states.values()) == {"success"}
    for model in MODELS:
        assert len(pipeline.outputs(model)) == 3, model
        # status, records, written
        assert summary_row(first.summary, model)[1:4] == ["done", "3", "3"]
    assert pipeline.depth() == (0, 0), "every message is deleted"
    for model in MODELS:  # dag.test() runs the trigger inline; the task deferred and resumed
        assert first.reports[f"{model}.transform"][0]["wait"] == "deferred", model
    assert "succeeded" in first.summary.splitlines()[0]
    assert "deleted 3 of 3 message(s)" in first.summary

    since = _now()
    pipeline.queue(keys)  # the same objects again (a redelivery, a second sync)
    second = pipeline.run()

    assert second.state == "success", second.summary
    for model in MODELS:
        row = summary_row(second.summary, model)
        assert row[1:3] == ["skipped", "3"] and row[4] == "3", second.summary  # 3 skipped
    assert "no transform job started" in second.summary
    assert pipeline.jobs_since(since) == [], "nothing left to do, so no job"
    assert pipeline.depth() == (0, 0)


def test_a_failing_model_skips_its_downstream_and_keeps_the_messages(make_pipeline: Any) -> None:
    # frame_features may not read our bucket: every record is refused, the task fails
    pipeline = make_pipeline(environment={
        "frame_features": {"SMSERVE_ALLOWED_BUCKETS": "some-other-bucket"}})
    keys = pipeline.seed(2)
    pipeline.queue(keys)

    result = pipeline.run()

    assert result.state == "failed", result.summary
    assert result.states["frame_features.transform"] == "failed"
    assert result.states["scene_classifier.transform"] == "upstream_failed"
    assert result.states["clip_stats.transform"] == "success"
    assert result.states["delete_messages"] == "success"  # it ran, and deleted nothing
    assert result.states["report"] == "failed"
    assert pipeline.depth() == (0, 2), "no message is deleted: they come back later"
    assert [k for k in pipeline.outputs("frame_features") if not k.endswith(".error.json")] == []
    assert len(pipeline.outputs("clip_stats")) == 2
    head = result.summary.splitlines()[0]
    assert "FAILED" in head and "frame_features failed" in head
    assert summary_row(result.summary, "frame_features")[1] == "failed"
    reason = result.summary.split(summary_row(result.summary, "frame_features")[-1], 1)[1]
    assert "transform job smserve-frame-features-" in reason and "2 of 2 record(s) failed" \
        in reason
    assert "not on the allow-list" in reason, reason
    assert f"s3://{pipeline.resources.bucket}/{keys[0]}" in reason
    assert summary_row(result.summary, "scene_classifier")[1] == "skipped"
    assert "upstream frame_features failed" in result.summary
    # the other branch finished before the report ran, and is reported as such (issue 10)
    assert summary_row(result.summary, "clip_stats")[1:4] == ["done", "2", "2"], result.summary
    assert "deleted 0 of 2 message(s); 2 kept on the queue" in result.summary
    for key in keys:
        assert f"({key}): kept, back on the queue after its visibility timeout" in result.summary
        assert f"frame_features failed on {key}: Forbidden" in result.summary
        assert f"scene_classifier wrote no output for {key} (its transform task is " \
               "upstream_failed)" in result.summary
    assert "received 1 of 3 time(s) before SQS moves it to" in result.summary


def test_one_bad_clip_fails_alone_and_reaches_the_dead_letter_queue_alone(
        make_pipeline: Any) -> None:
    import io
    import json

    import numpy as np

    pipeline = make_pipeline(max_receive_count=1, visibility_timeout_seconds=2)
    good = pipeline.seed(3)
    bad = "videos/2026/11/front/broken.npy"
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((3, 5), np.uint8))
    pipeline.s3.put_object(Bucket=pipeline.resources.bucket, Key=bad, Body=buffer.getvalue())
    pipeline.queue([*good, bad])

    first = pipeline.run()

    assert first.state == "failed", first.summary  # visible: a record failed
    assert first.states["frame_features.transform"] == "success"  # partial: downstream runs
    assert first.states["scene_classifier.transform"] == "success"
    assert first.states["delete_messages"] == "success"
    for model in MODELS:
        written = [k for k in pipeline.outputs(model) if not k.endswith(".error.json")]
        assert len(written) == 3 and not any("broken" in k for k in written), model
    for model in ("frame_features", "clip_stats"):
        assert summary_row(first.summary, model)[1:5] == ["partial", "4", "3", "0"], first.summary
    # scene_classifier runs on the three clips whose features exist, and says so
    assert summary_row(first.summary, "scene_classifier")[1:4] == ["done", "3", "3"], first.summary
    assert "1 record(s) not run: their upstream output does not exist" in first.summary
    assert f"{bad}: no output of frame_features" in first.summary
    head = first.summary.splitlines()[0]
    assert "frame_features failed on 1 record(s)" in head, head
    assert "deleted 3 of 4 message(s); 1 kept on the queue" in first.summary
    assert f"({bad}): kept" in first.summary
    assert f"frame_features failed on {bad}: InvalidInput: s3://{pipeline.resources.bucket}/" \
           f"{bad}: input 'video' has shape (3, 5)" in first.summary
    assert "received 1 of 1 time(s): the next failure sends it to the dead-letter queue" \
        in first.summary
    notes = pipeline.s3.list_objects_v2(Bucket=pipeline.resources.bucket,
                                        Prefix="smserve-work/").get("Contents", [])
    [note] = [o["Key"] for o in notes if "/notes/" in o["Key"]]
    doc = json.loads(pipeline.s3.get_object(Bucket=pipeline.resources.bucket,
                                            Key=note)["Body"].read())
    assert doc["objects"] == [bad] and "shape (3, 5)" in " ".join(doc["reasons"])

    deadline = time.monotonic() + 60  # its visibility timeout runs out
    while pipeline.depth() != (1, 0):
        assert time.monotonic() < deadline, pipeline.depth()
        time.sleep(0.2)
    second = pipeline.run()

    assert "received 0 message(s)" in second.summary, second.summary
    assert pipeline.depth() == (0, 0)
    dead = pipeline.sqs.receive_message(QueueUrl=pipeline.dead_letter_url,
                                        MaxNumberOfMessages=10).get("Messages", [])
    assert [json.loads(m["Body"])["key"] for m in dead] == [bad], "the bad clip, alone"


def test_a_retried_transform_task_adopts_the_job_it_started(
        make_pipeline: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from smserve_dags.operators.transform import BatchTransformOperator

    pipeline = make_pipeline()
    pipeline.queue(pipeline.seed(2))
    original = BatchTransformOperator._create
    crashed: list[str] = []

    def create_then_crash(self: Any, ti: Any, aws: Any, cfg: Any, work: Any, name: str) -> None:
        original(self, ti, aws, cfg, work, name)
        if self.model == "frame_features" and not crashed:
            crashed.append(name)
            raise RuntimeError("the worker was lost right after CreateTransformJob")

    monkeypatch.setattr(BatchTransformOperator, "_create", create_then_crash)
    dag = pipeline.dags["inference_dev"]
    task = dag.get_task("frame_features.transform")
    monkeypatch.setattr(task, "retry_delay", __import__("datetime").timedelta(seconds=0))
    since = _now()

    result = pipeline.run()

    assert result.state == "success", result.summary
    assert len(crashed) == 1
    frame_jobs = [j["TransformJobName"] for j in pipeline.jobs_since(since)
                  if j["TransformJobName"].startswith("smserve-frame-features-")]
    assert frame_jobs == crashed, "the retry adopted the job instead of starting another"
    assert f"adopted transform job {crashed[0]}" in result.summary
    assert len(pipeline.outputs("frame_features")) == 2
    assert len(pipeline.outputs("scene_classifier")) == 2
    assert pipeline.depth() == (0, 0)


def test_no_messages_skips_every_model_and_still_reports(make_pipeline: Any) -> None:
    pipeline = make_pipeline(models=False)

    result = pipeline.run()

    assert result.state == "success", result.summary
    assert result.states["wait_for_messages"] == "success"
    for model in MODELS:
        assert result.states[f"{model}.transform"] == "skipped"
        assert summary_row(result.summary, model)[1] == "skipped"
    assert result.states["delete_messages"] == "skipped"
    assert result.states["report"] == "success"
    assert "received 0 message(s)" in result.summary
    assert "nothing to process" in result.summary


def test_the_sensor_buffers_more_than_ten_and_waits_for_a_full_batch(
        make_pipeline: Any) -> None:
    pipeline = make_pipeline(models=False, max_messages=25, max_wait_seconds=600)
    keys = [f"videos/2026/11/front/missing-{i:03d}.npy" for i in range(30)]
    pipeline.queue(keys)

    result = pipeline.run()

    assert "received 25 message(s)" in result.summary
    assert "in 3 receive call(s)" in result.summary
    assert pipeline.depth() == (5, 25), "25 taken (none deleted: their objects are missing)"


def test_the_sensor_defers_and_takes_what_came_by_the_deadline(make_pipeline: Any) -> None:
    pipeline = make_pipeline(models=False, max_messages=5, max_wait_seconds=2)
    pipeline.queue([f"videos/2026/11/front/missing-{i:03d}.npy" for i in range(3)])

    result = pipeline.run()

    assert result.states["wait_for_messages"] == "success", result.summary
    assert "received 3 message(s)" in result.summary
    assert "in the triggerer (deferred)" in result.summary
    assert pipeline.depth() == (0, 3), "received, none deleted (their objects are missing)"


def test_deferrable_false_waits_in_reschedule_mode(make_pipeline: Any) -> None:
    pipeline = make_pipeline(deferrable=False, max_messages=5, max_wait_seconds=2)
    pipeline.queue(pipeline.seed(2))

    result = pipeline.run()

    assert result.state == "success", result.summary
    assert "in the triggerer" not in result.summary
    for model in MODELS:
        assert len(pipeline.outputs(model)) == 2, model
        assert "wait" not in result.reports[f"{model}.transform"][0], "rescheduled, not deferred"
    assert pipeline.depth() == (0, 0)


def test_bad_messages_stay_on_the_queue_and_the_good_ones_are_processed(
        make_pipeline: Any) -> None:
    pipeline = make_pipeline()
    good = pipeline.seed(1)
    pipeline.queue(good)
    pipeline.send("this is not json")
    pipeline.send('{"bucket": "' + pipeline.resources.bucket + '"}')
    pipeline.send('{"bucket": "someone-elses", "key": "videos/a.npy"}')
    pipeline.queue(["videos/2026/11/front/deleted-after-queueing.npy"])

    result = pipeline.run()

    assert result.state == "success", result.summary
    assert "5 message(s): 1 usable (1 object(s)), 4 left on the queue" in result.summary
    assert "the body is not JSON" in result.summary
    assert "the body names no object" in result.summary
    assert "this pipeline reads bucket" in result.summary
    assert "deleted-after-queueing.npy does not exist" in result.summary
    assert "(receive 1 of 3)" in result.summary
    assert "deleted 1 of 1 message(s)" in result.summary
    assert pipeline.depth() == (0, 4), "the four bad messages are not deleted"
    for model in MODELS:
        assert len(pipeline.outputs(model)) == 1


def test_a_poison_message_ends_on_the_dead_letter_queue(make_pipeline: Any) -> None:
    pipeline = make_pipeline(models=False, max_receive_count=2, visibility_timeout_seconds=1)
    pipeline.send("{poison")
    summaries = []
    for _ in range(3):
        summaries.append(pipeline.run().summary)
        time.sleep(1.2)  # its visibility timeout runs out

    assert "(receive 1 of 2)" in summaries[0]
    assert "(receive 2 of 2; SQS moves it to" in summaries[1]
    assert "received 0 message(s)" in summaries[2]
    assert f"dead-letter queue {pipeline.resources.dead_letter_queue}, which holds 1 " \
           "message(s)" in summaries[2]
    assert pipeline.depth() == (0, 0)
    assert pipeline.depth(pipeline.dead_letter_url)[0] + \
        pipeline.depth(pipeline.dead_letter_url)[1] == 1


def test_a_missing_connection_fails_clearly_and_deletes_nothing(
        make_pipeline: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = make_pipeline(models=False)
    pipeline.queue(pipeline.seed(1))
    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT")

    result = pipeline.run()

    assert result.state == "failed"
    assert result.states["wait_for_messages"] == "failed"
    assert "Airflow connection 'aws_default' is not defined" in result.summary
    assert "AIRFLOW_CONN_AWS_DEFAULT" in result.summary
    assert pipeline.depth() == (1, 0), "nothing was received, nothing deleted"


def test_a_missing_variable_fails_clearly(make_pipeline: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = make_pipeline(models=False)
    monkeypatch.delenv("AIRFLOW_VAR_SMSERVE_MAIN", raising=False)

    result = pipeline.run("inference_main")

    assert result.state == "failed"
    assert "Airflow Variable smserve_main: is not set" in result.summary
    assert "airflow variables set smserve_main" in result.summary


@pytest.mark.parametrize(("settings", "expected"), [
    ({"max_messages": "lots"},
     'Airflow Variable smserve_dev: max_messages = "lots" is not a whole number'),
    ({"max_mesages": 5}, "Airflow Variable smserve_dev: unknown key(s) max_mesages; the keys "
                         "are external_bucket, bucket, queue"),
    ({"bucket": "no-such-bucket"}, "S3 bucket 'no-such-bucket' does not exist; create it, or "
                                   "fix 'bucket' in Variable smserve_dev"),
    ({"queue": "no-such-queue"}, "SQS queue 'no-such-queue' does not exist; create it"),
], ids=["wrong-type", "unknown-key", "missing-bucket", "missing-queue"])
def test_a_bad_setting_fails_with_the_fix_and_deletes_nothing(
        make_pipeline: Any, settings: dict[str, Any], expected: str) -> None:
    pipeline = make_pipeline(models=False)
    pipeline.queue(pipeline.seed(1))
    pipeline.configure(**settings)

    result = pipeline.run()

    assert result.state == "failed"
    assert result.states["wait_for_messages"] == "failed"
    assert expected in result.summary
    assert pipeline.depth() == (1, 0), "nothing was received, nothing deleted"
