"""``capacity.toml``: the inputs of ``smserve plan``, read and checked into :class:`CapacityConfig`.

The file sits beside ``models/`` (``capacity.toml`` at the repository root).
Every key has a default except each model's ``seconds_per_record``::

    [arrivals]
    clips_per_hour = 120     # mean arrival rate over the day            (required > 0)
    peak_factor = 1.5        # peak-hour rate / mean, 1 (flat) to 2      (1.0)
    peak_hour = 18           # hour of the day with the most arrivals    (18.0)

    [dag]                    # the inference DAG (dags/smserve_dags/config.py has the same names)
    schedule_minutes = 10    # one run per tick, one run at a time       (10)
    max_messages = 100       # clips per run                             (100)
    max_wait_seconds = 120   # run with what came in this long           (120)
    poke_interval_seconds = 30  # between two looks at the queue         (30)
    run_overhead_seconds = 60   # per run: task scheduling, reports      (60)
    run_seconds_per_record = 0.05  # per clip: parse, HEAD, request, delete (0.05)

    [defaults]
    startup_seconds = 360    # a job's instances + image pull            (360)

    [quotas]
    concurrent_transform_jobs = 4                                        (4)
    [quotas.instances]       # per instance type; types not named: not checked
    "ml.g4dn.xlarge" = 1

    [prices]                 # USD per instance-hour; types not named cost 0
    "ml.m5.large" = 0.115

    [models.frame_features]  # one table per folder of models/
    seconds_per_record = 0.9 # one record on one instance                (required > 0)
    startup_seconds = 420    # (defaults.startup_seconds)
    instance_type = "ml.g4dn.xlarge"   # (model.toml's)
    instance_count = 1                 # (model.toml's)

The arrival rate over the day is ``mean * (1 + (peak_factor - 1) *
cos(2 pi (h - peak_hour) / 24))``: its mean is ``clips_per_hour``, its
maximum ``peak_factor`` times that, at ``peak_hour``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from serving.errors import ConfigError

CONFIG_FILE = "capacity.toml"
DAY = 24 * 3600.0

_SECTIONS = ("arrivals", "dag", "defaults", "quotas", "prices", "models")
_MODEL_KEYS = ("seconds_per_record", "startup_seconds", "instance_type", "instance_count")


@dataclass(frozen=True)
class Arrivals:
    """Clips arriving on the queue: a daily cosine around a mean, peaking at ``peak_hour``."""

    clips_per_hour: float
    peak_factor: float = 1.0
    peak_hour: float = 18.0

    def rate(self, t: float) -> float:
        """Clips per second at ``t`` seconds after midnight."""
        amp = self.peak_factor - 1.0
        phase = 2 * math.pi * (t / 3600.0 - self.peak_hour) / 24.0
        return self.clips_per_hour / 3600.0 * (1.0 + amp * math.cos(phase))

    def cumulative(self, t: float) -> float:
        """Clips arrived from midnight to ``t`` seconds after it (a real number)."""
        amp = self.peak_factor - 1.0
        w = 2 * math.pi / DAY
        start = -self.peak_hour * 3600.0
        wave = amp / w * (math.sin(w * (t + start)) - math.sin(w * start))
        return self.clips_per_hour / 3600.0 * (t + wave)

    def arrival_time(self, index: int, *, origin: float = 0.0) -> float:
        """When clip ``index`` (1, 2, ...) arrives, counting clips from ``origin`` seconds.

        The inverse of :meth:`cumulative` (it rises monotonically), by bisection.
        """
        target = self.cumulative(origin) + index
        low, high = origin, origin + 1.0
        while self.cumulative(high) < target:
            high = origin + (high - origin) * 2
        for _ in range(60):
            mid = (low + high) / 2
            if self.cumulative(mid) < target:
                low = mid
            else:
                high = mid
        return high

    @property
    def peak_per_hour(self) -> float:
        """The highest rate of the day, clips per hour."""
        return self.clips_per_hour * self.peak_factor


@dataclass(frozen=True)
class DagSettings:
    """The inference DAG's settings that decide its pace."""

    schedule_minutes: float = 10.0
    max_messages: int = 100
    max_wait_seconds: float = 120.0
    poke_interval_seconds: float = 30.0
    run_overhead_seconds: float = 60.0
    run_seconds_per_record: float = 0.05

    @property
    def interval(self) -> float:
        """Seconds between two schedule ticks."""
        return self.schedule_minutes * 60.0


@dataclass(frozen=True)
class ModelFigures:
    """One model's figures: its place in the graph, its instances, its times."""

    name: str
    seconds_per_record: float
    startup_seconds: float
    instance_type: str
    instance_count: int
    depends_on: tuple[str, ...] = ()

    def job_seconds(self, records: int) -> float:
        """A job of ``records`` records, start-up included (0 when there are none)."""
        if records <= 0:
            return 0.0
        return self.startup_seconds + records * self.seconds_per_record / self.instance_count


@dataclass(frozen=True)
class CapacityConfig:
    """Everything ``smserve plan`` needs (see the module docstring for the file).

    Attributes:
        arrivals: the arrival rate over the day.
        dag: the inference DAG's settings.
        models: name -> figures, in dependency order.
        concurrent_jobs: the account's quota of transform jobs at once.
        instance_quota: instance type -> instances the account may run at once.
        prices: instance type -> USD per instance-hour.
        source: the file it came from (for messages).
    """

    arrivals: Arrivals
    dag: DagSettings
    models: Mapping[str, ModelFigures]
    concurrent_jobs: int = 4
    instance_quota: Mapping[str, int] = field(default_factory=dict)
    prices: Mapping[str, float] = field(default_factory=dict)
    source: str = CONFIG_FILE

    def with_models(self, **changes: Mapping[str, Any]) -> CapacityConfig:
        """A copy with some models' fields changed: ``with_models(a={"instance_count": 2})``."""
        models = dict(self.models)
        for name, fields_ in changes.items():
            models[name] = replace(models[name], **fields_)
        return replace(self, models=models)


# --- reading and checking --------------------------------------------------------------------


def _fail(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {key} {message}", field=key, file=source)


def _number(table: Mapping[str, Any], key: str, where: str, source: str, default: float | None,
            *, low: float | None = None, above: float | None = None,
            high: float | None = None, whole: bool = False) -> Any:
    name = f"{where}.{key}"
    if key not in table:
        if default is None:
            raise _fail(source, name, "is missing; add it (see docs/capacity.md)")
        return default
    kinds: tuple[type, ...] = (int,) if whole else (int, float)
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        word = "a whole number" if whole else "a number"
        raise _fail(source, name, f"must be {word}, not {value!r}")
    assert isinstance(value, (int, float))
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(source, name, f"must be a finite number, not {value!r}")
    if above is not None and value <= above:
        raise _fail(source, name, f"must be more than {above:g}, not {value!r}"
                    + (" (it divides)" if above == 0 else ""))
    if low is not None and value < low:
        raise _fail(source, name, f"must be at least {low:g}, not {value!r}")
    if high is not None and value > high:
        raise _fail(source, name, f"must be at most {high:g}, not {value!r}")
    return value


def _table(data: Mapping[str, Any], key: str, source: str, allowed: tuple[str, ...] | None
           ) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _fail(source, key, f"must be a table ([{key}]), not {value!r}")
    if allowed is not None:
        for name in value:
            if name not in allowed:
                raise _fail(source, f"{key}.{name}",
                            f"is not a known key; the keys of [{key}] are {', '.join(allowed)}")
    return value


def _per_type(data: Mapping[str, Any], key: str, source: str, *, whole: bool
              ) -> dict[str, Any]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise _fail(source, key, f"must be a table of instance type = value, not {table!r}")
    out: dict[str, Any] = {}
    for name in table:
        out[name] = _number(table, name, key, source, None, low=1 if whole else 0, whole=whole)
    return out


def parse_config(data: Mapping[str, Any], specs: Mapping[str, Any], *,
                 source: str = CONFIG_FILE) -> CapacityConfig:
    """Check ``data`` (the parsed TOML) against the models in ``specs`` (name -> ModelSpec).

    Raises:
        ConfigError: the message names the file and the field (``dag.max_messages``)
            and says what is allowed.
    """
    for name in data:
        if name not in _SECTIONS:
            raise _fail(source, name, f"is not a known section; use {', '.join(_SECTIONS)}")
    arr = _table(data, "arrivals", source, ("clips_per_hour", "peak_factor", "peak_hour"))
    arrivals = Arrivals(
        clips_per_hour=float(_number(arr, "clips_per_hour", "arrivals", source, None, above=0)),
        peak_factor=float(_number(arr, "peak_factor", "arrivals", source, 1.0, low=1, high=2)),
        peak_hour=float(_number(arr, "peak_hour", "arrivals", source, 18.0, low=0, high=24)))
    dag_t = _table(data, "dag", source, tuple(f.name for f in fields(DagSettings)))
    dag = DagSettings(
        schedule_minutes=float(_number(dag_t, "schedule_minutes", "dag", source, 10.0, above=0)),
        max_messages=_number(dag_t, "max_messages", "dag", source, 100, low=1, high=10_000,
                             whole=True),
        max_wait_seconds=float(_number(dag_t, "max_wait_seconds", "dag", source, 120.0, low=0,
                                       high=12 * 3600)),
        poke_interval_seconds=float(_number(dag_t, "poke_interval_seconds", "dag", source, 30.0,
                                            above=0)),
        run_overhead_seconds=float(_number(dag_t, "run_overhead_seconds", "dag", source, 60.0,
                                           low=0)),
        run_seconds_per_record=float(_number(dag_t, "run_seconds_per_record", "dag", source,
                                             0.05, low=0)))
    defaults = _table(data, "defaults", source, ("startup_seconds",))
    startup = float(_number(defaults, "startup_seconds", "defaults", source, 360.0, low=0))
    quotas = _table(data, "quotas", source, ("concurrent_transform_jobs", "instances"))
    concurrent = _number(quotas, "concurrent_transform_jobs", "quotas", source, 4, low=1,
                         whole=True)
    instance_quota = _per_type(quotas, "instances", source, whole=True)
    prices = {k: float(v) for k, v in _per_type(data, "prices", source, whole=False).items()}
    models = _models(_table(data, "models", source, None), specs, startup, instance_quota, source)
    return CapacityConfig(arrivals, dag, models, concurrent, instance_quota, prices, source)


def _models(table: Mapping[str, Any], specs: Mapping[str, Any], startup: float,
            quota: Mapping[str, int], source: str) -> dict[str, ModelFigures]:
    for name in table:
        if name not in specs:
            raise _fail(source, f"models.{name}", "names no folder of models/; the models are "
                        f"{', '.join(specs) or '(none)'}")
    out: dict[str, ModelFigures] = {}
    for name, spec in specs.items():
        where = f"models.{name}"
        if name not in table:
            raise _fail(source, where, "is missing: add [models." + name + "] with "
                        "seconds_per_record (measure it with `smserve check models/" + name +
                        "` or bench/)")
        entry = _table(table, name, source, _MODEL_KEYS)
        itype = entry.get("instance_type", spec.instance_type)
        if not isinstance(itype, str) or not itype.startswith("ml."):
            raise _fail(source, f"{where}.instance_type",
                        f"must be an instance type like \"ml.m5.large\", not {itype!r}")
        count = _number(entry, "instance_count", where, source, spec.instance_count, low=1,
                        whole=True)
        if itype in quota and count > quota[itype]:
            raise _fail(source, f"{where}.instance_count",
                        f"is {count}, more than the quota of {quota[itype]} {itype} "
                        f"(quotas.instances); lower it or raise the quota")
        out[name] = ModelFigures(
            name=name,
            seconds_per_record=float(_number(entry, "seconds_per_record", where, source, None,
                                             above=0)),
            startup_seconds=float(_number(entry, "startup_seconds", where, source, startup,
                                          low=0)),
            instance_type=itype, instance_count=count,
            depends_on=tuple(spec.depends_on))
    return out


def load_config(path: str | Path, models_root: str | Path = "models") -> CapacityConfig:
    """Read ``path`` (``capacity.toml``) for the models under ``models_root``.

    Raises:
        ConfigError: the file is missing, not TOML, or a value is wrong.
        ModelSpecError: a ``model.toml`` under ``models_root`` is wrong.
    """
    from serving.modelspec import discover
    from serving.pipeline import Graph

    file = Path(path)
    try:
        raw = file.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {file}: {err.strerror or err}; write one (see "
                          "docs/capacity.md) or pass --config", file=str(file)) from err
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file} is not valid TOML: {err}", file=str(file)) from err
    graph = Graph(discover(models_root))
    specs = {name: graph[name] for name in graph.order()}
    return parse_config(data, specs, source=str(file))
