"""local_test/gpu_check.py: skips cleanly without a GPU; on a GPU, GPU and CPU features agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_test import gpu_check


def test_without_a_gpu_it_says_skipped_and_exits_0(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if gpu_check.gpu_unavailable_reason() is None:
        pytest.skip("this machine has a GPU; the skip path cannot be seen here")
    out = tmp_path / "figures.json"
    assert gpu_check.main(["--clips", "1", "--frames", "2", "--size", "16",
                           "--json", str(out)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("gpu_check: SKIPPED: no GPU to check: ")
    assert json.loads(out.read_text())["status"] == "skipped"
    assert gpu_check.main(["--clips", "1", "--require-gpu"]) == gpu_check.EXIT_SKIPPED_REQUIRED


@pytest.mark.gpu
@pytest.mark.timeout(900)
def test_gpu_and_cpu_features_agree(capsys: pytest.CaptureFixture[str]) -> None:
    reason = gpu_check.gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs an NVIDIA GPU with cupy-cuda12x: {reason}")
    figures = gpu_check.check(gpu_check.DEFAULT_MODEL, clips=2, frames=8, size=64, repeat=1)
    assert figures.status == "passed", figures
    assert figures.max_abs_diff is not None and figures.max_abs_diff <= gpu_check.TOLERANCE
    assert figures.gpu_frames_per_s and figures.cpu_frames_per_s


def test_allow_numpy2_leaves_numpy_1_alone() -> None:
    import sys

    import numpy as np

    before = (getattr(np, "sctypes", None), sys.modules.get("numpy.distutils"))
    gpu_check.allow_numpy2()
    assert (getattr(np, "sctypes", None), sys.modules.get("numpy.distutils")) == before
