"""``predict()``: request records in, decoded answers out, through a real batch transform.

The convenience the pipeline uses: upload the records as one JSON-lines
object under ``s3://bucket/<work_prefix><job>/input/``, run a ``Line`` /
``MultiRecord`` transform (``application/jsonlines`` in and out,
``AssembleWith=Line``) locally, read the ``.out`` object and decode one JSON
value per record, in request order.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from serving.aws import ClientFactory
from serving.errors import TransformError
from serving.runners.process import ProcessRunner
from serving.transform.dataplane import Progress
from serving.transform.job import run_transform
from serving.transform.spec import TransformJobSpec
from serving.transform.transfer import DataTransfer, encode_records

JSONLINES = "application/jsonlines"
INPUT_NAME = "requests.jsonl"


def _resource_name(text: str, fallback: str = "model") -> str:
    name = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:63].strip("-")
    return name or fallback


def decode_output(body: bytes, expected: int, where: str = "output") -> list[Any]:
    """One JSON value per non-empty line of ``body``; exactly ``expected`` of them.

    Raises:
        TransformError: a line is not JSON, or the count is wrong.
    """
    values = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            values.append(json.loads(line))
        except ValueError as err:
            raise TransformError(f"{where} line {number} is not JSON ({err}); the model must "
                                 "answer one JSON object per record", key=where) from err
    if len(values) != expected:
        raise TransformError(f"{where} has {len(values)} answers for {expected} request "
                             "records; the model must answer one JSON object per record "
                             "(JSON lines for several)", key=where)
    return values


def predict(model: str | Path, requests: Sequence[Any], clients: ClientFactory, bucket: str,
            work_prefix: str = "smserve-work/", job_name: str | None = None, *,
            runner: ProcessRunner | None = None, log: Callable[[str], None] | None = None,
            progress: Callable[[Progress], None] | None = None, model_name: str | None = None,
            instance_count: int = 1, batch_strategy: str = "MultiRecord",
            max_payload_mb: int = 6, max_concurrent: int | None = None,
            invocations_timeout: int | None = None, invocations_max_retries: int | None = None,
            environment: Mapping[str, str] | None = None,
            model_environment: Mapping[str, str] | None = None,
            image: str = "cpu") -> list[Any]:
    """Run ``requests`` through ``model`` as a local batch transform.

    Args:
        model: ``models/NAME``, an extracted model folder or a ``model.tar.gz``.
        requests: request records (``RequestRecord`` or dicts), in order.
        clients: where S3 is.
        bucket: the working bucket (inputs and outputs go under ``work_prefix``).
        work_prefix: key prefix for the job's files.
        job_name: the transform job's name (default: derived from the records,
            so the same requests give the same name and the same keys).
        runner: starts the containers (default: :class:`ProcessRunner`).
        log: receives job and container log lines.
        progress: receives a :class:`Progress` as records are answered.
        model_name: ``ModelName`` (default: from the model's folder name).
        instance_count: containers.
        batch_strategy: ``MultiRecord`` (default) or ``SingleRecord``.
        max_payload_mb: ``MaxPayloadInMB``.
        max_concurrent: ``MaxConcurrentTransforms`` (None: container or default).
        invocations_timeout: ``InvocationsTimeoutInSeconds`` (None: 600).
        invocations_max_retries: ``InvocationsMaxRetries`` (None: 3).
        environment: the job's ``Environment``.
        model_environment: the model's container environment.
        image: the model's image flavor (``cpu``/``gpu``; the docker runner uses it).

    Returns:
        the decoded answers, one per request record, in request order.

    Raises:
        TransformError: the job failed, or its output is not one JSON value per record.
    """
    if not requests:
        raise TransformError("predict() needs at least one request record")
    body = encode_records(requests)
    name = job_name or "predict-" + hashlib.sha256(body).hexdigest()[:16]
    prefix = work_prefix if not work_prefix or work_prefix.endswith("/") else work_prefix + "/"
    transfer = DataTransfer(clients.client("s3"), bucket, f"{prefix}{name}/")
    input_uri = transfer.upload_bytes(body, f"input/{INPUT_NAME}")
    output_uri = transfer.uri("output/")
    spec = TransformJobSpec.simple(
        name, model_name or _resource_name(Path(model).name.removesuffix(".tar.gz")),
        input_uri, output_uri, content_type=JSONLINES, accept=JSONLINES, split_type="Line",
        batch_strategy=batch_strategy, max_payload_mb=max_payload_mb,
        max_concurrent=max_concurrent, assemble_with="Line", instance_count=instance_count,
        invocations_timeout=invocations_timeout,
        invocations_max_retries=invocations_max_retries, environment=environment)
    run_transform(spec, model, clients, runner, log=log, progress=progress,
                  model_environment=model_environment, image=image)
    outputs = transfer.outputs(output_uri)
    out_name = INPUT_NAME + ".out"
    if out_name not in outputs:
        raise TransformError(f"the transform wrote no {output_uri}{out_name}", job=name)
    return decode_output(outputs[out_name], len(requests), where=f"{output_uri}{out_name}")
