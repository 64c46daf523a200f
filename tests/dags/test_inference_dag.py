"""The inference DAG end to end: ``dag.test()`` against the embedded stack, real transform jobs."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.dags.conftest import requires_sagemaker

pytestmark = [pytest.mark.integration, requires_sagemaker]

MODELS = ("frame_features", "scene_classifier", "clip_stats")


def _now() -> datetime:
    return datetime.now(UTC)


def _row(summary: str, model: str) -> list[str]:
    for line in summary.splitlines():
        parts = line.split()
        if parts and parts[0] == model:
            return parts
    raise AssertionError(f"no row for {model} in:\n{summary}")


def test_a_batch_runs_every_model_then_a_rerun_skips_everything(make_pipeline: Any) -> None:
    pipeline = make_pipeline()
    keys = pipeline.seed(3)
    pipeline.queue(keys)

    first = pipeline.run()

    assert first.state == "success", first.summary
    assert set(first.states.values()) == {"success"}
    for model in MODELS:
        assert len(pipeline.outputs(model)) == 3, model
        assert _row(first.summary, model)[1:4] == ["done", "3", "3"]  # status, records, written
    assert pipeline.depth() == (0, 0), "every message is deleted"
    assert "succeeded" in first.summary.splitlines()[0]
    assert "deleted 3 of 3 message(s)" in first.summary

    since = _now()
    pipeline.queue(keys)  # the same objects again (a redelivery, a second sync)
    second = pipeline.run()

    assert second.state == "success", second.summary
    for model in MODELS:
        row = _row(second.summary, model)
        assert row[1:3] == ["skipped", "3"] and row[4] == "3", second.summary  # 3 skipped
    assert "no transform job started" in second.summary
    assert pipeline.jobs_since(since) == [], "nothing left to do, so no job"
    assert pipeline.depth() == (0, 0)


def test_a_failing_model_skips_its_downstream_and_keeps_the_messages(make_pipeline: Any) -> None:
    # frame_features may not read our bucket: every record is refused, the job fails
    pipeline = make_pipeline(environment={
        "frame_features": {"SMSERVE_ALLOWED_BUCKETS": "some-other-bucket"}})
    pipeline.queue(pipeline.seed(2))

    result = pipeline.run()

    assert result.state == "failed", result.summary
    assert result.states["frame_features.transform"] == "failed"
    assert result.states["scene_classifier.requests"] == "upstream_failed"
    assert result.states["scene_classifier.transform"] == "upstream_failed"
    assert result.states["clip_stats.transform"] == "success"
    assert result.states["delete_messages"] == "upstream_failed"
    assert result.states["report"] == "failed"
    assert pipeline.depth() == (0, 2), "no message is deleted: they come back later"
    assert pipeline.outputs("frame_features") == []
    assert len(pipeline.outputs("clip_stats")) == 2
    head = result.summary.splitlines()[0]
    assert "FAILED" in head and "frame_features failed" in head
    assert _row(result.summary, "frame_features")[1] == "failed"
    reason = result.summary.split(_row(result.summary, "frame_features")[-1], 1)[1]
    assert "transform job smserve-frame-features-" in reason and "failed:" in reason
    assert "some-other-bucket" in reason or "allow" in reason.lower(), reason
    assert _row(result.summary, "scene_classifier")[1] == "skipped"
    assert "upstream frame_features failed" in result.summary
    assert "delete_messages [upstream_failed]: not run: the batch's messages stay on the " \
        "queue" in result.summary


def test_a_retried_transform_task_adopts_the_job_it_started(
        make_pipeline: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.transform import BatchTransformOperator

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
    assert result.states["skip_if_empty"] == "success"
    for model in MODELS:
        assert result.states[f"{model}.transform"] == "skipped"
        assert _row(result.summary, model)[1] == "skipped"
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


def test_a_bad_setting_names_the_key(make_pipeline: Any) -> None:
    pipeline = make_pipeline(models=False, max_messages="lots")

    result = pipeline.run()

    assert result.state == "failed"
    assert 'Airflow Variable smserve_dev: max_messages = "lots" is not a whole number' \
        in result.summary
