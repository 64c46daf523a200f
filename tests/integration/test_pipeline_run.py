"""``run_pipeline`` and ``smserve pipeline run`` with real model servers on the moto stack.

The models are tiny numpy-only folders written into ``tmp_path``: each reads
its ``.npy`` inputs, writes their sum plus one, and can be told to fail
(``PIPELINE_TEST_FAIL = "1"`` in its ``model.toml`` environment). Each model
run starts one real model server (a few seconds), so the graphs stay small.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from serving.aws import ClientFactory
from serving.local.stack import LocalStack
from serving.localpipeline import PipelineReport, load_graph, run_pipeline

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SERVING = '''\
"""Test model: output = sum of the .npy inputs + 1; fails when PIPELINE_TEST_FAIL=1."""

import os

import numpy as np

from serving import codecs, s3refs

NPY = "application/x-npy"


def model_fn(model_dir):
    return {"fail": os.environ.get("PIPELINE_TEST_FAIL") == "1"}


def input_fn(body, content_type):
    return s3refs.parse_records(body, content_type)


def compute(model, batch):
    if model["fail"]:
        raise ValueError("failing on purpose (PIPELINE_TEST_FAIL=1)")
    out = []
    for item in batch:
        total = sum(codecs.decode(item[k], NPY).astype(np.float64) for k in sorted(item))
        out.append(codecs.encode(total + 1, NPY))
    return out


def predict_fn(records, model):
    return s3refs.runtime().process(records, lambda batch: compute(model, batch), NPY)


def output_fn(results, accept):
    return s3refs.response(results)
'''


def write_model(root: Path, name: str, deps: tuple[str, ...] = (), *, image: str = "cpu",
                gpu_memory_mb: int = 0, fail: bool = False) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "serving.py").write_text(SERVING)
    inputs = "\n".join(f'{d} = "{d}"' for d in deps) or 'x = "$input"'
    deps_list = ", ".join(f'"{d}"' for d in deps)
    env = '[environment]\nPIPELINE_TEST_FAIL = "1"\n' if fail else ""
    (folder / "model.toml").write_text(
        f'image = "{image}"\ninstance_type = "ml.m5.large"\n'
        'content_type = "application/jsonlines"\naccept = "application/jsonlines"\n'
        f'depends_on = [{deps_list}]\noutput_suffix = ".npy"\n'
        f"gpu_memory_mb = {gpu_memory_mb}\n[inputs]\n{inputs}\n{env}")


def npy(value: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    return buf.getvalue()


def put_inputs(clients: ClientFactory, bucket: str, count: int) -> list[str]:
    keys = []
    for i in range(count):
        key = f"in/clip-{i}.npy"
        clients.client("s3").put_object(Bucket=bucket, Key=key,
                                        Body=npy(np.full(3, i, dtype=np.uint8)))
        keys.append(key)
    return keys


def read(clients: ClientFactory, bucket: str, key: str) -> np.ndarray:
    body = clients.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    return np.load(io.BytesIO(body), allow_pickle=False)


def keys_under(clients: ClientFactory, bucket: str, prefix: str) -> set[str]:
    pages = clients.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                          Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def overlap(report: PipelineReport, a: str, b: str) -> bool:
    ra, rb = report.model(a), report.model(b)
    assert None not in (ra.started, ra.ended, rb.started, rb.ended)
    return ra.started < rb.ended and rb.started < ra.ended  # type: ignore[operator]


@pytest.fixture()
def diamond(tmp_path: Path) -> Path:
    """a -> (b, c) -> d, and x on its own."""
    root = tmp_path / "models"
    write_model(root, "a")
    write_model(root, "b", ("a",))
    write_model(root, "c", ("a",))
    write_model(root, "d", ("b", "c"))
    write_model(root, "x")
    return root


def test_diamond_runs_in_parallel_and_a_second_run_starts_nothing(
        diamond: Path, clients: ClientFactory, bucket: str) -> None:
    put_inputs(clients, bucket, 3)
    lines: list[str] = []
    report = run_pipeline(load_graph(diamond), clients, f"s3://{bucket}/in/", cpu_count=4,
                          gpu_memory_mb=0, echo=lines.append)
    assert report.exit_code == 0, "\n".join(lines)
    assert [report.model(n).written for n in "abcdx"] == [3] * 5
    # d = (a + 1) + (a + 1) + 1 with a = clip + 1: the data really flowed through the graph.
    np.testing.assert_array_equal(read(clients, bucket, "results/d/in/clip-2.npy"), [9, 9, 9])
    np.testing.assert_array_equal(read(clients, bucket, "results/x/in/clip-1.npy"), [2, 2, 2])
    assert overlap(report, "a", "x")
    assert overlap(report, "b", "c")
    for name, deps in {"b": "a", "c": "a", "d": "bc"}.items():
        for dep in deps:
            assert report.model(dep).ended <= report.model(name).started  # type: ignore[operator]
    text = "\n".join(lines)
    assert "group 1 (run at the same time): a, x" in text
    assert "a  done     3 written, 0 skipped" in text  # the view, a line per state change

    work_before = keys_under(clients, bucket, "smserve-work/")
    lines.clear()
    again = run_pipeline(load_graph(diamond), clients, f"s3://{bucket}/in/", cpu_count=4,
                         echo=lines.append)
    assert again.exit_code == 0
    for m in again.models:
        assert (m.status, m.skipped, m.job, m.started) == ("skipped", 3, None, None), m
    assert keys_under(clients, bucket, "smserve-work/") == work_before  # no job was started
    assert again.seconds < 5


def test_gpu_memory_budget_keeps_gpu_models_apart(tmp_path: Path, clients: ClientFactory,
                                                  bucket: str) -> None:
    root = tmp_path / "models"
    write_model(root, "g1", image="gpu", gpu_memory_mb=300)
    write_model(root, "g2", image="gpu", gpu_memory_mb=300)
    put_inputs(clients, bucket, 1)
    lines: list[str] = []
    report = run_pipeline(load_graph(root), clients, f"s3://{bucket}/in/", gpu_memory_mb=500,
                          cpu_count=4, echo=lines.append)
    assert report.exit_code == 0, "\n".join(lines)
    assert not overlap(report, "g1", "g2")  # 300 + 300 MB > 500 MB
    assert "budgets: GPU memory 500 MB (--gpu-memory-mb)" in "\n".join(lines)


# --- the command ------------------------------------------------------------------------------


def smserve(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("smserve")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "serving.cli"]
    return subprocess.run([*command, *args], env=dict(env), cwd=ROOT, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)


@pytest.fixture()
def cli_env(stack: LocalStack) -> dict[str, str]:
    env = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR", "JAVA_HOME") if k in os.environ}
    env.update(stack.environ())
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    env["PYTHONPATH"] = str(ROOT)  # this checkout's serving, whatever the venv installed
    return env  # no SMSERVE_ALLOWED_BUCKETS: the command allows the input bucket itself


def test_command_failure_in_the_middle_skips_downstream(
        tmp_path: Path, clients: ClientFactory, bucket: str, cli_env: dict[str, str]) -> None:
    root = tmp_path / "models"
    write_model(root, "a")
    write_model(root, "b", ("a",))
    write_model(root, "c", ("a",), fail=True)
    write_model(root, "d", ("b", "c"))
    put_inputs(clients, bucket, 2)
    proc = smserve("pipeline", "run", "--input", f"s3://{bucket}/in/", "--models-dir",
                   str(root), "--cpu-workers", "4", env=cli_env)
    shown = f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 4, shown
    assert f"SMSERVE_ALLOWED_BUCKETS is not set: the model containers may use s3://{bucket}" \
        in proc.stdout, shown
    assert "FAILED (c)" in proc.stdout, shown
    assert "upstream c failed" in proc.stdout, shown
    assert "PredictionError" in proc.stdout, shown  # the transform's FailureReason
    assert keys_under(clients, bucket, "results/b/") == {"results/b/in/clip-0.npy",
                                                          "results/b/in/clip-1.npy"}
    assert keys_under(clients, bucket, "results/d/") == set()


def test_command_dry_run_prints_the_plan_and_writes_nothing(
        diamond: Path, clients: ClientFactory, bucket: str, cli_env: dict[str, str]) -> None:
    put_inputs(clients, bucket, 2)
    proc = smserve("pipeline", "run", "--input", f"s3://{bucket}/in/", "--models-dir",
                   str(diamond), "--dry-run", "--gpu-memory-mb", "0", "--cpu-workers", "2",
                   env=cli_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for needle in ("d  after b, c", "order: a -> b -> c -> d -> x",
                   "group 1 (run at the same time): a, x",
                   "group 2 (run at the same time): b, c", "group 3 (run at the same time): d",
                   "CPU workers 2 (--cpu-workers)", "a  2 record(s): 2 to run, 0 output(s) exist",
                   "nothing was run"):
        assert needle in out, f"{needle!r} not in\n{out}"
    assert keys_under(clients, bucket, "") == {"in/clip-0.npy", "in/clip-1.npy"}


def test_command_refuses_bad_graphs_naming_the_file(
        tmp_path: Path, cli_env: dict[str, str], bucket: str) -> None:
    cycle = tmp_path / "cycle"
    write_model(cycle, "a", ("b",))
    write_model(cycle, "b", ("a",))
    proc = smserve("pipeline", "run", "--input", f"s3://{bucket}/in/", "--models-dir",
                   str(cycle), "--dry-run", env=cli_env)
    assert proc.returncode == 2 and "cycle" in proc.stderr, proc.stderr
    assert str(cycle / "a" / "model.toml") in proc.stderr

    good = tmp_path / "good"
    write_model(good, "a")
    proc = smserve("pipeline", "run", "--input", f"s3://{bucket}/in/", "--models-dir",
                   str(good), "--models", "a,nope", "--dry-run", env=cli_env)
    assert proc.returncode == 2, proc.stderr
    assert str(good / "nope" / "model.toml") in proc.stderr

    (good / "b").mkdir()
    (good / "b" / "serving.py").write_text(SERVING)
    proc = smserve("pipeline", "run", "--input", f"s3://{bucket}/in/", "--models-dir",
                   str(good), "--dry-run", env=cli_env)
    assert proc.returncode == 2, proc.stderr
    assert f"{good / 'b'} has serving.py but no model.toml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_command_api_creates_models_from_the_recorded_ecr_image(
        tmp_path: Path, clients: ClientFactory, bucket: str, cli_env: dict[str, str],
        stack: LocalStack, stack_images: dict[str, str]) -> None:
    from serving import imagerecord

    root = tmp_path / "models"
    write_model(root, "a")
    put_inputs(clients, bucket, 1)
    images_file = tmp_path / "images.json"
    args = ("pipeline", "run", "--input", f"s3://{bucket}/in/", "--models-dir", str(root),
            "--api", "--output-prefix", "api-results/")
    env = {**cli_env, "SMSERVE_IMAGES_FILE": str(images_file)}

    refused = smserve(*args, env=env)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "no ECR image for the cpu model(s) at " + stack.endpoint_url in refused.stderr
    assert "smserve image push --flavor cpu --repository smserve-cpu" in refused.stderr

    imagerecord.record(images_file, "cpu", stack_images["cpu"], None, stack.endpoint_url)
    proc = smserve(*args, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert keys_under(clients, bucket, "api-results/a/") == {"api-results/a/in/clip-0.npy"}
    sm = clients.client("sagemaker")
    made = [m["ModelName"] for m in sm.list_models(NameContains="smserve-a-")["Models"]]
    assert len(made) == 1
    container = sm.describe_model(ModelName=made[0])["PrimaryContainer"]
    assert container["Image"] == stack_images["cpu"]
