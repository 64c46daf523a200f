"""Batch transform through the SageMaker API: the embedded stack's, or AWS's.

The one path that creates and adopts models and transform jobs, for
``smserve pipeline run --api``, the demo and the Airflow transform operator
(``dags/smserve_dags/operators/transform.py``) alike: package the model, ``CreateModel``
from the configured ECR image (never a local tag) under
``<prefix><model>-<digest of archive, environment and image>``, so a changed
model or image gets a new model and an unchanged one is reused;
``CreateTransformJob`` under a deterministic name, adopting a job of that
name that already exists. :meth:`SageMakerJobs.run` waits for the job (the
CLI); the operator polls with :meth:`SageMakerJobs.describe` instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from serving import scratch
from serving.errors import ConfigError, TransformError
from serving.modelspec import ModelSpec
from serving.transform.predict import INPUT_NAME, decode_output
from serving.transform.transfer import DataTransfer, encode_records

#: The role CreateModel names on the embedded stack (it checks none).
LOCAL_ROLE = "arn:aws:iam::123456789012:role/smserve-local"
TERMINAL = ("Completed", "Failed", "Stopped")
MAX_ATTEMPTS = 5
#: The prefix of every model this path creates.
MODEL_PREFIX = "smserve-"


def model_name(prefix: str, model: str, archive: bytes, environment: Mapping[str, str],
               image: str) -> str:
    """``<prefix><model>-<10 hex digits>``: a valid SageMaker name, new for any change.

    The digest covers the archive's bytes, the container environment and the
    image URI, so a changed model, setting or image gets a new model.
    """
    digest = hashlib.sha256(archive + json.dumps(environment, sort_keys=True).encode()
                            + image.encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{prefix}{model}").strip("-")[:52].strip("-")
    return f"{slug or 'model'}-{digest}"


class SageMakerJobs:
    """Models and transform jobs through the SageMaker API.

    Args:
        clients: anything with ``client(name)`` for ``s3`` and ``sagemaker`` (a
            :class:`~serving.aws.ClientFactory`, or the DAG's hooks); its
            ``settings`` (when it has them) give the containers' allow-lists.
        role_arn: ``ExecutionRoleArn`` for ``CreateModel``.
        images: flavor (``cpu``/``gpu``) -> ECR image URI (see :mod:`serving.imagerecord`).
        poll: seconds between ``DescribeTransformJob`` calls.
        sleep: the pause function (tests pass a fast one).
        model_prefix: the start of every model name.
        allowed_buckets: ``SMSERVE_ALLOWED_BUCKETS`` for the containers (default: settings').
        output_prefixes: ``SMSERVE_OUTPUT_PREFIXES`` for the containers (default: settings').
    """

    def __init__(self, clients: Any, *, role_arn: str = LOCAL_ROLE,
                 images: Mapping[str, str] | None = None, poll: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep,
                 model_prefix: str = MODEL_PREFIX,
                 allowed_buckets: Sequence[str] | None = None,
                 output_prefixes: Sequence[str] | None = None) -> None:
        self.clients = clients
        self.role_arn = role_arn
        self.images = dict(images or {})
        self.poll = poll
        self.sleep = sleep
        self.model_prefix = model_prefix
        settings = getattr(clients, "settings", None)
        self.allowed_buckets = tuple(allowed_buckets if allowed_buckets is not None else
                                     getattr(settings, "allowed_buckets", ()))
        self.output_prefixes = tuple(output_prefixes if output_prefixes is not None else
                                     getattr(settings, "output_prefixes", ("",)))

    @property
    def _sm(self) -> Any:
        return self.clients.client("sagemaker")

    def image_for(self, spec: ModelSpec) -> str:
        """The ECR image URI ``spec``'s flavor runs on.

        Raises:
            ConfigError: none is configured for that flavor.
        """
        image = self.images.get(spec.image)
        if not image:
            raise ConfigError(
                f"no ECR image for {spec.name}'s {spec.image} image: push one (smserve image "
                f"push --flavor {spec.image} --repository smserve-{spec.image}) or set "
                f"SMSERVE_IMAGE_{spec.image.upper()} (Airflow: images.{spec.image} in the "
                "Variable) to an ECR image URI with a tag", model=spec.name)
        return image

    def ensure_model(self, spec: ModelSpec, bucket: str, work_prefix: str,
                     extra_environment: Mapping[str, str] | None = None) -> str:
        """Package ``spec``'s folder and create its model if missing (else reuse it).

        Args:
            spec: the model.
            bucket: where ``model.tar.gz`` goes (``<work_prefix>models/<name>/``).
            work_prefix: the key prefix of the toolkit's own objects.
            extra_environment: container variables to add or override.

        Returns:
            the model name (see :func:`model_name`).

        Raises:
            ConfigError: no image for the model's flavor.
            TransformError: CreateModel was refused (an image ECR does not hold...).
        """
        from serving.package import build_archive

        image = self.image_for(spec)
        with scratch.folder("smserve-package-") as tmp:
            archive = build_archive(spec.folder, Path(tmp) / "model.tar.gz")
            data = archive.read_bytes()
        environment = {**self.environment(spec), **(extra_environment or {})}
        name = model_name(self.model_prefix, spec.name, data, environment, image)
        try:
            self._sm.describe_model(ModelName=name)
            return name
        except self._sm.exceptions.ClientError as err:
            if "Could not find model" not in str(err) and _code(err) not in (
                    "ValidationException", "ResourceNotFound"):
                raise
        transfer = DataTransfer(self.clients.client("s3"), bucket, f"{work_prefix}models/{name}/")
        uri = transfer.upload_bytes(data, "model.tar.gz")
        try:
            self._sm.create_model(
                ModelName=name, ExecutionRoleArn=self.role_arn,
                PrimaryContainer={"Image": image, "ModelDataUrl": uri,
                                  "Environment": environment})
        except self._sm.exceptions.ClientError as err:
            text = str(getattr(err, "response", {}).get("Error", {}).get("Message", err))
            if "already existing" in text:  # created meanwhile (another task, another poke)
                return name
            raise TransformError(f"CreateModel {name} ({image}) was refused: {text}",
                                 model=spec.name, image=image) from err
        return name

    def environment(self, spec: ModelSpec) -> dict[str, str]:
        """The model's container environment: ``model.toml``'s, plus the allow-lists.

        The container checks every request against ``SMSERVE_ALLOWED_BUCKETS``
        and ``SMSERVE_OUTPUT_PREFIXES``; they travel with the model.
        """
        env = spec.container_environment()
        if self.allowed_buckets:
            env.setdefault("SMSERVE_ALLOWED_BUCKETS", ",".join(self.allowed_buckets))
        if self.output_prefixes != ("",):
            env.setdefault("SMSERVE_OUTPUT_PREFIXES", ",".join(self.output_prefixes))
        return env

    def request(self, job_name: str, model_name: str, spec: ModelSpec, input_uri: str,
                output_uri: str, tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The ``CreateTransformJob`` request for ``spec``'s batch settings."""
        request: dict[str, Any] = {
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
        if tags:
            request["Tags"] = [{"Key": k, "Value": v[:256]} for k, v in tags.items()]
        return request

    def create(self, request: Mapping[str, Any]) -> bool:
        """``CreateTransformJob``; False when a job of that name exists already (adopted).

        Raises:
            TransformError: the service refused the request (its message).
        """
        try:
            self._sm.create_transform_job(**request)
        except self._sm.exceptions.ClientError as err:
            if _code(err) == "ResourceInUse":  # another poke or run created it a moment ago
                return False
            text = str(getattr(err, "response", {}).get("Error", {}).get("Message", err))
            raise TransformError(f"CreateTransformJob {request['TransformJobName']} was "
                                 f"refused: {_code(err)}: {text}",
                                 job=request["TransformJobName"]) from err
        return True

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
            found = self.describe(name)
            if found is None:
                self.create({**request, "TransformJobName": name})
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
            found = self.describe(name)
            if found is None:
                raise TransformError(f"transform job {name} disappeared", job=name)
            status = found["TransformJobStatus"]
            if progress is not None and status != last:
                progress(status)
            last = status
            if status in TERMINAL:
                return found
            self.sleep(self.poll)

    def describe(self, name: str) -> dict[str, Any] | None:
        """``DescribeTransformJob``, or None when there is no such job."""
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
