"""What a pipeline run did, per model, in the shape the Airflow DAG's report uses.

Per model: its status, how many records were written, skipped (the output
existed) and failed, and why (the transform's ``FailureReason``, or
"upstream X failed" for a model whose dependency failed). The times are
monotonic seconds, so tests can check which models ran at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.errors import TransformError
from serving.localpipeline.plan import Plan

#: A model's state. ``planned`` only appears in a dry run.
STATUSES = ("waiting", "running", "done", "failed", "skipped", "planned")


@dataclass(frozen=True)
class ModelReport:
    """One model's outcome (or, while the run goes on, its state).

    Attributes:
        model: the model's name.
        status: one of :data:`STATUSES`.
        records: request records built for it (one per input object).
        written: outputs written.
        skipped: records left out or skipped because their output existed.
        failed: records whose output was not written because the model failed.
        reason: why it failed or was skipped; None when it ran.
        job: the transform job's name, when one was started.
        runner: what ran its containers (``local process``, ``docker IMAGE``, or
            ``CreateTransformJob, image IMAGE``); None when nothing ran.
        started: monotonic time its transform started (None: none started).
        ended: monotonic time it finished (None: not started, or still running).
        done_records: records answered so far (progress, while running).
        total_records: records sent to the transform (progress, while running).
    """

    model: str
    status: str = "waiting"
    records: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    reason: str | None = None
    job: str | None = None
    runner: str | None = None
    started: float | None = None
    ended: float | None = None
    done_records: int = 0
    total_records: int = 0

    @property
    def seconds(self) -> float | None:
        """How long its transform ran (None: it did not run)."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the Airflow reporter's per-model shape)."""
        return {"model": self.model, "status": self.status, "records": self.records,
                "written": self.written, "skipped": self.skipped, "failed": self.failed,
                "reason": self.reason, "job": self.job, "runner": self.runner,
                "started": self.started,
                "ended": self.ended, "seconds": self.seconds}


@dataclass(frozen=True)
class PipelineReport:
    """A whole run.

    Attributes:
        input_uri: ``s3://bucket/prefix`` the inputs were listed from.
        inputs: input objects found.
        models: one report per model, in run order.
        plan: the plan the run followed.
        started: monotonic time the run started (before listing the inputs).
        ended: monotonic time it ended.
        dry_run: nothing was run; statuses are ``planned`` or ``skipped``.
        notes: lines printed with the plan (defaults chosen for the run).
    """

    input_uri: str
    inputs: int
    models: tuple[ModelReport, ...]
    plan: Plan
    started: float
    ended: float
    dry_run: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when no model failed (so none was skipped for a failed one)."""
        return not self.failed_models

    @property
    def failed_models(self) -> list[str]:
        """Models that failed."""
        return [m.model for m in self.models if m.status == "failed"]

    @property
    def exit_code(self) -> int:
        """0 when everything succeeded; a transform failure's exit code otherwise."""
        return 0 if self.ok else TransformError.exit_code

    @property
    def seconds(self) -> float:
        """Wall time of the run."""
        return self.ended - self.started

    def model(self, name: str) -> ModelReport:
        """The report of model ``name``.

        Raises:
            KeyError: no such model in the run.
        """
        for report in self.models:
            if report.model == name:
                return report
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {"input": self.input_uri, "inputs": self.inputs, "ok": self.ok,
                "dry_run": self.dry_run, "seconds": self.seconds,
                "models": [m.to_dict() for m in self.models], "plan": self.plan.to_dict()}


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines() or [""])


def report_message(report: PipelineReport) -> str:
    """The report as a readable summary: one row per model, then the reasons."""
    width = max([len("model"), *(len(m.model) for m in report.models)])
    if report.dry_run:
        head = (f"dry run on {report.input_uri}: {report.inputs} input object(s), "
                f"{len(report.models)} model(s); nothing was run")
        rows = [f"  {'model':<{width}}  {'status':<8} {'records':>7} {'to run':>7} "
                f"{'exist':>7}"]
        for m in report.models:
            rows.append(f"  {m.model:<{width}}  {m.status:<8} {m.records:>7} "
                        f"{m.records - m.skipped:>7} {m.skipped:>7}")
        return "\n".join([head, *rows])
    failed = report.failed_models
    outcome = "succeeded" if report.ok else f"FAILED ({', '.join(failed)})"
    head = (f"pipeline on {report.input_uri}: {report.inputs} input object(s), "
            f"{len(report.models)} model(s), {report.seconds:.1f} s: {outcome}")
    rows = [f"  {'model':<{width}}  {'status':<8} {'written':>7} {'skipped':>7} "
            f"{'failed':>7}  time"]
    for m in report.models:
        took = f"{m.seconds:.1f} s" if m.seconds is not None else "-"
        ran = f"  -> {m.runner}" if m.runner else ""
        rows.append(f"  {m.model:<{width}}  {m.status:<8} {m.written:>7} {m.skipped:>7} "
                    f"{m.failed:>7}  {took}{ran}")
        if m.reason:
            rows.append(_indent(m.reason, "      "))
    return "\n".join([head, *rows])
