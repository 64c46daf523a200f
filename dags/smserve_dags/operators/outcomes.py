"""Per-record outcomes in the inference DAG: read the `.out` objects, decide each message's fate.

A model's transform job writes one outcome per record into its ``.out``
objects (:mod:`serving.s3refs.outcomes`): ``written``, ``skipped`` or
``failed`` with a message naming the input key. That is how the DAG learns
which record failed; nothing else is shared.

:func:`message_fates` decides, per message of the batch: ``delete`` when
every model's output exists for every object it names (written now or
before), ``keep`` otherwise, with why (each model's message for the
object), its ``ApproximateReceiveCount``, and whether the next failure sends
it to the dead-letter queue. :func:`write_note` leaves that reason where an
operator who finds the message on the dead-letter queue will look:
``s3://<bucket>/<work_prefix>notes/<message id>.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from smserve_dags.operators.aws import describe_error, each

__all__ = ["Fate", "count_answers", "failed_reason", "message_fates", "note_key",
           "outputs_written", "read_outcomes", "write_note"]

log = logging.getLogger("smserve.outcomes")

#: Failed objects named in one reason line (the rest are counted).
SHOWN = 5


def read_outcomes(s3: Any, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Output key -> outcome, from every ``.out`` object under ``s3://bucket/prefix``.

    A later answer for the same output (a later job of the run) wins.
    """
    from serving.s3refs import read_outcomes as parse

    found: dict[str, dict[str, Any]] = {}
    items = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        items.extend(page.get("Contents", []))
    keys = [item["Key"] for item in sorted(
        items, key=lambda i: (i.get("LastModified") or datetime.min, i["Key"]))
        if item["Key"].endswith(".out")]
    # read at once (bounded), parsed in the listing's order: a later job's answer still wins
    bodies = each(lambda key: s3.get_object(Bucket=bucket, Key=key)["Body"].read(), keys)
    for body in bodies:
        for outcome in parse(body):
            if outcome is not None and outcome.key:
                found[outcome.key] = outcome.to_dict()
    return found


def failed_reason(outcomes: Sequence[Mapping[str, Any]]) -> str | None:
    """One reason naming the failed records' inputs and why (None: none failed)."""
    failed = [o for o in outcomes if o.get("status") == "failed"]
    if not failed:
        return None
    lines = [f"{len(failed)} of {len(outcomes)} record(s) failed; fix or remove the objects, "
             "they are retried when their messages come back:"]
    for o in failed[:SHOWN]:
        lines.append(f"{o.get('error', 'Failed')}: {o.get('message', '')}")
    if len(failed) > SHOWN:
        lines.append(f"... and {len(failed) - SHOWN} more")
    return "\n".join(lines)


@dataclass(frozen=True)
class Fate:
    """What happens to one message of the batch.

    Attributes:
        message_id: the message.
        keys: the objects it names.
        delete: every model finished every object.
        reasons: why it is kept (one line per model and object that did not finish).
        receive_count: its ``ApproximateReceiveCount`` (0: unknown).
    """

    message_id: str
    keys: tuple[str, ...]
    delete: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)
    receive_count: int = 0

    def describe(self, max_receive_count: int, dlq: str, visibility_seconds: int) -> str:
        """One line: the message, its objects and its fate."""
        named = ", ".join(self.keys)
        if self.delete:
            return f"message {self.message_id} ({named}): deleted"
        if not max_receive_count:
            then = "no redrive policy: it comes back every run until it is fixed or deleted"
        elif self.receive_count >= max_receive_count:
            then = (f"received {self.receive_count} of {max_receive_count} time(s): the next "
                    f"failure sends it to the dead-letter queue {dlq}")
        else:
            then = (f"received {self.receive_count} of {max_receive_count} time(s) before SQS "
                    f"moves it to {dlq}")
        why = "; ".join(self.reasons) or "not every model finished it"
        return (f"message {self.message_id} ({named}): kept, back on the queue after its "
                f"visibility timeout ({visibility_seconds} s); {then}; why: {why}")


def message_fates(messages: Sequence[Mapping[str, Any]], keys_of: Mapping[str, Sequence[str]],
                  expected: Mapping[str, Mapping[str, str]], exists: set[str],
                  outcomes: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  model_states: Mapping[str, str]) -> list[Fate]:
    """Each message's fate.

    Args:
        messages: the batch's ``ReceiveMessage`` entries.
        keys_of: message id -> the objects it names.
        expected: model -> (object key -> that model's output key).
        exists: output keys that exist now.
        outcomes: model -> (output key -> its outcome in this run's ``.out`` objects).
        model_states: model -> a word on how its tasks ended, for records it never answered.
    """
    fates = []
    for message in messages:
        message_id = str(message.get("MessageId", "?"))
        keys = tuple(keys_of.get(message_id, ()))
        reasons: list[str] = []
        for model, outputs in expected.items():
            for key in keys:
                out = outputs.get(key)
                if out is None or out in exists:
                    continue
                outcome = outcomes.get(model, {}).get(out)
                if outcome and outcome.get("status") == "failed":
                    reasons.append(f"{model} failed on {key}: {outcome.get('error')}: "
                                   f"{outcome.get('message')}")
                else:
                    state = model_states.get(model) or "did not run"
                    reasons.append(f"{model} wrote no output for {key} ({state})")
        try:
            count = int((message.get("Attributes") or {}).get("ApproximateReceiveCount", 0))
        except (TypeError, ValueError):
            count = 0
        fates.append(Fate(message_id, keys, not reasons, tuple(reasons), count))
    return fates


def note_key(work_prefix: str, message_id: str) -> str:
    """Where a kept message's note goes: ``<work_prefix>notes/<message id>.json``."""
    return f"{work_prefix.rstrip('/')}/notes/{message_id}.json"


def write_note(s3: Any, bucket: str, work_prefix: str, fate: Fate, *, dag_id: str,
               run_id: str, body: str) -> str:
    """Write why ``fate``'s message was kept (replacing an earlier note); returns the key."""
    key = note_key(work_prefix, fate.message_id)
    doc = {"message_id": fate.message_id, "objects": list(fate.keys),
           "reasons": list(fate.reasons), "receive_count": fate.receive_count,
           "dag_id": dag_id, "run_id": run_id, "body": body,
           "written": datetime.now(UTC).isoformat(timespec="seconds")}
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc, indent=1).encode(),
                  ContentType="application/json")
    return key


def count_answers(s3: Any, output_uri: str) -> tuple[int, int, int]:
    """``(written, skipped, other)`` answers in the ``.out`` objects under ``output_uri``."""
    from serving.transform.spec import parse_s3_uri

    bucket, prefix = parse_s3_uri(output_uri, "S3OutputPath")
    written = skipped = other = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            for line in body.splitlines():
                if not line.strip():
                    continue
                try:
                    status = json.loads(line).get("status")
                except (ValueError, AttributeError):
                    status = None
                if status == "written":
                    written += 1
                elif status == "skipped":
                    skipped += 1
                else:
                    other += 1
    return written, skipped, other


def outputs_written(s3: Any, request_uri: str) -> int:
    """Outputs of the request file's records that exist (a failed job may write some)."""
    from serving.s3refs import parse_records
    from serving.transform.spec import parse_s3_uri

    from smserve_dags.operators.batch import existing_keys

    try:
        bucket, key = parse_s3_uri(request_uri, "request")
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        records = parse_records(body, "application/jsonlines")
        return len(existing_keys(s3, bucket, [r.output_path for r in records]))
    except Exception as err:  # counting is a courtesy; the failure is what matters
        log.warning("cannot count the outputs of %s: %s", request_uri, describe_error(err))
        return 0
