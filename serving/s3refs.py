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

Safe by default: a record may only name buckets on ``SMSERVE_ALLOWED_BUCKETS``
and write under ``SMSERVE_OUTPUT_PREFIXES``; keys are relative and cannot climb
out of their prefix; every record of a body is checked before anything is read,
and every input is read before anything is written. Error messages name the
record, the field and what to change, never credentials.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from serving.errors import (
    BadRequest,
    Forbidden,
    InputNotFound,
    PayloadTooLarge,
    PredictionError,
    SmserveError,
    StorageError,
    UnsupportedContentType,
)
from serving.settings import Settings

__all__ = [
    "JSONLINES_TYPES",
    "MAX_INPUTS",
    "MAX_KEY_BYTES",
    "MAX_RECORDS",
    "RecordResult",
    "RequestRecord",
    "S3Refs",
    "dumps_records",
    "parse_records",
    "reset_runtime",
    "response",
    "runtime",
]

log = logging.getLogger(__name__)

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
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})

T = TypeVar("T")


def _show(value: Any, limit: int = 120) -> str:
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
        return hash((self.bucket, tuple(sorted(self.inputs.items())), self.output_path,
                     self.overwrite))

    @classmethod
    def from_dict(cls, value: Any, index: int = 0) -> RequestRecord:
        """Build a record from parsed JSON, checking its structure.

        Unknown fields are refused rather than ignored: a misspelt
        ``"overwirte": true`` must not silently mean "do not overwrite".
        Whether the bucket and keys are *allowed* is :meth:`S3Refs.validate`'s job.

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


def _from_dict(value: Any, where: str) -> RequestRecord:
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected a JSON object with fields bucket, inputs, "
                         f"output_path, got {type(value).__name__}", record=where)
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise BadRequest(f"{where}: unknown field(s) {', '.join(map(_show, unknown))}; "
                         f"a record has only {', '.join(_FIELDS)}", record=where, field=unknown[0])
    for name in ("bucket", "inputs", "output_path"):
        if name not in value:
            raise BadRequest(f"{where}: field {name!r} is missing", record=where, field=name)
    bucket, inputs, output = value["bucket"], value["inputs"], value["output_path"]
    if not isinstance(bucket, str) or not bucket:
        raise BadRequest(f"{where}: 'bucket' must be a non-empty string, got {_show(bucket)}",
                         record=where, field="bucket")
    if not isinstance(output, str) or not output:
        raise BadRequest(f"{where}: 'output_path' must be a non-empty string (a key), "
                         f"got {_show(output)}", record=where, field="output_path")
    if not isinstance(inputs, dict) or not inputs:
        raise BadRequest(f"{where}: 'inputs' must be a non-empty object of name -> key, "
                         f"got {_show(inputs)}", record=where, field="inputs")
    if len(inputs) > MAX_INPUTS:
        raise BadRequest(f"{where}: 'inputs' names {len(inputs)} objects; at most "
                         f"{MAX_INPUTS} per record", record=where, field="inputs")
    for name, key in inputs.items():
        if not name or _CONTROL.search(name):
            raise BadRequest(f"{where}: input name {_show(name)} must be non-empty printable "
                             "text", record=where, field="inputs")
        if not isinstance(key, str) or not key:
            raise BadRequest(f"{where}: inputs[{name!r}] must be a non-empty string (a key), "
                             f"got {_show(key)}", record=where, field=f"inputs[{name!r}]")
    overwrite = value.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise BadRequest(f"{where}: 'overwrite' must be true or false, got {_show(overwrite)}",
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
        raise BadRequest(f"{where}: field {_show(err.args[0])} appears twice in one object",
                         record=where) from err
    except json.JSONDecodeError as err:
        raise BadRequest(f"{where} is not valid JSON: {err.msg} (line {err.lineno}, "
                         f"column {err.colno}); {hint}", record=where) from err
    except RecursionError as err:
        raise BadRequest(f"{where} is nested too deeply to be a request record",
                         record=where) from err


def parse_records(body: bytes | str, content_type: str = "application/json") -> list[RequestRecord]:
    """Parse a request body into records.

    Args:
        body: UTF-8 bytes (a BOM is allowed) or text.
        content_type: ``application/json`` (one object, or an array of
            objects) or ``application/jsonlines`` (aliases
            ``application/x-jsonlines``, ``application/jsonl``: one object per
            non-blank line). Parameters such as ``; charset=utf-8`` are ignored.

    Returns:
        The records, in body order.

    Raises:
        UnsupportedContentType: for any other content type.
        BadRequest: for a body that is not UTF-8 or not JSON (naming the line),
            holds no record or more than :data:`MAX_RECORDS`, has a malformed
            record, or names the same output twice.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and media not in JSONLINES_TYPES:
        raise UnsupportedContentType(
            f"S3-reference requests are application/json or application/jsonlines, "
            f"not {_show(content_type)}", content_type=content_type)
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
        records = [RequestRecord.from_dict(item, i) for i, item in enumerate(items)]
    else:
        for number, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            if len(records) >= MAX_RECORDS:
                raise PayloadTooLarge(f"the body holds more than {MAX_RECORDS} records; "
                                      "split it")
            where = f"line {number}"
            value = _loads(line, where, "send one JSON object per line")
            records.append(_from_dict(value, where))
    if not records:
        raise BadRequest("the request body holds no records; send at least one "
                         '{"bucket": ..., "inputs": {...}, "output_path": ...}')
    _check_batch(records)
    return records


def dumps_records(records: Iterable[RequestRecord]) -> bytes:
    """Records as JSON lines (each ends with ``\\n``), the input of a batch transform."""
    return b"".join(
        json.dumps(r.to_dict(), separators=(",", ":")).encode() + b"\n" for r in records
    )


def _check_batch(records: Sequence[RequestRecord]) -> None:
    """Refuse two records writing the same object, or one writing another's input."""
    outputs: dict[tuple[str, str], int] = {}
    for i, r in enumerate(records):
        first = outputs.setdefault((r.bucket, r.output_path), i)
        if first != i:
            raise BadRequest(f"record[{first}] and record[{i}] both write "
                             f"s3://{r.bucket}/{r.output_path}; give each record its own "
                             "output_path", record=i, field="output_path")
    for i, r in enumerate(records):
        for name, key in r.inputs.items():
            writer = outputs.get((r.bucket, key))
            if writer is not None:
                raise BadRequest(f"record[{i}] input {name!r} s3://{r.bucket}/{key} is the "
                                 f"output of record[{writer}]; outputs may not overwrite "
                                 "inputs", record=i, field=f"inputs[{name!r}]")


@dataclass(frozen=True)
class RecordResult:
    """What happened to one record.

    Attributes:
        status: ``"written"`` or ``"skipped"`` (the output existed and
            ``overwrite`` was false).
        bucket: the output's bucket.
        key: the output's key.
        bytes: bytes written; for a skipped record, the existing object's size.
    """

    status: str
    bucket: str
    key: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return {"status": self.status, "bucket": self.bucket, "key": self.key,
                "bytes": self.bytes}


def response(results: Sequence[RecordResult]) -> tuple[bytes, str]:
    """The body and content type a model answers with.

    One JSON object per result, ``\\n``-separated, with no trailing newline
    (batch transform's line assembly adds one after each response). One result
    is a plain JSON object, ``application/json``; several are
    ``application/jsonlines``.
    """
    body = "\n".join(json.dumps(r.to_dict(), separators=(",", ":")) for r in results)
    return body.encode(), "application/json" if len(results) == 1 else "application/jsonlines"


def _storage_error(err: Exception, action: str, bucket: str, key: str) -> SmserveError:
    """Map a boto error to ours; the message holds the S3 error code, never the raw text."""
    response_ = getattr(err, "response", None)
    if not isinstance(response_, dict):
        return StorageError(f"{action} s3://{bucket}/{key} failed ({type(err).__name__}); "
                            "check the S3 endpoint and credentials", bucket=bucket, key=key)
    code = str(response_.get("Error", {}).get("Code", ""))
    status = response_.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return StorageError(f"{action} s3://{bucket}/{key} failed ({code or 'error'}, HTTP {status}); "
                        "check that the model's role may use this bucket", bucket=bucket,
                        key=key, s3_code=code)


def _code(err: Exception) -> str:
    response_ = getattr(err, "response", None)
    return str(response_.get("Error", {}).get("Code", "")) if isinstance(response_, dict) else ""


class S3Refs:
    """Reads the inputs a record names and writes its output, for one S3 client.

    Args:
        s3_client: a boto3 S3 client (from :class:`serving.aws.ClientFactory`).
        settings: the allow-lists, ``fetch_concurrency`` and ``max_input_bytes``.
        executor: runs the S3 calls concurrently; default: a private pool of
            ``settings.fetch_concurrency`` threads, started on first use.

    Every public method checks its record with :meth:`validate` first. The
    model's role needs ``s3:ListBucket`` on each bucket, or S3 answers a
    missing output with 403 instead of 404 and :meth:`output_exists` raises.
    """

    def __init__(self, s3_client: Any, settings: Settings,
                 executor: concurrent.futures.Executor | None = None) -> None:
        self._s3 = s3_client
        self._settings = settings
        self._executor = executor
        self._owned: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        """The settings this instance enforces."""
        return self._settings

    def close(self) -> None:
        """Stop the private thread pool, if one was started."""
        with self._lock:
            owned, self._owned = self._owned, None
        if owned is not None:
            owned.shutdown(wait=True)

    # --- checks -----------------------------------------------------------

    def validate(self, record: RequestRecord) -> None:
        """Check that ``record`` only names what this model may touch.

        Raises:
            Forbidden: the bucket is not on ``SMSERVE_ALLOWED_BUCKETS``, a key
                is absolute or climbs (``..``), or ``output_path`` is outside
                ``SMSERVE_OUTPUT_PREFIXES``.
            BadRequest: a malformed bucket or key (empty segment, backslash,
                control character, over 1024 bytes), no inputs, or an output
                that is also an input.
        """
        bucket = record.bucket
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise BadRequest(f"bucket {_show(bucket)} is not a valid S3 bucket name",
                             field="bucket")
        allowed = self._settings.allowed_buckets
        if "*" not in allowed and bucket not in allowed:
            raise Forbidden(f"bucket {bucket!r} is not on the allow-list; add it to "
                            "SMSERVE_ALLOWED_BUCKETS", bucket=bucket, field="bucket")
        if not isinstance(record.inputs, Mapping) or not record.inputs:
            raise BadRequest("a record needs at least one input in 'inputs'", field="inputs")
        for name, key in record.inputs.items():
            _check_key(key, f"inputs[{name!r}]")
        _check_key(record.output_path, "output_path")
        if not any(_under(record.output_path, p) for p in self._settings.output_prefixes):
            shown = ", ".join(repr(p) for p in self._settings.output_prefixes) or "none"
            raise Forbidden(f"output_path {record.output_path!r} is outside the allowed output "
                            f"prefixes ({shown}); write under one of them or add a prefix to "
                            "SMSERVE_OUTPUT_PREFIXES", field="output_path")
        if record.output_path in record.inputs.values():
            raise BadRequest(f"output_path {record.output_path!r} is also an input; outputs "
                             "may not overwrite inputs", field="output_path")

    # --- single-record operations ----------------------------------------

    def output_exists(self, record: RequestRecord) -> int | None:
        """The size of the existing output object, or None when there is none.

        Raises:
            StorageError: S3 failed other than "not found".
        """
        self.validate(record)
        return self._head(record)

    def fetch(self, record: RequestRecord) -> dict[str, bytes]:
        """Read every input of ``record``, concurrently.

        Returns:
            Input name -> bytes, in the record's order.

        Raises:
            InputNotFound: an input object (or the bucket) does not exist.
            PayloadTooLarge: an input is over ``settings.max_input_bytes``.
            StorageError: S3 failed otherwise.
        """
        self.validate(record)
        return self._fetch_all([record])[0]

    def write(self, record: RequestRecord, body: bytes,
              content_type: str = "application/octet-stream") -> int:
        """Write ``body`` to the record's output in one PutObject (no partial object).

        Returns:
            The number of bytes written.
        """
        self.validate(record)
        return self._put(record, body, content_type)

    # --- the whole job ------------------------------------------------------

    def process(self, records: Sequence[RequestRecord],
                predict: Callable[[list[dict[str, bytes]]], Sequence[bytes]],
                content_type: str = "application/octet-stream") -> list[RecordResult]:
        """Validate, skip finished records, fetch, predict once, write.

        1. Every record is validated (and no two write the same output) before
           any S3 call.
        2. Records whose output exists and whose ``overwrite`` is false are
           skipped.
        3. The other records' inputs are read concurrently (an object shared
           by several records is read once); any failure raises before
           anything is written.
        4. ``predict`` is called once with one ``{name: bytes}`` per remaining
           record, in order, and must return one ``bytes`` per record. It is
           not called when every record was skipped.
        5. Outputs are written concurrently, each in one PutObject. If a
           write fails the error is raised; outputs already written stay (a
           rerun with the same records rewrites or skips them).

        Returns:
            One result per record, in input order.

        Raises:
            PredictionError: ``predict`` raised, or returned the wrong count
                or something other than bytes.
        """
        for r in records:
            self.validate(r)
        _check_batch(records)
        results: list[RecordResult | None] = [None] * len(records)
        sizes = self._map(self._head, [r for r in records if not r.overwrite])
        pending: list[int] = []
        size_iter = iter(sizes)
        for i, r in enumerate(records):
            size = None if r.overwrite else next(size_iter)
            if size is None:
                pending.append(i)
            else:
                results[i] = RecordResult("skipped", r.bucket, r.output_path, size)
        if pending:
            todo = [records[i] for i in pending]
            outputs = _call_predict(predict, self._fetch_all(todo))
            written = self._map(lambda pair: self._put(pair[0], pair[1], content_type),
                                list(zip(todo, outputs, strict=True)))
            for i, size in zip(pending, written, strict=True):
                r = records[i]
                results[i] = RecordResult("written", r.bucket, r.output_path, size)
        log.debug("s3refs: %d written, %d skipped", len(pending), len(records) - len(pending))
        return [r for r in results if r is not None]

    # --- S3 calls ------------------------------------------------------------

    def _head(self, record: RequestRecord) -> int | None:
        try:
            head = self._s3.head_object(Bucket=record.bucket, Key=record.output_path)
        except Exception as err:
            if _code(err) in _MISSING:
                return None
            raise _storage_error(err, "HeadObject", record.bucket, record.output_path) from err
        return int(head.get("ContentLength", 0))

    def _get(self, ref: tuple[str, str, str]) -> bytes:
        bucket, key, name = ref
        limit = self._settings.max_input_bytes
        try:
            got = self._s3.get_object(Bucket=bucket, Key=key)
        except Exception as err:
            if _code(err) in _MISSING:
                raise InputNotFound(f"input {name!r} not found: s3://{bucket}/{key} does not "
                                    "exist", bucket=bucket, key=key) from err
            raise _storage_error(err, "GetObject", bucket, key) from err
        body = got["Body"]
        try:
            size = int(got.get("ContentLength", 0))
            if size > limit:
                raise PayloadTooLarge(f"input {name!r} s3://{bucket}/{key} is {size} bytes, over "
                                      f"the {limit}-byte limit; raise SMSERVE_MAX_INPUT_MB",
                                      bucket=bucket, key=key)
            data: bytes = body.read()
        except SmserveError:
            raise
        except Exception as err:
            raise _storage_error(err, "GetObject", bucket, key) from err
        finally:
            body.close()
        if len(data) > limit:  # the length header lied
            raise PayloadTooLarge(f"input {name!r} s3://{bucket}/{key} is over the {limit}-byte "
                                  "limit; raise SMSERVE_MAX_INPUT_MB", bucket=bucket, key=key)
        return data

    def _put(self, record: RequestRecord, body: bytes, content_type: str) -> int:
        data = bytes(body)
        try:
            self._s3.put_object(Bucket=record.bucket, Key=record.output_path, Body=data,
                                ContentType=content_type)
        except Exception as err:
            if _code(err) == "NoSuchBucket":
                raise InputNotFound(f"bucket {record.bucket!r} does not exist",
                                    bucket=record.bucket) from err
            raise _storage_error(err, "PutObject", record.bucket, record.output_path) from err
        return len(data)

    def _fetch_all(self, records: Sequence[RequestRecord]) -> list[dict[str, bytes]]:
        refs: dict[tuple[str, str], str] = {}
        for r in records:
            for name, key in r.inputs.items():
                refs.setdefault((r.bucket, key), name)
        unique = list(refs)
        blobs = dict(zip(unique, self._map(self._get, [(b, k, refs[b, k]) for b, k in unique]),
                         strict=True))
        return [{name: blobs[r.bucket, key] for name, key in r.inputs.items()} for r in records]

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items`` on the executor; the first failure (in order) is raised."""
        if len(items) <= 1:
            return [fn(item) for item in items]
        executor = self._pool()
        futures = [executor.submit(fn, item) for item in items]
        done, _ = concurrent.futures.wait(futures,
                                          return_when=concurrent.futures.FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            for f in futures:
                f.cancel()
            concurrent.futures.wait(futures)  # nothing still running once we raise
            error = failed[0].exception()
            assert error is not None
            raise error
        return [f.result() for f in futures]

    def _pool(self) -> concurrent.futures.Executor:
        if self._executor is not None:
            return self._executor
        with self._lock:
            if self._owned is None:
                self._owned = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._settings.fetch_concurrency, thread_name_prefix="smserve-s3")
            return self._owned


def _check_key(key: Any, field: str) -> None:
    if not isinstance(key, str) or not key:
        raise BadRequest(f"{field} must be a non-empty key, got {_show(key)}", field=field)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{field} {_show(key)} is not valid Unicode", field=field) from None
    if size > MAX_KEY_BYTES:
        raise BadRequest(f"{field} is {size} bytes; S3 keys are at most {MAX_KEY_BYTES}",
                         field=field)
    if _CONTROL.search(key) or "\\" in key:
        raise BadRequest(f"{field} {_show(key)} has a control character or a backslash; "
                         "use plain '/'-separated keys", field=field)
    if key.startswith("/"):
        raise Forbidden(f"{field} {_show(key)} is absolute; keys are relative to the bucket "
                        "(drop the leading '/')", field=field)
    parts = key.split("/")
    if any(p in {".", ".."} for p in parts):
        raise Forbidden(f"{field} {_show(key)} has a '.' or '..' segment; name the key "
                        "directly", field=field)
    if "" in parts:
        raise BadRequest(f"{field} {_show(key)} has an empty segment ('//' or a trailing '/'); "
                         "name an object, not a folder", field=field)


def _under(key: str, prefix: str) -> bool:
    """Whether ``key`` lies under ``prefix`` ("" = anywhere; "a" means the folder "a/")."""
    prefix = prefix.lstrip("/")
    if not prefix:
        return True
    if not prefix.endswith("/"):
        prefix += "/"
    return key.startswith(prefix)


def _call_predict(predict: Callable[[list[dict[str, bytes]]], Sequence[bytes]],
                  batch: list[dict[str, bytes]]) -> list[bytes]:
    try:
        outputs = predict(batch)
    except SmserveError:
        raise
    except Exception as err:
        raise PredictionError(f"predict raised {type(err).__name__}; see the server log") from err
    if isinstance(outputs, bytes | bytearray | memoryview | str) or not isinstance(
            outputs, Iterable):
        raise PredictionError(f"predict returned {type(outputs).__name__}; return a list with "
                              "one bytes object per record")
    found = list(outputs)
    if len(found) != len(batch):
        raise PredictionError(f"predict returned {len(found)} outputs for {len(batch)} records; "
                              "return exactly one per record, in order")
    for i, out in enumerate(found):
        if not isinstance(out, bytes | bytearray | memoryview):
            raise PredictionError(f"predict output {i} is {type(out).__name__}, not bytes; "
                                  "encode it (serving.codecs) before returning")
    return [bytes(out) for out in found]


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
