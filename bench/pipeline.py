"""The inference DAG on 100 queued clips: where the wall time goes, and SQS calls per message.

``--clips`` synthetic clips (default 100) go to our bucket on the embedded
stack with one SQS message each, as the sync DAG leaves them; then
``inference_dev`` runs once through ``dag.test()`` (Airflow 3 on SQLite,
every task in this process, real transform jobs through the stack's
SageMaker API). Before it, one run on the empty queue pays Airflow's
one-time start-up in this process (its in-process API server), reported
apart as ``cold_start_s``.

The run's wall time is split into:

- **sensor wait**: the buffering sensor, first poke to its end;
- **transform time per model**: each job's ``TransformStartTime`` to
  ``TransformEndTime`` (container start, the data plane, container stop),
  and their union (independent models overlap);
- **Airflow overhead**: the rest, wall - sensor - union of the jobs: the
  scheduling loop, the tasks' start and end, our tasks' own work (parsing,
  HeadObject checks, request uploads, deletion, the report), and the polls
  between a job's end and the task noticing it (``transform_poll_seconds``);
  ``task_work_s`` is the part spent inside our non-transform tasks.

SQS calls are counted on the client side (every boto3 call this process
makes); the goal is at most one ``ReceiveMessage`` per 10 messages.

    .venv/bin/python bench/pipeline.py [--clips 100] [--stack process|thread]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import collections
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    embedded_stack,
    json_line,
    load_average,
    machine,
    r3,
    say,
    start_script,
    union_seconds,
)

MODELS = ("frame_features", "scene_classifier", "clip_stats")
#: Tasks whose time is our own work (not waiting on SQS or a transform job).
WORK_TASKS = ("delete_messages", "report")


@contextmanager
def counting_calls() -> Iterator[collections.Counter[tuple[str, str]]]:
    """Count every AWS API call this process makes, as ``(service, operation)``."""
    from botocore.client import BaseClient

    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    lock = threading.Lock()
    original = getattr(BaseClient, "_make_api_call")  # noqa: B009 (private: mypy has no stub)

    def counted(self: Any, operation: str, params: Any) -> Any:
        with lock:
            counts[(self.meta.service_model.service_name, operation)] += 1
        return original(self, operation, params)

    setattr(BaseClient, "_make_api_call", counted)  # noqa: B010
    try:
        yield counts
    finally:
        setattr(BaseClient, "_make_api_call", original)  # noqa: B010


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def task_spans(dag_run: Any) -> dict[str, tuple[float, float]]:
    """Task id -> (first start, end) in epoch seconds, over pokes and map indexes."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session
    from sqlalchemy import select

    spans: dict[str, tuple[float, float]] = {}
    with create_session() as session:
        rows = session.execute(select(TaskInstance.id, TaskInstance.task_id,
                                      TaskInstance.start_date, TaskInstance.end_date).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id))
        for ti_id, task_id, start, end in rows:
            if start is None or end is None:
                continue
            first = session.scalar(select(TaskReschedule.start_date).where(
                TaskReschedule.ti_id == ti_id).order_by(TaskReschedule.start_date).limit(1))
            begin = min(_epoch(start), _epoch(first)) if first is not None else _epoch(start)
            old = spans.get(task_id)
            spans[task_id] = (begin, _epoch(end)) if old is None else \
                (min(old[0], begin), max(old[1], _epoch(end)))
    return spans


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (whether or not the goal was met)."""
    parser = start_script(__doc__)
    parser.add_argument("--clips", type=int, default=100, help="queued clips (100)")
    args = parser.parse_args(argv)
    bin_dir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "ERROR")
    load_before = load_average()
    say(f"bench/pipeline.py: inference_dev on {args.clips} queued clips; {machine()}")

    from local_test.airflow_setup import (
        PipelineResources,
        create_resources,
        load_dags,
        queue_objects,
        run_xcoms,
        seed_clips,
        set_variable,
        start_airflow,
    )
    from serving.aws import ClientFactory
    from serving.settings import Settings

    with embedded_stack(args.stack) as stack:
        home = start_airflow(endpoint_url=stack.endpoint_url)
        clients = ClientFactory(Settings.from_environ({**os.environ, **stack.environ}))
        resources = PipelineResources()
        created = create_resources(clients, resources)
        set_variable("dev", resources.variable(
            images=created.images, max_messages=args.clips, max_wait_seconds=0,
            poke_interval_seconds=1, transform_poll_seconds=1, receive_wait_seconds=1,
            min_reschedule_seconds=0,  # dag.test: no scheduler to outpace
            # dag.test runs a deferred task's trigger inline, one task at a time, so the
            # models' jobs would not overlap; reschedule mode lets them, as a scheduler does
            deferrable=False))
        dag = load_dags()["inference_dev"]

        begun = time.monotonic()
        warm = dag.test()
        cold_start = time.monotonic() - begun
        say(f"warm-up run on the empty queue: {warm.state} in {cold_start:.1f} s "
            "(Airflow's one-time start-up in this process)")

        keys = seed_clips(clients.client("s3"), resources.bucket, ["videos/2026/11/front/"],
                          args.clips)
        queue_objects(clients.client("sqs"), created.queue_url, resources.bucket, keys)
        with counting_calls() as calls:
            begun = time.monotonic()
            dag_run = dag.test()
            wall = time.monotonic() - begun
        state = str(getattr(dag_run.state, "value", dag_run.state))
        summary = run_xcoms(dag_run, "summary").get("report", [""])[0]
        spans = task_spans(dag_run)
        reports = {r["model"]: r for values in run_xcoms(dag_run, "report").values()
                   for r in values if isinstance(r, dict) and "model" in r}
        sagemaker = clients.client("sagemaker")
        jobs: dict[str, tuple[float, float]] = {}
        for model in MODELS:
            name = reports.get(model, {}).get("job")
            if name:
                found = sagemaker.describe_transform_job(TransformJobName=name)
                jobs[model] = (_epoch(found["TransformStartTime"]),
                               _epoch(found["TransformEndTime"]))
        left = clients.client("sqs").get_queue_attributes(
            QueueUrl=created.queue_url, AttributeNames=["All"])["Attributes"]
        outputs = {m: clients.client("s3").list_objects_v2(
            Bucket=resources.bucket, Prefix=f"results/{m}/").get("KeyCount", 0) for m in MODELS}
    import shutil

    shutil.rmtree(home, ignore_errors=True)

    sensor = spans.get("wait_for_messages", (0.0, 0.0))
    sensor_wait = sensor[1] - sensor[0]
    transform_union = union_seconds(jobs.values())
    overhead = max(0.0, wall - sensor_wait - transform_union)
    task_work = sum(e - s for t, (s, e) in spans.items() if t in WORK_TASKS)
    sqs = {op: n for (service, op), n in sorted(calls.items()) if service == "sqs"}
    receives = sqs.get("ReceiveMessage", 0)
    total_sqs = sum(sqs.values())
    goal_receives = math.ceil(args.clips / 10)
    goal_met = receives <= goal_receives and state == "success"

    say("")
    say(summary)
    say("")
    say(f"run: {state} in {wall:.1f} s wall; outputs {outputs}; queue left: "
        f"{left.get('ApproximateNumberOfMessages')} visible, "
        f"{left.get('ApproximateNumberOfMessagesNotVisible')} in flight")
    say(f"  sensor wait        {sensor_wait:6.2f} s  ({receives} ReceiveMessage calls)")
    for model, (start, end) in jobs.items():
        say(f"  transform {model:<17}{end - start:6.2f} s")
    say(f"  transforms (union) {transform_union:6.2f} s")
    say(f"  Airflow overhead   {overhead:6.2f} s  ({overhead / wall:.0%} of the wall time; "
        f"our non-transform tasks {task_work:.2f} s of it)")
    say(f"SQS calls: {total_sqs} for {args.clips} messages ({total_sqs / args.clips:.2f} per "
        f"message): {sqs}")
    say(f"goal: <= 1 ReceiveMessage per 10 messages ({goal_receives} for {args.clips}): "
        f"{receives} -> {'met' if goal_met else 'NOT met'}")
    say(json_line({
        "bench": "pipeline", "clips": args.clips, "stack": args.stack, "state": state,
        "wall_s": r3(wall), "cold_start_s": r3(cold_start), "sensor_wait_s": r3(sensor_wait),
        "transform_s": {m: r3(e - s) for m, (s, e) in jobs.items()},
        "transform_union_s": r3(transform_union), "airflow_overhead_s": r3(overhead),
        "airflow_overhead_share": r3(overhead / wall) if wall else None,
        "task_work_s": r3(task_work),
        "task_s": {t: r3(e - s) for t, (s, e) in sorted(spans.items())},
        "sqs_calls": sqs, "sqs_calls_per_message": r3(total_sqs / args.clips),
        "receive_calls": receives, "receive_calls_per_10_messages":
            r3(receives * 10 / args.clips), "goal_receive_calls": goal_receives,
        "goal_met": goal_met, "outputs": outputs,
        "load_average": [load_before, load_average()],
    }))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
