"""The local pipeline run: plan, budgets, scheduling, failure, live view, report.

The scheduler gets a fake "run one model" callable (threads and real time,
no model server); ``run_pipeline`` runs against the session's moto stack
with a fake model runner that writes the outputs itself.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from serving.aws import ClientFactory
from serving.errors import ConfigError, ModelSpecError, TransformError
from serving.localpipeline import (
    LiveView,
    ModelReport,
    ModelResult,
    ModelWork,
    PipelineReport,
    Resources,
    Scheduler,
    detect_gpu_memory_mb,
    load_graph,
    plan,
    report_message,
    run_pipeline,
)
from serving.localpipeline.inputs import select
from serving.localpipeline.scheduler import ProgressFn
from serving.modelspec import ModelSpec
from serving.pipeline import Graph
from serving.settings import Settings


def spec(name: str, *deps: str, image: str = "cpu", gpu: int = 0, cpu: int = 1,
         count: int = 1) -> ModelSpec:
    return ModelSpec(
        name=name, folder=Path("/models") / name, image=image, instance_type="ml.m5.large",
        content_type="application/jsonlines", accept="application/jsonlines",
        inputs={"x": "$input", **{d: d for d in deps}}, depends_on=deps,
        gpu_memory_mb=gpu, cpu_workers=cpu, instance_count=count,
    )


def graph(*specs: ModelSpec) -> Graph:
    return Graph({s.name: s for s in specs})


def diamond() -> Graph:
    """a -> (b, c) -> d, and an independent branch x -> y."""
    return graph(spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c"),
                 spec("x"), spec("y", "x"))


def roomy(cpus: int = 64, gpu: int = 0) -> Resources:
    return Resources(gpu_memory_mb=gpu, cpu_count=cpus)


class FakeModels:
    """A ``run_one`` that sleeps, records what ran at once, and can fail or wait on others."""

    def __init__(self, seconds: float = 0.05, fail: set[str] | None = None,
                 barrier: tuple[set[str], threading.Barrier] | None = None) -> None:
        self.seconds = seconds
        self.fail = fail or set()
        self.barrier = barrier
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.overlaps: list[frozenset[str]] = []
        self.calls: list[str] = []

    def __call__(self, name: str, progress: ProgressFn) -> ModelResult:
        with self.lock:
            self.calls.append(name)
            self.running.add(name)
            self.overlaps.append(frozenset(self.running))
        try:
            progress(0, 2)
            if self.barrier and name in self.barrier[0]:
                self.barrier[1].wait()
            time.sleep(self.seconds)
            progress(2, 2)
            if name in self.fail:
                raise TransformError(f"transform job {name} failed: on purpose")
            return ModelResult(written=2, job=f"job-{name}")
        finally:
            with self.lock:
                self.running.discard(name)


def by_name(reports: list[ModelReport]) -> dict[str, ModelReport]:
    return {r.model: r for r in reports}


def overlap(a: ModelReport, b: ModelReport) -> bool:
    assert a.started is not None and a.ended is not None
    assert b.started is not None and b.ended is not None
    return a.started < b.ended and b.started < a.ended


# --- plan ---------------------------------------------------------------------------


def test_plan_order_and_parallel_groups_of_a_diamond_and_a_branch() -> None:
    p = plan(diamond(), roomy())
    assert p.order == ("a", "b", "c", "d", "x", "y")
    assert p.groups == (("a", "x"), ("b", "c", "y"), ("d",))
    assert p.dependencies["d"] == ("b", "c")
    assert p.steps() == [["a", "x"], ["b", "c", "y"], ["d"]]
    text = "\n".join(p.describe())
    assert "order: a -> b -> c -> d -> x -> y" in text
    assert "group 1 (run at the same time): a, x" in text
    assert "group 2 (run at the same time): b, c, y" in text
    assert "d  after b, c" in text
    assert "CPU workers 64" in text


def test_cpu_budget_splits_a_group_into_steps() -> None:
    p = plan(diamond(), roomy(cpus=2))
    assert p.steps() == [["a", "x"], ["b", "c"], ["d", "y"]]
    assert "models start in 3 step(s)" not in "\n".join(p.describe())  # as many as groups
    p1 = plan(diamond(), roomy(cpus=1))
    assert p1.steps() == [["a"], ["b"], ["c"], ["d"], ["x"], ["y"]]
    assert "models start in 6 step(s)" in "\n".join(p1.describe())


def test_no_gpu_budget_makes_gpu_models_take_turns() -> None:
    g = graph(spec("g1", image="gpu", gpu=512), spec("g2", image="gpu"), spec("c"))
    p = plan(g, Resources(0, 8, gpu_source="no GPU: cupy is not importable"))
    assert p.gpu_capacity == 1
    assert [p.needs[n].gpu_units for n in ("g1", "g2", "c")] == [1, 1, 0]
    assert p.steps() == [["c", "g1"], ["g2"]]
    text = "\n".join(p.describe())
    assert "GPU memory 0 MB (no GPU: cupy is not importable): GPU models run on CPU" in text
    assert "runs on CPU, one GPU model at a time" in text


def test_gpu_budget_counts_declared_memory_times_instances() -> None:
    g = graph(spec("a", image="gpu", gpu=400), spec("b", image="gpu", gpu=300),
              spec("c", image="gpu", gpu=200, count=2), spec("big", image="gpu", gpu=5000))
    p = plan(g, Resources(1000, 8))
    assert p.needs["c"].gpu_memory_mb == 400
    assert p.needs["big"].gpu_units == 1000  # more than the budget: runs with no other
    assert "over the 1000 MB budget" in p.needs["big"].note
    assert p.fits(["a", "b"], "c") is False
    assert p.fits(["a"], "c") is True
    assert p.fits([], "big") is True
    assert p.fits(["a"], "big") is False


def test_a_model_needing_more_cpus_than_the_machine_runs_alone() -> None:
    p = plan(graph(spec("wide", cpu=16), spec("narrow")), roomy(cpus=4))
    assert p.needs["wide"].cpu_units == 4
    assert "needs 16 CPU workers, the machine has 4: runs alone" in p.needs["wide"].note
    assert p.steps() == [["narrow"], ["wide"]]


def test_resources_detect_prefers_explicit_values() -> None:
    probe_calls: list[int] = []

    def probe() -> tuple[int, str]:
        probe_calls.append(1)
        return 8000, "GPU 0 (fake) reports 8000 MB free"

    found = Resources.detect(probe_gpu=probe, os_cpu_count=lambda: 12)
    assert (found.gpu_memory_mb, found.cpu_count) == (8000, 12)
    assert found.gpu_source == "GPU 0 (fake) reports 8000 MB free"
    given = Resources.detect(256, 3, probe_gpu=probe, os_cpu_count=lambda: 12)
    assert (given.gpu_memory_mb, given.cpu_count, len(probe_calls)) == (256, 3, 1)
    assert Resources.detect(0, None, os_cpu_count=lambda: None).cpu_count == 1


def test_detect_gpu_memory_reads_gpu_0_through_cupy(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    mb = 1024 * 1024
    runtime = SimpleNamespace(getDeviceCount=lambda: 1,
                              getDeviceProperties=lambda i: {"name": b"Fake GPU"})
    device = SimpleNamespace(mem_info=(6000 * mb, 8000 * mb))
    fake = SimpleNamespace(cuda=SimpleNamespace(runtime=runtime, Device=lambda i: device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert detect_gpu_memory_mb() == (6000, "GPU 0 (Fake GPU) reports 6000 MB free of 8000 MB")
    runtime.getDeviceCount = lambda: 0
    assert detect_gpu_memory_mb() == (0, "no GPU: cupy sees none")
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy raises ImportError
    assert detect_gpu_memory_mb()[0] == 0
    assert detect_gpu_memory_mb()[1].startswith("no GPU: cupy is not importable")


@pytest.mark.gpu
def test_detect_gpu_memory_on_a_real_gpu() -> None:
    cupy = pytest.importorskip("cupy", reason="needs cupy and an NVIDIA GPU")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:
        pytest.skip(f"needs an NVIDIA GPU: cupy sees none ({type(err).__name__})")
    if count < 1:
        pytest.skip("needs an NVIDIA GPU: cupy sees none")
    budget, source = detect_gpu_memory_mb()
    assert budget > 0 and source.startswith("GPU 0 ("), source


# --- scheduler ------------------------------------------------------------------------


def test_models_start_after_their_dependencies_and_independent_ones_overlap() -> None:
    # a and x have no path between them: the barrier only opens if both run at once.
    fake = FakeModels(barrier=({"a", "x"}, threading.Barrier(2, timeout=10)))
    reports = by_name(Scheduler(plan(diamond(), roomy()), fake).run())
    assert all(r.status == "done" for r in reports.values())
    for name, deps in {"b": "a", "c": "a", "d": "bc", "y": "x"}.items():
        for dep in deps:
            assert reports[dep].ended <= reports[name].started  # type: ignore[operator]
    assert overlap(reports["a"], reports["x"])
    assert overlap(reports["b"], reports["c"])
    assert reports["a"].written == 2 and reports["a"].job == "job-a"


def test_gpu_memory_budget_is_never_exceeded() -> None:
    sizes = {"g1": 400, "g2": 400, "g3": 300, "g4": 600, "g5": 200}
    g = graph(*(spec(n, image="gpu", gpu=mb) for n, mb in sizes.items()), spec("cpu1"))
    fake = FakeModels(seconds=0.08)
    reports = by_name(Scheduler(plan(g, Resources(1000, 16)), fake).run())
    # From the recorded times: at every start, what runs fits the budget.
    for r in reports.values():
        at_once = [o for o in reports.values() if o.started <= r.started < o.ended]  # type: ignore[operator]
        assert sum(sizes.get(o.model, 0) for o in at_once) <= 1000, at_once
    assert max(sum(sizes.get(n, 0) for n in s) for s in fake.overlaps) <= 1000
    assert any(len(s & set(sizes)) >= 2 for s in fake.overlaps)  # it did run some together


def test_no_gpu_runs_gpu_models_one_at_a_time_next_to_cpu_models() -> None:
    g = graph(spec("g1", image="gpu", gpu=512), spec("g2", image="gpu", gpu=512),
              spec("c1"), spec("c2"))
    reports = by_name(Scheduler(plan(g, Resources(0, 8)), FakeModels(seconds=0.1)).run())
    assert not overlap(reports["g1"], reports["g2"])
    assert overlap(reports["c1"], reports["g1"]) or overlap(reports["c1"], reports["g2"])


def test_cpu_workers_never_exceed_the_machine() -> None:
    workers = {"a": 2, "b": 2, "c": 1, "wide": 8}
    g = graph(*(spec(n, cpu=w) for n, w in workers.items()))
    fake = FakeModels(seconds=0.05)
    reports = by_name(Scheduler(plan(g, roomy(cpus=3)), fake).run())
    for s in fake.overlaps:
        if "wide" in s:
            assert s == {"wide"}
        else:
            assert sum(workers[n] for n in s) <= 3
    assert all(r.status == "done" for r in reports.values())


def test_failure_skips_downstream_and_lets_independent_branches_finish() -> None:
    g = graph(spec("a"), spec("b", "a"), spec("c", "a"), spec("d", "b", "c"),
              spec("e", "d"), spec("x"), spec("y", "x"))
    fake = FakeModels(fail={"b"})
    reports = by_name(Scheduler(plan(g, roomy()), fake).run())
    assert reports["b"].status == "failed"
    assert reports["b"].reason == "transform job b failed: on purpose"
    assert reports["d"].status == "skipped" and reports["d"].reason == "upstream b failed"
    assert reports["e"].status == "skipped" and reports["e"].reason == "upstream b failed"
    assert [reports[n].status for n in ("a", "c", "x", "y")] == ["done"] * 4
    assert "d" not in fake.calls and "e" not in fake.calls
    assert reports["d"].started is None


def test_a_model_whose_runner_breaks_fails_with_the_error() -> None:
    def run_one(name: str, progress: ProgressFn) -> ModelResult:
        raise KeyError("boom")

    reports = Scheduler(plan(graph(spec("a"), spec("b", "a")), roomy()), run_one).run()
    assert reports[0].status == "failed" and reports[0].reason == "KeyError: 'boom'"
    assert reports[1].reason == "upstream a failed"


def test_finished_models_are_not_run_and_free_their_dependents() -> None:
    fake = FakeModels()
    done = {"a": ModelReport("a", status="skipped", skipped=3, reason="all 3 output(s) exist")}
    reports = by_name(Scheduler(plan(graph(spec("a"), spec("b", "a")), roomy()), fake).run(done))
    assert fake.calls == ["b"]
    assert reports["a"].status == "skipped" and reports["b"].status == "done"


def test_state_changes_and_progress_reach_the_callback() -> None:
    seen: list[tuple[str, str, int]] = []
    Scheduler(plan(graph(spec("a")), roomy()), FakeModels(),
              on_change=lambda r: seen.append((r.model, r.status, r.done_records))).run()
    assert seen[0] == ("a", "waiting", 0)
    assert ("a", "running", 2) in seen
    assert seen[-1] == ("a", "done", 2)


def test_an_inconsistent_plan_raises_instead_of_hanging() -> None:
    import dataclasses

    from serving.errors import SmserveError

    broken = dataclasses.replace(plan(graph(spec("a")), roomy()), cpu_capacity=0)
    with pytest.raises(SmserveError, match="cannot start a"):
        Scheduler(broken, FakeModels()).run()


# --- live view and report ---------------------------------------------------------------


def test_view_without_a_terminal_prints_a_line_per_state_change() -> None:
    lines: list[str] = []
    view = LiveView(["a", "bb"], lines.append, live=False, clock=lambda: 5.0)
    view.update(ModelReport("a", status="running", started=5.0, records=3))
    view.update(ModelReport("a", status="running", started=5.0, done_records=1,
                            total_records=3))
    view.update(ModelReport("a", status="done", started=5.0, ended=5.0, written=3))
    view.update(ModelReport("bb", status="skipped", reason="upstream a failed"))
    view.close()
    assert len(lines) == 3
    assert lines[0].endswith("a   running")
    assert "done     3 written, 0 skipped" in lines[1]
    assert "bb  skipped  upstream a failed" in lines[2]


def test_view_on_a_terminal_redraws_in_place() -> None:
    out = io.StringIO()
    now = [0.0]
    view = LiveView(["a", "b"], lambda text: print(text, file=out), live=True,
                    clock=lambda: now[0], interval=1.0)
    view.update(ModelReport("a", status="running", started=0.0, total_records=4))
    view.update(ModelReport("a", status="running", started=0.0, done_records=1,
                            total_records=4))  # progress within the interval: not drawn
    now[0] = 2.0
    view.update(ModelReport("a", status="running", started=0.0, done_records=3,
                            total_records=4))
    text = out.getvalue()
    assert text.count("\x1b[2K") == 4  # two draws of two lines
    assert "\x1b[2F" in text  # the second draw moved up over the first
    assert "a  running  3/4 records  2.0 s" in text
    assert "1/4 records" not in text
    now[0] = 5.0
    view.tick()  # time passes with no event: the running time moves on
    assert "a  running  3/4 records  5.0 s" in out.getvalue()


def test_report_message_and_exit_code() -> None:
    p = plan(graph(spec("a"), spec("b", "a"), spec("x")), roomy())
    models = (ModelReport("a", "failed", records=2, written=1, failed=1,
                          reason="transform job j failed: bad clip", started=1.0, ended=3.5),
              ModelReport("b", "skipped", records=2, reason="upstream a failed"),
              ModelReport("x", "done", records=2, written=2, started=1.0, ended=2.0))
    report = PipelineReport("s3://bkt/in/", 2, models, p, 0.0, 4.0)
    assert (report.ok, report.exit_code, report.failed_models) == (False, 4, ["a"])
    text = report_message(report)
    assert "pipeline on s3://bkt/in/: 2 input object(s), 3 model(s), 4.0 s: FAILED (a)" in text
    assert "transform job j failed: bad clip" in text
    assert "upstream a failed" in text
    assert report.to_dict()["models"][0]["seconds"] == 2.5
    ok = PipelineReport("s3://bkt/in/", 2, models[2:], p, 0.0, 1.0)
    assert (ok.ok, ok.exit_code) == (True, 0)


# --- bad graphs -------------------------------------------------------------------------


def write_model(root: Path, name: str, deps: tuple[str, ...] = (), *, toml: bool = True) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "serving.py").write_text("def model_fn(model_dir):\n    return None\n")
    if toml:
        inputs = "\n".join(f'{d} = "{d}"' for d in deps) or 'x = "$input"'
        (folder / "model.toml").write_text(
            'image = "cpu"\ninstance_type = "ml.m5.large"\n'
            'content_type = "application/jsonlines"\naccept = "application/jsonlines"\n'
            f"depends_on = {list(deps)!r}\n".replace("'", '"') + f"[inputs]\n{inputs}\n")


def test_a_cycle_is_refused_naming_the_files(tmp_path: Path) -> None:
    write_model(tmp_path, "a", ("c",))
    write_model(tmp_path, "b", ("a",))
    write_model(tmp_path, "c", ("b",))
    with pytest.raises(ModelSpecError) as err:
        load_graph(tmp_path)
    assert "cycle" in err.value.message
    assert str(tmp_path / "a" / "model.toml") in err.value.message


def test_a_folder_without_model_toml_is_refused_naming_it(tmp_path: Path) -> None:
    write_model(tmp_path, "a")
    write_model(tmp_path, "b", toml=False)
    with pytest.raises(ModelSpecError) as err:
        load_graph(tmp_path)
    assert str(tmp_path / "b") in err.value.message and "model.toml" in err.value.message


def test_an_unknown_model_name_is_refused_naming_the_file(tmp_path: Path) -> None:
    write_model(tmp_path, "a")
    write_model(tmp_path, "b", ("a",))
    g = load_graph(tmp_path)
    with pytest.raises(ModelSpecError) as err:
        select(g, ["b", "nope"])
    assert str(tmp_path / "nope" / "model.toml") in err.value.message
    assert "the models are a, b" in err.value.message
    sub = select(g, ["b"])
    assert sub.order() == ["b"] and plan(sub, roomy()).outside == {"b": ("a",)}


# --- run_pipeline, with a fake model runner, on the moto stack ----------------------------


class WritingRunner:
    """Writes each pending record's output itself, as a model would."""

    def __init__(self, clients: ClientFactory, fail: set[str] | None = None) -> None:
        self.s3 = clients.client("s3")
        self.fail = fail or set()
        self.calls: list[str] = []

    def __call__(self, work: ModelWork, progress: ProgressFn) -> ModelResult:
        self.calls.append(work.model)
        if work.model in self.fail:
            return ModelResult(failed=len(work.pending), reason="on purpose", job="j")
        for r in work.pending:
            self.s3.put_object(Bucket=r.bucket, Key=r.output_path, Body=b"out")
        return ModelResult(written=len(work.pending), job=f"job-{work.model}")


def put_inputs(clients: ClientFactory, bucket: str, keys: list[str]) -> None:
    for key in keys:
        clients.client("s3").put_object(Bucket=bucket, Key=key, Body=b"in")


def run(g: Graph, clients: ClientFactory, uri: str,
        **kw: Any) -> tuple[PipelineReport, list[str]]:
    lines: list[str] = []
    report = run_pipeline(g, clients, uri, echo=lines.append, resources=roomy(cpus=8), **kw)
    return report, lines


def test_run_builds_requests_runs_and_a_second_run_skips_everything(
        clients: ClientFactory, bucket: str) -> None:
    put_inputs(clients, bucket, ["in/a.npy", "in/sub/b.npy", "other/c.npy"])
    g = diamond()
    runner = WritingRunner(clients)
    report, lines = run(g, clients, f"s3://{bucket}/in/", run_model=runner)
    assert report.exit_code == 0
    assert sorted(runner.calls) == ["a", "b", "c", "d", "x", "y"]
    s3 = clients.client("s3")
    assert s3.head_object(Bucket=bucket, Key="results/d/in/sub/b.out")
    assert "requests: 2 input object(s)" in lines
    runner.calls.clear()
    again, lines = run(g, clients, f"s3://{bucket}/in/", run_model=runner)
    assert runner.calls == []
    assert [m.status for m in again.models] == ["skipped"] * 6
    assert again.model("d").reason == "all 2 output(s) exist"
    overwritten, _ = run(g, clients, f"s3://{bucket}/in/", run_model=runner, overwrite=True)
    assert len(runner.calls) == 6
    assert overwritten.model("a").written == 2


def test_run_redoes_only_missing_outputs_and_reports_the_failure(
        clients: ClientFactory, bucket: str) -> None:
    put_inputs(clients, bucket, ["in/a.npy", "in/b.npy"])
    clients.client("s3").put_object(Bucket=bucket, Key="results/a/in/a.out", Body=b"x")
    g = graph(spec("a"), spec("b", "a"), spec("x"))
    report, lines = run(g, clients, f"s3://{bucket}/in/",
                        run_model=WritingRunner(clients, fail={"a"}))
    assert any(line.endswith("a  failed   on purpose") for line in lines)
    a = report.model("a")
    assert (a.status, a.skipped, a.failed, a.reason) == ("failed", 1, 1, "on purpose")
    assert report.model("b").reason == "upstream a failed"
    assert report.model("x").status == "done"
    assert report.exit_code == 4
    assert "FAILED (a)" in report_message(report)


def test_dry_run_prints_the_plan_and_counts_and_runs_nothing(
        clients: ClientFactory, bucket: str) -> None:
    put_inputs(clients, bucket, ["in/a.npy", "in/b.npy"])
    clients.client("s3").put_object(Bucket=bucket, Key="results/a/in/a.out", Body=b"x")
    runner = WritingRunner(clients)
    report, lines = run(diamond(), clients, f"s3://{bucket}/in/", run_model=runner,
                        dry_run=True)
    text = "\n".join(lines)
    assert runner.calls == []
    assert "order: a -> b -> c -> d -> x -> y" in text
    assert "group 2 (run at the same time): b, c, y" in text
    assert "a  2 record(s): 1 to run, 1 output(s) exist" in text
    assert "dry run on" in text and "nothing was run" in text
    assert report.model("a").status == "planned"
    keys = [o["Key"] for o in clients.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["in/a.npy", "in/b.npy", "results/a/in/a.out"]


def test_run_refuses_an_empty_prefix_and_a_bucket_the_containers_may_not_use(
        clients: ClientFactory, bucket: str, settings: Settings) -> None:
    with pytest.raises(ConfigError, match="no input objects under"):
        run(diamond(), clients, f"s3://{bucket}/nothing/", run_model=WritingRunner(clients))
    strict = ClientFactory(Settings.from_environ({**settings.environ,
                                                  "SMSERVE_ALLOWED_BUCKETS": "other"}))
    with pytest.raises(ConfigError, match="SMSERVE_ALLOWED_BUCKETS"):
        run(diamond(), strict, f"s3://{bucket}/in/", run_model=WritingRunner(clients))


def test_input_listing_leaves_out_the_runs_own_outputs(
        clients: ClientFactory, bucket: str) -> None:
    put_inputs(clients, bucket, ["a.npy", "results/x/old.out", "smserve-work/j/input/r.jsonl",
                                 "folder/"])
    report, _ = run(graph(spec("x")), clients, f"s3://{bucket}/",
                    run_model=WritingRunner(clients))
    assert report.inputs == 1


def test_models_option_warns_about_missing_upstream_outputs(
        clients: ClientFactory, bucket: str) -> None:
    put_inputs(clients, bucket, ["in/a.npy", "in/b.npy"])
    clients.client("s3").put_object(Bucket=bucket, Key="results/a/in/a.out", Body=b"x")
    runner = WritingRunner(clients)
    report, lines = run(graph(spec("a"), spec("b", "a")), clients, f"s3://{bucket}/in/",
                        models=["b"], run_model=runner)
    assert runner.calls == ["b"] and [m.model for m in report.models] == ["b"]
    assert "b after a" not in "\n".join(lines)
    assert any("reads existing outputs of a" in line for line in lines)
    assert any("warning: 1 of them read outputs of a that do not exist" in line
               for line in lines)


class LabelledRunner(WritingRunner):
    """A WritingRunner that says which runner ran each model, as TransformRunner does."""

    def __call__(self, work: ModelWork, progress: ProgressFn) -> ModelResult:
        result = super().__call__(work, progress)
        label = "docker smserve-gpu:0.1.0 (on the CPU: the engine has no NVIDIA runtime)" \
            if work.model == "a" else "local process"
        return dataclasses.replace(result, runner=label)


def test_the_view_and_the_report_say_which_runner_ran_each_model(
        clients: ClientFactory, bucket: str) -> None:
    put_inputs(clients, bucket, ["in/a.npy"])
    g = graph(spec("a"), spec("b", "a"), spec("x"))
    report, lines = run(g, clients, f"s3://{bucket}/in/",
                        run_model=LabelledRunner(clients, fail={"x"}))
    done_a = [line for line in lines if " a  done" in line]
    assert done_a and done_a[0].endswith(
        "-> docker smserve-gpu:0.1.0 (on the CPU: the engine has no NVIDIA runtime)")
    assert any(" b  done" in line and line.endswith("-> local process") for line in lines)
    assert any(" x  failed (local process)   on purpose" in line for line in lines)
    assert report.model("a").runner.startswith("docker smserve-gpu:0.1.0")
    assert report.to_dict()["models"][0]["runner"] == report.models[0].runner
    message = report_message(report)
    assert "-> docker smserve-gpu:0.1.0 (on the CPU" in message
    assert "-> local process" in message
