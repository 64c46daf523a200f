"""model.tar.gz: the SageMaker layout, byte-identical builds, and safe extraction."""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
from pathlib import Path

import pytest

from serving.errors import ConfigError, ModelSpecError
from serving.package import build_archive, extract_archive, plan, stage

ROOT = Path(__file__).resolve().parents[2]


def make_folder(root: Path) -> Path:
    folder = root / "demo"
    folder.mkdir()
    (folder / "serving.py").write_text("def model_fn(d): ...\ndef predict_fn(x, m): ...\n")
    (folder / "model.py").write_text("NET = 1\n")
    (folder / "helpers.py").write_text("X = 2\n")
    (folder / "requirements.txt").write_text("numpy\n")
    (folder / "weights.npz").write_bytes(b"\x00weights")
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "sample_request.json").write_text("{}")
    (folder / "make_weights.py").write_text("print('build')\n")
    (folder / "test_demo.py").write_text("def test(): ...\n")
    (folder / ".secret").write_text("nope")
    (folder / "pkg").mkdir()
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "util.py").write_text("Y = 3\n")
    (folder / "pkg" / "__pycache__").mkdir()
    (folder / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\x00")
    (folder / "assets").mkdir()
    (folder / "assets" / "vocab.json").write_text("[]")
    (folder / "tests").mkdir()
    (folder / "tests" / "test_x.py").write_text("")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00")
    return folder


EXPECTED = [
    "assets/vocab.json",
    "code/helpers.py",
    "code/model.py",
    "code/pkg/__init__.py",
    "code/pkg/util.py",
    "code/requirements.txt",
    "code/serving.py",
    "labels.txt",
    "weights.npz",
]


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_stage_writes_the_sagemaker_layout(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    assert [name for name, _ in plan(folder)] == EXPECTED
    out = stage(folder, tmp_path / "staged")
    assert files_under(out) == EXPECTED
    assert (out / "weights.npz").read_bytes() == b"\x00weights"
    assert (out / "code" / "pkg" / "util.py").read_text() == "Y = 3\n"


def test_stage_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    dest = tmp_path / "busy"
    dest.mkdir()
    (dest / "x").write_text("")
    with pytest.raises(ConfigError, match="not an empty folder"):
        stage(folder, dest)


def test_missing_serving_py_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "model.py").write_text("")
    with pytest.raises(ModelSpecError, match=re.escape(f"{folder} has no serving.py")):
        build_archive(folder, tmp_path / "model.tar.gz")
    assert not (tmp_path / "model.tar.gz").exists()


def test_a_broken_model_toml_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "model.toml").write_text('image = "tpu"\n')
    with pytest.raises(ModelSpecError, match=r"model\.toml"):
        build_archive(folder, tmp_path / "model.tar.gz")


def test_archive_members_and_metadata(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    os.chmod(folder / "helpers.py", 0o775)
    archive = build_archive(folder, tmp_path / "out" / "model.tar.gz")
    raw = archive.read_bytes()
    assert raw[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime
    assert not raw[3] & 0x08  # no FNAME flag: no file name embedded
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert [m.name for m in members if m.isfile()] == EXPECTED
    assert {m.name for m in members if m.isdir()} == {"assets", "code", "code/pkg"}
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        if m.isdir() or m.name == "code/helpers.py":
            assert m.mode == 0o755
        else:
            assert m.mode == 0o644


def test_archive_into_a_folder(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (tmp_path / "dist").mkdir()
    assert build_archive(folder, tmp_path / "dist") == tmp_path / "dist" / "model.tar.gz"


def test_archives_are_byte_identical_across_builds_and_mtimes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    first = build_archive(folder, tmp_path / "a.tar.gz").read_bytes()
    for path in folder.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    second = build_archive(folder, tmp_path / "b.tar.gz").read_bytes()
    assert first == second
    (folder / "model.py").write_text("NET = 2\n")
    assert build_archive(folder, tmp_path / "c.tar.gz").read_bytes() != first


def test_real_models_package_and_extract(tmp_path: Path) -> None:
    for name in ("frame_features", "scene_classifier"):
        archive = build_archive(ROOT / "models" / name, tmp_path / f"{name}.tar.gz")
        again = build_archive(ROOT / "models" / name, tmp_path / f"{name}-2.tar.gz")
        assert archive.read_bytes() == again.read_bytes()
        out = extract_archive(archive, tmp_path / name)
        assert files_under(out) == [
            "code/model.py", "code/model.toml", "code/serving.py", "weights.npz",
        ]
        assert (out / "weights.npz").read_bytes() == \
            (ROOT / "models" / name / "weights.npz").read_bytes()


def test_extract_round_trip(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    archive = build_archive(folder, tmp_path / "model.tar.gz")
    out = extract_archive(archive, tmp_path / "opt" / "ml" / "model")
    assert files_under(out) == EXPECTED
    assert (out / "code" / "serving.py").read_text() == (folder / "serving.py").read_text()


def hostile(tmp_path: Path, *members: tarfile.TarInfo) -> Path:
    path = tmp_path / "evil.tar.gz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        ok = tarfile.TarInfo("code/serving.py")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"x\n"))
        for m in members:
            tar.addfile(m, io.BytesIO(b"y" * m.size) if m.isfile() else None)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def file_member(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(("member", "why"), [
    (file_member("../escape.txt"), "outside the destination"),
    (file_member("code/../../escape.txt"), "outside the destination"),
    (file_member("/etc/evil.txt"), "absolute path"),
    (link_member("code/link", "../../../etc/passwd"), "link"),
    (link_member("code/abs", "/etc/passwd"), "link"),
    (link_member("code/hard", "../../outside", tarfile.LNKTYPE), "outside"),
])
def test_hostile_members_are_refused_and_nothing_is_written(
        tmp_path: Path, member: tarfile.TarInfo, why: str) -> None:
    archive = hostile(tmp_path, member)
    dest = tmp_path / "dest" / "model"
    with pytest.raises(ConfigError) as info:
        extract_archive(archive, dest)
    message = str(info.value)
    assert str(archive) in message
    assert repr(member.name) in message
    assert why in message
    assert list(dest.rglob("*")) == []
    assert not (tmp_path / "escape.txt").exists()


def test_corrupt_gzip_is_a_clear_error(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    good = build_archive(folder, tmp_path / "model.tar.gz").read_bytes()
    for name, data in [("plain.tar.gz", b"not an archive at all"),
                       ("cut.tar.gz", good[: len(good) // 2]),
                       ("flipped.tar.gz", good[:20] + bytes([good[20] ^ 0xFF]) + good[21:])]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ConfigError, match=re.escape(f"model archive {path} is not a readable")):
            extract_archive(path, tmp_path / "x" / name)


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; build it with smserve package"):
        extract_archive(tmp_path / "none.tar.gz", tmp_path / "x")
