"""Tests for serving.codecs: round trips, and what a client sees for bad bodies."""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from serving import codecs
from serving.errors import (
    BadRequest,
    InvalidInput,
    PayloadTooLarge,
    SmserveError,
    UnsupportedContentType,
)


def npy(arr: Any, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, arr, allow_pickle=allow_pickle)
    return out.getvalue()


def image_bytes(arr: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format=fmt)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


class _CreatesFile:
    """Pickles to "open(path, 'w')": loading the pickle creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _evil_npy(path: Path) -> bytes:
    return npy(np.array([_CreatesFile(path)], dtype=object), allow_pickle=True)


# --- normalize ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("application/json", "application/json"),
        (" Application/JSON ; charset=utf-8", "application/json"),
        ("text/csv;header=present", "text/csv"),
        ("application/x-jsonlines", "application/jsonlines"),
        ("application/jsonl", "application/jsonlines"),
        ("application/npy", "application/x-npy"),
        ("application/npz", "application/x-npz"),
        ("text/json", "application/json"),
        ("image/jpg", "image/jpeg"),
        ("text/plain, text/csv", "text/csv"),
        ("*/*", "*/*"),
        ("", ""),
        ("text/plain", "text/plain"),
    ],
)
def test_normalize(given: str, expected: str) -> None:
    assert codecs.normalize(given) == expected


def test_every_supported_type_is_already_normal() -> None:
    assert all(codecs.normalize(kind) == kind for kind in codecs.SUPPORTED)


@pytest.mark.parametrize("accept", ["", "*/*", "application/json; charset=utf-8"])
def test_resolve_accept_defaults_to_json(accept: str) -> None:
    assert codecs.resolve_accept(accept) == "application/json"


# --- round trips -------------------------------------------------------------


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        np.zeros((0, 5), dtype=np.float64),
        np.array(3.5),
        np.array(["a", "bc"]),
        np.zeros(3, dtype=[("x", "<f4"), ("y", "<i2")]),
    ],
)
def test_npy_round_trip(arr: np.ndarray) -> None:
    out = codecs.decode(codecs.encode(arr, "application/x-npy"), "application/x-npy")
    assert isinstance(out, np.ndarray)
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)


def test_npy_decoded_array_is_writable() -> None:
    out = codecs.decode(npy(np.arange(3)), "application/x-npy")
    out[0] = 7
    assert out[0] == 7


def test_npy_from_lists_and_scalars() -> None:
    assert codecs.decode(codecs.encode([[1, 2], [3, 4]], "application/x-npy"),
                         "application/x-npy").tolist() == [[1, 2], [3, 4]]
    assert codecs.decode(codecs.encode(2.5, "application/npy"), "application/x-npy") == 2.5


def test_npz_round_trip() -> None:
    arrays = {"video": np.ones((2, 3, 4), np.uint8), "file": np.arange(3.0)}
    out = codecs.decode(codecs.encode(arrays, "application/x-npz"), "application/x-npz")
    assert set(out) == {"video", "file"}
    for key, value in arrays.items():
        np.testing.assert_array_equal(out[key], value)
        assert out[key].dtype == value.dtype


def test_npz_single_array_is_arr_0_and_reads_numpy_savez_compressed() -> None:
    out = codecs.decode(codecs.encode(np.arange(4), "application/x-npz"), "application/x-npz")
    assert list(out) == ["arr_0"]
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.eye(3), b=np.arange(2))
    out = codecs.decode(buf.getvalue(), "application/x-npz")
    np.testing.assert_array_equal(out["a"], np.eye(3))
    # numpy itself reads what we write
    with np.load(io.BytesIO(codecs.encode({"x": np.eye(2)}, "application/x-npz"))) as f:
        np.testing.assert_array_equal(f["x"], np.eye(2))


def test_json_round_trip_with_numpy_values() -> None:
    value = {"scores": np.array([[1, 2], [3, 4]], dtype=np.int32), "p": np.float64(0.25),
             "n": np.int64(3), "ok": np.bool_(True), "nested": [np.arange(2)], "s": "é"}
    body = codecs.encode(value, "application/json")
    assert json.loads(body) == {"scores": [[1, 2], [3, 4]], "p": 0.25, "n": 3, "ok": True,
                                "nested": [[0, 1]], "s": "é"}
    assert codecs.decode(body, "application/json; charset=utf-8") == json.loads(body)


def test_json_decode_accepts_str_and_bom() -> None:
    assert codecs.decode('{"a": [1, 2]}', "application/json") == {"a": [1, 2]}
    assert codecs.decode(b"\xef\xbb\xbf[1]", "application/json") == [1]


def test_jsonlines_round_trip() -> None:
    records = [{"a": 1}, [1, 2], "x", None]
    body = codecs.encode(records, "application/jsonlines")
    assert body.endswith(b"\n")
    assert body.count(b"\n") == 4
    assert codecs.decode(body, "application/jsonlines") == records


def test_jsonlines_array_rows_and_blank_lines() -> None:
    body = codecs.encode(np.arange(6).reshape(3, 2), "application/x-jsonlines")
    assert body == b"[0, 1]\n[2, 3]\n[4, 5]\n"
    assert codecs.decode(b'{"a": 1}\r\n\n   \n{"b": 2}', "application/jsonl") == [
        {"a": 1}, {"b": 2}]


def test_jsonlines_single_value_is_one_line() -> None:
    assert codecs.encode({"a": 1}, "application/jsonlines") == b'{"a": 1}\n'


def test_csv_numeric_round_trip() -> None:
    arr = np.array([[0.1, 2.0, -3.5], [1e-20, 1e20, 7.0]])
    body = codecs.encode(arr, "text/csv")
    assert body.endswith(b"\n")
    out = codecs.decode(body, "text/csv")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, arr)


def test_csv_float32_is_written_short() -> None:
    assert codecs.encode(np.array([[0.1, 0.2]], dtype=np.float32), "text/csv") == b"0.1,0.2\n"


def test_csv_one_dimensional_is_one_value_per_line() -> None:
    assert codecs.encode(np.array([1, 2, 3]), "text/csv") == b"1\n2\n3\n"
    assert codecs.encode([0.5, 1.5], "text/csv") == b"0.5\n1.5\n"
    assert codecs.encode(4, "text/csv") == b"4\n"
    assert codecs.encode(np.float32(0.1), "text/csv") == b"0.1\n"
    assert codecs.encode([], "text/csv") == b""
    assert codecs.encode([None, True, "x"], "text/csv") == b'""\nTrue\nx\n'


def test_csv_rows_with_text_are_quoted() -> None:
    body = codecs.encode([["a,b", 1], ["c", 2.5]], "text/csv")
    assert body == b'"a,b",1\nc,2.5\n'
    assert codecs.decode(body, "text/csv") == [["a,b", "1"], ["c", "2.5"]]


def test_csv_non_numeric_decodes_to_strings() -> None:
    assert codecs.decode(b"name,score\nx,1\n", "text/csv") == [["name", "score"], ["x", "1"]]


def test_csv_ragged_rows_decode_to_strings() -> None:
    assert codecs.decode(b"1,2\n3\n", "text/csv") == [["1", "2"], ["3"]]


def test_csv_skips_blank_lines_and_crlf() -> None:
    out = codecs.decode(b"1,2\r\n\r\n3,4\r\n", "text/csv")
    np.testing.assert_array_equal(out, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("kind", ["image/png", "image/jpeg"])
def test_image_round_trip(kind: str) -> None:
    rng = np.random.default_rng(0)
    arr = np.full((16, 24, 3), 128, np.uint8) if kind == "image/jpeg" else rng.integers(
        0, 256, (16, 24, 3), dtype=np.uint8)
    out = codecs.decode(codecs.encode(arr, kind), kind)
    assert out.dtype == np.uint8
    assert out.shape == (16, 24, 3)
    if kind == "image/png":
        np.testing.assert_array_equal(out, arr)
    else:
        assert np.abs(out.astype(int) - 128).max() <= 2


def test_grayscale_and_rgba_images_decode_to_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = codecs.decode(codecs.encode(gray, "image/png"), "image/png")
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[:, :, 1], gray)
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert codecs.decode(codecs.encode(rgba, "image/png"), "image/png").shape == (2, 2, 3)


def test_octet_stream() -> None:
    assert codecs.decode(b"\x00\x01", "application/octet-stream") == b"\x00\x01"
    assert codecs.decode(b"", "application/octet-stream") == b""
    assert codecs.encode(bytearray(b"ab"), "application/octet-stream") == b"ab"
    assert codecs.encode(memoryview(b"ab"), "application/octet-stream") == b"ab"
    assert codecs.encode("é", "application/octet-stream") == "é".encode()
    arr = np.arange(3, dtype="<i4")
    assert codecs.encode(arr, "application/octet-stream") == arr.tobytes()


@pytest.mark.parametrize("accept", ["", "*/*"])
def test_encode_wildcard_accept_is_json(accept: str) -> None:
    assert codecs.encode({"a": np.arange(2)}, accept) == b'{"a": [0, 1]}'


def test_decode_accepts_bytearray_and_memoryview() -> None:
    body = npy(np.arange(3))
    for wrapped in (bytearray(body), memoryview(body)):
        assert codecs.decode(wrapped, "application/x-npy").tolist() == [0, 1, 2]


# --- bad bodies: never unpickle, always say what to fix -----------------------


def test_pickled_npy_is_refused_without_running_code(tmp_path: Path) -> None:
    # The payload is live: numpy with allow_pickle=True runs it.
    control = tmp_path / "control"
    np.load(io.BytesIO(_evil_npy(control)), allow_pickle=True)
    assert control.exists()

    target = tmp_path / "pwned"
    with pytest.raises(BadRequest) as info:
        codecs.decode(_evil_npy(target), "application/x-npy")
    assert not target.exists()
    assert info.value.status == 400
    assert "pickled" in info.value.message
    assert "allow_pickle=False" in info.value.message


def test_pickled_member_in_npz_is_refused_without_running_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    buf = io.BytesIO()
    np.savez(buf, ok=np.arange(2), bad=np.array([_CreatesFile(target)], dtype=object))
    with pytest.raises(BadRequest) as info:
        codecs.decode(buf.getvalue(), "application/x-npz")
    assert not target.exists()
    assert "'bad.npy'" in info.value.message
    assert "pickled" in info.value.message


def test_raw_pickle_body_is_refused(tmp_path: Path) -> None:
    import pickle

    target = tmp_path / "pwned"
    with pytest.raises(BadRequest, match="pickle") as info:
        codecs.decode(pickle.dumps(_CreatesFile(target)), "application/x-npy")
    assert not target.exists()
    assert info.value.status == 400


def test_truncated_npy() -> None:
    body = npy(np.arange(100, dtype=np.float64))
    with pytest.raises(BadRequest, match="truncated") as info:
        codecs.decode(body[:-8], "application/x-npy")
    assert "800" in info.value.message
    with pytest.raises(BadRequest, match="header"):
        codecs.decode(body[:20], "application/x-npy")


def test_npy_header_claiming_a_huge_array_is_refused_before_allocating() -> None:
    body = npy(np.zeros(2, np.float64)).replace(b"(2,)", b"(10000000000000,)")
    with pytest.raises(BadRequest, match="truncated"):
        codecs.decode(body, "application/x-npy")


@pytest.mark.parametrize("body", [b"hello", b"\x93NUMPY\x01\x00garbage", b"\x93NUMPY"])
def test_garbage_npy(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        codecs.decode(body, "application/x-npy")
    assert info.value.status == 400
    assert "numpy.save" in info.value.message


def test_npy_and_npz_mixed_up_say_which_type_to_send() -> None:
    with pytest.raises(BadRequest, match="application/x-npz"):
        codecs.decode(codecs.encode({"a": np.arange(2)}, "application/x-npz"),
                      "application/x-npy")
    with pytest.raises(BadRequest, match="application/x-npy"):
        codecs.decode(npy(np.arange(2)), "application/x-npz")


def test_corrupt_npz() -> None:
    body = codecs.encode({"a": np.arange(1000)}, "application/x-npz")
    with pytest.raises(BadRequest, match="npz"):
        codecs.decode(body[: len(body) // 2], "application/x-npz")


def test_npz_with_a_non_array_member() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("notes.txt", "hi")
    with pytest.raises(BadRequest) as info:
        codecs.decode(buf.getvalue(), "application/x-npz")
    assert "'notes.txt'" in info.value.message


@pytest.mark.parametrize("kind", ["application/x-npy", "application/json", "text/csv",
                                  "image/png", "application/jsonlines"])
def test_empty_body(kind: str) -> None:
    with pytest.raises(BadRequest, match="empty"):
        codecs.decode(b"", kind)


def test_bad_json_names_line_and_column() -> None:
    with pytest.raises(BadRequest) as info:
        codecs.decode(b'{"a": 1,\n "b": }', "application/json")
    assert info.value.status == 400
    assert "line 2, column 7" in info.value.message


def test_json_not_utf8() -> None:
    with pytest.raises(BadRequest, match="UTF-8") as info:
        codecs.decode(b'{"a": "\xff"}', "application/json")
    assert "offset 7" in info.value.message


def test_json_nested_too_deeply_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="nested too deeply"):
        codecs.decode(b"[" * 100_000, "application/json")


def test_bad_jsonlines_names_the_line() -> None:
    with pytest.raises(BadRequest) as info:
        codecs.decode(b'{"a": 1}\n\n{"b": \n{"c": 3}\n', "application/jsonlines")
    assert "line 3" in info.value.message
    assert "one JSON value per line" in info.value.message


def test_csv_with_a_giant_field_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="CSV"):
        codecs.decode(b"1,2\n3," + b"9" * 200_000 + b"\n", "text/csv")


def test_corrupt_png() -> None:
    body = image_bytes(np.zeros((8, 8, 3), np.uint8), "PNG")
    with pytest.raises(BadRequest) as info:
        codecs.decode(body[:40], "image/png")
    assert not isinstance(info.value, PayloadTooLarge)
    assert info.value.status == 400
    assert "image" in info.value.message


def test_not_an_image() -> None:
    with pytest.raises(BadRequest, match="JPEG or PNG"):
        codecs.decode(b"GIF89a not really", "image/jpeg")


@pytest.mark.parametrize("side", [10_000, 20_000, 100_000])
def test_huge_image_header_is_payload_too_large(side: int) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        codecs.decode(png_header_only(side, side), "image/png")
    assert info.value.status == 413
    assert "resize" in info.value.message


@pytest.mark.parametrize("kind", ["text/plain", "application/xml", "", "*/*"])
def test_unsupported_content_type_lists_supported_ones(kind: str) -> None:
    with pytest.raises(UnsupportedContentType) as info:
        codecs.decode(b"x", kind)
    assert info.value.status == 415
    for supported in codecs.SUPPORTED:
        assert supported in info.value.message


def test_unsupported_accept_lists_supported_ones() -> None:
    with pytest.raises(UnsupportedContentType) as info:
        codecs.encode([1], "text/html; q=0.9")
    assert info.value.status == 415
    assert "text/html" in info.value.message
    assert "application/x-npy" in info.value.message


# --- values that cannot be encoded ------------------------------------------


@pytest.mark.parametrize("kind", ["application/x-npy", "application/x-npz",
                                  "application/octet-stream"])
def test_object_arrays_are_never_pickled(kind: str) -> None:
    with pytest.raises(InvalidInput) as info:
        codecs.encode(np.array([{"a": 1}], dtype=object), kind)
    assert info.value.status == 422
    assert "object" in info.value.message


def test_ragged_list_as_npy() -> None:
    with pytest.raises(InvalidInput, match="rectangular"):
        codecs.encode([[1, 2], [3]], "application/x-npy")


def test_bytes_are_not_json() -> None:
    with pytest.raises(InvalidInput, match="application/octet-stream"):
        codecs.encode({"a": b"raw"}, "application/json")
    with pytest.raises(InvalidInput):
        codecs.encode([object()], "application/jsonlines")


def test_csv_refuses_three_dimensions_and_dict_rows() -> None:
    with pytest.raises(InvalidInput, match="3-D"):
        codecs.encode(np.zeros((2, 2, 2)), "text/csv")
    with pytest.raises(InvalidInput, match="dict"):
        codecs.encode([{"a": 1}], "text/csv")
    with pytest.raises(InvalidInput, match="cell"):
        codecs.encode([[1, [2, 3]]], "text/csv")


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (np.zeros((4, 4, 3), np.float32), "image/png"),
        (np.zeros((4, 4, 4), np.uint8), "image/jpeg"),
        (np.zeros((4, 4, 2), np.uint8), "image/png"),
        (np.zeros(4, np.uint8), "image/png"),
    ],
)
def test_image_encode_refuses_wrong_arrays(value: np.ndarray, kind: str) -> None:
    with pytest.raises(InvalidInput, match="uint8") as info:
        codecs.encode(value, kind)
    assert info.value.status == 422


def test_octet_stream_refuses_other_values() -> None:
    with pytest.raises(InvalidInput, match="bytes"):
        codecs.encode({"a": 1}, "application/octet-stream")


def test_every_error_is_in_the_tree() -> None:
    for body, kind in [(b"x", "application/json"), (b"x", "text/plain")]:
        with pytest.raises(SmserveError):
            codecs.decode(body, kind)
