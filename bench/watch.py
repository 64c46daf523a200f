"""Watch mode's edit-to-result time for the example models, against a cold ``smserve check``.

For each example model (a copy of it), ``serving.check.watch.Watch`` runs in
handlers mode (no transform) in a thread here; the script saves
``serving.py`` (a comment appended) and measures the time from the save to
the ``[ok] handlers in-process`` line: the poll, the settling wait, a fresh
cycle process forked from the preloaded server, the shared stack. The
baseline, in the same run: ``smserve check models/NAME`` as a new process,
what a user runs per edit without watch mode (interpreter start, imports, a
stack of its own).

    python bench/watch.py [--edits 3] [--models clip_stats,frame_features,scene_classifier]

Goal (issue 14): edit-to-result at most 2 s for the example models.
"""

from __future__ import annotations

import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import MODELS, ROOT, Run, r3, say, start_script

GOAL_S = 2.0
DEFAULT_MODELS = "clip_stats,frame_features,scene_classifier"


def cold_check(folder: Path) -> float:
    """Seconds ``smserve check FOLDER`` takes as a new process (it must pass)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "serving.cli", "check", str(folder)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"smserve check {folder} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def watched(folder: Path, edits: int) -> tuple[float, list[float]]:
    """(seconds to the first result, seconds from each save to its result)."""
    from serving.check.watch import Watch

    lines: queue.Queue[tuple[float, str]] = queue.Queue()
    stop = threading.Event()

    def out(text: str) -> None:
        for line in text.splitlines():
            lines.put((time.perf_counter(), line))

    def result(deadline_s: float = 300) -> float:
        end = time.perf_counter() + deadline_s
        while True:
            at, line = lines.get(timeout=max(0.1, end - time.perf_counter()))
            if line.startswith("[FAILED] handlers"):
                raise SystemExit(f"the check of {folder} failed in watch mode")
            if line.startswith("[ok] handlers in-process"):
                return at

    started = time.perf_counter()
    with Watch(folder, transform=False, out=out) as watch:
        runner = threading.Thread(target=watch.run, kwargs={"until": stop.is_set}, daemon=True)
        runner.start()
        try:
            first = result() - started
            handlers = folder / "serving.py"
            times = []
            for i in range(edits):
                time.sleep(0.3)  # a person's pause between saves; not part of the figure
                saved = time.perf_counter()
                with handlers.open("a") as f:
                    f.write(f"# edit {i}\n")
                times.append(result() - saved)
        finally:
            stop.set()
            runner.join(60)
    return first, times


def main() -> int:
    """Run the benchmark; print the figures and the JSON line."""
    parser = start_script(__doc__)
    parser.add_argument("--edits", type=int, default=3, help="saves per model (3)")
    parser.add_argument("--models", default=DEFAULT_MODELS, help="models to watch (comma list)")
    args = parser.parse_args()
    run = Run("watch")
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="smserve-bench-watch-") as tmp:
        for name in [m for m in args.models.split(",") if m]:
            folder = Path(tmp) / name
            shutil.copytree(MODELS / name, folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
            cold = cold_check(folder)
            first, times = watched(folder, args.edits)
            median = statistics.median(times)
            figures[name] = {"cold_check_s": r3(cold), "watch_first_s": r3(first),
                             "edit_to_result_median_s": r3(median),
                             "edit_to_result_max_s": r3(max(times)),
                             "ratio_to_cold": r3(median / cold)}
            met = "met" if median <= GOAL_S else "missed"
            say(f"{name:18} cold smserve check {cold:5.2f} s | watch: first result "
                f"{first:5.2f} s, save -> result median {median:4.2f} s (max {max(times):4.2f})"
                f" = {median / cold:4.2f} of cold; goal <= {GOAL_S:g} s: {met}")
    run.finish({"models": figures, "goal_s": GOAL_S, "edits": args.edits})
    return 0


if __name__ == "__main__":
    sys.exit(main())
