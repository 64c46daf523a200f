"""Group an object's records into request bodies (``BatchStrategy``).

``SingleRecord`` sends one record per request (binary padding removed).
``MultiRecord`` sends as many whole records as fit in ``MaxPayloadInMB``
(1 MB = 1,048,576 bytes, counted as the byte length of the body; 0 = no
limit), joined by the split type's joiner: ``b"\\n"`` between Line records
(no newline after the last one; the joiner bytes count towards the limit),
nothing between binary records, which keep their framing and padding.
Batches never span two objects: a batcher sees one object's records at a
time. A single record over the limit fails its object, with a message naming
the object, the record's index, its size and the limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from serving.errors import TransformError
from serving.transform.split import Record, joiner

MB = 1_048_576


@dataclass(frozen=True)
class Batch:
    """One request body and the records it carries.

    Attributes:
        first: index (in its object) of the first record in ``body``.
        count: how many records ``body`` carries.
        body: the bytes to POST.
    """

    first: int
    count: int
    body: bytes

    @property
    def records(self) -> str:
        """``"record 4"`` or ``"records 4-9"``, for messages."""
        if self.count == 1:
            return f"record {self.first}"
        return f"records {self.first}-{self.first + self.count - 1}"


class Batcher(Protocol):
    """Turns one object's records into request bodies."""

    name: str

    def batches(self, records: Sequence[Record], where: str = "object") -> Iterator[Batch]:
        """The batches of ``records``, in order.

        Raises:
            TransformError: a record is larger than the payload limit.
        """
        ...


def payload_limit(max_payload_mb: int) -> int | None:
    """The body limit in bytes for ``MaxPayloadInMB`` (None: no limit)."""
    return max_payload_mb * MB if max_payload_mb else None


def _too_large(where: str, index: int, size: int, max_payload_mb: int) -> TransformError:
    return TransformError(
        f"{where}: record {index} is {size} bytes, over MaxPayloadInMB={max_payload_mb} "
        f"({max_payload_mb * MB} bytes); raise MaxPayloadInMB (at most 100, 0 = no limit) "
        "or make the record smaller",
        key=where, record=index, size=size, limit=max_payload_mb * MB, reason="PayloadTooLarge")


class SingleRecord:
    """One record per request.

    Args:
        max_payload_mb: ``MaxPayloadInMB`` (0 = no limit).
    """

    name = "SingleRecord"

    def __init__(self, max_payload_mb: int) -> None:
        self.max_payload_mb = max_payload_mb
        self.limit = payload_limit(max_payload_mb)

    def batches(self, records: Sequence[Record], where: str = "object") -> Iterator[Batch]:
        """One batch per record; see :class:`Batcher`."""
        for index, record in enumerate(records):
            if self.limit is not None and record.single_size > self.limit:
                raise _too_large(where, index, record.single_size, self.max_payload_mb)
            yield Batch(index, 1, record.single)


class MultiRecord:
    """As many whole records per request as fit in the payload limit.

    Args:
        max_payload_mb: ``MaxPayloadInMB`` (0 = no limit: the whole object is one request).
        joiner: bytes between two records (``b"\\n"`` for Line).
    """

    name = "MultiRecord"

    def __init__(self, max_payload_mb: int, joiner: bytes = b"") -> None:
        self.max_payload_mb = max_payload_mb
        self.limit = payload_limit(max_payload_mb)
        self.joiner = joiner

    def batches(self, records: Sequence[Record], where: str = "object") -> Iterator[Batch]:
        """Greedy batches of whole records; see :class:`Batcher`."""
        limit, join = self.limit, len(self.joiner)
        first, size = 0, 0
        parts: list[bytes] = []
        for index, record in enumerate(records):
            n = len(record.data)
            if limit is not None and n > limit:
                raise _too_large(where, index, n, self.max_payload_mb)
            grown = size + n + (join if parts else 0)
            if parts and limit is not None and grown > limit:
                yield Batch(first, len(parts), self.joiner.join(parts))
                first, size, parts = index, n, [record.data]
            else:
                size = grown
                parts.append(record.data)
        if parts:
            yield Batch(first, len(parts), self.joiner.join(parts))


def make_batcher(strategy: str, max_payload_mb: int, split_type: str) -> Batcher:
    """The batcher for a resolved ``BatchStrategy`` and ``SplitType``.

    With ``SplitType=None`` each object is one record, sent whole, whatever the strategy.
    """
    if strategy == "SingleRecord" or split_type == "None":
        return SingleRecord(max_payload_mb)
    if strategy == "MultiRecord":
        return MultiRecord(max_payload_mb, joiner(split_type))
    raise ValueError(f"unknown BatchStrategy {strategy!r}")
