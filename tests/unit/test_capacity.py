"""serving.capacity: capacity.toml checks, the capacity model's arithmetic, ``smserve plan``."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from serving.capacity import (
    CapacityConfig,
    capacity_per_hour,
    day_runs,
    load_config,
    model_day,
    parse_config,
    plan,
    run_seconds,
    smallest_settings,
)
from serving.capacity.model import Run, makespan, summarize
from serving.cli import main
from serving.errors import ConfigError
from serving.modelspec import discover

ROOT = Path(__file__).resolve().parents[2]
SPECS = discover(ROOT / "models")
ORDER = {name: SPECS[name] for name in ("clip_stats", "frame_features", "scene_classifier")}

BASE: dict[str, Any] = {
    "arrivals": {"clips_per_hour": 60, "peak_factor": 1.0},
    "dag": {"schedule_minutes": 10, "max_messages": 100, "max_wait_seconds": 0,
            "poke_interval_seconds": 30, "run_overhead_seconds": 0,
            "run_seconds_per_record": 0},
    "defaults": {"startup_seconds": 300},
    "quotas": {"concurrent_transform_jobs": 4, "instances": {"ml.m5.large": 4}},
    "prices": {"ml.m5.large": 0.1, "ml.g4dn.xlarge": 1.0},
    "models": {"frame_features": {"seconds_per_record": 2.0},
               "scene_classifier": {"seconds_per_record": 1.0},
               "clip_stats": {"seconds_per_record": 1.0}},
}


def config(**changes: dict[str, Any]) -> CapacityConfig:
    data = copy.deepcopy(BASE)
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data, ORDER, source="test.toml")


# --- arrivals ---------------------------------------------------------------------------------


def test_arrivals_average_to_the_mean_and_peak_at_the_peak_hour() -> None:
    a = config(arrivals={"clips_per_hour": 120, "peak_factor": 1.5, "peak_hour": 18}).arrivals
    assert a.cumulative(24 * 3600) == pytest.approx(120 * 24)
    assert a.rate(18 * 3600) * 3600 == pytest.approx(180)
    assert a.rate(6 * 3600) * 3600 == pytest.approx(60)
    for k in (1, 7, 500, 2880):
        assert a.cumulative(a.arrival_time(k)) == pytest.approx(k, abs=1e-6)
    assert a.arrival_time(2) > a.arrival_time(1)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "values", "field", "words"), [
    ("arrivals", {"clips_per_hour": -5}, "arrivals.clips_per_hour", "more than 0"),
    ("arrivals", {"clips_per_hour": 0}, "arrivals.clips_per_hour", "it divides"),
    ("arrivals", {"peak_factor": 3}, "arrivals.peak_factor", "at most 2"),
    ("dag", {"schedule_minutes": 0}, "dag.schedule_minutes", "it divides"),
    ("dag", {"max_messages": 2.5}, "dag.max_messages", "a whole number"),
    ("dag", {"max_messages": True}, "dag.max_messages", "a whole number"),
    ("dag", {"max_wait_seconds": -1}, "dag.max_wait_seconds", "at least 0"),
    ("dag", {"max_batch": 3}, "dag.max_batch", "not a known key"),
    ("defaults", {"startup_seconds": "6 min"}, "defaults.startup_seconds", "a number"),
    ("quotas", {"concurrent_transform_jobs": 0}, "quotas.concurrent_transform_jobs", "at least 1"),
    ("models", {"clip_stats": {"seconds_per_record": 0}}, "models.clip_stats.seconds_per_record",
     "it divides"),
    ("models", {"clip_stats": {"seconds_per_record": 1, "instance_count": 5}},
     "models.clip_stats.instance_count", "more than the quota of 4 ml.m5.large"),
    ("models", {"clip_stats": {"seconds_per_record": 1, "instance_count": -1}},
     "models.clip_stats.instance_count", "at least 1"),
    ("models", {"clip_stats": {"seconds_per_record": 1, "startup_seconds": -60}},
     "models.clip_stats.startup_seconds", "at least 0"),
    ("models", {"other": {"seconds_per_record": 1}}, "models.other", "names no folder"),
])
def test_a_bad_value_names_its_field(section: str, values: dict[str, Any], field: str,
                                     words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**{section: values})
    assert f"test.toml: {field} " in caught.value.message
    assert words in caught.value.message


def test_a_model_without_figures_says_how_to_measure_them() -> None:
    data = copy.deepcopy(BASE)
    del data["models"]["scene_classifier"]
    with pytest.raises(ConfigError, match=r"models\.scene_classifier is missing.*smserve check"):
        parse_config(data, ORDER, source="test.toml")


def test_the_repository_file_is_valid_for_the_example_models() -> None:
    cfg = load_config(ROOT / "capacity.toml", ROOT / "models")
    assert set(cfg.models) == set(SPECS)
    assert cfg.models["scene_classifier"].depends_on == ("frame_features",)


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "capacity.toml"
    bad.write_text("[arrivals\nclips_per_hour = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad, ROOT / "models")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", ROOT / "models")


# --- the model ----------------------------------------------------------------------------------


def test_a_run_follows_the_dependency_chain() -> None:
    cfg = config()
    # frame_features (300 + 10*2) then scene_classifier (300 + 10*1); clip_stats alongside
    assert run_seconds(cfg, 10) == pytest.approx(320 + 310)
    slow = replace(cfg, dag=replace(cfg.dag, run_overhead_seconds=45, run_seconds_per_record=2))
    assert run_seconds(slow, 10) == pytest.approx(320 + 310 + 45 + 20)
    assert run_seconds(cfg, 0) == 0


def test_quotas_make_jobs_wait() -> None:
    one_job = replace(config(), concurrent_jobs=1)
    durations = {"clip_stats": 100.0, "frame_features": 200.0, "scene_classifier": 50.0}
    assert makespan(config(), durations) == 250
    assert makespan(one_job, durations) == 350
    one_m5 = replace(config(), instance_quota={"ml.m5.large": 1})
    assert makespan(one_m5, {"clip_stats": 300.0, "frame_features": 100.0,
                             "scene_classifier": 50.0}) == 350


def test_capacity_is_a_full_batch_per_cycle() -> None:
    cfg = config()
    run = run_seconds(cfg, 100)  # 500 + 400
    assert capacity_per_hour(cfg) == pytest.approx(100 * 3600 / run)
    fast = config(defaults={"startup_seconds": 0},
                  models={"frame_features": {"seconds_per_record": 0.1},
                          "scene_classifier": {"seconds_per_record": 0.1},
                          "clip_stats": {"seconds_per_record": 0.1}})
    assert capacity_per_hour(fast) == pytest.approx(100 * 6)  # the schedule limits it


def test_a_day_that_keeps_up_processes_what_arrives() -> None:
    cfg = config(arrivals={"clips_per_hour": 30})
    day = model_day(cfg)
    assert day.arrived == 720
    assert day.arrived - day.processed < 30  # only the last run's wait is left
    assert day.throughput_per_hour == pytest.approx(30, rel=0.05)
    assert all(r.records <= cfg.dag.max_messages for r in day_runs(cfg))
    assert day.jobs["scene_classifier"] == day.runs
    expected_cost = day.instance_hours["frame_features"] * 1.0
    assert day.cost["frame_features"] == pytest.approx(expected_cost)


def test_a_day_that_cannot_keep_up_runs_full_batches_back_to_back() -> None:
    cfg = config(arrivals={"clips_per_hour": 2000})
    runs = [r for r in day_runs(cfg) if r.records]
    assert all(r.records == 100 for r in runs[1:])
    cycle = run_seconds(cfg, 100)
    assert runs[2].start - runs[1].start == pytest.approx(cycle)
    result = plan(cfg)
    assert not result.keeps_up
    assert result.shortfall_per_hour == pytest.approx(2000 - result.capacity_per_hour)
    assert result.day.backlog > 0
    ages = [r.end - r.oldest_arrival for r in runs if r.oldest_arrival is not None]
    assert ages == sorted(ages)  # the queue ages all day


def test_the_smallest_settings_keep_up_and_one_less_does_not() -> None:
    cfg = config(arrivals={"clips_per_hour": 100, "peak_factor": 2.0})
    small = smallest_settings(cfg)
    assert small.max_messages is not None
    trial = cfg.with_models(**{n: {"instance_count": c}
                               for n, c in small.instance_counts.items()})
    assert capacity_per_hour(trial, small.max_messages) >= 200
    assert capacity_per_hour(trial, small.max_messages - 1) < 200


def test_more_instances_when_no_batch_is_enough() -> None:
    cfg = config(arrivals={"clips_per_hour": 3000}, quotas={"instances": {"ml.m5.large": 4,
                                                                          "ml.g4dn.xlarge": 8}})
    small = smallest_settings(cfg)
    assert small.max_messages is not None
    assert small.instance_counts["frame_features"] > 1
    capped = config(arrivals={"clips_per_hour": 3000},
                    quotas={"instances": {"ml.m5.large": 4, "ml.g4dn.xlarge": 1}})
    refused = smallest_settings(capped)
    assert refused.max_messages is None
    assert "raise the quota" in refused.reason


def test_summarize_counts_measured_runs_the_same_way() -> None:
    cfg = config(arrivals={"peak_hour": 1})
    runs = [Run(0, 0, 600, 5, 0.0, {"frame_features": 400.0, "clip_stats": 300.0}),
            Run(600, 600, 600, 0),
            Run(1200, 1200, 4000, 8, 700.0, {"frame_features": 2000.0})]
    day = summarize(cfg, runs, arrived=20, hours=2)
    assert (day.processed, day.runs, day.skipped, day.backlog) == (13, 2, 1, 7)
    assert day.max_age == 3300 and day.peak_age == (600 + 3300) / 2
    late = summarize(config(arrivals={"peak_hour": 4}), runs, arrived=20, hours=2)
    assert late.peak_age == 3300  # only the run ending at 4000 s is within 3 h of 04:00
    assert day.jobs == {"clip_stats": 1, "frame_features": 2, "scene_classifier": 0}
    assert day.instance_hours["frame_features"] == pytest.approx(2400 / 3600)
    assert math.isclose(day.throughput_per_hour, 6.5)


# --- smserve plan -------------------------------------------------------------------------------


def test_plan_prints_the_plan_and_exits_by_whether_it_keeps_up(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--config", str(ROOT / "capacity.toml"), "--models-dir", str(ROOT / "models")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "sustained throughput:" in out and "bottleneck:" in out
    assert "smallest settings that keep up" in out
    assert main([*args, "--clips-per-hour", "5000", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["keeps_up"] is False
    assert data["shortfall_per_hour"] == pytest.approx(7500 - data["capacity_per_hour"])


def test_plan_with_a_bad_file_exits_2_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "capacity.toml").read_text().replace("clips_per_hour = 120",
                                                        "clips_per_hour = -120")
    bad = tmp_path / "capacity.toml"
    bad.write_text(text)
    assert main(["plan", "--config", str(bad), "--models-dir", str(ROOT / "models")]) == 2
    assert "arrivals.clips_per_hour must be more than 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--clips-per-hour", "0"])


def test_the_worked_example_in_the_docs_is_what_smserve_plan_prints(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    monkeypatch.chdir(ROOT)
    shown: list[tuple[str, list[str]]] = []
    inside = False
    for line in (ROOT / "docs" / "capacity.md").read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```console" if not inside else False
        elif inside and line.startswith("$ "):
            shown.append((line[2:], []))
        elif inside and shown and line.strip():
            shown[-1][1].append(line)
    checked = 0
    for command, lines in shown:
        words = shlex.split(command, comments=True)
        if not lines or "--simulate" in words:
            continue
        expected = 1 if "exits 1" in command else 0
        assert main(words[1:]) == expected, command
        out = " ".join(capsys.readouterr().out.split())
        for line in lines:
            if line.strip() != "...":
                assert " ".join(line.split()) in out, f"{command}: {line}"
        checked += 1
    assert checked == 2


@pytest.mark.parametrize("raw", ["soon", "-1", "100000"])
def test_a_bad_job_startup_delay_names_the_variable(raw: str) -> None:
    from serving.settings import Settings

    with pytest.raises(ConfigError, match="SMSERVE_LOCAL_JOB_STARTUP_SECONDS="):
        Settings.from_environ({"SMSERVE_LOCAL_JOB_STARTUP_SECONDS": raw})
    assert Settings.from_environ({"SMSERVE_LOCAL_JOB_STARTUP_SECONDS": "1.25"}
                                 ).local_job_startup_seconds == 1.25
    assert Settings.from_environ({}).local_job_startup_seconds == 0


def test_fit_line_keeps_start_up_and_per_record_non_negative() -> None:
    from serving.capacity.fit import fit_line

    assert fit_line([(10, 120.0), (20, 220.0), (30, 320.0)]) == pytest.approx((20.0, 10.0))
    assert fit_line([(10, 50.0), (10, 70.0)]) is None  # one batch size: no slope
    assert fit_line([(10, 80.0), (20, 60.0)]) == (70.0, 0.0)  # shrinking: a constant
    a, b = fit_line([(10, 50.0), (20, 150.0)]) or (None, None)
    assert a == 0.0 and b == pytest.approx((10 * 50 + 20 * 150) / (100 + 400))


def test_the_effective_config_reproduces_the_runs_it_was_fitted_on() -> None:
    from serving.capacity.fit import JobFigure, effective_config

    cfg = config()
    runs, figures = [], {name: [] for name in cfg.models}  # type: ignore[var-annotated]
    for n in (5, 10, 20):
        jobs = {"frame_features": 1000 + 4.0 * n, "scene_classifier": 800 + 2.0 * n,
                "clip_stats": 700 + 1.0 * n}
        for name, wall in jobs.items():
            figures[name].append(JobFigure(n, wall, 0.5 * n))
        runs.append(Run(0, 0, 50 + 3.0 * n + jobs["frame_features"] + jobs["scene_classifier"],
                        n, 0.0, jobs))
    effective, measured = effective_config(cfg, runs, figures, {n: 1 for n in cfg.models})
    ff = effective.models["frame_features"]
    assert (ff.startup_seconds, ff.seconds_per_record) == pytest.approx((1000, 4))
    assert effective.dag.run_overhead_seconds == pytest.approx(50)
    assert effective.dag.run_seconds_per_record == pytest.approx(3)
    assert measured["clip_stats"]["data_plane_seconds_per_record"] == pytest.approx(0.5)
    for run in runs:
        assert run_seconds(effective, run.records) == pytest.approx(run.end - run.taken)
