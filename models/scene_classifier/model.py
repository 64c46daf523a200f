"""The scene_classifier network: an MLP from a clip's mean frame feature to scene classes."""

from __future__ import annotations

import chainer
import chainer.functions as F
import chainer.links as L
import numpy as np

#: What the classifier tells apart, in output order.
CLASSES = ("indoor", "outdoor", "sports", "news", "nature")
#: Length of the feature vectors frame_features writes.
FEATURE_DIM = 64
HIDDEN = 64


class SceneClassifier(chainer.Chain):
    """Mean features (N x 64 float32) -> class scores (N x len(CLASSES), logits)."""

    def __init__(self) -> None:
        super().__init__()
        with self.init_scope():
            self.fc1 = L.Linear(FEATURE_DIM, HIDDEN)
            self.fc2 = L.Linear(HIDDEN, len(CLASSES))

    def forward(self, x: chainer.Variable | np.ndarray) -> chainer.Variable:
        """Logits for a batch of mean features."""
        return self.fc2(F.relu(self.fc1(x)))
