"""The sync DAG end to end with ``dag.test()``: copy, queue once, then the inference DAG runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from local_test.clips import upload_clips
from tests.dags.conftest import requires_sagemaker

pytestmark = pytest.mark.integration

WHEN = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)


def _run(pipeline: Any, when: datetime = WHEN) -> Any:
    return pipeline.run("sync_data_dev", logical_date=when, run_after=when)


def _keys(pipeline: Any) -> list[str]:
    listed = pipeline.s3.list_objects_v2(Bucket=pipeline.resources.bucket, Prefix="videos/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _seed(pipeline: Any) -> list[str]:
    s3, external = pipeline.s3, pipeline.resources.external_bucket
    return sorted(upload_clips(s3, external, "videos/2026/11/front/", 2)
                  + upload_clips(s3, external, "videos/2026/11/rear/", 1)
                  + upload_clips(s3, external, "videos/2026/10/front/", 1)
                  + upload_clips(s3, external, "videos/2026/09/front/", 1))[1:]


@requires_sagemaker
def test_sync_copies_and_queues_each_object_once_then_inference_runs_on_them(
        make_pipeline: Any) -> None:
    pipeline = make_pipeline(camera_angles=["front", "rear"])
    expected = [k for k in _seed(pipeline) if not k.startswith("videos/2026/09/")]

    first = _run(pipeline)

    assert first.state == "success", first.summary
    assert _keys(pipeline) == sorted(expected), "this month and the one before, not older"
    assert pipeline.depth() == (4, 0), "one message per copy"
    assert "camera angles: front, rear" in first.summary
    assert "videos/2026/11/front/: 2 object(s): 2 copied and queued" in first.summary
    assert "videos/2026/10/rear/: no objects (nothing to copy)" in first.summary
    assert first.states["sync_current_month"] == "success"
    assert len(first.reports["sync_current_month"]) == 2, "one mapped task per angle"

    second = _run(pipeline, WHEN + timedelta(hours=1))

    assert second.state == "success", second.summary
    assert "2 object(s): 0 copied and queued, 2 unchanged" in second.summary
    assert pipeline.depth() == (4, 0), "nothing is queued twice"

    inference = pipeline.run()

    assert inference.state == "success", inference.summary
    assert len(pipeline.outputs("scene_classifier")) == 4
    assert pipeline.depth() == (0, 0)
    body = json.loads(pipeline.s3.get_object(
        Bucket=pipeline.resources.bucket,
        Key="results/scene_classifier/videos/2026/11/front/clip-000.json")["Body"].read())
    assert "top_class" in body


def test_an_empty_external_bucket_copies_nothing_and_succeeds(make_pipeline: Any) -> None:
    pipeline = make_pipeline(models=False, camera_angles=["front"])

    result = _run(pipeline)

    assert result.state == "success", result.summary
    assert "videos/2026/11/front/: no objects (nothing to copy)" in result.summary
    assert pipeline.depth() == (0, 0)


def test_a_missing_external_bucket_fails_clearly(make_pipeline: Any) -> None:
    pipeline = make_pipeline(models=False, camera_angles=["front"],
                             external_bucket="no-such-external-bucket")

    result = _run(pipeline)

    assert result.state == "failed"
    assert "bucket no-such-external-bucket or" in result.summary
    assert "does not exist" in result.summary
    assert result.summary.splitlines()[0].endswith(
        "FAILED: sync_current_month failed; sync_previous_month failed")
