"""One transform job, run in the background: model data -> containers -> data plane -> outputs.

:class:`TransformRun` does what the service does after ``CreateTransformJob``
has answered: fetch and extract the model's ``ModelDataUrl``, start
``InstanceCount`` containers with the model's ``Environment`` and the job's on
top, run the data plane, and always stop the containers. The containers are
local processes (``smserve serve``; the model's ``Image`` is recorded in the
log) or, with ``SMSERVE_CONTAINER_RUNNER=docker`` in the stack's environment,
the model's ``Image`` itself on the Docker engine that environment names.
It ends in an :class:`Outcome`: ``Completed``, ``Failed`` with a
``FailureReason`` (at most 1024 characters, saying what happened and what to
change) or ``Stopped``. Every line goes to the job's CloudWatch log.

While the data plane runs, a watcher looks at the containers: one whose entry
process died (``smserve serve`` killed, even with SIGKILL) or whose disk filled
up (its log could not be written) fails the job at once with that reason;
SageMaker fails a job whose container exits, too.
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving import scratch
from serving.aws import ClientFactory
from serving.errors import ConfigError, ImageError, ServerStartError, TransformError
from serving.local.sagemaker.artifacts import fetch_model
from serving.local.sagemaker.logs import JobLog
from serving.runners.docker import DockerContainer, DockerRunner, close_runner
from serving.runners.process import Container, ProcessRunner
from serving.settings import Settings
from serving.transform.dataplane import DataPlane
from serving.transform.listing import InputObject, list_inputs
from serving.transform.params import container_environment
from serving.transform.result import MAX_FAILURE_REASON, JobResult
from serving.transform.spec import TransformJobSpec

#: ``Image`` -> (the reference a Docker engine pulls it by, the registry login for it).
ImagePull = Callable[[str], tuple[str, dict[str, str]]]

#: A started container, from either runner.
_Started = Container | DockerContainer
#: Seconds a container gets between SIGTERM and SIGKILL.
STOP_GRACE = 5.0
#: Seconds to wait for a container that stopped answering to exit, before blaming it.
DEATH_WAIT = 3.0
#: Seconds between looks at the containers while the job runs.
WATCH_INTERVAL = 0.2


@dataclass(frozen=True)
class Outcome:
    """How a job ended.

    Attributes:
        status: ``Completed``, ``Failed`` or ``Stopped``.
        failure_reason: why it failed (None unless ``Failed``).
        result: the data plane's result, when it ran.
    """

    status: str
    failure_reason: str | None = None
    result: JobResult | None = None


def _cut(text: str, limit: int = MAX_FAILURE_REASON) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _TrackingRunner(ProcessRunner):
    """A :class:`ProcessRunner` that reports each container as it is spawned.

    So a stop request can end containers that are still starting (the runner's
    ``start`` then fails fast, as for any container that exits).
    """

    def __init__(self, on_spawn: Callable[[Container], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_spawn = on_spawn

    def _spawn(self, model_dir: Path, environment: Mapping[str, str], index: int) -> Container:
        container = super()._spawn(model_dir, environment, index)
        self._on_spawn(container)
        return container


class _TrackingDockerRunner(DockerRunner):
    """A :class:`DockerRunner` that reports each container as it is created (see above)."""

    def __init__(self, on_spawn: Callable[[Any], None], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_spawn = on_spawn

    def _create(self, model_dir: Path, environment: Mapping[str, str], index: int,
                network: str) -> DockerContainer:
        container = super()._create(model_dir, environment, index, network)
        self._on_spawn(container)
        return container


class TransformRun:
    """Runs one job in a thread of its own.

    Args:
        spec: the job.
        container: the model's container definition (``Image``, ``ModelDataUrl``,
            ``Environment``).
        clients: where S3 is (the stack's own endpoint).
        log: the job's CloudWatch log.
        runner_env: the base environment of every container (points at the stack).
        startup_timeout: seconds a container may take to pass ``/ping``.
        on_running: called when the containers are healthy.
        on_finished: called once with the :class:`Outcome`.
        command: the container command (default: ``smserve serve``); tests only.
        image_pull: ``Image`` -> (the reference the engine pulls, its registry login);
            None: the Docker runner runs ``Image`` as the engine already has it.
        startup_delay: seconds to wait before the containers start (the time AWS
            takes to provision instances and pull the image); a stop ends the wait.
        pool: a :class:`~serving.runners.warm.WarmPool`: a one-instance job takes
            its server from it and gives it back (None: started and stopped here).
    """

    def __init__(self, spec: TransformJobSpec, container: Mapping[str, Any],
                 clients: ClientFactory, log: JobLog, *, runner_env: Mapping[str, str],
                 startup_timeout: float, on_running: Callable[[], None] | None = None,
                 on_finished: Callable[[Outcome], None] | None = None,
                 command: Sequence[str] | None = None, startup_delay: float = 0.0,
                 image_pull: ImagePull | None = None, pool: Any = None) -> None:
        self.spec = spec
        self._image_pull = image_pull
        self.startup_delay = startup_delay
        self._stop_event = threading.Event()
        self._pool = pool
        self._pooled: list[Container] = []
        self.container = dict(container)
        self.clients = clients
        self.log = log
        self.runner_env = dict(runner_env)
        self.startup_timeout = startup_timeout
        self._on_running = on_running
        self._on_finished = on_finished
        self._command = command
        self._lock = threading.Lock()
        self._stopping = False
        self._plane: DataPlane | None = None
        self._containers: list[_Started] = []
        self._thread = threading.Thread(target=self._main, name=f"job-{spec.name}", daemon=True)

    def start(self) -> None:
        """Start the job's thread."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the job to end; True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Ask the job to stop: no new objects, containers ended (returns at once)."""
        with self._lock:
            self._stopping = True
            self._stop_event.set()
            plane, containers = self._plane, [*self._containers, *self._pooled]
        self.log.data(f"{self.spec.name}: stop requested")
        if plane is not None:
            plane.stop()
        for container in containers:
            threading.Thread(target=container.stop, kwargs={"grace": STOP_GRACE},
                             name=f"stop-{self.spec.name}-{container.index}",
                             daemon=True).start()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        with self._lock:
            return self._stopping

    # --- the thread --------------------------------------------------------------------

    def _main(self) -> None:
        try:
            outcome = self._execute()
        except Exception as err:  # a bug here must still end the job, and say so
            self.log.data(traceback.format_exc())
            outcome = Outcome("Failed", _cut(f"InternalServerError: {type(err).__name__}: "
                                             f"{err}; see the data-log stream"))
        if outcome.failure_reason:
            self.log.data(f"{self.spec.name}: Failed: {outcome.failure_reason}")
        else:
            self.log.data(f"{self.spec.name}: {outcome.status}")
        self.log.close()
        if self._on_finished is not None:
            self._on_finished(outcome)

    def _execute(self) -> Outcome:
        spec, say = self.spec, self.log.data
        workdir = scratch.make(f"smserve-sagemaker-{spec.name}-")
        runner: ProcessRunner | DockerRunner | None = None
        try:
            environment = container_environment(spec, self.container.get("Environment") or {})
            program = environment.get("SAGEMAKER_PROGRAM") or "serving.py"
            image = self.container.get("Image") or "(no Image)"
            try:
                runner = self._runner(image)
            except (ImageError, ConfigError) as err:
                return Outcome("Failed", _cut(f"ClientError: {err.message}"))
            how = (runner.describe() if isinstance(runner, DockerRunner)
                   else "run as a local process: smserve serve")
            say(f"{spec.name}: model {spec.model_name}, image {image} ({how}), "
                f"{spec.instance_count} instance(s) of {spec.instance_type}")
            try:
                model_dir = fetch_model(self.clients.client("s3"), self.container, workdir,
                                        program)
            except TransformError as err:
                return Outcome("Failed", _cut(err.message))
            try:  # no input: fail before paying for a container start
                objects = list_inputs(self.clients.client("s3"), spec, log=say)
            except TransformError as err:
                return Outcome("Failed", _cut(f"ClientError: {err.message}"))
            if self.startup_delay > 0:  # provisioning, as on AWS; a stop cuts it short
                say(f"{spec.name}: provisioning for {self.startup_delay:g} s "
                    "(SMSERVE_LOCAL_JOB_STARTUP_SECONDS)")
                self._stop_event.wait(self.startup_delay)
            if self.stopping:
                return Outcome("Stopped")
            try:
                containers = self._start_containers(runner, model_dir, environment)
            except ServerStartError as err:
                if self.stopping:
                    return Outcome("Stopped")
                say(err.message)
                return Outcome("Failed", self._start_failure(err))
            if self._on_running is not None:
                self._on_running()
            return self._transform(containers, objects)
        finally:
            for container in self._spawned():
                container.stop(grace=STOP_GRACE)
            for container in self._pooled:  # warm for the next job, unless stopped
                self._pool.release(container, reusable=not self.stopping)
            if runner is not None:
                close_runner(runner)
            shutil.rmtree(workdir, ignore_errors=True)

    def _runner(self, image: str) -> ProcessRunner | DockerRunner:
        """The runner the stack's settings choose (``SMSERVE_CONTAINER_RUNNER``).

        Raises:
            ImageError: ``docker`` with no reachable engine.
            ConfigError: a bad setting.
        """
        settings = Settings.from_environ(self.runner_env)
        if settings.container_runner == "docker" and self._command is None:
            from serving.images import connect

            client = connect(self.runner_env)
            if self._image_pull is not None:
                image = _pulled(client, image, self._image_pull)
            return _TrackingDockerRunner(
                self._spawned_one, image, client, self.runner_env,
                gpus=settings.docker_gpus, startup_timeout=self.startup_timeout,
                log=self.log.container, stop_grace=STOP_GRACE)
        return _TrackingRunner(self._spawned_one, command=self._command, env=self.runner_env,
                               startup_timeout=self.startup_timeout, log=self.log.container,
                               stop_grace=STOP_GRACE)

    def _start_containers(self, runner: ProcessRunner | DockerRunner, model_dir: Path,
                          environment: Mapping[str, str]) -> list[_Started]:
        if (self._pool is not None and self.spec.instance_count == 1
                and isinstance(runner, ProcessRunner) and self._command is None):
            container, reused = self._pool.start(model_dir, environment,
                                                 name=self.spec.model_name)
            with self._lock:
                self._pooled.append(container)
            self.log.data(f"{self.spec.name}: {'reusing the warm' if reused else 'started a'} "
                          f"server for model {self.spec.model_name} (pid {container.pid}); it "
                          "stays warm after the job")
            return [container]
        self.log.data(f"{self.spec.name}: starting {self.spec.instance_count} container(s): "
                      + ", ".join(self.log.instance_ids))
        started: list[_Started] = []
        started.extend(runner.start(model_dir, environment, count=self.spec.instance_count))
        return started

    def _transform(self, containers: list[_Started], objects: list[InputObject]) -> Outcome:
        plane = DataPlane(self.clients.client("s3"), [c.url for c in containers], self.spec,
                          log=self.log.data)
        with self._lock:
            self._plane = plane
            stopping = self._stopping
        if stopping:
            return Outcome("Stopped")
        done = threading.Event()
        broken: list[str] = []
        watcher = threading.Thread(target=self._watch, args=(containers, plane, done, broken),
                                   name=f"watch-{self.spec.name}", daemon=True)
        watcher.start()
        try:
            result = plane.run(objects)
        except (TransformError, ConfigError) as err:
            if self.stopping:
                return Outcome("Stopped")
            if broken:
                return Outcome("Failed", _cut(broken[0]))
            return Outcome("Failed", _cut(f"ClientError: {err.message}"))
        finally:
            done.set()
            watcher.join()
        self.log.data(result.summary())
        if self.stopping:
            return Outcome("Stopped", result=result)
        if broken:
            failed = [o for o in result.failed if not (o.error or "").startswith("Stopped")]
            more = ""
            if failed:
                more = " Objects: " + result.failure_reason(
                    limit=max(0, MAX_FAILURE_REASON - len(broken[0]) - 10))
            return Outcome("Failed", _cut(broken[0] + more), result)
        if result.ok:
            return Outcome("Completed", result=result)
        died = self._died(containers, result)
        reason = result.failure_reason(limit=MAX_FAILURE_REASON - len(died)) + died
        return Outcome("Failed", _cut(reason), result)

    # --- containers ----------------------------------------------------------------------

    def _spawned_one(self, container: _Started) -> None:
        with self._lock:
            self._containers.append(container)
            stopping = self._stopping
        if stopping:
            container.stop(grace=STOP_GRACE)

    def _spawned(self) -> list[_Started]:
        with self._lock:
            return list(self._containers)

    def _watch(self, containers: list[_Started], plane: DataPlane, done: threading.Event,
               broken: list[str]) -> None:
        """Until ``done``: fail the job when a container dies or its disk fills up."""
        while not done.wait(WATCH_INTERVAL):
            reason = self._broken(containers)
            if reason is None or self.stopping:
                continue
            broken.append(reason)
            self.log.data(f"{self.spec.name}: {reason}")
            plane.stop()
            for container in containers:  # in-flight requests end with their server
                container.stop(grace=STOP_GRACE)
            return

    def _broken(self, containers: list[_Started]) -> str | None:
        for container in containers:
            instance = self.log.instance_ids[container.index]
            stream = self.log.container_stream(container.index)
            full = getattr(container, "disk_error", None)  # the docker runner has none
            if full is not None:
                return (f"InternalServerError: container {instance}: {full}. Its log is in "
                        f"{stream}.")
            code = container.process.poll()
            if code is not None:
                how = f"exited with code {code}" + (
                    f" (killed by {signal.Signals(-code).name})" if code < 0 else "")
                return (f"AlgorithmError: the entry process of container {instance} (smserve "
                        f"serve) {how} during the job, so the job failed as SageMaker fails "
                        f"one whose container exits; its log is in {stream}.")
        return None

    def _died(self, containers: list[_Started], result: JobResult) -> str:
        lost = any((o.error or "").startswith("ConnectionError") for o in result.failed)
        deadline = time.monotonic() + (DEATH_WAIT if lost else 0.0)
        # a container whose server died takes a moment to exit: give it that moment
        while any(c.alive() for c in containers) and time.monotonic() < deadline:
            time.sleep(0.1)
        parts = []
        for container in containers:
            code = container.process.poll()
            if code is not None:
                stream = self.log.container_stream(container.index)
                parts.append(f" Container {self.log.instance_ids[container.index]} exited with "
                              f"code {code} during the job; its log is in {stream}.")
        return "".join(parts)

    def _start_failure(self, err: ServerStartError) -> str:
        text, _, tail_lines = err.message.partition("Last log lines:")
        text = text.strip()
        said = [line.strip() for line in tail_lines.splitlines()
                if line.strip().startswith("smserve: error:")]
        if said:  # the server's own word on why (a model_fn that raised, a bad handler)
            text += f" The container said: {said[-1].removeprefix('smserve: error:').strip()}"
            errors = [line.strip() for line in tail_lines.splitlines()
                      if "Error:" in line and "smserve: error:" not in line]
            if errors and errors[-1] not in text:  # the worker's own exception
                text += f" ({errors[-1]})"
        else:  # no word of its own: its last lines are the best reason there is
            last = [line.strip() for line in tail_lines.splitlines() if line.strip()][-3:]
            if last:
                text += " Its last log lines: " + " | ".join(last)
        earlier = err.message.partition("Earlier tries of this container")[2]
        if earlier and "Earlier tries" not in text:
            text += " Earlier tries" + earlier.split("\n", 1)[0]
        for container in self._spawned():  # paths as the container sees them
            base_dir = getattr(container, "base_dir", None)
            if base_dir is not None:
                text = text.replace(str(base_dir), "/opt/ml")
        text = text if text.endswith((".", ";")) else text + "."
        streams = ", ".join(self.log.container_stream(i)
                            for i in range(len(self.log.instance_ids)))
        tail = (f" The container log is in /aws/sagemaker/TransformJobs {streams}; fix the "
                "model (or raise SMSERVE_CONTAINER_STARTUP_TIMEOUT if it loads slowly) and "
                "create a new job.")
        return _cut(f"AlgorithmError: the container did not pass the /ping health check: "
                    f"{_cut(text, MAX_FAILURE_REASON - 80 - len(tail))}{tail}")


def _pulled(client: Any, image: str, image_pull: ImagePull) -> str:
    """``image`` (an ECR URI) pulled by digest from the stack's registry; the local reference.

    As on AWS, the instance pulls the model's image from ECR before it starts; an
    image the engine already holds under that reference is not pulled again.

    Raises:
        ImageError: the stack cannot serve the image, or the pull failed.
    """
    from docker.errors import DockerException, ImageNotFound

    from serving.local.sagemaker.apierrors import ValidationException

    try:
        reference, auth = image_pull(image)
    except ValidationException as err:
        raise ImageError(f"cannot pull {image}: {err}") from err
    try:
        client.api.inspect_image(reference)
        return reference
    except ImageNotFound:
        pass
    except DockerException as err:
        raise ImageError(f"the Docker engine could not inspect {reference}: {err}") from err
    repository, _, digest = reference.partition("@")
    try:
        client.images.pull(repository, tag=digest, auth_config=auth)
    except DockerException as err:
        raise ImageError(f"pulling {image} from the stack's registry ({reference}) failed: "
                         f"{err}; push it again with `smserve image push`") from err
    return reference
