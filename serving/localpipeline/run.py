"""``run_pipeline``: the whole model graph as local batch transforms, one per model.

1. list the input objects under ``s3://BUCKET/PREFIX`` (recursive);
2. build each model's S3-reference requests from the input keys and the
   upstream models' output keys, and leave out records whose output exists
   (concurrent HeadObject calls) unless ``overwrite``;
3. print the plan and the request counts (a dry run stops here);
4. run one local batch transform per model (:func:`serving.transform.predict`)
   through the :class:`~serving.localpipeline.scheduler.Scheduler`, with a
   live view; a model with nothing to do is reported skipped and starts no
   transform job;
5. return the :class:`~serving.localpipeline.report.PipelineReport`
   (:func:`~serving.localpipeline.report.report_message` makes it readable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serving.aws import ClientFactory
from serving.errors import ConfigError, SmserveError, TransformError
from serving.localpipeline.inputs import (
    ModelWork,
    build_work,
    check_allowed,
    describe_work,
    existing,
    list_inputs,
    select,
)
from serving.localpipeline.plan import Resources, plan
from serving.localpipeline.report import ModelReport, PipelineReport, report_message
from serving.localpipeline.scheduler import ModelResult, ProgressFn, Scheduler, describe_error
from serving.localpipeline.view import LiveView
from serving.pipeline import DEFAULT_PREFIX, Graph
from serving.runners.docker import close_runner, runner_description
from serving.runners.process import ProcessRunner
from serving.s3refs import dumps_records
from serving.sagemaker.jobs import SageMakerJobs, predict_via_api
from serving.transform.result import MAX_FAILURE_REASON
from serving.transform.spec import parse_s3_uri

#: Where the transforms' request files and ``.out`` objects go.
WORK_PREFIX = "smserve-work/"

#: ``run_model(work, progress) -> ModelResult``: runs one model's pending records; the
#: records left out because their output exists are added to ``skipped`` by the caller.
RunModel = Callable[[ModelWork, ProgressFn], ModelResult]


def job_name(model: str, work: ModelWork) -> str:
    """A deterministic transform job name: the same records give the same name."""
    digest = hashlib.sha256(dumps_records(work.pending)).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-")[:40].strip("-") or "model"
    return f"pipeline-{stem}-{digest}"


class TransformRunner:
    """Runs one model's records as a local batch transform (the outside-touching part).

    Args:
        graph: the models (for their specs).
        clients: where S3 is; the containers get its settings' environment.
        bucket: the run's bucket (request files go under ``work_prefix`` there).
        work_prefix: key prefix for the transforms' files.
        runner: starts the containers (default: one per job, see
            :func:`serving.transform.run_transform`).
        log: receives job and container log lines (None: dropped).
        jobs: run each model through the SageMaker API (``CreateModel``,
            ``CreateTransformJob``: the embedded stack's, or AWS's) instead of
            starting its containers here.
    """

    def __init__(self, graph: Graph, clients: ClientFactory, bucket: str, *,
                 work_prefix: str = WORK_PREFIX, runner: ProcessRunner | None = None,
                 log: Callable[[str], None] | None = None,
                 jobs: SageMakerJobs | None = None) -> None:
        self.jobs = jobs
        self.graph = graph
        self.clients = clients
        self.bucket = bucket
        self.work_prefix = work_prefix
        self.runner = runner
        self.log = log

    def __call__(self, work: ModelWork, progress: ProgressFn) -> ModelResult:
        """Send ``work.pending`` through the model; count what was written."""
        from serving.transform import predict

        spec = self.graph[work.model]
        name = job_name(work.model, work)
        log = self.log
        if log is not None:
            sink = log
            log = lambda line: sink(f"[{work.model}] {line}")  # noqa: E731
        runner_label = None
        try:
            if self.jobs is not None:
                image = self.jobs.image_for(spec)
                runner_label = f"CreateTransformJob, image {image}"
                answers = predict_via_api(
                    self.jobs, spec, list(work.pending), self.bucket, name,
                    work_prefix=self.work_prefix,
                    progress=(lambda status: log(f"job {name}: {status}")) if log else None)
            else:
                runner = self.runner or self._runner(spec.image, log)
                runner_label = runner_description(runner)
                try:
                    answers = predict(
                        spec.folder, list(work.pending), self.clients, self.bucket,
                        work_prefix=self.work_prefix, job_name=name, runner=runner, log=log,
                        progress=lambda p: progress(p.records_done, p.records_total),
                        model_name=spec.name.replace("_", "-"),
                        instance_count=spec.instance_count,
                        batch_strategy=spec.batch_strategy, max_payload_mb=spec.max_payload_mb,
                        max_concurrent=spec.max_concurrent_transforms,
                        model_environment=spec.container_environment(), image=spec.image)
                finally:
                    if self.runner is None:
                        close_runner(runner)
        except Exception as err:
            return dataclasses.replace(self._failed(work, name, err), runner=runner_label)
        statuses = [a.get("status") if isinstance(a, dict) else None for a in answers]
        written = statuses.count("written")
        skipped = statuses.count("skipped")
        odd = len(statuses) - written - skipped
        reason = None
        if odd:
            reason = (f"{odd} answer(s) of {work.model} are not {{\"status\": \"written\" | "
                      "\"skipped\", ...}; the model must answer with serving.s3refs.response()")
        return ModelResult(written=written, skipped=skipped, failed=odd,
                           reason=reason, job=name, runner=runner_label)

    def _runner(self, flavor: str, log: Callable[[str], None] | None) -> Any:
        """The runner ``SMSERVE_CONTAINER_RUNNER`` chooses for a model of image ``flavor``."""
        from serving.runners.docker import choose_runner
        from serving.settings import Settings

        env = {**Settings.from_environ().environ, **self.clients.settings.environ}
        return choose_runner(self.clients.settings.container_runner, flavor, env, log=log)

    def _failed(self, work: ModelWork, name: str, err: Exception) -> ModelResult:
        result = err.context.get("result") if isinstance(err, SmserveError) else None
        if isinstance(err, TransformError) and result is not None:
            reason = f"transform job {name} failed: {result.failure_reason()}"
        else:
            reason = describe_error(err)
        try:  # outputs written before the failure stay; count them
            written = len(existing(self.clients.client("s3"), work.pending))
        except Exception:
            written = 0
        return ModelResult(written=written, failed=len(work.pending) - written,
                           reason=reason[:MAX_FAILURE_REASON], job=name)


def _nothing_to_do(work: ModelWork) -> ModelReport:
    return ModelReport(work.model, status="skipped", records=len(work.records),
                       skipped=work.exist, reason=f"all {work.exist} output(s) exist")


def run_pipeline(graph: Graph, clients: ClientFactory, input_uri: str, *,
                 models: Sequence[str] | None = None, overwrite: bool = False,
                 gpu_memory_mb: int | None = None, cpu_count: int | None = None,
                 dry_run: bool = False, echo: Callable[[str], None] = print,
                 live: bool = False, verbose: bool = False,
                 output_prefix: str = DEFAULT_PREFIX, work_prefix: str = WORK_PREFIX,
                 runner: ProcessRunner | None = None, run_model: RunModel | None = None,
                 resources: Resources | None = None, notes: Sequence[str] = (),
                 show_plan: bool = True, jobs: SageMakerJobs | None = None,
                 clock: Callable[[], float] = time.monotonic) -> PipelineReport:
    """Run the model graph on the objects under ``input_uri``, one local transform per model.

    Args:
        graph: the models (from ``models/*/model.toml``).
        clients: where S3 is; its settings' allow-lists must admit the bucket.
        input_uri: ``s3://BUCKET/PREFIX``; every object under it is an input.
        models: run only these (their other dependencies' outputs must exist).
        overwrite: redo records whose output exists.
        gpu_memory_mb: the GPU budget (None: what the GPU reports; 0 without one).
        cpu_count: the CPU-worker budget (None: ``os.cpu_count()``).
        dry_run: print the plan and the request counts; run nothing.
        echo: prints a line (or, with ``live``, a block redrawn in place).
        live: redraw the view in place with ANSI escapes (a terminal).
        verbose: print the jobs' and containers' log lines.
        output_prefix: where outputs go (``results/``).
        work_prefix: where the transforms' request files go.
        runner: starts the model servers (default: a process runner per job).
        run_model: runs one model (default: :class:`TransformRunner`; tests pass a fake).
        resources: the budgets (default: from ``gpu_memory_mb``/``cpu_count``/the machine).
        notes: lines printed with the plan (defaults the caller chose).
        show_plan: print the plan (the request counts and the view are always printed).
        jobs: run the models through the SageMaker API (see :class:`TransformRunner`).
        clock: monotonic seconds.

    Prints the plan, the request counts and the live view through ``echo``; a
    dry run also prints the counts table. Print the result with
    :func:`~serving.localpipeline.report.report_message`.

    Returns:
        the report; ``report.exit_code`` is 0 only when every model succeeded.

    Raises:
        ModelSpecError: ``models`` names a model that does not exist.
        ConfigError: a bad ``input_uri``, no input objects, or a bucket the
            containers may not use.
        BadRequest: an input key cannot be turned into an output key.
    """
    started = clock()
    sub = select(graph, models)
    bucket, prefix = parse_s3_uri(input_uri, "--input")
    check_allowed(clients.settings, bucket, output_prefix)
    chosen = plan(sub, resources or Resources.detect(gpu_memory_mb, cpu_count))
    if show_plan:
        for line in [*chosen.describe(), *notes]:
            echo(line)
    s3 = clients.client("s3")
    keys = list_inputs(s3, bucket, prefix, exclude=(output_prefix, work_prefix))
    if not keys:
        raise ConfigError(f"no input objects under {input_uri}; check --input (the prefix is "
                          "matched as given, like an S3 prefix)")
    work = build_work(sub, s3, bucket, keys, prefix=output_prefix, overwrite=overwrite)
    for line in describe_work(work, len(keys)):
        echo(line)
    if dry_run:
        reports = tuple(_nothing_to_do(w) if not w.pending else
                        ModelReport(w.model, status="planned", records=len(w.records),
                                    skipped=w.exist) for w in work.values())
        report = PipelineReport(input_uri, len(keys), reports, chosen, started, clock(),
                                dry_run=True, notes=tuple(notes))
        echo(report_message(report))
        return report
    run_model = run_model or TransformRunner(sub, clients, bucket, work_prefix=work_prefix,
                                             runner=runner, log=echo if verbose else None,
                                             jobs=jobs)
    finished = {name: _nothing_to_do(w) for name, w in work.items() if not w.pending}
    echo("")
    view = LiveView(chosen.order, echo, live=live and not verbose, clock=clock)
    model_runner = run_model

    def run_one(name: str, progress: ProgressFn) -> ModelResult:
        result = model_runner(work[name], progress)
        return dataclasses.replace(result, skipped=result.skipped + work[name].exist)

    scheduler = Scheduler(chosen, run_one, on_change=view.update, on_tick=view.tick,
                          clock=clock)
    waiting = {n: ModelReport(n, records=len(w.records), total_records=len(w.pending))
               for n, w in work.items()}
    results = scheduler.run(finished, waiting)
    view.close()
    return PipelineReport(input_uri, len(keys), tuple(results), chosen, started, clock(),
                          notes=tuple(notes))


def load_graph(models_root: str | Path) -> Graph:
    """The graph of every model folder under ``models_root``.

    Raises:
        ModelSpecError: a folder without ``model.toml``, a bad ``model.toml``
            or a cycle in ``depends_on``; the message names the file.
    """
    from serving.modelspec import discover

    return Graph(discover(models_root))
