"""Content types <-> bytes, for request bodies and responses.

:func:`decode` turns a request body into a Python value, :func:`encode` turns a
prediction into a response body. Nothing here ever unpickles: ``.npy`` and
``.npz`` bodies holding object arrays are refused with a 400, and every error
says what the client should send instead.

===============================  ==============================================
content type                     :func:`decode` returns
===============================  ==============================================
``application/x-npy``            ``numpy.ndarray``
``application/x-npz``            ``dict[str, numpy.ndarray]``
``application/json``             the JSON value
``application/jsonlines``        ``list`` of JSON values, one per non-blank line
``text/csv``                     2-D float64 array if every cell is a number,
                                 else ``list[list[str]]``
``image/jpeg``, ``image/png``    uint8 array, height x width x 3 (RGB)
``application/octet-stream``     ``bytes``
===============================  ==============================================
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from serving.errors import BadRequest, InvalidInput, PayloadTooLarge, UnsupportedContentType

NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON = "application/json"
JSONLINES = "application/jsonlines"
CSV = "text/csv"
JPEG = "image/jpeg"
PNG = "image/png"
OCTET_STREAM = "application/octet-stream"

#: Every content type :func:`decode` and :func:`encode` accept (after :func:`normalize`).
SUPPORTED: tuple[str, ...] = (NPY, NPZ, JSON, JSONLINES, CSV, JPEG, PNG, OCTET_STREAM)

#: What :func:`encode` produces when the accept type is empty or ``*/*``.
DEFAULT_ACCEPT = JSON

#: Largest image (width x height) :func:`decode` opens; Pillow's own default.
MAX_IMAGE_PIXELS = 89_478_485

_ALIASES = {
    "application/npy": NPY,
    "application/x-numpy": NPY,
    "application/npz": NPZ,
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/ndjson": JSONLINES,
    "text/json": JSON,
    "application/csv": CSV,
    "text/x-csv": CSV,
    "image/jpg": JPEG,
}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_PLAIN = "send a plain numeric array saved with numpy.save(..., allow_pickle=False)"


def normalize(content_type: str) -> str:
    """The canonical form of a content type or accept value.

    Lower-cases, drops parameters (``; charset=utf-8``) and whitespace, and
    maps common aliases (``application/jsonl``, ``image/jpg``...) to the names
    in :data:`SUPPORTED`. For a list (``text/csv, application/json``) the first
    supported entry wins. Wildcards (``*/*``) and ``""`` come back as they are:
    the caller decides what they mean.
    """
    entries = [part.split(";", 1)[0].strip().lower() for part in (content_type or "").split(",")]
    entries = [_ALIASES.get(entry, entry) for entry in entries if entry]
    if not entries:
        return ""
    return next((entry for entry in entries if entry in SUPPORTED), entries[0])


def resolve_accept(accept: str) -> str:
    """:func:`normalize` ``accept``, with ``""`` and ``*/*`` meaning :data:`DEFAULT_ACCEPT`."""
    kind = normalize(accept)
    return DEFAULT_ACCEPT if kind in ("", "*/*") else kind


def _unsupported(content_type: str, what: str) -> UnsupportedContentType:
    shown = content_type or "(none)"
    return UnsupportedContentType(
        f"unsupported {what} {shown!r}; use one of: {', '.join(SUPPORTED)}",
        content_type=content_type,
    )


# --- decode ------------------------------------------------------------------


def decode(body: bytes | bytearray | memoryview | str, content_type: str) -> Any:
    """Decode a request body (see the table in the module docstring).

    Args:
        body: the raw body; ``str`` is taken as UTF-8 text.
        content_type: the request's content type; parameters are ignored.

    Raises:
        UnsupportedContentType: no codec for ``content_type`` (415).
        BadRequest: the body is not valid for its type, or is a pickle (400).
        PayloadTooLarge: an image is over :data:`MAX_IMAGE_PIXELS` (413).
    """
    kind = normalize(content_type)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise _unsupported(content_type, "content type")
    data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    if not data and kind != OCTET_STREAM:
        raise BadRequest(f"body is empty; send {kind} data", content_type=kind)
    return decoder(data)


def _decode_npy(data: bytes, what: str = "body") -> np.ndarray:
    if not data.startswith(_NPY_MAGIC):
        if data.startswith(_ZIP_MAGIC):
            raise BadRequest(f"{what} is an .npz archive, not an .npy array; send it as {NPZ}")
        pickled = data[:1] == b"\x80"
        hint = " (it looks like a Python pickle, which is never loaded)" if pickled else ""
        raise BadRequest(f"{what} is not an .npy file{hint}; {_PLAIN}")
    fp = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            shape, dtype = None, None
    except (ValueError, TypeError, EOFError, SyntaxError) as err:
        raise BadRequest(f"{what} has a broken .npy header ({err}); {_PLAIN}") from None
    if dtype is not None and dtype.hasobject:
        raise BadRequest(f"{what} is a pickled .npy (dtype=object); {_PLAIN}")
    if shape is not None and dtype is not None:
        need = math.prod(shape) * dtype.itemsize
        have = len(data) - fp.tell()
        if have < need:
            raise BadRequest(f"{what} is a truncated .npy: shape {shape} of {dtype} needs {need} "
                             f"bytes of data but only {have} arrived; resend the whole file")
    fp.seek(0)
    try:
        return np.lib.format.read_array(fp, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise BadRequest(f"{what} is a pickled .npy (dtype=object); {_PLAIN}") from None
        raise BadRequest(f"{what} is not a readable .npy ({err}); {_PLAIN}") from None
    except (EOFError, OSError) as err:
        raise BadRequest(f"{what} is not a readable .npy ({err}); {_PLAIN}") from None


def _decode_npz(data: bytes) -> dict[str, np.ndarray]:
    if data.startswith(_NPY_MAGIC):
        raise BadRequest(f"body is an .npy array, not an .npz archive; send it as {NPY}")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            arrays: dict[str, np.ndarray] = {}
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    raise BadRequest(f"body member {name!r} is not an .npy array; send an "
                                     "archive written by numpy.savez")
                arrays[name[:-4]] = _decode_npy(archive.read(name), f"body member {name!r}")
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError,
            OSError) as err:
        raise BadRequest(f"body is not a readable .npz archive ({err}); send a file written "
                         "by numpy.savez") from None


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise BadRequest(f"body is not UTF-8 text (bad byte at offset {err.start}); encode "
                         "it as UTF-8") from None


def _short(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return str(err).split(";")[0]


def _decode_json(data: bytes) -> Any:
    text = _text(data)
    if not text.strip():
        raise BadRequest("body is empty; send a JSON value")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadRequest(f"body is not valid JSON: {err.msg} at line {err.lineno}, column "
                         f"{err.colno}") from None
    except (ValueError, RecursionError) as err:
        raise BadRequest(f"body is JSON this server cannot read ({_short(err)})") from None


def _decode_jsonlines(data: bytes) -> list[Any]:
    records = []
    for number, line in enumerate(_text(data).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise BadRequest(f"line {number} of the body is not valid JSON: {err.msg} at "
                             f"column {err.colno}; send one JSON value per line") from None
        except (ValueError, RecursionError) as err:
            raise BadRequest(f"line {number} of the body is JSON this server cannot read "
                             f"({_short(err)})") from None
    if not records:
        raise BadRequest("body has no JSON lines; send one JSON value per line")
    return records


def _decode_csv(data: bytes) -> np.ndarray | list[list[str]]:
    try:
        rows = [row for row in csv.reader(io.StringIO(_text(data), newline="")) if row]
    except csv.Error as err:
        raise BadRequest(f"body is not valid CSV ({err})") from None
    if not rows:
        raise BadRequest("body is empty; send at least one CSV row")
    if len({len(row) for row in rows}) == 1:
        try:
            return np.array([[float(cell) for cell in row] for row in rows], dtype=np.float64)
        except ValueError:
            pass
    return rows


def _decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=("JPEG", "PNG"))
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError(f"{width}x{height} pixels")
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise PayloadTooLarge(f"image is too large ({err}); send at most {MAX_IMAGE_PIXELS} "
                              "pixels, e.g. resize it first") from None
    except Exception as err:
        raise BadRequest(f"body is not a readable image ({type(err).__name__}: {err}); send "
                         "a complete JPEG or PNG file") from None


_DECODERS: dict[str, Callable[[bytes], Any]] = {
    NPY: _decode_npy,
    NPZ: _decode_npz,
    JSON: _decode_json,
    JSONLINES: _decode_jsonlines,
    CSV: _decode_csv,
    JPEG: _decode_image,
    PNG: _decode_image,
    OCTET_STREAM: bytes,
}


# --- encode ------------------------------------------------------------------


def encode(value: Any, accept: str) -> bytes:
    """Encode a prediction as ``accept`` (``""`` and ``*/*`` mean JSON).

    npy takes anything :func:`numpy.asarray` makes a non-object array of; npz
    a dict of arrays (or one array, saved as ``arr_0``); json and jsonlines
    take numpy arrays and scalars anywhere inside; csv a scalar, a 1-D array
    (one value per line) or rows; images an HxW or HxWx3 (PNG: also HxWx4)
    uint8 array; octet-stream bytes, str (UTF-8) or an array (its raw bytes).

    Raises:
        UnsupportedContentType: no codec for ``accept`` (415).
        InvalidInput: ``value`` cannot be written as ``accept`` (422).
    """
    kind = resolve_accept(accept)
    encoder = _ENCODERS.get(kind)
    if encoder is None:
        raise _unsupported(accept, "accept type")
    return encoder(value, kind)


def _array(value: Any, kind: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except ValueError as err:
        raise InvalidInput(f"cannot write {type(value).__name__} as {kind} ({err}); return "
                           "a rectangular numeric array") from None
    if arr.dtype.hasobject:
        raise InvalidInput(f"cannot write {type(value).__name__} as {kind}: it makes an object "
                           "array, which is never pickled; return a numeric array")
    return arr


def _encode_npy(value: Any, kind: str) -> bytes:
    out = io.BytesIO()
    np.save(out, _array(value, kind), allow_pickle=False)
    return out.getvalue()


def _encode_npz(value: Any, kind: str) -> bytes:
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise InvalidInput("npz array names must be strings")
        arrays = {key: _array(item, kind) for key, item in value.items()}
    elif isinstance(value, list | tuple):
        arrays = {f"arr_{i}": _array(item, kind) for i, item in enumerate(value)}
    else:
        arrays = {"arr_0": _array(value, kind)}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, arr in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return out.getvalue()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes | bytearray | memoryview):
        raise TypeError("bytes are not JSON; decode them to str or ask for "
                        f"{OCTET_STREAM}")
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _dumps(value: Any, kind: str) -> str:
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"cannot write the prediction as {kind}: {err}") from None


def _encode_json(value: Any, kind: str) -> bytes:
    return _dumps(value, kind).encode("utf-8")


def _encode_jsonlines(value: Any, kind: str) -> bytes:
    if (isinstance(value, np.ndarray) and value.ndim > 0) or isinstance(value, list | tuple):
        items = list(value)
    else:
        items = [value]
    return "".join(_dumps(item, kind) + "\n" for item in items).encode("utf-8")


def _cell(v: Any, kind: str) -> str:
    if isinstance(v, dict | list | tuple | set | np.ndarray | bytes | bytearray):
        raise InvalidInput(f"cannot write a {type(v).__name__} as a {kind} cell; return a "
                           "scalar, a 1-D array or rows of scalars")
    if v is None:
        return ""
    if isinstance(v, np.generic) and not isinstance(v, np.floating):
        v = v.item()
    return repr(v) if isinstance(v, float) else str(v)


def _encode_csv(value: Any, kind: str) -> bytes:
    rows: Any
    if isinstance(value, list | tuple):
        rows = [np.asarray(row).ravel() if isinstance(row, np.ndarray)
                else row if isinstance(row, list | tuple) else [row] for row in value]
    else:
        arr = _array(value, kind)
        if arr.ndim > 2:
            raise InvalidInput(f"cannot write a {arr.ndim}-D array as {kind}; reshape it to "
                               "rows and columns")
        rows = [[arr[()]]] if arr.ndim == 0 else arr.reshape(-1, 1) if arr.ndim == 1 else arr
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([_cell(v, kind) for v in row])
    return out.getvalue().encode("utf-8")


def _encode_image(value: Any, kind: str) -> bytes:
    from PIL import Image

    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    channels = 1 if arr.ndim == 2 else arr.shape[2] if arr.ndim == 3 else 0
    allowed = (1, 3, 4) if kind == PNG else (1, 3)
    if arr.dtype != np.uint8 or channels not in allowed:
        raise InvalidInput(
            f"cannot write a {arr.dtype} array of shape {arr.shape} as {kind}; return uint8 "
            f"of shape (H, W) or (H, W, 3){' or (H, W, 4)' if kind == PNG else ''}, e.g. "
            "arr.clip(0, 255).astype(numpy.uint8)"
        )
    out = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(arr))
    image.save(out, format="PNG" if kind == PNG else "JPEG", **({} if kind == PNG else
                                                                 {"quality": 95}))
    return out.getvalue()


def _encode_octet_stream(value: Any, kind: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.ndarray):
        return _array(value, kind).tobytes()
    raise InvalidInput(f"cannot write {type(value).__name__} as {kind}; return bytes, str or "
                       "a numpy array")


_ENCODERS: dict[str, Callable[[Any, str], bytes]] = {
    NPY: _encode_npy,
    NPZ: _encode_npz,
    JSON: _encode_json,
    JSONLINES: _encode_jsonlines,
    CSV: _encode_csv,
    JPEG: _encode_image,
    PNG: _encode_image,
    OCTET_STREAM: _encode_octet_stream,
}
