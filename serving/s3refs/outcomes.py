"""Per-record outcomes: what a 200 answer says about each record, and the error documents.

Every record of a request gets one outcome, in request order::

    {"status": "written", "bucket": "b", "key": "results/m/a.npy", "bytes": 2176,
     "inputs": {"video": "videos/a.npy"}}
    {"status": "failed", "bucket": "b", "key": "results/m/bad.npy",
     "inputs": {"video": "videos/bad.npy"}, "error": "InvalidInput",
     "message": "s3://b/videos/bad.npy: input 'video' has shape (3, 5); expected ..."}

A failed record's output is not written; an error document
(:func:`error_path`: ``<output_path>.error.json``) is written beside it
instead, and deleted when the record later succeeds. The output key stays the
"done" signal, so a rerun of the same records redoes only the failed ones.

:func:`call_predict` gives each record its own outcome from a model's
``predict(batch)``: a model may return an exception in place of a record's
bytes, and when ``predict`` raises for a batch of several records, the batch
is split in halves until the records that fail are alone, so one bad record
never fails its neighbours.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.errors import PredictionError, SmserveError
from serving.s3refs.records import RequestRecord

log = logging.getLogger("serving.s3refs")

#: The outcomes a record can have.
STATUSES = ("written", "skipped", "failed")
#: Appended to ``output_path`` for a failed record's error document.
ERROR_SUFFIX = ".error.json"

#: ``predict(batch) -> one bytes (or an exception) per record``.
Predict = Callable[[list[dict[str, bytes]]], Sequence[Any]]


def error_path(output_path: str) -> str:
    """Where a failed record's error document goes: ``<output_path>.error.json``."""
    return output_path + ERROR_SUFFIX


@dataclass(frozen=True)
class RecordResult:
    """What happened to one record.

    Attributes:
        status: ``"written"``, ``"skipped"`` (the output existed and
            ``overwrite`` was false) or ``"failed"``.
        bucket: the output's bucket.
        key: the output's key.
        bytes: bytes written; for a skipped record, the existing object's
            size; 0 for a failed one.
        inputs: the record's inputs (name -> key), so the answer names them.
        error: for a failed record, the error's code (``InvalidInput``...).
        message: for a failed record, what is wrong and what to fix; it names
            the input key(s).
        cause: for a failed record, the exception (with its traceback), for
            tools that show where the model failed (``smserve check``); not
            part of the answer, nor of equality.
    """

    status: str
    bucket: str
    key: str
    bytes: int = 0
    inputs: Mapping[str, str] = field(default_factory=dict)
    error: str | None = None
    message: str | None = None
    cause: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """True for ``written`` and ``skipped``: the output exists."""
        return self.status in ("written", "skipped")

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data (one line of the answer)."""
        out: dict[str, Any] = {"status": self.status, "bucket": self.bucket, "key": self.key}
        if self.status != "failed":
            out["bytes"] = self.bytes
        out["inputs"] = dict(self.inputs)
        if self.status == "failed":
            out["error"] = self.error or "Failed"
            out["message"] = self.message or "the record failed; see the server log"
        return out

    @classmethod
    def from_dict(cls, value: Any) -> RecordResult | None:
        """Read one answer line back (None when it is not an outcome)."""
        if not isinstance(value, Mapping) or value.get("status") not in STATUSES:
            return None
        inputs = value.get("inputs")
        size = value.get("bytes")
        return cls(str(value["status"]), str(value.get("bucket") or ""),
                   str(value.get("key") or ""), size if isinstance(size, int) else 0,
                   {str(k): str(v) for k, v in inputs.items()}
                   if isinstance(inputs, Mapping) else {},
                   str(value["error"]) if value.get("error") else None,
                   str(value["message"]) if value.get("message") else None)


def describe_inputs(record: RequestRecord) -> str:
    """The record's inputs as ``s3://`` URIs (``name=`` before each when there are several)."""
    items = list(record.inputs.items()) if isinstance(record.inputs, Mapping) else []
    if not items or not record.bucket:
        return f"record for s3://{record.bucket}/{record.output_path}" if record.output_path \
            else "a record"
    if len(items) == 1:
        return f"s3://{record.bucket}/{items[0][1]}"
    return ", ".join(f"{name}=s3://{record.bucket}/{key}" for name, key in items)


def as_error(err: BaseException) -> SmserveError:
    """``err`` as one of ours; a foreign exception becomes a PredictionError caused by it."""
    if isinstance(err, SmserveError):
        return err
    ours = PredictionError(f"predict raised {type(err).__name__} on this record; see the "
                           "server log")
    ours.__cause__ = err
    return ours


def failed(record: RequestRecord, err: BaseException) -> RecordResult:
    """The ``failed`` outcome of ``record``; the message names its input key(s)."""
    ours = as_error(err)
    where = describe_inputs(record)
    keys = record.inputs.values() if isinstance(record.inputs, Mapping) else []
    text = ours.message
    if not any(isinstance(k, str) and k and k in text for k in keys):
        text = f"{where}: {text}"
    return RecordResult("failed", record.bucket, record.output_path, 0,
                        dict(record.inputs) if isinstance(record.inputs, Mapping) else {},
                        ours.code, text, err)


def error_document(result: RecordResult, model: str | None = None) -> bytes:
    """The JSON written at :func:`error_path` for a failed record."""
    doc: dict[str, Any] = {"error": result.error, "message": result.message,
                           "bucket": result.bucket, "output_path": result.key,
                           "inputs": dict(result.inputs)}
    if model:
        doc["model"] = model
    return json.dumps(doc, indent=1).encode() + b"\n"


def response(results: Sequence[RecordResult]) -> tuple[bytes, str]:
    """The body and content type a model answers with.

    One JSON object per result, ``\\n``-separated, with no trailing newline
    (batch transform's line assembly adds one after each response). One result
    is a plain JSON object, ``application/json``; several are
    ``application/jsonlines``.
    """
    body = "\n".join(json.dumps(r.to_dict(), separators=(",", ":")) for r in results)
    return body.encode(), "application/json" if len(results) == 1 else "application/jsonlines"


def read_outcomes(body: bytes) -> list[RecordResult | None]:
    """The outcomes in an answer or a ``.out`` object, one per non-empty line (None: not one)."""
    found: list[RecordResult | None] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        try:
            found.append(RecordResult.from_dict(json.loads(line)))
        except ValueError:
            found.append(None)
    return found


def call_predict(predict: Predict, batch: list[dict[str, bytes]]) -> list[bytes | SmserveError]:
    """``predict`` over ``batch``: one bytes or one error per record, in order.

    When ``predict`` raises for several records, each half is tried on its
    own (and so on), so the records that fail are found and the others still
    get their outputs; a batch that succeeds costs one call.

    Raises:
        PredictionError: ``predict`` broke the contract (not one bytes or
            exception per record): a bug in the model, not in a record.
    """
    try:
        outputs = predict(batch)
    except Exception as err:
        if len(batch) == 1:
            if not isinstance(err, SmserveError):
                log.exception("predict raised on one record")
            return [as_error(err)]
        log.info("predict raised %s on a batch of %d; trying each half alone",
                 type(err).__name__, len(batch))
        middle = len(batch) // 2
        return [*call_predict(predict, batch[:middle]), *call_predict(predict, batch[middle:])]
    return _check_outputs(outputs, len(batch))


def _check_outputs(outputs: Any, expected: int) -> list[bytes | SmserveError]:
    if isinstance(outputs, bytes | bytearray | memoryview | str) or not isinstance(
            outputs, Iterable):
        raise PredictionError(f"predict returned {type(outputs).__name__}; return a list with "
                              "one bytes object per record")
    found = list(outputs)
    if len(found) != expected:
        raise PredictionError(f"predict returned {len(found)} outputs for {expected} records; "
                              "return exactly one per record, in order")
    out: list[bytes | SmserveError] = []
    for i, item in enumerate(found):
        if isinstance(item, bytes | bytearray | memoryview):
            out.append(bytes(item))
        elif isinstance(item, BaseException):
            out.append(as_error(item))
        else:
            raise PredictionError(f"predict output {i} is {type(item).__name__}, not bytes; "
                                  "encode it (serving.codecs) before returning, or return an "
                                  "exception for a record that cannot be processed")
    return out
