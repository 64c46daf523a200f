"""Package a model folder as SageMaker's ``model.tar.gz``, and unpack one safely.

SageMaker extracts ``model.tar.gz`` into ``/opt/ml/model``; its framework
containers look for the handler module in ``/opt/ml/model/code``. So a model
folder ``models/NAME/`` becomes::

    weights.npz ...            data files (anything that is not code), at the top
    code/serving.py            the handlers
    code/model.py              the network
    code/model.toml            the spec
    code/requirements.txt      if the folder has one
    code/<other .py, packages> the folder's other code

Left out: hidden files, ``__pycache__``, ``*.pyc``, tests (``tests/``,
``test_*.py``, ``conftest.py``), ``sample_request.json`` and
``make_weights.py`` (a build script, not part of the model).

The same inputs give a byte-identical archive: members sorted, times zero,
owners root with empty names, modes 0o644 (0o755 for folders and executables),
and a gzip header with no time and no file name.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path

from serving import diskspace
from serving.errors import ConfigError, ModelSpecError, NoSpaceError

HANDLER_FILE = "serving.py"
CODE_DIR = "code"
ARCHIVE_NAME = "model.tar.gz"

#: Files that stay next to the model but never go into its archive.
EXCLUDED_FILES = frozenset({"sample_request.json", "make_weights.py", "conftest.py"})
#: Folders that never go into an archive.
EXCLUDED_DIRS = frozenset({"__pycache__", "tests", "test", "sample_data"})
#: Top-level files that are code even though they do not end in ``.py``.
CODE_FILES = frozenset({"model.toml", "requirements.txt"})


def _excluded(path: Path) -> bool:
    name = path.name
    if name.startswith("."):
        return True
    if path.is_dir():
        return name in EXCLUDED_DIRS or name.endswith(".egg-info")
    return (name in EXCLUDED_FILES or name.endswith((".pyc", ".pyo"))
            or (name.startswith("test_") and name.endswith(".py")))


def _walk(folder: Path) -> list[Path]:
    """Files under ``folder`` that belong in an archive, sorted, following file links."""
    found: list[Path] = []
    for entry in sorted(folder.iterdir()):
        if _excluded(entry):
            continue
        if entry.is_dir():
            if entry.is_symlink():
                raise ModelSpecError(f"{entry} is a link to a folder; copy the folder in, "
                                     "archives hold plain files only", path=str(entry))
            found.extend(_walk(entry))
        elif entry.is_file():
            found.append(entry)
    return found


def _has_code(folder: Path) -> bool:
    return any(p.suffix == ".py" for p in _walk(folder))


def plan(model_folder: str | Path) -> list[tuple[str, Path]]:
    """What goes where: ``(path in the archive, source file)``, sorted by archive path.

    Raises:
        ModelSpecError: ``model_folder`` is not a folder, has no
            ``serving.py``, or its ``model.toml`` is wrong.
    """
    folder = Path(model_folder)
    if not folder.is_dir():
        raise ModelSpecError(f"{folder} is not a model folder; pass models/NAME",
                             path=str(folder))
    if not (folder / HANDLER_FILE).is_file():
        raise ModelSpecError(f"{folder} has no {HANDLER_FILE}; a model folder needs one with "
                             "model_fn and predict_fn (smserve new NAME writes one)",
                             path=str(folder))
    if (folder / "model.toml").is_file():
        from serving.modelspec import load_spec

        load_spec(folder)  # refuse to package a broken spec
    members: list[tuple[str, Path]] = []
    for entry in sorted(folder.iterdir()):
        if _excluded(entry):
            continue
        if entry.name == CODE_DIR:
            raise ModelSpecError(f"{entry} clashes with the archive's {CODE_DIR}/ folder; keep "
                                 "code at the top of the model folder and rename it",
                                 path=str(entry))
        if entry.is_dir():
            code = _has_code(entry)
            for path in _walk(entry):
                rel = path.relative_to(folder).as_posix()
                members.append((f"{CODE_DIR}/{rel}" if code else rel, path))
        elif entry.is_file():
            code = entry.suffix == ".py" or entry.name in CODE_FILES
            members.append((f"{CODE_DIR}/{entry.name}" if code else entry.name, entry))
    return sorted(members)


def stage(model_folder: str | Path, dest: str | Path) -> Path:
    """Write the SageMaker model layout of ``model_folder`` into ``dest``.

    Args:
        model_folder: ``models/NAME``.
        dest: a folder that does not exist yet or is empty.

    Returns:
        ``dest``.

    Raises:
        ModelSpecError: see :func:`plan`.
        ConfigError: ``dest`` exists and is not an empty folder.
    """
    members = plan(model_folder)
    out = Path(dest)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty folder; stage into a new one")
    out.mkdir(parents=True, exist_ok=True)
    needed = sum(source.stat().st_size for _, source in members)
    with diskspace.guard(out, needed, "the staged model"):
        for name, source in members:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
    return out


def _info(name: str, *, directory: bool = False, size: int = 0,
          executable: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory or executable else 0o644
    info.size = 0 if directory else size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_archive(model_folder: str | Path, out: str | Path) -> Path:
    """Write ``model.tar.gz`` for ``model_folder``; byte-identical for the same inputs.

    Args:
        model_folder: ``models/NAME``.
        out: the archive path, or an existing folder to write
            ``model.tar.gz`` into. Written to a temporary file first, then
            renamed, so a failed build leaves no partial archive.

    Returns:
        The archive's path.

    Raises:
        ModelSpecError: see :func:`plan`.
    """
    members = plan(model_folder)
    target = Path(out)
    if target.is_dir():
        target = target / ARCHIVE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    folders = sorted({parent for name, _ in members
                      for parent in _parents(name)})
    entries = sorted([(d, None) for d in folders] + [(n, p) for n, p in members],
                     key=lambda e: e[0])
    fd, tmp_name = tempfile.mkstemp(prefix=".model-", suffix=".tar.gz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                              compresslevel=9) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, source in entries:
                if source is None:
                    tar.addfile(_info(name, directory=True))
                    continue
                data = source.read_bytes()
                executable = bool(source.stat().st_mode & stat.S_IXUSR)
                tar.addfile(_info(name, size=len(data), executable=executable),
                            io.BytesIO(data))
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return target


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``model.tar.gz`` into ``dest`` with tarfile's ``data`` filter.

    Every member is checked before anything is written, so a hostile archive
    leaves ``dest`` untouched.

    Args:
        archive: the ``model.tar.gz``.
        dest: the folder to extract into (created if missing), such as
            ``/opt/ml/model``.

    Returns:
        ``dest``.

    Raises:
        ConfigError: the archive is missing, is not a readable gzip'd tar, or
            has a member with an absolute path, one that would land outside
            ``dest`` (``..``, a link pointing out) or a device or similar; the
            message names the archive and the member.
        NoSpaceError: ``dest``'s disk filled up (the message names it, what is
            free and what the archive needs).
    """
    source = Path(archive)
    target = Path(dest)
    if not source.is_file():
        raise ConfigError(f"model archive {source} does not exist; build it with "
                          "smserve package models/NAME -o model.tar.gz")
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(source, mode="r:gz") as tar:
            members = tar.getmembers()
            root = os.path.realpath(target)
            for member in members:
                try:
                    if member.name.startswith(("/", os.sep)):
                        # The data filter would strip the "/"; SageMaker archives never
                        # hold absolute paths, so one means the archive is not ours.
                        raise tarfile.AbsolutePathError(member)
                    tarfile.data_filter(member, root)
                except tarfile.FilterError as err:
                    raise ConfigError(
                        f"model archive {source} has an unsafe member {member.name!r} "
                        f"({_why(err)}); rebuild it with smserve package",
                        archive=str(source), member=member.name,
                    ) from err
            needed = sum(m.size for m in members if m.isfile())
            with diskspace.guard(target, needed, "the extracted model"):
                tar.extractall(target, members=members, filter="data")
    except (ConfigError, NoSpaceError):
        raise
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ConfigError(
            f"model archive {source} is not a readable .tar.gz ({type(err).__name__}: {err}); "
            "rebuild it with smserve package models/NAME -o model.tar.gz",
            archive=str(source),
        ) from err
    return target


def _why(err: tarfile.FilterError) -> str:
    if isinstance(err, tarfile.AbsolutePathError):
        return "an absolute path"
    if isinstance(err, tarfile.OutsideDestinationError):
        return "its path leads outside the destination"
    if isinstance(err, tarfile.AbsoluteLinkError):
        return "a link to an absolute path"
    if isinstance(err, tarfile.LinkOutsideDestinationError):
        return "a link that leads outside the destination"
    if isinstance(err, tarfile.SpecialFileError):
        return "a device, pipe or other special file"
    return str(err)
