"""smserve new -> check -> the generated test -> a local batch transform, as a user runs them.

Every command runs as a subprocess in a temporary copy of the repository's
``models/`` and ``tests/`` scaffolding, so what is asserted is what a user
sees: exit statuses, printed messages, files written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.check import check
from serving.modelspec import discover, load_spec
from serving.pipeline import Graph
from tests.helpers import make_repo

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def run(repo: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "SETUPTOOLS_USE_DISTUTILS": "stdlib", "PYTHONDONTWRITEBYTECODE": "1"}
    for key in [k for k in env if k.startswith("AWS_")]:
        del env[key]  # nothing may reach beyond the embedded stack
    return subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def smserve(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(repo, str(BIN / "smserve"), *args)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository copy with models/my_model made by smserve new."""
    repo = make_repo(tmp_path_factory.mktemp("repo"))
    done = smserve(repo, "new", "my_model")
    assert done.returncode == 0, done.stderr
    return repo


def test_new_writes_a_model_folder_and_its_test(repo: Path) -> None:
    folder = repo / "models" / "my_model"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "make_weights.py", "model.py", "model.toml", "sample_data/samples/clips/clip-000.npy",
        "sample_request.json", "serving.py", "weights.npz"]
    assert (repo / "tests" / "models" / "test_my_model.py").is_file()
    assert (repo / "tests" / "models" / "__init__.py").is_file()
    spec = load_spec(folder)
    assert (spec.image, spec.instance_type, spec.gpu_memory_mb) == ("cpu", "ml.m5.large", 0)
    assert (spec.content_type, spec.accept) == ("application/jsonlines", "application/jsonlines")
    assert (spec.split_type, spec.batch_strategy) == ("Line", "MultiRecord")
    assert spec.inputs == {"video": "$input"} and spec.output_suffix == ".npy"
    assert spec.depends_on == ()
    source = (folder / "serving.py").read_text()
    for handler in ("model_fn", "input_fn", "predict_fn", "output_fn"):
        assert f"def {handler}(" in source
        assert "SageMaker passes" in source.split(f"def {handler}(", 1)[1].split("\ndef ", 1)[0]
    graph = Graph(discover(repo / "models"))
    assert graph.build_requests("my_model", "smserve-samples", ["samples/clips/clip-000.npy"]
                                )[0].to_dict() == __import__("json").loads(
        (folder / "sample_request.json").read_text())


def test_the_new_model_passes_check(repo: Path) -> None:
    done = smserve(repo, "check", "models/my_model")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for handler in ("model_fn", "input_fn", "predict_fn", "output_fn"):
        assert f"  {handler} " in out
    assert "ndarray uint8 (8, 24, 32, 3)" in out
    assert "application/x-npy: ndarray float32 (8, 4)" in out
    assert out.rstrip().endswith("ok: models/my_model answered its sample request "
                                 "(handlers in-process)")


def test_the_generated_test_passes(repo: Path) -> None:
    done = run(repo, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "tests/models/test_my_model.py")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_the_new_model_passes_a_local_batch_transform(repo: Path) -> None:
    done = smserve(repo, "check", "models/my_model", "--transform")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "batch transform" in done.stdout
    assert "written s3://smserve-samples/results/my_model/samples/clips/clip-000.npy" in \
        done.stdout
    assert done.stdout.rstrip().endswith("(as a local batch transform)")


def test_the_new_model_passes_through_the_model_server(repo: Path) -> None:
    done = smserve(repo, "check", "models/my_model", "--serve")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "POST /invocations" in done.stdout and "HTTP 200" in done.stdout
    assert done.stdout.rstrip().endswith("(through the model server)")


def test_new_gpu_model_depending_on_another(repo: Path) -> None:
    done = smserve(repo, "new", "gpu_scores", "--gpu", "--depends-on", "frame_features")
    assert done.returncode == 0, done.stderr
    spec = load_spec(repo / "models" / "gpu_scores")
    assert (spec.image, spec.instance_type, spec.gpu_memory_mb) == ("gpu", "ml.g4dn.xlarge", 1024)
    assert spec.depends_on == ("frame_features",)
    assert "# frame_features = \"frame_features\"" in (spec.path).read_text()
    graph = Graph(discover(repo / "models"))
    order = graph.order()
    assert order.index("frame_features") < order.index("gpu_scores")
    assert "USE_GPU = True" in (repo / "models" / "gpu_scores" / "serving.py").read_text()
    report = check(repo / "models" / "gpu_scores")  # no GPU here: the CPU fallback
    assert report.ok, report.render()


@pytest.mark.parametrize(("args", "expect"), [
    (["my_model"], "models/my_model exists; pick another name"),
    (["9lives"], "'9lives' is not a valid model name"),
    (["my-model"], "'my-model' is not a valid model name"),
    (["class"], "'class' is not a valid model name"),
    (["_hidden"], "'_hidden' is not a valid model name"),
    (["fresh", "--depends-on", "nope"], "--depends-on names 'nope', which is not a model"),
    (["fresh", "--framework", "numpy", "--gpu"], "--gpu needs --framework chainer"),
])
def test_new_refuses_a_bad_or_taken_name(repo: Path, args: list[str], expect: str) -> None:
    before = sorted(p.name for p in (repo / "models").iterdir())
    done = smserve(repo, "new", *args)
    assert done.returncode == 2
    assert expect in done.stderr
    assert done.stderr.startswith("smserve: error: ")
    assert sorted(p.name for p in (repo / "models").iterdir()) == before


# --- bad input: each exits non-zero naming the file, the function and the fix ---------------


def broken(repo: Path, name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(repo / "models" / "my_model", folder)
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


CASES = {
    "no_serving_py": (
        lambda f: (f / "serving.py").unlink(),
        ["no serving.py in", "model_fn and predict_fn", "fix: add serving.py"]),
    "syntax_error": (
        lambda f: edit(f / "serving.py", "def model_fn(model_dir: str) -> Net:",
                       "def model_fn(model_dir: str) -> Net"),
        ["serving.py, line", "syntax error", "SyntaxError", "fix: correct the syntax at"]),
    "wrong_signature": (
        lambda f: edit(f / "serving.py", "def predict_fn(records: list[s3refs.RequestRecord], "
                       "model: Net)", "def predict_fn(records: list[s3refs.RequestRecord])"),
        ["FAILED in predict_fn", "serving.py: predict_fn(", "does not match the contract",
         "fix: define it as predict_fn(data, model)"]),
    "model_fn_raises": (
        lambda f: (f / "weights.npz").unlink(),
        ["FAILED in model_fn", "serving.py raised FileNotFoundError", "in model_fn",
         "fix: make model_fn(model_dir)", "answer: HTTP 500"]),
    "output_fn_returns_a_dict": (
        lambda f: edit(f / "serving.py", "    return s3refs.response(results)",
                       "    return {'results': [r.to_dict() for r in results]}"),
        ["FAILED in output_fn", "serving.py returned dict",
         "fix: make output_fn in", "serving.s3refs.response(results)", "answer: HTTP 500"]),
    "sample_names_missing_objects": (
        lambda f: shutil.rmtree(f / "sample_data"),
        ["FAILED in predict_fn", "sample_request.json: record 0 input 'video' names",
         "Put the file at", "answer: HTTP 404"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_bad_input(repo: Path, tmp_path: Path, case: str) -> None:
    change, expected = CASES[case]
    folder = broken(repo, case, tmp_path)
    change(folder)
    done = smserve(repo, "check", str(folder))
    assert done.returncode != 0
    out = done.stdout + done.stderr
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    assert str(folder) in out
    assert "SageMaker: " in out


@pytest.mark.parametrize("case", ["model_fn_raises", "output_fn_returns_a_dict"])
def test_check_serve_bad_input(repo: Path, tmp_path: Path, case: str) -> None:
    change, expected = CASES[case]
    folder = broken(repo, case, tmp_path)
    change(folder)
    done = smserve(repo, "check", str(folder), "--serve")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    for text in expected:
        if text != "serving.py raised FileNotFoundError":  # the server says it its own way
            assert text in out, f"{text!r} not in:\n{out}"
    assert f"{folder}/serving.py" in out  # staged paths are shown as the model folder's
    assert "FileNotFoundError" in out or "returned dict" in out


def test_the_cpu_chainer_template_has_no_gpu_code(repo: Path) -> None:
    source = (repo / "models" / "my_model" / "serving.py").read_text()
    for gpu_only in ("cupy", "USE_GPU", "GPU_MEMORY_MB", "to_device"):
        assert gpu_only not in source


# --- --framework numpy: its own test and check pass, and its test outlives a port ---------


@pytest.fixture(scope="module")
def numpy_model(repo: Path) -> Path:
    done = smserve(repo, "new", "np_model", "--framework", "numpy")
    assert done.returncode == 0, done.stderr
    assert "framework: numpy" in done.stdout
    return repo / "models" / "np_model"


def test_new_numpy_model_has_no_chainer(numpy_model: Path) -> None:
    for name in ("model.py", "serving.py", "make_weights.py"):
        assert "chainer" not in (numpy_model / name).read_text(), name
    spec = load_spec(numpy_model)
    assert (spec.image, spec.content_type, spec.output_suffix) == \
        ("cpu", "application/jsonlines", ".npy")


def test_new_numpy_model_passes_check_and_its_own_test(repo: Path, numpy_model: Path) -> None:
    done = smserve(repo, "check", "models/np_model")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "application/x-npy: ndarray float32 (8, 4)" in done.stdout
    tested = run(repo, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "tests/models/test_np_model.py")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "2 passed" in tested.stdout


def test_the_generated_test_checks_what_the_model_declares(repo: Path) -> None:
    """A port that changes the output's shape and suffix passes; outputs that lie fail."""
    done = smserve(repo, "new", "ported", "--framework", "numpy")
    assert done.returncode == 0, done.stderr
    folder, test = repo / "models" / "ported", repo / "tests" / "models" / "test_ported.py"
    try:
        edit(folder / "model.py", "OUTPUT_DIM = 4", "OUTPUT_DIM = 7")
        edit(folder / "model.toml", 'output_suffix = ".npy"', 'output_suffix = ".scores.npy"')
        edit(folder / "sample_request.json", '"results/ported/samples/clips/clip-000.npy"',
             '"results/ported/samples/clips/clip-000.scores.npy"')
        made = run(repo, sys.executable, str(folder / "make_weights.py"))
        assert made.returncode == 0, made.stderr
        tested = run(repo, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     str(test.relative_to(repo)))
        assert tested.returncode == 0, tested.stdout + tested.stderr
        edit(folder / "serving.py", "return [codecs.encode(net(clip), NPY) for clip in clips]",
             "return [b'not an npy' for clip in clips]")
        tested = run(repo, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     str(test.relative_to(repo)))
        assert tested.returncode != 0
        assert "failed" in tested.stdout and "not an .npy file" in tested.stdout, tested.stdout
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        test.unlink(missing_ok=True)
