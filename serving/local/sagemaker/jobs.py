"""``CreateTransformJob``, ``DescribeTransformJob``, ``StopTransformJob``, ``ListTransformJobs``.

``CreateTransformJob`` checks the request (the shape is checked before this
module sees it; :meth:`TransformJobSpec.from_request` adds the service's own
rules, such as ``MaxConcurrentTransforms x MaxPayloadInMB <= 100``), refuses a
name in use (``ResourceInUse``) and an unknown model (``ValidationException``
"Could not find model"), records the job ``InProgress`` and answers at once;
a :class:`~serving.local.sagemaker.execution.TransformRun` takes it to
``Completed``, ``Failed`` or, after ``StopTransformJob`` (``Stopping``),
``Stopped``. Jobs are kept until the stack stops or is reset, as the service
keeps them for good.
"""

from __future__ import annotations

import builtins
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.aws import ClientFactory
from serving.errors import ConfigError
from serving.local.sagemaker.apierrors import ResourceInUse, ResourceNotFound, ValidationException
from serving.local.sagemaker.execution import ImagePull, Outcome, TransformRun
from serving.local.sagemaker.logs import JobLog, instance_id
from serving.local.sagemaker.models import ModelRecord, ModelStore
from serving.local.sagemaker.resources import arn, in_window, page, sort_items
from serving.transform.result import JobResult
from serving.transform.spec import TransformJobSpec

TERMINAL = ("Completed", "Failed", "Stopped")
#: Request members ``DescribeTransformJob`` gives back as they were sent.
_DESCRIBED = ("ModelName", "MaxConcurrentTransforms", "ModelClientConfig", "MaxPayloadInMB",
              "BatchStrategy", "Environment", "TransformInput", "TransformOutput",
              "DataCaptureConfig", "TransformResources", "DataProcessing", "ExperimentConfig")


@dataclass
class JobRecord:
    """One transform job and where it stands.

    Attributes:
        name: ``TransformJobName``.
        arn: its ARN.
        request: the ``CreateTransformJob`` request (validated).
        spec: the request, parsed.
        model: the model as it was when the job was created.
        creation_time: epoch seconds.
        status: ``InProgress``, ``Stopping``, ``Completed``, ``Failed`` or ``Stopped``.
        failure_reason: why it failed.
        start_time: when it started on its instances.
        end_time: when it ended.
        last_modified: when its status last changed.
        instance_ids: one per container (names of its log streams).
        result: the data plane's result, once it ran.
    """

    name: str
    arn: str
    request: Mapping[str, Any]
    spec: TransformJobSpec
    model: ModelRecord
    creation_time: float
    status: str = "InProgress"
    failure_reason: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    last_modified: float = 0.0
    instance_ids: list[str] = field(default_factory=list)
    result: JobResult | None = None
    run: TransformRun | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """The ``DescribeTransformJob`` answer."""
        out: dict[str, Any] = {"TransformJobName": self.name, "TransformJobArn": self.arn,
                               "TransformJobStatus": self.status}
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        out.update({k: self.request[k] for k in _DESCRIBED if k in self.request})
        out["CreationTime"] = self.creation_time
        if self.start_time is not None:
            out["TransformStartTime"] = self.start_time
        if self.end_time is not None:
            out["TransformEndTime"] = self.end_time
        return out

    def summary(self) -> dict[str, Any]:
        """The job's entry in ``ListTransformJobs``."""
        out: dict[str, Any] = {"TransformJobName": self.name, "TransformJobArn": self.arn,
                               "CreationTime": self.creation_time,
                               "LastModifiedTime": self.last_modified,
                               "TransformJobStatus": self.status}
        if self.end_time is not None:
            out["TransformEndTime"] = self.end_time
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        return out

    def record(self) -> dict[str, Any]:
        """Everything ``smserve replay`` needs: the description, the model, the result."""
        result = None
        if self.result is not None:
            result = {"name": self.result.name, "seconds": self.result.seconds,
                      "params": dict(self.result.params),
                      "execution_parameters": (dict(self.result.execution_parameters)
                                               if self.result.execution_parameters else None),
                      "objects": [dataclasses.asdict(o) for o in self.result.objects]}
        return {"TransformJob": self.describe(), "Model": self.model.describe(),
                "LogGroup": "/aws/sagemaker/TransformJobs",
                "LogStreams": [f"{self.name}/{i}" for i in self.instance_ids]
                + [f"{self.name}/data-log"], "Result": result}


class JobStore:
    """The transform jobs of one embedded stack.

    Args:
        models: where ``ModelName`` is looked up.
        clients: clients for the stack itself (S3 for the data, Logs for the log).
        runner_env: the base environment of every container.
        startup_timeout: seconds a container may take to pass ``/ping``.
        echo: receives one line per status change (``smserve local up`` prints them).
        clock: epoch seconds.
        image_pull: where the Docker runner pulls a model's ``Image`` from.
        startup_delay: seconds every job waits before its containers start, as AWS
            provisions instances (``SMSERVE_LOCAL_JOB_STARTUP_SECONDS``).
    """

    def __init__(self, models: ModelStore, clients: ClientFactory, *,
                 runner_env: Mapping[str, str], startup_timeout: float,
                 echo: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 image_pull: ImagePull | None = None,
                 startup_delay: float = 0.0, pool: Any = None) -> None:
        self.startup_delay = startup_delay
        self.models = models
        self.image_pull = image_pull
        self.pool = pool  # a serving.runners.warm.WarmPool, or None: every job starts cold
        self.clients = clients
        self.runner_env = dict(runner_env)
        self.startup_timeout = startup_timeout
        self._echo = echo or (lambda _line: None)
        self._clock = clock
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()

    def arn(self, name: str) -> str:
        """The ARN a job named ``name`` has (or would have)."""
        return arn(self.models.region, self.models.account, "transform-job", name)

    def get(self, name: str) -> JobRecord:
        """The job named ``name``.

        Raises:
            ResourceNotFound: there is none.
        """
        with self._lock:
            found = self._jobs.get(name.lower())
        if found is None:
            raise ResourceNotFound(f"Could not find requested job with name {name}")
        return found

    # --- operations --------------------------------------------------------------------

    def create(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``CreateTransformJob``: check, record ``InProgress``, start, answer at once."""
        try:
            spec = TransformJobSpec.from_request(request)
        except ConfigError as err:
            raise ValidationException(err.message) from err
        name = spec.name
        model = self.models.get(spec.model_name)
        containers = model.containers
        if len(containers) != 1:
            raise ValidationException(
                f"model {model.name} has {len(containers)} containers; the embedded stack runs "
                "models with one container (PrimaryContainer)")
        now = self._clock()
        job_arn = self.arn(name)
        job = JobRecord(name, job_arn, dict(request), spec, model, now, last_modified=now,
                        instance_ids=[instance_id(job_arn, i)
                                      for i in range(spec.instance_count)])
        with self._lock:
            if name.lower() in self._jobs:
                raise ResourceInUse("Job name must be unique within an AWS account and region, "
                                    f"and a job with this name already exists ({job_arn})")
            self._jobs[name.lower()] = job
        log = JobLog(lambda: self.clients.client("logs"), name, job.instance_ids)
        job.run = TransformRun(
            spec, containers[0], self.clients, log, runner_env=self.runner_env,
            startup_timeout=self.startup_timeout, image_pull=self.image_pull,
            startup_delay=self.startup_delay, pool=self.pool,
            on_running=lambda: self._running(job),
            on_finished=lambda outcome: self._finished(job, outcome))
        job.start_time = self._clock()
        self._echo(f"transform job {name}: InProgress (model {model.name})")
        job.run.start()
        return {"TransformJobArn": job_arn}

    def describe(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``DescribeTransformJob``.

        An unknown name answers ``ValidationException`` ("Could not find
        requested job"), as the service does, although the API model lists
        ``ResourceNotFound``: clients such as Airflow's
        ``SageMakerTransformOperator`` rely on it to tell "no such job yet".
        """
        name = request["TransformJobName"]
        try:
            job = self.get(name)
        except ResourceNotFound as err:
            raise ValidationException(str(err)) from err
        with self._lock:
            return job.describe()

    def stop(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``StopTransformJob``: ``Stopping`` now, ``Stopped`` once its containers are gone."""
        job = self.get(request["TransformJobName"])
        with self._lock:
            if job.status in TERMINAL:
                raise ValidationException(
                    f"Transform job {job.name} is not in progress (it is {job.status}); only an "
                    "InProgress job can be stopped")
            first = job.status == "InProgress"
            if first:
                job.status, job.last_modified = "Stopping", self._clock()
        if first and job.run is not None:
            self._echo(f"transform job {job.name}: Stopping")
            job.run.stop()
        return {}

    def list(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``ListTransformJobs``: name, status and time filters, sort, pages."""
        with self._lock:
            jobs = [dataclasses.replace(j) for j in self._jobs.values()]
        needle = (request.get("NameContains") or "").lower()
        status = request.get("StatusEquals")
        jobs = [j for j in jobs if needle in j.name.lower()
                and (status is None or j.status == status)
                and in_window(j.creation_time, request.get("CreationTimeAfter"),
                              request.get("CreationTimeBefore"))
                and in_window(j.last_modified, request.get("LastModifiedTimeAfter"),
                              request.get("LastModifiedTimeBefore"))]
        jobs = sort_items(jobs, request, {"Name": lambda j: j.name.lower(),
                                          "CreationTime": lambda j: j.creation_time,
                                          "Status": lambda j: j.status}, "CreationTime")
        chunk, token = page(jobs, request)
        out: dict[str, Any] = {"TransformJobSummaries": [j.summary() for j in chunk]}
        if token:
            out["NextToken"] = token
        return out

    # --- lifecycle -----------------------------------------------------------------------

    def record(self, name: str) -> dict[str, Any]:
        """The job's full record (for ``smserve replay``)."""
        job = self.get(name)
        with self._lock:
            return job.record()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop every running job and wait for its containers to end."""
        with self._lock:
            running = [j for j in self._jobs.values() if j.status not in TERMINAL]
            for job in running:
                if job.status == "InProgress":
                    job.status, job.last_modified = "Stopping", self._clock()
        for job in running:
            if job.run is not None:
                job.run.stop()
        deadline = time.monotonic() + timeout
        for job in running:
            if job.run is not None:
                job.run.join(max(0.0, deadline - time.monotonic()))

    def export(self, reason: str) -> Sequence[dict[str, Any]]:
        """Every job as plain data (for ``smserve local up --state``).

        A job still running is exported as ``Failed`` with ``reason``: it will
        not run on after a restart.
        """
        with self._lock:
            jobs = list(self._jobs.values())
            out: builtins.list[dict[str, Any]] = []
            for job in jobs:
                running = job.status not in TERMINAL
                out.append({
                    "name": job.name, "arn": job.arn, "request": dict(job.request),
                    "model": {"name": job.model.name, "arn": job.model.arn,
                              "request": dict(job.model.request),
                              "creation_time": job.model.creation_time},
                    "creation_time": job.creation_time,
                    "status": "Failed" if running else job.status,
                    "failure_reason": reason if running else job.failure_reason,
                    "start_time": job.start_time,
                    "end_time": self._clock() if running else job.end_time,
                    "last_modified": self._clock() if running else job.last_modified,
                    "instance_ids": list(job.instance_ids),
                    "result": job.record()["Result"],
                })
        return out

    def restore(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Add jobs :meth:`export` wrote (finished: they are not run again)."""
        for entry in entries:
            result = entry.get("result")
            job = JobRecord(
                entry["name"], entry["arn"], entry["request"],
                TransformJobSpec.from_request(entry["request"]),
                ModelRecord(entry["model"]["name"], entry["model"]["arn"],
                            entry["model"]["request"], entry["model"]["creation_time"]),
                entry["creation_time"], status=entry["status"],
                failure_reason=entry.get("failure_reason"), start_time=entry.get("start_time"),
                end_time=entry.get("end_time"), last_modified=entry.get("last_modified") or 0.0,
                instance_ids=list(entry.get("instance_ids") or []),
                result=_result(result) if result else None)
            with self._lock:
                self._jobs.setdefault(job.name.lower(), job)

    def reset(self) -> None:
        """Stop every running job and forget them all."""
        self.shutdown()
        with self._lock:
            self._jobs.clear()

    def _running(self, job: JobRecord) -> None:
        with self._lock:
            job.last_modified = self._clock()

    def _finished(self, job: JobRecord, outcome: Outcome) -> None:
        with self._lock:
            status = "Stopped" if job.status == "Stopping" else outcome.status
            job.status = status
            job.failure_reason = outcome.failure_reason if status == "Failed" else None
            job.result = outcome.result
            job.end_time = job.last_modified = self._clock()
            seconds = job.end_time - job.creation_time
        line = f"transform job {job.name}: {status} after {seconds:.1f} s"
        self._echo(line + (f": {job.failure_reason}" if job.failure_reason else ""))


def _result(data: Mapping[str, Any]) -> JobResult:
    from serving.transform.result import ObjectResult

    return JobResult(data["name"], tuple(ObjectResult(**o) for o in data["objects"]),
                     seconds=data.get("seconds", 0.0), params=data.get("params") or {},
                     execution_parameters=data.get("execution_parameters"))
