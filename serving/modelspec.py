"""A model's ``model.toml``: what image it runs on, how its batch transform is set up.

Each ``models/NAME/`` folder holds a ``model.toml``; :func:`load_spec` reads
and checks it into a :class:`ModelSpec`, and :func:`discover` does so for
every model folder under a root. Every problem raises
:class:`~serving.errors.ModelSpecError` naming the file, the key, the bad
value and what is allowed.

Keys (the model's name is its folder's name)::

    image                      "cpu" | "gpu"                            (required)
    instance_type              "ml.m5.large", "ml.g4dn.xlarge", ...     (required)
    instance_count             int >= 1                                 (1)
    content_type               request content type                     (required)
    accept                     response content type                    (required)
    split_type                 "None" | "Line"                          ("Line")
    batch_strategy             "SingleRecord" | "MultiRecord"           ("MultiRecord")
    max_payload_mb             int 0..100                               (6)
    max_concurrent_transforms  int >= 1                                 (1)
    assemble_with              "None" | "Line"                          ("Line")
    depends_on                 list of model names                      ([])
    inputs                     table: input name -> "$input" | model    (required)
    output_suffix              extension of the output key, ".npy"      (".out")
    environment                table: variable -> string                ({})
    gpu_memory_mb              int >= 0                                 (0)
    cpu_workers                int >= 1                                 (1)

In ``inputs``, ``"$input"`` is the pipeline's input object; a model name is
that model's output for the same input object, and must be in ``depends_on``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import ModelSpecError

SPEC_FILE = "model.toml"
HANDLER_FILE = "serving.py"

#: What an ``inputs`` entry names to mean the pipeline's own input object.
PIPELINE_INPUT = "$input"

IMAGES = ("cpu", "gpu")
SPLIT_TYPES = ("None", "Line")
BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")
ASSEMBLE_WITH = ("None", "Line")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
_INPUT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*/[A-Za-z0-9*][A-Za-z0-9.+_*-]*$")
_INSTANCE_TYPE = re.compile(r"^ml\.[a-z0-9-]+\.[a-z0-9-]+$")
_SUFFIX = re.compile(r"^(\.[A-Za-z0-9_-]+)+$")


@dataclass(frozen=True)
class ModelSpec:
    """One model's checked ``model.toml``; see the module docstring for the keys."""

    name: str
    folder: Path
    image: str
    instance_type: str
    content_type: str
    accept: str
    inputs: Mapping[str, str]
    instance_count: int = 1
    split_type: str = "Line"
    batch_strategy: str = "MultiRecord"
    max_payload_mb: int = 6
    max_concurrent_transforms: int = 1
    assemble_with: str = "Line"
    depends_on: tuple[str, ...] = ()
    output_suffix: str = ".out"
    environment: Mapping[str, str] = field(default_factory=dict)
    gpu_memory_mb: int = 0
    cpu_workers: int = 1

    @property
    def path(self) -> Path:
        """The ``model.toml`` this spec was read from."""
        return self.folder / SPEC_FILE

    @property
    def upstream_inputs(self) -> dict[str, str]:
        """The ``inputs`` entries that name another model: input name -> model."""
        return {k: v for k, v in self.inputs.items() if v != PIPELINE_INPUT}

    def container_environment(self) -> dict[str, str]:
        """The model's container ``Environment`` (CreateModel), from ``model.toml``.

        ``cpu_workers`` becomes ``SAGEMAKER_MODEL_SERVER_WORKERS`` (model
        server worker processes) unless ``environment`` sets it itself.
        """
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(self.cpu_workers)}
        env.update(self.environment)
        return env

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-friendly values (``folder`` as a string)."""
        return {
            "name": self.name,
            "folder": str(self.folder),
            "image": self.image,
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "content_type": self.content_type,
            "accept": self.accept,
            "split_type": self.split_type,
            "batch_strategy": self.batch_strategy,
            "max_payload_mb": self.max_payload_mb,
            "max_concurrent_transforms": self.max_concurrent_transforms,
            "assemble_with": self.assemble_with,
            "depends_on": list(self.depends_on),
            "inputs": dict(self.inputs),
            "output_suffix": self.output_suffix,
            "environment": dict(self.environment),
            "gpu_memory_mb": self.gpu_memory_mb,
            "cpu_workers": self.cpu_workers,
        }


# --- checking ---------------------------------------------------------------

_REQUIRED = ("image", "instance_type", "content_type", "accept", "inputs")
_KNOWN = (
    "image", "instance_type", "instance_count", "content_type", "accept", "split_type",
    "batch_strategy", "max_payload_mb", "max_concurrent_transforms", "assemble_with",
    "depends_on", "inputs", "output_suffix", "environment", "gpu_memory_mb", "cpu_workers",
)


class _Checker:
    """Reads keys out of one parsed ``model.toml``, failing with the file's name."""

    def __init__(self, path: Path, data: Mapping[str, Any]) -> None:
        self.path = path
        self.data = data

    def fail(self, key: str, value: Any, allowed: str) -> ModelSpecError:
        return ModelSpecError(
            f"{self.path}: {key} = {_show(value)} is not allowed; use {allowed}",
            path=str(self.path), key=key,
        )

    def choice(self, key: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self.data.get(key, default)
        allowed = " or ".join(f'"{o}"' for o in options)
        if not isinstance(value, str) or value not in options:
            raise self.fail(key, value, allowed)
        return value

    def text(self, key: str, pattern: re.Pattern[str], allowed: str,
             default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not pattern.match(value):
            raise self.fail(key, value, allowed)
        return value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self.data.get(key, default)
        span = f"a whole number from {low} to {high}" if high is not None else \
            f"a whole number >= {low}"
        # bool is an int in Python; true/false in TOML is never a count.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, value, span)
        if value < low or (high is not None and value > high):
            raise self.fail(key, value, span)
        return value

    def names(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        allowed = 'a list of model folder names, like ["frame_features"]'
        if not isinstance(value, list):
            raise self.fail(key, value, allowed)
        for item in value:
            if not isinstance(item, str) or not _NAME.match(item):
                raise self.fail(key, value, allowed)
        if len(set(value)) != len(value):
            dupes = sorted({v for v in value if value.count(v) > 1})
            raise self.fail(key, value, f"each name once (repeated: {', '.join(dupes)})")
        return tuple(value)

    def table(self, key: str, keys: re.Pattern[str], key_allowed: str,
              required: bool = False) -> dict[str, str]:
        value = self.data.get(key, {})
        if not isinstance(value, dict) or (required and not value):
            what = "a non-empty table" if required else "a table"
            raise self.fail(key, value, f"{what} of {key_allowed} = \"string\"")
        out: dict[str, str] = {}
        for name, item in value.items():
            if not keys.match(name):
                raise self.fail(f"{key}.{name}", item, f"a key that is {key_allowed}")
            if not isinstance(item, str):
                raise self.fail(f"{key}.{name}", item, f'a string (quote it: "{item}")')
            out[name] = item
        return out


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "(missing)"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)


def parse_spec(name: str, folder: Path, data: Mapping[str, Any]) -> ModelSpec:
    """Check parsed ``model.toml`` data and build the spec.

    Args:
        name: the model's name (its folder's name).
        folder: the model folder, used in messages and kept on the spec.
        data: the parsed TOML document.

    Raises:
        ModelSpecError: an unknown or missing key, or a bad value.
    """
    path = folder / SPEC_FILE
    if not _NAME.match(name):
        raise ModelSpecError(
            f"{folder}: the folder name {name!r} is not a valid model name; use letters, "
            "digits, '-' and '_' (up to 63, starting with a letter or digit)",
            path=str(path),
        )
    unknown = sorted(set(data) - set(_KNOWN))
    if unknown:
        raise ModelSpecError(
            f"{path}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(_KNOWN)}",
            path=str(path), key=unknown[0],
        )
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ModelSpecError(
            f"{path}: missing required key(s) {', '.join(missing)}; every model.toml sets "
            f"{', '.join(_REQUIRED)}",
            path=str(path), key=missing[0],
        )
    c = _Checker(path, data)
    depends_on = c.names("depends_on")
    if name in depends_on:
        raise c.fail("depends_on", data["depends_on"], f"names other than the model itself "
                     f"({name})")
    inputs = c.table("inputs", _INPUT_NAME, "an input name (letters, digits, '_', '-')",
                     required=True)
    for input_name, source in inputs.items():
        if source != PIPELINE_INPUT and source not in depends_on:
            raise c.fail(
                f"inputs.{input_name}", source,
                f'"{PIPELINE_INPUT}" (the pipeline\'s input object) or a model listed in '
                f"depends_on ({', '.join(depends_on) or 'empty'}); add {source!r} to "
                "depends_on if this input is that model's output",
            )
    return ModelSpec(
        name=name,
        folder=folder,
        image=c.choice("image", IMAGES),
        instance_type=c.text("instance_type", _INSTANCE_TYPE,
                             'an instance type starting with "ml.", like "ml.m5.large"'),
        instance_count=c.integer("instance_count", 1, 1),
        content_type=c.text("content_type", _MEDIA_TYPE,
                            'a media type, like "application/jsonlines"'),
        accept=c.text("accept", _MEDIA_TYPE, 'a media type, like "application/jsonlines"'),
        split_type=c.choice("split_type", SPLIT_TYPES, "Line"),
        batch_strategy=c.choice("batch_strategy", BATCH_STRATEGIES, "MultiRecord"),
        max_payload_mb=c.integer("max_payload_mb", 6, 0, 100),
        max_concurrent_transforms=c.integer("max_concurrent_transforms", 1, 1),
        assemble_with=c.choice("assemble_with", ASSEMBLE_WITH, "Line"),
        depends_on=depends_on,
        inputs=inputs,
        output_suffix=c.text("output_suffix", _SUFFIX,
                             'an extension starting with ".", like ".npy" or ".json"', ".out"),
        environment=c.table("environment", _ENV_NAME, "an environment variable name"),
        gpu_memory_mb=c.integer("gpu_memory_mb", 0, 0),
        cpu_workers=c.integer("cpu_workers", 1, 1),
    )


def load_spec(folder: str | Path) -> ModelSpec:
    """Read and check ``folder/model.toml``.

    Args:
        folder: a model folder, ``models/NAME``; its name is the model's name.

    Raises:
        ModelSpecError: the file is missing, is not valid TOML, or has a bad key.
    """
    folder = Path(folder)
    path = folder / SPEC_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelSpecError(
            f"{folder} has no {SPEC_FILE}; every model folder needs one (smserve new NAME "
            "writes a template)",
            path=str(path),
        ) from None
    except OSError as err:
        raise ModelSpecError(f"cannot read {path}: {err}", path=str(path)) from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ModelSpecError(f"{path} is not UTF-8 text (bad byte at offset {err.start})",
                             path=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        raise ModelSpecError(f"{path} is not valid TOML: {err}", path=str(path)) from None
    return parse_spec(folder.name, folder, data)


def discover(models_root: str | Path) -> dict[str, ModelSpec]:
    """Load the spec of every model folder under ``models_root``.

    A model folder is a direct subfolder holding ``serving.py`` or
    ``model.toml``; folders whose names start with "." or "_" (hidden ones,
    ``__pycache__``, a ``_template``) are skipped.

    Returns:
        Model name -> spec, sorted by name.

    Raises:
        ModelSpecError: ``models_root`` is not a folder, a model folder lacks
            ``model.toml`` or ``serving.py``, or a ``model.toml`` is wrong.
    """
    root = Path(models_root)
    if not root.is_dir():
        raise ModelSpecError(f"{root} is not a folder of models; pass the models/ folder",
                             path=str(root))
    specs: dict[str, ModelSpec] = {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue
        has_handler = (folder / HANDLER_FILE).is_file()
        has_spec = (folder / SPEC_FILE).is_file()
        if not has_handler and not has_spec:
            continue
        if not has_spec:
            raise ModelSpecError(
                f"{folder} has {HANDLER_FILE} but no {SPEC_FILE}; add one (smserve new NAME "
                "writes a template)",
                path=str(folder / SPEC_FILE),
            )
        if not has_handler:
            raise ModelSpecError(
                f"{folder} has {SPEC_FILE} but no {HANDLER_FILE}; add the handlers "
                "(model_fn, predict_fn, ...)",
                path=str(folder / HANDLER_FILE),
            )
        spec = load_spec(folder)
        specs[spec.name] = spec
    return specs
