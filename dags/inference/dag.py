"""``inference_main`` (every 10 minutes) and ``inference_dev`` (manual): SQS batch -> models -> S3.

One function builds both; they differ only in the environment whose
Variable names the bucket and the queue (see ``smserve_dags/config.py``)::

    wait_for_messages
        -> frame_features.transform -> scene_classifier.transform  -\\
        -> clip_stats.transform ------------------------------------+-> delete_messages -> report

- ``wait_for_messages`` buffers up to ``max_messages`` messages, or what
  came in ``max_wait_seconds`` (deferred, or reschedule mode; deletes
  nothing), then turns them into input objects and sets aside the ones it
  cannot use (they stay on the queue, and reach the dead-letter queue); with
  nothing left it skips every model (a short circuit);
- one task group per model, from ``models/*/model.toml`` and ``depends_on``
  (the graph the local pipeline run uses), with one task, ``transform``: it
  extends the batch's visibility timeout, uploads the records whose output
  is missing and runs them as a batch transform job with a deterministic
  name (a retry adopts a job that already finished); models with no path
  between them run at the same time;
- ``delete_messages`` runs once every model is done, whatever happened: it
  deletes the message of every object that every model finished (written or
  skipped) and keeps the others on the queue, each with why (the failed
  records' messages, read from the transforms' ``.out`` objects), its
  receive count and whether the next failure dead-letters it; the reason is
  also written to ``s3://<bucket>/<work_prefix>notes/<message id>.json``;
- a model whose records partly failed is ``partial``: its transform task
  succeeds, so downstream models run on the records whose upstream output
  exists;
- ``report`` runs last, always (``all_done``, downstream of every model and
  of ``delete_messages``), logs one summary naming each model's outcome and
  each message's fate, and fails the run when a model (or a record, or
  anything else) failed.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# The dag-processor and task runs put the bundle (dags/) on sys.path; `airflow dags list
# --local` does not, so the DAG file does it for its own package, smserve_dags.
_BUNDLE = str(Path(__file__).resolve().parents[1])
if _BUNDLE not in sys.path:
    sys.path.append(_BUNDLE)

from airflow.sdk import DAG, TaskGroup, XComArg

from smserve_dags.operators.batch import BatchSensor, delete_messages
from smserve_dags.operators.models import model_graph
from smserve_dags.operators.report import reporter
from smserve_dags.operators.transform import BatchTransformOperator
from smserve_dags.operators.wrap import Wrapper, wrap

DEFAULT_ARGS = {"owner": "smserve", "retry_delay": timedelta(seconds=30)}
START = datetime(2026, 1, 1, tzinfo=UTC)
NOT_RUN = {"delete_messages": "no batch was processed; any received message stays on the "
                              "queue and comes back after its visibility timeout"}


def build_inference_dag(dag_id: str, env: str, schedule: timedelta | None,
                        description: str) -> DAG:
    """The inference DAG of environment ``env``, with one task group per model."""
    graph = model_graph()
    order = graph.order()
    used = {dep for name in order for dep in graph.dependencies(name)}
    with DAG(dag_id, description=description, schedule=schedule, start_date=START,
             catchup=False, max_active_runs=1, default_args=DEFAULT_ARGS,
             tags=["smserve", env], doc_md=__doc__) as dag:
        sensor = BatchSensor(task_id="wait_for_messages", env=env)
        # XComArgs stand for the values the tasks get when they run
        messages: Any = XComArg(sensor, key="messages")
        batch: Any = XComArg(sensor, key="batch")
        groups: dict[str, TaskGroup] = {}
        for name in order:
            spec = graph[name]
            with TaskGroup(group_id=name, tooltip=f"{name}: {spec.instance_count} x "
                                                  f"{spec.instance_type}") as group:
                BatchTransformOperator(task_id="transform", model=name, env=env, batch=batch,
                                       messages=messages)
            groups[name] = group
        for name in order:
            for dep in graph.dependencies(name):
                groups[dep] >> groups[name]
        models = Wrapper([groups[n] for n in order if not graph.dependencies(n)],
                         [groups[n] for n in order if n not in used])
        delete = delete_messages(env, order)
        report = reporter({n: list(graph.dependencies(n)) for n in order}, not_run=NOT_RUN)()
        wrap(sensor) >> models >> delete >> report
        for group in groups.values():  # the report waits for every model, whatever happens
            group >> report
    return dag


inference_main = build_inference_dag("inference_main", "main", timedelta(minutes=10),
                                     "Run every model on a batch of queued videos")
inference_dev = build_inference_dag("inference_dev", "dev", None,
                                    "The inference DAG on the dev bucket and queue (manual)")
