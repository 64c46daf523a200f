"""The Airflow demo: both DAGs, unmodified, through ``dag.test()`` on the embedded stack.

1. start the embedded AWS stack (S3, SQS, IAM, Logs and the SageMaker API
   whose transform jobs really run the models) and Airflow on SQLite in a
   temporary home;
2. create what the ``dev`` settings name (``local_test/airflow_setup.py``):
   buckets, the queue and its dead-letter queue, the SageMaker models;
3. seed synthetic clips into the external bucket (this month and the one
   before, two camera angles);
4. run ``sync_data_dev``: copy them to our bucket, one SQS message each;
5. run ``inference_dev``: buffer the messages, run every model in
   dependency order (independent ones at the same time), delete the messages;
6. print each run's report and what the classifier made of each clip.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ANGLES = ("front", "rear")
#: The model whose answers the table shows.
CLASSIFIER = "scene_classifier"
#: (dag.test runs every task in this process: no scheduler to outpace, so no floor)
FAST = {"max_wait_seconds": 0, "poke_interval_seconds": 1, "transform_poll_seconds": 1,
        "receive_wait_seconds": 0, "min_reschedule_seconds": 0}


def _prefixes(when: datetime) -> list[str]:
    months = [(when.year, when.month), (when.year - (when.month == 1), (when.month - 2) % 12 + 1)]
    return [f"videos/{y:04d}/{m:02d}/{angle}/" for y, m in months for angle in ANGLES]


def _table(s3: Any, bucket: str, keys: Sequence[str]) -> list[str]:
    from serving.pipeline import output_key

    rows = [f"  {'clip':<36} {'top class':<10} {'prob':>6}  output"]
    for key in keys:
        out = output_key(CLASSIFIER, key, "results/", ".json")
        result = json.loads(s3.get_object(Bucket=bucket, Key=out)["Body"].read())
        rows.append(f"  {key:<36} {result['top_class']:<10} {result['top_probability']:>6.3f}"
                    f"  s3://{bucket}/{out}")
    return rows


def _state(dag_run: Any) -> str:
    return str(getattr(dag_run.state, "value", dag_run.state))


def run_airflow_demo(clips: int = 2, echo: Callable[[str], None] = print,
                     keep_home: bool = False) -> int:
    """Seed clips, run ``sync_data_dev`` then ``inference_dev``, print the reports.

    Args:
        clips: clips per month and camera angle.
        echo: prints a line.
        keep_home: keep the temporary Airflow home (its SQLite database and logs).

    Returns:
        the exit status: 0 when both runs succeeded.
    """
    os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")  # chainer, in the containers
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")

    from local_test.airflow_setup import (
        PipelineResources,
        create_resources,
        load_dags,
        run_xcoms,
        seed_clips,
        set_variable,
        start_airflow,
    )
    from serving.aws import ClientFactory
    from serving.local.stack import LocalStack
    from serving.settings import Settings

    started = time.monotonic()
    stack = LocalStack().start()
    home: Path | None = None
    try:
        echo(f"embedded AWS stack on {stack.endpoint_url} (S3, SQS, IAM, Logs, SageMaker)")
        os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
        home = start_airflow(endpoint_url=stack.endpoint_url, region=stack.region)
        echo(f"Airflow {_airflow_version()} on SQLite in {home}; DAGs from dags/")
        clients = ClientFactory(Settings.from_environ({**os.environ, **stack.environ()}))
        resources = PipelineResources()
        created = create_resources(clients, resources, echo=lambda line: echo("  " + line))
        set_variable("dev", resources.variable(camera_angles=list(ANGLES), images=created.images,
                                               **FAST))
        when = datetime.now(UTC)
        keys = seed_clips(clients.client("s3"), resources.external_bucket, _prefixes(when),
                          clips)
        echo(f"seeded {len(keys)} clips into s3://{resources.external_bucket}/videos/ "
             f"({', '.join(ANGLES)}; this month and the one before)")
        dags = load_dags()
        results = []
        for dag_id in ("sync_data_dev", "inference_dev"):
            echo("")
            echo(f"{dag_id}: dag.test() ...")
            run_started = time.monotonic()
            dag_run = dags[dag_id].test(logical_date=when, run_after=when)
            summary = run_xcoms(dag_run, "summary").get("report", ["(no report)"])[0]
            echo(f"{dag_id}: {_state(dag_run)} in {time.monotonic() - run_started:.1f} s")
            for line in str(summary).splitlines():
                echo("  " + line)
            results.append(_state(dag_run))
        if results == ["success", "success"]:
            echo("")
            ours = sorted(k for k in keys)
            for row in _table(clients.client("s3"), resources.bucket, ours):
                echo(row)
        echo("")
        echo(f"done in {time.monotonic() - started:.1f} s; the same DAGs run on AWS with an "
             "aws_default connection and the smserve_main Variable (docs/airflow.md)")
        return 0 if results == ["success", "success"] else 1
    finally:
        stack.stop()
        if home is not None and not keep_home:
            shutil.rmtree(home, ignore_errors=True)


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_airflow_demo())
