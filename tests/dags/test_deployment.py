"""A real Airflow deployment (local_test/airflow_deploy.py) runs the pipeline through its REST API.

PostgreSQL, the embedded stack, the api-server, scheduler, dag-processor,
triggerer and a Celery worker whose broker is SQS on the stack (then the same
with the LocalExecutor and no worker): every one a real process. The tests
drive it as a user would (docs/airflow.md, "First deployment"): unpause and
trigger through ``/api/v2``, poll the run, read the report's XCom; the last
test stops it and finds none of its processes left.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from local_test._deploy_procs import postgres_bin, tail
from local_test.airflow_deploy import PIPELINE_DAGS, VARIABLE, Deployment
from local_test.airflow_setup import PipelineResources, create_resources, queue_objects
from local_test.clips import upload_clips
from serving.aws import ClientFactory
from serving.pipeline import output_key
from serving.settings import Settings
from tests.dags.conftest import FAST, requires_sagemaker, summary_row

pytestmark = [
    pytest.mark.integration, requires_sagemaker,
    pytest.mark.random_order(disabled=True),  # the last test stops the deployment
    pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed "
                       "(apt-get install -y postgresql; .ci/run installs it)"),
    pytest.mark.timeout(1200),
]

MODELS = ("clip_stats", "frame_features", "scene_classifier")
#: A run under a real scheduler: short waits, but not below what it can keep up with.
SETTINGS = {**FAST, "transform_poll_seconds": 1, "min_reschedule_seconds": 1}
#: Overall limit of one DAG run (2 cores, under load at times).
RUN_TIMEOUT = 600.0


@pytest.fixture(scope="module", params=["celery", "local"])
def deployment(request: pytest.FixtureRequest,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The deployment (each executor in turn), started once per executor; stopped at the end.

    Its home is under pytest's temporary folder, so the components' and tasks' logs are
    still there after a failure (pytest keeps the last three runs' folders).
    """
    home = tmp_path_factory.mktemp(f"airflow-{request.param}")
    deployed = Deployment(request.param, variable=SETTINGS, home=home)
    deployed.start()
    try:
        yield deployed
    finally:
        deployed.stop()


@pytest.fixture(scope="module")
def clients(deployment: Deployment) -> ClientFactory:
    return ClientFactory(Settings.from_environ({**os.environ, **deployment.stack_environ()}))


def _diagnosis(deployment: Deployment, dag_id: str, run_id: str) -> str:
    """Task states and every component log's tail: what a failed wait shows."""
    states = deployment.api.task_states(dag_id, run_id)
    logs = "\n".join(f"--- {log.name}\n{tail(log, 15)}"
                     for log in sorted(Path(deployment.logs).glob("*.log")))
    return f"{dag_id} {run_id}: tasks {states}\n{logs}\n(every log: {deployment.logs})"


def _run(deployment: Deployment, dag_id: str,
         seen: dict[str, set[str]] | None = None) -> tuple[str, str]:
    """Trigger ``dag_id`` through the REST API and wait; ``(run id, final state)``.

    ``seen`` collects the states each task was in at the polls (see ``Api.wait``).
    """
    api = deployment.api
    api.unpause(dag_id)
    run_id = api.trigger(dag_id)
    try:
        state = api.wait(dag_id, run_id, timeout=RUN_TIMEOUT, poll=0.5, seen=seen)
    except TimeoutError as err:
        raise AssertionError(f"{err}\n{_diagnosis(deployment, dag_id, run_id)}") from err
    return run_id, state


def _depth(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return (int(attrs["ApproximateNumberOfMessages"]),
            int(attrs["ApproximateNumberOfMessagesNotVisible"]))


def test_the_deployment_is_healthy_and_has_parsed_the_dags(deployment: Deployment) -> None:
    health = deployment.api.health()
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[part]["status"] == "healthy", health
    assert set(PIPELINE_DAGS) <= set(deployment.api.dag_ids())
    workers = {"celery-worker"} if deployment.executor == "celery" else set()
    assert {c.name for c in deployment.components} == {
        "api-server", "scheduler", "dag-processor", "triggerer", *workers}


def test_sync_then_inference_through_the_rest_api(deployment: Deployment,
                                                  clients: ClientFactory) -> None:
    resources = PipelineResources()
    s3, sqs = clients.client("s3"), clients.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=resources.queue)["QueueUrl"]
    month = datetime.now(UTC).strftime("videos/%Y/%m/front/")
    keys = upload_clips(s3, resources.external_bucket, month, 2)

    sync_run, state = _run(deployment, "sync_data_dev")

    assert state == "success", _diagnosis(deployment, "sync_data_dev", sync_run)
    assert _depth(sqs, queue_url) == (2, 0), "one message per copied clip"

    seen: dict[str, set[str]] = {}
    run_id, state = _run(deployment, "inference_dev", seen)

    assert state == "success", _diagnosis(deployment, "inference_dev", run_id)
    # The waits gave their worker slot back: the tasks sat "deferred" (the triggerer
    # polled), and each model's transform resumed from its trigger; or, where the
    # scheduler lost the race of a deferral's "success" against the resumed try ("finished
    # with state success, but the task instance's state attribute is running": an Airflow
    # bug, seen under load with the LocalExecutor), a retry adopted the job of the try
    # that deferred, with no second job.
    assert "deferred" in seen["wait_for_messages"] or any(
        "deferred" in seen[f"{model}.transform"] for model in MODELS), seen
    for model in MODELS:
        report = deployment.api.xcom("inference_dev", run_id, f"{model}.transform", "report")
        assert report.get("wait") == "deferred" or (
            "which an earlier try started; no new job" in str(report.get("note"))
            and str(report.get("job")).endswith("-1")), report
    for model in MODELS:
        listed = s3.list_objects_v2(Bucket=resources.bucket, Prefix=f"results/{model}/")
        written = sorted(o["Key"] for o in listed.get("Contents", []))
        assert len(written) == len(keys), (model, written)
        for key in keys:  # at the fixed key: results/<model>/<input key less its extension>
            fixed = output_key(model, key, "results/", "")
            assert any(w.startswith(fixed + ".") or w == fixed for w in written), (key, written)
    assert _depth(sqs, queue_url) == (0, 0), "every message is deleted"
    summary = str(deployment.api.xcom("inference_dev", run_id, "report", "summary"))
    for model in MODELS:
        assert summary_row(summary, model)[1] == "done", summary


def _run_on(deployment: Deployment, resources: PipelineResources
            ) -> tuple[str, str, str, dict[str, str]]:
    """``inference_dev`` on ``resources`` (the Variable names them for this run only).

    Returns the run id, its state, the report's summary and the task states.
    """
    deployment.api.set_variable(VARIABLE, resources.variable(**SETTINGS))
    try:
        run_id, state = _run(deployment, "inference_dev")
    finally:
        deployment.api.set_variable(VARIABLE, deployment.variable)
    summary = str(deployment.api.xcom("inference_dev", run_id, "report", "summary"))
    return run_id, state, summary, deployment.api.task_states("inference_dev", run_id)


def test_an_empty_queue_short_circuits_every_model_and_still_reports(
        deployment: Deployment, clients: ClientFactory) -> None:
    tag = f"e{uuid.uuid4().hex[:8]}"
    resources = PipelineResources.unique(tag, settings={
        "images": deployment.variable.get("images", {})})
    create_resources(clients, resources, with_models=False)

    run_id, state, summary, states = _run_on(deployment, resources)

    assert state == "success", f"{summary}\n{_diagnosis(deployment, 'inference_dev', run_id)}"
    assert states["wait_for_messages"] == "success", states  # it skipped what came after it
    for model in MODELS:
        assert states[f"{model}.transform"] == "skipped", states
        assert summary_row(summary, model)[1] == "skipped", summary
    assert (states["delete_messages"], states["report"]) == ("skipped", "success"), states
    assert "received 0 message(s)" in summary and "nothing to process" in summary, summary


def test_a_failing_model_is_reported_with_every_other_and_keeps_its_messages(
        deployment: Deployment, clients: ClientFactory) -> None:
    # frame_features may not read our bucket: every record is refused, its task fails
    tag = f"d{uuid.uuid4().hex[:8]}"
    environment = {"frame_features": {"SMSERVE_ALLOWED_BUCKETS": "some-other-bucket"}}
    resources = PipelineResources.unique(tag, settings={
        "images": deployment.variable.get("images", {}), "model_environment": environment})
    created = create_resources(clients, resources, with_models=False)
    keys = upload_clips(clients.client("s3"), resources.bucket, "videos/2026/11/front/", 2)
    queue_objects(clients.client("sqs"), created.queue_url, resources.bucket, keys)

    run_id, state, summary, states = _run_on(deployment, resources)

    assert state == "failed", f"{summary}\n{_diagnosis(deployment, 'inference_dev', run_id)}"
    assert states["frame_features.transform"] == "failed", f"{states}\n{summary}"
    assert states["clip_stats.transform"] == "success", f"{states}\n{summary}"
    assert states["report"] == "failed", f"{states}\n{summary}"
    assert summary_row(summary, "frame_features")[1] == "failed", summary
    assert summary_row(summary, "clip_stats")[1] == "done", summary
    summary_row(summary, "scene_classifier")  # named, though it never ran
    visible, in_flight = _depth(clients.client("sqs"), created.queue_url)
    assert visible + in_flight == 2, "no message of a failed run is deleted"


def test_stop_ends_every_process_it_started(deployment: Deployment) -> None:
    started = {pid: _start_time(pid) for pid in deployment.processes()}
    cluster = deployment.postgres.folder
    names = {_name(pid) for pid in started}
    assert len(started) > 6 and {"postgres", "airflow"} <= names, names

    deployment.stop()

    left = {pid: _name(pid) for pid, since in started.items()
            if _running(pid) and _start_time(pid) == since}
    assert left == {}, f"still running after stop: {left}"
    assert cluster is not None and not cluster.exists(), "the cluster's folder is removed"


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "(gone)"


def _start_time(pid: int) -> str:
    """When ``pid`` started (``/proc``'s clock ticks): tells a reused pid from ours."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _running(pid: int) -> bool:
    """True when ``pid`` is a live process (not a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X")
