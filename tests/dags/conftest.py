"""Airflow on SQLite in a private home, pointed at the session's embedded stack.

Airflow reads its configuration on first import, so the environment is set
here, when pytest collects ``tests/dags`` and before any test imports
Airflow. Each test that runs a DAG gets its own buckets, queues and
SageMaker models (names carry a tag), and the ``dev`` Variable pointing at
them, with short waits.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from local_test.airflow_setup import (
    PipelineResources,
    aws_connection,
    create_models,
    create_resources,
    isolated_home,
    load_dags,
    migrate,
    queue_objects,
    run_xcoms,
    task_states,
)
from local_test.clips import upload_clips
from serving.aws import ClientFactory
from serving.local.stack import LocalStack
from serving.settings import Settings

HOME = isolated_home()

#: Short waits for tests: a batch is whatever is queued, pokes every second.
FAST = {"max_wait_seconds": 0, "poke_interval_seconds": 1, "transform_poll_seconds": 0.5,
        "receive_wait_seconds": 0, "visibility_timeout_seconds": 120,
        "min_reschedule_seconds": 0}
CLIPS = "videos/2026/11/front/"

requires_sagemaker = pytest.mark.skipif(
    importlib.util.find_spec("serving.local.sagemaker") is None,
    reason="the embedded stack's SageMaker API (serving/local/sagemaker/) is missing")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_home(stack: LocalStack) -> Path:
    """Airflow's home with a migrated database; ``aws_default`` points at the stack."""
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = aws_connection(stack.endpoint_url, stack.region)
    migrate()
    return HOME


@pytest.fixture(scope="session")
def dags(airflow_home: Path) -> dict[str, Any]:
    """The DAGs of ``dags/``, by id."""
    return load_dags()


@pytest.fixture(scope="session")
def stack_clients(stack: LocalStack) -> ClientFactory:
    """Clients of the embedded stack (what a test looks at)."""
    return ClientFactory(Settings.from_environ({**os.environ, **stack.environ()}))


@pytest.fixture(scope="session")
def images(stack: LocalStack) -> dict[str, str]:
    """flavor -> an ECR image URI the stack holds, for the Variable's ``images``."""
    from tests.helpers import stack_image_uris

    return stack_image_uris(stack)


@dataclass(frozen=True)
class RunResult:
    """One DAG run: its state, its tasks' states, the report's summary."""

    dag_run: Any
    states: dict[str, str]
    summary: str
    reports: dict[str, list[Any]]

    @property
    def state(self) -> str:
        return str(getattr(self.dag_run.state, "value", self.dag_run.state))


@dataclass
class Pipeline:
    """One test's pipeline resources on the stack, and how to run the DAGs on them."""

    clients: ClientFactory
    resources: PipelineResources
    queue_url: str
    dead_letter_url: str
    dags: Mapping[str, Any]
    monkeypatch: pytest.MonkeyPatch
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def s3(self) -> Any:
        return self.clients.client("s3")

    @property
    def sqs(self) -> Any:
        return self.clients.client("sqs")

    @property
    def sagemaker(self) -> Any:
        return self.clients.client("sagemaker")

    def configure(self, env: str = "dev", **settings: Any) -> None:
        """Set the environment's Variable to these resources, with ``settings`` on top."""
        self.settings = {**FAST, **settings}
        value = self.resources.variable(**self.settings)
        self.monkeypatch.setenv(f"AIRFLOW_VAR_SMSERVE_{env.upper()}", json.dumps(value))

    def seed(self, count: int, prefix: str = CLIPS) -> list[str]:
        """Upload ``count`` clips to our bucket."""
        return upload_clips(self.s3, self.resources.bucket, prefix, count)

    def queue(self, keys: Sequence[str]) -> None:
        """One message per key, as the sync DAG sends them."""
        queue_objects(self.sqs, self.queue_url, self.resources.bucket, keys)

    def send(self, body: str) -> str:
        """Send one raw message; returns its id."""
        return str(self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)["MessageId"])

    def depth(self, url: str | None = None) -> tuple[int, int]:
        """``(visible, in flight)`` messages of the queue (default: ours)."""
        attrs = self.sqs.get_queue_attributes(
            QueueUrl=url or self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return (int(attrs["ApproximateNumberOfMessages"]),
                int(attrs["ApproximateNumberOfMessagesNotVisible"]))

    def jobs_since(self, since: datetime) -> list[dict[str, Any]]:
        """Transform jobs created after ``since``."""
        found = self.sagemaker.list_transform_jobs(CreationTimeAfter=since, MaxResults=100)
        return list(found["TransformJobSummaries"])

    def outputs(self, model: str) -> list[str]:
        """Keys under ``results/<model>/``."""
        listed = self.s3.list_objects_v2(Bucket=self.resources.bucket,
                                         Prefix=f"{self.resources.output_prefix}{model}/")
        return sorted(o["Key"] for o in listed.get("Contents", []))

    def run(self, dag_id: str = "inference_dev", **kwargs: Any) -> RunResult:
        """Run a DAG with ``dag.test()``; the run's state, task states and summary."""
        dag_run = self.dags[dag_id].test(**kwargs)
        summaries = run_xcoms(dag_run, "summary").get("report", [""])
        return RunResult(dag_run, task_states(dag_run), str(summaries[0]),
                         run_xcoms(dag_run, "report"))


@pytest.fixture()
def make_pipeline(stack: LocalStack, stack_clients: ClientFactory, dags: dict[str, Any],
                  images: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                  request: pytest.FixtureRequest) -> Iterator[Any]:
    """Build a :class:`Pipeline` (``make_pipeline(models=True, environment=..., ...)``)."""

    def make(*, models: bool = True, environment: Mapping[str, Mapping[str, str]] | None = None,
             max_receive_count: int = 3, **settings: Any) -> Pipeline:
        tag = f"t{uuid.uuid4().hex[:10]}"
        resources = PipelineResources.unique(tag, max_receive_count=max_receive_count, settings={
            "images": images, "model_environment": dict(environment or {})})
        created = create_resources(stack_clients, resources, with_models=False)
        if models:  # ahead of time, as the set-up does; the transform task would make them
            create_models(stack_clients, resources, images, environment=environment)
        pipeline = Pipeline(stack_clients, resources, created.queue_url, created.dead_letter_url,
                            dags, monkeypatch)
        pipeline.configure(**settings)
        return pipeline

    yield make


def summary_row(summary: str, model: str) -> list[str]:
    """The words of the report summary's table row for ``model``."""
    for line in summary.splitlines():
        parts = line.split()
        if parts and parts[0] == model:
            return parts
    raise AssertionError(f"no row for {model} in:\n{summary}")
