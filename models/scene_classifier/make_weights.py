"""Train and write scene_classifier's weights.npz: fixed seed, no downloads, same bytes every run.

    python models/scene_classifier/make_weights.py [--out PATH]

The classifier is trained here, in a few seconds on a CPU, on synthetic clips
from ``local_test/clips.py`` (``make_clip(i)`` for ``i`` in ``TRAIN_CLIPS``,
1000..1399: none of the demo's clips 0..5 nor the held-out clips 2000..2049
the tests use). Each training clip gets its label from a simple rule on its
mean colour (all pixels of all frames, RGB in [0, 1]), applied in this order:

1. ``indoor``: dark, mean brightness ``(R + G + B) / 3 < DARK`` (0.38);
2. ``nature``: green dominates, ``G - max(R, B) > MARGIN`` (0.06);
3. ``outdoor``: blue dominates (sky), ``B - max(R, G) > MARGIN``;
4. ``sports``: red dominates (warm, vivid), ``R - max(G, B) > MARGIN``;
5. ``news``: anything else (no colour dominates: greyish, mixed studio tones).

On 1000..1399 that gives 90 / 80 / 74 / 58 / 98 clips (indoor, outdoor,
sports, news, nature). Motion is deliberately not part of the rule: the
classifier only sees the mean over time of the per-frame features, which
carries next to nothing about how fast things move.

The network's input is **frame_features' output**: each clip goes through the
real frame_features network with its committed ``weights.npz`` (loaded in
process on the CPU, as its ``serving.py`` does), and the T x 64 features are
averaged over time, as scene_classifier's ``serving.py`` does. So these
weights belong to those frame_features weights: regenerate frame_features'
weights (``models/frame_features/make_weights.py``) and these must be
regenerated after it.

Training is full-batch Adam on softmax cross-entropy with L2 weight decay, in
float64 numpy, from a fixed-seed He initialisation, for ``STEPS`` steps; the
inputs are standardised during training and the standardisation is folded
into ``fc1`` afterwards, so the model itself is unchanged. The script prints
how often the trained network agrees with the rule on the training clips and
on held-out clips 2000..2049, and what it says about clips 0..9.

``numpy.savez`` and ``chainer.serializers.save_npz`` stamp the current time
into the zip, so the archive is written here with fixed zip entry dates; the
keys are the ones ``chainer.serializers.load_npz`` reads (``fc1/W``...).
Byte-identical output assumes the same numpy / OpenBLAS build and CPU family:
training is deterministic, but float rounding in BLAS kernels can differ
between CPU architectures.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FRAME_FEATURES = HERE.parent / "frame_features"
SEED = 20260101
_EPOCH = (1980, 1, 1, 0, 0, 0)

#: Class names, in the network's output order (the same as ``model.CLASSES``).
CLASSES = ("indoor", "outdoor", "sports", "news", "nature")
#: Clips the classifier is trained on (not the demo's 0..5, not 2000..2049).
TRAIN_CLIPS = range(1000, 1400)
#: Clips the script reports agreement on; never trained on.
HELD_OUT_CLIPS = range(2000, 2050)
#: Clips whose predictions the script prints (the demo uses the first six).
SHOW_CLIPS = range(10)
#: Mean brightness below this is "indoor".
DARK = 0.38
#: How far one channel's mean must exceed the other two to dominate.
MARGIN = 0.06
STEPS = 400
LEARNING_RATE = 0.01
WEIGHT_DECAY = 1e-2
#: Clips per forward pass through frame_features.
_CHUNK = 50


def scene_label(clip: np.ndarray) -> int:
    """The rule's class index for a T x H x W x 3 uint8 clip (see the module docstring)."""
    red, green, blue = (clip.reshape(-1, 3).astype(np.float64) / 255.0).mean(axis=0)
    if (red + green + blue) / 3.0 < DARK:
        return CLASSES.index("indoor")
    if green - max(red, blue) > MARGIN:
        return CLASSES.index("nature")
    if blue - max(red, green) > MARGIN:
        return CLASSES.index("outdoor")
    if red - max(green, blue) > MARGIN:
        return CLASSES.index("sports")
    return CLASSES.index("news")


def _load_module(name: str, path: Path) -> ModuleType:
    """Import ``path`` under ``name`` without touching ``sys.path`` (both models have model.py)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _make_clip() -> Callable[..., np.ndarray]:
    """``local_test.clips.make_clip``, with the repository root importable."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from local_test.clips import make_clip

    return make_clip


def clip_data(indices: range) -> tuple[np.ndarray, np.ndarray]:
    """Mean frame_features features (N x 64 float32) and rule labels (N) for clips ``indices``."""
    import chainer

    make_clip = _make_clip()
    ff = _load_module("_scene_classifier_frame_features_model", FRAME_FEATURES / "model.py")
    net = ff.FrameFeatures()
    chainer.serializers.load_npz(str(FRAME_FEATURES / "weights.npz"), net)
    means: list[np.ndarray] = []
    labels: list[int] = []
    indices = list(indices)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for start in range(0, len(indices), _CHUNK):
            clips = [make_clip(i) for i in indices[start:start + _CHUNK]]
            labels.extend(scene_label(c) for c in clips)
            frames = np.concatenate(clips)
            feats = net(ff.to_input(frames)).array
            offset = 0
            for clip in clips:
                means.append(feats[offset:offset + len(clip)].mean(axis=0))
                offset += len(clip)
    return np.stack(means).astype(np.float32), np.asarray(labels, dtype=np.int64)


def train(features: np.ndarray, labels: np.ndarray, seed: int = SEED,
          hidden: int = 64) -> dict[str, np.ndarray]:
    """Fit the 64 -> hidden -> len(CLASSES) ReLU MLP; chainer's layout (W is out x in)."""
    x = features.astype(np.float64)
    mu = x.mean(axis=0)
    sd = x.std(axis=0) + 1e-6
    z = (x - mu) / sd
    n, dim = z.shape
    onehot = np.eye(len(CLASSES))[labels]
    rng = np.random.default_rng(seed)
    params = {
        "fc1/W": rng.standard_normal((hidden, dim)) * math.sqrt(2.0 / dim),
        "fc1/b": np.zeros(hidden),
        "fc2/W": rng.standard_normal((len(CLASSES), hidden)) * math.sqrt(1.0 / hidden),
        "fc2/b": np.zeros(len(CLASSES)),
    }
    first = {k: np.zeros_like(v) for k, v in params.items()}
    second = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(1, STEPS + 1):
        pre = z @ params["fc1/W"].T + params["fc1/b"]
        act = np.maximum(pre, 0.0)
        logits = act @ params["fc2/W"].T + params["fc2/b"]
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        d_logits = (prob - onehot) / n
        d_pre = (d_logits @ params["fc2/W"]) * (pre > 0.0)
        grads = {
            "fc1/W": d_pre.T @ z + WEIGHT_DECAY * params["fc1/W"],
            "fc1/b": d_pre.sum(axis=0),
            "fc2/W": d_logits.T @ act + WEIGHT_DECAY * params["fc2/W"],
            "fc2/b": d_logits.sum(axis=0),
        }
        for key, grad in grads.items():
            first[key] = beta1 * first[key] + (1.0 - beta1) * grad
            second[key] = beta2 * second[key] + (1.0 - beta2) * grad * grad
            m_hat = first[key] / (1.0 - beta1 ** step)
            v_hat = second[key] / (1.0 - beta2 ** step)
            params[key] -= LEARNING_RATE * m_hat / (np.sqrt(v_hat) + eps)
    # Fold the standardisation into fc1: W (x - mu) / sd + b == (W / sd) x + (b - (W / sd) mu).
    w1 = params["fc1/W"] / sd
    params["fc1/b"] = params["fc1/b"] - w1 @ mu
    params["fc1/W"] = w1
    return {key: value.astype(np.float32) for key, value in params.items()}


def predict(arrays: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Class probabilities (N x len(CLASSES)) of the trained weights, in numpy."""
    x = features.astype(np.float64)
    act = np.maximum(x @ arrays["fc1/W"].T.astype(np.float64) + arrays["fc1/b"], 0.0)
    logits = act @ arrays["fc2/W"].T.astype(np.float64) + arrays["fc2/b"]
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    return prob / prob.sum(axis=1, keepdims=True)


def check_against_model(arrays: dict[str, np.ndarray]) -> None:
    """Raise ValueError unless ``arrays`` has exactly the keys and shapes model.py's network has."""
    model = _load_module("_scene_classifier_model", HERE / "model.py")
    if tuple(model.CLASSES) != CLASSES:
        raise ValueError(f"model.CLASSES is {model.CLASSES}, this script trains {CLASSES}")
    expected = {name.lstrip("/"): param.shape
                for name, param in model.SceneClassifier().namedparams()}
    got = {key: value.shape for key, value in arrays.items()}
    if got != expected:
        raise ValueError(f"trained parameters {got} do not match model.py's {expected}")


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """The trained network's parameters, keyed as chainer's npz serializer expects."""
    features, labels = clip_data(TRAIN_CLIPS)
    arrays = train(features, labels, seed)
    check_against_model(arrays)
    return arrays


def write_npz(arrays: dict[str, np.ndarray], out: Path) -> Path:
    """Write ``arrays`` as an .npz with no timestamps, members sorted by name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(key + ".npy", date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = 0o644 << 16
                with zf.open(info, "w") as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]),
                                              allow_pickle=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def report(arrays: dict[str, np.ndarray], train_features: np.ndarray,
           train_labels: np.ndarray) -> list[str]:
    """Lines saying how well the weights follow the rule, and what clips 0..9 get."""
    counts = ", ".join(f"{c} {int((train_labels == i).sum())}" for i, c in enumerate(CLASSES))
    train_acc = float((predict(arrays, train_features).argmax(axis=1) == train_labels).mean())
    held_features, held_labels = clip_data(HELD_OUT_CLIPS)
    held_acc = float((predict(arrays, held_features).argmax(axis=1) == held_labels).mean())
    lines = [
        f"training clips {TRAIN_CLIPS.start}..{TRAIN_CLIPS.stop - 1}: {counts}",
        f"agreement with the rule: training {train_acc:.1%}, held-out clips "
        f"{HELD_OUT_CLIPS.start}..{HELD_OUT_CLIPS.stop - 1} {held_acc:.1%}",
    ]
    show_features, show_labels = clip_data(SHOW_CLIPS)
    for index, prob, label in zip(SHOW_CLIPS, predict(arrays, show_features), show_labels,
                                  strict=True):
        top = int(prob.argmax())
        lines.append(f"  clip {index}: {CLASSES[top]:<8} {prob[top]:.3f}  (rule: {CLASSES[label]})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Command line: train, write the weights and print where, with their SHA-256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "weights.npz",
                        help="where to write the .npz (default: weights.npz next to this file)")
    args = parser.parse_args(argv)
    features, labels = clip_data(TRAIN_CLIPS)
    arrays = train(features, labels)
    check_against_model(arrays)
    path = write_npz(arrays, args.out)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for line in report(arrays, features, labels):
        print(line)
    print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
