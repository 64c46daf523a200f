"""The CPU an idle deployment's scheduler and PostgreSQL use, by ``scheduler_idle_sleep_time``.

``local_test/airflow_deploy.py`` sets ``[scheduler] scheduler_idle_sleep_time``
to 0.25 s (Airflow's default: 1 s) so that a task's downstream is queued
soon after it ends. An idle scheduler loops that often; this measures what
it costs: for each value, a LocalExecutor deployment is started, left to
settle (``--settle`` seconds: the DAGs parsed, the first loops done), and
the CPU time of the scheduler's process tree and of every PostgreSQL
process is read from ``/proc`` over ``--window`` seconds, as a share of one
core. The values are measured in the same run, one after the other.

    .venv/bin/python bench/scheduler_idle_cpu.py [--sleeps 1 0.25] [--window 30]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from _common import json_line, load_average, machine, r3, say, start_script

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: set[int]) -> float:
    """User and system CPU seconds of ``pids`` (processes gone by now count 0)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def postgres_pids() -> set[int]:
    """Every PostgreSQL process on the machine (the deployment's is the only one here)."""
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/comm") as comm:
                if entry.isdigit() and comm.read().startswith("postgres"):
                    found.add(int(entry))
        except OSError:
            continue
    return found


def measure(sleep: str, settle: float, window: float) -> dict[str, Any]:
    """Start a deployment with ``sleep``, let it settle, read its idle CPU over ``window``."""
    from local_test.airflow_deploy import Deployment

    class WithSleep(Deployment):
        def airflow_environ(self) -> dict[str, str]:
            return {**super().airflow_environ(),
                    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": sleep}

    with WithSleep("local") as deployment:
        scheduler = next(c for c in deployment.components if c.name == "scheduler")
        time.sleep(settle)  # a measurement window, not a wait for a condition
        tree, database = scheduler.tree(), postgres_pids()
        before = cpu_seconds(tree), cpu_seconds(database)
        begun = time.monotonic()
        time.sleep(window)
        tree |= scheduler.tree()
        wall = time.monotonic() - begun
        return {"idle_sleep_s": float(sleep),
                "scheduler_core_share": r3((cpu_seconds(tree) - before[0]) / wall),
                "postgres_core_share": r3((cpu_seconds(database) - before[1]) / wall),
                "window_s": r3(wall), "load_average": load_average()}


def main() -> int:
    """Measure each ``--sleeps`` value; print the figures and a JSON line."""
    parser = start_script(__doc__)
    parser.add_argument("--sleeps", nargs="+", default=["1", "0.25"], metavar="S",
                        help="scheduler_idle_sleep_time values to compare (default: 1 0.25)")
    parser.add_argument("--settle", type=float, default=20.0, metavar="S")
    parser.add_argument("--window", type=float, default=30.0, metavar="S")
    args = parser.parse_args()
    for value in args.sleeps:
        try:
            if float(value) < 0:
                raise ValueError
        except ValueError:
            parser.error(f"--sleeps {value}: give a number of seconds, 0 or more")
    say(f"bench/scheduler_idle_cpu.py: idle deployment's CPU by idle sleep; {machine()}")
    rows = []
    for value in args.sleeps:
        row = measure(value, args.settle, args.window)
        rows.append(row)
        say(f"  idle sleep {value:>5} s: scheduler {row['scheduler_core_share']:.1%} of a core, "
            f"PostgreSQL {row['postgres_core_share']:.1%} (over {row['window_s']:.0f} s, load "
            f"{row['load_average']})")
    say(json_line({"bench": "scheduler_idle_cpu", "rows": rows}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
