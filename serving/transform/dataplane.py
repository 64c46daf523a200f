"""The batch transform data plane: read, split, batch, invoke, assemble, write.

Given running containers (their URLs) and a :class:`TransformJobSpec`,
:class:`DataPlane` does what the service does between "containers healthy"
and "job done":

1. lists the input (:mod:`serving.transform.listing`); nothing there fails the job;
2. asks the first container for ``GET /execution-parameters`` once and
   settles the batch settings (:mod:`serving.transform.params`);
3. spreads the objects over the containers (round-robin over the sorted
   keys, so a big object keeps one container busy);
4. per object: get, decompress, split, batch, invoke (up to
   ``MaxConcurrentTransforms`` invocations in flight per container, each
   retried per ``ModelClientConfig``), keep the answers in input order,
   assemble (``None``: concatenated; ``Line``: a ``\\n`` after each answer)
   and write ``<S3OutputPath>/<relative key>.out`` with one ``PutObject``,
   only when every record succeeded;
5. returns a :class:`~serving.transform.result.JobResult`; a failed object
   does not stop the others.

``DataProcessing`` (:mod:`serving.transform.dataprocessing`) fits into step 4:
``InputFilter`` on each record before batching (the payload limit counts
the filtered bytes), and, when there is a join or an ``OutputFilter``, each
answer split into one output per record, joined with its original record,
filtered, then assembled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import requests

from serving.errors import TransformError
from serving.transform.batching import make_batcher
from serving.transform.dataprocessing import DataProcessor
from serving.transform.invoke import Invoker, new_session
from serving.transform.listing import InputObject, list_inputs, output_location
from serving.transform.params import BatchParams, resolve
from serving.transform.result import JobResult, ObjectResult
from serving.transform.spec import TransformJobSpec
from serving.transform.split import decompress, split_records

#: Largest input object (and decompressed object) the local data plane reads.
MAX_OBJECT_BYTES = 1 << 30


class Progress(NamedTuple):
    """Where a run stands (passed to the ``progress`` callback).

    Attributes:
        records_done: records answered so far.
        records_total: records known so far (grows as objects are split).
        objects_done: objects finished (written or failed).
        objects_total: input objects.
    """

    records_done: int
    records_total: int
    objects_done: int
    objects_total: int


class DataPlane:
    """Runs one job's data against running containers.

    Args:
        s3_client: a boto3 S3 client (from :class:`~serving.aws.ClientFactory`).
        container_urls: one base URL per container (``http://127.0.0.1:PORT``).
        spec: the job.
        log: receives one line per event (called from worker threads, serialised).
        progress: receives a :class:`Progress` after each request and object.
        session: the HTTP session (default: one made and closed here).
        max_object_bytes: largest object, before and after decompression.
        empty_lines: ``keep`` or ``skip`` empty lines with ``SplitType=Line``.
        relative_to: ``prefix`` or ``folder``; see :mod:`serving.transform.listing`.
        chunked_when_unlimited: with ``MaxPayloadInMB=0``, send bodies chunked
            as the service does.
        backoff: first pause between invocation retries, in seconds.
        sleep: how to pause between retries.
        clock: monotonic seconds, for timings.
        slice_end: ``exclusive`` (default) or ``inclusive``: whether ``[start:end]``
            in a ``DataProcessing`` filter includes ``end`` (**unconfirmed**
            service behaviour).

    Raises:
        ConfigError: ``spec`` breaks a ``DataProcessing`` rule, or a bad option.
    """

    def __init__(self, s3_client: Any, container_urls: Sequence[str], spec: TransformJobSpec,
                 log: Callable[[str], None] | None = None, *,
                 progress: Callable[[Progress], None] | None = None,
                 session: requests.Session | None = None,
                 max_object_bytes: int = MAX_OBJECT_BYTES, empty_lines: str = "keep",
                 relative_to: str = "prefix", chunked_when_unlimited: bool = True,
                 backoff: float = 0.2, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 slice_end: str = "exclusive") -> None:
        if not container_urls:
            raise ValueError("DataPlane needs at least one container URL")
        self.s3 = s3_client
        self.urls = list(container_urls)
        self.spec = spec
        self._log_fn = log
        self._progress_fn = progress
        self._session = session
        self.max_object_bytes = max_object_bytes
        self.empty_lines = empty_lines
        self.relative_to = relative_to
        self.chunked_when_unlimited = chunked_when_unlimited
        self.backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counts = [0, 0, 0, 0]
        self._processor = DataProcessor.for_spec(spec, slice_end=slice_end)

    # --- public -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop: objects not finished fail as ``Stopped``."""
        self._stop.set()

    def run(self, objects: list[InputObject] | None = None) -> JobResult:
        """Transform every input object.

        Args:
            objects: the input, when the caller listed it already (see
                :func:`serving.transform.listing.list_inputs`); None lists it here.

        Returns:
            the per-object results; check ``.ok`` / ``.failure_reason()``.

        Raises:
            TransformError: the job cannot start (no input objects, unreadable listing).
        """
        spec = self.spec
        started = self._clock()
        for note in spec.notes():
            self._log(note)
        if objects is None:
            objects = list_inputs(self.s3, spec, relative_to=self.relative_to, log=self._log)
        self._counts = [0, 0, 0, len(objects)]
        probe = Invoker(self.urls[0], content_type=None, accept=None, timeout=10, retries=0)
        try:
            container, notes = probe.execution_parameters()
        finally:
            probe.close()
        params = resolve(spec, container, notes)
        for note in params.notes:
            self._log(note)
        self._log(f"BatchStrategy={params.batch_strategy}, MaxPayloadInMB="
                  f"{params.max_payload_mb}, MaxConcurrentTransforms="
                  f"{params.max_concurrent} ({_sources(params)})")
        session = self._session or new_session(params.max_concurrent, hosts=len(self.urls))
        try:
            results = self._run_objects(objects, params, session)
        finally:
            if self._session is None:
                session.close()
        return JobResult(
            name=spec.name, objects=tuple(sorted(results, key=lambda r: (r.bucket, r.key))),
            seconds=self._clock() - started,
            params={"BatchStrategy": params.batch_strategy,
                    "MaxPayloadInMB": params.max_payload_mb,
                    "MaxConcurrentTransforms": params.max_concurrent,
                    "sources": dict(params.sources)},
            execution_parameters=container)

    # --- orchestration ----------------------------------------------------------------------

    def _run_objects(self, objects: list[InputObject], params: BatchParams,
                     session: requests.Session) -> list[ObjectResult]:
        spec = self.spec
        n = len(self.urls)
        invokers = [Invoker(url, content_type=spec.content_type, accept=spec.accept,
                            timeout=spec.timeout_s, retries=spec.max_retries, session=session,
                            backoff=self.backoff, sleep=self._sleep) for url in self.urls]
        calls = [ThreadPoolExecutor(params.max_concurrent, thread_name_prefix=f"invoke-{i}")
                 for i in range(n)]
        readers = [ThreadPoolExecutor(params.max_concurrent, thread_name_prefix=f"object-{i}")
                   for i in range(n)]
        finished = False
        try:
            futures = [
                readers[i % n].submit(self._object, obj, i % n, invokers[i % n], calls[i % n],
                                      params)
                for i, obj in enumerate(objects)
            ]
            results = [f.result() for f in futures]
            finished = True
            return results
        finally:
            if not finished:  # interrupted: return now, so the caller can stop the containers
                self._stop.set()
            for pool in (*readers, *calls):
                pool.shutdown(wait=finished, cancel_futures=True)

    def _object(self, obj: InputObject, index: int, invoker: Invoker, pool: ThreadPoolExecutor,
                params: BatchParams) -> ObjectResult:
        started = self._clock()
        out_bucket, out_key = output_location(self.spec, obj)
        stats: dict[str, Any] = {"bucket": obj.bucket, "key": obj.key,
                                 "output": f"s3://{out_bucket}/{out_key}", "container": index}
        try:
            error = self._transform(obj, invoker, pool, params, out_bucket, out_key, stats)
        except Exception as err:  # a bug or an unexpected client error: fail this object only
            error = f"{type(err).__name__}: {err}"
        stats["seconds"] = self._clock() - started
        with self._lock:
            self._counts[2] += 1
        self._report()
        if error is None:
            self._log(f"{obj.uri}: {stats.get('records', 0)} records -> {stats['output']} "
                      f"({stats.get('bytes_out', 0)} bytes)")
            return ObjectResult(ok=True, **stats)
        self._log(f"{obj.uri}: failed: {error}")
        return ObjectResult(ok=False, error=error, **stats)

    def _transform(self, obj: InputObject, invoker: Invoker, pool: ThreadPoolExecutor,
                   params: BatchParams, out_bucket: str, out_key: str,
                   stats: dict[str, Any]) -> str | None:
        """Do one object; return None when written, else the error text."""
        spec, where = self.spec, obj.uri
        if self._stop.is_set():
            return "Stopped: the job was stopped before this object started"
        if obj.size is not None and obj.size > self.max_object_bytes:
            return (f"TooLarge: {obj.size} bytes, over the local data plane's limit of "
                    f"{self.max_object_bytes} bytes")
        try:
            raw = self.s3.get_object(Bucket=obj.bucket, Key=obj.key)["Body"].read()
        except Exception as err:
            return f"S3Error: cannot read the object: {_code(err)}"
        stats["bytes_in"] = len(raw)
        try:
            data = decompress(raw, spec.compression, limit=self.max_object_bytes, where=where)
            records = split_records(data, spec.split_type, where=where,
                                    empty_lines=self.empty_lines)
            sent = self._processor.filter_inputs(records, where) if self._processor else records
            batcher = make_batcher(params.batch_strategy, params.max_payload_mb,
                                   spec.split_type)
            batches = list(batcher.batches(sent, where))
        except TransformError as err:
            kind = err.context.get("reason", "InvalidInput")
            return f"{kind}: {err.message.removeprefix(where + ': ')}"
        stats["records"] = len(records)
        with self._lock:
            self._counts[1] += len(records)
        del data, raw
        chunked = self.chunked_when_unlimited and params.max_payload_mb == 0
        futures: list[Future[bytes]] = [pool.submit(self._call, invoker, b.body, chunked)
                                        for b in batches]
        answers: list[bytes] = []
        done = 0
        for number, (batch, future) in enumerate(zip(batches, futures, strict=True), start=1):
            try:
                answers.append(future.result())
            except TransformError as err:
                for rest in futures[number:]:
                    rest.cancel()
                stats.update(records_done=done, requests=number - 1)
                ctx = err.context
                if ctx.get("kind") == "Stopped":
                    return err.message
                head = ctx.get("kind", "Error")
                if ctx.get("status") is not None:
                    head += f": {ctx['status']}"
                tries = ctx.get("attempts", 1)
                self._log(f"{where}: {batch.records} (request {number} of {len(batches)}): "
                          f"{head} after {tries} tr{'y' if tries == 1 else 'ies'}: "
                          f"{ctx.get('detail', '')}")
                detail = f": {ctx['detail']}" if ctx.get("detail") else ""
                return f"{head} ({batch.records}, {tries} tries){detail}"
            done += batch.count
            with self._lock:
                self._counts[0] += batch.count
            self._report()
        stats.update(records_done=done, requests=len(batches))
        if self._processor is not None and self._processor.per_record:
            try:
                answers = self._processor.outputs(
                    records, [(b.first, b.count, a) for b, a in zip(batches, answers, strict=True)],
                    where)
            except TransformError as err:
                return f"DataProcessing: {err.message.removeprefix(where + ': ')}"
        if spec.assemble_with == "Line":
            body = b"".join(a + b"\n" for a in answers)
        else:
            body = b"".join(answers)
        extra: dict[str, str] = {}
        if spec.kms_key_id:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": spec.kms_key_id}
        try:
            self.s3.put_object(Bucket=out_bucket, Key=out_key, Body=body, **extra)
        except Exception as err:
            return f"S3Error: cannot write s3://{out_bucket}/{out_key}: {_code(err)}"
        stats["bytes_out"] = len(body)
        return None

    def _call(self, invoker: Invoker, body: bytes, chunked: bool) -> bytes:
        if self._stop.is_set():
            raise TransformError("Stopped: the job was stopped", kind="Stopped")
        return invoker.invoke(body, chunked=chunked)

    # --- reporting ----------------------------------------------------------------------

    def _log(self, line: str) -> None:
        if self._log_fn is not None:
            with self._lock:
                self._log_fn(line)

    def _report(self) -> None:
        if self._progress_fn is not None:
            with self._lock:
                self._progress_fn(Progress(*self._counts))


def _sources(params: BatchParams) -> str:
    return ", ".join(f"{k} from {v}" for k, v in params.sources.items())


def _code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    return str(code) if code else f"{type(err).__name__}: {err}"
