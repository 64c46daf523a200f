"""clip_stats: per-clip brightness and motion statistics, in plain numpy.

No network and no weights: each frame's brightness is its mean luma
(ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B, on the 0..255 scale), and the
motion between two frames is the mean absolute difference of their luma.
Frames are read a few at a time, so memory stays bounded by ``chunk_pixels``
whatever the clip's length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Luma weights for R, G, B (ITU-R BT.601).
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class StatsConfig:
    """What ``model_fn`` returns: the settings of the statistics.

    Attributes:
        luma: weights of R, G and B in a frame's brightness.
        chunk_pixels: pixels converted to luma at once (bounds memory).
        still_threshold: a transition whose motion is below this (0..255)
            counts as still.
    """

    luma: tuple[float, float, float] = LUMA
    chunk_pixels: int = 1 << 22
    still_threshold: float = 2.0


def luma(frames: np.ndarray, config: StatsConfig) -> np.ndarray:
    """Luma (N x H x W float32, 0..255) of uint8 RGB frames (N x H x W x 3)."""
    weights = np.asarray(config.luma, dtype=np.float32)
    return frames.astype(np.float32) @ weights


def clip_stats(clip: np.ndarray, config: StatsConfig) -> dict[str, Any]:
    """Statistics of one clip (T x H x W x 3 uint8) as JSON-ready values."""
    frames, height, width = clip.shape[:3]
    step = max(1, config.chunk_pixels // (height * width))
    brightness = np.empty(frames, dtype=np.float64)
    contrast = np.empty(frames, dtype=np.float64)
    motion = np.empty(max(0, frames - 1), dtype=np.float64)
    previous: np.ndarray | None = None
    for start in range(0, frames, step):
        y = luma(clip[start:start + step], config)
        brightness[start:start + len(y)] = y.mean(axis=(1, 2))
        contrast[start:start + len(y)] = y.std(axis=(1, 2))
        joined = y if previous is None else np.concatenate([previous[None], y])
        diffs = np.abs(np.diff(joined, axis=0)).mean(axis=(1, 2))
        first = start - 1 if previous is not None else 0
        motion[first:first + len(diffs)] = diffs
        previous = y[-1]
    colour = clip.reshape(-1, 3).mean(axis=0) if clip.size else np.zeros(3)
    return {
        "frames": int(frames),
        "height": int(height),
        "width": int(width),
        "brightness": _series(brightness),
        "contrast": _series(contrast),
        "motion": {**_series(motion),
                   "still_fraction": _round(float((motion < config.still_threshold).mean()))
                   if len(motion) else 1.0},
        "mean_rgb": [_round(float(v)) for v in colour],
    }


def _round(value: float) -> float:
    return round(value, 4)


def _series(values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {"per_frame": [], "mean": 0.0, "std": 0.0, "min": 0.0, "max": 0.0}
    return {
        "per_frame": [_round(float(v)) for v in values],
        "mean": _round(float(values.mean())),
        "std": _round(float(values.std())),
        "min": _round(float(values.min())),
        "max": _round(float(values.max())),
    }
