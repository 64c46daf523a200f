"""Wall time of the example pipeline vs its models run alone; time spent outside the models.

``--clips`` synthetic clips (default 6) go to the embedded stack, then, in
one run:

1. **pipeline**: :func:`serving.localpipeline.run_pipeline` over every model
   of ``models/`` (one local batch transform each, independent models at the
   same time, the machine's budgets);
2. **alone**: each model by itself (``models=[name]``, ``overwrite``), one
   after the other, on the same input: its transform's time with nothing
   else running.

``wall_over_sum_alone`` = pipeline wall time / the sum of the models' times
alone: below 1 when parallel branches overlap, 1 plus the overhead for a pure
chain. ``outside_share`` = the part of the pipeline's wall time when no
model's data plane was running (containers healthy -> containers stopped,
merged over models): planning, listing, existence checks, request uploads,
container starts and stops, reading the answers.

    .venv/bin/python bench/pipeline_local.py [--clips 6]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import (
    BUCKET,
    MODELS,
    OUTPUT_PREFIX,
    bench_environ,
    embedded_stack,
    json_line,
    machine,
    prepare_process,
    r3,
    say,
)

INPUT_PREFIX = "clips/"


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``[start, end]`` intervals."""
    total = 0.0
    end = float("-inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def timing_runner(env: Mapping[str, str]) -> tuple[Any, threading.local,
                                                   dict[str, dict[str, float]]]:
    """A ProcessRunner that records, per model, container start and data-plane times.

    Returns:
        ``(runner, current, marks)``: set ``current.model`` in the model's
        thread; ``marks[model]`` gets ``start``, ``healthy`` and ``stop``
        (monotonic seconds).
    """
    from serving.transform import ProcessRunner

    current = threading.local()
    marks: dict[str, dict[str, float]] = {}
    lock = threading.Lock()

    class TimingRunner(ProcessRunner):
        def start(self, model_dir: Path, environment: Mapping[str, str] | None = None,
                  count: int = 1) -> list[Any]:
            model = getattr(current, "model", "?")
            begun = time.monotonic()
            containers = super().start(model_dir, environment, count)
            healthy = time.monotonic()
            with lock:
                marks[model] = {"start": begun, "healthy": healthy}
            for container in containers:
                stop = container.stop

                def timed_stop(grace: float | None = None, _stop: Any = stop,
                               _model: str = model) -> None:
                    with lock:
                        marks[_model].setdefault("stop", time.monotonic())
                    _stop(grace)

                container.stop = timed_stop  # type: ignore[method-assign]
            return containers

    return TimingRunner(env=env), current, marks


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the figures, then one JSON line."""
    prepare_process()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=6, help="input clips")
    parser.add_argument("--models-dir", default=str(MODELS), help="folder of model folders")
    parser.add_argument("--stack", choices=("process", "thread"), default="process",
                        help="run the embedded stack in its own process (default) or a thread")
    args = parser.parse_args(argv)

    from local_test.clips import upload_clips
    from serving.aws import ClientFactory
    from serving.localpipeline import ModelWork, TransformRunner, load_graph, run_pipeline
    from serving.localpipeline.scheduler import ModelResult, ProgressFn
    from serving.settings import Settings

    say(f"machine: {machine()}")
    graph = load_graph(args.models_dir)
    with embedded_stack(args.stack) as stack:
        settings = Settings.from_environ(bench_environ(stack))
        clients = ClientFactory(settings)
        s3 = clients.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        upload_clips(s3, BUCKET, INPUT_PREFIX, args.clips)
        uri = f"s3://{BUCKET}/{INPUT_PREFIX}"
        runner, current, marks = timing_runner(settings.environ)
        transforms = TransformRunner(graph, clients, BUCKET, runner=runner)

        def run_model(work: ModelWork, progress: ProgressFn) -> ModelResult:
            current.model = work.model
            return transforms(work, progress)

        def quiet(_line: str) -> None:
            pass

        say(f"pipeline: {' -> '.join(graph.order())} (groups: "
            f"{' | '.join(', '.join(g) for g in graph.levels())}), {args.clips} clips")
        report = run_pipeline(graph, clients, uri, echo=quiet, run_model=run_model,
                              output_prefix=OUTPUT_PREFIX)
        if not report.ok:
            say(f"the pipeline failed: {report.failed_models}")
            return 1
        wall = report.seconds
        in_pipeline = {m.model: m.seconds or 0.0 for m in report.models}
        pipeline_marks = {name: dict(m) for name, m in marks.items()}
        data_plane = union_seconds((m["healthy"], m["stop"]) for m in pipeline_marks.values())
        starts = union_seconds((m["start"], m["healthy"]) for m in pipeline_marks.values())
        first_start = min(m.started for m in report.models if m.started is not None)
        planning = first_start - report.started

        alone: dict[str, float] = {}
        for name in graph.order():
            one = run_pipeline(graph, clients, uri, models=[name], overwrite=True, echo=quiet,
                               run_model=run_model, output_prefix=OUTPUT_PREFIX)
            alone[name] = one.model(name).seconds or 0.0
        sum_alone = sum(alone.values())

    outside = 1.0 - data_plane / wall if wall else 0.0
    say("")
    say(f"{'model':<18} {'alone':>8} {'in pipeline':>12} {'container start':>16} "
        f"{'data plane':>11}")
    per_model: dict[str, dict[str, float]] = {}
    for name in graph.order():
        m = pipeline_marks.get(name, {})
        start_s = m.get("healthy", 0.0) - m.get("start", 0.0)
        plane_s = m.get("stop", 0.0) - m.get("healthy", 0.0)
        per_model[name] = {"alone_s": r3(alone[name]), "in_pipeline_s": r3(in_pipeline[name]),
                           "container_start_s": r3(start_s), "data_plane_s": r3(plane_s)}
        say(f"{name:<18} {alone[name]:7.2f}s {in_pipeline[name]:11.2f}s {start_s:15.2f}s "
            f"{plane_s:10.2f}s")
    say("")
    say(f"pipeline wall time:        {wall:7.2f} s")
    say(f"sum of models alone:       {sum_alone:7.2f} s  (wall / sum = {wall / sum_alone:.2f})")
    say(f"outside the models:        {wall - data_plane:7.2f} s  ({outside:.0%} of wall time; "
        f"container starts {starts:.2f} s, planning and existence checks {planning:.2f} s)")
    say(json_line({
        "bench": "pipeline_local",
        "clips": args.clips,
        "models": graph.order(),
        "groups": graph.levels(),
        "wall_s": r3(wall),
        "sum_alone_s": r3(sum_alone),
        "wall_over_sum_alone": r3(wall / sum_alone),
        "sum_in_pipeline_s": r3(sum(in_pipeline.values())),
        "data_plane_union_s": r3(data_plane),
        "container_start_union_s": r3(starts),
        "planning_s": r3(planning),
        "outside_share": r3(outside),
        "per_model": per_model,
        "cpus": report.plan.resources.cpu_count,
        "gpu_memory_mb": report.plan.resources.gpu_memory_mb,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
