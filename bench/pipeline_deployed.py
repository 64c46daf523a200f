"""The inference DAG on 100 queued clips under a real scheduler: Airflow's share of the wall time.

The same measurement as ``pipeline.py``, but ``inference_dev`` runs in a real
deployment (``local_test/airflow_deploy.py``: PostgreSQL, api-server,
scheduler, dag-processor, triggerer and, with ``--executor celery``, a Celery
worker whose broker is SQS on the embedded stack), triggered through the REST
API, as in production. One run on ``--warm-clips`` clips first (its figures
apart: ``warm_up_s``; it starts each model's server, which the embedded
SageMaker keeps warm between jobs); then twice ``--clips`` fresh clips go to our bucket with one
message each, and a run is timed from the trigger to the run's end (the API
polled every 0.2 s): the baseline with ``transform_hold_seconds`` 0 (every
transform defers at once, as against SageMaker), then with ``--hold`` (60:
the transform tasks poll their jobs themselves first, the dev setting).

The wall time is split as ``pipeline.py`` splits it: the sensor's span, the
union of the transform jobs' spans (``TransformStartTime`` to
``TransformEndTime``), and the rest, **Airflow's share**: the scheduler
queueing each task, the executor (and broker) handing it over, each task
process's start, our tasks' own work, and the polls between a job's end and
its task noticing it. Goal: at most 20 % of the wall time. Of that share,
``between_tasks_s`` is the time when no task and no job ran (the trigger and
the hand-overs from one task to the next). The receive calls
come from the report (the sensor counts them): messages per ``ReceiveMessage``.

    .venv/bin/python bench/pipeline_deployed.py [--executor celery|local] [--clips 100]
        [--hold 60]

The last line of stdout is one JSON object with the figures. (``--stack``, which every
script takes, changes nothing here: the deployment always runs ``smserve local up`` in its own
process.)
"""

from __future__ import annotations

import re
import sys
import time
from datetime import datetime
from typing import Any

from _common import json_line, load_average, machine, r3, say, start_script, union_seconds

MODELS = ("frame_features", "scene_classifier", "clip_stats")
#: Short waits: what a scheduler can keep up with (1 s pokes and polls).
SETTINGS = {"max_wait_seconds": 0, "poke_interval_seconds": 1, "transform_poll_seconds": 1,
            "receive_wait_seconds": 1, "min_reschedule_seconds": 1}


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def timed_run(api: Any, dag_id: str, timeout: float = 1800.0) -> tuple[str, str, float, float]:
    """Trigger, poll every 0.2 s; ``(run id, state, seconds to the end, epoch of the trigger)``."""
    at = time.time()
    begun = time.monotonic()
    run_id = api.trigger(dag_id)
    state = api.wait(dag_id, run_id, timeout=timeout, poll=0.2)
    return run_id, state, time.monotonic() - begun, at


def task_spans(api: Any, dag_id: str, run_id: str) -> dict[str, tuple[float, float]]:
    """Task id -> (first start, last end) over map indexes, from the REST API."""
    found = api.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
    spans: dict[str, tuple[float, float]] = {}
    for ti in found["task_instances"]:
        if not ti.get("start_date") or not ti.get("end_date"):
            continue
        start, end = _epoch(ti["start_date"]), _epoch(ti["end_date"])
        old = spans.get(ti["task_id"])
        spans[ti["task_id"]] = (start, end) if old is None else (min(old[0], start),
                                                                 max(old[1], end))
    return spans


def job_spans(sagemaker: Any, since: datetime) -> dict[str, tuple[float, float]]:
    """Model -> its transform job's span, for the jobs created after ``since``."""
    jobs: dict[str, tuple[float, float]] = {}
    listed = sagemaker.list_transform_jobs(CreationTimeAfter=since, MaxResults=100)
    for summary in listed["TransformJobSummaries"]:
        job = sagemaker.describe_transform_job(TransformJobName=summary["TransformJobName"])
        for model in MODELS:
            if model.replace("_", "-") in job["ModelName"] and "TransformEndTime" in job:
                jobs[model] = (_epoch(job["TransformStartTime"]), _epoch(job["TransformEndTime"]))
    return jobs


def measure(deployment: Any, clients: Any, hold: float, clips: int,
            prefix: str) -> dict[str, Any]:
    """One timed run of ``clips`` fresh clips with ``transform_hold_seconds`` = ``hold``."""
    from datetime import UTC

    from local_test.airflow_deploy import VARIABLE
    from local_test.airflow_setup import PipelineResources, queue_objects, seed_clips

    api = deployment.api
    # without the key when 0 (the default), so the script also measures code that predates it
    api.set_variable(VARIABLE, {**deployment.variable,
                                **({"transform_hold_seconds": hold} if hold else {})})
    resources = PipelineResources()
    sqs = clients.client("sqs")
    queue_url = sqs.get_queue_url(QueueName=resources.queue)["QueueUrl"]
    keys = seed_clips(clients.client("s3"), resources.bucket, [prefix], clips)
    queue_objects(sqs, queue_url, resources.bucket, keys)
    since = datetime.now(UTC)
    run_id, state, wall, at = timed_run(api, "inference_dev")
    spans = task_spans(api, "inference_dev", run_id)
    jobs = job_spans(clients.client("sagemaker"), since)
    summary = str(api.xcom("inference_dev", run_id, "report", "summary"))
    left = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["All"])["Attributes"]
    outputs = {m: clients.client("s3").list_objects_v2(
        Bucket=resources.bucket, Prefix=f"results/{m}/{prefix}").get("KeyCount", 0)
        for m in MODELS}
    sensor = spans.get("wait_for_messages", (0.0, 0.0))
    sensor_wait = sensor[1] - sensor[0]
    transform_union = union_seconds(jobs.values())
    airflow = max(0.0, wall - sensor_wait - transform_union)
    # no task running and no job running: the scheduler, executor and broker handing over
    busy = union_seconds([(max(s, at), min(e, at + wall))
                          for s, e in [*spans.values(), *jobs.values()] if e > at])
    found = re.search(r"received (\d+) message\(s\).* in (\d+) receive call", summary)
    received, receives = (int(found[1]), int(found[2])) if found else (None, None)
    return {"hold_s": hold, "state": state, "wall_s": wall, "sensor_s": sensor_wait,
            "jobs": jobs, "transform_union_s": transform_union, "airflow_s": airflow,
            "airflow_share": airflow / wall if wall else 0.0,
            "between_tasks_s": max(0.0, wall - busy), "spans": spans, "summary": summary,
            "left": left, "outputs": outputs, "received": received, "receives": receives}


def show(row: dict[str, Any]) -> None:
    """The run's summary and its split of the wall time."""
    received, receives = row["received"], row["receives"]
    per_call = received / receives if received is not None and receives else None
    say("")
    say(row["summary"])
    say("")
    say(f"run (transform_hold_seconds {row['hold_s']:g}): {row['state']} in "
        f"{row['wall_s']:.1f} s wall (trigger to end); outputs {row['outputs']}; queue left: "
        f"{row['left'].get('ApproximateNumberOfMessages')} visible, "
        f"{row['left'].get('ApproximateNumberOfMessagesNotVisible')} in flight")
    say(f"  sensor             {row['sensor_s']:6.2f} s  ({receives} ReceiveMessage calls for "
        f"{received} messages: {per_call} per call; reading the batch included)")
    for model, (start, end) in row["jobs"].items():
        say(f"  transform {model:<17}{end - start:6.2f} s")
    say(f"  transforms (union) {row['transform_union_s']:6.2f} s")
    say(f"  Airflow's share    {row['airflow_s']:6.2f} s  ({row['airflow_share']:.0%} of the "
        f"wall time; no task and no job running: {row['between_tasks_s']:.2f} s)")


def _figures(row: dict[str, Any]) -> dict[str, Any]:
    received, receives = row["received"], row["receives"]
    return {
        "hold_s": row["hold_s"], "state": row["state"], "wall_s": r3(row["wall_s"]),
        "sensor_s": r3(row["sensor_s"]),
        "transform_s": {m: r3(e - s) for m, (s, e) in row["jobs"].items()},
        "transform_union_s": r3(row["transform_union_s"]), "airflow_s": r3(row["airflow_s"]),
        "airflow_share": r3(row["airflow_share"]), "between_tasks_s": r3(row["between_tasks_s"]),
        "task_s": {t: r3(e - s) for t, (s, e) in sorted(row["spans"].items())},
        "receive_calls": receives, "messages_received": received,
        "messages_per_receive_call": r3(received / receives) if received and receives else None,
        "outputs": row["outputs"]}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it ran (whether or not the goal was met)."""
    parser = start_script(__doc__)
    parser.add_argument("--clips", type=int, default=100, help="queued clips (100)")
    parser.add_argument("--executor", choices=("celery", "local"), default="celery")
    parser.add_argument("--warm-clips", type=int, default=5,
                        help="clips of the warm-up run, which starts the model servers (5)")
    parser.add_argument("--hold", type=float, default=60.0,
                        help="transform_hold_seconds of the measured run (60; the baseline "
                             "run has 0)")
    args = parser.parse_args(argv)
    load_before = load_average()
    say(f"bench/pipeline_deployed.py: inference_dev on {args.clips} queued clips, "
        f"{args.executor} executor; {machine()}")

    from local_test.airflow_deploy import Deployment
    from serving.aws import ClientFactory
    from serving.settings import Settings

    started = time.monotonic()
    with Deployment(args.executor, variable={**SETTINGS, "max_messages": args.clips},
                    echo=lambda line: say("  " + line)) as deployment:
        say(f"deployment ready in {time.monotonic() - started:.1f} s")
        api = deployment.api
        api.unpause("inference_dev")
        clients = ClientFactory(Settings.from_environ(deployment.stack_environ()))
        # the embedded SageMaker keeps each model's server warm between jobs (as a warm pool
        # would): a first run on a few clips starts them, so neither measured run pays it
        warm = measure(deployment, clients, 0.0, args.warm_clips, "videos/2026/10/front/")
        warm_up = warm["wall_s"]
        say(f"warm-up run on {args.warm_clips} clips: {warm['state']} in {warm_up:.1f} s")
        base = measure(deployment, clients, 0.0, args.clips, "videos/2026/11/front/")
        held = measure(deployment, clients, args.hold, args.clips, "videos/2026/11/rear/")

    for row in (base, held):
        show(row)
    goal_met = held["state"] == "success" and held["airflow_share"] <= 0.20
    say("")
    say(f"Airflow's share: {base['airflow_share']:.0%} with transform_hold_seconds 0 "
        f"(baseline), {held['airflow_share']:.0%} with {args.hold:g}; wall time ratio "
        f"held / baseline = {held['wall_s'] / base['wall_s']:.2f}")
    say(f"goal: Airflow <= 20 % of the wall time: {held['airflow_share']:.0%} -> "
        f"{'met' if goal_met else 'NOT met'}")
    say(json_line({
        "bench": "pipeline_deployed", "executor": args.executor, "clips": args.clips,
        "warm_up_s": r3(warm_up), "baseline": _figures(base), "held": _figures(held),
        "wall_ratio": r3(held["wall_s"] / base["wall_s"]), "goal_met": goal_met,
        "load_average": [load_before, load_average()],
    }))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
