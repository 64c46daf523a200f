"""Synthetic sample clips: small, deterministic videos for demos and tests.

Each clip is a ``frames x height x width x 3`` uint8 array: a colour
gradient background that drifts over time, with a coloured square and a
coloured disc moving across it. Colours, speeds and sizes come from the
clip's index, so clip 3 is always the same clip, and different from clip 4.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

CONTENT_TYPE = "application/x-npy"


def make_clip(index: int, frames: int = 8, height: int = 32, width: int = 32) -> np.ndarray:
    """The clip numbered ``index``.

    Args:
        index: which clip; any non-negative integer.
        frames: number of frames (T).
        height: frame height in pixels (H).
        width: frame width in pixels (W).

    Returns:
        A ``T x H x W x 3`` uint8 array; the same for the same arguments.

    Raises:
        ValueError: a negative index or a non-positive size.
    """
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    if frames < 1 or height < 1 or width < 1:
        raise ValueError(f"clip size must be positive, got {frames}x{height}x{width}")
    rng = np.random.default_rng([20260101, index])
    base = rng.uniform(0.0, 1.0, size=3)            # background colour at the top-left
    tilt = rng.uniform(-0.6, 0.6, size=(2, 3))      # colour change along y and x
    drift = rng.uniform(-0.05, 0.05, size=3)        # colour change per frame
    square_colour = rng.uniform(0.0, 1.0, size=3)
    disc_colour = rng.uniform(0.0, 1.0, size=3)
    side = max(1, int(min(height, width) * rng.uniform(0.2, 0.4)))
    radius = max(1.0, min(height, width) * rng.uniform(0.1, 0.25))
    start = rng.uniform(0.0, 1.0, size=(2, 2))      # (square, disc) x (y, x), as fractions
    velocity = rng.uniform(-0.15, 0.15, size=(2, 2))

    y = np.linspace(0.0, 1.0, height)[:, None, None]
    x = np.linspace(0.0, 1.0, width)[None, :, None]
    yy, xx = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        image = base + tilt[0] * y + tilt[1] * x + drift * t
        pos = (start + velocity * t) % 1.0
        sy, sx = int(pos[0, 0] * height), int(pos[0, 1] * width)
        image[sy:sy + side, sx:sx + side] = square_colour
        cy, cx = pos[1, 0] * height, pos[1, 1] * width
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2] = disc_colour
        out[t] = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return out


def clip_bytes(index: int, frames: int = 8, height: int = 32, width: int = 32) -> bytes:
    """:func:`make_clip` as ``.npy`` bytes (no pickling)."""
    buffer = io.BytesIO()
    np.save(buffer, make_clip(index, frames, height, width), allow_pickle=False)
    return buffer.getvalue()


def clip_key(prefix: str, index: int) -> str:
    """The key clip ``index`` is uploaded to: ``f"{prefix}clip-{index:03d}.npy"``."""
    return f"{prefix}clip-{index:03d}.npy"


def upload_clips(s3_client: Any, bucket: str, prefix: str, count: int, *, frames: int = 8,
                 height: int = 32, width: int = 32) -> list[str]:
    """Upload clips ``0 .. count-1`` to ``bucket`` under ``prefix``.

    Args:
        s3_client: a boto3 S3 client.
        bucket: an existing bucket.
        prefix: key prefix, like ``"samples/clips/"`` (used as is).
        count: how many clips.
        frames: frames per clip.
        height: frame height.
        width: frame width.

    Returns:
        The keys written, in order.
    """
    keys: list[str] = []
    for i in range(count):
        key = clip_key(prefix, i)
        s3_client.put_object(Bucket=bucket, Key=key, Body=clip_bytes(i, frames, height, width),
                             ContentType=CONTENT_TYPE)
        keys.append(key)
    return keys
