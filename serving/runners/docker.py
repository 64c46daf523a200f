"""Containers with Docker: the real serving image, run the way batch transform runs it.

:class:`DockerRunner` has :class:`~serving.runners.process.ProcessRunner`'s
interface (``start(model_dir, environment, count)`` returns containers with
``.url``, ``.stop()``, ``.log_tail()`` and ``.process.poll()``), so the local
transform's data plane drives either. Each container is::

    docker run [--gpus all] -v MODEL_DIR:/opt/ml/model:ro -e ... IMAGE serve

with the model read-only at ``/opt/ml/model``, the job's container
environment, the runner's AWS settings (``AWS_*``), and ``SMSERVE_*`` /
``SAGEMAKER_*`` settings, and a free loopback port to reach it on.

Networking, so that a container reaches the embedded AWS stack, which listens
on the host's ``127.0.0.1`` only:

- ``host`` (the default on Linux engines): the container shares the host's
  network; the server binds ``127.0.0.1:<free port>`` through
  ``SAGEMAKER_BIND_TO_PORT`` (the variable SageMaker itself uses to move a
  container's port) and ``AWS_ENDPOINT_URL`` works unchanged. A bridge
  network cannot be used there: ``host-gateway`` reaches the host's bridge
  address, where a loopback-bound stack does not listen.
- ``bridge`` (the default on Docker Desktop, whose containers reach the
  host's loopback through ``host.docker.internal``): the server listens on
  8080 in the container, published on ``127.0.0.1:<free port>``, and
  loopback endpoint URLs are rewritten to ``host.docker.internal``.

Each container runs as the caller's uid:gid by default, so a model folder the
caller can read is readable inside (a temporary folder is mode 0700).

GPUs (``SMSERVE_DOCKER_GPUS``, see :mod:`serving.runners._gpu`): ``auto``
asks for every GPU only when the image wants one and the engine has an
NVIDIA runtime; otherwise a GPU image runs its model on the CPU and
:meth:`DockerRunner.describe` says so. ``all`` always asks, and a start the
engine refuses shows the engine's whole message.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from serving.errors import ServerStartError
from serving.ports import free_port
from serving.runners._container import DockerContainer, force_remove
from serving.runners._gpu import CPU_FALLBACK, GPU_MODES, Placement, place, start_refused
from serving.runners.process import ProcessRunner, StartGroup, start_all, wait_healthy

CONTAINER_PORT = 8080
MODEL_MOUNT = "/opt/ml/model"
#: Settings a container gets from the runner's environment (by prefix)...
FORWARDED_PREFIXES = ("AWS_", "SMSERVE_", "SAGEMAKER_")
#: ...except these: host paths, or what the runner sets per container.
NOT_FORWARDED = frozenset({
    "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "SAGEMAKER_BASE_DIR", "SAGEMAKER_BIND_TO_PORT",
    "SMSERVE_BIND_HOST", "SMSERVE_RUN_DIR", "SMSERVE_CONTAINER_RUNNER",
})
_LOOPBACK = re.compile(r"^(https?://)(127\.0\.0\.1|localhost|\[::1\])(?=[:/]|$)")
_PORT_CLASH = ("port is already allocated", "address already in use", "bindexception",
               " is in use")


def container_env(base: Mapping[str, str], environment: Mapping[str, str], *, port: int,
                  bind_host: str, rewrite_loopback: bool, home: str | None) -> dict[str, str]:
    """The environment of one container.

    Args:
        base: the runner's environment; only ``AWS_*``, ``SMSERVE_*`` and
            ``SAGEMAKER_*`` settings pass (never host paths, never ``PATH``).
        environment: the job's container environment (goes on top).
        port: the port the server listens on inside the container.
        bind_host: the interface it binds.
        rewrite_loopback: point loopback ``AWS_ENDPOINT_URL*`` values at
            ``host.docker.internal`` (bridge networking).
        home: ``HOME`` to set (when running as a uid the image does not know).
    """
    env = {k: v for k, v in base.items()
           if k.startswith(FORWARDED_PREFIXES) and k not in NOT_FORWARDED}
    env.update(environment)
    env.update({"SAGEMAKER_BIND_TO_PORT": str(port), "SMSERVE_BIND_HOST": bind_host})
    if home:
        env["HOME"] = home
    if rewrite_loopback:
        for key, value in list(env.items()):
            if key.startswith("AWS_ENDPOINT_URL"):
                env[key] = _LOOPBACK.sub(r"\1host.docker.internal", value)
    return env


def _caller_user() -> str | None:
    if hasattr(os, "getuid") and hasattr(os, "getgid"):
        return f"{os.getuid()}:{os.getgid()}"
    return None


class DockerRunner:
    """Starts serving containers from an image through a Docker engine.

    Args:
        image: the image, like ``smserve-cpu:0.1.0``.
        client: a ``docker.DockerClient`` (see :func:`serving.images.connect`).
        env: the runner's environment; its ``AWS_*``, ``SMSERVE_*`` and
            ``SAGEMAKER_*`` settings reach every container.
        gpus: ``auto`` (ask for every GPU when the image wants one and the engine
            has an NVIDIA runtime), ``all`` (always ask: ``--gpus all``) or ``none``.
        network: ``host``, ``bridge`` or ``auto`` (see the module docstring).
        user: ``uid:gid`` to run as; ``auto`` is the caller's; None is the image's.
        startup_timeout: seconds a container may take to answer ``/ping``.
        ping_timeout: seconds each ``/ping`` may take.
        log: receives the containers' output lines, prefixed ``[container N]``.
        stop_grace: seconds between SIGTERM and SIGKILL.
        poll_interval: seconds between pings.
    """

    def __init__(self, image: str, client: Any, env: Mapping[str, str] | None = None, *,
                 gpus: str = "auto", network: str = "auto", user: str | None = "auto",
                 startup_timeout: float = 180.0, ping_timeout: float = 2.0,
                 log: Callable[[str], None] | None = None, stop_grace: float = 10.0,
                 poll_interval: float = 0.25) -> None:
        if network not in ("auto", "host", "bridge"):
            raise ValueError(f"network must be auto, host or bridge, not {network!r}")
        self.image = image
        self.client = client
        self.env = dict(env or {})
        if gpus not in GPU_MODES:
            raise ValueError(f"gpus must be one of {', '.join(GPU_MODES)}, not {gpus!r}")
        self.gpus = gpus
        self._placement: Placement | None = None
        self.network = network
        self.user = _caller_user() if user == "auto" else user
        self.startup_timeout = startup_timeout
        self.ping_timeout = ping_timeout
        self.log = log
        self.stop_grace = stop_grace
        self.poll_interval = poll_interval

    @classmethod
    def for_flavor(cls, flavor: str, environ: Mapping[str, str], tag: str | None = None,
                   **options: Any) -> DockerRunner:
        """A runner for the local image ``smserve-<flavor>:<tag>`` on the engine ``environ`` names.

        Raises:
            ConfigError: an unknown flavor.
            ImageError: no engine is reachable.
        """
        from serving import images
        from serving.settings import Settings

        images.check_flavor(flavor)
        gpus = Settings.from_environ(environ).docker_gpus
        client = images.connect(environ)
        image = images.local_image(flavor, tag or images.default_tag())
        return cls(image, client, environ, gpus=gpus, **options)

    def placement(self) -> Placement:
        """Whether containers ask for a GPU, and why (decided once, on first use)."""
        if self._placement is None:
            self._placement = place(self.client, self.image, self.gpus)
            where = self._placement
            if self.log is not None and where.note and not where.gpu:
                self.log(f"{self.image}: {where.note}; {CPU_FALLBACK}")
        return self._placement

    def describe(self) -> str:
        """Which runner runs the model, for progress lines and reports (one line)."""
        where = self.placement()
        return f"docker {self.image}" + (f" ({where.note})" if where.note else "")

    def close(self) -> None:
        """Close the engine connection (stop the containers first); idempotent."""
        with contextlib.suppress(Exception):
            self.client.close()

    def resolved_network(self) -> str:
        """``host`` or ``bridge``: ``auto`` becomes bridge on Docker Desktop, else host."""
        if self.network != "auto":
            return self.network
        try:
            info = self.client.info()
        except Exception:
            return "host"
        system = f"{info.get('OperatingSystem', '')} {info.get('Name', '')}".lower()
        return "bridge" if "docker desktop" in system else "host"

    def start(self, model_dir: Path, environment: Mapping[str, str] | None = None,
              count: int = 1) -> list[DockerContainer]:
        """Start ``count`` containers serving ``model_dir``, concurrently.

        Args:
            model_dir: an extracted model (mounted read-only at ``/opt/ml/model``).
            environment: the container environment (model's, job's, ``SAGEMAKER_*``).
            count: how many containers.

        Returns:
            the healthy containers, in index order; stop them when done.

        Raises:
            ServerStartError: one did not come up (all are stopped then), the
                image is missing, or the engine refused.
        """
        model_dir = Path(model_dir).resolve()
        if not model_dir.is_dir():
            raise ServerStartError(f"model directory {model_dir} does not exist",
                                   model_dir=str(model_dir))
        network = self.resolved_network()
        self.placement()
        return start_all(count, lambda index, group: self._start_one(
            model_dir, dict(environment or {}), index, network, group),
            thread_name_prefix="docker-start")

    def _start_one(self, model_dir: Path, environment: dict[str, str], index: int,
                   network: str, group: StartGroup[DockerContainer]) -> DockerContainer:
        for attempt in range(2):
            container = None
            try:
                container = self._create(model_dir, environment, index, network)
                group.add(container)
                wait_healthy(container, group.abort,
                             where=f"container {container.index} ({self.image}, "
                                   f"port {container.port})",
                             startup_timeout=self.startup_timeout,
                             ping_timeout=self.ping_timeout, poll_interval=self.poll_interval)
                return container
            except ServerStartError as err:
                if container is not None:
                    container.stop(grace=2.0)
                    group.discard(container)
                clash = any(marker in str(err).lower() for marker in _PORT_CLASH)
                if not clash or attempt or group.abort.is_set():
                    raise
                if self.log:
                    self.log(f"[container {index}] its port was taken; retrying on another")
        raise AssertionError("unreachable")

    def _create(self, model_dir: Path, environment: Mapping[str, str], index: int,
                network: str) -> DockerContainer:
        from docker.errors import APIError, DockerException, ImageNotFound
        from docker.types import DeviceRequest

        host_port = free_port()
        host_mode = network == "host"
        env = container_env(self.env, environment,
                            port=host_port if host_mode else CONTAINER_PORT,
                            bind_host="127.0.0.1" if host_mode else "0.0.0.0",
                            rewrite_loopback=not host_mode,
                            home="/tmp" if self.user else None)
        options: dict[str, Any] = {
            "command": ["serve"],
            "environment": env,
            "volumes": {str(model_dir): {"bind": MODEL_MOUNT, "mode": "ro"}},
            "labels": {"smserve.runner": "docker", "smserve.container-index": str(index)},
            "detach": True,
        }
        if self.user:
            options["user"] = self.user
        if host_mode:
            options["network_mode"] = "host"
        else:
            options["ports"] = {f"{CONTAINER_PORT}/tcp": ("127.0.0.1", host_port)}
            options["extra_hosts"] = {"host.docker.internal": "host-gateway"}
        gpu = self.placement().gpu
        if gpu:
            options["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        created = None
        try:
            created = self.client.containers.create(self.image, **options)
            created.start()
        except ImageNotFound as err:
            raise ServerStartError(
                f"no local image {self.image}; build it first (smserve image build "
                "--flavor cpu|gpu), or run the transform with the process runner") from err
        except (APIError, DockerException, OSError) as err:
            if created is not None:
                force_remove(created)
            raise ServerStartError(start_refused(err, index, self.image, gpu)) from err
        return DockerContainer(index, created, host_port, grace=self.stop_grace, log=self.log)


#: Values of the proposed ``SMSERVE_CONTAINER_RUNNER`` setting.
RUNNER_KINDS = ("process", "docker")


def choose_runner(kind: str, flavor: str, environ: Mapping[str, str], *,
                  tag: str | None = None, log: Callable[[str], None] | None = None) -> Any:
    """The container runner a local transform uses: ``process`` or ``docker``.

    Args:
        kind: ``process`` (``smserve serve`` in a subprocess) or ``docker`` (the
            image ``smserve-<flavor>:<tag>`` on the engine ``environ`` names).
        flavor: the model's image, ``cpu`` or ``gpu`` (``model.toml``'s ``image``).
        environ: the runner's environment (settings, AWS endpoint, DOCKER_HOST).
        tag: the image tag (default: the smserve version).
        log: receives the containers' output lines.

    Raises:
        ConfigError: an unknown kind or flavor.
        ImageError: ``docker`` with no reachable engine.
    """
    from serving.errors import ConfigError

    if kind == "process":
        return ProcessRunner(env=environ, log=log)
    if kind == "docker":
        return DockerRunner.for_flavor(flavor, environ, tag, log=log)
    raise ConfigError(f"SMSERVE_CONTAINER_RUNNER={kind!r} is not a runner; use "
                      f"{' or '.join(RUNNER_KINDS)}")


def close_runner(runner: Any) -> None:
    """Release what ``runner`` holds (a Docker runner's engine connection; nothing else)."""
    close = getattr(runner, "close", None)
    if callable(close):
        close()


def runner_description(runner: Any) -> str:
    """What runs a model's containers, in a few words (progress lines, reports)."""
    describe = getattr(runner, "describe", None)
    return str(describe()) if callable(describe) else "local process"
