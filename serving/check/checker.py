"""The in-process check: drive the handlers on the sample request and measure each one."""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from serving._environ import model_environment
from serving.check.report import Report, Stage, describe, failure_of
from serving.check.run import Run, model_environ, round_trip, run_settings
from serving.check.sample import SAMPLE_DATA, Sample, load_sample, outputs, stage_sample
from serving.errors import ConfigError, SmserveError
from serving.handler import Handlers, load_handlers
from serving.modelspec import load_spec
from serving.settings import Settings

MODES = ("handlers", "serve", "transform")


# --- measuring -------------------------------------------------------------------------------


class _Meter:
    """Measures one call: wall time, Python peak, resident-memory change, GPU pool."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()

    def gpu_bytes(self) -> int | None:
        """Bytes cupy's default pool holds, when the model has cupy on a GPU."""
        import sys

        cupy = sys.modules.get("cupy")
        if cupy is None:
            return None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                return None
            return int(cupy.get_default_memory_pool().total_bytes())
        except Exception:
            return None

    def call(self, stage: Stage, fn: Callable[..., Any], *args: Any) -> Any:
        rss = self._process.memory_info().rss
        tracemalloc.reset_peak()
        traced = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        try:
            return fn(*args)
        except BaseException:
            stage.ok = False
            raise
        finally:
            stage.seconds = time.perf_counter() - started
            stage.peak_bytes = max(0, tracemalloc.get_traced_memory()[1] - traced)
            stage.rss_delta = self._process.memory_info().rss - rss
            stage.gpu_bytes = self.gpu_bytes()


def _measured(meter: _Meter, stage: Stage, fn: Callable[..., Any],
              shown: Callable[[tuple[Any, ...]], str]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        stage.inputs = shown(args)
        result = meter.call(stage, fn, *args)
        stage.output = describe(result)
        return result

    return call


def _args(*names: str) -> Callable[[tuple[Any, ...]], str]:
    """Describe the arguments whose names are not ``model`` (the model is shown once)."""
    def shown(args: tuple[Any, ...]) -> str:
        return ", ".join(describe(a) for n, a in zip(names, args, strict=False) if n != "model")

    return shown


# --- the check -----------------------------------------------------------------------------


def check(folder: str | Path, *, request: str | Path | None = None,
          data_dir: str | Path | None = None, mode: str = "handlers",
          settings: Settings | None = None, stack: Any = None,
          log: Callable[[str], None] | None = None) -> Report:
    """Check a model folder on its sample request; never raises for the model's faults.

    Args:
        folder: ``models/NAME``.
        request: the request file (default ``folder/sample_request.json``).
        data_dir: the sample data (default ``folder/sample_data``).
        mode: ``"handlers"`` (in this process), ``"serve"`` (through the real
            model server) or ``"transform"`` (a local batch transform).
        settings: the base environment (default: the process's).
        stack: a started :class:`~serving.local.stack.LocalStack` to use
            (default: a private one, stopped at the end).
        log: receives the model server's log lines (``serve``, ``transform``).

    Returns:
        the report: per-handler measurements, objects read and written, and
        the failure, if any (naming the handler, the file and the fix).

    Raises:
        ConfigError: ``mode`` is not one of :data:`MODES`.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown check mode {mode!r}; use one of {', '.join(MODES)}")
    folder = Path(folder)
    settings = settings or Settings.from_environ()
    report = Report(model=folder, mode=mode)
    try:
        handlers = load_handlers(folder, settings.program)
        spec = load_spec(folder)
        sample = load_sample(folder, spec, request)
    except SmserveError as err:
        report.failure = failure_of("load", err, folder, at_start=True)
        return report
    report.request = sample.path
    run = Run(folder, spec, sample, settings, report)
    with contextlib.ExitStack() as cleanup:
        if sample.records is not None:
            if stack is None:
                from serving.local.stack import LocalStack

                stack = cleanup.enter_context(LocalStack())
            run.env = model_environ(settings, spec, stack.environ(), sample.buckets)
            from serving.aws import ClientFactory

            run.clients = ClientFactory(run_settings(settings, run.env))
            try:
                report.inputs = stage_sample(run.clients.client("s3"), sample,
                                             Path(data_dir) if data_dir else folder / SAMPLE_DATA)
            except SmserveError as err:
                report.failure = failure_of("predict_fn", err, folder, at_start=False)
                return report
        if mode == "handlers":
            _in_process(run, handlers)
        else:
            from serving.check import server

            runner = server.served if mode == "serve" else server.transformed
            runner(run, log)
    return report


def _in_process(run: Run, handlers: Handlers) -> None:
    report, folder, sample = run.report, run.folder, run.sample
    meter = _Meter()
    started_tracing = not tracemalloc.is_tracing()
    if started_tracing:
        tracemalloc.start()
    try:
        with model_environment(run.env):
            model = _load(report, meter, handlers, folder)
            if report.failure is not None:
                return
            answers = _invoke(report, meter, handlers, model, sample, folder)
            if answers is not None and run.clients is not None:
                report.outputs = outputs(run.clients.client("s3"), answers)
    finally:
        if started_tracing:
            tracemalloc.stop()


def _load(report: Report, meter: _Meter, handlers: Handlers, folder: Path) -> Any:
    stage = Stage("model_fn")
    report.stages.append(stage)
    timed = replace(handlers, model_fn=_measured(meter, stage, handlers.model_fn,
                                                 _args("model_dir")))
    try:
        return timed.load_model(folder)
    except SmserveError as err:
        report.failure = failure_of("model_fn", err, folder, at_start=True)
        return None


def _invoke(report: Report, meter: _Meter, handlers: Handlers, model: Any, sample: Sample,
            folder: Path) -> list[Any] | None:
    names: list[tuple[str, tuple[str, ...]]]
    if handlers.transform_fn is not None:
        names = [("transform_fn", ("model", "body", "content_type", "accept"))]
    else:
        names = [("input_fn", ("body", "content_type")), ("predict_fn", ("data", "model")),
                 ("output_fn", ("prediction", "accept"))]
    stages = {name: Stage(name) for name, _ in names}
    report.stages.extend(stages.values())
    wrapped: dict[str, Any] = {
        name: _measured(meter, stages[name], getattr(handlers, name), _args(*args))
        for name, args in names}
    seen: list[Any] = []  # what predict_fn returned: per-record outcomes keep their exceptions
    if "predict_fn" in wrapped:
        measured = wrapped["predict_fn"]

        def predict_fn(data: Any, model: Any) -> Any:
            out = measured(data, model)
            seen.append(out)
            return out

        wrapped["predict_fn"] = predict_fn
    timed = replace(handlers, **wrapped)
    try:
        response = timed.invoke(model, sample.body, sample.content_type, sample.accept)
    except SmserveError as err:
        failed = [s for s in stages.values() if not s.ok]
        name = str(err.context.get("handler") or (failed[0].name if failed else names[-1][0]))
        stages[name].ok = False
        report.failure = failure_of(name, err, folder, at_start=False)
        return None
    causes = {i: r.cause for i, r in enumerate(seen[0] if seen else [])
              if getattr(r, "cause", None) is not None}
    answers = round_trip(report, response.body, response.content_type, sample, folder,
                         names[-1][0], causes)
    if report.failure is not None and report.failure.handler == "predict_fn" and seen:
        stages["predict_fn"].ok = False
    return answers
