"""``smserve new NAME``: a new model folder that passes ``smserve check`` as written.

Writes ``models/NAME/`` (``model.py``, ``serving.py``, ``model.toml``,
``make_weights.py`` and the ``weights.npz`` it makes, ``sample_request.json``
and ``sample_data/``) and ``tests/models/test_NAME.py``, from the templates in
:mod:`serving.templates`. ``--framework`` picks the model's code
(:data:`FRAMEWORKS`: ``chainer``, the default, or ``numpy``); ``--gpu``
(chainer only) the GPU variant of its handlers. ``model.toml``, the sample
request and the test are the same for every framework.
"""

from __future__ import annotations

import argparse
import keyword
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from serving.errors import ConfigError

#: Frameworks ``smserve new`` has templates for; the first is the default.
FRAMEWORKS = ("chainer", "numpy")
#: Frameworks whose templates have a GPU variant (``--gpu``).
GPU_FRAMEWORKS = ("chainer",)
TEST_TEMPLATE = "test_model.py.tmpl"
SAMPLE_BUCKET = "smserve-samples"
SAMPLE_KEY = "samples/clips/clip-000.npy"
CPU = {"image": "cpu", "instance_type": "ml.m5.large", "gpu_memory_mb": "0"}
GPU = {"image": "gpu", "instance_type": "ml.g4dn.xlarge", "gpu_memory_mb": "1024"}


def model_files(framework: str, gpu: bool) -> dict[str, str]:
    """Template file -> the file it becomes in the model folder, for one framework.

    Raises:
        ConfigError: an unknown framework, or ``gpu`` for one without a GPU variant.
    """
    if framework not in FRAMEWORKS:
        raise ConfigError(f"--framework {framework!r} is not one smserve new knows; use one of "
                          f"{', '.join(FRAMEWORKS)}")
    if gpu and framework not in GPU_FRAMEWORKS:
        raise ConfigError(f"--gpu needs --framework {' or '.join(GPU_FRAMEWORKS)}: the "
                          f"{framework} template runs on the CPU; drop --gpu")
    handlers = f"{framework}_gpu_serving.py.tmpl" if gpu else f"{framework}_serving.py.tmpl"
    return {f"{framework}_model.py.tmpl": "model.py", handlers: "serving.py",
            "model.toml.tmpl": "model.toml",
            f"{framework}_make_weights.py.tmpl": "make_weights.py"}


def template(name: str) -> str:
    """The text of a template in :mod:`serving.templates`."""
    return resources.files("serving.templates").joinpath(name).read_text(encoding="utf-8")


def render(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``{{key}}`` replaced by ``values[key]``."""
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        start = text.index("{{")
        raise ConfigError(f"template placeholder {text[start:text.index('}}', start) + 2]} "
                          "has no value")
    return text


def check_name(name: str, models_dir: Path, tests_dir: Path) -> None:
    """Refuse a name that is not a Python identifier or is taken.

    Raises:
        ConfigError: naming the problem and a name that would do.
    """
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_") \
            or not name.isascii() or len(name) > 63:
        raise ConfigError(
            f"{name!r} is not a valid model name; use a Python identifier of ASCII letters, "
            "digits and '_' that starts with a letter (up to 63 characters), like my_model")
    folder = models_dir / name
    if folder.exists():
        raise ConfigError(f"{folder} exists; pick another name, or remove the folder first")
    test = tests_dir / f"test_{name}.py"
    if test.exists():
        raise ConfigError(f"{test} exists; pick another name, or remove the test first")


def check_depends_on(names: list[str], name: str, models_dir: Path) -> None:
    """Refuse dependencies that are not model folders under ``models_dir``."""
    for dep in names:
        if dep == name:
            raise ConfigError(f"--depends-on names {name} itself; a model cannot depend on itself")
        if not (models_dir / dep / "model.toml").is_file():
            known = sorted(p.parent.name for p in models_dir.glob("*/model.toml"))
            raise ConfigError(f"--depends-on names {dep!r}, which is not a model in {models_dir} "
                              f"(models: {', '.join(known) or 'none'}); fix the name")
    if len(set(names)) != len(names):
        raise ConfigError(f"--depends-on repeats a name: {','.join(names)}")


def sample_clip(frames: int = 8, height: int = 24, width: int = 32) -> bytes:
    """A small deterministic clip (T x H x W x 3 uint8) as ``.npy`` bytes: moving gradients."""
    import io

    import numpy as np

    t = np.arange(frames)[:, None, None]
    y = np.arange(height)[None, :, None]
    x = np.arange(width)[None, None, :]
    red = (x * 8 + t * 16) % 256
    green = (y * 10) % 256
    blue = ((x + y) * 4 + t * 8) % 256
    clip = np.stack(np.broadcast_arrays(red, green, blue), axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, clip, allow_pickle=False)
    return buffer.getvalue()


def _sample_request(name: str) -> str:
    import json

    from serving.pipeline import output_key

    record = {"bucket": SAMPLE_BUCKET, "inputs": {"video": SAMPLE_KEY},
              "output_path": output_key(name, SAMPLE_KEY, suffix=".npy"), "overwrite": False}
    return json.dumps(record) + "\n"


def _values(name: str, gpu: bool, depends_on: list[str], model_rel: str,
            framework: str) -> dict[str, str]:
    upstream = "".join(
        f"# {dep} = \"{dep}\"  # uncomment to read {dep}'s output for the same clip\n"
        for dep in depends_on)
    return {
        **(GPU if gpu else CPU),
        "name": name,
        "framework": framework,
        "depends_on": ", ".join(f'"{d}"' for d in depends_on),
        "upstream_inputs": upstream.rstrip("\n"),
        "model_rel": model_rel,
    }


def create(name: str, models_dir: Path, tests_dir: Path, *, gpu: bool = False,
           depends_on: list[str] | None = None,
           framework: str = FRAMEWORKS[0]) -> tuple[Path, Path]:
    """Write the model folder and its test; returns both paths.

    The model folder appears whole or not at all: it is written beside its
    final place and renamed once ``weights.npz`` is made.

    Raises:
        ConfigError: a bad or taken name, an unknown dependency or framework,
            or ``gpu`` with a framework that has no GPU template.
    """
    deps = list(depends_on or [])
    files = model_files(framework, gpu)
    check_name(name, models_dir, tests_dir)
    check_depends_on(deps, name, models_dir)
    folder = models_dir / name
    test = tests_dir / f"test_{name}.py"
    model_rel = os.path.relpath(folder.resolve(), tests_dir.resolve())
    values = _values(name, gpu, deps, Path(model_rel).as_posix(), framework)
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir))
    try:
        for source, target in files.items():
            (staging / target).write_text(render(template(source), values), encoding="utf-8")
        (staging / "sample_request.json").write_text(_sample_request(name), encoding="utf-8")
        clip = staging / "sample_data" / SAMPLE_KEY
        clip.parent.mkdir(parents=True)
        clip.write_bytes(sample_clip())
        _make_weights(staging, framework)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    tests_dir.mkdir(parents=True, exist_ok=True)
    if not (tests_dir / "__init__.py").exists():
        # Test modules are imported by package path, so test_NAME.py cannot clash
        # with a unit test of the same name.
        (tests_dir / "__init__.py").write_text("")
    test.write_text(render(template(TEST_TEMPLATE), values), encoding="utf-8")
    return folder, test


def _make_weights(folder: Path, framework: str) -> None:
    from serving.settings import Settings

    env = {**Settings.from_environ().environ, "SETUPTOOLS_USE_DISTUTILS": "stdlib",
           "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "make_weights.py"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise ConfigError(f"make_weights.py failed (exit {done.returncode}); is {framework} "
                          f"installed?\n{done.stderr.strip()[-2000:]}")


def cmd_new(args: argparse.Namespace) -> int:
    """Write models/NAME and tests/models/test_NAME.py."""
    deps = [d.strip() for d in (args.depends_on or "").split(",") if d.strip()]
    folder, test = create(args.name, Path(args.models_dir), Path(args.tests_dir), gpu=args.gpu,
                          depends_on=deps, framework=args.framework)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    print(f"created {folder}/: {', '.join(files)}")
    print(f"created {test}")
    print(f"framework: {args.framework}{' (GPU)' if args.gpu else ''}; next: edit model.py and "
          "serving.py, then")
    print(f"  smserve check {folder}                 # the handlers in-process, in seconds")
    print(f"  python -m pytest {test}")
    print(f"  smserve check {folder} --transform     # a local batch transform")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``smserve new``."""
    p = subparsers.add_parser("new", help="write a new model folder from the template",
                              description=cmd_new.__doc__)
    p.add_argument("name", help="the model's name, a Python identifier (models/NAME)")
    p.add_argument("--framework", default=FRAMEWORKS[0], choices=FRAMEWORKS,
                   help="the model's code: a chainer.Chain, or plain numpy (default: chainer)")
    p.add_argument("--gpu", action="store_true",
                   help='a GPU model (chainer): image "gpu" on ml.g4dn.xlarge, the network on '
                        "GPU 0 when there is one")
    p.add_argument("--depends-on", default="", metavar="A,B",
                   help="models that must run first (their outputs feed this one)")
    p.add_argument("--models-dir", default="models", help="folder of model folders (models)")
    p.add_argument("--tests-dir", default=os.path.join("tests", "models"),
                   help="where the model's test goes (tests/models)")
    p.set_defaults(func=cmd_new)
