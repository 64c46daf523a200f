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

    .venv/bin/python bench/pipeline_local.py [--clips 6] [--rounds 1]

Each round uploads fresh clips (nothing exists yet), runs the pipeline, then
each model alone; with several rounds the figures are medians.

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BUCKET,
    MODELS,
    OUTPUT_PREFIX,
    Run,
    bench_stack,
    r3,
    say,
    start_script,
    union_seconds,
)

INPUT_PREFIX = "clips/"


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


@dataclass
class Round:
    """One round's figures."""

    wall: float
    planning: float
    data_plane: float
    starts: float
    in_pipeline: dict[str, float]
    alone: dict[str, float]
    container_start: dict[str, float]
    plane: dict[str, float]

    @property
    def sum_alone(self) -> float:
        return sum(self.alone.values())

    @property
    def outside_share(self) -> float:
        return 1.0 - self.data_plane / self.wall if self.wall else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the figures, then one JSON line."""
    parser = start_script(__doc__)
    parser.add_argument("--clips", type=int, default=6, help="input clips")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of (pipeline, each model alone); medians are reported")
    parser.add_argument("--models-dir", default=str(MODELS), help="folder of model folders")
    args = parser.parse_args(argv)

    from local_test.clips import upload_clips
    from serving.localpipeline import ModelWork, TransformRunner, load_graph, run_pipeline
    from serving.localpipeline.scheduler import ModelResult, ProgressFn

    bench = Run("pipeline_local")
    graph = load_graph(args.models_dir)
    names = graph.order()
    say(f"pipeline: {' -> '.join(names)} (groups: "
        f"{' | '.join(', '.join(g) for g in graph.levels())}), {args.clips} clips, "
        f"{args.rounds} round(s)")
    rounds: list[Round] = []
    with bench_stack(args.stack, in_process=False) as setup:
        settings, clients, s3 = setup.settings, setup.clients, setup.s3
        runner, current, marks = timing_runner(settings.environ)
        transforms = TransformRunner(graph, clients, BUCKET, runner=runner)

        def run_model(work: ModelWork, progress: ProgressFn) -> ModelResult:
            current.model = work.model
            return transforms(work, progress)

        def quiet(_line: str) -> None:
            pass

        for number in range(args.rounds):
            prefix = f"{INPUT_PREFIX}round-{number}/"  # fresh inputs: nothing exists yet
            upload_clips(s3, BUCKET, prefix, args.clips)
            uri = f"s3://{BUCKET}/{prefix}"
            marks.clear()
            report = run_pipeline(graph, clients, uri, echo=quiet, run_model=run_model,
                                  output_prefix=OUTPUT_PREFIX)
            if not report.ok:
                say(f"the pipeline failed: {report.failed_models}")
                return 1
            got = {name: dict(m) for name, m in marks.items()}
            first_start = min(m.started for m in report.models if m.started is not None)
            alone: dict[str, float] = {}
            for name in names:
                one = run_pipeline(graph, clients, uri, models=[name], overwrite=True,
                                   echo=quiet, run_model=run_model, output_prefix=OUTPUT_PREFIX)
                alone[name] = one.model(name).seconds or 0.0
            rounds.append(Round(
                wall=report.seconds, planning=first_start - report.started,
                data_plane=union_seconds((m["healthy"], m["stop"]) for m in got.values()),
                starts=union_seconds((m["start"], m["healthy"]) for m in got.values()),
                in_pipeline={m.model: m.seconds or 0.0 for m in report.models}, alone=alone,
                container_start={n: got[n]["healthy"] - got[n]["start"] for n in names},
                plane={n: got[n]["stop"] - got[n]["healthy"] for n in names}))
            last = rounds[-1]
            say(f"  round {number + 1}: wall {last.wall:.2f} s, sum alone {last.sum_alone:.2f} s "
                f"(ratio {last.wall / last.sum_alone:.2f}), outside the models "
                f"{last.outside_share:.0%}")

    def med(values: Iterable[float]) -> float:
        return statistics.median(list(values))

    wall = med(r.wall for r in rounds)
    sum_alone = med(r.sum_alone for r in rounds)
    ratio = med(r.wall / r.sum_alone for r in rounds)
    outside = med(r.outside_share for r in rounds)
    data_plane = med(r.data_plane for r in rounds)
    starts = med(r.starts for r in rounds)
    planning = med(r.planning for r in rounds)
    say("")
    say(f"{'model':<18} {'alone':>8} {'in pipeline':>12} {'container start':>16} "
        f"{'data plane':>11}   (medians)")
    per_model: dict[str, dict[str, float]] = {}
    for name in names:
        row = {"alone_s": med(r.alone[name] for r in rounds),
               "in_pipeline_s": med(r.in_pipeline[name] for r in rounds),
               "container_start_s": med(r.container_start[name] for r in rounds),
               "data_plane_s": med(r.plane[name] for r in rounds)}
        per_model[name] = {k: r3(v) for k, v in row.items()}
        say(f"{name:<18} {row['alone_s']:7.2f}s {row['in_pipeline_s']:11.2f}s "
            f"{row['container_start_s']:15.2f}s {row['data_plane_s']:10.2f}s")
    say("")
    say(f"pipeline wall time:        {wall:7.2f} s")
    say(f"sum of models alone:       {sum_alone:7.2f} s")
    say(f"wall / sum alone:          {ratio:7.2f}    (each round's own ratio; the median)")
    say(f"outside the models:        {wall - data_plane:7.2f} s  ({outside:.0%} of wall time; "
        f"container starts {starts:.2f} s, planning and existence checks {planning:.2f} s)")
    bench.finish({
        "clips": args.clips,
        "rounds": len(rounds),
        "models": names,
        "groups": graph.levels(),
        "wall_s": r3(wall),
        "sum_alone_s": r3(sum_alone),
        "wall_over_sum_alone": r3(ratio),
        "wall_over_sum_alone_rounds": [r3(r.wall / r.sum_alone) for r in rounds],
        "sum_in_pipeline_s": r3(med(sum(r.in_pipeline.values()) for r in rounds)),
        "data_plane_union_s": r3(data_plane),
        "container_start_union_s": r3(starts),
        "planning_s": r3(planning),
        "outside_share": r3(outside),
        "per_model": per_model,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
