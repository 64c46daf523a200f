"""model.toml: reading, defaults, and errors that name the file, the key and the value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving.errors import ModelSpecError
from serving.modelspec import ModelSpec, discover, load_spec

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """
image = "cpu"
instance_type = "ml.m5.large"
content_type = "application/jsonlines"
accept = "application/jsonlines"
[inputs]
video = "$input"
"""


def write_model(root: Path, name: str, toml: str | None = MINIMAL, handler: bool = True) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if toml is not None:
        (folder / "model.toml").write_text(toml)
    if handler:
        (folder / "serving.py").write_text("def model_fn(d): ...\ndef predict_fn(x, m): ...\n")
    return folder


def test_minimal_spec_gets_the_documented_defaults(tmp_path: Path) -> None:
    spec = load_spec(write_model(tmp_path, "m1"))
    assert spec.name == "m1"
    assert spec.folder == tmp_path / "m1"
    assert spec.path == tmp_path / "m1" / "model.toml"
    assert (spec.image, spec.instance_type, spec.instance_count) == ("cpu", "ml.m5.large", 1)
    assert (spec.split_type, spec.batch_strategy, spec.assemble_with) == \
        ("Line", "MultiRecord", "Line")
    assert (spec.max_payload_mb, spec.max_concurrent_transforms) == (6, 1)
    assert spec.depends_on == ()
    assert spec.inputs == {"video": "$input"}
    assert spec.output_suffix == ".out"
    assert spec.environment == {}
    assert (spec.gpu_memory_mb, spec.cpu_workers) == (0, 1)


def test_every_key(tmp_path: Path) -> None:
    write_model(tmp_path, "up")
    toml = """
image = "gpu"
instance_type = "ml.g4dn.xlarge"
instance_count = 2
content_type = "application/jsonlines"
accept = "application/json"
split_type = "None"
batch_strategy = "SingleRecord"
max_payload_mb = 0
max_concurrent_transforms = 4
assemble_with = "None"
depends_on = ["up"]
output_suffix = ".npy"
gpu_memory_mb = 512
cpu_workers = 3
[inputs]
video = "$input"
feats = "up"
[environment]
OMP_NUM_THREADS = "2"
"""
    spec = load_spec(write_model(tmp_path, "down", toml))
    assert spec.to_dict() == {
        "name": "down", "folder": str(tmp_path / "down"), "image": "gpu",
        "instance_type": "ml.g4dn.xlarge", "instance_count": 2,
        "content_type": "application/jsonlines", "accept": "application/json",
        "split_type": "None", "batch_strategy": "SingleRecord", "max_payload_mb": 0,
        "max_concurrent_transforms": 4, "assemble_with": "None", "depends_on": ["up"],
        "inputs": {"video": "$input", "feats": "up"}, "output_suffix": ".npy",
        "environment": {"OMP_NUM_THREADS": "2"}, "gpu_memory_mb": 512, "cpu_workers": 3,
    }
    assert spec.upstream_inputs == {"feats": "up"}


@pytest.mark.parametrize(("line", "key", "shown", "allowed"), [
    ('image = "tpu"', "image", '"tpu"', '"cpu" or "gpu"'),
    ('instance_type = "m5.large"', "instance_type", '"m5.large"', '"ml."'),
    ("instance_count = 0", "instance_count", "0", ">= 1"),
    ("instance_count = true", "instance_count", "true", ">= 1"),
    ('instance_count = "2"', "instance_count", '"2"', ">= 1"),
    ('split_type = "RecordIO"', "split_type", '"RecordIO"', '"None" or "Line"'),
    ('batch_strategy = "Multi"', "batch_strategy", '"Multi"', '"SingleRecord" or "MultiRecord"'),
    ("max_payload_mb = 101", "max_payload_mb", "101", "from 0 to 100"),
    ("max_payload_mb = -1", "max_payload_mb", "-1", "from 0 to 100"),
    ("max_concurrent_transforms = 0", "max_concurrent_transforms", "0", ">= 1"),
    ('assemble_with = "Lines"', "assemble_with", '"Lines"', '"None" or "Line"'),
    ('depends_on = "up"', "depends_on", '"up"', "a list of model folder names"),
    ('depends_on = ["a b"]', "depends_on", '["a b"]', "a list of model folder names"),
    ('output_suffix = "npy"', "output_suffix", '"npy"', 'starting with "."'),
    ("gpu_memory_mb = -5", "gpu_memory_mb", "-5", ">= 0"),
    ("cpu_workers = 1.5", "cpu_workers", "1.5", ">= 1"),
    ("environment = { N = 2 }", "environment.N", "2", "a string"),
    ('content_type = "json"', "content_type", '"json"', "a media type"),
])
def test_bad_values_name_file_key_value_and_allowed(tmp_path: Path, line: str, key: str,
                                                    shown: str, allowed: str) -> None:
    key_name = line.split("=")[0].strip()
    toml = "\n".join(ln for ln in MINIMAL.splitlines() if not ln.startswith(key_name + " "))
    toml = line + "\n" + toml
    folder = write_model(tmp_path, "bad", toml)
    with pytest.raises(ModelSpecError) as info:
        load_spec(folder)
    message = str(info.value)
    assert str(folder / "model.toml") in message
    assert f"{key} = {shown}" in message
    assert allowed in message


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", MINIMAL.replace("[inputs]", "instance_typ = 'x'\n[inputs]"))
    with pytest.raises(ModelSpecError, match=r"unknown key\(s\) instance_typ.*instance_type"):
        load_spec(folder)


def test_missing_required_key(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", MINIMAL.replace('image = "cpu"', ""))
    with pytest.raises(ModelSpecError, match=r"missing required key.*image"):
        load_spec(folder)


def test_input_from_a_model_must_be_in_depends_on(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", MINIMAL + 'feats = "frame_features"\n')
    with pytest.raises(ModelSpecError) as info:
        load_spec(folder)
    assert 'inputs.feats = "frame_features"' in str(info.value)
    assert "depends_on" in str(info.value)


def test_depending_on_itself_is_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", 'depends_on = ["m"]\n' + MINIMAL)
    with pytest.raises(ModelSpecError, match="other than the model itself"):
        load_spec(folder)


def test_empty_inputs_are_refused(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", MINIMAL.replace('video = "$input"', ""))
    with pytest.raises(ModelSpecError, match=r"inputs = \{\} .*non-empty table"):
        load_spec(folder)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", 'image = "cpu\n')
    with pytest.raises(ModelSpecError, match=r"model\.toml is not valid TOML"):
        load_spec(folder)


def test_missing_model_toml_names_the_folder(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "m", None)
    with pytest.raises(ModelSpecError, match=re.escape(f"{folder} has no model.toml")):
        load_spec(folder)


def test_discover_finds_model_folders_sorted(tmp_path: Path) -> None:
    write_model(tmp_path, "b")
    write_model(tmp_path, "a")
    (tmp_path / "notes").mkdir()
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "README.md").write_text("hi")
    specs = discover(tmp_path)
    assert list(specs) == ["a", "b"]
    assert all(isinstance(s, ModelSpec) for s in specs.values())


def test_discover_refuses_handler_without_spec(tmp_path: Path) -> None:
    write_model(tmp_path, "a")
    folder = write_model(tmp_path, "half", None)
    message = re.escape(f"{folder} has serving.py but no model.toml")
    with pytest.raises(ModelSpecError, match=message):
        discover(tmp_path)


def test_discover_refuses_spec_without_handler(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "half", handler=False)
    message = re.escape(f"{folder} has model.toml but no serving.py")
    with pytest.raises(ModelSpecError, match=message):
        discover(tmp_path)


def test_discover_refuses_a_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="is not a folder of models"):
        discover(tmp_path / "nope")


def test_the_repository_models() -> None:
    specs = discover(ROOT / "models")
    assert {"frame_features", "scene_classifier"} <= set(specs)
    ff, sc = specs["frame_features"], specs["scene_classifier"]
    assert (ff.image, ff.instance_type, ff.output_suffix) == ("gpu", "ml.g4dn.xlarge", ".npy")
    assert ff.inputs == {"video": "$input"}
    assert (sc.image, sc.instance_type, sc.output_suffix) == ("cpu", "ml.m5.large", ".json")
    assert sc.depends_on == ("frame_features",)
    assert sc.inputs == {"features": "frame_features"}
