"""S3 reads and writes for S3-reference records: :class:`S3Refs`.

What each record may touch is :mod:`serving.s3refs.records`' business, and
what its answer says is :mod:`serving.s3refs.outcomes`'; this module makes
the S3 calls (HeadObject, GetObject, PutObject, DeleteObjects) on a thread
pool, and :meth:`S3Refs.process` strings them together with one outcome per
record. The client it is given decides the retries: the factory's clients
(:class:`serving.aws.ClientFactory`, botocore's ``standard`` mode) retry
throttling, 5xx answers and broken connections, never an answer that cannot
change (403, 404).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from serving.errors import InputNotFound, PayloadTooLarge, SmserveError, StorageError
from serving.s3refs.checks import validate, validate_output
from serving.s3refs.outcomes import (
    Predict,
    RecordResult,
    as_error,
    call_predict,
    error_document,
    error_path,
    failed,
)
from serving.s3refs.records import RequestRecord, conflicts
from serving.settings import Settings

log = logging.getLogger("serving.s3refs")

_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})
#: Most keys one DeleteObjects call takes (S3's limit).
_DELETE_BATCH = 1000

T = TypeVar("T")


def _code(err: Exception) -> str:
    response_ = getattr(err, "response", None)
    return str(response_.get("Error", {}).get("Code", "")) if isinstance(response_, dict) else ""


def storage_error(err: Exception, action: str, bucket: str, key: str) -> SmserveError:
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


class S3Refs:
    """Reads the inputs a record names and writes its output, for one S3 client.

    Args:
        s3_client: a boto3 S3 client (from :class:`serving.aws.ClientFactory`).
        settings: the allow-lists, ``fetch_concurrency`` and ``max_input_bytes``.
        executor: runs the S3 calls concurrently; default: a private pool of
            ``settings.fetch_concurrency`` threads, started on first use.
        model: the model's name, written into error documents (optional).

    Every public method checks its record with :func:`~serving.s3refs.validate`
    first. The model's role needs ``s3:ListBucket`` on each bucket, or S3
    answers a missing output with 403 instead of 404 and
    :meth:`output_exists` raises.
    """

    def __init__(self, s3_client: Any, settings: Settings,
                 executor: concurrent.futures.Executor | None = None,
                 model: str | None = None) -> None:
        self._s3 = s3_client
        self._settings = settings
        self._executor = executor
        self._model = model
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

    def validate(self, record: RequestRecord) -> None:
        """:func:`serving.s3refs.validate` with this instance's settings."""
        validate(record, self._settings)

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
        got = self._fetch_all([record])[0]
        if isinstance(got, SmserveError):
            raise got
        return got

    def write(self, record: RequestRecord, body: bytes,
              content_type: str = "application/octet-stream") -> int:
        """Write ``body`` to the record's output in one PutObject (no partial object).

        Returns:
            The number of bytes written.
        """
        self.validate(record)
        return self._put(record, body, content_type)

    # --- the whole request ------------------------------------------------

    def process(self, records: Sequence[RequestRecord], predict: Predict,
                content_type: str = "application/octet-stream") -> list[RecordResult]:
        """One outcome per record: validate, skip finished ones, fetch, predict, write.

        1. Each record is checked (:func:`~serving.s3refs.validate`, and
           against the others: :func:`~serving.s3refs.conflicts`); one that
           fails a check is answered ``failed`` and touches nothing.
        2. Records whose output exists and whose ``overwrite`` is false are
           ``skipped``.
        3. The other records' inputs are read concurrently (an object shared
           by several records is read once); a record whose input cannot be
           read (missing, too large, refused) fails alone.
        4. ``predict`` gets one ``{name: bytes}`` per remaining record, in
           order, and returns one ``bytes`` (or an exception) per record; see
           :func:`~serving.s3refs.call_predict` for how a raising batch is
           split so only its bad records fail.
        5. Outputs are written concurrently, each in one PutObject; then the
           written records' earlier error documents are deleted (one
           DeleteObjects per 1000). A failed record gets an error document at
           ``<output_path>.error.json`` instead.

        Returns:
            One result per record, in input order.

        Raises:
            PredictionError: ``predict`` broke the contract (wrong count, not bytes).
        """
        results: list[RecordResult | None] = [None] * len(records)
        copies, clashes = conflicts(records)
        live: list[int] = []
        for i, r in enumerate(records):
            if i in copies:
                continue
            try:
                self.validate(r)
            except SmserveError as err:
                results[i] = failed(r, err)
                continue
            if i in clashes:
                results[i] = failed(r, clashes[i])
            else:
                live.append(i)
        check = [i for i in live if not records[i].overwrite]
        for i, size in zip(check, self._map(self._head, [records[i] for i in check]),
                           strict=True):
            if isinstance(size, SmserveError):
                results[i] = failed(records[i], size)
            elif size is not None:
                r = records[i]
                results[i] = RecordResult("skipped", r.bucket, r.output_path, size,
                                          dict(r.inputs))
        todo = [i for i in live if results[i] is None]
        inputs: dict[int, dict[str, bytes]] = {}
        for i, got in zip(todo, self._fetch_all([records[i] for i in todo]), strict=True):
            if isinstance(got, SmserveError):
                results[i] = failed(records[i], got)
            else:
                inputs[i] = got
        ready = list(inputs)
        outputs = call_predict(predict, [inputs[i] for i in ready]) if ready else []
        good: list[int] = []
        pairs: list[tuple[RequestRecord, bytes]] = []
        for i, out in zip(ready, outputs, strict=True):
            if isinstance(out, SmserveError):
                results[i] = failed(records[i], out)
            else:
                good.append(i)
                pairs.append((records[i], out))
        sizes = self._map(lambda pair: self._put(pair[0], pair[1], content_type), pairs)
        for i, size in zip(good, sizes, strict=True):
            r = records[i]
            results[i] = failed(r, size) if isinstance(size, SmserveError) else \
                RecordResult("written", r.bucket, r.output_path, size, dict(r.inputs))
        self._clear_error_documents([records[i] for i in good
                                     if getattr(results[i], "status", None) == "written"])
        for i, same in copies.items():
            results[i] = results[same]
        final = [r for r in results if r is not None]
        self._write_error_documents(records, final, copies)
        log.debug("s3refs: %d written, %d skipped, %d failed",
                  *(sum(r.status == s for r in final) for s in ("written", "skipped", "failed")))
        return final

    def _write_error_documents(self, records: Sequence[RequestRecord],
                               results: Sequence[RecordResult], copies: dict[int, int]) -> None:
        todo: list[tuple[RequestRecord, RecordResult]] = []
        for i, (record, result) in enumerate(zip(records, results, strict=True)):
            if result.status != "failed" or i in copies:
                continue
            try:
                validate_output(record, self._settings)
            except SmserveError:
                continue  # never write where the record may not write
            todo.append((record, result))
        for (record, _), done in zip(todo, self._map(self._put_error, todo), strict=True):
            if isinstance(done, SmserveError):
                log.warning("could not write the error document of s3://%s/%s: %s",
                            record.bucket, record.output_path, done)

    # --- S3 calls ------------------------------------------------------------

    def _head(self, record: RequestRecord) -> int | None:
        try:
            head = self._s3.head_object(Bucket=record.bucket, Key=record.output_path)
        except Exception as err:
            if _code(err) in _MISSING:
                return None
            raise storage_error(err, "HeadObject", record.bucket, record.output_path) from err
        return int(head.get("ContentLength", 0))

    def _get(self, ref: tuple[str, str, str]) -> bytes:
        bucket, key, name = ref
        limit = self._settings.max_input_bytes
        try:
            got = self._s3.get_object(Bucket=bucket, Key=key)
        except Exception as err:
            if _code(err) in _MISSING:
                raise InputNotFound(f"input {name!r} not found: s3://{bucket}/{key} does not "
                                    "exist (deleted since the request was made?); restore it, "
                                    "or drop the record", bucket=bucket, key=key) from err
            raise storage_error(err, "GetObject", bucket, key) from err
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
            raise storage_error(err, "GetObject", bucket, key) from err
        finally:
            body.close()
        if len(data) > limit:  # the length header lied
            raise PayloadTooLarge(f"input {name!r} s3://{bucket}/{key} is over the {limit}-byte "
                                  "limit; raise SMSERVE_MAX_INPUT_MB", bucket=bucket, key=key)
        return data

    def _put(self, record: RequestRecord, body: bytes, content_type: str,
             key: str | None = None) -> int:
        data = bytes(body)
        key = key or record.output_path
        try:
            self._s3.put_object(Bucket=record.bucket, Key=key, Body=data,
                                ContentType=content_type)
        except Exception as err:
            if _code(err) == "NoSuchBucket":
                raise InputNotFound(f"bucket {record.bucket!r} does not exist",
                                    bucket=record.bucket) from err
            raise storage_error(err, "PutObject", record.bucket, key) from err
        return len(data)

    def _clear_error_documents(self, written: Sequence[RequestRecord]) -> None:
        """Delete the error documents of records just written: one DeleteObjects per 1000.

        A success clears an earlier failure; S3 answers a key that is not there
        as deleted, so no lookup is needed. A refusal is logged, not raised:
        the output, not the error document, says the record is done.
        """
        by_bucket: dict[str, list[str]] = {}
        for r in written:
            by_bucket.setdefault(r.bucket, []).append(error_path(r.output_path))
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), _DELETE_BATCH):
                chunk = keys[start:start + _DELETE_BATCH]
                try:
                    answer = self._s3.delete_objects(Bucket=bucket, Delete={
                        "Objects": [{"Key": k} for k in chunk], "Quiet": True})
                except Exception as err:
                    log.warning("could not delete error documents in s3://%s: %s", bucket,
                                storage_error(err, "DeleteObjects", bucket, chunk[0]))
                    continue
                for bad in answer.get("Errors") or []:
                    log.warning("could not delete s3://%s/%s: %s", bucket, bad.get("Key"),
                                bad.get("Code"))

    def _put_error(self, pair: tuple[RequestRecord, RecordResult]) -> int:
        record, result = pair
        return self._put(record, error_document(result, self._model), "application/json",
                         key=error_path(record.output_path))

    def _fetch_all(self, records: Sequence[RequestRecord]
                   ) -> list[dict[str, bytes] | SmserveError]:
        refs: dict[tuple[str, str], str] = {}
        for r in records:
            for name, key in r.inputs.items():
                refs.setdefault((r.bucket, key), name)
        unique = list(refs)
        blobs = dict(zip(unique, self._map(self._get, [(b, k, refs[b, k]) for b, k in unique]),
                         strict=True))
        out: list[dict[str, bytes] | SmserveError] = []
        for r in records:
            got = {name: blobs[r.bucket, key] for name, key in r.inputs.items()}
            bad = [v for v in got.values() if isinstance(v, SmserveError)]
            out.append(bad[0] if bad else {k: v for k, v in got.items()
                                           if isinstance(v, bytes)})
        return out

    def _map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T | SmserveError]:
        """``fn`` over ``items`` on the executor; each item's error is returned in its place."""
        if len(items) <= 1:
            return [_attempt(fn, item) for item in items]
        executor = self._pool()
        futures = [executor.submit(_attempt, fn, item) for item in items]
        return [f.result() for f in futures]

    def _pool(self) -> concurrent.futures.Executor:
        if self._executor is not None:
            return self._executor
        with self._lock:
            if self._owned is None:
                self._owned = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._settings.fetch_concurrency, thread_name_prefix="smserve-s3")
            return self._owned


def _attempt(fn: Callable[[Any], T], item: Any) -> T | SmserveError:
    try:
        return fn(item)
    except Exception as err:
        if not isinstance(err, SmserveError):
            log.exception("S3 call failed")
        return as_error(err) if isinstance(err, SmserveError) else \
            StorageError(f"{type(err).__name__} during an S3 call; see the server log")
