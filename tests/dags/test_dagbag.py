"""The DAG files: they import cleanly, fast and without I/O, and build the graphs as designed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from local_test.airflow_setup import DAGS

pytestmark = pytest.mark.integration

DAG_IDS = {"sync_data_main", "sync_data_dev", "inference_main", "inference_dev"}


def _edges(dag: Any) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def _upstream(dag: Any, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).get_flat_relative_ids(upstream=True))


def test_the_dag_folder_defines_the_four_dags_and_nothing_else(dags: dict[str, Any]) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=DAGS, bundle_path=DAGS, bundle_name="dags-folder")
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS
    parsed = sorted(str(Path(s.file)) for s in bag.dagbag_stats)
    assert parsed == ["inference/dag.py", "sync/dag.py"], \
        "only the DAG files are parsed (.airflowignore keeps smserve_dags/ out)"


@pytest.mark.parametrize("dag_id", ["inference_main", "inference_dev"])
def test_inference_graph_follows_the_model_graph(dags: dict[str, Any], dag_id: str) -> None:
    dag = dags[dag_id]
    assert _edges(dag) == {
        ("wait_for_messages", "frame_features.transform"),
        ("wait_for_messages", "scene_classifier.transform"),
        ("wait_for_messages", "clip_stats.transform"),
        ("frame_features.transform", "scene_classifier.transform"),
        ("scene_classifier.transform", "delete_messages"),
        ("clip_stats.transform", "delete_messages"),
        ("delete_messages", "report"),
        # the report waits for every model directly, not only through delete_messages
        ("frame_features.transform", "report"),
        ("scene_classifier.transform", "report"),
        ("clip_stats.transform", "report"),
    }
    # independent models have no path between them, so they run at the same time
    assert "frame_features.transform" not in _upstream(dag, "clip_stats.transform")
    assert "clip_stats.transform" not in _upstream(dag, "scene_classifier.transform")
    # deletion waits for every model; the report sees every task
    assert {"frame_features.transform", "scene_classifier.transform",
            "clip_stats.transform"} <= _upstream(dag, "delete_messages")
    assert _upstream(dag, "report") == {t.task_id for t in dag.tasks} - {"report"}
    assert dag.get_task("report").trigger_rule == "all_done"
    # deletion runs whatever the models did: it deletes what every model finished
    assert dag.get_task("delete_messages").trigger_rule == "all_done"
    assert dag.get_task("wait_for_messages").mode == "reschedule"
    assert dag.get_task("frame_features.transform").mode == "reschedule"
    # scheduler hiccups are retried by the sensor and the transforms (neither loses a message
    # nor runs a job twice: the sensor never deletes, a retried transform adopts its job)
    assert dag.get_task("wait_for_messages").retries == 2
    assert {dag.get_task(f"{m}.transform").retries
            for m in ("frame_features", "scene_classifier", "clip_stats")} == {2}
    assert set(dag.task_group.children) >= {"frame_features", "scene_classifier", "clip_stats"}
    assert dag.max_active_runs == 1 and dag.catchup is False


@pytest.mark.parametrize("dag_id", ["sync_data_main", "sync_data_dev"])
def test_sync_graph_maps_one_task_per_camera_angle(dags: dict[str, Any], dag_id: str) -> None:
    dag = dags[dag_id]
    assert _edges(dag) == {
        ("camera_angles", "sync_current_month"), ("camera_angles", "sync_previous_month"),
        ("sync_current_month", "report"), ("sync_previous_month", "report")}
    for task_id in ("sync_current_month", "sync_previous_month"):
        assert type(dag.get_task(task_id)).__name__.endswith("MappedOperator")
    assert dag.get_task("report").trigger_rule == "all_done"
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_schedules(dags: dict[str, Any]) -> None:
    assert dags["sync_data_main"].schedule == "@hourly"
    assert dags["inference_main"].schedule == timedelta(minutes=10)
    for dag_id in ("sync_data_dev", "inference_dev"):
        assert dags[dag_id].schedule is None


_PARSE = textwrap.dedent("""
    import json, socket, sys, time

    calls = []
    def refuse(what):
        def call(*args, **kwargs):
            calls.append(what)
            raise RuntimeError(what + " at import")
        return call

    socket.socket.connect = refuse("socket.connect")
    socket.create_connection = refuse("socket.create_connection")
    socket.getaddrinfo = refuse("socket.getaddrinfo")
    from airflow.sdk import BaseHook, Variable
    Variable.get = refuse("Variable.get")
    BaseHook.get_connection = refuse("BaseHook.get_connection")
    from airflow.dag_processing.dagbag import BundleDagBag

    dags = sys.argv[1]
    bag = BundleDagBag(dag_folder=dags, bundle_path=dags, bundle_name="dags-folder")
    print(json.dumps({
        "errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dags": sorted(bag.dag_ids),
        "seconds": {str(s.file): s.duration.total_seconds() for s in bag.dagbag_stats},
        "calls": calls,
        "aws_sdk_imported": [m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore")],
        "heavy_imported": sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[2:])),
    }))
""")


#: Packages a DAG file must not import at parse time (the scheduler parses every
#: file every few seconds): what would make parsing slow, not a measured time.
HEAVY = ("boto3", "botocore", "numpy", "chainer", "sagemaker_inference", "moto", "docker",
         "pandas", "requests")


def test_dag_files_import_nothing_heavy_and_do_no_io(tmp_path: Path) -> None:
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}"}
    env.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
    done = subprocess.run([sys.executable, "-c", _PARSE, str(DAGS), *HEAVY], env=env, text=True,
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert set(found["dags"]) == DAG_IDS
    assert found["calls"] == [], "a DAG file touched the network, a Variable or a connection"
    assert found["aws_sdk_imported"] == [], "DAG files must not import boto3 at parse time"
    assert found["heavy_imported"] == [], "DAG files import these at parse time"


def _airflow_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``airflow <args>`` as a user runs it: a fresh home, dags/ as the DAGs folder."""
    from local_test.airflow_setup import airflow_environ

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AIRFLOW") and k != "PYTHONPATH"}
    env.update(airflow_environ(home))
    # only the venv's packages: nothing of the repository is importable but what dags/ holds
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env,
                          cwd=home, text=True, capture_output=True, timeout=300, check=False)


def test_the_cli_imports_the_dags_package_without_the_bundle_on_sys_path(tmp_path: Path) -> None:
    # `dags list --local` and `list-import-errors --local` parse with a plain DagBag, which
    # does not put the DAGs folder on sys.path: the DAG files must find smserve_dags anyway
    migrated = _airflow_cli(tmp_path, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    errors = _airflow_cli(tmp_path, "dags", "list-import-errors", "--local", "-o", "json")
    assert errors.returncode == 0, errors.stdout[-3000:] + errors.stderr[-3000:]
    assert json.loads(errors.stdout.strip().splitlines()[-1]) == []
    listed = _airflow_cli(tmp_path, "dags", "list", "--local", "-o", "json")
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-3000:]
    found = json.loads(listed.stdout.strip().splitlines()[-1])
    assert {d["dag_id"] for d in found} == DAG_IDS
    assert {Path(d["fileloc"]).relative_to(DAGS).as_posix() for d in found} == {
        "inference/dag.py", "sync/dag.py"}


def test_the_dags_package_has_a_name_no_other_bundle_clashes_with(tmp_path: Path) -> None:
    # another bundle's top-level `config` and `operators` come first on sys.path: ours is
    # imported under smserve_dags, so the DAGs still parse and use their own modules
    other = tmp_path / "other_bundle"
    (other / "operators").mkdir(parents=True)
    (other / "operators" / "__init__.py").write_text("raise ImportError('the other bundle')\n")
    (other / "config.py").write_text("raise ImportError('the other bundle')\n")
    code = textwrap.dedent("""
        import json, sys
        sys.path.insert(0, sys.argv[2])
        from airflow.dag_processing.dagbag import BundleDagBag
        bag = BundleDagBag(dag_folder=sys.argv[1], bundle_path=sys.argv[1],
                           bundle_name="dags-folder")
        print(json.dumps({"errors": {str(k): str(v) for k, v in bag.import_errors.items()},
                          "dags": sorted(bag.dag_ids),
                          "config": sys.modules["smserve_dags.config"].__file__}))
    """)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path),
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'airflow.db'}"}
    done = subprocess.run([sys.executable, "-c", code, str(DAGS), str(other)], env=env,
                          text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert set(found["dags"]) == DAG_IDS
    assert Path(found["config"]) == DAGS / "smserve_dags" / "config.py"
