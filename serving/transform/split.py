"""Split an input object into records, on raw bytes, never through a text decoder.

``SplitType``:

``None``
    the whole object is one record.
``Line``
    records end at ``b"\\n"``. The newline is a separator, not part of the
    record: a record is sent without it (``MultiRecord`` bodies put one
    ``b"\\n"`` between records, see :mod:`serving.transform.batching`). Every
    other byte stays as it is: a ``\\r`` before the newline, non-UTF-8 bytes.
    A last line without a newline is a record; a final ``\\n`` does not start
    an empty record after it; an empty object has no records. Empty lines in
    the middle are records of zero bytes by default (so output lines stay
    aligned with input lines); ``empty_lines="skip"`` drops them. What the
    service does with empty lines is **unconfirmed**.
``RecordIO``
    MXNet RecordIO: each frame is the magic ``0xced7230a`` (little-endian
    uint32), a uint32 whose top 3 bits are the continuation flag and whose
    low 29 bits are the data length, the data, and zero padding to a multiple
    of 4 bytes. A logical record is one frame with flag 0, or frames flagged
    1 (first), 2 (middle)..., 3 (last). A record keeps its framing; its final
    padding is dropped only when it is sent alone (``SingleRecord``).
``TFRecord``
    each record is a uint64 length, the masked CRC-32C of those 8 bytes, the
    data and the masked CRC-32C of the data (all little-endian). Both CRCs
    are checked; the record keeps its framing.

A malformed object raises :class:`~serving.errors.TransformError` naming the
object, the byte offset and the record index, so the data plane fails that
object alone.
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from serving.errors import TransformError
from serving.transform._crc32c import masked_crc32c

RECORDIO_MAGIC = 0xCED7230A
_LEN_MASK = (1 << 29) - 1
_EMPTY_LINES = ("keep", "skip")


class Record(NamedTuple):
    """One record of an input object.

    Attributes:
        data: the record's bytes as they go into a ``MultiRecord`` body
            (binary framing included; no line separator).
        pad: trailing padding bytes in ``data``, dropped when the record is
            sent alone.
    """

    data: bytes
    pad: int = 0

    @property
    def single(self) -> bytes:
        """The body when this record is sent on its own (padding removed)."""
        return self.data[: len(self.data) - self.pad] if self.pad else self.data

    @property
    def single_size(self) -> int:
        """``len(self.single)`` without building it."""
        return len(self.data) - self.pad


def joiner(split_type: str) -> bytes:
    """What goes between two records of one request body: ``b"\\n"`` for Line, else nothing."""
    return b"\n" if split_type == "Line" else b""


def split_records(data: bytes, split_type: str, *, where: str = "object",
          empty_lines: str = "keep", verify_crc: bool = True) -> list[Record]:
    """Split ``data`` into records.

    Args:
        data: the (decompressed) object.
        split_type: ``None``, ``Line``, ``RecordIO`` or ``TFRecord``.
        where: how error messages name the object (``s3://bucket/key``).
        empty_lines: ``keep`` (default) or ``skip`` empty lines (Line only).
        verify_crc: check TFRecord CRCs.

    Raises:
        TransformError: the object does not fit ``split_type``.
    """
    if split_type == "None":
        return [Record(data)]
    if split_type == "Line":
        if empty_lines not in _EMPTY_LINES:
            raise ValueError(f"empty_lines={empty_lines!r}; use one of {_EMPTY_LINES}")
        return split_lines(data, skip_empty=empty_lines == "skip")
    if split_type == "RecordIO":
        return split_recordio(data, where=where)
    if split_type == "TFRecord":
        return split_tfrecord(data, where=where, verify_crc=verify_crc)
    raise ValueError(f"unknown SplitType {split_type!r}")


def split_lines(data: bytes, *, skip_empty: bool = False) -> list[Record]:
    """Records separated by ``b"\\n"`` (see the module docstring for the edge cases)."""
    if not data:
        return []
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [Record(line) for line in lines if line or not skip_empty]


def _fail(where: str, kind: str, offset: int, index: int, what: str) -> TransformError:
    return TransformError(
        f"{where}: not valid {kind} data: {what} at byte {offset} (record {index}); "
        f"check TransformInput.SplitType (and CompressionType) for this object",
        key=where, offset=offset, record=index)


def split_recordio(data: bytes, *, where: str = "object") -> list[Record]:
    """MXNet RecordIO frames, grouped into logical records."""
    records: list[Record] = []
    pos, start, index, in_multi = 0, 0, 0, False
    size = len(data)
    while pos < size:
        if size - pos < 8:
            raise _fail(where, "RecordIO", pos, index, f"{size - pos} trailing bytes, "
                        "too short for a frame header")
        magic, word = struct.unpack_from("<II", data, pos)
        if magic != RECORDIO_MAGIC:
            raise _fail(where, "RecordIO", pos, index,
                        f"magic 0x{magic:08x} instead of 0x{RECORDIO_MAGIC:08x}")
        cflag, length = word >> 29, word & _LEN_MASK
        pad = -length % 4
        end = pos + 8 + length + pad
        if end > size:
            raise _fail(where, "RecordIO", pos, index,
                        f"a frame of {length} bytes that runs past the end of the object")
        if cflag > 3:
            raise _fail(where, "RecordIO", pos, index, f"continuation flag {cflag}")
        if cflag in (0, 1):
            if in_multi:
                raise _fail(where, "RecordIO", pos, index,
                            "a new record before the last part of the previous one")
            start = pos
            in_multi = cflag == 1
        elif not in_multi:
            raise _fail(where, "RecordIO", pos, index,
                        f"a continuation frame (flag {cflag}) without a first part")
        pos = end
        if cflag in (0, 3):
            in_multi = False
            records.append(Record(data[start:end], pad))
            index += 1
    if in_multi:
        raise _fail(where, "RecordIO", pos, index, "a multi-part record without its last part")
    return records


def split_tfrecord(data: bytes, *, where: str = "object", verify_crc: bool = True
                   ) -> list[Record]:
    """TFRecord frames, CRCs checked."""
    records: list[Record] = []
    pos, index, size = 0, 0, len(data)
    while pos < size:
        if size - pos < 12:
            raise _fail(where, "TFRecord", pos, index, f"{size - pos} trailing bytes, "
                        "too short for a record header")
        (length,) = struct.unpack_from("<Q", data, pos)
        (len_crc,) = struct.unpack_from("<I", data, pos + 8)
        if verify_crc and masked_crc32c(data[pos:pos + 8]) != len_crc:
            raise _fail(where, "TFRecord", pos, index, "a length whose CRC does not match "
                        "(corrupt or not TFRecord)")
        end = pos + 12 + length + 4
        if end > size:
            raise _fail(where, "TFRecord", pos, index,
                        f"a record of {length} bytes that runs past the end of the object")
        if verify_crc:
            (data_crc,) = struct.unpack_from("<I", data, end - 4)
            if masked_crc32c(memoryview(data)[pos + 12:end - 4]) != data_crc:
                raise _fail(where, "TFRecord", pos, index, "data whose CRC does not match "
                            "(the record is corrupt)")
        records.append(Record(data[pos:end]))
        pos, index = end, index + 1
    return records


def decompress(data: bytes, compression: str, *, limit: int, where: str = "object") -> bytes:
    """Undo ``CompressionType`` (``None`` or ``Gzip``), refusing output over ``limit`` bytes.

    Concatenated gzip members are read one after the other, as ``gunzip`` does.

    Raises:
        TransformError: not gzip data, truncated, or larger than ``limit`` once decompressed.
    """
    if compression == "None":
        return data
    if compression != "Gzip":
        raise ValueError(f"unknown CompressionType {compression!r}")
    out = bytearray()
    rest = data
    try:
        while rest:
            dec = zlib.decompressobj(wbits=31)
            chunk = rest
            while chunk:
                out += dec.decompress(chunk, limit - len(out) + 1)
                if len(out) > limit:
                    raise TransformError(
                        f"{where}: decompresses to more than {limit} bytes; the local data "
                        "plane refuses it (raise the limit, or split the input)", key=where)
                chunk = dec.unconsumed_tail
            if not dec.eof:
                raise TransformError(f"{where}: gzip data is truncated; re-upload the object",
                                     key=where)
            rest = dec.unused_data.lstrip(b"\x00")  # zero padding between members
    except zlib.error as err:
        raise TransformError(f"{where}: not gzip data ({err}); set CompressionType=None "
                             "for uncompressed input", key=where) from err
    return bytes(out)
