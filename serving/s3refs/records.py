"""Request records: parse a body into records, check what each may touch; no S3 calls.

A body holds one record per object to process. Whatever is wrong with one
record (a missing field, a key that climbs out of its prefix, an output
another record also writes) belongs to that record: :func:`parse_records`
returns a :class:`RejectedRecord` in its place, and
:meth:`serving.s3refs.S3Refs.process` answers it as ``failed`` while its
neighbours are processed. Only what is wrong with the body as a whole (not
UTF-8, not JSON, no records, too many) refuses the request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedContentType,
)

#: Most records one request body may hold.
MAX_RECORDS = 10_000
#: Most inputs one record may name.
MAX_INPUTS = 256
#: Longest S3 key, in UTF-8 bytes (S3's own limit).
MAX_KEY_BYTES = 1024
#: Content types read as one JSON object per line.
JSONLINES_TYPES = frozenset(
    {"application/jsonlines", "application/x-jsonlines", "application/jsonl"}
)

_FIELDS = ("bucket", "inputs", "output_path", "overwrite")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def show(value: Any, limit: int = 120) -> str:
    """``repr`` of a client-supplied value, cut short (control characters escaped)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class RequestRecord:
    """One request: read ``inputs`` from ``bucket``, write the result to ``output_path``.

    Attributes:
        bucket: the bucket holding the inputs and receiving the output.
        inputs: input name (what ``predict`` sees) -> key in ``bucket``.
        output_path: the key the output is written to; a pure function of the
            inputs, so a rerun finds it and skips the record.
        overwrite: write even when ``output_path`` already exists.
    """

    bucket: str
    inputs: Mapping[str, str]
    output_path: str
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.inputs, Mapping):  # a private copy: the caller's dict may change
            object.__setattr__(self, "inputs", dict(self.inputs))

    def __hash__(self) -> int:
        inputs = self.inputs.items() if isinstance(self.inputs, Mapping) else ()
        return hash((self.bucket, tuple(sorted(inputs, key=repr)), self.output_path,
                     self.overwrite))

    @classmethod
    def from_dict(cls, value: Any, index: int = 0) -> RequestRecord:
        """Build a record from parsed JSON, checking its structure.

        Unknown fields are refused rather than ignored: a misspelt
        ``"overwirte": true`` must not silently mean "do not overwrite".
        Whether the bucket and keys are *allowed* is :func:`validate`'s job.

        Args:
            value: the decoded JSON value.
            index: the record's position in its body, for error messages.

        Raises:
            BadRequest: naming ``record[index]``, the field and what to fix.
        """
        return _from_dict(value, f"record[{index}]")

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data (the shape :meth:`from_dict` reads)."""
        return {
            "bucket": self.bucket,
            "inputs": dict(self.inputs),
            "output_path": self.output_path,
            "overwrite": self.overwrite,
        }


@dataclass(frozen=True)
class RejectedRecord(RequestRecord):
    """A record of the body that could not be read; it is answered ``failed``, never run.

    ``bucket``, ``inputs`` and ``output_path`` hold what could be read of it
    (empty when nothing could), so the answer still names the object.

    Attributes:
        error: why it was rejected (its message names the record and the field).
    """

    error: BadRequest = field(default_factory=lambda: BadRequest("unreadable record"))

    def __hash__(self) -> int:
        return hash((RequestRecord.__hash__(self), str(self.error)))


def _partial(value: Any, error: BadRequest) -> RejectedRecord:
    """What can be read of a malformed record, kept with its error."""
    got = value if isinstance(value, dict) else {}
    bucket = str(got["bucket"]) if isinstance(got.get("bucket"), str) else ""
    output = str(got["output_path"]) if isinstance(got.get("output_path"), str) else ""
    raw = got.get("inputs")
    inputs = {str(k): v for k, v in raw.items() if isinstance(v, str)} \
        if isinstance(raw, dict) else {}
    return RejectedRecord(bucket, inputs, output, False, error)


def _from_dict(value: Any, where: str) -> RequestRecord:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected a JSON object with fields bucket, inputs, "
                         f"output_path, got {type(value).__name__}", record=where)
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {', '.join(map(show, unknown))}; "
                         f"a record has only {', '.join(_FIELDS)}", record=where, field=unknown[0])
    for name in ("bucket", "inputs", "output_path"):
        if name not in value:
            raise BadRequest(f"{where}: field {name!r} is missing", record=where, field=name)
    bucket, inputs, output = value["bucket"], value["inputs"], value["output_path"]
    if not isinstance(bucket, str) or not bucket:
        raise BadRequest(f"{where}: 'bucket' must be a non-empty string, got {show(bucket)}",
                         record=where, field="bucket")
    if not isinstance(output, str) or not output:
        raise BadRequest(f"{where}: 'output_path' must be a non-empty string (a key), "
                         f"got {show(output)}", record=where, field="output_path")
    if not isinstance(inputs, dict) or not inputs:
        raise BadRequest(f"{where}: 'inputs' must be a non-empty object of name -> key, "
                         f"got {show(inputs)}", record=where, field="inputs")
    if len(inputs) > MAX_INPUTS:
        raise BadRequest(f"{where}: 'inputs' names {len(inputs)} objects; at most "
                         f"{MAX_INPUTS} per record", record=where, field="inputs")
    for name, key in inputs.items():
        if not name or _CONTROL.search(name):
            raise BadRequest(f"{where}: input name {show(name)} must be non-empty printable "
                             "text", record=where, field="inputs")
        if not isinstance(key, str) or not key:
            raise BadRequest(f"{where}: inputs[{name!r}] must be a non-empty string (a key), "
                             f"got {show(key)}", record=where, field=f"inputs[{name!r}]")
    overwrite = value.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise BadRequest(f"{where}: 'overwrite' must be true or false, got {show(overwrite)}",
                         record=where, field="overwrite")
    return RequestRecord(bucket, dict(inputs), output, overwrite)


class _DuplicateField(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateField(key)
        out[key] = value
    return out


def _loads(text: str, where: str, hint: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateField as err:
        raise BadRequest(f"{where}: field {show(err.args[0])} appears twice in one object",
                         record=where) from err
    except json.JSONDecodeError as err:
        raise BadRequest(f"{where} is not valid JSON: {err.msg} (line {err.lineno}, "
                         f"column {err.colno}); {hint}", record=where) from err
    except RecursionError as err:
        raise BadRequest(f"{where} is nested too deeply to be a request record",
                         record=where) from err


def _record(value: Any, where: str, strict: bool) -> RequestRecord:
    try:
        return _from_dict(value, where)
    except BadRequest as err:
        if strict:
            raise
        return _partial(value, err)


def parse_records(body: bytes | str, content_type: str = "application/json", *,
                  strict: bool = False) -> list[RequestRecord]:
    """Parse a request body into records.

    Args:
        body: UTF-8 bytes (a BOM is allowed) or text.
        content_type: ``application/json`` (one object, or an array of
            objects) or ``application/jsonlines`` (aliases
            ``application/x-jsonlines``, ``application/jsonl``: one object per
            non-blank line). Parameters such as ``; charset=utf-8`` are ignored.
        strict: raise for the first malformed record (and for two records
            writing the same output) instead of returning it as a
            :class:`RejectedRecord` for :meth:`~serving.s3refs.S3Refs.process`
            to answer ``failed``.

    Returns:
        The records, in body order.

    Raises:
        UnsupportedContentType: for any other content type.
        BadRequest: for a body that is not UTF-8 or not JSON (naming the line),
            or holds no record; with ``strict``, a malformed record or the
            same output twice.
        PayloadTooLarge: more than :data:`MAX_RECORDS` records.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and media not in JSONLINES_TYPES:
        raise UnsupportedContentType(
            f"S3-reference requests are application/json or application/jsonlines, "
            f"not {show(content_type)}", content_type=content_type)
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            text = bytes(body).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise BadRequest(f"the request body is not UTF-8 (byte {err.start}); "
                             "send UTF-8 JSON") from err
    else:
        text = body
    records: list[RequestRecord] = []
    if media == "application/json":
        value = _loads(text, "the body", "send one JSON object, or a JSON array of objects "
                       "(several lines? use content type application/jsonlines)")
        items = value if isinstance(value, list) else [value]
        if len(items) > MAX_RECORDS:
            raise PayloadTooLarge(f"the body holds {len(items)} records; at most "
                                  f"{MAX_RECORDS} per request, split it")
        records = [_record(item, f"record[{i}]", strict) for i, item in enumerate(items)]
    else:
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            if len(records) >= MAX_RECORDS:
                raise PayloadTooLarge(f"the body holds more than {MAX_RECORDS} records; "
                                      "split it")
            where = f"line {number}"
            try:
                value = _loads(line, where, "send one JSON object per line")
            except BadRequest as err:
                if strict:
                    raise
                records.append(_partial(None, err))
                continue
            records.append(_record(value, where, strict))
    if not records:
        raise BadRequest("the request body holds no records; send at least one "
                         '{"bucket": ..., "inputs": {...}, "output_path": ...}')
    if strict:
        check_batch(records)
    return records


def dumps_records(records: Iterable[RequestRecord]) -> bytes:
    """Records as JSON lines (each ends with ``\\n``), the input of a batch transform."""
    return b"".join(
        json.dumps(r.to_dict(), separators=(",", ":")).encode() + b"\n" for r in records
    )


def conflicts(records: Sequence[RequestRecord]) -> tuple[dict[int, int], dict[int, BadRequest]]:
    """What is wrong between the records of one body, per record.

    Returns:
        ``(copies, errors)``: ``copies`` maps a record that repeats an earlier
        one exactly to that one (it gets the same outcome; the work is done
        once); ``errors`` maps a record to why it cannot run: it writes an
        output another, different record also writes (every such record
        fails: none of them is the right one), or it reads another record's
        output.
    """
    first: dict[RequestRecord, int] = {}
    copies: dict[int, int] = {}
    writers: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(records):
        if isinstance(r, RejectedRecord):
            continue
        same = first.setdefault(r, i)
        if same != i:
            copies[i] = same
            continue
        writers.setdefault((r.bucket, r.output_path), []).append(i)
    errors: dict[int, BadRequest] = {}
    for (bucket, key), group in writers.items():
        if len(group) > 1:
            names = ", ".join(f"record[{i}]" for i in group)
            for i in group:
                errors[i] = BadRequest(f"{names} all write s3://{bucket}/{key} from different "
                                       "inputs; give each record its own output_path",
                                       record=i, field="output_path")
    for i, r in enumerate(records):
        if isinstance(r, RejectedRecord) or i in copies or i in errors:
            continue
        for name, key in r.inputs.items():
            writer = writers.get((r.bucket, key))
            if writer:
                errors[i] = BadRequest(f"record[{i}] input {name!r} s3://{r.bucket}/{key} is "
                                       f"the output of record[{writer[0]}]; run them in two "
                                       "requests, the reader after the writer",
                                       record=i, field=f"inputs[{name!r}]")
                break
    return copies, errors


def check_batch(records: Sequence[RequestRecord]) -> None:
    """Refuse a body with any record-to-record conflict (see :func:`conflicts`).

    Raises:
        BadRequest: the first conflict.
    """
    _, errors = conflicts(records)
    if errors:
        raise errors[min(errors)]
