"""The plan and the simulated day as text (what ``smserve plan`` prints) and as JSON."""

from __future__ import annotations

import dataclasses
from typing import Any

from serving.capacity.model import DaySummary, Plan, job_durations


def duration(seconds: float) -> str:
    """``42 s``, ``6.0 min``, ``2.5 h``."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.0f} s"


def plan_lines(result: Plan) -> list[str]:
    """The plan, one line per item."""
    cfg = result.config
    a, dag = cfg.arrivals, cfg.dag
    n = dag.max_messages
    lines = [f"capacity plan from {cfg.source}: {', '.join(cfg.models)}",
             f"arrivals: {a.clips_per_hour:g} clips/h on average, {a.peak_per_hour:g} clips/h at "
             f"the peak ({a.peak_hour:g}:00), {a.clips_per_hour * 24:.0f} clips a day",
             f"DAG: a run every {dag.schedule_minutes:g} min, one at a time, each of up to {n} "
             f"clips or what came in {dag.max_wait_seconds:g} s; "
             f"the run's own work {dag.run_overhead_seconds:g} s + "
             f"{dag.run_seconds_per_record:g} s per clip",
             "",
             f"  {'model':<20} {'instances':<22} {'start-up':>9} {'per record':>11} "
             f"{f'job of {n}':>11}"]
    jobs = job_durations(cfg, n)
    for name, m in cfg.models.items():
        after = f"  (after {', '.join(m.depends_on)})" if m.depends_on else ""
        lines.append(f"  {name:<20} {f'{m.instance_count} x {m.instance_type}':<22} "
                     f"{duration(m.startup_seconds):>9} {m.seconds_per_record:>9.3f} s "
                     f"{duration(jobs[name]):>11}{after}")
    lines += ["",
              f"a full run of {n} clips takes {duration(result.run_seconds)}; full runs start "
              f"{duration(result.cycle_seconds)} apart",
              f"sustained throughput: {result.capacity_per_hour:.1f} clips/h"]
    if result.keeps_up:
        lines.append(f"keeps up: {result.capacity_per_hour / a.peak_per_hour:.2f} x the peak "
                     f"rate of {a.peak_per_hour:g} clips/h")
    else:
        short = result.shortfall_per_hour
        lines.append(f"DOES NOT KEEP UP: the peak is {a.peak_per_hour:g} clips/h, the capacity "
                     f"{result.capacity_per_hour:.1f}: {short:.1f} clips/h short "
                     f"({short / a.peak_per_hour:.0%} of the peak)"
                     + ("" if result.capacity_per_hour >= a.clips_per_hour else
                        f", and {a.clips_per_hour - result.capacity_per_hour:.1f} clips/h short "
                        "of the daily mean: the queue grows every day"))
    lines.append(f"bottleneck: {result.bottleneck}")
    lines += ["", *day_lines(result.day, "USD" if cfg.prices else ""), ""]
    small = result.smallest
    if small.max_messages is None:
        lines.append(f"no settings within the quotas keep up with the peak: {small.reason}")
    else:
        counts = ", ".join(f"{k} {v}" for k, v in small.instance_counts.items())
        lines.append(f"smallest settings that keep up with the peak: max_messages = "
                     f"{small.max_messages}; instances: {counts} "
                     f"({small.capacity_per_hour:.1f} clips/h)")
    return lines


def day_lines(day: DaySummary, currency: str = "USD") -> list[str]:
    """A day's figures: clips, throughput, queue age, jobs and cost per model."""
    money = f"{currency}/day" if currency else ""
    lines = [f"the day ({day.hours:g} h from an empty queue): {day.processed} of {day.arrived} "
             f"clips processed ({day.throughput_per_hour:.1f} clips/h), "
             f"{day.backlog} left at the end",
             f"queue age at the peak (mean of runs ending within 3 h of it): "
             f"{duration(day.peak_age)} (largest of the window: "
             f"{duration(day.max_age)}, mean of all runs: {duration(day.mean_age)}); "
             f"{day.runs} runs with clips, {day.skipped} with none",
             f"  {'model':<20} {'jobs':>5} {'instance-h':>11} {money:>9}"]
    for name in day.jobs:
        cost = f"{day.cost[name]:9.2f}" if currency else ""
        lines.append(f"  {name:<20} {day.jobs[name]:>5} {day.instance_hours[name]:>11.2f} {cost}")
    if currency:
        lines.append(f"  {'total':<20} {sum(day.jobs.values()):>5} "
                     f"{sum(day.instance_hours.values()):>11.2f} {sum(day.cost.values()):9.2f}")
    return lines


def plan_dict(result: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data."""
    cfg = result.config
    return {"source": cfg.source,
            "arrivals": dataclasses.asdict(cfg.arrivals),
            "dag": dataclasses.asdict(cfg.dag),
            "models": {k: dataclasses.asdict(m) for k, m in cfg.models.items()},
            "capacity_per_hour": result.capacity_per_hour,
            "run_seconds": result.run_seconds, "cycle_seconds": result.cycle_seconds,
            "keeps_up": result.keeps_up, "shortfall_per_hour": result.shortfall_per_hour,
            "bottleneck": result.bottleneck, "day": day_dict(result.day),
            "smallest": dataclasses.asdict(result.smallest)}


def day_dict(day: DaySummary) -> dict[str, Any]:
    """A day's figures as JSON-ready data."""
    return {**dataclasses.asdict(day), "backlog": day.backlog}
