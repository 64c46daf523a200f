"""The capacity model: pure functions of a :class:`~serving.capacity.config.CapacityConfig`.

The inference DAG starts a run on every schedule tick, one run at a time (a
run still going at a tick makes the next one start when it ends). A run
waits for ``max_messages`` clips or ``max_wait_seconds`` (looking every
``poke_interval_seconds``), takes at most ``max_messages``, runs one
transform job per model in dependency order (independent models at the same
time, within the account's quotas) and deletes the messages at its end; an
empty batch skips the run. A job of ``n`` records on ``i`` instances takes
``startup + n * seconds_per_record / i``; the run adds ``run_overhead_seconds +
n * run_seconds_per_record`` of its own (receiving, request files, deletes).

:func:`day_runs` steps through the runs of a day with the arrivals of
:class:`~serving.capacity.config.Arrivals` (clip ``k`` arrives when the
cumulative rate reaches ``k``); :func:`summarize` turns runs (the model's, or
the ones a simulated day measured) into the figures both report, so the two
are computed the same way. :func:`plan` is what ``smserve plan`` prints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from serving.capacity.config import CapacityConfig

#: Runs ending this close to the peak (seconds) make the queue age at the peak.
PEAK_WINDOW = 3 * 3600.0
#: Smallest and largest ``max_messages`` the search tries (dags/smserve_dags/config.py's range).
MAX_MESSAGES_RANGE = (1, 10_000)


@dataclass(frozen=True)
class Run:
    """One DAG run.

    Attributes:
        start: when it started (seconds from the start of the window).
        taken: when it received its batch.
        end: when it deleted the batch's messages.
        records: clips in the batch (0: the run was skipped).
        oldest_arrival: when the batch's oldest clip arrived (None when empty).
        jobs: model -> seconds its transform job took.
    """

    start: float
    taken: float
    end: float
    records: int
    oldest_arrival: float | None = None
    jobs: Mapping[str, float] = field(default_factory=dict)


def makespan(cfg: CapacityConfig, durations: Mapping[str, float]) -> float:
    """Seconds from the first job's start to the last one's end.

    Jobs start in dependency order as soon as their dependencies are done and
    the quotas allow (``concurrent_transform_jobs``, instances per type).
    A model with a duration of 0 starts no job.
    """
    models = cfg.models
    done: dict[str, float] = {}
    running: list[tuple[float, str]] = []
    now = 0.0
    waiting = [m for m in models if m in durations]
    while waiting or running:
        for name in list(waiting):
            if not all(d in done for d in models[name].depends_on if d in durations):
                continue
            if durations[name] <= 0:
                done[name] = now
                waiting.remove(name)
                continue
            if len(running) >= cfg.concurrent_jobs or not _instances_free(cfg, running, name):
                continue
            running.append((now + durations[name], name))
            waiting.remove(name)
        if not running:
            if waiting:  # nothing can start: a dependency outside ``durations``
                for name in waiting:
                    done[name] = now
                waiting.clear()
            break
        running.sort()
        now, name = running.pop(0)
        done[name] = now
    return max(done.values(), default=0.0)


def _instances_free(cfg: CapacityConfig, running: Sequence[tuple[float, str]], name: str) -> bool:
    model = cfg.models[name]
    quota = cfg.instance_quota.get(model.instance_type)
    if quota is None:
        return True
    used = sum(cfg.models[r].instance_count for _, r in running
               if cfg.models[r].instance_type == model.instance_type)
    return used + model.instance_count <= quota


def job_durations(cfg: CapacityConfig, records: int) -> dict[str, float]:
    """Model -> seconds of its job for a batch of ``records``."""
    return {name: m.job_seconds(records) for name, m in cfg.models.items()}


def run_seconds(cfg: CapacityConfig, records: int) -> float:
    """A run of ``records`` clips, from its batch to its last deletion (0 when empty)."""
    if records <= 0:
        return 0.0
    dag = cfg.dag
    return (dag.run_overhead_seconds + records * dag.run_seconds_per_record
            + makespan(cfg, job_durations(cfg, records)))


def cycle_seconds(cfg: CapacityConfig, records: int | None = None) -> float:
    """Seconds between two full runs when the queue never runs dry."""
    n = cfg.dag.max_messages if records is None else records
    return max(cfg.dag.interval, run_seconds(cfg, n))


def capacity_per_hour(cfg: CapacityConfig, records: int | None = None) -> float:
    """Clips per hour the DAG processes with full batches: its sustained throughput."""
    n = cfg.dag.max_messages if records is None else records
    return n * 3600.0 / cycle_seconds(cfg, n)


def critical_path(cfg: CapacityConfig, records: int) -> list[str]:
    """The chain of models whose jobs, one after another, take longest."""
    durations = job_durations(cfg, records)
    finish: dict[str, float] = {}
    before: dict[str, str | None] = {}
    for name, model in cfg.models.items():
        deps = [d for d in model.depends_on if d in finish]
        prev = max(deps, key=lambda d: finish[d]) if deps else None
        before[name] = prev
        finish[name] = (finish[prev] if prev else 0.0) + durations[name]
    last: str | None = max(finish, key=lambda n: finish[n]) if finish else None
    chain: list[str] = []
    while last is not None:
        chain.append(last)
        last = before[last]
    return chain[::-1]


def bottleneck(cfg: CapacityConfig) -> str:
    """What limits the sustained throughput, in one sentence."""
    n = cfg.dag.max_messages
    run = run_seconds(cfg, n)
    if run <= cfg.dag.interval:
        return (f"the schedule: a full run of {n} clips takes {_dur(run)}, and runs start "
                f"{_dur(cfg.dag.interval)} apart; a larger max_messages raises throughput")
    own = cfg.dag.run_overhead_seconds + n * cfg.dag.run_seconds_per_record
    parts: list[tuple[float, str]] = [(own, "the run's own work (dag.run_overhead_seconds, "
                                       "dag.run_seconds_per_record)")]
    for name in critical_path(cfg, n):
        m = cfg.models[name]
        parts.append((m.startup_seconds, f"{name}'s job start-up"))
        parts.append((n * m.seconds_per_record / m.instance_count,
                      f"{name}'s records ({m.instance_count} x {m.instance_type})"))
    share, what = max(parts)
    return (f"{what}: {_dur(share)} of the {_dur(run)} a full run of {n} clips takes "
            f"(critical path: {' -> '.join(critical_path(cfg, n))})")


def _dur(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def day_runs(cfg: CapacityConfig, *, hours: float = 24.0, start_hour: float = 0.0) -> list[Run]:
    """The runs of ``hours`` from ``start_hour`` (queue empty at the start), as the model sees them.

    Runs that start inside the window run to their end; none starts after it.
    Times are seconds from the start of the window.
    """
    origin = start_hour * 3600.0
    horizon = hours * 3600.0
    dag = cfg.dag
    base = cfg.arrivals.cumulative(origin)

    def arrived(t: float) -> int:
        return math.floor(cfg.arrivals.cumulative(origin + t) - base + 1e-9)

    runs: list[Run] = []
    processed = 0
    start = 0.0
    while start < horizon:
        pokes = 0
        taken = start
        while True:  # the sensor: a full batch, or the wait is over
            visible = arrived(taken) - processed
            if visible >= dag.max_messages or taken - start >= dag.max_wait_seconds - 1e-9:
                break
            pokes += 1
            taken = start + pokes * dag.poke_interval_seconds
        n = min(visible, dag.max_messages)
        if n <= 0:
            runs.append(Run(start, taken, taken, 0))
        else:
            oldest = cfg.arrivals.arrival_time(processed + 1, origin=origin) - origin
            jobs = {k: v for k, v in job_durations(cfg, n).items() if v > 0}
            runs.append(Run(start, taken, taken + run_seconds(cfg, n), n, oldest, jobs))
            processed += n
        tick = (math.floor(start / dag.interval + 1e-9) + 1) * dag.interval
        start = max(runs[-1].end, tick)
    return runs


@dataclass(frozen=True)
class DaySummary:
    """What a day (modelled or simulated) amounts to.

    Attributes:
        hours: the window's length.
        arrived: clips that arrived in it.
        processed: clips whose run finished (runs that started in the window).
        throughput_per_hour: clips processed per hour from the window's start to
            the last run's end (or the window's end, if later): runs that spill
            past the window count with the time they took.
        peak_age: the oldest clip's age when its run ended, averaged over the runs
            ending within ``PEAK_WINDOW`` of the peak (the whole window when none does).
        max_age: the largest such age in the window.
        mean_age: the mean of such ages over every run of the window.
        runs: runs that had clips; skipped: runs with an empty batch.
        jobs: model -> transform jobs.
        instance_hours: model -> instance-hours (start-up included).
        cost: model -> USD at ``prices``.
    """

    hours: float
    arrived: int
    processed: int
    throughput_per_hour: float
    peak_age: float
    max_age: float
    mean_age: float
    runs: int
    skipped: int
    jobs: Mapping[str, int]
    instance_hours: Mapping[str, float]
    cost: Mapping[str, float]

    @property
    def backlog(self) -> int:
        """Clips that arrived and were not processed."""
        return self.arrived - self.processed


def summarize(cfg: CapacityConfig, runs: Sequence[Run], *, arrived: int, hours: float,
              start_hour: float = 0.0) -> DaySummary:
    """The figures of ``runs`` (the model's or a simulated day's) over a window of ``hours``."""
    full = [r for r in runs if r.records > 0]
    ages = [(r.end, r.end - r.oldest_arrival) for r in full if r.oldest_arrival is not None]
    peak = cfg.arrivals.peak_hour * 3600.0 - start_hour * 3600.0
    near = [a for end, a in ages if abs(end - peak) <= PEAK_WINDOW]
    if not near:
        near = [a for _, a in ages]
    jobs: dict[str, int] = {name: 0 for name in cfg.models}
    hours_used: dict[str, float] = {name: 0.0 for name in cfg.models}
    for run in full:
        for name, seconds in run.jobs.items():
            if name in jobs:
                jobs[name] += 1
                hours_used[name] += seconds * cfg.models[name].instance_count / 3600.0
    processed = sum(r.records for r in full)
    span = max(hours, max((r.end for r in full), default=0.0) / 3600.0)
    cost = {name: hours_used[name] * cfg.prices.get(cfg.models[name].instance_type, 0.0)
            for name in cfg.models}
    peak_age = sum(near) / len(near) if near else 0.0
    return DaySummary(hours, arrived, processed, processed / span, peak_age,
                      max((a for _, a in ages), default=0.0),
                      sum(a for _, a in ages) / len(ages) if ages else 0.0,
                      len(full), len(runs) - len(full),
                      jobs, hours_used, cost)


def arrived_in(cfg: CapacityConfig, hours: float, start_hour: float = 0.0) -> int:
    """Clips that arrive in the window."""
    origin = start_hour * 3600.0
    a = cfg.arrivals
    return math.floor(a.cumulative(origin + hours * 3600.0) - a.cumulative(origin) + 1e-9)


def model_day(cfg: CapacityConfig, *, hours: float = 24.0, start_hour: float = 0.0
              ) -> DaySummary:
    """:func:`summarize` of :func:`day_runs`."""
    return summarize(cfg, day_runs(cfg, hours=hours, start_hour=start_hour),
                     arrived=arrived_in(cfg, hours, start_hour), hours=hours,
                     start_hour=start_hour)


@dataclass(frozen=True)
class Smallest:
    """The smallest settings that keep up with the peak (None fields: none does)."""

    max_messages: int | None
    instance_counts: Mapping[str, int]
    capacity_per_hour: float
    reason: str = ""


def smallest_settings(cfg: CapacityConfig) -> Smallest:
    """The fewest instances, then the smallest ``max_messages``, that keep up with the peak.

    Starts every model at one instance; while even the largest batch cannot keep
    up, adds an instance to the model whose records take longest on the
    critical path (within ``quotas.instances``).
    """
    need = cfg.arrivals.peak_per_hour
    trial = cfg.with_models(**{n: {"instance_count": 1} for n in cfg.models})
    low, high = MAX_MESSAGES_RANGE
    while True:
        best = _with_batch(trial, high)
        if capacity_per_hour(best) >= need:
            break
        chain = critical_path(trial, high)
        slowest = max(chain, key=lambda n: trial.models[n].seconds_per_record
                      / trial.models[n].instance_count)
        m = trial.models[slowest]
        quota = cfg.instance_quota.get(m.instance_type)
        if quota is not None and m.instance_count + 1 > quota:
            return Smallest(None, _counts(trial), capacity_per_hour(best),
                            f"even {high} clips per run with {m.instance_count} x "
                            f"{m.instance_type} for {slowest} (the quota) process "
                            f"{capacity_per_hour(best):.1f} clips/h, below the peak of "
                            f"{need:.1f}; raise the quota or shorten the start-up")
        if m.instance_count >= 1000:
            return Smallest(None, _counts(trial), capacity_per_hour(best),
                            "more than 1000 instances would be needed")
        trial = trial.with_models(**{slowest: {"instance_count": m.instance_count + 1}})
    while low < high:  # capacity rises with the batch size: bisect
        mid = (low + high) // 2
        if capacity_per_hour(_with_batch(trial, mid)) >= need:
            high = mid
        else:
            low = mid + 1
    return Smallest(low, _counts(trial), capacity_per_hour(_with_batch(trial, low)))


def _with_batch(cfg: CapacityConfig, n: int) -> CapacityConfig:
    from dataclasses import replace

    return replace(cfg, dag=replace(cfg.dag, max_messages=n))


def _counts(cfg: CapacityConfig) -> dict[str, int]:
    return {name: m.instance_count for name, m in cfg.models.items()}


@dataclass(frozen=True)
class Plan:
    """What ``smserve plan`` prints.

    Attributes:
        config: the inputs.
        capacity_per_hour: clips per hour with full batches (sustained throughput).
        run_seconds: a full run.
        cycle_seconds: between two full runs.
        day: the modelled day.
        bottleneck: what limits the capacity.
        smallest: the smallest settings that keep up with the peak.
    """

    config: CapacityConfig
    capacity_per_hour: float
    run_seconds: float
    cycle_seconds: float
    day: DaySummary
    bottleneck: str
    smallest: Smallest

    @property
    def keeps_up(self) -> bool:
        """True when the capacity covers the peak rate."""
        return self.capacity_per_hour >= self.config.arrivals.peak_per_hour

    @property
    def shortfall_per_hour(self) -> float:
        """Clips per hour the capacity lacks at the peak (0 when it keeps up)."""
        return max(0.0, self.config.arrivals.peak_per_hour - self.capacity_per_hour)


def plan(cfg: CapacityConfig, *, hours: float = 24.0, start_hour: float = 0.0) -> Plan:
    """The plan for ``cfg``: capacity, the modelled day, the bottleneck, the smallest settings."""
    return Plan(cfg, capacity_per_hour(cfg), run_seconds(cfg, cfg.dag.max_messages),
                cycle_seconds(cfg), model_day(cfg, hours=hours, start_hour=start_hour),
                bottleneck(cfg), smallest_settings(cfg))
