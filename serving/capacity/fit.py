"""The figures a simulated day really had, fitted from its jobs and runs.

A simulated day's model servers do not start in the planned minutes, and its
records do not take the planned seconds; :func:`effective_config` measures
what they took, so the model's prediction for *those* figures can be set
beside the measured day (:mod:`serving.capacity.simulate`).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from serving.capacity.config import CapacityConfig
from serving.capacity.model import Run, makespan


@dataclass
class JobFigure:
    """One transform job of a simulated day, in simulated seconds."""

    records: int
    wall: float  # simulated seconds, CreateTransformJob to its end
    plane: float  # simulated seconds the data plane took


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float] | None:
    """Least squares ``y = a + b x`` with ``a, b >= 0``; None without two distinct ``x``."""
    if len({x for x, _ in points}) < 2:
        return None
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    a = my - b * mx
    if b < 0:  # no growth with the batch: a constant
        return max(0.0, my), 0.0
    if a < 0:  # through the origin
        return 0.0, sum(x * y for x, y in points) / sum(x * x for x, _ in points)
    return a, b


def effective_config(cfg: CapacityConfig, runs: list[Run], figures: Mapping[str, list[JobFigure]],
               counts: Mapping[str, int]) -> tuple[CapacityConfig, dict[str, dict[str, float]]]:
    """``cfg`` with the start-up, seconds per record, instances and run overhead it ran with.

    Each model's jobs give ``wall = startup + records * per_record`` by least
    squares (when the batches differ in size; else the data plane's seconds per
    record, and the mean of the rest as start-up); the runs give the run's own
    overhead, ``run - jobs = overhead + records * per_record``, the same way.
    The local stack runs ``model.toml``'s instance count (``counts``), whatever
    ``capacity.toml`` plans.
    """
    changes: dict[str, dict[str, Any]] = {}
    measured: dict[str, dict[str, float]] = {}
    for name, jobs in figures.items():
        if not jobs:
            continue
        records = sum(j.records for j in jobs)
        count = counts.get(name, cfg.models[name].instance_count)
        fit = fit_line([(j.records, j.wall) for j in jobs])
        if fit is None:
            per_record = max(sum(j.plane for j in jobs) / records, 1e-6)
            startup = max(0.0, statistics.fmean(j.wall - j.records * per_record for j in jobs))
        else:
            startup, per_record = fit[0], max(fit[1], 1e-6)
        changes[name] = {"seconds_per_record": per_record * count, "startup_seconds": startup,
                         "instance_count": count}
        measured[name] = {"jobs": len(jobs), "records": records,
                          "seconds_per_record": per_record * count, "startup_seconds": startup,
                          "data_plane_seconds_per_record": sum(j.plane for j in jobs) / records}
    effective = cfg.with_models(**changes)
    points = [(r.records, r.end - r.taken - makespan(effective, r.jobs)) for r in runs
              if r.records]
    fit = fit_line(points)
    if fit is None:
        fit = (max(0.0, statistics.fmean(y for _, y in points)) if points else 0.0, 0.0)
    measured["run"] = {"overhead_seconds": fit[0], "seconds_per_record": fit[1],
                       "runs": len(points)}
    dag = replace(effective.dag, run_overhead_seconds=fit[0], run_seconds_per_record=fit[1])
    return replace(effective, dag=dag), measured
