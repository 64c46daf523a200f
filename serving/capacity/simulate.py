"""A simulated day: real components process clips sent at the planned rate, time scaled.

:func:`simulate_day` starts the embedded AWS stack with
``SMSERVE_LOCAL_JOB_STARTUP_SECONDS`` set to the models' start-up divided by
``scale`` (simulated seconds per real second: 320 makes 24 h last 4.5 min),
then runs two threads on the same scaled clock:

- a generator sends clip ``k``'s SQS message when the arrival curve of
  ``capacity.toml`` reaches ``k`` (the clips' bytes wait in
  ``s3://BUCKET/incoming/``, uploaded before the day starts);
- a driver does what the inference DAG does: a run on every schedule tick,
  one at a time; it waits for ``max_messages`` visible messages or
  ``max_wait_seconds`` (looking every ``poke_interval_seconds``), receives
  the batch, copies its clips into the run's own bucket (``BUCKET-run-NNNN``:
  moto lists and heads keys in time that grows with the bucket, which AWS
  does not, so one bucket for the whole day would slow the later runs),
  runs the model graph on it with the local pipeline run through
  the stack's SageMaker API (``CreateModel``, ``CreateTransformJob``: real
  model servers, real S3), and deletes the messages once every model wrote
  its output.

Every run is recorded as a :class:`~serving.capacity.model.Run` in simulated
seconds, so :func:`~serving.capacity.model.summarize` gives the measured day
the way it gives the modelled one. The figures the simulation really had
(start-up including the containers' own start, seconds per record through the
model server, the run's own overhead) are measured from the jobs and put into
an *effective* config; the model's prediction for that config is what the
measured day is compared with.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.capacity.config import CapacityConfig
from serving.capacity.fit import JobFigure, effective_config
from serving.capacity.model import DaySummary, Run, model_day, summarize
from serving.errors import ConfigError, StackError, TransformError

BUCKET = "smserve-capacity"
QUEUE = "smserve-capacity-preprocessed"
INCOMING = "incoming/"
RESULTS = "results/"


def run_bucket(number: int) -> str:
    """The bucket of run ``number``: its clips, its requests, its outputs."""
    return f"{BUCKET}-run-{number:04d}"


#: Distinct synthetic clips; clip k is clip k mod this.
CLIP_VARIETY = 16


@dataclass(frozen=True)
class Simulation:
    """A simulated day and the model's figures for it.

    Attributes:
        config: the plan's inputs (``capacity.toml``, with the overrides given).
        effective: ``config`` with the figures the simulation measured.
        measured: the day as the simulation ran it.
        predicted: :func:`~serving.capacity.model.model_day` of ``effective``.
        planned: :func:`~serving.capacity.model.model_day` of ``config``.
        runs: the measured runs (simulated seconds from the start of the window).
        scale: simulated seconds per real second.
        real_seconds: how long it took, the stack's start and a warm-up run included.
        day_seconds: how long the day took, from its first second to its last run's end.
        startup_delay: the real seconds every job waited before its containers started.
    """

    config: CapacityConfig
    effective: CapacityConfig
    measured: DaySummary
    predicted: DaySummary
    planned: DaySummary
    runs: tuple[Run, ...]
    scale: float
    real_seconds: float
    startup_delay: float
    day_seconds: float = 0.0
    measured_figures: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def agreement(self) -> dict[str, float]:
        """Relative difference, measured vs predicted: throughput, queue age at the peak, mean."""
        return {"throughput": _rel(self.measured.throughput_per_hour,
                                   self.predicted.throughput_per_hour),
                "peak_age": _rel(self.measured.peak_age, self.predicted.peak_age),
                "mean_age": _rel(self.measured.mean_age, self.predicted.mean_age)}


def _rel(measured: float, predicted: float) -> float:
    return abs(measured - predicted) / predicted if predicted else float(measured != 0)


class _Clock:
    """Simulated seconds since the start, from a monotonic clock scaled by ``scale``."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.origin = time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self.origin) * self.scale

    def wait_until(self, when: float, stop: threading.Event) -> bool:
        """Wait until simulated time ``when``; False when ``stop`` was set first."""
        delay = when / self.scale - (time.monotonic() - self.origin)
        return not stop.wait(delay) if delay > 0 else not stop.is_set()


def simulate_day(cfg: CapacityConfig, models_root: str | Path = "models", *, scale: float = 320.0,
                 hours: float = 24.0, start_hour: float = 0.0,
                 echo: Callable[[str], None] = print,
                 before_stop: Callable[[Any], None] | None = None) -> Simulation:
    """Run ``hours`` of ``cfg``'s arrivals through the real pipeline, time scaled by ``scale``.

    ``before_stop`` gets the stack's :class:`~serving.aws.ClientFactory` once the day
    is over, before the stack stops (to look at its S3 and SQS).

    Raises:
        ConfigError: ``scale`` or ``hours`` is not positive.
        TransformError: a run failed (its report is in the message); the day's
            figures would mean nothing.
        StackError: the clip generator could not send a message.
    """
    from serving.aws import ClientFactory
    from serving.local.stack import LocalStack
    from serving.settings import Settings

    if scale <= 0 or hours <= 0:
        raise ConfigError(f"--scale ({scale:g}) and --hours ({hours:g}) must be more than 0")
    startups = [m.startup_seconds for m in cfg.models.values()]
    delay = statistics.fmean(startups) / scale if startups else 0.0
    base = Settings.from_environ().with_environ({
        "SMSERVE_LOCAL_JOB_STARTUP_SECONDS": f"{delay:.6f}",
        # a closed local stack: every run has a bucket of its own
        "SMSERVE_ALLOWED_BUCKETS": "*", "SMSERVE_OUTPUT_PREFIXES": RESULTS,
        "SETUPTOOLS_USE_DISTUTILS": "stdlib"})
    stack = LocalStack(settings=base).start()
    began = time.monotonic()
    try:
        settings = base.with_environ(stack.environ())
        clients = ClientFactory(settings)
        clients.client("s3").create_bucket(Bucket=BUCKET)
        url = clients.client("sqs").create_queue(
            QueueName=QUEUE, Attributes={"VisibilityTimeout": "43200"})["QueueUrl"]
        echo(f"simulated day: {hours:g} h from {start_hour:g}:00, {scale:g} simulated s per real "
             f"s (about {hours * 3600 / scale:.0f} s), job start-up {delay:.2f} s real "
             f"({delay * scale:.0f} s simulated) on {stack.endpoint_url}")
        day = _Day(cfg, clients, url, stack, models_root, scale, hours, start_hour, echo)
        runs, figures = day.run()
        if before_stop is not None:
            before_stop(clients)
    finally:
        stack.stop()
    real = time.monotonic() - began
    counts = {name: spec.instance_count for name, spec in day.graph.specs.items()}
    effective, measured_figures = effective_config(cfg, runs, figures, counts)
    measured = summarize(effective, runs, arrived=day.sent, hours=hours, start_hour=start_hour)
    return Simulation(cfg, effective, measured,
                      model_day(effective, hours=hours, start_hour=start_hour),
                      model_day(cfg, hours=hours, start_hour=start_hour), tuple(runs), scale,
                      real, delay, day.day_seconds, measured_figures)


class _Day:
    """The generator and the DAG-like driver of one simulated day."""

    def __init__(self, cfg: CapacityConfig, clients: Any, url: str, stack: Any,
                 models_root: str | Path, scale: float, hours: float, start_hour: float,
                 echo: Callable[[str], None]) -> None:
        from serving.localpipeline import load_graph

        self.cfg = cfg
        self.clients = clients
        self.url = url
        self.stack = stack
        self.models_root = models_root
        self.clock = _Clock(scale)
        self.horizon = hours * 3600.0
        self.origin = start_hour * 3600.0
        self.echo = echo
        self.sent = 0
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.day_began = time.monotonic()
        self.day_seconds = 0.0
        self.graph = load_graph(models_root)

    def run(self) -> tuple[list[Run], dict[str, list[JobFigure]]]:
        from local_test.clips import clip_bytes
        from serving.local.stackimages import stack_images
        from serving.localpipeline import Resources
        from serving.sagemaker.jobs import SageMakerJobs

        self.clips = [clip_bytes(i) for i in range(CLIP_VARIETY)]
        # CreateModel takes only images the stack's ECR holds (as on AWS); the process
        # runner never pulls them, so a recorded image is enough.
        flavors = sorted({self.graph[name].image for name in self.graph.order()})
        images = stack_images(self.clients, flavors, registry=False)
        self.jobs = SageMakerJobs(self.clients, poll=0.1, images=images)
        self.resources = Resources(0, 4 * max(1, len(self.graph)), "simulation", "simulation")
        s3 = self.clients.client("s3")
        for k, body in enumerate(self.clips):
            s3.put_object(Bucket=BUCKET, Key=f"{INCOMING}clip-{k:03d}.npy", Body=body)
        self._warm_up()
        self.clock = _Clock(self.clock.scale)  # the day starts now
        self.day_began = time.monotonic()
        generator = threading.Thread(target=self._generate, name="capacity-generator",
                                     daemon=True)
        generator.start()
        try:
            return self._drive()
        finally:
            self.stop.set()
            generator.join(timeout=30)

    # --- the generator ------------------------------------------------------------------

    def _warm_up(self) -> None:
        """One clip through every model before the clock starts: caches warm, not counted."""
        from serving.localpipeline import report_message, run_pipeline

        self.clients.client("s3").put_object(Bucket=BUCKET, Key="warm-up/clip.npy",
                                             Body=self.clips[0])
        report = run_pipeline(self.graph, self.clients, f"s3://{BUCKET}/warm-up/",
                              echo=lambda _line: None, output_prefix=RESULTS, jobs=self.jobs,
                              resources=self.resources, show_plan=False)
        if not report.ok:
            raise TransformError("the simulated day's warm-up run failed:\n"
                                 + report_message(report))

    def _generate(self) -> None:
        """Send clip ``k``'s message when its arrival time comes (late ones at once, by tens).

        The clips' bytes are uploaded before the day starts (``CLIP_VARIETY`` of
        them); a message names clip ``k`` and which bytes it has, so the
        generator's work per clip is one SQS message and it keeps up when the
        machine is busy.
        """
        sqs = self.clients.client("sqs")
        arrivals, origin = self.cfg.arrivals, self.origin
        index = 1
        try:
            while not self.stop.is_set():
                due: list[tuple[int, float]] = []
                while len(due) < 10:
                    when = arrivals.arrival_time(index + len(due), origin=origin) - origin
                    if when >= self.horizon or when > self.clock.now():
                        break
                    due.append((index + len(due), when))
                if due:
                    sqs.send_message_batch(QueueUrl=self.url, Entries=[
                        {"Id": str(k), "MessageBody": json.dumps(
                            {"bucket": BUCKET, "clip": k, "arrived": t,
                             "key": f"{INCOMING}clip-{k % CLIP_VARIETY:03d}.npy"})}
                        for k, t in due])
                    index += len(due)
                    self.sent = index - 1
                    continue
                when = arrivals.arrival_time(index, origin=origin) - origin
                if when >= self.horizon or not self.clock.wait_until(when, self.stop):
                    return
        except BaseException as err:  # reported by the driver
            self.error = err
            self.stop.set()

    # --- the driver ---------------------------------------------------------------------

    def _drive(self) -> tuple[list[Run], dict[str, list[JobFigure]]]:
        graph, jobs, resources = self.graph, self.jobs, self.resources
        dag = self.cfg.dag
        runs: list[Run] = []
        figures: dict[str, list[JobFigure]] = {name: [] for name in self.cfg.models}
        start = 0.0
        while start < self.horizon:
            if not self.clock.wait_until(start, self.stop):
                break
            start = self.clock.now()
            taken, messages = self._sensor(start)
            if not messages:
                runs.append(Run(start, taken, taken, 0))
            else:
                runs.append(self._process(len(runs), start, taken, messages, graph, jobs,
                                          resources, figures))
            tick = (int(start / dag.interval + 1e-9) + 1) * dag.interval
            start = max(runs[-1].end, tick)
        self.day_seconds = time.monotonic() - self.day_began
        if self.error is not None:
            raise StackError(f"the clip generator failed: {self.error!r}") from self.error
        return runs, figures

    def _sensor(self, start: float) -> tuple[float, list[dict[str, Any]]]:
        dag = self.cfg.dag
        sqs = self.clients.client("sqs")
        pokes = 0
        while True:
            now = self.clock.now()
            visible = int(sqs.get_queue_attributes(
                QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"])
            if visible >= dag.max_messages or now - start >= dag.max_wait_seconds - 1e-9:
                break
            pokes += 1
            self.clock.wait_until(start + pokes * dag.poke_interval_seconds, self.stop)
        got: dict[str, dict[str, Any]] = {}
        while len(got) < dag.max_messages:
            answer = sqs.receive_message(QueueUrl=self.url, WaitTimeSeconds=0,
                                         MaxNumberOfMessages=min(10, dag.max_messages - len(got)))
            batch = answer.get("Messages") or []
            if not batch:
                break
            got.update((m["MessageId"], m) for m in batch)
        return now, list(got.values())

    def _process(self, number: int, start: float, taken: float, messages: list[dict[str, Any]],
                 graph: Any, jobs: Any, resources: Any,
                 figures: dict[str, list[JobFigure]]) -> Run:
        from serving.localpipeline import report_message, run_pipeline

        s3, sqs = self.clients.client("s3"), self.clients.client("sqs")
        bodies = [json.loads(m["Body"]) for m in messages]
        prefix = "batches/"
        bucket = run_bucket(number)
        s3.create_bucket(Bucket=bucket)
        for body in bodies:  # the run's own input prefix: the batch, nothing else
            s3.copy_object(Bucket=bucket, Key=f"{prefix}clip-{body['clip']:06d}.npy",
                           CopySource={"Bucket": BUCKET, "Key": body["key"]})
        lines: list[str] = []
        report = run_pipeline(graph, self.clients, f"s3://{bucket}/{prefix}", echo=lines.append,
                              output_prefix=RESULTS, jobs=jobs, resources=resources,
                              show_plan=False)
        if not report.ok:
            raise TransformError(f"run {number} of the simulated day failed:\n"
                                 + report_message(report))
        for i in range(0, len(messages), 10):
            sqs.delete_message_batch(QueueUrl=self.url, Entries=[
                {"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]}
                for j, m in enumerate(messages[i:i + 10])])
        end = self.clock.now()
        walls: dict[str, float] = {}
        scale = self.clock.scale
        for model in report.models:
            if not model.job:
                continue
            record = self.stack.sagemaker.jobs.get(model.job)
            wall = ((record.end_time or record.creation_time) - record.creation_time) * scale
            plane = (record.result.seconds if record.result else 0.0) * scale
            walls[model.model] = wall
            figures[model.model].append(JobFigure(len(messages), wall, plane))
        oldest = min(float(b["arrived"]) for b in bodies)
        self.echo(f"  run {number:>3} at {_hm(start)}: {len(messages):>4} clips, "
                  f"{(end - taken) / 60:6.1f} min, oldest clip {(end - oldest) / 60:6.1f} min old; "
                  f"{self.sent} sent so far")
        return Run(start, taken, end, len(messages), oldest, walls)


def _hm(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
