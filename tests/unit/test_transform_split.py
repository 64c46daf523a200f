"""Splitting input objects into records: Line, RecordIO, TFRecord, gzip."""

from __future__ import annotations

import gzip
import struct

import pytest

from serving.errors import TransformError
from serving.transform._crc32c import crc32c, masked_crc32c
from serving.transform.split import (
    RECORDIO_MAGIC,
    Record,
    decompress,
    joiner,
    split_lines,
    split_records,
)

# --- encoders written here from the formats' descriptions ------------------------------------


def recordio_frame(data: bytes, cflag: int = 0) -> bytes:
    pad = -len(data) % 4
    return struct.pack("<II", RECORDIO_MAGIC, (cflag << 29) | len(data)) + data + b"\0" * pad


def tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length)) + data
            + struct.pack("<I", masked_crc32c(data)))


# --- None and Line ---------------------------------------------------------------------------


def test_none_is_the_whole_object() -> None:
    data = b"a\nb\r\n\xff"
    assert split_records(data, "None") == [Record(data)]


def test_line_keeps_bytes_as_they_are() -> None:
    data = b"one\r\n\xff\xfe not utf-8\n{\"a\": 1}\n"
    assert [r.data for r in split_lines(data)] == [b"one\r", b"\xff\xfe not utf-8", b'{"a": 1}']


def test_line_last_line_without_newline_is_a_record() -> None:
    assert [r.data for r in split_lines(b"a\nb")] == [b"a", b"b"]
    assert [r.data for r in split_lines(b"a\nb\n")] == [b"a", b"b"]


def test_line_empty_object_has_no_records() -> None:
    assert split_records(b"", "Line") == []


def test_line_empty_lines_kept_by_default_or_skipped() -> None:
    data = b"a\n\nb\n\n"
    assert [r.data for r in split_records(data, "Line")] == [b"a", b"", b"b", b""]
    assert [r.data for r in split_records(data, "Line", empty_lines="skip")] == [b"a", b"b"]


def test_joiner() -> None:
    assert joiner("Line") == b"\n"
    assert joiner("RecordIO") == joiner("TFRecord") == b""


# --- RecordIO --------------------------------------------------------------------------------


def test_recordio_frames_keep_framing_and_know_their_padding() -> None:
    a, b = recordio_frame(b"abcde"), recordio_frame(b"wxyz")
    records = split_records(a + b, "RecordIO")
    assert [r.data for r in records] == [a, b]
    assert records[0].pad == 3 and records[1].pad == 0
    assert records[0].single == a[:-3]
    assert records[0].single_size == len(a) - 3


def test_recordio_multi_part_record_is_one_record() -> None:
    parts = recordio_frame(b"first", 1) + recordio_frame(b"mid", 2) + recordio_frame(b"end!", 3)
    whole = recordio_frame(b"x")
    records = split_records(parts + whole, "RecordIO")
    assert [r.data for r in records] == [parts, whole]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"\x01\x02\x03\x04" + b"\0" * 8, "magic 0x04030201"),
        (recordio_frame(b"abc")[:-2], "runs past the end"),
        (recordio_frame(b"abc") + b"\0\0", "too short for a frame header"),
        (recordio_frame(b"abc", 2), "without a first part"),
        (recordio_frame(b"abc", 1), "without its last part"),
        (recordio_frame(b"abc", 1) + recordio_frame(b"d", 0), "before the last part"),
    ],
)
def test_recordio_corrupt_data_names_object_offset_and_record(data: bytes, fragment: str) -> None:
    with pytest.raises(TransformError) as info:
        split_records(recordio_frame(b"ok") + data, "RecordIO", where="s3://b/k.rec")
    message = str(info.value)
    assert message.startswith("s3://b/k.rec: not valid RecordIO data")
    assert fragment in message
    assert "(record " in message and "SplitType" in message


# --- TFRecord --------------------------------------------------------------------------------


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


def test_tfrecord_records_keep_their_framing() -> None:
    a, b = tfrecord(b"hello"), tfrecord(b"\x00" * 100)
    records = split_records(a + b, "TFRecord")
    assert [r.data for r in records] == [a, b]
    assert all(r.pad == 0 for r in records)


def test_tfrecord_corrupt_data_crc_fails() -> None:
    good, bad = tfrecord(b"hello"), bytearray(tfrecord(b"world"))
    bad[14] ^= 0xFF
    with pytest.raises(TransformError, match=r"s3://b/x.tfrecord: .*data whose CRC does not "
                                              r"match.*record 1"):
        split_records(good + bytes(bad), "TFRecord", where="s3://b/x.tfrecord")
    # Without verification, the framing still parses.
    assert len(split_records(good + bytes(bad), "TFRecord", verify_crc=False)) == 2


def test_tfrecord_corrupt_length_and_truncation_fail() -> None:
    bad = bytearray(tfrecord(b"hello"))
    bad[9] ^= 0x01
    with pytest.raises(TransformError, match="length whose CRC"):
        split_records(bytes(bad), "TFRecord")
    with pytest.raises(TransformError, match="runs past the end"):
        split_records(tfrecord(b"hello")[:-1], "TFRecord")
    with pytest.raises(TransformError, match="too short"):
        split_records(b"\x01\x02", "TFRecord")


# --- gzip ------------------------------------------------------------------------------------


def test_gzip_is_decompressed_including_several_members() -> None:
    data = gzip.compress(b"a\nb\n") + gzip.compress(b"c\n")
    assert decompress(data, "Gzip", limit=100) == b"a\nb\nc\n"
    assert decompress(b"raw", "None", limit=1) == b"raw"


def test_gzip_over_the_cap_is_refused() -> None:
    data = gzip.compress(b"x" * 10_000)
    assert len(decompress(data, "Gzip", limit=10_000)) == 10_000
    with pytest.raises(TransformError, match="more than 9999 bytes"):
        decompress(data, "Gzip", limit=9_999, where="s3://b/big.gz")


def test_not_gzip_and_truncated_gzip_are_refused() -> None:
    with pytest.raises(TransformError, match=r"not gzip data.*CompressionType=None"):
        decompress(b"plain text", "Gzip", limit=100)
    with pytest.raises(TransformError, match="truncated"):
        decompress(gzip.compress(b"hello world" * 10)[:-6], "Gzip", limit=1000)
