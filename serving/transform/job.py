"""Run one transform job locally: model -> containers -> data plane -> outputs.

:func:`run_transform` is what ``smserve transform --local``, :func:`predict`
and (later) the embedded SageMaker API call. It starts ``InstanceCount``
containers with the job's environment, runs the data plane over them and
always stops them, on every path.
"""

from __future__ import annotations

import atexit
import functools
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from serving import scratch
from serving.aws import ClientFactory
from serving.errors import ConfigError, TransformError
from serving.runners.docker import choose_runner, close_runner, runner_description
from serving.runners.process import Container, ProcessRunner
from serving.transform.dataplane import DataPlane, Progress
from serving.transform.listing import list_inputs
from serving.transform.params import container_environment
from serving.transform.result import JobResult
from serving.transform.spec import TransformJobSpec


def prepare_model(model: str | Path, workdir: Path) -> Path:
    """The folder that goes to ``/opt/ml/model`` for ``model``.

    Args:
        model: a ``model.tar.gz`` (extracted with tarfile's ``data`` filter), an
            extracted model folder (it has ``code/``: used as it is), or a model
            folder in source layout (``models/NAME``: staged as the archive would be).
        workdir: where extraction or staging writes (a ``model/`` inside it).

    Raises:
        ConfigError: ``model`` does not exist, or is not one of those.
    """
    path = Path(model)
    if path.is_file():
        from serving.package import extract_archive

        return extract_archive(path, workdir / "model")
    if path.is_dir():
        if (path / "code").is_dir():
            return path
        from serving.package import stage

        return stage(path, workdir / "model")
    raise ConfigError(f"model {path} does not exist; pass models/NAME, an extracted model "
                      "folder (with code/) or a model.tar.gz", model=str(path))


def run_transform(spec: TransformJobSpec, model: str | Path, clients: ClientFactory,
                  runner: ProcessRunner | None = None, *,
                  log: Callable[[str], None] | None = None,
                  progress: Callable[[Progress], None] | None = None,
                  model_environment: Mapping[str, str] | None = None,
                  plane_options: Mapping[str, Any] | None = None,
                  image: str = "cpu") -> JobResult:
    """Run ``spec`` against ``model`` on local containers.

    Args:
        spec: the job.
        model: see :func:`prepare_model`.
        clients: where S3 is (the embedded stack, or AWS).
        runner: starts the containers (default: a :class:`ProcessRunner`
            whose environment is the process's, with the factory's settings
            on top, so containers reach the same S3 as the data plane).
        log: receives job and container log lines.
        progress: receives a :class:`Progress` as records are answered.
        model_environment: the model's container environment (the job's
            ``Environment`` goes on top of it).
        plane_options: extra keyword arguments for :class:`DataPlane`.
        image: the model's image flavor (``cpu``/``gpu``), for the docker
            runner (``SMSERVE_CONTAINER_RUNNER=docker``).

    Returns:
        the result, when every object succeeded.

    Raises:
        TransformError: some objects failed (the others' outputs are written);
            the message is the failure reason and ``err.context["result"]``
            is the :class:`JobResult`. Also: no input objects.
        ServerStartError: a container did not come up.
        ConfigError: a bad model path or archive.
    """
    say = log or (lambda _line: None)
    made_runner = runner is None
    if runner is None:
        from serving.settings import Settings

        env = {**Settings.from_environ().environ, **clients.settings.environ}
        runner = choose_runner(clients.settings.container_runner, image, env, log=log)
    options = dict(plane_options or {})
    workdir = scratch.make("smserve-job-")
    # Removed at interpreter exit too: a stopped `smserve pipeline run` ends
    # while this may still run in one of its threads.
    remove_at_exit = functools.partial(shutil.rmtree, workdir, ignore_errors=True)
    atexit.register(remove_at_exit)
    containers: list[Container] = []
    try:
        model_dir = prepare_model(model, workdir)
        # List the input before any container starts: an empty prefix fails fast.
        objects = list_inputs(clients.client("s3"), spec,
                              relative_to=options.get("relative_to", "prefix"), log=say)
        environment = container_environment(spec, model_environment)
        say(f"{spec.name}: starting {spec.instance_count} container(s) for {model} "
            f"({runner_description(runner)})")
        containers = runner.start(model_dir, environment, count=spec.instance_count)
        plane = DataPlane(clients.client("s3"), [c.url for c in containers], spec, log=say,
                          progress=progress, **options)
        result = plane.run(objects)
        died = _died(containers) if not result.ok else ""
    finally:
        for container in containers:
            container.stop()
        if made_runner:
            close_runner(runner)
        shutil.rmtree(workdir, ignore_errors=True)
        atexit.unregister(remove_at_exit)
    say(result.summary())
    if not result.ok:
        reason = result.failure_reason()
        say(reason)
        raise TransformError(f"transform job {spec.name} failed: {reason}{died}", job=spec.name,
                             result=result)
    return result


def _died(containers: list[Container]) -> str:
    """What containers that exited during the job printed last (their objects failed)."""
    parts = []
    for container in containers:
        code = container.process.poll()
        if code is not None:
            parts.append(f"\ncontainer {container.index} exited with code {code} during the job;"
                         f" last log lines:\n{container.log_tail()}")
    return "".join(parts)
