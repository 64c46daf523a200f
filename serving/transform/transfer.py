"""Send a transform's inputs to S3 and bring its outputs back.

:class:`DataTransfer` works under one ``s3://bucket/prefix``: it uploads
request records as one JSON-lines object (the input of a ``Line`` /
``MultiRecord`` transform), or local files, and reads back every object
under an output URI.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from serving.errors import StorageError, TransformError
from serving.transform.spec import parse_s3_uri


def encode_records(records: Iterable[Any]) -> bytes:
    """Records (``RequestRecord`` or plain dicts) as JSON lines, each ending in ``\\n``."""
    lines = []
    for record in records:
        value = record.to_dict() if hasattr(record, "to_dict") else record
        if not isinstance(value, Mapping):
            raise TypeError(f"a request record must be a dict or a RequestRecord, got "
                            f"{type(record).__name__}")
        lines.append(json.dumps(dict(value), separators=(",", ":")).encode() + b"\n")
    return b"".join(lines)


def _code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(err).__name__)


class DataTransfer:
    """Uploads inputs under ``s3://bucket/prefix`` and downloads outputs.

    Args:
        s3_client: a boto3 S3 client.
        bucket: the working bucket.
        prefix: the key prefix everything is uploaded under (``""`` for the top).
    """

    def __init__(self, s3_client: Any, bucket: str, prefix: str = "") -> None:
        self.s3 = s3_client
        self.bucket = bucket
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"

    def uri(self, name: str = "") -> str:
        """``s3://bucket/prefix/name``."""
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def upload_bytes(self, data: bytes, name: str) -> str:
        """Put ``data`` at ``prefix/name``; returns its URI."""
        key = self.prefix + name
        try:
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as err:
            raise StorageError(f"cannot write s3://{self.bucket}/{key}: {_code(err)}",
                               bucket=self.bucket, key=key) from err
        return f"s3://{self.bucket}/{key}"

    def upload_records(self, records: Sequence[Any], name: str = "requests.jsonl") -> str:
        """Upload request records as one JSON-lines object; returns its URI."""
        if not records:
            raise TransformError("no request records to upload; pass at least one")
        return self.upload_bytes(encode_records(records), name)

    def upload_files(self, paths: Sequence[str | Path], under: str = "",
                     root: str | Path | None = None) -> list[str]:
        """Upload local files to ``prefix/under/<name>``; returns their URIs.

        Args:
            paths: the files.
            under: a sub-prefix (``""``: straight under ``prefix``).
            root: keep each file's path relative to ``root`` (default: its name only).
        """
        sub = under if not under or under.endswith("/") else under + "/"
        uris = []
        for path in map(Path, paths):
            name = path.relative_to(root).as_posix() if root is not None else path.name
            uris.append(self.upload_bytes(path.read_bytes(), sub + name))
        return uris

    def outputs(self, output_uri: str) -> dict[str, bytes]:
        """Every object under ``output_uri``: key relative to it -> bytes."""
        bucket, prefix = parse_s3_uri(output_uri, "output URI")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        found: dict[str, bytes] = {}
        try:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    body = self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    found[item["Key"][len(prefix):]] = body
        except Exception as err:
            raise StorageError(f"cannot read {output_uri}: {_code(err)}", uri=output_uri) from err
        return found

    def download(self, output_uri: str, dest: str | Path) -> list[Path]:
        """Write every object under ``output_uri`` into ``dest``, keeping relative keys.

        Raises:
            StorageError: a key would land outside ``dest`` (``..``, absolute).
        """
        root = Path(dest)
        written = []
        for rel, body in sorted(self.outputs(output_uri).items()):
            parts = PurePosixPath(rel).parts
            if not rel or rel.startswith("/") or ".." in parts:
                raise StorageError(f"output key {rel!r} under {output_uri} would land outside "
                                   f"{root}; not downloading it", key=rel)
            target = root.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            written.append(target)
        return written
