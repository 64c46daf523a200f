"""The frame_features network: a small CNN that turns each video frame into 64 numbers.

Three 3x3 convolutions with stride 2 and ReLU halve the frame three times;
global average pooling over what is left gives one 64-d vector per frame.
"""

from __future__ import annotations

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

#: Length of the feature vector per frame.
FEATURE_DIM = 64
#: Channels after each convolution.
CHANNELS = (16, 32, FEATURE_DIM)


class FrameFeatures(chainer.Chain):
    """Frames (N x 3 x H x W float32 in [0, 1]) -> features (N x 64 float32)."""

    def __init__(self) -> None:
        super().__init__()
        with self.init_scope():
            self.conv1 = L.Convolution2D(3, CHANNELS[0], ksize=3, stride=2, pad=1)
            self.conv2 = L.Convolution2D(CHANNELS[0], CHANNELS[1], ksize=3, stride=2, pad=1)
            self.conv3 = L.Convolution2D(CHANNELS[1], CHANNELS[2], ksize=3, stride=2, pad=1)

    def forward(self, x: chainer.Variable | np.ndarray) -> chainer.Variable:
        """Features for a batch of frames."""
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return F.mean(h, axis=(2, 3))


def to_input(frames: np.ndarray) -> np.ndarray:
    """uint8 frames (N x H x W x 3) -> float32 N x 3 x H x W scaled to [0, 1]."""
    x = frames.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
