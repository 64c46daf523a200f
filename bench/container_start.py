"""Cold start of one model: its serving image on Docker against a local process, same run.

For ``--model`` (clip_stats), staged as ``model.tar.gz`` would hold it, the
seconds from ``runner.start(model_dir)`` until the server answers ``/ping``
(the model loaded), for

- *process*: :class:`~serving.runners.process.ProcessRunner` (``smserve
  serve`` in a subprocess);
- *docker*: :class:`~serving.runners.docker.DockerRunner` with the model's
  image, ``smserve-<image>:<version>`` (build it first: ``make images``).

``--rounds`` (3) rounds, the order alternating; both poll ``/ping`` every
50 ms. ``ratio`` = median docker / median process (no goal: the figure says
what the docker runner costs per job start).

    .venv/bin/python bench/container_start.py [--model clip_stats] [--rounds 3]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
from _common import MODELS, Run, r3, say


def start_seconds(runner: Any, model_dir: Path) -> float:
    """Seconds until one container of ``runner`` is healthy (it is stopped afterwards)."""
    started = time.perf_counter()
    (container,) = runner.start(model_dir, {}, count=1)
    took = time.perf_counter() - started
    container.stop()
    return took


def main() -> None:
    parser = _common.start_script(__doc__)
    parser.add_argument("--model", default="clip_stats")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from serving.modelspec import load_spec
    from serving.runners.docker import DockerRunner
    from serving.runners.process import ProcessRunner
    from serving.transform.job import prepare_model

    run = Run("container_start")
    spec = load_spec(MODELS / args.model)
    env = {**os.environ, "SETUPTOOLS_USE_DISTUTILS": "stdlib"}
    work = Path(tempfile.mkdtemp(prefix="smserve-bench-start-"))
    runners: dict[str, Any] = {}
    try:
        model_dir = prepare_model(MODELS / args.model, work)
        runners = {
            "process": ProcessRunner(env=env, poll_interval=0.05),
            "docker": DockerRunner.for_flavor(spec.image, env, poll_interval=0.05),
        }
        say(f"model {args.model}: process (smserve serve) vs "
            f"{runners['docker'].describe()}, {args.rounds} round(s)")
        times: dict[str, list[float]] = {"process": [], "docker": []}
        for number in range(args.rounds):
            order = ["process", "docker"] if number % 2 == 0 else ["docker", "process"]
            for kind in order:
                times[kind].append(start_seconds(runners[kind], model_dir))
            say(f"  round {number + 1}: process {times['process'][-1]:.2f} s, "
                f"docker {times['docker'][-1]:.2f} s")
        process = statistics.median(times["process"])
        docker = statistics.median(times["docker"])
        ratio = docker / process
        say(f"median cold start: process {process:.2f} s, docker {docker:.2f} s; "
            f"ratio docker / process = {ratio:.2f}")
        run.finish({"model": args.model, "image": runners["docker"].image,
                    "process_s": [r3(t) for t in times["process"]],
                    "docker_s": [r3(t) for t in times["docker"]],
                    "process_median_s": r3(process), "docker_median_s": r3(docker),
                    "ratio": r3(ratio)})
    finally:
        if "docker" in runners:
            runners["docker"].close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
