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

What is fixed, and what still varies between machines:

- BLAS runs on one thread (``OPENBLAS_NUM_THREADS`` and friends are set to 1
  before numpy loads, when this file runs as a script).
- frame_features' forward pass runs here in float64 (its committed float32
  weights, widened) and the per-clip means are rounded to float32 at the end,
  so the BLAS kernel a CPU picks (AVX2, AVX-512...) changes the float64 sums in
  their last bits, which rounding to float32 almost always removes.
- Training does no BLAS at all: every matrix product is element-wise products
  summed by numpy's pairwise summation along a contiguous axis (``_matmul``), a
  fixed order; the softmax uses ``_exp``, built from +, *, / and ``ldexp``
  (exactly rounded everywhere), not ``numpy.exp``, whose SIMD versions differ
  by CPU in the last bit.
- What still varies: a per-clip mean whose float64 value lands within a
  float64 rounding error of a float32 rounding boundary (rare), and other
  numpy / chainer / OpenBLAS versions. Training amplifies any such difference
  in the input: standardising features that are nearly constant lets a
  one-bit change move ``fc1/W`` by several units (measured: up to about 11,
  one ulp of noise on half the inputs) while the network's answers barely
  move (top class the same on 49 of 50 held-out clips, probabilities within
  0.04). So the weights' bytes are reproducible on one machine, and
  ``tests/unit/test_models.py`` checks what a user relies on elsewhere: the
  regenerated network gives the committed one's top class on held-out clips
  and follows the labelling rule as well as it does, within a stated margin.

Checked on one AMD EPYC (AVX-512): the script before these changes wrote three
different files under ``OPENBLAS_CORETYPE`` = (default), ``Haswell``,
``Nehalem``; this one writes the same bytes under each of those, under
``Sandybridge``, and with numpy's AVX-512 loops turned off
(``NPY_DISABLE_CPU_FEATURES``).
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

if __name__ == "__main__":
    # One BLAS thread, set before numpy loads its BLAS (see the module docstring).
    for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"

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
    for param in net.params():  # float64 forward pass, rounded to float32 at the end
        param.array = param.array.astype(np.float64)
    means: list[np.ndarray] = []
    labels: list[int] = []
    indices = list(indices)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        for start in range(0, len(indices), _CHUNK):
            clips = [make_clip(i) for i in indices[start:start + _CHUNK]]
            labels.extend(scene_label(c) for c in clips)
            frames = np.concatenate(clips)
            feats = net(ff.to_input(frames).astype(np.float64)).array
            offset = 0
            for clip in clips:
                means.append(feats[offset:offset + len(clip)].mean(axis=0))
                offset += len(clip)
    return np.stack(means).astype(np.float32), np.asarray(labels, dtype=np.int64)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (float64) in a fixed summation order, without BLAS.

    The products ``a[i, k] * b[k, j]`` are laid out contiguously along ``k``
    and summed by numpy's pairwise summation, whose order depends only on the
    length, never on the CPU or the thread count.
    """
    left = np.ascontiguousarray(a, dtype=np.float64)[:, None, :]
    right = np.ascontiguousarray(b.T, dtype=np.float64)[None, :, :]
    return np.multiply(left, right).sum(axis=2)


#: Taylor coefficients 1/k! for ``_exp`` (|r| <= ln 2 / 2: the 14th term is below 1e-17).
_EXP_TERMS = tuple(1.0 / math.factorial(k) for k in range(14))
#: ln 2 in two parts: the first has trailing zero bits, so ``k * _LN2_HIGH`` is exact.
_LN2_HIGH = 6.93147180369123816490e-01
_LN2_LOW = 1.90821492927058770002e-10


def _exp(x: np.ndarray) -> np.ndarray:
    """``exp(x)`` from exactly rounded operations only: the same bits on every CPU.

    ``x = k ln 2 + r`` with integer ``k``; ``exp(r)`` by Horner's rule on its
    Taylor series; ``ldexp`` scales by ``2**k``. Within 2 ulp of ``math.exp``.
    """
    x = np.maximum(np.asarray(x, dtype=np.float64), -745.0)
    k = np.rint(x / math.log(2.0))
    r = (x - k * _LN2_HIGH) - k * _LN2_LOW
    result = np.full_like(r, _EXP_TERMS[-1])
    for coefficient in reversed(_EXP_TERMS[:-1]):
        result = result * r + coefficient
    return np.ldexp(result, k.astype(np.int64))


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
        pre = _matmul(z, params["fc1/W"].T) + params["fc1/b"]
        act = np.maximum(pre, 0.0)
        logits = _matmul(act, params["fc2/W"].T) + params["fc2/b"]
        logits -= logits.max(axis=1, keepdims=True)
        prob = _exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        d_logits = (prob - onehot) / n
        d_pre = _matmul(d_logits, params["fc2/W"]) * (pre > 0.0)
        grads = {
            "fc1/W": _matmul(d_pre.T, z) + WEIGHT_DECAY * params["fc1/W"],
            "fc1/b": d_pre.sum(axis=0),
            "fc2/W": _matmul(d_logits.T, act) + WEIGHT_DECAY * params["fc2/W"],
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
    params["fc1/b"] = params["fc1/b"] - _matmul(w1, mu[:, None])[:, 0]
    params["fc1/W"] = w1
    return {key: value.astype(np.float32) for key, value in params.items()}


def predict(arrays: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Class probabilities (N x len(CLASSES)) of the trained weights, in numpy."""
    x = features.astype(np.float64)
    act = np.maximum(_matmul(x, arrays["fc1/W"].T) + arrays["fc1/b"], 0.0)
    logits = _matmul(act, arrays["fc2/W"].T) + arrays["fc2/b"]
    logits -= logits.max(axis=1, keepdims=True)
    prob = _exp(logits)
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
