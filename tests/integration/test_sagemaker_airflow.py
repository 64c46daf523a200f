"""Airflow's own ``SageMakerTransformOperator`` against the embedded stack, run by ``dag.test()``.

The operator (``apache-airflow-providers-amazon``) reaches the stack through an
``aws`` connection whose ``endpoint_url`` is the stack's, as a DAG written for
AWS would, with nothing of smserve in the DAG: a model created beforehand with
boto3, request records (JSON lines) uploaded to S3, a transform config dict.
``dag.test()`` only runs DAGs of the configured dags folder (it syncs that
bundle to the database first), so each test writes its tiny DAG file into a
folder of this module's, which stands in for the dags folder while it runs.

Airflow runs on SQLite in the private home the DAG tests use (made here when
this module runs on its own). One container starts: the frame_features job;
the unknown model is refused before anything runs.

The operator runs with its defaults: its first call, DescribeTransformJob of
the new name (``check_if_job_exists``), gets ``ValidationException`` from the
stack, as from SageMaker, which the operator takes for "no such job yet".
"""

from __future__ import annotations

import atexit
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from local_test.airflow_setup import (
    TEST_HOME_VARIABLE,
    aws_connection,
    isolated_home,
    migrate,
    run_xcoms,
    task_states,
)
from local_test.clips import upload_clips
from serving.local.stack import LocalStack
from serving.modelspec import load_spec
from serving.package import build_archive
from serving.pipeline import build_requests
from serving.transform.transfer import encode_records
from tests.helpers import stack_image_uris

# Airflow reads its configuration on first import: the home must be set before that.
if TEST_HOME_VARIABLE not in os.environ:
    atexit.register(shutil.rmtree, isolated_home(), True)
HOME = isolated_home()

pytest.importorskip("airflow.providers.amazon.aws.operators.sagemaker",
                    reason="apache-airflow-providers-amazon is not installed")

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FEATURES = ROOT / "models" / "frame_features"
JSONL = "application/jsonlines"
CONN_ID = "smserve_stack"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
CLIPS = 3

DAG_FILE = '''\
"""One SageMakerTransformOperator task (written by test_sagemaker_airflow.py)."""
from datetime import datetime

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerTransformOperator
from airflow.sdk import DAG

CONFIG = {config!r}

with DAG(dag_id={dag_id!r}, schedule=None, start_date=datetime(2026, 1, 1), catchup=False,
         default_args={{"retries": 0}}):
    SageMakerTransformOperator(task_id="transform", config=CONFIG, aws_conn_id={conn_id!r},
                               wait_for_completion=True, check_interval=1,
                               max_ingestion_time=240, **{options!r})
'''


# --- the stack and Airflow ----------------------------------------------------------------------


def _client(stack: LocalStack, service: str) -> Any:
    return boto3.client(service, endpoint_url=stack.endpoint_url, region_name=stack.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture(scope="module")
def sm(stack: LocalStack) -> Any:
    """A plain boto3 SageMaker client for the stack."""
    return _client(stack, "sagemaker")


@pytest.fixture(scope="module")
def s3(stack: LocalStack) -> Any:
    """A plain boto3 S3 client for the stack."""
    return _client(stack, "s3")


@pytest.fixture(scope="module")
def bucket(s3: Any) -> str:
    """The module's bucket."""
    name = f"sm-airflow-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def dags_folder(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated database, the connection to the stack, and a dags folder of our own."""
    from airflow import settings

    folder = tmp_path_factory.mktemp("dags")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}",
                     aws_connection(stack.endpoint_url, stack.region))
        # The dags-folder bundle reads settings.DAGS_FOLDER (set when Airflow was imported).
        patch.setenv("AIRFLOW__CORE__DAGS_FOLDER", str(folder))
        patch.setattr(settings, "DAGS_FOLDER", str(folder))
        migrate()
        yield folder


@pytest.fixture(scope="module")
def model(sm: Any, s3: Any, bucket: str, tmp_path_factory: pytest.TempPathFactory,
          stack: LocalStack) -> str:
    """frame_features as a SageMaker model, created with boto3 (not by the operator)."""
    archive = build_archive(FEATURES, tmp_path_factory.mktemp("archive") / "model.tar.gz")
    s3.upload_file(str(archive), bucket, "models/frame_features/model.tar.gz")
    name = f"airflow-features-{uuid.uuid4().hex[:8]}"
    sm.create_model(ModelName=name, ExecutionRoleArn=ROLE, PrimaryContainer={
        "Image": stack_image_uris(stack)["gpu"],
        "ModelDataUrl": f"s3://{bucket}/models/frame_features/model.tar.gz",
        "Environment": {"SMSERVE_ALLOWED_BUCKETS": bucket,
                        "SMSERVE_OUTPUT_PREFIXES": "results/"}})
    return name


@pytest.fixture(scope="module")
def records(s3: Any, bucket: str) -> list[Any]:
    """Request records for three clips, as JSON lines under ``requests/``."""
    keys = upload_clips(s3, bucket, "videos/2026/11/", CLIPS)
    spec = load_spec(FEATURES)
    built = build_requests(spec, bucket, keys, specs={spec.name: spec})
    s3.put_object(Bucket=bucket, Key="requests/batch-1.jsonl", Body=encode_records(built))
    return built


def _config(job: str, model: str, bucket: str) -> dict[str, Any]:
    return {
        "TransformJobName": job,
        "ModelName": model,
        "TransformInput": {"DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/requests/"}},
            "ContentType": JSONL, "SplitType": "Line"},
        "TransformOutput": {"S3OutputPath": f"s3://{bucket}/transform-out/{job}/",
                            "Accept": JSONL, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        "BatchStrategy": "MultiRecord",
        "MaxPayloadInMB": 6,
    }


def _dag(folder: Path, dag_id: str, config: dict[str, Any], **options: Any) -> Any:
    """Write the DAG file, import the folder as Airflow does, and return the DAG."""
    from airflow.dag_processing.dagbag import BundleDagBag

    (folder / f"{dag_id}.py").write_text(DAG_FILE.format(config=config, dag_id=dag_id,
                                                         conn_id=CONN_ID, options=options))
    bag = BundleDagBag(dag_folder=folder, bundle_path=folder, bundle_name="dags-folder")
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def _state(dag_run: Any) -> str:
    return str(getattr(dag_run.state, "value", dag_run.state))


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


# --- the tests ----------------------------------------------------------------------------------

CREATE_REFUSED = ("An error occurred (ValidationException) when calling the "
                  "CreateTransformJob operation: Could not find model")


def test_the_operator_runs_a_transform_job_to_completed(
        dags_folder: Path, sm: Any, s3: Any, bucket: str, model: str,
        records: list[Any]) -> None:
    job = f"airflow-{uuid.uuid4().hex[:10]}"
    dag = _dag(dags_folder, f"transform_{job.replace('-', '_')}", _config(job, model, bucket))

    dag_run = dag.test()

    assert _state(dag_run) == "success"
    assert task_states(dag_run) == {"transform": "success"}
    described = sm.describe_transform_job(TransformJobName=job)
    assert described["TransformJobStatus"] == "Completed"
    assert "FailureReason" not in described
    assert described["ModelName"] == model
    returned = run_xcoms(dag_run, "return_value")["transform"][0]
    assert returned["Transform"]["TransformJobName"] == job
    assert returned["Transform"]["TransformJobStatus"] == "Completed"
    assert returned["Model"]["ModelName"] == model

    assert _keys(s3, bucket, f"transform-out/{job}/") == [
        f"transform-out/{job}/batch-1.jsonl.out"]
    body = s3.get_object(Bucket=bucket, Key=f"transform-out/{job}/batch-1.jsonl.out")[
        "Body"].read()
    answers = [json.loads(line) for line in body.splitlines()]
    assert len(answers) == len(records) == CLIPS
    assert [a["status"] for a in answers] == ["written"] * CLIPS
    for request in records:
        assert request.output_path.endswith(".npy")
        data = s3.get_object(Bucket=bucket, Key=request.output_path)["Body"].read()
        assert np.load(io.BytesIO(data)).shape == (8, 64)


def _run_unknown_model(dags_folder: Path, sm: Any, s3: Any, bucket: str,
                       capfd: pytest.CaptureFixture[str], **options: Any) -> str:
    """Run the operator on a model that does not exist; check that nothing ran; its output."""
    job = f"airflow-nomodel-{uuid.uuid4().hex[:8]}"
    missing = f"no-such-model-{uuid.uuid4().hex[:8]}"
    dag = _dag(dags_folder, f"transform_{job.replace('-', '_')}",
               _config(job, missing, bucket), **options)
    capfd.readouterr()

    dag_run = dag.test()

    output = "".join(capfd.readouterr())
    assert _state(dag_run) == "failed"
    assert task_states(dag_run) == {"transform": "failed"}
    with pytest.raises(ClientError):
        sm.describe_transform_job(TransformJobName=job)
    assert sm.list_transform_jobs(NameContains=job)["TransformJobSummaries"] == []
    assert _keys(s3, bucket, f"transform-out/{job}/") == []
    return output


def test_an_unknown_model_fails_the_task_and_the_run(
        dags_folder: Path, sm: Any, s3: Any, bucket: str, records: list[Any],
        capfd: pytest.CaptureFixture[str]) -> None:
    output = _run_unknown_model(dags_folder, sm, s3, bucket, capfd)
    # The job-name check passed (no such job yet), and CreateTransformJob refused.
    assert "when calling the DescribeTransformJob operation" not in output
    assert CREATE_REFUSED in output, output[-3000:]
