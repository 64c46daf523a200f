"""Write frame_features' weights.npz: fixed seed, no downloads, the same bytes every run.

    python models/frame_features/make_weights.py [--out PATH]

``numpy.savez`` and ``chainer.serializers.save_npz`` stamp the current time
into the zip, so the archive is written here with fixed zip entry dates; the
keys are the ones ``chainer.serializers.load_npz`` reads (``conv1/W``...).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SEED = 20260101
_EPOCH = (1980, 1, 1, 0, 0, 0)


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    """The network's parameters, keyed as chainer's npz serializer expects."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import chainer
    from model import FrameFeatures

    net = FrameFeatures()
    rng = np.random.default_rng(seed)
    for name, param in sorted(net.namedparams()):
        shape = param.shape
        if name.endswith("/W"):  # He initialisation for ReLU layers
            std = math.sqrt(2.0 / math.prod(shape[1:]))
            value = rng.standard_normal(shape) * std
        else:
            value = rng.standard_normal(shape) * 0.01
        param.copydata(chainer.Parameter(value.astype(np.float32)))
    serializer = chainer.serializers.DictionarySerializer()
    serializer.save(net)
    return {key: np.asarray(value) for key, value in serializer.target.items()}


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


def main(argv: list[str] | None = None) -> int:
    """Command line: write the weights and print where, with their SHA-256."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "weights.npz",
                        help="where to write the .npz (default: weights.npz next to this file)")
    args = parser.parse_args(argv)
    path = write_npz(make_weights(), args.out)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
