"""scene_classifier handlers: frame features in, scene class probabilities out.

Each request record names a clip's features (``inputs.features``, the T x 64
float32 ``.npy`` frame_features wrote) and where the answer goes. The answer
is JSON::

    {"classes": [...], "probabilities": [...], "top_class": "sports",
     "top_probability": 0.61, "frames": 8}
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from model import CLASSES, FEATURE_DIM, SceneClassifier

from serving import codecs, s3refs
from serving.errors import BadRequest, InvalidInput, SmserveError

NPY = "application/x-npy"
JSON = "application/json"
INPUT = "features"


def model_fn(model_dir: str) -> SceneClassifier:
    """Load ``weights.npz`` from ``model_dir`` (runs on CPU)."""
    import chainer

    net = SceneClassifier()
    chainer.serializers.load_npz(os.path.join(model_dir, "weights.npz"), net)
    return net


def input_fn(body: bytes, content_type: str) -> list[s3refs.RequestRecord]:
    """Parse the request records (one JSON object, or JSON lines)."""
    return s3refs.parse_records(body, content_type)


def check_features(value: Any, index: int = 0) -> np.ndarray:
    """The features as T x 64 float32, or InvalidInput saying what is wrong."""
    where = f"input {INPUT!r}"
    expected = f"T x {FEATURE_DIM} float32 with T >= 1 (frame_features' output)"
    if not isinstance(value, np.ndarray):
        raise InvalidInput(f"{where} is not an array; expected {expected}", record=index)
    if value.ndim != 2 or value.shape[0] < 1 or value.shape[1] != FEATURE_DIM:
        raise InvalidInput(f"{where} has shape {tuple(value.shape)}; expected {expected}",
                           record=index)
    if value.dtype.kind not in "fiu":
        raise InvalidInput(f"{where} has dtype {value.dtype}; expected {expected}", record=index)
    out = value.astype(np.float32)
    if not np.isfinite(out).all():
        raise InvalidInput(f"{where} holds NaN or infinite values; expected finite features",
                           record=index)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed stably in float64."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def read_features(item: dict[str, bytes], index: int = 0) -> np.ndarray | SmserveError:
    """The record's features, or the error that says what is wrong with them (a 4xx)."""
    try:
        return check_features(codecs.decode(item[INPUT], NPY), index)
    except BadRequest as err:
        return err


def compute(net: SceneClassifier, batch: Sequence[dict[str, bytes]]
            ) -> list[bytes | SmserveError]:
    """One JSON answer per record; all good records go through the network together.

    A record whose features are wrong gets its error in place of bytes.
    """
    import chainer

    read = [read_features(item, i) for i, item in enumerate(batch)]
    clips = [c for c in read if not isinstance(c, SmserveError)]
    if not clips:
        return list(read)
    means = np.stack([c.mean(axis=0) for c in clips]).astype(np.float32)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        probs = softmax(net(means).array)
    out: list[bytes] = []
    for clip, p in zip(clips, probs, strict=True):
        top = int(np.argmax(p))
        out.append(codecs.encode({
            "classes": list(CLASSES),
            "probabilities": [float(v) for v in p],
            "top_class": CLASSES[top],
            "top_probability": float(p[top]),
            "frames": len(clip),
        }, JSON))
    answers = iter(out)
    return [c if isinstance(c, SmserveError) else next(answers) for c in read]


def predict_fn(records: list[s3refs.RequestRecord],
               model: SceneClassifier) -> list[s3refs.RecordResult]:
    """Fetch the features, classify, write the answers; skip finished records."""
    return s3refs.runtime().process(records, lambda batch: compute(model, batch), JSON)


def output_fn(results: list[s3refs.RecordResult], accept: str) -> tuple[bytes, str]:
    """What happened to each record, as JSON (lines)."""
    return s3refs.response(results)
