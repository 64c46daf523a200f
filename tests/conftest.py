"""Shared fixtures: a real moto server on a free loopback port, and clients for it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving import s3refs
from serving.aws import ClientFactory
from serving.local.stack import LocalStack
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def pytest_configure(config: pytest.Config) -> None:
    # chainer imports numpy.distutils, which needs the stdlib distutils on 3.11.
    os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    _children_get_default_signals()


def _no_op(signo: int, frame: Any) -> None:
    """Ignore the signal in this process only (a handler, unlike SIG_IGN, is not inherited)."""


def _children_get_default_signals() -> None:
    """Commands the tests start see SIGINT and SIGHUP as a terminal user's would.

    A suite started in the background (``cmd &`` in a script: SIGINT ignored) or under
    ``nohup`` (SIGHUP ignored) passes the ignored disposition on to every child, so the
    commands under test would never see the Ctrl-C or hang-up the tests send (and
    ``smserve`` rightly keeps an ignored SIGHUP ignored). Here the suite itself stays
    immune, through a handler that does nothing, and its children start with the default.
    """
    import signal

    for signo in (signal.SIGINT, signal.SIGHUP):
        if signal.getsignal(signo) is signal.SIG_IGN:
            signal.signal(signo, _no_op)


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    """The embedded AWS stack (moto server), one per test session."""
    s = LocalStack().start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def stack_images(stack: LocalStack) -> dict[str, str]:
    """flavor -> an ECR image URI the session stack's CreateModel accepts (see helpers)."""
    from tests.helpers import stack_image_uris

    return stack_image_uris(stack)


@pytest.fixture()
def aws_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process environment pointed at the stack (for code that builds its own clients)."""
    env = stack.environ()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture()
def settings(stack: LocalStack) -> Settings:
    """Settings pointed at the stack, allowing every bucket and output prefix."""
    return Settings.from_environ({**stack.environ(), "SMSERVE_ALLOWED_BUCKETS": "*"})


@pytest.fixture()
def clients(settings: Settings, aws_env: dict[str, str]) -> ClientFactory:
    """A client factory for the stack."""
    return ClientFactory(settings)


@pytest.fixture()
def handler_s3(clients: ClientFactory, aws_env: dict[str, str],
               monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """S3 on the stack, with the handlers' process-wide runtime pointed at it."""
    monkeypatch.setenv("SMSERVE_ALLOWED_BUCKETS", "*")
    s3refs.reset_runtime()
    try:
        yield clients.client("s3")
    finally:
        s3refs.reset_runtime()


@pytest.fixture()
def bucket(clients: ClientFactory, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket named after the test."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{name}-{uuid.uuid4().hex[:8]}"
    clients.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture()
def model_copy(tmp_path: Path):
    """Copy a model folder from models/ into tmp_path, for tests that change it."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(MODELS / name, dest, ignore=shutil.ignore_patterns("__pycache__"))
        return dest

    return copy
