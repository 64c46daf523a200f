"""``smserve plan``: does the pipeline keep up, where is the bottleneck, what does a day cost.

Reads ``capacity.toml`` (beside ``models/``; see :mod:`serving.capacity.config`)
and prints the capacity model's plan. With ``--simulate`` it also runs a
simulated day on the embedded stack (:mod:`serving.capacity.simulate`) and
prints the measured figures beside the model's prediction. Exit status: 0
when the plan keeps up with the peak, 1 when it does not (the output says by
how much), 2 for a bad file or flag, 4 when a simulated run failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from serving.commands._args import positive

DESCRIPTION = """\
Size a deployment before paying for it. From the arrival rate (clips per hour,
with a daily peak), the inference DAG's settings and each model's figures
(seconds per record, start-up, instance type and count) in capacity.toml, print
the sustained throughput, the queue's age at the peak, each model's
instance-hours and cost per day, the bottleneck and the smallest settings that
keep up. --simulate also runs the day (scaled) through the real model servers
behind the embedded stack's SageMaker API and prints what it measured beside
the model's prediction. Exit status: 0 keeps up, 1 does not, 2 bad input.
"""

EPILOG = """\
examples:
  smserve plan                                  # capacity.toml, models/
  smserve plan --clips-per-hour 600 --max-messages 200
  smserve plan --simulate --hours 1 --start-hour 17      # a scaled hour, ~15 s
  smserve plan --simulate                                # a whole day in ~5 min (x320)
"""


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{value:g} must be more than 0")
    return value


def _hour(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an hour of the day") from None
    if not 0 <= value < 24:
        raise argparse.ArgumentTypeError(f"{value:g} is not an hour of the day (0 to 24)")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``smserve plan`` to the ``smserve`` parser."""
    p = sub.add_parser("plan", help="capacity plan: throughput, queue age, cost, bottleneck",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="capacity.toml", metavar="FILE",
                   help="the plan's inputs (default: capacity.toml)")
    p.add_argument("--models-dir", default="models", metavar="DIR",
                   help="the folder of model folders (default: models)")
    p.add_argument("--clips-per-hour", type=_number, default=None, metavar="RATE",
                   help="override arrivals.clips_per_hour")
    p.add_argument("--max-messages", type=positive, default=None, metavar="N",
                   help="override dag.max_messages")
    p.add_argument("--hours", type=_number, default=24.0, metavar="H",
                   help="the window modelled (and simulated), in hours (default: 24)")
    p.add_argument("--start-hour", type=_hour, default=0.0, metavar="H",
                   help="when the window starts, hour of the day (default: 0)")
    p.add_argument("--simulate", action="store_true",
                   help="also run the window through the real pipeline on the embedded "
                        "stack, time scaled, and compare")
    p.add_argument("--scale", type=_number, default=320.0, metavar="K",
                   help="with --simulate: simulated seconds per real second (default: 320, "
                        "a day in 4.5 min)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--save", default=None, metavar="FILE",
                   help="also write the JSON object to FILE")
    p.set_defaults(func=cmd_plan)


def _overridden(cfg: Any, args: argparse.Namespace) -> Any:
    if args.clips_per_hour is not None:
        cfg = dataclasses.replace(cfg, arrivals=dataclasses.replace(
            cfg.arrivals, clips_per_hour=args.clips_per_hour))
    if args.max_messages is not None:
        if args.max_messages > 10_000:
            from serving.errors import ConfigError

            raise ConfigError(f"--max-messages {args.max_messages} is more than 10000 "
                              "(dag.max_messages' range); lower it")
        cfg = dataclasses.replace(cfg, dag=dataclasses.replace(
            cfg.dag, max_messages=args.max_messages))
    return cfg


def cmd_plan(args: argparse.Namespace) -> int:
    """Print the plan (and, with ``--simulate``, the simulated day beside it)."""
    from serving.capacity import load_config, plan
    from serving.capacity.report import plan_dict, plan_lines

    cfg = _overridden(load_config(args.config, args.models_dir), args)
    result = plan(cfg, hours=args.hours, start_hour=args.start_hour)
    out: dict[str, Any] = plan_dict(result)
    if not args.json:
        print("\n".join(plan_lines(result)), flush=True)
    if args.simulate:
        from serving.capacity.simulate import simulate_day

        echo = (lambda _line: None) if args.json else (lambda line: print(line, flush=True))
        if not args.json:
            print()
        sim = simulate_day(cfg, args.models_dir, scale=args.scale, hours=args.hours,
                           start_hour=args.start_hour, echo=echo)
        out["simulation"] = simulation_dict(sim)
        if not args.json:
            print("\n".join(simulation_lines(sim)))
    if args.json:
        print(json.dumps(out, default=str))
    if args.save:
        from pathlib import Path

        Path(args.save).write_text(json.dumps(out, default=str, indent=1) + "\n")
    return 0 if result.keeps_up else 1


def simulation_lines(sim: Any) -> list[str]:
    """The simulated day beside the model's prediction for the figures it had."""
    from serving.capacity.report import day_lines, duration

    m, p = sim.measured, sim.predicted
    agree = sim.agreement()
    lines = [f"simulated {m.hours:g} h in {sim.day_seconds:.0f} s (x{sim.scale:g}; "
             f"{sim.real_seconds:.0f} s with the stack's start and a warm-up run); "
             "figures it ran with (simulated seconds):"]
    for name, fig in sim.measured_figures.items():
        if name == "run":
            lines.append(f"  the run's own work: {fig['overhead_seconds']:.0f} s + "
                         f"{fig['seconds_per_record']:.2f} s per clip, over "
                         f"{fig['runs']:.0f} runs")
        else:
            plane = fig["data_plane_seconds_per_record"]
            lines.append(f"  {name:<20} start-up {duration(fig['startup_seconds'])}, "
                         f"{fig['seconds_per_record']:.2f} s per record, {fig['jobs']:.0f} jobs "
                         f"(the data plane alone: {plane:.2f} s per record, "
                         f"{plane / sim.scale * 1000:.1f} ms real)")
    lines += ["", "measured:", *day_lines(m, ""), "",
              f"{'':<24}{'measured':>12}{'model':>12}{'difference':>12}",
              f"{'throughput, clips/h':<24}{m.throughput_per_hour:>12.1f}"
              f"{p.throughput_per_hour:>12.1f}{agree['throughput']:>12.1%}",
              f"{'queue age at the peak':<24}{duration(m.peak_age):>12}"
              f"{duration(p.peak_age):>12}{agree['peak_age']:>12.1%}",
              f"{'queue age, mean of runs':<24}{duration(m.mean_age):>12}"
              f"{duration(p.mean_age):>12}{agree['mean_age']:>12.1%}",
              f"{'runs with clips':<24}{m.runs:>12}{p.runs:>12}",
              f"{'transform jobs':<24}{sum(m.jobs.values()):>12}{sum(p.jobs.values()):>12}"]
    return lines


def simulation_dict(sim: Any) -> dict[str, Any]:
    """The simulated day as JSON-ready data."""
    from serving.capacity.report import day_dict

    return {"scale": sim.scale, "real_seconds": sim.real_seconds,
            "day_seconds": sim.day_seconds,
            "startup_delay_real_seconds": sim.startup_delay,
            "measured_figures": sim.measured_figures, "measured": day_dict(sim.measured),
            "predicted": day_dict(sim.predicted), "planned": day_dict(sim.planned),
            "agreement": sim.agreement(),
            "runs": [dataclasses.asdict(r) for r in sim.runs]}
