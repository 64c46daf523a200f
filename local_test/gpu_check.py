"""GPU check: ``frame_features`` on the GPU and on the CPU, same clips, same answers.

    python local_test/gpu_check.py [--clips N] [--frames T] [--size S] [--repeat R]

Loads ``models/frame_features`` through its real handler module
(:func:`serving.handler.load_handlers`: ``model_fn`` and the module's own
``features``), runs the same synthetic clips (:func:`local_test.clips.make_clip`)
through the network once on GPU 0 and once on the CPU, checks that the
features agree (largest absolute difference <= ``--tolerance``, 1e-4 by
default) and prints the throughput of each in frames per second.

Install, on a machine with an NVIDIA GPU and a CUDA 12 driver (>= 525):

    make .venv/.installed                      # or: the Makefile's install steps
    .venv/bin/pip install 'cupy-cuda12x==13.6.0'   # 13.x: 14.x wants numpy 2
    SETUPTOOLS_USE_DISTUTILS=stdlib .venv/bin/python local_test/gpu_check.py

or, with the GPU image built (``smserve image build --flavor gpu``), from the
repository root::

    docker run --rm --gpus all -v "$PWD:/src:ro" -w /src --entrypoint python \\
        smserve-gpu:0.1.0 local_test/gpu_check.py

Exit status and last line:

- ``0`` and ``gpu_check: PASSED ...``: the GPU ran and agrees with the CPU;
- ``0`` and ``gpu_check: SKIPPED ...``: no GPU (no cupy, no device, no
  driver); with ``--require-gpu`` this is status ``3`` instead;
- ``1`` and ``gpu_check: FAILED ...``: GPU and CPU features differ by more
  than the tolerance;
- ``2``: bad arguments, or the model folder cannot be loaded.

``--json PATH`` also writes the figures as JSON.

``--allow-numpy2`` is for GPU machines whose cupy needs numpy 2 (cupy 14, a
CUDA 13 driver stack) where cupy-cuda12x 13.x cannot be installed: it stubs
the two numpy 1 names Chainer 7.8.1 touches at import (``numpy.distutils``,
``numpy.sctypes``) so Chainer runs there. The check is then GPU against CPU
on that machine's stack, not on the image's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "frame_features"
TOLERANCE = 1e-4
EXIT_PASSED, EXIT_MISMATCH, EXIT_USAGE, EXIT_SKIPPED_REQUIRED = 0, 1, 2, 3


@dataclass
class Figures:
    """What one check measured."""

    status: str
    clips: int
    frames: int
    size: int
    repeat: int
    max_abs_diff: float | None = None
    tolerance: float = TOLERANCE
    cpu_frames_per_s: float | None = None
    gpu_frames_per_s: float | None = None
    speedup: float | None = None
    gpu_name: str | None = None
    cupy_version: str | None = None
    chainer_version: str | None = None
    numpy_version: str | None = None
    reason: str | None = None


def allow_numpy2() -> None:
    """Let Chainer 7.8.1 import under numpy 2 / Python 3.12 (see ``--allow-numpy2``)."""
    import importlib.util
    import types

    import numpy as np

    if importlib.util.find_spec("numpy.distutils") is None:
        # gone in numpy 2 and on Python 3.12; chainer only asks it about macOS's BLAS
        info = types.ModuleType("numpy.distutils.system_info")
        setattr(info, "get_info", lambda name: {})  # noqa: B010
        package = types.ModuleType("numpy.distutils")
        setattr(package, "system_info", info)  # noqa: B010
        sys.modules["numpy.distutils"] = package
        sys.modules["numpy.distutils.system_info"] = info
    if not hasattr(np, "sctypes"):  # removed in numpy 2; chainer reads it at import
        setattr(np, "sctypes", {  # noqa: B010 - not in numpy 2's stubs
            "int": [np.int8, np.int16, np.int32, np.int64],
            "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
            "float": [np.float16, np.float32, np.float64],
            "complex": [np.complex64, np.complex128],
            "others": [bool, object, bytes, str, np.void],
        })


def gpu_unavailable_reason() -> str | None:
    """None when chainer sees a CUDA device through cupy; else why not, in a few words."""
    try:
        from chainer.backends import cuda
    except Exception as err:  # chainer itself is broken: say so, do not crash
        return f"chainer does not import ({type(err).__name__}: {err})"
    if not cuda.available:
        try:
            import cupy  # noqa: F401
        except Exception as err:
            return f"cupy is not installed or does not import ({type(err).__name__}: {err})"
        return "chainer cannot use cupy (chainer.backends.cuda.available is False)"
    try:
        count = int(cuda.cupy.cuda.runtime.getDeviceCount())
    except Exception as err:
        return f"no CUDA device or driver ({type(err).__name__}: {err})"
    return None if count > 0 else "cupy sees no CUDA device"


def _gpu_name() -> str | None:
    try:
        from chainer.backends import cuda

        props = cuda.cupy.cuda.runtime.getDeviceProperties(0)
        name = props.get("name", b"")
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None


def _timed(run: Callable[[], Any], repeat: int) -> tuple[Any, float]:
    """``run()``'s last result and the best of ``repeat`` wall times, in seconds."""
    best = float("inf")
    result = None
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return result, best


def check(model_dir: Path, clips: int, frames: int, size: int, repeat: int,
          tolerance: float = TOLERANCE, echo: Callable[[str], None] = print) -> Figures:
    """Run the comparison; see the module docstring.

    Args:
        model_dir: the frame_features model folder (``serving.py``, ``weights.npz``).
        clips: how many synthetic clips.
        frames: frames per clip.
        size: frame height and width, in pixels.
        repeat: timed runs per device (the best one counts; one warm-up run first).
        tolerance: largest allowed absolute difference between GPU and CPU features.
        echo: where progress lines go.

    Returns:
        the figures; ``status`` is ``passed``, ``failed`` or ``skipped``.
    """
    import numpy as np

    from local_test.clips import make_clip
    from serving.handler import load_handlers

    figures = Figures("skipped", clips, frames, size, repeat, tolerance=tolerance,
                      numpy_version=np.__version__)
    handlers = load_handlers(model_dir)
    module = handlers.module
    import chainer

    figures.chainer_version = chainer.__version__
    reason = gpu_unavailable_reason()
    if reason is not None:
        figures.reason = reason
        return figures

    import cupy

    figures.cupy_version = cupy.__version__
    figures.gpu_name = _gpu_name()
    batch = np.concatenate([make_clip(i, frames, size, size) for i in range(clips)])
    total = len(batch)
    echo(f"gpu_check: {clips} clips x {frames} frames of {size}x{size} = {total} frames; "
         f"GPU {figures.gpu_name} (cupy {cupy.__version__}, chainer {chainer.__version__}, "
         f"numpy {np.__version__})")

    gpu = handlers.load_model(model_dir)
    if not getattr(gpu, "gpu", False):
        figures.reason = "model_fn did not move the network to the GPU"
        return figures
    cpu_net = module.FrameFeatures()
    chainer.serializers.load_npz(os.path.join(model_dir, "weights.npz"), cpu_net)
    cpu = module.Loaded(cpu_net, False)

    module.features(gpu, batch[: min(total, 8)])  # warm-up: kernel compilation, allocator
    gpu_out, gpu_s = _timed(lambda: module.features(gpu, batch), repeat)
    module.features(cpu, batch[: min(total, 8)])
    cpu_out, cpu_s = _timed(lambda: module.features(cpu, batch), repeat)

    diff = float(np.max(np.abs(np.asarray(gpu_out) - np.asarray(cpu_out)))) if total else 0.0
    figures.max_abs_diff = diff
    figures.gpu_frames_per_s = total / gpu_s if gpu_s > 0 else None
    figures.cpu_frames_per_s = total / cpu_s if cpu_s > 0 else None
    if figures.gpu_frames_per_s and figures.cpu_frames_per_s:
        figures.speedup = figures.gpu_frames_per_s / figures.cpu_frames_per_s
    figures.status = "passed" if diff <= tolerance else "failed"
    return figures


def _size(text: str) -> int:
    value = int(text)
    if value < 8:
        raise argparse.ArgumentTypeError(f"{value} is too small; frames are at least 8x8")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=_count, default=8, help="synthetic clips (8)")
    parser.add_argument("--frames", type=_count, default=32, help="frames per clip (32)")
    parser.add_argument("--size", type=_size, default=224, help="frame side in pixels (224)")
    parser.add_argument("--repeat", type=_count, default=3, help="timed runs per device (3)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest allowed |GPU - CPU| ({TOLERANCE:g})")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="the frame_features model folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--require-gpu", action="store_true",
                        help=f"exit {EXIT_SKIPPED_REQUIRED} instead of 0 when there is no GPU")
    parser.add_argument("--allow-numpy2", action="store_true",
                        help="let Chainer 7.8.1 import under numpy 2 (cupy 14 machines)")
    args = parser.parse_args(argv)
    if args.allow_numpy2:
        allow_numpy2()

    if str(ROOT) not in sys.path:  # `python local_test/gpu_check.py` from anywhere
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")  # chainer's numpy.distutils
    from serving.errors import SmserveError

    try:
        figures = check(args.model, args.clips, args.frames, args.size, args.repeat,
                        args.tolerance)
    except SmserveError as err:
        print(f"gpu_check: error: {err.message}", file=sys.stderr)
        return EXIT_USAGE
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(figures), indent=2) + "\n")
    if figures.status == "skipped":
        print(f"gpu_check: SKIPPED: no GPU to check: {figures.reason}")
        return EXIT_SKIPPED_REQUIRED if args.require_gpu else EXIT_PASSED
    print(f"gpu_check: CPU {figures.cpu_frames_per_s:,.0f} frames/s, "
          f"GPU {figures.gpu_frames_per_s:,.0f} frames/s "
          f"(GPU/CPU {figures.speedup:.1f}x, best of {args.repeat})")
    verdict = "PASSED" if figures.status == "passed" else "FAILED"
    print(f"gpu_check: {verdict}: max |GPU - CPU| = {figures.max_abs_diff:.3g} "
          f"(tolerance {args.tolerance:g})")
    return EXIT_PASSED if figures.status == "passed" else EXIT_MISMATCH


if __name__ == "__main__":
    sys.exit(main())
