"""What a transform run did: one :class:`ObjectResult` per input object, and the totals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: The service's limit on ``FailureReason``.
MAX_FAILURE_REASON = 1024


@dataclass(frozen=True)
class ObjectResult:
    """One input object's outcome.

    Attributes:
        bucket: the input's bucket.
        key: the input's key.
        output: ``s3://bucket/key`` of the ``.out`` object (written only when ``ok``).
        ok: every record succeeded and the output was written.
        records: records the object split into (0 when it failed before splitting).
        records_done: records answered successfully.
        requests: invocations that succeeded.
        bytes_in: bytes read from S3 (before decompression).
        bytes_out: bytes written.
        seconds: wall time spent on the object.
        container: index of the container that served it.
        error: why it failed, like ``ClientError: 400: BadRequest: ...``; None when ok.
    """

    bucket: str
    key: str
    output: str
    ok: bool
    records: int = 0
    records_done: int = 0
    requests: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    container: int = 0
    error: str | None = None

    @property
    def name(self) -> str:
        """``bucket/key``."""
        return f"{self.bucket}/{self.key}"


@dataclass(frozen=True)
class JobResult:
    """A whole run.

    Attributes:
        name: the job name.
        objects: one result per input object, sorted by key.
        seconds: wall time of the data plane.
        params: the batch settings used and where they came from.
        execution_parameters: what the container's ``/execution-parameters`` gave (None: none).
    """

    name: str
    objects: tuple[ObjectResult, ...]
    seconds: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)
    execution_parameters: Mapping[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """True when every object succeeded."""
        return all(o.ok for o in self.objects)

    @property
    def succeeded(self) -> list[ObjectResult]:
        """Objects whose output was written."""
        return [o for o in self.objects if o.ok]

    @property
    def failed(self) -> list[ObjectResult]:
        """Objects that failed (no output written)."""
        return [o for o in self.objects if not o.ok]

    @property
    def records(self) -> int:
        """Records answered successfully, over all objects."""
        return sum(o.records_done for o in self.objects)

    @property
    def bytes_in(self) -> int:
        """Bytes read from S3."""
        return sum(o.bytes_in for o in self.objects)

    @property
    def bytes_out(self) -> int:
        """Bytes written to S3."""
        return sum(o.bytes_out for o in self.objects)

    @property
    def outputs(self) -> list[str]:
        """``s3://`` URIs of the written output objects."""
        return [o.output for o in self.objects if o.ok]

    def failure_reason(self, limit: int = MAX_FAILURE_REASON) -> str:
        """The job's ``FailureReason``: each failed key with its error, at most ``limit`` chars.

        Long messages are cut first, then keys that do not fit are counted
        (``... and 12 more; see the job log``). Empty when the job succeeded.
        """
        failed = self.failed
        if not failed:
            return ""
        head = f"{len(failed)} of {len(self.objects)} input object(s) failed: "
        entries = [(o.name, o.error or "failed") for o in failed]
        for budget in (None, 200, 80, 0):
            parts = [f"{name}: {_cut(err, budget)}" if budget != 0 else name
                     for name, err in entries]
            text = head + "; ".join(parts)
            if len(text) <= limit:
                return text
        shown: list[str] = []
        for i, (name, _) in enumerate(entries):
            tail = f"; ... and {len(entries) - i - 1} more; see the job log"
            candidate = head + "; ".join([*shown, name])
            if len(candidate) + len(tail) > limit:
                rest = f"... and {len(entries) - len(shown)} more; see the job log"
                return (head + "; ".join([*shown, rest]))[:limit]
            shown.append(name)
        return (head + "; ".join(shown))[:limit]

    def summary(self) -> str:
        """One line: objects, records, bytes, seconds."""
        return (f"{self.name}: {len(self.succeeded)}/{len(self.objects)} objects ok, "
                f"{self.records} records, {self.bytes_in} bytes in, {self.bytes_out} bytes out, "
                f"{self.seconds:.2f} s")


def _cut(text: str, budget: int | None) -> str:
    if budget is None or len(text) <= budget:
        return text
    return text[: budget - 3] + "..."
