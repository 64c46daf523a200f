"""The baseline for bench/record_outcomes.py: S3-reference records processed all or nothing.

What :meth:`serving.s3refs.S3Refs.process` did before per-record outcomes:
check every record, skip the finished ones, read every input, call
``predict`` once, write every output; the first failure fails the whole
request. Same S3 calls, through the same client and thread pool, minus what
per-record outcomes add (conflict checks per record, the error-document
DeleteObject after each write, an outcome per record). Copied into a model
folder by the benchmark; not part of the library.
"""

from __future__ import annotations

from typing import Any

from serving.s3refs import RecordResult, RequestRecord, S3Refs, check_batch, validate


def process(refs: S3Refs, records: list[RequestRecord], predict: Any,
            content_type: str = "application/octet-stream") -> list[RecordResult]:
    """All-or-nothing ``process``: any failure raises."""
    for r in records:
        validate(r, refs.settings)
    check_batch(records)
    pool = refs._pool()
    sizes = iter(list(pool.map(refs._head, [r for r in records if not r.overwrite])))
    results: list[RecordResult | None] = []
    for r in records:
        size = None if r.overwrite else next(sizes)
        results.append(None if size is None else
                       RecordResult("skipped", r.bucket, r.output_path, size))
    todo = [r for r, got in zip(records, results, strict=True) if got is None]
    refs_ = {(r.bucket, k): n for r in todo for n, k in r.inputs.items()}
    blobs = dict(zip(refs_, pool.map(refs._get, [(b, k, n) for (b, k), n in refs_.items()]),
                     strict=True))
    outputs = list(predict([{n: blobs[r.bucket, k] for n, k in r.inputs.items()}
                            for r in todo])) if todo else []
    written = list(pool.map(lambda pair: refs._put(pair[0], pair[1], content_type),
                            zip(todo, outputs, strict=True)))
    done = iter(written)
    return [got or RecordResult("written", r.bucket, r.output_path, next(done))
            for r, got in zip(records, results, strict=True)]
