"""The sample-data convention of ``smserve check``: the request, its files, the stack.

Internal to :mod:`serving.check` (which re-exports the public names)::

    models/NAME/sample_request.json      the request body: S3-reference records,
                                         one JSON object per line (or one object,
                                         or a JSON array of objects)
    models/NAME/sample_data/<key>        uploaded to s3://<bucket>/<key> for each
                                         bucket the request names
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving import codecs
from serving.check.report import describe
from serving.errors import BadRequest, ConfigError, InputNotFound, SmserveError
from serving.modelspec import ModelSpec
from serving.s3refs import RequestRecord, dumps_records
from serving.s3refs.outcomes import error_path

SAMPLE_REQUEST = "sample_request.json"
SAMPLE_DATA = "sample_data"
_JSON_TYPES = (codecs.JSON, codecs.JSONLINES)


@dataclass(frozen=True)
class Sample:
    """A sample request, ready to send.

    Attributes:
        path: the file it was read from.
        body: the body to send (S3 references re-encoded for ``content_type``).
        content_type: the request's content type (``model.toml`` ``content_type``).
        accept: the accept type (``model.toml`` ``accept``).
        records: the S3-reference records, or None for any other body.
    """

    path: Path
    body: bytes
    content_type: str
    accept: str
    records: list[RequestRecord] | None = None

    @property
    def buckets(self) -> list[str]:
        """The buckets the records name, sorted."""
        return sorted({r.bucket for r in self.records or []})


def _json_values(raw: bytes) -> list[Any] | None:
    """The JSON values in ``raw``: one document, or one per non-blank line; None if not JSON."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    try:
        whole = json.loads(text)
    except ValueError:
        pass
    else:
        return whole if isinstance(whole, list) else [whole]
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError:
        return None


def load_sample(folder: Path, spec: ModelSpec, request: str | Path | None = None) -> Sample:
    """Read the sample request (``folder/sample_request.json`` unless ``request``).

    Raises:
        ConfigError: the file is missing, or holds S3-reference records that
            do not parse (the message names the file and the record).
    """
    path = Path(request) if request is not None else folder / SAMPLE_REQUEST
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist; write a sample request there (one S3-reference record "
            "per line, as smserve new does) or pass --request FILE", path=str(path))
    raw = path.read_bytes()
    kind = codecs.normalize(spec.content_type)
    values = _json_values(raw) if kind in _JSON_TYPES else None
    if kind in _JSON_TYPES and values is None:
        raise ConfigError(f"{path} is not JSON, but {spec.path} says content_type = "
                          f'"{spec.content_type}"; write one JSON object per line',
                          path=str(path))
    if not values or not all(isinstance(v, dict) and "inputs" in v for v in values):
        return Sample(path, raw, spec.content_type, spec.accept)
    try:
        records = [RequestRecord.from_dict(v, i) for i, v in enumerate(values)]
    except BadRequest as err:
        raise ConfigError(f"{path}: {err.message}; fix the sample request",
                          path=str(path)) from err
    if kind == codecs.JSONLINES:
        body = dumps_records(records)
    else:
        dicts = [r.to_dict() for r in records]
        body = json.dumps(dicts[0] if len(dicts) == 1 else dicts).encode()
    return Sample(path, body, spec.content_type, spec.accept, records)


def sample_objects(data_dir: Path) -> dict[str, Path]:
    """Key -> file for every file under ``data_dir`` (hidden files and caches left out)."""
    if not data_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if path.is_file() and not any(p.startswith(".") or p == "__pycache__"
                                      for p in rel.parts):
            found[rel.as_posix()] = path
    return found


def content_type_of(path: str | Path) -> str:
    """The content type of an object named ``path``, from its extension (``.npy`` -> NPY)."""
    path = Path(path)
    by_suffix = {".npy": codecs.NPY, ".npz": codecs.NPZ, ".json": codecs.JSON,
                 ".jsonl": codecs.JSONLINES, ".csv": codecs.CSV}
    return by_suffix.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or \
        codecs.OCTET_STREAM


def stage_sample(s3: Any, sample: Sample, data_dir: Path) -> list[str]:
    """Create the request's buckets, upload ``data_dir`` into each, delete old outputs.

    Returns:
        One line per input the records name, describing the object.

    Raises:
        InputNotFound: a record names an input that is not under ``data_dir``;
            the message names the sample request, the record and the file to add.
    """
    records = sample.records or []
    objects = sample_objects(data_dir)
    for i, record in enumerate(records):
        for name, key in record.inputs.items():
            if key not in objects:
                answer = InputNotFound(f"input {name!r} not found: s3://{record.bucket}/{key} "
                                       "does not exist")
                raise InputNotFound(
                    f"{sample.path}: record {i} input {name!r} names s3://{record.bucket}/{key}, "
                    f"which is not in {data_dir}; predict_fn would fail to fetch it. Put the "
                    f"file at {data_dir / key}, or fix the key in {sample.path}",
                    bucket=record.bucket, key=key, answer=answer)
    for bucket in sample.buckets:
        with contextlib.suppress(Exception):  # already there (a shared stack)
            s3.create_bucket(Bucket=bucket)
        for key, path in objects.items():
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(),
                          ContentType=content_type_of(path))
    for record in records:  # a stack shared with earlier runs: write the outputs afresh
        if record.output_path not in objects:  # (and no error document of an earlier run)
            for key in (record.output_path, error_path(record.output_path)):
                s3.delete_object(Bucket=record.bucket, Key=key)
    lines = []
    for i, record in enumerate(records):
        for name, key in record.inputs.items():
            lines.append(f"record {i} input {name!r}: s3://{record.bucket}/{key} "
                         f"({_object(objects[key].read_bytes(), content_type_of(objects[key]))})")
    return lines


def _object(body: bytes, content_type: str) -> str:
    """``body`` decoded by its content type, described; or its size."""
    try:
        return describe(codecs.decode(body, content_type))
    except SmserveError:
        return f"bytes ({len(body):,})"


def outputs(s3: Any, answers: list[Any]) -> list[str]:
    """One line per answer that names an S3 object: status, size, what it decodes to."""
    lines = []
    for answer in answers:
        if not (isinstance(answer, dict) and "key" in answer and "bucket" in answer):
            continue
        where = f"s3://{answer['bucket']}/{answer['key']}"
        try:
            got = s3.get_object(Bucket=answer["bucket"], Key=answer["key"])
            body = got["Body"].read()
        except Exception as err:
            lines.append(f"{answer.get('status', '?')} {where}: cannot read it back ({err})")
            continue
        kind = got.get("ContentType") or codecs.OCTET_STREAM
        lines.append(f"{answer.get('status', '?')} {where} ({len(body):,} bytes, {kind}: "
                     f"{_object(body, kind)})")
    return lines
