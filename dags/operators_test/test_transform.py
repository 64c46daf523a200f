"""The transform task against the stack's SageMaker API: create, wait, adopt on a retry, fail."""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any

import pytest

from _support import FakeTI, Resources, make_work

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    importlib.util.find_spec("serving.local.sagemaker") is None,
    reason="the embedded stack's SageMaker API (serving/local/sagemaker/) is missing")]

MODEL = "clip_stats"


def test_job_names_are_deterministic_valid_and_short() -> None:
    from smserve_dags.operators.transform import JOB_NAME, job_name

    name = job_name("inference_main", "scheduled__2026-11-29T10:00:00+00:00", "frame_features",
                    "0123456789abcdef", 1)
    assert name == job_name("inference_main", "scheduled__2026-11-29T10:00:00+00:00",
                            "frame_features", "0123456789abcdef", 1)
    assert name.startswith("smserve-frame-features-") and name.endswith("-1")
    others = {job_name("inference_dev", "scheduled__2026-11-29T10:00:00+00:00",
                       "frame_features", "0123456789abcdef", 1),
              job_name("inference_main", "manual__x", "frame_features", "0123456789abcdef", 1),
              job_name("inference_main", "scheduled__2026-11-29T10:00:00+00:00", "clip_stats",
                       "0123456789abcdef", 1),
              job_name("inference_main", "scheduled__2026-11-29T10:00:00+00:00",
                       "frame_features", "fedcba9876543210", 1),
              job_name("inference_main", "scheduled__2026-11-29T10:00:00+00:00",
                       "frame_features", "0123456789abcdef", 2)}
    assert name not in others and len(others) == 5
    long = job_name("d" * 250, "r" * 250, "a_model__with--a_very_long_name_" * 3, "b" * 64, 999)
    for candidate in [name, *others, long]:
        assert len(candidate) <= 63 and JOB_NAME.match(candidate), candidate


@pytest.fixture()
def model(clients: Any, resources: Resources) -> Any:
    """Sets clip_stats' container variables in the Variable; returns the set-up's model name.

    The set-up (``create_models``) makes the model ahead of time through the
    same code the operator uses, so the operator must find it under that name.
    """
    from local_test.airflow_setup import PipelineResources, create_models

    def create(**environment: str) -> str:
        resources.configure(model_environment={MODEL: environment})
        names = PipelineResources(bucket=resources.bucket, model_prefix=resources.model_prefix)
        (name,) = create_models(clients, names, resources.images,
                                environment={MODEL: environment}, names=[MODEL])
        return name

    return create


def _work(clients: Any, resources: Resources, ti: FakeTI, count: int) -> dict[str, Any]:
    return make_work(clients, resources, ti, count, MODEL)


def _poke_until_done(operator: Any, ti: FakeTI, timeout: float = 120) -> int:
    pokes = 1
    deadline = time.monotonic() + timeout
    while not operator.poke({"ti": ti}):
        assert time.monotonic() < deadline, "the transform job did not finish"
        pokes += 1
        time.sleep(0.3)
    return pokes


def _jobs(clients: Any, contains: str) -> list[str]:
    found = clients.client("sagemaker").list_transform_jobs(NameContains=contains)
    return sorted(j["TransformJobName"] for j in found["TransformJobSummaries"])


def test_create_wait_then_a_retry_adopts_and_a_rerun_skips(
        clients: Any, resources: Resources, model: Any) -> None:
    from smserve_dags.operators.transform import BatchTransformOperator, job_name

    made = model()
    ti = FakeTI(run_id="manual__adopt")
    work = _work(clients, resources, ti, 3)
    assert (work["records"], work["pending"], work["exist"]) == (3, 3, 0)
    assert work["request_uri"].endswith(".jsonl")
    operator = BatchTransformOperator(task_id="clip_stats.transform", model=MODEL, env="dev",
                                      work=work)
    assert operator.mode == "reschedule"

    pokes = _poke_until_done(operator, ti)

    name = job_name(ti.dag_id, ti.run_id, MODEL, work["batch"], 1)
    assert pokes > 1, "the first poke creates the job and gives the worker back"
    report = ti.xcoms["report"]
    assert (report["status"], report["written"], report["skipped"], report["job"]) == \
        ("done", 3, 0, name)
    assert report["seconds"] is not None and "note" not in report
    described = clients.client("sagemaker").describe_transform_job(TransformJobName=name)
    assert described["ModelName"] == made, "the operator uses the set-up's model"
    assert made.startswith(f"{resources.model_prefix}clip-stats-")
    assert described["TransformResources"] == {"InstanceType": "ml.m5.large",
                                               "InstanceCount": 1}

    retry = FakeTI(run_id=ti.run_id, try_number=2)
    assert operator.poke({"ti": retry}) is True, "the retry adopts the completed job at once"
    assert retry.xcoms["report"]["job"] == name
    assert retry.xcoms["report"]["written"] == 3
    assert f"adopted transform job {name}" in retry.xcoms["report"]["note"]
    assert _jobs(clients, name[:-2]) == [name], "no second job"

    rerun = FakeTI(run_id="manual__rerun")
    again = _work(clients, resources, rerun, 3)
    assert (again["pending"], again["exist"], again["request_uri"]) == (0, 3, None)
    skipper = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=again)
    assert skipper.poke({"ti": rerun}) is True
    assert rerun.xcoms["report"]["status"] == "skipped"
    assert rerun.xcoms["report"]["skipped"] == 3
    assert _jobs(clients, job_name(rerun.dag_id, rerun.run_id, MODEL, again["batch"], 1)) == []


def test_given_the_batch_the_task_prepares_its_requests_and_a_later_try_reads_the_plan(
        clients: Any, resources: Resources, model: Any) -> None:
    from local_test.clips import upload_clips

    from smserve_dags.operators.transform import BatchTransformOperator, job_name

    model()
    s3 = clients.client("s3")
    keys = upload_clips(s3, resources.bucket, "videos/2026/11/side/", 3)
    batch: dict[str, Any] = {"batch": "c" * 16, "bucket": resources.bucket,
                             "queue_url": resources.queue_url, "keys": keys, "message_ids": []}
    ti = FakeTI(run_id="manual__prepares")
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", batch=batch,
                                      messages=[])
    assert operator.poke({"ti": ti}) is False, "the first poke prepares and creates the job"
    name = job_name(ti.dag_id, ti.run_id, MODEL, batch["batch"], 1)
    described = clients.client("sagemaker").describe_transform_job(TransformJobName=name)
    request_uri = described["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
    assert request_uri.endswith(".jsonl"), "the requests were uploaded before the job"
    plans = [o["Key"] for o in s3.list_objects_v2(Bucket=resources.bucket).get("Contents", [])
             if o["Key"].endswith(f"{MODEL}/plan.json")]
    assert len(plans) == 1, plans
    plan = json.loads(s3.get_object(Bucket=resources.bucket, Key=plans[0])["Body"].read())
    assert (plan["records"], plan["pending"], plan["request_uri"]) == (3, 3, request_uri)

    # a resumed or rescheduled try runs in a new process: a new operator, no XCom of its own
    later = BatchTransformOperator(task_id="t", model=MODEL, env="dev", batch=batch,
                                   messages=[])
    again = FakeTI(run_id=ti.run_id)
    _poke_until_done(later, again)
    report = again.xcoms["report"]
    assert (report["status"], report["records"], report["written"], report["job"]) == \
        ("done", 3, 3, name), report
    assert _jobs(clients, name[:-2]) == [name], "the later try adopted the job"

    with pytest.raises(ValueError, match=r"batch= .* or work="):
        BatchTransformOperator(task_id="t", model=MODEL, env="dev")


def test_a_failed_job_fails_the_task_with_its_reason(clients: Any, resources: Resources,
                                                     model: Any) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.transform import BatchTransformOperator

    model(SMSERVE_ALLOWED_BUCKETS="another-bucket")
    ti = FakeTI(run_id="manual__fails")
    work = _work(clients, resources, ti, 2)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    with pytest.raises(AirflowFailException) as info:
        _poke_until_done(operator, ti)
    assert "transform job smserve-clip-stats-" in str(info.value)
    assert "is not on the allow-list" in str(info.value)
    report = ti.xcoms["report"]
    assert (report["status"], report["written"], report["failed"]) == ("failed", 0, 2)
    assert report["reason"] in str(info.value)


def test_the_operator_creates_the_model_from_the_configured_image(
        clients: Any, resources: Resources) -> None:
    from smserve_dags.operators.transform import BatchTransformOperator, job_name

    ti = FakeTI(run_id="manual__own-model")
    work = _work(clients, resources, ti, 1)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    _poke_until_done(operator, ti)
    name = job_name(ti.dag_id, ti.run_id, MODEL, work["batch"], 1)
    sm = clients.client("sagemaker")
    model_name = sm.describe_transform_job(TransformJobName=name)["ModelName"]
    container = sm.describe_model(ModelName=model_name)["PrimaryContainer"]
    assert container["Image"] == resources.images["cpu"]
    assert container["Environment"]["SMSERVE_ALLOWED_BUCKETS"] == resources.bucket


def test_no_configured_image_says_how_to_push_one(clients: Any,
                                                  resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.transform import BatchTransformOperator

    resources.configure(images={})
    ti = FakeTI(run_id="manual__noimage")
    work = _work(clients, resources, ti, 1)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    with pytest.raises(AirflowFailException) as info:
        operator.poke({"ti": ti})
    assert "no ECR image for clip_stats's cpu image" in str(info.value)
    assert "smserve image push --flavor cpu" in str(info.value)
    assert "images.cpu" in str(info.value)


def test_an_image_ecr_does_not_hold_is_createmodels_error(clients: Any,
                                                         resources: Resources) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from smserve_dags.operators.transform import BatchTransformOperator

    missing = "123456789012.dkr.ecr.us-east-1.amazonaws.com/smserve-cpu:never-pushed"
    resources.configure(images={"cpu": missing})
    ti = FakeTI(run_id="manual__unknownimage")
    work = _work(clients, resources, ti, 1)
    operator = BatchTransformOperator(task_id="t", model=MODEL, env="dev", work=work)
    with pytest.raises(AirflowFailException) as info:
        operator.poke({"ti": ti})
    assert f"Requested image {missing} not found." in str(info.value)
