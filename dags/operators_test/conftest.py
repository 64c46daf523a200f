"""Call tests of the shared operators: each called directly, against the embedded stack.

The operators run as Airflow runs them (``poke(context)``, a ``@task``'s
function inside a task context), with a small in-memory task instance
standing in for Airflow's: it keeps XComs in a dict and says which try it
is. Airflow itself is configured for a private home first (it reads its
configuration on import); connections and Variables come from ``AIRFLOW_CONN_*``
and ``AIRFLOW_VAR_*``, as Airflow's environment secrets backend reads them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[1]
ROOT = DAGS.parent
HOME = Path(tempfile.mkdtemp(prefix="smserve-airflow-optest-"))
os.environ["AIRFLOW_HOME"] = str(HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{HOME / 'airflow.db'}"
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
for path in (str(DAGS), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(HOME, ignore_errors=True)


@dataclass
class FakeTI:
    """What the operators use of a running task instance."""

    dag_id: str = "op_test"
    run_id: str = "manual__2026-11-29T10:00:00+00:00"
    task_id: str = "task"
    try_number: int = 1
    map_index: int = -1
    first_reschedule: datetime | None = None
    xcoms: dict[str, Any] = field(default_factory=dict)

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value, default=str)  # XCom values must be JSON-ready
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get(key)

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return self.first_reschedule


@pytest.fixture(scope="session")
def stack() -> Iterator[Any]:
    """The embedded AWS stack, with its SageMaker API."""
    from serving.local.stack import LocalStack

    running = LocalStack().start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def clients(stack: Any) -> Any:
    """Clients of the stack."""
    from serving.aws import ClientFactory
    from serving.settings import Settings

    return ClientFactory(Settings.from_environ({**os.environ, **stack.environ()}))


@pytest.fixture()
def connection(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``aws_default`` points at the stack."""
    from local_test.airflow_setup import aws_connection

    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", aws_connection(stack.endpoint_url))


@dataclass
class Resources:
    """One test's bucket and queue, and the ``dev`` Variable that names them."""

    bucket: str
    queue_url: str
    dead_letter_url: str
    model_prefix: str
    monkeypatch: pytest.MonkeyPatch

    def configure(self, **settings: Any) -> None:
        value = {"external_bucket": f"{self.bucket}-ext", "bucket": self.bucket,
                 "queue": self.queue_url, "sagemaker_model_prefix": self.model_prefix,
                 "max_wait_seconds": 0, "poke_interval_seconds": 1,
                 "transform_poll_seconds": 0.5, "receive_wait_seconds": 0, **settings}
        self.monkeypatch.setenv("AIRFLOW_VAR_SMSERVE_DEV", json.dumps(value))


@pytest.fixture()
def resources(clients: Any, connection: None, monkeypatch: pytest.MonkeyPatch) -> Resources:
    """A fresh bucket pair and queue (with a dead-letter queue), named in the Variable."""
    from local_test.airflow_setup import create_buckets, create_queues

    tag = uuid.uuid4().hex[:10]
    bucket = f"op-{tag}"
    create_buckets(clients.client("s3"), bucket, f"{bucket}-ext")
    url, dlq = create_queues(clients.client("sqs"), f"op-{tag}", f"op-{tag}-dlq", 3)
    found = Resources(bucket, url, dlq, f"op{tag}-", monkeypatch)
    found.configure()
    return found


def send(sqs: Any, url: str, count: int, bucket: str = "b", prefix: str = "k") -> list[str]:
    """``count`` messages naming ``bucket``/``prefix-i``; returns their ids."""
    ids: list[str] = []
    for start in range(0, count, 10):
        answer = sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"bucket": bucket,
                                                      "key": f"{prefix}-{start + i:03d}"})}
            for i in range(min(10, count - start))])
        ids += [e["MessageId"] for e in answer["Successful"]]
    return ids
