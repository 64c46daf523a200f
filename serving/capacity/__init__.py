"""Capacity planning: will the pipeline keep up with the clips arriving, and what does it cost?

``smserve plan`` is this package::

    from serving.capacity import load_config, plan

    result = plan(load_config("capacity.toml", "models"))
    result.capacity_per_hour, result.keeps_up, result.day.peak_age

Modules: ``config`` (``capacity.toml``: arrivals, DAG settings, each model's
figures, quotas, prices; checked, errors name the field), ``model`` (pure
functions: a run's length, the sustained throughput, a modelled day, the
bottleneck, the smallest settings that keep up), ``report`` (text and JSON),
``fit`` (the figures a simulated day really had), ``simulate`` (a simulated
day: the real model servers behind the embedded stack's SageMaker API, time
scaled, measured beside the model's prediction).
docs/capacity.md explains the model, its assumptions and where it is wrong.
"""

from __future__ import annotations

from serving.capacity.config import (
    CONFIG_FILE,
    Arrivals,
    CapacityConfig,
    DagSettings,
    ModelFigures,
    load_config,
    parse_config,
)
from serving.capacity.model import (
    DaySummary,
    Plan,
    Run,
    capacity_per_hour,
    day_runs,
    model_day,
    plan,
    run_seconds,
    smallest_settings,
    summarize,
)

__all__ = [
    "CONFIG_FILE",
    "Arrivals",
    "CapacityConfig",
    "DagSettings",
    "DaySummary",
    "ModelFigures",
    "Plan",
    "Run",
    "capacity_per_hour",
    "day_runs",
    "load_config",
    "model_day",
    "parse_config",
    "plan",
    "run_seconds",
    "smallest_settings",
    "summarize",
]
