"""multi-model-server's configuration, written to a run directory we own.

The properties come from ``sagemaker-inference`` itself (the same generator
AWS's framework images use, so ``SAGEMAKER_MODEL_SERVER_TIMEOUT``,
``SAGEMAKER_MODEL_SERVER_WORKERS`` and ``SAGEMAKER_MAX_PAYLOAD_IN_MB`` mean
what they mean there), fed from our :class:`~serving.settings.Settings`
instead of ``os.environ``, and written to ``<run dir>/config.properties``
instead of ``/etc``. Two things differ on purpose: the server binds to
``settings.bind_host`` (loopback on a developer's machine), and the model
server's own log goes to the console at INFO so a model's traceback is seen.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from serving.settings import UNLIMITED_PAYLOAD, Settings

HANDLER_SERVICE = "serving.server.handler_service:handle"
MODEL_NAME = "model"

_LOG4J2 = """<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{HH:mm:ss.SSS} [%-5p] %c{1} - %m%n"/>
    </Console>
    <File name="access_log" fileName="${env:LOG_LOCATION:-logs}/access_log.log">
      <PatternLayout pattern="%d{ISO8601} - %m%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="${env:SMSERVE_ACCESS_LOG:-off}" additivity="false">
      <AppenderRef ref="access_log"/>
    </Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="MODEL_METRICS" level="off"/>
    <Logger name="MMS_METRICS" level="off"/>
    <Logger name="MODEL_LOG" level="info"/>
    <Logger name="com.amazonaws.ml.mms" level="info"/>
    <!-- one line per request ("Backend response time"): off the hot path -->
    <Logger name="com.amazonaws.ml.mms.wlm.WorkerThread" level="warn"/>
    <Root level="warn">
      <AppenderRef ref="STDOUT"/>
    </Root>
  </Loggers>
</Configuration>
"""


@dataclass(frozen=True)
class _ToolkitEnvironment:
    """The attributes ``sagemaker_inference`` reads from its ``Environment``."""

    model_server_timeout: int
    model_server_timeout_seconds: int | None
    model_server_workers: int | None
    inference_http_port: int
    management_http_port: int
    vmargs: str
    max_request_size: int | None


def properties(settings: Settings, port: int) -> str:
    """The ``config.properties`` text for a server on ``port``."""
    from sagemaker_inference import model_server

    env = _ToolkitEnvironment(
        model_server_timeout=settings.model_server_timeout,
        model_server_timeout_seconds=None,
        model_server_workers=settings.model_server_workers,
        inference_http_port=port,
        management_http_port=port,
        vmargs=settings.model_server_vmargs,
        # MMS answers an oversize body with a bare 413; give it room so that
        # our handler answers bodies up to twice the limit with a JSON 413
        # that names the limit (beyond that, MMS's own 413 remains).
        max_request_size=min(2 * settings.max_payload_bytes, UNLIMITED_PAYLOAD),
    )
    text: str = model_server._generate_mms_config_properties(env, HANDLER_SERVICE)
    address = f"http://{settings.bind_host}:{port}"
    lines = []
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in {"inference_address", "management_address"}:
            line = f"{key}={address}"
        lines.append(line)
    # Responses (batch outputs) may be larger than requests.
    lines.append(f"max_response_size={UNLIMITED_PAYLOAD}")
    return "\n".join(lines) + "\n"


def write_config(settings: Settings, run_dir: Path, port: int) -> tuple[Path, Path]:
    """Write ``config.properties`` and ``log4j2.xml`` into ``run_dir``."""
    config = run_dir / "config.properties"
    config.write_text(properties(settings, port))
    log_config = run_dir / "log4j2.xml"
    log_config.write_text(_LOG4J2)
    return config, log_config


def command(run_dir: Path, model_dir: Path) -> list[str]:
    """The ``multi-model-server`` command line for ``model_dir``."""
    launcher = Path(sys.executable).with_name("multi-model-server")
    exe = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "mms.model_server"]
    return [
        *exe,
        "--start",
        "--foreground",
        "--mms-config", str(run_dir / "config.properties"),
        "--log-config", str(run_dir / "log4j2.xml"),
        "--model-store", str(model_dir.parent),
        # MMS resolves the model's URL against the model store.
        "--models", f"{MODEL_NAME}={model_dir.name}",
    ]
