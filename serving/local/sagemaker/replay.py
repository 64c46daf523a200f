"""Re-send the records of a transform job's failed object, in the foreground.

:func:`load_job` finds what a job ran: its request and model through the
SageMaker API (``DescribeTransformJob``, ``DescribeModel``), and its failed
objects from the embedded stack's record of the job (``GET
/_smserve/sagemaker/transform-jobs/<name>``). Against an endpoint without
that record (AWS itself), the failed objects are the input objects with no
``.out`` object. :func:`plan` cuts one object into the request bodies the job
sent (same split, same batch settings), or one record alone.
:class:`InProcessSender` drives the handlers in this process (a breakpoint in
``predict_fn`` stops there); :class:`ServerSender` starts the model server in
the foreground with its log on the terminal.
"""

from __future__ import annotations

import contextlib
import json
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving._environ import model_environment
from serving.aws import ClientFactory
from serving.errors import ConfigError, TransformError, status_of
from serving.transform.batching import Batch, make_batcher
from serving.transform.listing import list_inputs, output_location
from serving.transform.spec import TransformJobSpec, parse_s3_uri
from serving.transform.split import decompress, split_records

RECORD_PATH = "/_smserve/sagemaker/transform-jobs/"
_REQUEST_FIELDS = ("TransformJobName", "ModelName", "MaxConcurrentTransforms",
                   "ModelClientConfig", "MaxPayloadInMB", "BatchStrategy", "Environment",
                   "TransformInput", "TransformOutput", "TransformResources", "DataProcessing",
                   "DataCaptureConfig", "ExperimentConfig")
SHOWN_BYTES = 300


@dataclass(frozen=True)
class FailedObject:
    """An input object the job did not write an output for.

    Attributes:
        bucket: its bucket.
        key: its key.
        error: what the job said about it (None when only the missing output says so).
    """

    bucket: str
    key: str
    error: str | None = None


@dataclass(frozen=True)
class JobInfo:
    """What a job ran.

    Attributes:
        spec: its request.
        container: its model's container (``Image``, ``ModelDataUrl``, ``Environment``).
        status: its status.
        failed: its failed objects, by key.
        params: the batch settings it ran with (``BatchStrategy``, ``MaxPayloadInMB``).
    """

    spec: TransformJobSpec
    container: Mapping[str, Any]
    status: str
    failed: list[FailedObject] = field(default_factory=list)
    params: Mapping[str, Any] = field(default_factory=dict)

    def pick(self, key: str | None) -> FailedObject:
        """The object to replay: ``key`` (a key or ``s3://`` URI), else the first failed one.

        Raises:
            ConfigError: no key given and nothing failed.
        """
        if key is None:
            if not self.failed:
                raise ConfigError(f"transform job {self.spec.name} ({self.status}) has no failed "
                                  "objects; pass --object KEY to replay one anyway")
            return self.failed[0]
        bucket = self.spec.input_bucket
        if key.startswith("s3://"):
            bucket, key = parse_s3_uri(key, "--object")
        for failed in self.failed:
            if failed.key == key and failed.bucket == bucket:
                return failed
        return FailedObject(bucket, key)


def load_job(clients: ClientFactory, name: str) -> JobInfo:
    """Find what job ``name`` ran, and which of its objects failed.

    Raises:
        botocore's ClientError: the API does not know the job or its model.
    """
    record = _stack_record(clients, name)
    sagemaker = clients.client("sagemaker")
    if record is not None:
        described, model = record["TransformJob"], record["Model"]
    else:
        described = sagemaker.describe_transform_job(TransformJobName=name)
        model = sagemaker.describe_model(ModelName=described["ModelName"])
    spec = TransformJobSpec.from_request({k: described[k] for k in _REQUEST_FIELDS
                                          if k in described})
    containers = [model["PrimaryContainer"]] if model.get("PrimaryContainer") else list(
        model.get("Containers") or [])
    if not containers:
        raise ConfigError(f"model {model.get('ModelName')} has no container to replay")
    result = (record or {}).get("Result")
    if result is not None:
        failed = [FailedObject(o["bucket"], o["key"], o.get("error"))
                  for o in result["objects"] if not o["ok"]]
        params = dict(result.get("params") or {})
    else:
        failed, params = _missing_outputs(clients, spec), {}
    return JobInfo(spec, containers[0], described["TransformJobStatus"], failed, params)


def _stack_record(clients: ClientFactory, name: str) -> dict[str, Any] | None:
    endpoint = clients.settings.endpoint_for("sagemaker")
    if not endpoint:
        return None
    url = endpoint.rstrip("/") + RECORD_PATH + urllib.parse.quote(name)
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None  # not the embedded stack (or no record): ask the API instead
    return doc if isinstance(doc, dict) and "TransformJob" in doc else None


def _missing_outputs(clients: ClientFactory, spec: TransformJobSpec) -> list[FailedObject]:
    s3 = clients.client("s3")
    out = []
    for obj in list_inputs(s3, spec):
        bucket, key = output_location(spec, obj)
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except Exception:
            out.append(FailedObject(obj.bucket, obj.key))
    return out


def plan(info: JobInfo, s3: Any, obj: FailedObject, record: int | None = None) -> list[Batch]:
    """The request bodies the job sent for ``obj`` (or record ``record`` alone).

    Raises:
        TransformError: the object cannot be read or split, or a record is over
            ``MaxPayloadInMB`` (replay it alone with ``record``).
        ConfigError: ``record`` is not in the object.
    """
    spec = info.spec
    where = f"s3://{obj.bucket}/{obj.key}"
    try:
        raw = s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read()
    except Exception as err:
        raise TransformError(f"cannot read {where}: {err}", key=obj.key) from err
    data = decompress(raw, spec.compression, limit=1 << 30, where=where)
    records = split_records(data, spec.split_type, where=where)
    if record is not None:
        if not 0 <= record < len(records):
            raise ConfigError(f"{where} has {len(records)} record(s); --record must be 0.."
                              f"{len(records) - 1}", field="--record")
        return [Batch(record, 1, records[record].single)]
    strategy = info.params.get("BatchStrategy") or spec.batch_strategy or "MultiRecord"
    payload = info.params.get("MaxPayloadInMB")
    if payload is None:
        payload = spec.max_payload_mb if spec.max_payload_mb is not None else 6
    return list(make_batcher(strategy, payload, spec.split_type).batches(records, where))


# --- senders ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one request got: HTTP-like status, body, and a traceback when in-process."""

    status: int
    body: bytes
    trace: str | None = None


def container_environ(environment: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
    """Put the container's environment into this process for a while, as the container has it."""
    return model_environment(environment)


class InProcessSender:
    """The model's handlers in this process: ``model_fn`` once, then each body.

    Args:
        model_dir: the extracted model (``code/`` inside).
        program: the handler module's file name.
        content_type: ``Content-Type`` of every body (None: refused, as the server does).
        accept: ``Accept`` (None: the container's default).
        default_accept: what the server uses when there is no ``Accept``.
    """

    def __init__(self, model_dir: Path, program: str, content_type: str | None,
                 accept: str | None, default_accept: str) -> None:
        from serving.handler import load_handlers

        self.handlers = load_handlers(model_dir, program)
        self.model = self.handlers.load_model(model_dir)
        self.content_type = content_type
        self.accept = accept if accept and accept.strip() != "*/*" else default_accept

    def send(self, body: bytes) -> Answer:
        """Run ``body`` through the handlers (a breakpoint in them stops here)."""
        from serving.errors import BadRequest, error_body

        try:
            if not self.content_type:
                raise BadRequest("the request has no Content-Type; the job's "
                                 "TransformInput.ContentType is not set")
            response = self.handlers.invoke(self.model, body, self.content_type, self.accept)
        except Exception as err:
            return Answer(status_of(err), error_body(err), traceback.format_exc())
        return Answer(200, response.body)

    def close(self) -> None:
        """Nothing to stop."""


class ServerSender:
    """The model server (``smserve serve``) in the foreground, its log on ``echo``.

    Args:
        model_dir: the extracted model.
        environment: the container's environment.
        content_type: ``Content-Type`` of every body.
        accept: ``Accept`` of every body.
        timeout: seconds per invocation.
        echo: where the server's log lines go.
    """

    def __init__(self, model_dir: Path, environment: Mapping[str, str],
                 content_type: str | None, accept: str | None, timeout: float,
                 echo: Callable[[str], None]) -> None:
        from serving.ports import free_port
        from serving.server.serve import start
        from serving.settings import Settings
        from serving.transform.invoke import Invoker

        settings = Settings.from_environ({**Settings.from_environ().environ, **environment})
        self.server = start(settings, model_dir, port=free_port(), echo=echo)
        self.invoker = Invoker(self.server.url, content_type=content_type, accept=accept,
                               timeout=timeout, retries=0)

    def send(self, body: bytes) -> Answer:
        """POST ``body`` to ``/invocations``; a refusal returns once the server logged it."""
        logged = self.server.answers_logged
        try:
            return Answer(200, self.invoker.invoke(body))
        except TransformError as err:
            status = err.context.get("status") or 0
            if status:  # an answer: the handler's log record of it may still be on its way
                self.server.wait_answer_logged(logged, timeout=5)
            return Answer(int(status), str(err.context.get("detail") or err.message).encode())

    def close(self) -> None:
        """Stop the server and remove its run directory."""
        import shutil

        self.invoker.close()
        self.server.stop()
        shutil.rmtree(self.server.run_dir, ignore_errors=True)


def shown(body: bytes, limit: int = SHOWN_BYTES) -> str:
    """``body`` as one printable line, cut at ``limit`` characters."""
    text = body.decode("utf-8", "replace").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."
