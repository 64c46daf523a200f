"""The inference DAG's batch: the sensor that receives and reads it, the deletion when done.

:class:`BatchSensor` buffers the messages and reads what they ask for;
``delete_messages`` is a ``@task`` to call in a DAG. Both read their settings
from the environment's Variable when they run, and report what they did (see
:mod:`smserve_dags.operators.report`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow.sdk import TriggerRule, get_current_context, task

from smserve_dags.config import ConfigError, PipelineConfig, load_config
from smserve_dags.operators.aws import Aws, at_once, describe_error, each, error_code
from smserve_dags.operators.deadletter import dead_letter
from smserve_dags.operators.messages import BadMessage, batch_id, parse_batch
from smserve_dags.operators.report import fail, report_message
from smserve_dags.operators.sqs import SqsBufferingSensor, delete_batch

__all__ = ["BatchSensor", "delete_messages", "existing_keys", "read_batch"]

log = logging.getLogger("smserve.batch")

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
#: Parallel HeadObject calls.
HEAD_CONCURRENCY = 16


def existing_keys(s3: Any, bucket: str, keys: Sequence[str]) -> set[str]:
    """The keys of ``bucket`` that exist (concurrent HeadObject calls).

    Raises:
        Exception: S3 answered other than found or not found (no bucket, no permission).
    """
    def head(key: str) -> bool:
        try:
            s3.head_object(Bucket=bucket, Key=key)
        except Exception as err:
            if error_code(err) in _MISSING:
                return False
            raise
        return True

    if not keys:
        return set()
    with ThreadPoolExecutor(max(1, min(HEAD_CONCURRENCY, len(keys)))) as pool:
        found = list(pool.map(head, keys))
    return {k for k, ok in zip(keys, found, strict=True) if ok}


def _bad_lines(bad: Sequence[BadMessage], max_receive_count: int, dlq: str) -> list[str]:
    lines = []
    for b in bad:
        fate = ""
        if max_receive_count and b.receive_count:
            fate = f" (receive {b.receive_count} of {max_receive_count}"
            fate += f"; SQS moves it to {dlq} on the next receive)" \
                if b.receive_count >= max_receive_count else ")"
        lines.append(f"message {b.message_id}: {b.reason}{fate}")
    return lines


def _check_key(key: str) -> None:
    from serving.pipeline import output_key

    output_key("model", key)  # BadRequest (a ValueError) for a key that cannot be an input


def read_batch(ti: Any, cfg: PipelineConfig, aws: Aws, url: str,
               received: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The objects the batch asks for, the messages left on the queue (with why), report lines.

    Returns:
        ``{"batch", "bucket", "queue_url", "keys", "message_ids", "bad"}``
        (``message_ids``: the messages every model's success will delete), and
        the lines the sensor adds to its report.
    """
    try:
        s3, sqs = aws.s3, aws.sqs  # the clients made once, here; the threads share them
        # the redrive policy is read while the objects are checked
        batch, letters = at_once(
            lambda: parse_batch(received, cfg.bucket,
                                exists=lambda keys: existing_keys(s3, cfg.bucket, keys),
                                check_key=_check_key),
            lambda: dead_letter(sqs, url))
    except Exception as err:
        if not error_code(err):
            raise
        fail(ti, f"reading the batch failed: {describe_error(err)} (bucket {cfg.bucket}, "
                 f"queue {cfg.queue})")
    left = f"{len(batch.bad)} left on the queue" if batch.bad else "none left on the queue"
    lines = [f"{len(received)} message(s): {len(batch.message_ids)} usable "
             f"({len(batch.keys)} object(s)), {left}"]
    lines += _bad_lines(batch.bad, letters.max_receive_count, letters.queue)
    if batch.bad or letters.depth > 0:
        lines.append(letters.describe())
    return ({"batch": batch_id(batch.message_ids), "bucket": cfg.bucket, "queue_url": url,
             "keys": batch.keys, "message_ids": batch.message_ids,
             "bad": [{"message_id": b.message_id, "reason": b.reason,
                      "receive_count": b.receive_count} for b in batch.bad]}, lines)


class BatchSensor(SqsBufferingSensor):
    """The inference DAG's sensor: buffer a batch of messages, then read what it asks for.

    As :class:`~smserve_dags.operators.sqs.SqsBufferingSensor` (XCom
    ``messages``), and once received it pushes XCom ``batch``
    (:func:`read_batch`): the objects to process and the messages it sets aside
    (they stay on the queue and reach the dead-letter queue). With nothing to
    process the task succeeds and skips the models (a short circuit); the
    tasks that run ``all_done`` (deletion, the report) still run.
    """

    def received(self, ti: Any, cfg: PipelineConfig, aws: Aws, url: str,
                 messages: list[dict[str, Any]]) -> tuple[list[str], str | None]:
        """Push XCom ``batch``; skip the models when it has no object to process."""
        batch, lines = read_batch(ti, cfg, aws, url, messages)
        ti.xcom_push(key="batch", value=batch)
        if not batch["keys"]:
            lines.append("nothing to process: every model is skipped")
            return lines, "nothing to process: every model is skipped"
        return lines, None


def batch_messages(batch: Mapping[str, Any], messages: Sequence[Mapping[str, Any]] | None
                   ) -> list[Mapping[str, Any]]:
    """The received messages that belong to the batch (those a success deletes)."""
    wanted = set(batch.get("message_ids") or [])
    return [m for m in messages or [] if m.get("MessageId") in wanted]


@task(retries=2, trigger_rule=TriggerRule.ALL_DONE)
def delete_messages(env: str, models: Sequence[str]) -> None:
    """Delete each message whose every object every model finished; keep the others, saying why.

    Runs when every model's tasks are done, whatever their state. A message
    is deleted when every model's output exists for every object it names
    (written now, or skipped because it existed); any other is kept: it comes
    back after its visibility timeout, and SQS moves it to the dead-letter
    queue after the queue's ``maxReceiveCount``. Each kept message's reason
    (the failed records' messages, from the transforms' ``.out`` objects) is
    in this task's report and in ``s3://<bucket>/<work_prefix>notes/<id>.json``.

    Args:
        env: the settings' environment.
        models: the models of the DAG, in run order.
    """
    from airflow.sdk.exceptions import AirflowSkipException

    from smserve_dags.operators.messages import object_refs
    from smserve_dags.operators.models import model_graph
    from smserve_dags.operators.outcomes import message_fates, read_outcomes, write_note
    from smserve_dags.operators.report import collect_states, task_state
    from smserve_dags.operators.requests import run_prefix

    ti = get_current_context()["ti"]
    batch = ti.xcom_pull(task_ids="wait_for_messages", key="batch")
    messages = ti.xcom_pull(task_ids="wait_for_messages", key="messages")
    if not isinstance(batch, Mapping) or not batch.get("keys"):
        raise AirflowSkipException("no batch to process")
    chosen = batch_messages(batch, messages)
    bucket = str(batch["bucket"])
    try:
        cfg = load_config(env)
        aws = Aws(cfg.aws_conn_id, cfg.variable)
        keys_of = {str(m["MessageId"]): [k for _, k in object_refs(str(m.get("Body", "")))]
                   for m in chosen}
        every = list(dict.fromkeys(k for keys in keys_of.values() for k in keys))
        graph = model_graph()
        expected = {}
        for model in models:
            records = graph.build_requests(model, bucket, every, prefix=cfg.output_prefix)
            expected[model] = {k: r.output_path
                               for k, r in zip(dict.fromkeys(every), records, strict=True)}
        base = run_prefix(cfg, ti.dag_id, ti.run_id, str(batch["batch"]))
        s3, sqs = aws.s3, aws.sqs  # the clients made once, here; the threads share them
        # independent reads at once: the outputs and the redrive policy, then each model's outcomes
        exists, letters = at_once(
            lambda: existing_keys(s3, bucket, [o for m in expected.values() for o in m.values()]),
            lambda: dead_letter(sqs, str(batch["queue_url"])))
        outcomes = dict(zip(models, each(
            lambda m: read_outcomes(s3, bucket, f"{base}{m}/out/"), models), strict=True))
        states = collect_states(ti)
        ended = {m: f"its transform task is {task_state(states, f'{m}.transform') or 'unknown'}"
                 for m in models}
        fates = message_fates(chosen, keys_of, expected, exists, outcomes, ended)
        done = [m for m, f in zip(chosen, fates, strict=True) if f.delete]
        result = delete_batch(sqs, str(batch["queue_url"]), done)
        notes = each(lambda pair: write_note(s3, bucket, cfg.work_prefix, pair[1],
                                             dag_id=ti.dag_id, run_id=ti.run_id,
                                             body=str(pair[0].get("Body", ""))),
                     [(m, f) for m, f in zip(chosen, fates, strict=True) if not f.delete])
    except ConfigError as err:
        fail(ti, str(err))
    kept = [f for f in fates if not f.delete]
    lines = [f"deleted {len(result.deleted)} of {len(chosen)} message(s)"
             + (f"; {len(kept)} kept on the queue (why: below, and in "
                f"s3://{bucket}/{cfg.work_prefix.rstrip('/')}/notes/<message id>.json)"
                if kept else "")]
    lines += [f.describe(letters.max_receive_count, letters.queue,
                         cfg.visibility_timeout_seconds) for f in fates]
    if notes:
        log.info("wrote %d note(s): %s", len(notes), ", ".join(notes))
    if result.stale:
        lines.append(f"{len(result.stale)} receipt handle(s) went stale (the message was "
                     "received again after its visibility timeout); it comes back and its "
                     "finished work is skipped:")
        lines += [f"message {m}: {why}" for m, why in result.stale.items()]
    if result.failed:
        lines += [f"message {m} not deleted: {why}" for m, why in result.failed.items()]
        report_message(ti, lines)
        raise RuntimeError(f"{len(result.failed)} message(s) could not be deleted: "
                           + "; ".join(result.failed.values()))
    report_message(ti, lines)
