"""Shared pieces of the benchmarks: set-up, the embedded stack, the environment, statistics.

Not a benchmark itself. The scripts import it as ``_common`` (``bench/`` is
``sys.path[0]`` when a script runs as ``python bench/NAME.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BUCKET = "smserve-bench"
OUTPUT_PREFIX = "results/"


def prepare_process() -> None:
    """What must be set before chainer (through numpy.distutils) is imported."""
    os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    if str(ROOT) not in sys.path:  # local_test, when run from elsewhere
        sys.path.insert(1, str(ROOT))


def match_worker_threads() -> None:
    """Give this process the BLAS threads a model-server worker has; before numpy loads.

    multi-model-server sets ``OMP_NUM_THREADS=1`` for its workers when it is
    unset (``mms/model_service_worker.py``); an in-process comparison gets the
    same, so both paths run the handlers with one BLAS thread.
    """
    if "numpy" in sys.modules:
        raise RuntimeError("match_worker_threads() must run before numpy is imported")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def say(line: str = "") -> None:
    """Print a line now (the scripts' figures, not their JSON line)."""
    print(line, flush=True)


def start_script(doc: str | None, *, worker_threads: bool = False) -> argparse.ArgumentParser:
    """What a script's ``main()`` does first; returns its argument parser, with ``--stack``.

    Args:
        doc: the script's docstring; its first paragraph describes the parser.
        worker_threads: :func:`match_worker_threads` too (for in-process comparisons).
    """
    prepare_process()
    if worker_threads:
        match_worker_threads()
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--stack", choices=("process", "thread"), default="process",
                        help="the embedded stack in its own process (default) or a thread here")
    return parser


def load_average() -> float | None:
    """The 1-minute load average (other work on a shared machine), or None."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def machine() -> str:
    """One line about where the figures come from."""
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return (f"{os.cpu_count()} CPUs, {platform.python_implementation()} "
            f"{platform.python_version()}, {platform.system()} {platform.release()}, "
            f"load average {load}")


class Run:
    """One run of a script: the machine line it starts with, its clock, its JSON line.

    Made at the start: prints ``NAME: machine: ...`` and notes the load average.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.load_at_start = load_average()
        self.started = time.perf_counter()
        say(f"{name}: machine: {machine()}")

    def seconds(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started

    def finish(self, figures: Mapping[str, Any]) -> None:
        """Print the JSON line: the script's name, ``figures``, the CPUs and load averages."""
        say(json_line({"bench": self.name, **figures, "cpus": os.cpu_count(),
                       "load_average_1m": {"start": self.load_at_start,
                                           "end": load_average()}}))


# --- the embedded stack ---------------------------------------------------------------------


@dataclass
class Stack:
    """The embedded AWS stack, and the environment that points clients at it."""

    endpoint_url: str
    environ: dict[str, str]
    mode: str


def _wait_answers(url: str, timeout: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the stack process exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _stat(pid: int) -> tuple[int, str] | None:
    """``(parent pid, start time)`` of a process, or None when it is gone."""
    try:
        text = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ... starttime(22nd)": comm may hold spaces.
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19]


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of every process below ``pid``, read from ``/proc``."""
    parents: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _stat(int(entry.name))
            if info is not None:
                parents.setdefault(info[0], []).append((int(entry.name), info[1]))
    found: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def stop_process_group(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM the process's group, then SIGKILL it; waits for the process.

    Descendants that moved to a session of their own (multi-model-server does)
    and outlive the process are killed too, by process id (checked against
    their start time, so a reused id is left alone).
    """
    below = descendants(process.pid) if process.poll() is None else []
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    for pid, started in below:
        info = _stat(pid)
        if info is not None and info[1] == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def embedded_stack(mode: str = "process") -> Iterator[Stack]:
    """The embedded stack (moto on loopback), stopped on exit.

    ``process`` runs ``smserve local up`` in its own process, so S3 work never
    competes for this process's GIL with the code being measured (both paths
    of a comparison then talk to the same outside S3). ``thread`` runs
    :class:`~serving.local.stack.LocalStack` in a thread here, as the demo does.
    """
    from serving.local.stack import LocalStack
    from serving.ports import free_port

    if mode == "thread":
        stack = LocalStack().start()
        try:
            yield Stack(stack.endpoint_url, stack.environ(), mode)
        finally:
            stack.stop()
        return
    if mode != "process":
        raise ValueError(f"stack mode {mode!r}; use process or thread")
    port = free_port()
    helper = LocalStack(port=port)  # only for its environ(); not started
    process = subprocess.Popen([sys.executable, "-m", "serving.cli", "local", "up",
                                "--port", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_answers(helper.endpoint_url + "/moto-api/", 60, process)
        yield Stack(helper.endpoint_url, helper.environ(), mode)
    finally:
        stop_process_group(process)


def bench_environ(stack: Stack, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment with the stack and the bench bucket's allow-lists on top."""
    return {
        **os.environ,
        **stack.environ,
        "SMSERVE_ALLOWED_BUCKETS": BUCKET,
        "SMSERVE_OUTPUT_PREFIXES": OUTPUT_PREFIX,
        "SETUPTOOLS_USE_DISTUTILS": os.environ.get("SETUPTOOLS_USE_DISTUTILS", "stdlib"),
        **(extra or {}),
    }


def use_environ(env: Mapping[str, str]) -> None:
    """Make ``env`` this process's environment (the in-process handlers read it once)."""
    os.environ.update(env)
    from serving import s3refs

    s3refs.reset_runtime()


@dataclass
class Setup:
    """The embedded stack with the bench bucket made: its environment, settings and clients."""

    stack: Stack
    env: dict[str, str]
    settings: Any  # serving.settings.Settings
    clients: Any  # serving.aws.ClientFactory

    @property
    def s3(self) -> Any:
        """An S3 client for the stack."""
        return self.clients.client("s3")


@contextlib.contextmanager
def bench_stack(mode: str = "process", extra: Mapping[str, str] | None = None, *,
                in_process: bool = True) -> Iterator[Setup]:
    """:func:`embedded_stack`, the :func:`bench_environ` on it (with ``extra``), the bucket made.

    Args:
        in_process: make that environment this process's too (:func:`use_environ`),
            for scripts that run handlers here.
    """
    from serving.aws import ClientFactory
    from serving.settings import Settings

    with embedded_stack(mode) as stack:
        env = bench_environ(stack, extra)
        if in_process:
            use_environ(env)
        settings = Settings.from_environ(env)
        clients = ClientFactory(settings)
        clients.client("s3").create_bucket(Bucket=BUCKET)
        yield Setup(stack, env, settings, clients)


def jsonl_objects(lines: Sequence[bytes], objects: int) -> list[bytes]:
    """``lines`` (in order, as evenly as they go) as ``objects`` JSON-lines bodies."""
    bodies: list[list[bytes]] = [[] for _ in range(objects)]
    for i, line in enumerate(lines):
        bodies[i * objects // len(lines)].append(line)
    return [b"\n".join(part) + b"\n" for part in bodies]


# --- statistics ------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean, min of ``seconds``, in milliseconds."""
    ms = [s * 1000.0 for s in seconds]
    return {"median": statistics.median(ms), "p90": percentile(ms, 90),
            "mean": statistics.fmean(ms), "min": min(ms)}


def union_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``[start, end]`` intervals."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def r3(value: float) -> float:
    """Rounded for the JSON line."""
    return round(value, 3)


def json_line(doc: Mapping[str, Any]) -> str:
    """The last line a benchmark prints."""
    return json.dumps(doc, sort_keys=False)
