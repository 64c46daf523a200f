"""Which batch settings a job runs with, and the environment its containers get.

Precedence for ``MaxConcurrentTransforms``, ``BatchStrategy`` and
``MaxPayloadInMB``: the request, then the container's answer to
``GET /execution-parameters`` (called once, before the first invocation),
then the defaults 1, ``MultiRecord``, 6. The container may spell the
strategy ``MULTI_RECORD`` / ``SINGLE_RECORD`` (what the service documents) or
``MultiRecord`` / ``SingleRecord`` (the API's spelling); both are accepted.
A 404 there, or no answer, means "use the defaults".
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.transform.spec import MAX_PAYLOAD_TIMES_CONCURRENCY, TransformJobSpec

DEFAULTS: Mapping[str, Any] = {"MaxConcurrentTransforms": 1, "BatchStrategy": "MultiRecord",
                               "MaxPayloadInMB": 6}
_STRATEGY = {"MULTI_RECORD": "MultiRecord", "SINGLE_RECORD": "SingleRecord",
             "MultiRecord": "MultiRecord", "SingleRecord": "SingleRecord"}
_ENV_STRATEGY = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}


@dataclass(frozen=True)
class BatchParams:
    """The batch settings a job runs with, and where each came from.

    Attributes:
        batch_strategy: ``SingleRecord`` or ``MultiRecord``.
        max_payload_mb: 0..100 (0 = no limit).
        max_concurrent: concurrent invocations per container (>= 1).
        sources: field name -> ``request``, ``execution-parameters`` or ``default``.
        notes: what was ignored or adjusted, for the job log.
    """

    batch_strategy: str
    max_payload_mb: int
    max_concurrent: int
    sources: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


def parse_execution_parameters(body: bytes) -> tuple[dict[str, Any], list[str]]:
    """Read a ``/execution-parameters`` answer.

    Returns:
        the usable fields (strategy in the API spelling, numbers as ints) and
        notes naming the fields that were ignored and why.
    """
    notes: list[str] = []
    try:
        doc = json.loads(body)
    except ValueError:
        return {}, [f"/execution-parameters answered {body[:80]!r}, not JSON; using defaults"]
    if not isinstance(doc, dict):
        return {}, ["/execution-parameters answered JSON that is not an object; "
                    "using defaults"]
    out: dict[str, Any] = {}
    if "BatchStrategy" in doc:
        strategy = _STRATEGY.get(str(doc["BatchStrategy"]))
        if strategy:
            out["BatchStrategy"] = strategy
        else:
            notes.append(f"/execution-parameters BatchStrategy={doc['BatchStrategy']!r} "
                         "ignored; expected MULTI_RECORD or SINGLE_RECORD")
    for name, low, high in (("MaxPayloadInMB", 0, 100), ("MaxConcurrentTransforms", 1, None)):
        if name not in doc:
            continue
        raw = doc[name]
        try:
            value = int(raw)
            if isinstance(raw, bool) or str(value) != str(raw).strip():
                raise ValueError
        except (TypeError, ValueError):
            notes.append(f"/execution-parameters {name}={raw!r} ignored; not a whole number")
            continue
        if value < low or (high is not None and value > high):
            notes.append(f"/execution-parameters {name}={value} ignored; out of range")
            continue
        out[name] = value
    return out, notes


def resolve(spec: TransformJobSpec, container: Mapping[str, Any] | None = None,
            container_notes: tuple[str, ...] | list[str] = ()) -> BatchParams:
    """Apply the precedence rule to ``spec`` and the container's parameters.

    Args:
        spec: the job (fields it leaves out are None).
        container: what :func:`parse_execution_parameters` made of the
            container's answer; None or empty when it had none.
        container_notes: notes from parsing, carried into the result.
    """
    container = container or {}
    request = {"BatchStrategy": spec.batch_strategy, "MaxPayloadInMB": spec.max_payload_mb,
               "MaxConcurrentTransforms": spec.max_concurrent or None}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, default in DEFAULTS.items():
        if request[name] is not None:
            values[name], sources[name] = request[name], "request"
        elif name in container:
            values[name], sources[name] = container[name], "execution-parameters"
        else:
            values[name], sources[name] = default, "default"
    notes = list(container_notes)
    payload, concurrent = values["MaxPayloadInMB"], values["MaxConcurrentTransforms"]
    if payload and payload * concurrent > MAX_PAYLOAD_TIMES_CONCURRENCY:
        lowered = max(1, MAX_PAYLOAD_TIMES_CONCURRENCY // payload)
        notes.append(f"MaxConcurrentTransforms={concurrent} ({sources['MaxConcurrentTransforms']})"
                     f" x MaxPayloadInMB={payload} ({sources['MaxPayloadInMB']}) is over "
                     f"{MAX_PAYLOAD_TIMES_CONCURRENCY}; using MaxConcurrentTransforms={lowered}")
        values["MaxConcurrentTransforms"] = lowered
    return BatchParams(batch_strategy=values["BatchStrategy"], max_payload_mb=payload,
                       max_concurrent=values["MaxConcurrentTransforms"], sources=sources,
                       notes=tuple(notes))


def container_environment(spec: TransformJobSpec,
                          model_environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a transform container gets, on top of the process's own.

    The model's container environment, then the job's ``Environment`` on top,
    then ``SAGEMAKER_BATCH=true``, and ``SAGEMAKER_MAX_PAYLOAD_IN_MB``,
    ``SAGEMAKER_BATCH_STRATEGY`` (``SINGLE_RECORD`` / ``MULTI_RECORD``) and
    ``SAGEMAKER_MAX_CONCURRENT_TRANSFORMS`` only when the request set them.
    """
    env = dict(model_environment or {})
    env.update(spec.environment)
    env["SAGEMAKER_BATCH"] = "true"
    if spec.max_payload_mb is not None:
        env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(spec.max_payload_mb)
    if spec.batch_strategy is not None:
        env["SAGEMAKER_BATCH_STRATEGY"] = _ENV_STRATEGY[spec.batch_strategy]
    if spec.max_concurrent is not None:
        env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(spec.max_concurrent)
    return env
