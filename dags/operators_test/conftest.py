"""Call tests of the shared operators: each called directly, against the embedded stack.

The operators run as Airflow runs them (``poke(context)``, a ``@task``'s
function inside a task context), with a small in-memory task instance
standing in for Airflow's: it keeps XComs in a dict and says which try it
is. Airflow itself is configured for a private home first (it reads its
configuration on import); connections and Variables come from ``AIRFLOW_CONN_*``
and ``AIRFLOW_VAR_*``, as Airflow's environment secrets backend reads them.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[1]
ROOT = DAGS.parent
for path in (str(DAGS), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from local_test.airflow_setup import isolated_home  # noqa: E402

from _support import Resources  # noqa: E402

HOME = isolated_home()
os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
_BIN = str(Path(sys.executable).parent)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(HOME, ignore_errors=True)


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


@pytest.fixture(scope="session")
def images(stack: Any) -> dict[str, str]:
    """flavor -> an ECR image URI the stack holds (a pushed stand-in, or PutImage only)."""
    from tests.helpers import stack_image_uris

    return stack_image_uris(stack)


@pytest.fixture()
def resources(clients: Any, connection: None, monkeypatch: pytest.MonkeyPatch,
              images: dict[str, str]) -> Resources:
    """A fresh bucket pair and queue (with a dead-letter queue), named in the Variable."""
    from local_test.airflow_setup import create_buckets, create_queues

    tag = uuid.uuid4().hex[:10]
    bucket = f"op-{tag}"
    create_buckets(clients.client("s3"), bucket, f"{bucket}-ext")
    url, dlq = create_queues(clients.client("sqs"), f"op-{tag}", f"op-{tag}-dlq", 3)
    found = Resources(bucket, url, dlq, f"op{tag}-", monkeypatch, dict(images))
    found.configure()
    return found
