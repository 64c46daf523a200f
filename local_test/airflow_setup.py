"""Everything the pipeline DAGs need on the embedded stack (or on AWS), and Airflow on SQLite.

Creates what ``smserve_dags/config.py``'s ``dev`` defaults name: the external bucket,
our bucket, the queue with a redrive policy to its dead-letter queue, an
execution role and, when the endpoint serves SageMaker, an ECR image per
flavor (the pushed one, else one recorded in the stack's ECR) and one SageMaker
model per model folder, made as the transform task makes them. Also the
Airflow side of a local run: the environment (a private ``AIRFLOW_HOME``,
SQLite, ``dags/``, the ``aws_default`` connection pointed at the stack) and
the database. Run it against a stack that ``smserve local up`` keeps running::

    smserve local up                      # in one terminal; it prints export lines
    export AWS_ENDPOINT_URL=...           # in another, as printed
    python -m local_test.airflow_setup

Tests, the demo and the benchmark call the functions instead.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
MODELS = ROOT / "models"
ROLE_NAME = "smserve-sagemaker-execution"
#: Where :func:`isolated_home` keeps the folder it made (shared by every conftest of a run).
TEST_HOME_VARIABLE = "SMSERVE_AIRFLOW_TEST_HOME"
_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


@dataclass(frozen=True)
class PipelineResources:
    """Names of what one pipeline environment uses (the ``dev`` defaults unless given).

    Attributes:
        external_bucket: where the sync DAG copies from.
        bucket: our bucket.
        queue: the queue of new objects.
        dead_letter_queue: where SQS moves a message after ``max_receive_count`` receives.
        model_prefix: SageMaker model = prefix + model name (``_`` -> ``-``).
        max_receive_count: the redrive policy's ``maxReceiveCount``.
        output_prefix: where model outputs go.
        settings: more keys for the Variable (``max_wait_seconds``, ...).
    """

    external_bucket: str = "smserve-dev-external"
    bucket: str = "smserve-dev"
    queue: str = "smserve-dev-preprocessed"
    dead_letter_queue: str = "smserve-dev-preprocessed-dlq"
    model_prefix: str = "smserve-"
    max_receive_count: int = 3
    output_prefix: str = "results/"
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def unique(cls, tag: str, **changes: Any) -> PipelineResources:
        """Resources whose names carry ``tag`` (tests: one set per test)."""
        return cls(external_bucket=f"ext-{tag}", bucket=f"own-{tag}", queue=f"queue-{tag}",
                   dead_letter_queue=f"queue-{tag}-dlq", model_prefix=f"{tag}-", **changes)

    def variable(self, **settings: Any) -> dict[str, Any]:
        """The ``smserve_<env>`` Variable's value for these resources (plus ``settings``)."""
        return {"external_bucket": self.external_bucket, "bucket": self.bucket,
                "queue": self.queue, "sagemaker_model_prefix": self.model_prefix,
                "output_prefix": self.output_prefix, **self.settings, **settings}


# --- Airflow, locally ----------------------------------------------------------------------


def aws_connection(endpoint_url: str | None, region: str = "us-east-1") -> str:
    """``AIRFLOW_CONN_AWS_DEFAULT``: the embedded stack's endpoint and dummy credentials."""
    extra: dict[str, Any] = {"region_name": region}
    if endpoint_url:
        extra["endpoint_url"] = endpoint_url
    return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing",
                       "extra": extra})


def airflow_environ(home: Path, endpoint_url: str | None = None, region: str = "us-east-1",
                    *, quiet: bool = False) -> dict[str, str]:
    """The variables that run Airflow from ``home`` on SQLite, with ``dags/`` and the stack.

    Set them before the first ``import airflow`` of the process.
    """
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(endpoint_url, region),
    }
    if quiet:
        env["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    return env


def isolated_home() -> Path:
    """One private Airflow home for this process (tests): made on the first call, env set.

    Call it before the first ``import airflow``; later calls return the same folder.
    """
    existing = os.environ.get(TEST_HOME_VARIABLE)
    if existing:
        return Path(existing)
    home = Path(tempfile.mkdtemp(prefix="smserve-airflow-tests-"))
    os.environ[TEST_HOME_VARIABLE] = str(home)
    os.environ.update(airflow_environ(home))
    return home


def start_airflow(home: Path | None = None, endpoint_url: str | None = None,
                  region: str = "us-east-1", *, quiet: bool = False) -> Path:
    """Point this process's Airflow at ``home`` (a new temporary folder by default) and migrate.

    Returns:
        the Airflow home.

    Raises:
        RuntimeError: Airflow was imported before with another home.
    """
    home = Path(home or tempfile.mkdtemp(prefix="smserve-airflow-"))
    home.mkdir(parents=True, exist_ok=True)
    if "airflow.settings" in sys.modules and os.environ.get("AIRFLOW_HOME") != str(home):
        raise RuntimeError("Airflow is already imported with AIRFLOW_HOME="
                           f"{os.environ.get('AIRFLOW_HOME')}; call start_airflow first")
    os.environ.update(airflow_environ(home, endpoint_url, region, quiet=quiet))
    migrate()
    return home


def migrate() -> None:
    """Create the metadata database (``airflow db migrate``, in this process)."""
    from airflow.utils.db import initdb

    initdb()


def load_dags() -> dict[str, Any]:
    """The DAGs of ``dags/``, by id.

    Raises:
        RuntimeError: a DAG file failed to import (the errors are in the message).
    """
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=DAGS, bundle_path=DAGS, bundle_name="dags-folder")
    if bag.import_errors:
        raise RuntimeError("DAG files failed to import:\n" + "\n".join(
            f"{path}: {error}" for path, error in bag.import_errors.items()))
    return dict(bag.dags)


def set_variable(env: str, value: Mapping[str, Any]) -> None:
    """Set the ``smserve_<env>`` Variable for this process (``AIRFLOW_VAR_SMSERVE_<ENV>``)."""
    os.environ[f"AIRFLOW_VAR_SMSERVE_{env.upper()}"] = json.dumps(dict(value))


def run_xcoms(dag_run: Any, key: str) -> dict[str, list[Any]]:
    """XComs of one DAG run with ``key``: task id -> values (one per map index)."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[str, list[Any]] = {}
    with create_session() as session:
        query = select(XComModel).where(XComModel.dag_id == dag_run.dag_id,
                                        XComModel.run_id == dag_run.run_id,
                                        XComModel.key == key)
        for row in session.scalars(query.order_by(XComModel.task_id, XComModel.map_index)):
            found.setdefault(row.task_id, []).append(XComModel.deserialize_value(row))
    return found


def task_states(dag_run: Any) -> dict[str, str]:
    """Task id -> state of one DAG run (mapped tasks: the worst state of their instances)."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    rank = {"failed": 0, "upstream_failed": 1, "skipped": 2, "success": 3}
    states: dict[str, str] = {}
    with create_session() as session:
        query = select(TaskInstance.task_id, TaskInstance.state).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)
        for task_id, state in session.execute(query):
            text = str(getattr(state, "value", state))
            old = states.get(task_id)
            if old is None or rank.get(text, 9) < rank.get(old, 9):
                states[task_id] = text
    return states


# --- AWS resources -------------------------------------------------------------------------


def _exists(err: Exception, *codes: str) -> bool:
    response = getattr(err, "response", None) or {}
    return response.get("Error", {}).get("Code") in codes


def create_buckets(s3: Any, *names: str) -> None:
    """Create each bucket (one that exists is fine)."""
    for name in names:
        try:
            s3.create_bucket(Bucket=name)
        except Exception as err:
            if not _exists(err, "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise


def create_queues(sqs: Any, queue: str, dead_letter_queue: str, max_receive_count: int,
                  visibility_timeout: int = 1800) -> tuple[str, str]:
    """The queue and its dead-letter queue (``maxReceiveCount`` receives, then moved).

    Returns:
        ``(queue URL, dead-letter queue URL)``.
    """
    dlq = sqs.create_queue(QueueName=dead_letter_queue,
                           Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receive_count)})
    url = sqs.create_queue(QueueName=queue, Attributes={
        "RedrivePolicy": policy, "VisibilityTimeout": str(visibility_timeout)})["QueueUrl"]
    return url, dlq


def execution_role(iam: Any) -> str:
    """The ARN of the role SageMaker models run as (created when missing)."""
    try:
        return str(iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"])
    except Exception as err:
        if not _exists(err, "NoSuchEntity"):
            raise
    role = iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument=json.dumps(_TRUST),
                           Description="smserve batch transform jobs (S3 read/write)")
    return str(role["Role"]["Arn"])


def sagemaker_available(sagemaker: Any) -> bool:
    """True when the endpoint serves the SageMaker API (``ListModels`` answers)."""
    try:
        sagemaker.list_models(MaxResults=1)
    except Exception:
        return False
    return True


def model_images(clients: Any, models_root: Path = MODELS) -> dict[str, str]:
    """An ECR image URI per flavor the models use, for the Variable's ``images``.

    The images ``smserve image push`` recorded for this endpoint (or
    ``SMSERVE_IMAGE_<FLAVOR>``) where there are any; on the embedded stack,
    the others are put in its ECR (:func:`serving.local.stackimages.stack_images`:
    recorded with ``PutImage``, as the process runner never pulls them).
    """
    from serving import imagerecord
    from serving.local.stackimages import stack_images
    from serving.modelspec import discover

    flavors = sorted({spec.image for spec in discover(models_root).values()})
    found, missing = imagerecord.image_uris(clients.settings, flavors)
    if missing and clients.settings.endpoint_url:
        found.update(stack_images(clients, missing, registry=False))
    return found


def create_models(clients: Any, resources: PipelineResources, images: Mapping[str, str], *,
                  environment: Mapping[str, Mapping[str, str]] | None = None,
                  models_root: Path = MODELS, names: Sequence[str] | None = None,
                  role_arn: str | None = None) -> list[str]:
    """Each model's SageMaker model, made the way the transform task makes it (ahead of time).

    Through :class:`serving.sagemaker.jobs.SageMakerJobs`, with the names and
    environment the DAG's transform operator computes from the same Variable,
    so the operator finds them and creates none.

    Args:
        clients: a client factory for the endpoint.
        resources: the bucket the models may read and write, the name prefix.
        images: flavor -> ECR image URI (see :func:`model_images`).
        environment: model -> variables to add or override (the Variable's ``model_environment``).
        models_root: the model folders (their ``model.toml``).
        names: only these models (default: all).
        role_arn: ``ExecutionRoleArn`` (default: the embedded stack's placeholder).

    Returns:
        the SageMaker model names.
    """
    from serving.modelspec import discover
    from serving.sagemaker.jobs import LOCAL_ROLE, SageMakerJobs

    specs = discover(models_root)
    jobs = SageMakerJobs(clients, role_arn=role_arn or LOCAL_ROLE, images=images,
                         model_prefix=resources.model_prefix, allowed_buckets=(resources.bucket,),
                         output_prefixes=(resources.output_prefix,))
    work_prefix = str(resources.settings.get("work_prefix", "smserve-work/airflow/"))
    return [jobs.ensure_model(specs[name], resources.bucket, work_prefix,
                              (environment or {}).get(name))
            for name in names or sorted(specs)]


@dataclass(frozen=True)
class Created:
    """What :func:`create_resources` made.

    Attributes:
        queue_url: the queue.
        dead_letter_url: its dead-letter queue.
        models: SageMaker models (empty when the endpoint does not serve SageMaker).
        images: flavor -> ECR image URI, for the Variable's ``images``.
    """

    queue_url: str
    dead_letter_url: str
    models: list[str]
    images: dict[str, str] = field(default_factory=dict)


def create_resources(clients: Any, resources: PipelineResources, *,
                     models_root: Path = MODELS, with_models: bool = True,
                     environment: Mapping[str, Mapping[str, str]] | None = None,
                     visibility_timeout: int = 1800, echo: Any = None) -> Created:
    """Buckets, queues, model archives and SageMaker models for ``resources``.

    Args:
        clients: a :class:`serving.aws.ClientFactory` (or anything with ``client(name)``).
        resources: the names.
        models_root: the model folders.
        with_models: upload archives and create SageMaker models.
        environment: per-model variables for :func:`create_models` (the Variable's
            ``model_environment`` must say the same, for the operator to find the models).
        visibility_timeout: the queue's default visibility timeout.
        echo: prints a line (None: silent).
    """
    say = echo or (lambda _line: None)
    s3 = clients.client("s3")
    create_buckets(s3, resources.external_bucket, resources.bucket)
    url, dlq = create_queues(clients.client("sqs"), resources.queue,
                             resources.dead_letter_queue, resources.max_receive_count,
                             visibility_timeout)
    say(f"buckets {resources.external_bucket}, {resources.bucket}; queue {resources.queue} "
        f"(dead letters after {resources.max_receive_count} receives: "
        f"{resources.dead_letter_queue})")
    models: list[str] = []
    images: dict[str, str] = {}
    if with_models:
        sagemaker = clients.client("sagemaker")
        if sagemaker_available(sagemaker):
            images = model_images(clients, models_root)
            models = create_models(clients, resources, images, environment=environment,
                                   models_root=models_root)
            say(f"SageMaker models: {', '.join(models)} (images: "
                f"{', '.join(f'{k} {v}' for k, v in sorted(images.items()))})")
        else:
            say("the endpoint does not serve SageMaker: no models created")
    return Created(url, dlq, models, images)


def seed_clips(s3: Any, bucket: str, prefixes: Sequence[str], per_prefix: int) -> list[str]:
    """Upload ``per_prefix`` synthetic clips under each prefix; returns the keys."""
    from local_test.clips import upload_clips

    keys: list[str] = []
    for prefix in prefixes:
        keys += upload_clips(s3, bucket, prefix, per_prefix)
    return keys


def queue_objects(sqs: Any, url: str, bucket: str, keys: Sequence[str]) -> None:
    """Send one message per key, as the sync DAG does (10 per call)."""
    for start in range(0, len(keys), 10):
        chunk = keys[start:start + 10]
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": json.dumps({"bucket": bucket, "key": key})}
            for i, key in enumerate(chunk)])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m local_test.airflow_setup``: create the dev resources at ``AWS_ENDPOINT_URL``."""
    import argparse

    from serving.aws import ClientFactory
    from serving.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-models", action="store_true",
                        help="skip the model archives and SageMaker models")
    args = parser.parse_args(argv)
    settings = Settings.from_environ()
    if not settings.endpoint_url:
        print("AWS_ENDPOINT_URL is not set; this creates the dev resources on the embedded "
              "stack: run `smserve local up` and export what it prints", file=sys.stderr)
        return 2
    clients = ClientFactory(settings)
    resources = PipelineResources()
    created = create_resources(clients, resources, with_models=not args.no_models, echo=print)
    print("Variable smserve_dev: " + json.dumps(resources.variable(images=created.images)))
    print(f"AIRFLOW_CONN_AWS_DEFAULT='{aws_connection(settings.endpoint_url, settings.region)}'")
    return 0


__all__ = [
    "Created",
    "PipelineResources",
    "airflow_environ",
    "aws_connection",
    "create_buckets",
    "create_models",
    "create_queues",
    "create_resources",
    "isolated_home",
    "load_dags",
    "migrate",
    "model_images",
    "queue_objects",
    "run_xcoms",
    "seed_clips",
    "set_variable",
    "start_airflow",
    "task_states",
]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
