"""Records/s of a local MultiRecord batch transform vs the same batches in-process; cold start.

``frame_features`` over ``--records`` S3-reference request records (default
500, ``overwrite`` true, unique output keys, each naming one of a few
uploaded clips), written as JSON-lines input objects (default 10) on the
embedded stack. Measured in one run, alternating:

- **transform**: :func:`serving.transform.run_transform` with the model's
  own batch settings (``MultiRecord``, ``MaxPayloadInMB`` and
  ``MaxConcurrentTransforms`` from ``model.toml``): containers started by
  :class:`~serving.transform.ProcessRunner` (``smserve serve``, the real
  model server), the data plane lists, splits, batches, invokes, assembles
  and writes the ``.out`` objects. Its records/s counts the data plane's
  time (containers already healthy); the end-to-end figure (start-up
  included) is printed too.
- **in-process**: the same JSON lines split into the same ``MultiRecord``
  batches (``split_records`` + ``make_batcher``, as the data plane does),
  each body passed to :meth:`serving.handler.Handlers.invoke` here (after
  one warm-up record).

``efficiency`` = transform records/s / in-process records/s (goal >= 0.7).
Per-request times are printed for both; ``efficiency_without_first_requests``
leaves out the first request of each model-server worker (one-off costs:
boto3 import and S3 client, first forward pass) on both sides.

Cold start: ``smserve serve models/frame_features`` in a subprocess, from the
command's start to the first ``POST /invocations`` answered with 200 (goal
<= 5 s), with the model's container environment (``model.toml``:
``cpu_workers`` -> ``SAGEMAKER_MODEL_SERVER_WORKERS``) and the phases seen
in its output (server listening, model loaded, supervisor ready);
``--cold-start-mms-workers`` times it again with multi-model-server's own
default (one worker per CPU). Also, inside each transform: start ->
containers healthy and start -> first batch answered.

Both paths run the handlers with ``OMP_NUM_THREADS=1`` (what
multi-model-server gives its workers) unless the variable is set.

    .venv/bin/python bench/transform_throughput.py [--records 500] [--objects 10]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    BUCKET,
    MODELS,
    OUTPUT_PREFIX,
    Run,
    bench_stack,
    jsonl_objects,
    r3,
    say,
    start_script,
    stop_process_group,
)

from serving.transform import ProcessRunner

GOAL_EFFICIENCY = 0.7
GOAL_COLD_START_S = 5.0
JSONLINES = "application/jsonlines"
MODEL = "frame_features"
CLIP_PREFIX = "bench/clips/"
WORK = "bench/transform/"


class TimingRunner(ProcessRunner):
    """A :class:`ProcessRunner` that notes when its containers became healthy."""

    healthy_at: float | None = None

    def start(self, model_dir: Path, environment: Mapping[str, str] | None = None,
              count: int = 1) -> Any:
        containers = super().start(model_dir, environment, count)
        self.healthy_at = time.perf_counter()
        return containers


@dataclass
class TransformRun:
    """One transform job's timings."""

    plane_s: float
    total_s: float
    healthy_s: float
    first_batch_s: float
    requests: int
    records: int
    #: seconds between one answered request and the next (the first: from healthy)
    request_s: list[float] = field(default_factory=list)


@dataclass
class Figures:
    """Everything measured, per path."""

    inproc_s: list[float] = field(default_factory=list)
    inproc_request_s: list[list[float]] = field(default_factory=list)
    transforms: list[TransformRun] = field(default_factory=list)


def request_objects(keys: Sequence[str], records: int, objects: int) -> list[bytes]:
    """``records`` request records as ``objects`` JSON-lines bodies, one record per line."""
    return jsonl_objects([json.dumps({
        "bucket": BUCKET, "inputs": {"video": keys[i % len(keys)]},
        "output_path": f"{OUTPUT_PREFIX}bench/throughput/rec-{i:05d}.npy",
        "overwrite": True}).encode() for i in range(records)], objects)


def same_batches(objects: Sequence[bytes], strategy: str, max_payload_mb: int) -> list[bytes]:
    """The request bodies the data plane sends for ``objects`` (split by line, then batched)."""
    from serving.transform import make_batcher, split_records

    bodies: list[bytes] = []
    for number, data in enumerate(objects):
        records = split_records(data, "Line")
        batcher = make_batcher(strategy, max_payload_mb, "Line")
        bodies.extend(b.body for b in batcher.batches(records, f"object {number}"))
    return bodies


def run_inproc(handlers: Any, model: Any, batches: Sequence[bytes],
               expected: int) -> list[float]:
    """Seconds per batch invoked in-process; checks every record was written."""
    written = 0
    times = []
    for body in batches:
        start = time.perf_counter()
        answer = handlers.invoke(model, body, JSONLINES, JSONLINES).body
        times.append(time.perf_counter() - start)
        written += answer.count(b'"written"')
    if written != expected:
        raise RuntimeError(f"in-process: {written} of {expected} records written")
    return times


def run_job(number: int, clients: Any, env: Mapping[str, str], spec_kwargs: Mapping[str, Any],
            model_environment: Mapping[str, str], log: list[str]) -> TransformRun:
    """One local batch transform over the input prefix; checks every record was written."""
    from serving.transform import Progress, TransformJobSpec, run_transform

    spec = TransformJobSpec.simple(
        f"bench-throughput-{number}", "frame-features", f"s3://{BUCKET}/{WORK}input/",
        f"s3://{BUCKET}/{WORK}output/{number}/", **spec_kwargs)
    runner = TimingRunner(env=env, log=log.append)
    answered: list[float] = []
    done = [0]

    def progress(p: Progress) -> None:
        if p.records_done > done[0]:
            done[0] = p.records_done
            answered.append(time.perf_counter())

    start = time.perf_counter()
    result = run_transform(spec, MODELS / MODEL, clients, runner, log=log.append,
                           progress=progress, model_environment=model_environment)
    total = time.perf_counter() - start
    s3 = clients.client("s3")
    written = 0
    for obj in result.objects:
        bucket, key = obj.output.removeprefix("s3://").split("/", 1)
        written += s3.get_object(Bucket=bucket, Key=key)["Body"].read().count(b'"written"')
    records = sum(o.records for o in result.objects)
    if written != records:
        raise RuntimeError(f"transform {number}: {written} of {records} records written")
    assert runner.healthy_at is not None and answered
    marks = [runner.healthy_at, *answered]
    return TransformRun(plane_s=result.seconds, total_s=total,
                        healthy_s=runner.healthy_at - start, first_batch_s=answered[0] - start,
                        requests=sum(o.requests for o in result.objects), records=records,
                        request_s=[b - a for a, b in itertools.pairwise(marks)])


def _secs(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


#: Lines of ``smserve serve``'s output that mark a phase of its start, by phase.
PHASES = {
    "listening": "Inference API bind to",       # the JVM front end is up
    "model_loaded": "model loaded from",         # a worker's model_fn returned
    "ready": "smserve: model ready",             # the supervisor saw it
}


def cold_start(env: Mapping[str, str], body: bytes, timeout: float = 120.0
               ) -> dict[str, float]:
    """``smserve serve models/frame_features`` in a subprocess, from its start to a 200.

    Returns:
        seconds from the command's start to each phase of :data:`PHASES`
        seen, and to ``answered`` (the first ``POST /invocations`` answered 200).
    """
    from serving.ports import free_port

    port = free_port()
    command = [sys.executable, "-m", "serving.cli", "serve", str(MODELS / MODEL),
               "--port", str(port)]
    child_env = {**env, "PYTHONUNBUFFERED": "1"}
    headers = {"Content-Type": JSONLINES, "Accept": JSONLINES}
    marks: dict[str, float] = {}
    start = time.perf_counter()
    process = subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)

    def watch() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace")
            for phase, marker in PHASES.items():
                if marker in line and phase not in marks:
                    marks[phase] = time.perf_counter() - start

    reader = threading.Thread(target=watch, name="serve-output", daemon=True)
    reader.start()
    try:
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"smserve serve exited with {process.returncode}")
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            try:
                conn.request("POST", "/invocations", body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    marks["answered"] = time.perf_counter() - start
                    return marks
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        raise RuntimeError(f"smserve serve did not answer /invocations within {timeout:.0f} s")
    finally:
        # SIGTERM lets the supervisor stop multi-model-server (its own process group).
        stop_process_group(process, grace=20)
        reader.join(5)


def _phases(marks: Mapping[str, float]) -> str:
    names = {"listening": "server listening", "model_loaded": "model loaded",
             "ready": "supervisor ready", "answered": "first answer"}
    return ", ".join(f"{names[k]} {v:.2f} s" for k, v in sorted(marks.items(),
                                                                 key=lambda kv: kv[1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = start_script(__doc__, worker_threads=True)
    parser.add_argument("--records", type=int, default=500, help="request records (>= 500)")
    parser.add_argument("--objects", type=int, default=10, help="JSON-lines input objects")
    parser.add_argument("--clips", type=int, default=8, help="distinct clips the records name")
    parser.add_argument("--rounds", type=int, default=2,
                        help="transform jobs (in-process runs: one more, around them)")
    parser.add_argument("--cold-start-mms-workers", action="store_true",
                        help="also time the cold start with multi-model-server's default "
                             "workers (one per CPU) instead of the model's cpu_workers")
    args = parser.parse_args(argv)
    if args.objects < 1 or args.records < args.objects:
        parser.error("need --objects >= 1 and --records >= --objects")

    from local_test.clips import upload_clips
    from serving.handler import load_handlers
    from serving.modelspec import discover

    bench = Run("transform_throughput")
    spec = discover(MODELS)[MODEL]
    spec_kwargs = {"batch_strategy": spec.batch_strategy, "max_payload_mb": spec.max_payload_mb,
                   "max_concurrent": spec.max_concurrent_transforms,
                   "split_type": spec.split_type, "assemble_with": spec.assemble_with,
                   "content_type": spec.content_type, "accept": spec.accept}
    # The model's container environment, as the pipeline gives it (cpu_workers ->
    # SAGEMAKER_MODEL_SERVER_WORKERS on newer specs).
    model_env = dict(spec.container_environment() if hasattr(spec, "container_environment")
                     else spec.environment)
    figures = Figures()
    log: list[str] = []
    with bench_stack(args.stack) as setup:
        stack, env, settings, clients, s3 = (setup.stack, setup.env, setup.settings,
                                             setup.clients, setup.s3)
        workers = int(model_env.get("SAGEMAKER_MODEL_SERVER_WORKERS")
                      or env.get("SAGEMAKER_MODEL_SERVER_WORKERS") or os.cpu_count() or 1)
        keys = upload_clips(s3, BUCKET, CLIP_PREFIX, args.clips)
        objects = request_objects(keys, args.records, args.objects)
        for number, body in enumerate(objects):
            s3.put_object(Bucket=BUCKET, Key=f"{WORK}input/part-{number:02d}.jsonl", Body=body)
        batches = same_batches(objects, spec.batch_strategy, spec.max_payload_mb)
        say(f"embedded stack ({stack.mode}) on {stack.endpoint_url}; {args.records} records "
            f"in {args.objects} JSON-lines objects naming {args.clips} clips (8x32x32x3); "
            f"{spec.batch_strategy}, MaxPayloadInMB={spec.max_payload_mb}, "
            f"MaxConcurrentTransforms={spec.max_concurrent_transforms} -> {len(batches)} "
            f"requests")

        handlers = load_handlers(MODELS / MODEL, settings.program)
        model = handlers.load_model(MODELS / MODEL)
        warm = json.dumps({"bucket": BUCKET, "inputs": {"video": keys[0]},
                           "output_path": f"{OUTPUT_PREFIX}bench/throughput/warm.npy",
                           "overwrite": True}).encode()
        handlers.invoke(model, warm, JSONLINES, JSONLINES)

        for number in range(args.rounds + 1):
            times = run_inproc(handlers, model, batches, args.records)
            seconds = sum(times)
            figures.inproc_s.append(seconds)
            figures.inproc_request_s.append(times)
            say(f"  in-process {number + 1}: {seconds:.2f} s, "
                f"{args.records / seconds:.1f} records/s; per request (s): {_secs(times)}")
            if number == args.rounds:
                break
            try:
                run = run_job(number + 1, clients, env, spec_kwargs, model_env, log)
            except BaseException:
                say("transform log tail:\n" + "\n".join(log[-40:]))
                raise
            if run.requests != len(batches):
                raise RuntimeError(f"transform sent {run.requests} requests, the in-process "
                                   f"path {len(batches)}: not the same batches")
            figures.transforms.append(run)
            say(f"  transform {number + 1}: data plane {run.plane_s:.2f} s, "
                f"{run.records / run.plane_s:.1f} records/s; end to end {run.total_s:.2f} s "
                f"(containers healthy after {run.healthy_s:.2f} s, first batch answered "
                f"after {run.first_batch_s:.2f} s); per request (s): {_secs(run.request_s)}")
        marks = cold_start({**env, **model_env}, warm)
        cold = marks["answered"]
        say(f"  cold start (smserve serve, {workers} worker(s)): {_phases(marks)}")
        marks_mms: dict[str, float] = {}
        if args.cold_start_mms_workers:
            default_env = {k: v for k, v in {**env, **model_env}.items()
                           if k != "SAGEMAKER_MODEL_SERVER_WORKERS"}
            marks_mms = cold_start(default_env, warm)
            say(f"  cold start (smserve serve, multi-model-server's default workers: "
                f"{os.cpu_count()}): {_phases(marks_mms)}")

    inproc_rate = args.records / statistics.median(figures.inproc_s)
    plane_rate = args.records / statistics.median(t.plane_s for t in figures.transforms)
    e2e_rate = args.records / statistics.median(t.total_s for t in figures.transforms)
    efficiency = plane_rate / inproc_rate
    per_request_ms = 1000 * (statistics.median(t.plane_s for t in figures.transforms)
                             - statistics.median(figures.inproc_s)) / len(batches)
    healthy = statistics.median(t.healthy_s for t in figures.transforms)
    first_batch = statistics.median(t.first_batch_s for t in figures.transforms)
    # Each model-server worker's first request pays one-off costs (boto3 import and S3
    # client, first forward pass) that the warmed-up in-process path does not: the
    # figure without them says how much of the gap they are.
    skip = min(workers, len(batches) - 1)
    warm_inproc = statistics.median(sum(t[skip:]) for t in figures.inproc_request_s)
    warm_plane = statistics.median(sum(t.request_s[skip:]) for t in figures.transforms)
    efficiency_warm = warm_inproc / warm_plane
    eff_ok = efficiency >= GOAL_EFFICIENCY
    cold_ok = cold <= GOAL_COLD_START_S
    say("")
    say(f"in-process:        {inproc_rate:8.1f} records/s (median of {len(figures.inproc_s)})")
    say(f"transform:         {plane_rate:8.1f} records/s (data plane, median of "
        f"{len(figures.transforms)}); {e2e_rate:.1f} records/s end to end")
    say(f"efficiency:        {efficiency:8.3f}  (goal >= {GOAL_EFFICIENCY}: "
        f"{'met' if eff_ok else 'MISSED'}); end to end {e2e_rate / inproc_rate:.3f}; "
        f"transform - in-process = {per_request_ms:.1f} ms per request")
    say(f"                   {efficiency_warm:8.3f}  without the first {skip} request(s) (one per "
        f"model-server worker: {workers})")
    say(f"cold start:        {cold:8.2f} s  (goal <= {GOAL_COLD_START_S:g} s: "
        f"{'met' if cold_ok else 'MISSED'}); in the transform: healthy after {healthy:.2f} s, "
        f"first batch answered after {first_batch:.2f} s ({bench.seconds():.0f} s)")
    bench.finish({
        "records": args.records,
        "objects": args.objects,
        "requests": len(batches),
        "rounds": len(figures.transforms),
        "stack": args.stack,
        "inproc_records_per_s": r3(inproc_rate),
        "transform_records_per_s": r3(plane_rate),
        "transform_end_to_end_records_per_s": r3(e2e_rate),
        "efficiency": r3(efficiency),
        "efficiency_end_to_end": r3(e2e_rate / inproc_rate),
        "efficiency_without_first_requests": r3(efficiency_warm),
        "server_workers": workers,
        "cold_start_s": r3(cold),
        "cold_start_phases_s": {k: r3(v) for k, v in marks.items()},
        "cold_start_mms_default_workers_s": r3(marks_mms["answered"]) if marks_mms else None,
        "transform_healthy_s": r3(healthy),
        "transform_first_batch_s": r3(first_batch),
        "goal_efficiency": GOAL_EFFICIENCY,
        "goal_cold_start_s": GOAL_COLD_START_S,
        "goals_met": {"efficiency": eff_ok, "cold_start": cold_ok},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
