"""frame_features handlers: S3-referenced clips in, per-frame feature arrays out.

Each request record names a clip (``inputs.video``, an ``.npy`` T x H x W x 3
uint8 array) and where its features go (``output_path``); the output is a
T x 64 float32 ``.npy``. All frames of a request with the same frame size go
through the network together, in chunks, on GPU 0 when cupy sees one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from model import FEATURE_DIM, FrameFeatures, to_input

from serving import codecs, s3refs
from serving.errors import BadRequest, InvalidInput, SmserveError

NPY = "application/x-npy"
INPUT = "video"
MIN_SIDE = 8
#: Largest clip accepted, in pixels (T x H x W): about 200 MB of uint8 RGB.
MAX_PIXELS = 1 << 26
#: Pixels per forward pass; bounds the activations' memory.
CHUNK_PIXELS = 1 << 21


@dataclass
class Loaded:
    """The network and where it runs."""

    net: FrameFeatures
    gpu: bool


def _gpu_available() -> bool:
    from chainer.backends import cuda

    if not cuda.available:
        return False
    try:
        return int(cuda.cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def model_fn(model_dir: str) -> Loaded:
    """Load ``weights.npz`` from ``model_dir``; move to GPU 0 when there is one."""
    import chainer

    net = FrameFeatures()
    chainer.serializers.load_npz(os.path.join(model_dir, "weights.npz"), net)
    gpu = _gpu_available()
    if gpu:
        net.to_gpu(0)
    return Loaded(net, gpu)


def input_fn(body: bytes, content_type: str) -> list[s3refs.RequestRecord]:
    """Parse the request records (one JSON object, or JSON lines)."""
    return s3refs.parse_records(body, content_type)


def check_clip(value: Any, index: int = 0) -> np.ndarray:
    """The clip as a T x H x W x 3 uint8 array, or InvalidInput saying what is wrong."""
    where = f"input {INPUT!r}"
    expected = f"T x H x W x 3 uint8 with T >= 1, H and W >= {MIN_SIDE}"
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"{where} is not an array; expected {expected}", record=index)
    shape = tuple(value.shape)
    if (value.ndim != 4 or shape[3] != 3 or shape[0] < 1 or shape[1] < MIN_SIDE
            or shape[2] < MIN_SIDE):
        raise InvalidInput(f"{where} has shape {shape}; expected {expected}", record=index)
    pixels = shape[0] * shape[1] * shape[2]
    if pixels > MAX_PIXELS:
        raise InvalidInput(f"{where} has shape {shape}, {pixels} pixels; at most {MAX_PIXELS} "
                           "pixels per clip (split it into shorter clips)", record=index)
    if value.dtype == np.uint8:
        return value
    if value.dtype.kind in "iu" and value.size and (value.min() < 0 or value.max() > 255):
        raise InvalidInput(f"{where} has {value.dtype} values outside 0..255; expected uint8",
                           record=index)
    if value.dtype.kind not in "iu":
        raise InvalidInput(f"{where} has dtype {value.dtype}; expected uint8 (0..255)",
                           record=index)
    return value.astype(np.uint8)


def features(loaded: Loaded, frames: np.ndarray) -> np.ndarray:
    """Features (N x 64 float32, numpy) for uint8 frames (N x H x W x 3)."""
    import chainer
    from chainer.backends import cuda

    out = np.empty((len(frames), FEATURE_DIM), dtype=np.float32)
    step = max(1, CHUNK_PIXELS // (frames.shape[1] * frames.shape[2]))
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for start in range(0, len(frames), step):
            x = to_input(frames[start:start + step])
            if loaded.gpu:
                x = cuda.to_gpu(x, device=0)
            out[start:start + len(x)] = cuda.to_cpu(loaded.net(x).array)
    return out


def read_clip(item: dict[str, bytes], index: int = 0) -> np.ndarray | SmserveError:
    """The record's clip, or the error that says what is wrong with it (a 4xx)."""
    try:
        return check_clip(codecs.decode(item[INPUT], NPY), index)
    except BadRequest as err:
        return err


def compute(loaded: Loaded, batch: Sequence[dict[str, bytes]]) -> list[bytes | SmserveError]:
    """One ``.npy`` of T x 64 features per record; clips of one frame size run together.

    A record whose clip is wrong gets its error in place of bytes; the others run.
    """
    read = [read_clip(item, i) for i, item in enumerate(batch)]
    clips = [c for c in read if not isinstance(c, SmserveError)]
    groups: dict[tuple[int, int], list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault((clip.shape[1], clip.shape[2]), []).append(i)
    results: list[np.ndarray | None] = [None] * len(clips)
    for members in groups.values():
        stacked = np.concatenate([clips[i] for i in members])
        feats = features(loaded, stacked)
        offset = 0
        for i in members:
            count = len(clips[i])
            results[i] = feats[offset:offset + count]
            offset += count
    encoded = iter([codecs.encode(r, NPY) for r in results])
    return [c if isinstance(c, SmserveError) else next(encoded) for c in read]


def predict_fn(records: list[s3refs.RequestRecord],
               model: Loaded) -> list[s3refs.RecordResult]:
    """Fetch the clips, compute their features, write them; skip finished records."""
    return s3refs.runtime().process(records, lambda batch: compute(model, batch), NPY)


def output_fn(results: list[s3refs.RecordResult], accept: str) -> tuple[bytes, str]:
    """What happened to each record, as JSON (lines)."""
    return s3refs.response(results)
