"""Batch transform through the SageMaker API: the embedded stack's, or AWS's.

The same boto3 calls run a model's transform on AWS and on ``smserve local
up``: package the model, ``CreateModel`` (once per archive digest),
``CreateTransformJob`` under a deterministic name, wait, read the outputs.
A job of that name that already completed is adopted instead of run again;
one that failed or stopped is retried under the next ``-rN`` name.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from serving import __version__
from serving.aws import ClientFactory
from serving.errors import TransformError
from serving.modelspec import ModelSpec
from serving.transform.predict import INPUT_NAME, decode_output
from serving.transform.transfer import DataTransfer, encode_records

#: The role CreateModel names on the embedded stack (it checks none).
LOCAL_ROLE = "arn:aws:iam::123456789012:role/smserve-local"
TERMINAL = ("Completed", "Failed", "Stopped")
MAX_ATTEMPTS = 5


def default_image(flavor: str) -> str:
    """The image name ``smserve image build`` tags for a flavor."""
    return f"smserve-{flavor}:{__version__}"


class SageMakerJobs:
    """Models and transform jobs through the SageMaker API.

    Args:
        clients: the factory (``AWS_ENDPOINT_URL`` points it at the stack).
        role_arn: ``ExecutionRoleArn`` for ``CreateModel``.
        images: flavor (``cpu``/``gpu``) -> image URI (default: local tags).
        poll: seconds between ``DescribeTransformJob`` calls.
        sleep: the pause function (tests pass a fast one).
    """

    def __init__(self, clients: ClientFactory, *, role_arn: str = LOCAL_ROLE,
                 images: Mapping[str, str] | None = None, poll: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.clients = clients
        self.role_arn = role_arn
        self.images = dict(images or {})
        self.poll = poll
        self.sleep = sleep

    @property
    def _sm(self) -> Any:
        return self.clients.client("sagemaker")

    def ensure_model(self, spec: ModelSpec, bucket: str, work_prefix: str) -> str:
        """Package ``spec``'s folder, upload it, and create its model if missing.

        Returns:
            the model name, ``<name>-<digest of the archive>``: a changed model
            gets a new name, an unchanged one is reused.
        """
        from serving.package import build_archive

        with tempfile.TemporaryDirectory(prefix="smserve-package-") as tmp:
            archive = build_archive(spec.folder, Path(tmp) / "model.tar.gz")
            data = archive.read_bytes()
        environment = self.environment(spec)
        digest = hashlib.sha256(data + json.dumps(environment, sort_keys=True).encode()
                                ).hexdigest()[:10]
        name = f"{spec.name.replace('_', '-')}-{digest}"[:63]
        try:
            self._sm.describe_model(ModelName=name)
            return name
        except self._sm.exceptions.ClientError as err:
            if "Could not find model" not in str(err) and _code(err) not in (
                    "ValidationException", "ResourceNotFound"):
                raise
        transfer = DataTransfer(self.clients.client("s3"), bucket, f"{work_prefix}models/{name}/")
        uri = transfer.upload_bytes(data, "model.tar.gz")
        self._sm.create_model(
            ModelName=name,
            PrimaryContainer={"Image": self.images.get(spec.image, default_image(spec.image)),
                              "ModelDataUrl": uri,
                              "Environment": environment},
            ExecutionRoleArn=self.role_arn,
        )
        return name

    def environment(self, spec: ModelSpec) -> dict[str, str]:
        """The model's container environment: ``model.toml``'s, plus the allow-lists.

        The container checks every request against ``SMSERVE_ALLOWED_BUCKETS``
        and ``SMSERVE_OUTPUT_PREFIXES``; they travel with the model, from the
        settings this client was built with.
        """
        settings = self.clients.settings
        env = spec.container_environment()
        if settings.allowed_buckets:
            env.setdefault("SMSERVE_ALLOWED_BUCKETS", ",".join(settings.allowed_buckets))
        if settings.output_prefixes != ("",):
            env.setdefault("SMSERVE_OUTPUT_PREFIXES", ",".join(settings.output_prefixes))
        return env

    def request(self, job_name: str, model_name: str, spec: ModelSpec, input_uri: str,
                output_uri: str) -> dict[str, Any]:
        """The ``CreateTransformJob`` request for ``spec``'s batch settings."""
        return {
            "TransformJobName": job_name,
            "ModelName": model_name,
            "BatchStrategy": spec.batch_strategy,
            "MaxPayloadInMB": spec.max_payload_mb,
            "MaxConcurrentTransforms": spec.max_concurrent_transforms,
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                "ContentType": spec.content_type,
                "SplitType": spec.split_type,
            },
            "TransformOutput": {"S3OutputPath": output_uri, "Accept": spec.accept,
                                "AssembleWith": spec.assemble_with},
            "TransformResources": {"InstanceType": spec.instance_type,
                                   "InstanceCount": spec.instance_count},
        }

    def run(self, request: Mapping[str, Any],
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Run (or adopt) the job ``request`` names and wait for it.

        Returns:
            the final ``DescribeTransformJob`` answer of a ``Completed`` job.

        Raises:
            TransformError: the job failed or was stopped (its ``FailureReason``).
        """
        base = str(request["TransformJobName"])
        for attempt in range(1, MAX_ATTEMPTS + 1):
            name = base if attempt == 1 else f"{base[:59]}-r{attempt}"
            found = self._describe(name)
            if found is None:
                self._sm.create_transform_job(**{**request, "TransformJobName": name})
            elif found["TransformJobStatus"] in ("Failed", "Stopped"):
                continue  # a finished failure: the next attempt gets the next name
            final = self.wait(name, progress)
            if final["TransformJobStatus"] == "Completed":
                return final
            raise TransformError(
                f"transform job {name} {final['TransformJobStatus'].lower()}: "
                f"{final.get('FailureReason', 'no reason given')}",
                job=name, reason=final.get("FailureReason"))
        raise TransformError(f"transform job {base} failed {MAX_ATTEMPTS} times; see the "
                             "earlier jobs' FailureReason", job=base)

    def wait(self, name: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Poll ``DescribeTransformJob`` until the job is Completed, Failed or Stopped."""
        last = None
        while True:
            found = self._describe(name)
            if found is None:
                raise TransformError(f"transform job {name} disappeared", job=name)
            status = found["TransformJobStatus"]
            if progress is not None and status != last:
                progress(status)
            last = status
            if status in TERMINAL:
                return found
            self.sleep(self.poll)

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._sm.describe_transform_job(TransformJobName=name)
            return found
        except self._sm.exceptions.ClientError as err:
            if _code(err) in ("ResourceNotFound", "ValidationException"):
                return None
            raise


def _code(err: Exception) -> str:
    return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))


def predict_via_api(jobs: SageMakerJobs, spec: ModelSpec, requests: Sequence[Any],
                    bucket: str, job_name: str, work_prefix: str = "smserve-work/",
                    progress: Callable[[str], None] | None = None) -> list[Any]:
    """:func:`serving.transform.predict`, through ``CreateTransformJob``.

    Uploads the request records as one JSON-lines object, runs (or adopts)
    the job, and returns one decoded answer per record, in order.
    """
    if not requests:
        raise TransformError("predict_via_api() needs at least one request record")
    transfer = DataTransfer(jobs.clients.client("s3"), bucket, f"{work_prefix}{job_name}/")
    input_uri = transfer.upload_bytes(encode_records(requests), f"input/{INPUT_NAME}")
    output_uri = transfer.uri("output/")
    model_name = jobs.ensure_model(spec, bucket, work_prefix)
    jobs.run(jobs.request(job_name, model_name, spec, input_uri, output_uri), progress)
    outputs = transfer.outputs(output_uri)
    out_name = INPUT_NAME + ".out"
    if out_name not in outputs:
        raise TransformError(f"the transform wrote no {output_uri}{out_name}", job=job_name)
    return decode_output(outputs[out_name], len(requests), where=f"{output_uri}{out_name}")
