"""One model's batch transform job: create it once, adopt it on a retry, wait without a worker.

The job's name is a function of the DAG run, the model, the batch and the
task's try (:func:`job_name`), so every poke and every retry knows which jobs
are its own. No worker slot is held while SageMaker works: with
``deferrable`` (the default) the task defers to a
:class:`~smserve_dags.triggers.TransformJobTrigger` (task state ``deferred``)
and, when the job ends, resumes in :meth:`~BatchTransformOperator.execute_complete`
with one more poke; otherwise it is a sensor in ``reschedule`` mode. Before either,
the task polls the job itself for ``transform_hold_seconds`` (default 0): a job
that ends within it costs no hand-over, which matters for jobs of seconds (the
embedded stack), not for SageMaker's jobs of minutes. Each poke:

1. ``DescribeTransformJob`` for the names of this try and the earlier ones:
   a ``Completed`` one is adopted (no new job; its outputs are counted), an
   ``InProgress`` one is waited for;
2. this try's job ``Failed`` or ``Stopped``: report why, fail (no retry: the
   same records would fail again; the messages come back by themselves);
3. nothing left to do (every output exists): report it, done;
4. no job yet: the model (packaged, ``CreateModel`` from the Variable's
   ``images``, reused when unchanged) and ``CreateTransformJob`` with the
   model's ``model.toml`` settings.

Models and jobs are made through :class:`serving.sagemaker.jobs.SageMakerJobs`,
the path ``smserve pipeline run --api`` takes: one naming scheme for models
(``<sagemaker_model_prefix><model>-<digest>``), one request builder.

When it ends it pushes the model's report (the local pipeline's per-model
dict: written, skipped, failed, why, the job's name and time).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NoReturn

from airflow.sdk import BaseSensorOperator

from smserve_dags.config import ConfigError, PipelineConfig, load_config
from smserve_dags.operators.aws import Aws, job_missing
from smserve_dags.operators.models import model_graph
from smserve_dags.operators.report import fail, report_message
from smserve_dags.triggers import RUNNING, TransformJobTrigger

__all__ = ["JOB_NAME", "RUNNING", "BatchTransformOperator", "job_name", "transform_jobs"]

log = logging.getLogger("smserve.transform")

#: SageMaker's rule for transform job names.
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def job_name(dag_id: str, run_id: str, model: str, batch: str, attempt: int) -> str:
    """The transform job of one try of one model on one batch of one DAG run.

    ``smserve-<model>-<hash of DAG, run, model and batch>-<try>``: at most 57
    characters, a valid SageMaker name for any DAG id, run id and model name.
    """
    digest = hashlib.sha256(f"{dag_id}\n{run_id}\n{model}\n{batch}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", model).strip("-")[:30].strip("-") or "model"
    return f"smserve-{slug}-{digest}-{attempt}"


class _HookClients:
    """The connection's boto3 clients, as :class:`SageMakerJobs` asks for them."""

    def __init__(self, aws: Aws) -> None:
        self._aws = aws

    def client(self, name: str) -> Any:
        return {"s3": self._aws.s3, "sagemaker": self._aws.sagemaker}[name]


def transform_jobs(cfg: PipelineConfig, aws: Aws) -> Any:
    """The :class:`~serving.sagemaker.jobs.SageMakerJobs` of these settings and connection."""
    from serving.sagemaker.jobs import SageMakerJobs

    return SageMakerJobs(_HookClients(aws), role_arn=cfg.execution_role(), images=cfg.images,
                         model_prefix=cfg.sagemaker_model_prefix,
                         allowed_buckets=(cfg.bucket,), output_prefixes=(cfg.output_prefix,))


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _noted(report: dict[str, Any], work: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` with the plan's objects not run (upstream output missing) in its note."""
    lines = [str(line) for line in work.get("not_run") or []]
    if lines:
        report["note"] = "\n".join([*filter(None, [report.get("note")]), *lines])
    return report


class BatchTransformOperator(BaseSensorOperator):
    """Run one model's pending records as a SageMaker batch transform job; see the module doc.

    Args:
        model: the model (a folder of ``models/``).
        env: the settings' environment (``main``, ``dev``).
        batch: the sensor's XCom ``batch`` (an ``XComArg``): the task prepares
            the model's requests itself (:func:`~smserve_dags.operators.requests.prepare`)
            before it creates the job, and keeps that plan next to them.
        messages: the sensor's XCom ``messages`` (their visibility is extended).
        work: instead of ``batch``, what a separate ``requests`` task returned.
        **kwargs: for ``BaseSensorOperator`` (``mode`` is ``reschedule``; the
            poll interval and the time limit come from the Variable).
    """

    template_fields = ("work", "batch", "messages")
    ui_color = "#e8f0e0"

    def __init__(self, *, model: str, env: str, batch: Any = None, messages: Any = None,
                 work: Any = None, **kwargs: Any) -> None:
        if (batch is None) == (work is None):
            raise ValueError(f"{model}: give the transform batch= (the sensor's XCom batch) "
                             "or work= (a requests task's result), not both or neither")
        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 30)
        kwargs.setdefault("timeout", 6 * 3600)
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=30))
        super().__init__(**kwargs)
        self.model = model
        self.env = env
        self.work = work
        self.batch = batch
        self.messages = messages
        self._plan: dict[str, Any] | None = None
        self._cfg: PipelineConfig | None = None
        self._waiting: str | None = None
        self._deferred = False
        self._clients: Aws | None = None

    # --- deferred -------------------------------------------------------------------------

    def execute(self, context: Any) -> Any:
        """Poke; poll ``transform_hold_seconds`` here; then defer, or poke in reschedule mode."""
        started = time.time()
        if self.poke(context):  # the poke reads the Variable (and fails on bad settings)
            return None
        assert self._cfg is not None
        deferrable = self._cfg.deferrable
        # in reschedule mode only a try's first poke holds the slot
        first = deferrable or context["ti"].get_first_reschedule_date(context) is None
        if first and self._hold(context):
            return None
        if not deferrable:
            return super().execute(context)
        self._defer(started)
        return None

    def execute_complete(self, context: Any, event: Mapping[str, Any]) -> None:
        """The trigger fired: one more poke (adopt, report, fail) or, on an error, fail."""
        ti = context["ti"]
        self._deferred = True
        status = event.get("status")
        if status == "error":
            self._failed(ti, self._known(), str(event["message"]), None,
                         retry=bool(event.get("retryable")))
        if status == "timeout":
            limit = float(event["deadline"]) - float(event["started"])
            self._failed(ti, self._known(), (
                f"transform job {event['job']} is still {event['state']} after {limit:.0f} s "
                f"(transform_timeout_seconds); raise transform_timeout_seconds in Variable "
                f"smserve_{self.env}, then clear this task: it adopts the job, which keeps "
                "running (StopTransformJob stops it)"), None)
        if not self.poke(context):
            self._defer(float(event["started"]))

    def _hold(self, context: Any) -> bool:
        """Poll the job from this task for ``transform_hold_seconds``; True once a poke finished.

        A job that ends within the hold costs no hand-over (no defer, trigger and
        resume, no reschedule); a longer one gives the slot back after it.
        """
        assert self._cfg is not None and self._waiting is not None
        cfg, name = self._cfg, self._waiting
        end = time.monotonic() + cfg.transform_hold_seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(cfg.transform_poll_seconds, left))
            found = self._describe(self._aws(cfg), name)
            if found is None or found["TransformJobStatus"] not in RUNNING:
                return self.poke(context)
        return False

    def _defer(self, started: float) -> None:
        """Hand the slot back until the job this try waits for ends (or the deadline)."""
        assert self._cfg is not None and self._waiting is not None
        cfg = self._cfg
        deadline = started + cfg.transform_timeout_seconds
        # the trigger fires at the deadline; Airflow's own limit is a backstop (a dead triggerer)
        backstop = max(0.0, deadline - time.time()) + 2 * cfg.transform_poll_seconds + 60
        self.defer(trigger=TransformJobTrigger(
            job_name=self._waiting, aws_conn_id=cfg.aws_conn_id,
            poll_seconds=cfg.transform_poll_seconds, started=started, deadline=deadline,
            variable=cfg.variable), method_name="execute_complete",
            timeout=timedelta(seconds=backstop))

    def _aws(self, cfg: PipelineConfig) -> Aws:
        """The connection's clients, made once per task process (per connection id)."""
        if self._clients is None or self._clients.conn_id != cfg.aws_conn_id:
            self._clients = Aws(cfg.aws_conn_id, cfg.variable)
            self._clients.check_connection()
        return self._clients

    # --- one poke ------------------------------------------------------------------------

    def poke(self, context: Any) -> bool:
        """Adopt, wait for, or create the job; True once it completed (or nothing was to do)."""
        ti = context["ti"]
        work: Mapping[str, Any] = self._known()
        try:
            cfg = load_config(self.env)
            self.poke_interval = cfg.interval(cfg.transform_poll_seconds, self.mode)
            self.timeout = cfg.transform_timeout_seconds
            aws = self._aws(cfg)
        except ConfigError as err:
            self._failed(ti, work, str(err), None)
        self._cfg = cfg
        batch = str((self.work if self.work is not None else self.batch)["batch"])
        names = [job_name(ti.dag_id, ti.run_id, self.model, batch, attempt)
                 for attempt in range(1, max(1, int(ti.try_number)) + 1)]
        described = {name: self._describe(aws, name) for name in names}
        for name, found in described.items():
            if found and found["TransformJobStatus"] == "Completed":
                work = self._prepared(ti, cfg, aws, batch, fresh=False)
                self._done(ti, aws, work, found, adopted=name != names[-1])
                return True
        for name, found in described.items():
            if found and found["TransformJobStatus"] in RUNNING:
                log.info("transform job %s is %s", name, found["TransformJobStatus"])
                self._waiting = name
                return False
        current = described[names[-1]]
        if current is not None:
            status = current["TransformJobStatus"]
            reason = current.get("FailureReason") or "no FailureReason given"
            work = self._prepared(ti, cfg, aws, batch, fresh=False)
            self._failed(ti, work, f"transform job {names[-1]} {status.lower()}: {reason}",
                         current, aws)
        work = self._prepared(ti, cfg, aws, batch, fresh=True)
        if not work.get("pending") or not work.get("request_uri"):
            exist = int(work.get("exist", 0))
            report_message(ti, _noted({
                "model": self.model, "status": "skipped", "records": work.get("records", 0),
                "written": 0, "skipped": exist, "failed": 0,
                "reason": f"all {exist} output(s) exist; no transform job started",
                "job": None, "started": None, "ended": None, "seconds": None}, work))
            return True
        self._create(ti, aws, cfg, work, names[-1])
        self._waiting = names[-1]
        return False

    # --- the parts -------------------------------------------------------------------------

    def _known(self) -> Mapping[str, Any]:
        """The requests' plan as far as this process knows it (``{}``: not yet)."""
        return self.work if self.work is not None else (self._plan or {})

    def _prepared(self, ti: Any, cfg: PipelineConfig, aws: Aws, batch: str, *,
                  fresh: bool) -> Mapping[str, Any]:
        """The plan: ``work`` as given, or prepared here (``fresh``) or kept from the try that did.

        ``fresh`` (no job yet): extend the batch's visibility, build and
        upload the requests now, keep the plan in S3; otherwise read the kept
        one (prepared anew if there is none).
        """
        if self.work is not None:
            return dict(self.work)
        from smserve_dags.operators.requests import plan_key, prepare, store_plan, stored_plan

        bucket, key = str(self.batch["bucket"]), plan_key(cfg, ti, self.model, batch)
        if not fresh:
            self._plan = self._plan or stored_plan(aws.s3, bucket, key)
        if fresh or self._plan is None:
            self._plan = prepare(ti, self.model, self.env, self.batch, self.messages,
                                 cfg=cfg, aws=aws)
            store_plan(aws.s3, bucket, key, self._plan)
        return self._plan

    def _describe(self, aws: Aws, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] | None = aws.sagemaker.describe_transform_job(
                TransformJobName=name)
        except Exception as err:
            if job_missing(err):
                return None
            raise
        return found

    def _create(self, ti: Any, aws: Aws, cfg: PipelineConfig, work: Mapping[str, Any],
                name: str) -> None:
        from serving.errors import SmserveError

        tags = {"smserve:dag": ti.dag_id, "smserve:run": ti.run_id, "smserve:model": self.model}
        spec = model_graph()[self.model]
        try:
            jobs = transform_jobs(cfg, aws)
            model_name = jobs.ensure_model(spec, cfg.bucket, cfg.work_prefix,
                                           cfg.model_environment.get(self.model))
            request = jobs.request(name, model_name, spec, work["request_uri"],
                                   f"{work['output_uri']}{name}/", tags)
            created = jobs.create(request)
        except ConfigError as err:
            self._failed(ti, work, str(err), None)
        except SmserveError as err:
            self._failed(ti, work, err.message, None)
        if not created:
            return
        log.info("created transform job %s for %d record(s) of %s (model %s, %s x %s)", name,
                 work["pending"], self.model, request["ModelName"],
                 request["TransformResources"]["InstanceCount"],
                 request["TransformResources"]["InstanceType"])

    def _done(self, ti: Any, aws: Aws, work: Mapping[str, Any], found: Mapping[str, Any],
              adopted: bool) -> None:
        from serving.transform.spec import parse_s3_uri

        from smserve_dags.operators.outcomes import count_answers, failed_reason, read_outcomes

        name = found["TransformJobName"]
        written, skipped, other = count_answers(aws.s3,
                                                found["TransformOutput"]["S3OutputPath"])
        answers = list(read_outcomes(aws.s3, *parse_s3_uri(
            found["TransformOutput"]["S3OutputPath"], "S3OutputPath")).values())
        failed = sum(o.get("status") == "failed" for o in answers)
        other -= failed  # per-record failures are outcomes, not broken answers
        records = int(work.get("records", 0))
        skipped += max(0, records - written - skipped - other - failed)
        started, ended = _epoch(found.get("TransformStartTime")), \
            _epoch(found.get("TransformEndTime"))
        report: dict[str, Any] = {
            "model": self.model, "status": "done", "records": records, "written": written,
            "skipped": skipped, "failed": other + failed, "reason": None, "job": name,
            "started": started, "ended": ended,
            "seconds": ended - started if started is not None and ended is not None else None}
        if self._deferred:
            report["wait"] = "deferred"  # the worker slot was free while the job ran
        if adopted:
            report["note"] = (f"adopted transform job {name}, which an earlier try started; "
                              "no new job")
        report = _noted(report, work)
        if other:
            report.update(status="failed", reason=(
                f"{other} answer(s) of {name} are not {{\"status\": \"written\" | "
                "\"skipped\"}; the model must answer with serving.s3refs.response()"))
            fail(ti, f"{self.model}: {report['reason']}", report)
        if failed:  # some records failed: downstream models still run on the others
            report.update(status="partial" if written + skipped else "failed",
                          reason=f"transform job {name}: {failed_reason(answers)}")
            if not written + skipped:
                fail(ti, f"{self.model}: {report['reason']}", report)
        report_message(ti, report)

    def _failed(self, ti: Any, work: Mapping[str, Any], reason: str,
                found: Mapping[str, Any] | None, aws: Aws | None = None,
                retry: bool = False) -> NoReturn:
        """Report the model failed and fail the task (``retry``: a retry may help)."""
        from smserve_dags.operators.outcomes import outputs_written

        pending = int(work.get("pending", 0))
        written = 0
        if aws is not None and work.get("request_uri"):
            written = outputs_written(aws.s3, str(work["request_uri"]))
        started = _epoch((found or {}).get("TransformStartTime"))
        ended = _epoch((found or {}).get("TransformEndTime"))
        report = {
            "model": self.model, "status": "failed", "records": work.get("records", 0),
            "written": written, "skipped": int(work.get("exist", 0)),
            "failed": pending - written, "reason": reason,
            "job": (found or {}).get("TransformJobName"), "started": started, "ended": ended,
            "seconds": ended - started if started is not None and ended is not None else None}
        if retry:
            from airflow.sdk.exceptions import AirflowException

            report_message(ti, report)
            raise AirflowException(f"{self.model}: {reason}")
        fail(ti, f"{self.model}: {reason}", report)
