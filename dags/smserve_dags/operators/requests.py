"""Each model's first step: keep the batch invisible, build its requests, upload them.

Before a model runs, the batch's messages get another
``visibility_timeout_seconds`` of invisibility, so a long run does not hand
them to the next one. The requests are the local pipeline's
(:meth:`serving.pipeline.Graph.build_requests`): one S3-reference record per
input object, with fixed output keys; records whose output exists are left
out. The rest go to S3 as one JSON-lines object per model and batch, under a
key that names its content, so a transform job always reads what it was
created with.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from airflow.sdk import get_current_context, task

from smserve_dags.config import ConfigError, PipelineConfig, load_config
from smserve_dags.operators.aws import Aws, at_once, describe_error, error_code
from smserve_dags.operators.batch import batch_messages, existing_keys
from smserve_dags.operators.models import model_graph
from smserve_dags.operators.report import fail, report_message
from smserve_dags.operators.sqs import extend_visibility

__all__ = ["not_run_lines", "plan_key", "prepare", "prepare_requests", "run_prefix",
           "store_plan", "stored_plan"]

log = logging.getLogger("smserve.requests")


def run_prefix(cfg: PipelineConfig, dag_id: str, run_id: str, batch: str) -> str:
    """Where one run's request files and transform outputs go (``<work>/<dag>/<run>-<batch>/``)."""
    run = hashlib.sha256(f"{dag_id}\n{run_id}".encode()).hexdigest()[:12]
    return f"{cfg.work_prefix.rstrip('/')}/{dag_id}/{run}-{batch[:8]}/"


def _model_failed(ti: Any, model: str, records: int, reason: str) -> NoReturn:
    fail(ti, f"{model}: {reason}", report={
        "model": model, "status": "failed", "records": records, "written": 0, "skipped": 0,
        "failed": records, "reason": reason, "job": None, "started": None, "ended": None,
        "seconds": None})


def prepare(ti: Any, model: str, env: str, batch: Mapping[str, Any],
            messages: Sequence[Mapping[str, Any]] | None, *, cfg: PipelineConfig | None = None,
            aws: Aws | None = None) -> dict[str, Any]:
    """Extend the batch's visibility, build ``model``'s requests, upload the pending ones.

    Returns:
        ``{"model", "batch", "records", "pending", "exist", "blocked",
        "not_run", "request_uri", "output_uri"}``: what the transform needs
        (``request_uri`` is None when every output exists; ``not_run`` names
        the objects whose upstream output is missing, with why). ``cfg`` and
        ``aws``: the settings and clients the caller has already (else read here).

    Raises:
        AirflowFailException: the settings, the connection or S3 refused
            (the model's report says why).
    """
    keys = list(batch.get("keys") or [])
    try:
        if cfg is None:
            cfg = load_config(env)
        if aws is None:
            aws = Aws(cfg.aws_conn_id, cfg.variable)
            aws.check_connection()
    except ConfigError as err:
        _model_failed(ti, model, len(keys), str(err))
    bucket = str(batch["bucket"])
    try:
        from serving.s3refs import dumps_records

        graph = model_graph()
        records = graph.build_requests(model, bucket, keys, prefix=cfg.output_prefix)
        s3, sqs = aws.s3, aws.sqs  # the clients made once, here; the threads share them
        # the visibility is extended while the outputs are checked (both before any upload)
        lost, found = at_once(
            lambda: extend_visibility(sqs, str(batch["queue_url"]),
                                      batch_messages(batch, messages),
                                      cfg.visibility_timeout_seconds),
            lambda: existing_keys(s3, bucket, [r.output_path for r in records]))
        if lost:
            log.warning("%d message(s) could not be kept invisible (their receipt handle "
                           "went stale): %s", len(lost), ", ".join(lost))
        pending = [r for r in records if r.output_path not in found]
        pending, blocked = _upstream_ready(s3, bucket, graph[model].upstream_inputs,
                                           pending, keys, records)
        body = dumps_records(pending)
        base = run_prefix(cfg, ti.dag_id, ti.run_id, str(batch["batch"])) + f"{model}/"
        request_uri = None
        if pending:
            digest = hashlib.sha256(body).hexdigest()[:12]
            key = f"{base}requests/{digest}.jsonl"
            s3.put_object(Bucket=bucket, Key=key, Body=body,
                          ContentType="application/jsonlines")
            request_uri = f"s3://{bucket}/{key}"
    except Exception as err:
        if not error_code(err) and not isinstance(err, ValueError):
            raise
        _model_failed(ti, model, len(keys), f"building the requests failed: "
                                            f"{describe_error(err)}")
    exist = len(records) - len(pending) - len(blocked)
    log.info("%s: %d record(s), %d to run, %d output(s) exist%s", model, len(records),
             len(pending), exist, f"; requests in {request_uri}" if request_uri else "")
    return {"model": model, "batch": str(batch["batch"]), "records": len(records) - len(blocked),
            "pending": len(pending), "exist": exist, "blocked": len(blocked),
            "not_run": not_run_lines(model, blocked), "request_uri": request_uri,
            "output_uri": f"s3://{bucket}/{base}out/"}


def plan_key(cfg: PipelineConfig, ti: Any, model: str, batch: str) -> str:
    """Where :func:`prepare`'s result for one model of one run's batch is kept (``plan.json``).

    A transform task that prepares its own requests keeps the plan next to
    them: a resumed or rescheduled try (a new process; Airflow clears a
    rescheduled task's XComs) reads it back to report the job it adopts.
    """
    return run_prefix(cfg, ti.dag_id, ti.run_id, batch) + f"{model}/plan.json"


def store_plan(s3: Any, bucket: str, key: str, work: Mapping[str, Any]) -> None:
    """Keep ``work`` at ``s3://bucket/key``."""
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(work).encode(),
                  ContentType="application/json")


def stored_plan(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The plan kept at ``s3://bucket/key`` (None: there is none, or it is not a plan)."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:
        if error_code(err) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    try:
        plan = json.loads(body)
    except ValueError:
        return None
    return plan if isinstance(plan, dict) and "batch" in plan else None


def not_run_lines(model: str, blocked: Sequence[str]) -> list[str]:
    """What the report says of the objects ``model`` did not run (upstream output missing)."""
    if not blocked:
        return []
    return [f"{model}: {len(blocked)} record(s) not run: their upstream output does not "
            "exist (the upstream model failed on them):", *blocked]


@task(task_id="requests", retries=2)
def prepare_requests(model: str, env: str, batch: Mapping[str, Any],
                     messages: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """:func:`prepare` as a task of its own, for a DAG that keeps it apart from the transform.

    The inference DAG does not: its transform task prepares its requests itself.
    """
    ti = get_current_context()["ti"]
    work = prepare(ti, model, env, batch, messages)
    if work["not_run"]:  # said in the report: these objects are not run by this model
        report_message(ti, work["not_run"])
    return work


def _upstream_ready(s3: Any, bucket: str, upstream: Mapping[str, str], pending: list[Any],
                    keys: Sequence[str], records: Sequence[Any]) -> tuple[list[Any], list[str]]:
    """``pending`` without the records whose upstream model wrote no output, and those objects.

    An upstream model that failed on some records (``partial``) still lets
    this model run; it runs on the records whose inputs exist.
    """
    if not upstream or not pending:
        return pending, []
    source = {r.output_path: key for r, key in zip(records, dict.fromkeys(keys), strict=True)}
    wanted = sorted({r.inputs[name] for r in pending for name in upstream})
    there = existing_keys(s3, bucket, wanted)
    ready, blocked = [], []
    for r in pending:
        missing = sorted({src for name, src in upstream.items() if r.inputs[name] not in there})
        if missing:
            blocked.append(f"{source.get(r.output_path, r.output_path)}: no output of "
                           f"{', '.join(missing)}")
        else:
            ready.append(r)
    return ready, blocked
