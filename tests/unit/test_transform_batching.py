"""Grouping records into request bodies: SingleRecord, MultiRecord, MaxPayloadInMB."""

from __future__ import annotations

import pytest

from serving.errors import TransformError
from serving.transform.batching import MB, MultiRecord, SingleRecord, make_batcher
from serving.transform.split import Record, split_lines


def lines(*sizes: int) -> list[Record]:
    return [Record(bytes([97 + i % 26]) * n) for i, n in enumerate(sizes)]


def test_single_record_sends_one_record_per_request_without_padding() -> None:
    records = [Record(b"abc\0", pad=1), Record(b"de")]
    batches = list(SingleRecord(6).batches(records))
    assert [(b.first, b.count, b.body) for b in batches] == [(0, 1, b"abc"), (1, 1, b"de")]


def test_multi_record_joins_lines_with_newline_and_counts_it() -> None:
    # 524,288 + 1 joiner + 524,287 bytes = exactly 1 MB: they fit together.
    half = MB // 2
    batches = list(MultiRecord(1, b"\n").batches(lines(half, half - 1, 10)))
    assert [(b.first, b.count) for b in batches] == [(0, 2), (2, 1)]
    assert len(batches[0].body) == MB
    assert batches[0].body == b"a" * half + b"\n" + b"b" * (half - 1)
    assert not batches[0].body.endswith(b"\n")


def test_multi_record_one_byte_over_starts_a_new_request() -> None:
    half = MB // 2  # two of them plus the joiner is MB + 1
    batches = list(MultiRecord(1, b"\n").batches(lines(half, half)))
    assert [(b.first, b.count) for b in batches] == [(0, 1), (1, 1)]


def test_multi_record_zero_means_no_limit() -> None:
    batches = list(MultiRecord(0, b"\n").batches(lines(MB, MB, MB)))
    assert len(batches) == 1 and batches[0].count == 3
    assert len(batches[0].body) == 3 * MB + 2


def test_multi_record_binary_keeps_framing_and_padding() -> None:
    records = [Record(b"ab\0\0", pad=2), Record(b"cdef")]
    (batch,) = MultiRecord(6).batches(records)
    assert batch.body == b"ab\0\0cdef"


def test_oversize_record_names_object_index_size_and_limit() -> None:
    records = lines(10, MB + 1, 10)
    for batcher in (SingleRecord(1), MultiRecord(1, b"\n")):
        with pytest.raises(TransformError) as info:
            list(batcher.batches(records, "s3://bkt/data/big.jsonl"))
        message = str(info.value)
        assert message.startswith("s3://bkt/data/big.jsonl: record 1 is 1048577 bytes")
        assert "MaxPayloadInMB=1 (1048576 bytes)" in message
        assert info.value.context["reason"] == "PayloadTooLarge"


def test_batches_label_their_records() -> None:
    batches = list(MultiRecord(6, b"\n").batches(split_lines(b"a\nb\nc\n")))
    assert batches[0].records == "records 0-2"
    assert next(iter(SingleRecord(6).batches(split_lines(b"a")))).records == "record 0"


def test_make_batcher() -> None:
    assert isinstance(make_batcher("SingleRecord", 6, "Line"), SingleRecord)
    multi = make_batcher("MultiRecord", 6, "Line")
    assert isinstance(multi, MultiRecord) and multi.joiner == b"\n"
    assert isinstance(make_batcher("MultiRecord", 6, "None"), SingleRecord)
    assert make_batcher("MultiRecord", 6, "TFRecord").joiner == b""  # type: ignore[attr-defined]
