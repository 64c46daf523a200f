"""clip_stats handlers: S3-referenced clips in, brightness and motion statistics out.

Each request record names a clip (``inputs.video``, an ``.npy`` T x H x W x 3
uint8 array, the same input frame_features reads) and where its statistics go
(``output_path``, a ``.json``)::

    {"frames": 8, "height": 32, "width": 32,
     "brightness": {"per_frame": [...], "mean": ..., "std": ..., "min": ..., "max": ...},
     "contrast": {...},
     "motion": {"per_frame": [...T-1 values...], ..., "still_fraction": 0.0},
     "mean_rgb": [r, g, b]}

CPU only, plain numpy: no framework, no weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from model import StatsConfig, clip_stats

from serving import codecs, s3refs
from serving.errors import BadRequest, InvalidInput, SmserveError

NPY = "application/x-npy"
JSON = "application/json"
INPUT = "video"
#: Largest clip accepted, in pixels (T x H x W): about 200 MB of uint8 RGB.
MAX_PIXELS = 1 << 26


def model_fn(model_dir: str) -> StatsConfig:
    """No weights to load: the statistics' settings."""
    return StatsConfig()


def input_fn(body: bytes, content_type: str) -> list[s3refs.RequestRecord]:
    """Parse the request records (one JSON object, or JSON lines)."""
    return s3refs.parse_records(body, content_type)


def check_clip(value: Any, index: int = 0) -> np.ndarray:
    """The clip as T x H x W x 3 uint8, or InvalidInput saying what is wrong."""
    where = f"input {INPUT!r}"
    expected = "T x H x W x 3 uint8 with T, H and W >= 1"
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"{where} is not an array; expected {expected}", record=index)
    shape = tuple(value.shape)
    if value.ndim != 4 or shape[3] != 3 or min(shape[:3]) < 1:
        raise InvalidInput(f"{where} has shape {shape}; expected {expected}", record=index)
    if shape[0] * shape[1] * shape[2] > MAX_PIXELS:
        raise InvalidInput(f"{where} has shape {shape}; at most {MAX_PIXELS} pixels per clip "
                           "(split it into shorter clips)", record=index)
    if value.dtype != np.uint8:
        raise InvalidInput(f"{where} has dtype {value.dtype}; expected {expected}", record=index)
    return value


def read_clip(item: dict[str, bytes], index: int = 0) -> np.ndarray | SmserveError:
    """The record's clip, or the error that says what is wrong with it (a 4xx)."""
    try:
        return check_clip(codecs.decode(item[INPUT], NPY), index)
    except BadRequest as err:
        return err


def compute(config: StatsConfig, batch: Sequence[dict[str, bytes]]) -> list[bytes | SmserveError]:
    """One JSON document per record; a record whose clip is wrong gets its error instead."""
    clips = [read_clip(item, i) for i, item in enumerate(batch)]
    return [c if isinstance(c, SmserveError) else codecs.encode(clip_stats(c, config), JSON)
            for c in clips]


def predict_fn(records: list[s3refs.RequestRecord],
               model: StatsConfig) -> list[s3refs.RecordResult]:
    """Fetch the clips, compute their statistics, write them; skip finished records."""
    return s3refs.runtime().process(records, lambda batch: compute(model, batch), JSON)


def output_fn(results: list[s3refs.RecordResult], accept: str) -> tuple[bytes, str]:
    """What happened to each record, as JSON (lines)."""
    return s3refs.response(results)
