"""``sync_data_main`` (hourly) and ``sync_data_dev`` (manual): external bucket -> ours -> SQS.

One function builds both; they differ only in the environment whose
Variable names the buckets and the queue (``smserve_main``,
``smserve_dev``; see ``smserve_dags/config.py``)::

    camera_angles --> sync_current_month[angle]  --> report
                  \\-> sync_previous_month[angle] -/

``camera_angles`` reads the angles from the Variable when the run starts;
each ``sync_*_month`` task is mapped over them (one task per angle), copies
the objects of the run's month (or the month before) that we do not have
yet, and queues one message per copy. ``report`` runs even when a copy
failed, logs one summary, and fails the run when anything failed.
``max_active_runs=1`` so a slow hour never overlaps the next;
``catchup=False`` so a paused DAG does not replay every missed hour.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

# The dag-processor and task runs put the bundle (dags/) on sys.path; `airflow dags list
# --local` does not, so the DAG file does it for its own package, smserve_dags.
_BUNDLE = str(Path(__file__).resolve().parents[1])
if _BUNDLE not in sys.path:
    sys.path.append(_BUNDLE)

from airflow.sdk import DAG

from smserve_dags.operators.report import reporter
from smserve_dags.operators.sync import camera_angles, sync_month
from smserve_dags.operators.wrap import wrap

DEFAULT_ARGS = {"owner": "smserve", "retry_delay": timedelta(seconds=60)}
START = datetime(2026, 1, 1, tzinfo=UTC)


def build_sync_dag(dag_id: str, env: str, schedule: str | None, description: str) -> DAG:
    """The sync DAG of environment ``env``."""
    with DAG(dag_id, description=description, schedule=schedule, start_date=START,
             catchup=False, max_active_runs=1, default_args=DEFAULT_ARGS,
             tags=["smserve", env], doc_md=__doc__) as dag:
        angles = camera_angles(env)
        current = sync_month.override(task_id="sync_current_month").partial(
            env=env, months_back=0).expand(angle=angles)
        previous = sync_month.override(task_id="sync_previous_month").partial(
            env=env, months_back=1).expand(angle=angles)
        wrap([current, previous]) >> reporter()()
    return dag


sync_data_main = build_sync_dag("sync_data_main", "main", "@hourly",
                                "Copy new videos from the external bucket and queue them")
sync_data_dev = build_sync_dag("sync_data_dev", "dev", None,
                               "The sync DAG on the dev bucket and queue (manual)")
