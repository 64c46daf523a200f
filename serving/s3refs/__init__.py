"""S3-reference requests: a record names where the inputs are and where the output goes.

A model that takes S3 references answers records like this one (see
``DESIGN.md``)::

    {"bucket": "my-bucket",
     "inputs": {"video": "videos/2026/11/a.npy", "features": "feat/a.npz"},
     "output_path": "results/model2/a.npy",
     "overwrite": false}

and a handler module uses it in a few lines::

    from serving import s3refs

    def input_fn(body, content_type):
        return s3refs.parse_records(body, content_type)

    def predict_fn(records, model):
        return s3refs.runtime().process(records, lambda batch: [run(model, b) for b in batch])

    def output_fn(results, accept):
        return s3refs.response(results)  # (body, content type)

One outcome per record: the answer (a 200) holds, in request order, one
``{"status": "written" | "skipped" | "failed", "bucket", "key", "inputs", ...}``
per record; a failed one carries ``error`` and a ``message`` that names its
input key(s), and an error document is written beside its output
(``<output_path>.error.json``). A bad record never fails its neighbours:
``predict`` may return an exception in a record's place, and a batch for
which it raises is split until the bad records are alone. Only a body that
cannot be read at all (not JSON, no records) is refused as a whole (4xx).

Safe by default: a record may only name buckets on ``SMSERVE_ALLOWED_BUCKETS``
and write under ``SMSERVE_OUTPUT_PREFIXES``; keys are relative and cannot climb
out of their prefix. Error messages name the input, the field and what to
change, never credentials.

Parts: :mod:`~serving.s3refs.records` (records, parsing, conflicts between
them), :mod:`~serving.s3refs.checks` (what a record may touch; no I/O),
:mod:`~serving.s3refs.outcomes` (outcomes, error documents, per-record
predict), ``_s3io`` (:class:`S3Refs`: the S3 calls).
"""

from __future__ import annotations

import os
import threading

from serving.s3refs._s3io import S3Refs
from serving.s3refs.checks import validate
from serving.s3refs.outcomes import (
    ERROR_SUFFIX,
    STATUSES,
    RecordResult,
    call_predict,
    error_path,
    read_outcomes,
    response,
)
from serving.s3refs.records import (
    JSONLINES_TYPES,
    MAX_INPUTS,
    MAX_KEY_BYTES,
    MAX_RECORDS,
    RejectedRecord,
    RequestRecord,
    check_batch,
    conflicts,
    dumps_records,
    parse_records,
)
from serving.settings import Settings

__all__ = [
    "ERROR_SUFFIX",
    "JSONLINES_TYPES",
    "MAX_INPUTS",
    "MAX_KEY_BYTES",
    "MAX_RECORDS",
    "STATUSES",
    "RecordResult",
    "RejectedRecord",
    "RequestRecord",
    "S3Refs",
    "call_predict",
    "check_batch",
    "conflicts",
    "dumps_records",
    "error_path",
    "parse_records",
    "read_outcomes",
    "reset_runtime",
    "response",
    "runtime",
    "validate",
]

_runtime: S3Refs | None = None
_runtime_pid = 0
_runtime_lock = threading.Lock()


def runtime() -> S3Refs:
    """The process-wide :class:`S3Refs`, built on first use from the environment.

    Settings come from :meth:`Settings.from_environ` and the client from
    :class:`serving.aws.ClientFactory`, so ``AWS_ENDPOINT_URL`` points it at
    the embedded stack. Thread-safe; a forked child builds its own.
    """
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            from serving.aws import ClientFactory

            settings = Settings.from_environ()
            _runtime = S3Refs(ClientFactory(settings).client("s3"), settings)
            _runtime_pid = os.getpid()
        return _runtime


def reset_runtime() -> None:
    """Forget the process-wide instance (tests; after the environment changed)."""
    global _runtime
    with _runtime_lock:
        old, _runtime = _runtime, None
    if old is not None and _runtime_pid == os.getpid():
        old.close()
