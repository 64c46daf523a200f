"""The S3 side of a run: list the input objects, build requests, find finished outputs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from serving.errors import ConfigError, ModelSpecError, StorageError
from serving.pipeline import Graph
from serving.s3refs import RequestRecord
from serving.settings import Settings

_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
#: Parallel HeadObject calls when looking for finished outputs.
HEAD_CONCURRENCY = 16


def _code(err: Exception) -> str:
    response = getattr(err, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def select(graph: Graph, models: Sequence[str] | None) -> Graph:
    """The part of ``graph`` a ``--models`` list names (all of it for None or empty).

    Raises:
        ModelSpecError: a name is not a model; the message names the
            ``model.toml`` that would define it.
    """
    if not models:
        return graph
    unknown = [m for m in dict.fromkeys(models) if m not in graph]
    if unknown:
        folders = {spec.folder.parent for spec in graph.specs.values()}
        root = folders.pop() if len(folders) == 1 else Path("models")
        files = ", ".join(str(root / m / "model.toml") for m in unknown)
        raise ModelSpecError(
            f"--models names {', '.join(map(repr, unknown))}, but there is no {files}; "
            f"the models are {', '.join(graph.order()) or 'none'}",
            path=str(root / unknown[0] / "model.toml"))
    return graph.subgraph(models)


def check_allowed(settings: Settings, bucket: str, output_prefix: str) -> None:
    """Refuse a run whose containers would refuse its requests.

    Raises:
        ConfigError: ``bucket`` is not on ``SMSERVE_ALLOWED_BUCKETS``, or
            ``output_prefix`` is outside ``SMSERVE_OUTPUT_PREFIXES``.
    """
    allowed = settings.allowed_buckets
    if "*" not in allowed and bucket not in allowed:
        shown = ", ".join(allowed) or "unset"
        raise ConfigError(f"bucket {bucket!r} is not on SMSERVE_ALLOWED_BUCKETS ({shown}); the "
                          "model containers would refuse every request: add it "
                          f"(export SMSERVE_ALLOWED_BUCKETS={bucket})")
    prefixes = settings.output_prefixes
    out = output_prefix.lstrip("/")
    if not any(not p.strip("/") or out.startswith(p.strip("/") + "/") for p in prefixes):
        raise ConfigError(f"outputs go under {output_prefix!r}, outside SMSERVE_OUTPUT_PREFIXES "
                          f"({', '.join(prefixes)}); add {output_prefix!r} to it")


def list_inputs(s3: Any, bucket: str, prefix: str,
                exclude: Iterable[str] = ()) -> list[str]:
    """Keys of the objects under ``prefix`` (recursive), sorted.

    Folder markers (keys ending in "/") and keys under ``exclude`` (the run's
    own outputs and work files, when the input prefix covers them) are left out.

    Raises:
        ConfigError: the bucket does not exist.
        StorageError: S3 refused the listing.
    """
    skip = tuple(p for p in exclude if p)
    keys: list[str] = []
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if not key.endswith("/") and not key.startswith(skip):
                    keys.append(key)
    except Exception as err:
        code = _code(err)
        if code == "NoSuchBucket":
            raise ConfigError(f"bucket {bucket!r} does not exist; check --input") from err
        if not code:
            raise
        raise StorageError(f"listing s3://{bucket}/{prefix} failed ({code}); check that you may "
                           "list this bucket", bucket=bucket, key=prefix) from err
    return sorted(keys)


def existing(s3: Any, records: Iterable[RequestRecord],
             concurrency: int = HEAD_CONCURRENCY) -> set[tuple[str, str]]:
    """``(bucket, key)`` of the records' outputs that exist, by concurrent HeadObject calls.

    Raises:
        StorageError: S3 answered other than "found" or "not found" (a 403
            when the caller may not list the bucket, for one).
    """
    return existing_keys(s3, ((r.bucket, r.output_path) for r in records), concurrency)


def existing_keys(s3: Any, refs: Iterable[tuple[str, str]],
                  concurrency: int = HEAD_CONCURRENCY) -> set[tuple[str, str]]:
    """Which ``(bucket, key)`` objects exist, by concurrent HeadObject calls.

    Raises:
        StorageError: as :func:`existing`.
    """
    wanted = sorted(set(refs))

    def head(ref: tuple[str, str]) -> bool:
        try:
            s3.head_object(Bucket=ref[0], Key=ref[1])
        except Exception as err:
            code = _code(err)
            if code in _MISSING:
                return False
            if not code:
                raise
            raise StorageError(f"HeadObject s3://{ref[0]}/{ref[1]} failed ({code}); the run "
                               "needs s3:GetObject and s3:ListBucket on the bucket",
                               bucket=ref[0], key=ref[1]) from err
        return True

    if not wanted:
        return set()
    with ThreadPoolExecutor(max(1, min(concurrency, len(wanted))),
                            thread_name_prefix="head") as pool:
        found = list(pool.map(head, wanted))
    return {ref for ref, ok in zip(wanted, found, strict=True) if ok}


@dataclass(frozen=True)
class ModelWork:
    """One model's requests for a run.

    Attributes:
        model: the model's name.
        records: every request record (one per input object).
        pending: the records to send (their output is missing, or ``overwrite``).
        missing_inputs: model left out of the run (``--models``) -> pending
            records that read its output although it does not exist: they will fail.
        sources: a record's ``output_path`` -> the input object it is for
            (what the report names when the record fails).
    """

    model: str
    records: tuple[RequestRecord, ...]
    pending: tuple[RequestRecord, ...]
    missing_inputs: Mapping[str, int] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    def source(self, record: RequestRecord) -> str:
        """The input object ``record`` is for (its output key when unknown)."""
        return self.sources.get(record.output_path, record.output_path)

    @property
    def exist(self) -> int:
        """Records left out because their output exists."""
        return len(self.records) - len(self.pending)


def build_work(graph: Graph, s3: Any, bucket: str, keys: Sequence[str], *, prefix: str,
               overwrite: bool) -> dict[str, ModelWork]:
    """Every model's requests, with finished records left out unless ``overwrite``."""
    records = {name: graph.build_requests(name, bucket, keys, prefix=prefix, overwrite=overwrite)
               for name in graph.order()}
    found: set[tuple[str, str]] = set()
    if not overwrite:
        found = existing(s3, [r for rs in records.values() for r in rs])
    pending = {name: tuple(r for r in rs if (r.bucket, r.output_path) not in found)
               for name, rs in records.items()}
    # Inputs from models left out of the run (--models) must exist already.
    outside = {name: {i: src for i, src in graph[name].upstream_inputs.items()
                      if src not in graph} for name in records}
    refs = {(r.bucket, r.inputs[i]) for name, rs in pending.items() for r in rs
            for i in outside[name]}
    there = existing_keys(s3, refs) if refs else set()
    work: dict[str, ModelWork] = {}
    for name, rs in records.items():
        missing: dict[str, int] = {}
        for input_name, source in outside[name].items():
            count = sum((r.bucket, r.inputs[input_name]) not in there for r in pending[name])
            if count:
                missing[source] = max(missing.get(source, 0), count)
        sources = dict(zip((r.output_path for r in rs), dict.fromkeys(keys), strict=True))
        work[name] = ModelWork(name, tuple(rs), pending[name], missing, sources)
    return work


def upstream_ready(graph: Graph, s3: Any, work: ModelWork
                   ) -> tuple[ModelWork, tuple[tuple[str, str], ...]]:
    """``work`` without the records whose input from a model of this run does not exist.

    Called when a model is about to start: an upstream model that failed on
    some records (``partial``) wrote no output for them, so this model cannot
    run them either.

    Returns:
        ``(work with those records left out, one (input object, why) per record left out)``.

    Raises:
        StorageError: as :func:`existing_keys`.
    """
    inside = {i: src for i, src in graph[work.model].upstream_inputs.items() if src in graph}
    if not inside or not work.pending:
        return work, ()
    refs = {(r.bucket, r.inputs[i]) for r in work.pending for i in inside}
    there = existing_keys(s3, refs)
    ready: list[RequestRecord] = []
    blocked: list[tuple[str, str]] = []
    for r in work.pending:
        gone = sorted({src for i, src in inside.items() if (r.bucket, r.inputs[i]) not in there})
        if gone:
            blocked.append((work.source(r), f"not run: upstream {', '.join(gone)} wrote no "
                                            "output for it (it failed there)"))
        else:
            ready.append(r)
    if not blocked:
        return work, ()
    return replace(work, pending=tuple(ready)), tuple(blocked)


def describe_work(work: Mapping[str, ModelWork], inputs: int) -> list[str]:
    """Request counts per model, as lines to print."""
    lines = [f"requests: {inputs} input object(s)"]
    width = max((len(n) for n in work), default=0)
    for name, w in work.items():
        todo = f"{len(w.pending)} to run" if w.pending else "nothing to run"
        lines.append(f"  {name:<{width}}  {len(w.records)} record(s): {todo}, "
                     f"{w.exist} output(s) exist")
        for source, count in w.missing_inputs.items():
            lines.append(f"  {'':<{width}}  warning: {count} of them read outputs of {source} "
                         f"that do not exist, so its transform will fail; run {source} first, "
                         "or add it to --models")
    return lines
