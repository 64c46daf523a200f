"""Full disks named as such: the helper, extraction, staging, and a container log that fills up."""

from __future__ import annotations

import errno
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serving import diskspace
from serving.errors import NoSpaceError
from serving.package import build_archive, extract_archive, stage
from serving.runners._logs import LogPump
from tests.diskfull import fill, small_disk

ROOT = Path(__file__).resolve().parents[2]
CLIP_STATS = ROOT / "models" / "clip_stats"


def test_human_sizes() -> None:
    assert [diskspace.human(n) for n in (None, 0, 1023, 1536, 5 * 2**20)] == [
        "unknown", "0 B", "1023 B", "1.5 KiB", "5.0 MiB"]


def test_is_full_follows_causes() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as err:
            raise RuntimeError("wrapped") from err
    except RuntimeError as outer:
        assert diskspace.is_full(outer)
    assert not diskspace.is_full(OSError(errno.EACCES, "denied"))
    assert not diskspace.is_full(ValueError("no"))


def test_guard_names_the_path_what_is_free_and_what_was_needed(tmp_path: Path) -> None:
    with pytest.raises(NoSpaceError) as caught, diskspace.guard(tmp_path, 5 * 2**20, "a model"):
        raise OSError(errno.ENOSPC, "No space left on device")
    message = caught.value.message
    assert message.startswith(f"no space left on {tmp_path}, ")
    assert "free/5.0 MiB needed while writing a model" in message
    assert caught.value.exit_code == NoSpaceError.exit_code and caught.value.status == 507
    with pytest.raises(PermissionError), diskspace.guard(tmp_path, 1):
        raise PermissionError("not a full disk: left alone")


def test_extracting_a_model_onto_a_full_disk_says_so(tmp_path: Path) -> None:
    archive = build_archive(CLIP_STATS, tmp_path / "model.tar.gz")
    with small_disk("64k") as disk:
        fill(disk, leave=4096)
        with pytest.raises(NoSpaceError) as caught:
            extract_archive(archive, disk / "model")
    message = caught.value.message
    assert message.startswith(f"no space left on {disk / 'model'}, ")
    assert "needed while writing the extracted model" in message


def test_staging_a_model_onto_a_full_disk_says_so() -> None:
    with small_disk("64k") as disk:
        fill(disk, leave=2048)
        with pytest.raises(NoSpaceError, match=r"no space left on .*staged model"):
            stage(CLIP_STATS, disk / "model")


def test_a_log_on_a_full_disk_is_still_drained_and_its_error_kept() -> None:
    # 4,000 lines of 100 bytes: far more than the disk and than a pipe's buffer,
    # so a pump that stopped reading would leave the writer blocked for good.
    script = "import sys\nfor i in range(4000):\n    print(f'{i:05d} ' + 'x' * 94)\n"
    with small_disk("64k") as disk:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        lines: list[str] = []
        pump = LogPump(proc.stdout, disk / "container.log", lines.append)
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the writer is blocked: the pipe is not drained"
            time.sleep(0.05)
        pump.stop()
        assert proc.returncode == 0
        assert pump.write_error is not None and diskspace.is_full(pump.write_error)
        assert pump.write_needed > 0
        assert len(lines) == 4000 and lines[-1].startswith("03999 ")
        assert pump.tail(1).startswith("03999 ")


def test_serve_on_a_full_disk_names_the_run_directory_it_could_not_write() -> None:
    from serving.server.serve import start
    from serving.settings import Settings

    with small_disk("64k") as disk:
        fill(disk)
        with pytest.raises(NoSpaceError) as caught:
            start(Settings.from_environ({}), CLIP_STATS, 1, run_dir=disk / "run")
    # the first write that does not fit: the model staged into the run directory
    assert caught.value.message.startswith(f"no space left on {disk / 'run' / 'model'}, 0 B "
                                           "free/"), caught.value.message
    assert "needed while writing the staged model" in caught.value.message
