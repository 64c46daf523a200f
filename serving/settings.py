"""Settings: read once, at start-up, from a mapping you can pass in.

Nothing else in the toolkit reads ``os.environ``. Build a :class:`Settings`
with :meth:`Settings.from_environ` (``os.environ`` by default) and pass it
down. A bad value raises :class:`~serving.errors.ConfigError` naming the
variable and the value.

Variables (SageMaker's own, then ours):

=====================================  =========================================
``SAGEMAKER_BASE_DIR``                 base of ``model/`` (default ``/opt/ml``)
``SAGEMAKER_PROGRAM``                  entry module in ``model/code`` (``serving.py``)
``SAGEMAKER_BIND_TO_PORT``             port the server listens on (8080)
``SAGEMAKER_MODEL_SERVER_TIMEOUT``     model server response timeout, s (60)
``SAGEMAKER_MODEL_SERVER_WORKERS``     worker processes (model server default)
``SAGEMAKER_MAX_PAYLOAD_IN_MB``        largest request body, MB; 0 = no limit (MMS: 6,553,500 bytes)
``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT``  accept used when a request has none
``SAGEMAKER_MODEL_SERVER_VMARGS``      JVM flags for the model server (tuned for start-up)
``SAGEMAKER_BATCH``                    ``true`` inside a batch transform
``SMSERVE_BIND_HOST``                  interface to bind (127.0.0.1; images: 0.0.0.0)
``SMSERVE_ALLOWED_BUCKETS``            buckets requests may name (comma list; ``*`` = any)
``SMSERVE_OUTPUT_PREFIXES``            key prefixes outputs may be written under
``SMSERVE_FETCH_CONCURRENCY``          parallel S3 reads per request (8)
``SMSERVE_MAX_INPUT_MB``               largest S3 input object, MB (1024)
``SMSERVE_STARTUP_TIMEOUT``            seconds to wait for the model to load (600)
``SMSERVE_CONTAINER_STARTUP_TIMEOUT``  seconds the embedded SageMaker API waits for a job's
                                       container to pass ``/ping`` (600)
``SMSERVE_LOCAL_JOB_STARTUP_SECONDS``  the embedded SageMaker API waits this long before a
                                       job's containers start, as AWS provisions (0; float)
``SMSERVE_WARM_IDLE_S``                the embedded SageMaker API keeps a job's model server
                                       warm this many seconds for the next job on the same
                                       model and environment; 0 = never (``local up``: 300)
``SMSERVE_RUN_DIR``                    the server's private run directory (set by ``serve``)
``SMSERVE_CONTAINER_RUNNER``           local transform containers: process (default) or docker
``SMSERVE_DOCKER_GPUS``                docker runner, GPU image: auto (a GPU where the engine has
                                       an NVIDIA runtime, else the CPU), all (always ask), none
``SMSERVE_PYTHON_IMAGE``               base images of the serving images (build arguments
``SMSERVE_BUILD_IMAGE``                PYTHON_IMAGE, BUILD_IMAGE, CUDA_IMAGE; default: the
``SMSERVE_CUDA_IMAGE``                 Dockerfiles' own, see containers/README.md)
``SMSERVE_IMAGES_FILE``                where ``smserve image push`` records image URIs
                                       (``.smserve/images.json``)
``SMSERVE_IMAGE_CPU`` / ``_GPU``       the ECR image URI a flavor's models run on (overrides
                                       the images file)
``AWS_REGION`` / ``AWS_DEFAULT_REGION``  region (us-east-1)
``AWS_ENDPOINT_URL[_<SERVICE>]``       endpoint overrides (the embedded stack)
=====================================  =========================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from serving.errors import ConfigError

MB = 1024 * 1024
#: What "no limit" (``SAGEMAKER_MAX_PAYLOAD_IN_MB=0``) means to the model server:
#: the largest body Netty's aggregator takes.
UNLIMITED_PAYLOAD = 2**31 - 1
#: JVM flags for multi-model-server's front end: it is a thin HTTP relay, so a
#: fast start (C1 only, serial GC, class-data sharing) beats peak JIT speed.
DEFAULT_VMARGS = ("-XX:-UseContainerSupport -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "
                  "-Xshare:auto -Xss512k")

#: The serving images' base-image build arguments; ``SMSERVE_<ARG>`` sets each.
BASE_IMAGE_ARGS = ("PYTHON_IMAGE", "BUILD_IMAGE", "CUDA_IMAGE")


def _int(env: Mapping[str, str], key: str, default: int | None, *, low: int = 0,
         high: int | None = None) -> int | None:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not an integer; set it to a whole number") from None
    if value < low or (high is not None and value > high):
        span = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{key}={value} is out of range; use {span}")
    return value


def _seconds(env: Mapping[str, str], key: str) -> float:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r} is not a number; set it to seconds, like 1.25") from None
    if not 0 <= value <= 24 * 3600:
        raise ConfigError(f"{key}={value:g} is out of range; use 0..86400 seconds")
    return value


def _list(env: Mapping[str, str], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = env.get(key)
    if raw is None:
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{key}={raw!r} is not a boolean; use true or false")


def _choice(env: Mapping[str, str], key: str, default: str, options: tuple[str, ...]) -> str:
    raw = (env.get(key) or "").strip().lower()
    if not raw:
        return default
    if raw not in options:
        raise ConfigError(f"{key}={env.get(key)!r} is not one of {', '.join(options)}")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything the toolkit reads from its environment, typed."""

    base_dir: Path = Path("/opt/ml")
    program: str = "serving.py"
    port: int = 8080
    bind_host: str = "127.0.0.1"
    model_server_timeout: int = 60
    model_server_workers: int | None = None
    max_payload_mb: int | None = None
    default_accept: str = "application/json"
    model_server_vmargs: str = DEFAULT_VMARGS
    batch: bool = False
    allowed_buckets: tuple[str, ...] = ()
    output_prefixes: tuple[str, ...] = ("",)
    fetch_concurrency: int = 8
    max_input_bytes: int = 1024 * MB
    startup_timeout: int = 600
    container_startup_timeout: int = 600
    local_job_startup_seconds: float = 0.0
    warm_idle_s: int = 0
    run_dir: Path | None = None
    container_runner: str = "process"
    docker_gpus: str = "auto"
    base_images: Mapping[str, str] = field(default_factory=dict)
    images_file: Path = Path(".smserve/images.json")
    image_uris: Mapping[str, str] = field(default_factory=dict)
    region: str = "us-east-1"
    endpoint_url: str | None = None
    service_endpoints: Mapping[str, str] = field(default_factory=dict)
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read settings from ``environ`` (default: the process environment)."""
        env = dict(os.environ if environ is None else environ)
        program = env.get("SAGEMAKER_PROGRAM") or "serving.py"
        if "/" in program or program.startswith("."):
            raise ConfigError(
                f"SAGEMAKER_PROGRAM={program!r} must be a module file name in model/code, "
                "like serving.py"
            )
        endpoints = {
            key[len("AWS_ENDPOINT_URL_"):].lower(): value
            for key, value in env.items()
            if key.startswith("AWS_ENDPOINT_URL_") and value
        }
        return cls(
            base_dir=Path(env.get("SAGEMAKER_BASE_DIR") or "/opt/ml"),
            program=program,
            port=_int(env, "SAGEMAKER_BIND_TO_PORT", 8080, low=1, high=65535) or 8080,
            bind_host=env.get("SMSERVE_BIND_HOST") or "127.0.0.1",
            model_server_timeout=_int(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", 60, low=1) or 60,
            model_server_workers=_int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", None, low=1),
            max_payload_mb=_int(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", None, low=0, high=100),
            default_accept=env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT") or "application/json",
            model_server_vmargs=env.get("SAGEMAKER_MODEL_SERVER_VMARGS") or DEFAULT_VMARGS,
            batch=_bool(env, "SAGEMAKER_BATCH", False),
            allowed_buckets=_list(env, "SMSERVE_ALLOWED_BUCKETS", ()),
            output_prefixes=_list(env, "SMSERVE_OUTPUT_PREFIXES", ("",)),
            fetch_concurrency=_int(env, "SMSERVE_FETCH_CONCURRENCY", 8, low=1, high=256) or 8,
            max_input_bytes=(_int(env, "SMSERVE_MAX_INPUT_MB", 1024, low=1) or 1024) * MB,
            startup_timeout=_int(env, "SMSERVE_STARTUP_TIMEOUT", 600, low=1) or 600,
            container_startup_timeout=_int(env, "SMSERVE_CONTAINER_STARTUP_TIMEOUT", 600,
                                           low=1) or 600,
            local_job_startup_seconds=_seconds(env, "SMSERVE_LOCAL_JOB_STARTUP_SECONDS"),
            warm_idle_s=_int(env, "SMSERVE_WARM_IDLE_S", 0, low=0) or 0,
            run_dir=Path(env["SMSERVE_RUN_DIR"]) if env.get("SMSERVE_RUN_DIR") else None,
            container_runner=_choice(env, "SMSERVE_CONTAINER_RUNNER", "process",
                                     ("process", "docker")),
            docker_gpus=_choice(env, "SMSERVE_DOCKER_GPUS", "auto", ("auto", "all", "none")),
            base_images={arg: env[f"SMSERVE_{arg}"].strip() for arg in BASE_IMAGE_ARGS
                         if env.get(f"SMSERVE_{arg}", "").strip()},
            images_file=Path(env.get("SMSERVE_IMAGES_FILE") or ".smserve/images.json"),
            image_uris={flavor: env[f"SMSERVE_IMAGE_{flavor.upper()}"].strip()
                        for flavor in ("cpu", "gpu") if env.get(f"SMSERVE_IMAGE_{flavor.upper()}")},
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            service_endpoints=endpoints,
            environ=env,
        )

    @property
    def model_dir(self) -> Path:
        """``<base>/model``: where the model archive is extracted."""
        return self.base_dir / "model"

    @property
    def code_dir(self) -> Path:
        """``<base>/model/code``: the handler module and its code."""
        return self.model_dir / "code"

    @property
    def max_payload_bytes(self) -> int:
        """Largest request body the server accepts (MMS's default when unset, 2 GiB for 0)."""
        if self.max_payload_mb is None:
            return 6_553_500
        return self.max_payload_mb * MB if self.max_payload_mb else UNLIMITED_PAYLOAD

    def endpoint_for(self, service: str) -> str | None:
        """The endpoint URL for ``service`` (``s3``, ``sqs``...), or None for AWS's own."""
        key = service.replace("-", "_").lower()
        return self.service_endpoints.get(key) or self.endpoint_url

    def with_environ(self, extra: Mapping[str, str]) -> Settings:
        """Settings read again from this environment with ``extra`` on top.

        For a process that starts servers with a different environment (the
        embedded stack's endpoint, an allow-list) than its own.
        """
        return Settings.from_environ({**self.environ, **extra})

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced."""
        return replace(self, **changes)
