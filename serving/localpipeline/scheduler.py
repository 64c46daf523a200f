"""Run the models of a plan in threads: each as soon as its dependencies finished.

:class:`Scheduler` knows nothing of S3 or model servers: it calls the
``run_one`` callable it is given for each model, in a thread of its own,
when

- every model it depends on has finished (a failed one skips it and
  everything after it, with the reason), and
- it fits in the plan's budgets next to the models already running
  (:meth:`~serving.localpipeline.plan.Plan.fits`).

Ready models start in plan order; one that does not fit does not hold back a
later one that does. A model that alone exceeds a budget still runs (the plan
counts it as the whole budget), so the run never stalls.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from serving.errors import SmserveError
from serving.localpipeline.plan import Plan
from serving.localpipeline.report import ModelReport
from serving.transform.result import MAX_FAILURE_REASON

#: ``progress(records_done, records_total)``, called from the model's thread.
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelResult:
    """What running one model gave.

    Attributes:
        written: outputs written.
        skipped: records skipped because their output existed.
        failed: records not written.
        reason: why the model failed; None when it succeeded.
        job: the transform job's name.
        runner: what ran it (``local process``, ``docker smserve-cpu:0.1.0``...).
    """

    written: int = 0
    skipped: int = 0
    failed: int = 0
    reason: str | None = None
    job: str | None = None
    runner: str | None = None


#: ``run_one(model, progress) -> ModelResult``: the part that touches the outside.
RunOne = Callable[[str, ProgressFn], ModelResult]


def describe_error(err: BaseException, limit: int = MAX_FAILURE_REASON) -> str:
    """A failure reason for ``err``: our message, or the exception's type and text."""
    text = err.message if isinstance(err, SmserveError) else f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Scheduler:
    """Runs a plan's models through ``run_one``, within its budgets.

    Args:
        plan: the order, dependencies and budgets.
        run_one: runs one model; may raise (the model then fails with the
            error's message as the reason).
        on_change: receives a model's new state (status changes and progress);
            called with the scheduler's lock held, one call at a time.
        on_tick: called every ``poll`` seconds while models run (lock held),
            so a view can show the time passing.
        clock: monotonic seconds, for the reports' start and end times.
        poll: seconds between checks for Ctrl-C while waiting.
    """

    def __init__(self, plan: Plan, run_one: RunOne, *,
                 on_change: Callable[[ModelReport], None] | None = None,
                 on_tick: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, poll: float = 0.5) -> None:
        self.plan = plan
        self._run_one = run_one
        self._on_change = on_change or (lambda _report: None)
        self._on_tick = on_tick or (lambda: None)
        self._clock = clock
        self._poll = poll
        self._cond = threading.Condition()
        self._state: dict[str, ModelReport] = {}
        self._running: set[str] = set()
        self._finished: set[str] = set()
        self._blocked: dict[str, tuple[str, ...]] = {}  # model -> failed models upstream

    def run(self, finished: Mapping[str, ModelReport] | None = None,
            waiting: Mapping[str, ModelReport] | None = None) -> list[ModelReport]:
        """Run every model of the plan; return their reports in plan order.

        Args:
            finished: reports of models already settled (nothing to do): they
                count as finished from the start and are not run.
            waiting: the other models' first reports (their record counts);
                default: empty ones.
        """
        done = dict(finished or {})
        first = dict(waiting or {})
        with self._cond:
            self._state = {n: first.get(n, ModelReport(n)) for n in self.plan.order}
            self._running.clear()
            self._finished.clear()
            self._blocked.clear()
            for name in self.plan.order:
                self._on_change(self._state[name])
            for name, report in done.items():
                if name in self._state:
                    self._finish(name, report)
            while len(self._finished) < len(self.plan.order):
                self._start_ready()
                if len(self._finished) == len(self.plan.order):
                    break
                if not self._running:  # cannot happen with a checked plan; never hang
                    left = [n for n in self.plan.order if n not in self._finished]
                    raise SmserveError(f"the scheduler cannot start {', '.join(left)}; the "
                                       "plan's budgets or dependencies are inconsistent")
                self._cond.wait(self._poll)
                self._on_tick()
            return [self._state[n] for n in self.plan.order]

    # --- with the lock held -------------------------------------------------

    def _finish(self, name: str, report: ModelReport) -> None:
        self._state[name] = report
        self._finished.add(name)
        self._running.discard(name)
        self._on_change(report)

    def _start_ready(self) -> None:
        changed = True
        while changed:
            changed = False
            for name in self.plan.order:
                if name in self._finished or name in self._running:
                    continue
                deps = self.plan.dependencies[name]
                if not all(d in self._finished for d in deps):
                    continue
                roots = sorted({root for d in deps for root in self._failed_roots(d)})
                if roots:
                    self._blocked[name] = tuple(roots)
                    reason = f"upstream {', '.join(roots)} failed"
                    self._finish(name, dataclasses.replace(self._state[name], status="skipped",
                                                           reason=reason))
                    changed = True
                elif self.plan.fits(self._running, name):
                    self._start(name)

    def _failed_roots(self, name: str) -> tuple[str, ...]:
        if self._state[name].status == "failed":
            return (name,)
        return self._blocked.get(name, ())

    def _start(self, name: str) -> None:
        self._running.add(name)
        report = dataclasses.replace(self._state[name], status="running", started=self._clock())
        self._state[name] = report
        self._on_change(report)
        thread = threading.Thread(target=self._work, args=(name,), name=f"model-{name}",
                                  daemon=True)
        thread.start()

    # --- in the model's thread ----------------------------------------------

    def _progress(self, name: str, done: int, total: int) -> None:
        with self._cond:
            report = self._state[name]
            if report.status != "running":
                return
            report = dataclasses.replace(report, done_records=done,
                                         total_records=total or report.total_records)
            self._state[name] = report
            self._on_change(report)

    def _work(self, name: str) -> None:
        try:
            result = self._run_one(name, lambda done, total: self._progress(name, done, total))
        except BaseException as err:  # the run goes on; the model failed
            result = ModelResult(reason=describe_error(err))
        ended = self._clock()
        with self._cond:
            report = self._state[name]
            self._finish(name, dataclasses.replace(
                report, status="failed" if result.reason else "done", written=result.written,
                skipped=result.skipped, failed=result.failed, reason=result.reason,
                job=result.job, runner=result.runner, ended=ended))
            self._cond.notify_all()
