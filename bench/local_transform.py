"""Local batch transform: our data plane vs the in-process handler and the SDK's local mode.

Measured in one run, on the embedded stack (moto in its own process), with
``scene_classifier`` (S3-reference records: each one fetches a T x 64
features ``.npy`` and writes a JSON answer, ``overwrite`` true):

1. **Throughput**, ``--records`` (2,000) records in ``--objects`` (10)
   JSON-lines objects, ``Line``/``MultiRecord``, ``MaxPayloadInMB`` 6,
   ``MaxConcurrentTransforms`` ``--concurrency`` (2), ``--rounds`` (4) rounds,
   the order of ours and the SDK's alternating (whichever runs first after the
   in-process path was seen to be slower, so each round also starts with an
   untimed warm-up job):

   - *in-process*: the same request bodies (``split_records`` +
     ``make_batcher``, as the data plane makes them) passed to
     :meth:`serving.handler.Handlers.invoke` here, after one warm-up record;
   - *ours*: :class:`serving.transform.DataPlane` against one container
     (``smserve serve`` through :class:`~serving.transform.ProcessRunner`),
     started once;
   - *SDK*: ``sagemaker-core``'s local-mode data plane (the harness of
     ``tests/integration/test_differential.py``: the SDK's own listing,
     splitting, batching, invoking and upload code, with its Docker
     container replaced by that same running container).

   ``efficiency`` = ours / in-process records/s (goal >= 0.7);
   ``speedup_vs_sdk`` = SDK seconds / ours (goal > 1). The model's own work
   dominates both, so the same job is also run by both data planes against
   an instant container (``data_plane_only``), where the data planes are all
   there is to measure.
2. **A 10-record job** (``--small-records``) through
   :func:`serving.transform.run_transform`: from the call to its return,
   containers started, healthy, used and stopped inside (goal <= 3 s).
3. **Through the SageMaker API**, when the embedded stack serves it
   (``serving.local.sagemaker``): boto3 ``CreateTransformJob`` for the same
   10 records, then ``DescribeTransformJob`` every 20 ms until ``Completed``.

    .venv/bin/python bench/local_transform.py [--records 2000] [--objects 10] [--rounds 4]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
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
)

GOAL_EFFICIENCY = 0.7
GOAL_SMALL_JOB_S = 3.0
JSONLINES = "application/jsonlines"
MODEL = "scene_classifier"
WORK = "bench/local-transform/"


def upload_features(s3: Any, count: int) -> list[str]:
    """``count`` distinct T x 64 float32 feature arrays (frame_features' output shape)."""
    import numpy as np

    keys = []
    for i in range(count):
        rng = np.random.default_rng([2026, i])
        buffer = io.BytesIO()
        np.save(buffer, rng.standard_normal((8, 64)).astype(np.float32), allow_pickle=False)
        key = f"{WORK}features/f-{i:02d}.npy"
        s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
        keys.append(key)
    return keys


def request_objects(keys: Sequence[str], records: int, objects: int, tag: str) -> list[bytes]:
    """``records`` request records as ``objects`` JSON-lines bodies."""
    return jsonl_objects([json.dumps({
        "bucket": BUCKET, "inputs": {"features": keys[i % len(keys)]},
        "output_path": f"{OUTPUT_PREFIX}{WORK}{tag}/rec-{i:05d}.json",
        "overwrite": True}).encode() for i in range(records)], objects)


def written(s3: Any, prefix: str) -> int:
    """Records the model says it wrote, over every ``.out`` object under ``prefix``."""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            count += body.count(b'"written"')
    return count


def job_spec(name: str, input_prefix: str, output_prefix: str, concurrency: int) -> Any:
    from serving.transform import TransformJobSpec

    return TransformJobSpec.simple(name, "scene-classifier", f"s3://{BUCKET}/{input_prefix}",
                                   f"s3://{BUCKET}/{output_prefix}", max_concurrent=concurrency)


def inproc_seconds(handlers: Any, model: Any, bodies: Sequence[bytes], expected: int) -> float:
    """Seconds for ``bodies`` through the handlers here; checks every record was written."""
    done = 0
    start = time.perf_counter()
    for body in bodies:
        done += handlers.invoke(model, body, JSONLINES, JSONLINES).body.count(b'"written"')
    seconds = time.perf_counter() - start
    if done != expected:
        raise RuntimeError(f"in-process: {done} of {expected} records written")
    return seconds


def warm_up(s3: Any, url: str, spec: Any, keys: Sequence[str], log: list[str]) -> None:
    """An untimed job of small objects, so every model-server worker has served a request.

    A worker's first request pays one-off costs (imports, its S3 client) that
    neither measured path should pay.
    """
    from serving.transform import DataPlane, TransformJobSpec

    count = 2 * max(spec.max_concurrent or 1, os.cpu_count() or 1)
    for number, body in enumerate(request_objects(keys, 5 * count, count, "warm")):
        s3.put_object(Bucket=BUCKET, Key=f"{WORK}warm-input/part-{number:02d}.jsonl", Body=body)
    req = spec.to_request()
    req["TransformJobName"] = "bench-warm-up"
    req["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = (
        f"s3://{BUCKET}/{WORK}warm-input/")
    req["TransformOutput"]["S3OutputPath"] = f"s3://{BUCKET}/{WORK}warm-output/"
    result = DataPlane(s3, [url], TransformJobSpec.from_request(req), log=log.append).run()
    if not result.ok:
        raise RuntimeError(f"warm-up: {result.failure_reason()}")


def throughput(args: argparse.Namespace, clients: Any, env: Mapping[str, str], stack: Any,
               keys: Sequence[str], log: list[str]) -> dict[str, Any]:
    """Part 1: in-process, ours and the SDK on the same records."""
    from serving.handler import load_handlers
    from serving.settings import Settings
    from serving.transform import (
        ProcessRunner,
        container_environment,
        make_batcher,
        prepare_model,
        split_records,
    )

    s3 = clients.client("s3")
    objects = request_objects(keys, args.records, args.objects, "throughput")
    for number, body in enumerate(objects):
        s3.put_object(Bucket=BUCKET, Key=f"{WORK}input/part-{number:02d}.jsonl", Body=body)
    bodies = [b.body for data in objects
              for b in make_batcher("MultiRecord", 6, "Line").batches(split_records(data, "Line"))]
    warm = request_objects(keys, 1, 1, "warm")[0].rstrip(b"\n")

    settings = Settings.from_environ(env)
    handlers = load_handlers(MODELS / MODEL, settings.program)
    model = handlers.load_model(MODELS / MODEL)
    handlers.invoke(model, warm, JSONLINES, JSONLINES)

    sdk, sdk_note = _sdk_harness()
    spec = job_spec("bench-local", f"{WORK}input/", f"{WORK}ours/", args.concurrency)
    workdir = Path(tempfile.mkdtemp(prefix="bench-local-transform-"))
    figures: dict[str, list[float]] = {"inproc": [], "ours": [], "sdk": []}
    containers = []
    try:
        runner = ProcessRunner(env=env, log=log.append)
        model_dir = prepare_model(MODELS / MODEL, workdir)
        containers = runner.start(model_dir, container_environment(spec), count=1)
        url, port = containers[0].url, containers[0].port
        for number in range(args.rounds):
            figures["inproc"].append(inproc_seconds(handlers, model, bodies, args.records))
            warm_up(s3, url, spec, keys, log)  # the container idled through the line above
            paths: list[tuple[str, Callable[[], float]]] = [
                ("ours", lambda n=number: _ours(s3, url, spec, n, args.records, log))]
            if sdk is not None:
                paths.append(("sdk", lambda n=number: _sdk(s3, sdk, port, env, stack, spec, n,
                                                           args.records)))
            for name, path in paths[::-1] if number % 2 else paths:
                figures[name].append(path())
            say(f"  round {number + 1}: in-process {figures['inproc'][-1]:.2f} s, ours "
                f"{figures['ours'][-1]:.2f} s" + (f", SDK {figures['sdk'][-1]:.2f} s"
                                                  if figures["sdk"] else ""))
    finally:
        for container in containers:
            container.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    out: dict[str, Any] = {"requests": len(bodies), "sdk_note": sdk_note}
    for name, values in figures.items():
        out[f"{name}_s"] = statistics.median(values) if values else None
    if sdk is not None:
        out.update(echo_rounds(args, s3, sdk, env, stack, spec, log))
    return out


def echo_rounds(args: argparse.Namespace, s3: Any, sdk: Any, env: Mapping[str, str],
                stack: Any, spec: Any, log: list[str]) -> dict[str, float]:
    """The same job, ours and the SDK's, against an instant container: data planes alone.

    The container is the differential test's recording server (it answers each body
    upper-cased), in a thread of this process: it shares our data plane's interpreter,
    not the SDK's, so the comparison leans towards the SDK.
    """
    from serving.transform import DataPlane, TransformJobSpec
    from tests.integration.test_differential import RecordingServer

    server = RecordingServer()
    times: dict[str, list[float]] = {"ours": [], "sdk": []}
    try:
        for number in range(args.rounds):
            req = spec.to_request()
            for name in ("ours", "sdk"):
                req["TransformJobName"] = f"bench-echo-{name}-{number}"
                prefix = f"{WORK}echo-{name}/{number}/"
                req["TransformOutput"]["S3OutputPath"] = f"s3://{BUCKET}/{prefix}"
                if name == "ours":
                    result = DataPlane(s3, [server.url], TransformJobSpec.from_request(req),
                                       log=log.append).run()
                    ok, seconds = result.ok, result.seconds
                else:
                    run = sdk.run(req, server.port, env, endpoint=stack.endpoint_url)
                    ok, seconds = run.state == "Completed" and not run.error, run.seconds
                lines = sum(_lines(s3, item["Key"]) for item in s3.list_objects_v2(
                    Bucket=BUCKET, Prefix=prefix).get("Contents", []))
                if not ok or lines != args.records:
                    raise RuntimeError(f"echo {name} {number}: {lines} of {args.records} lines")
                times[name].append(seconds)
    finally:
        server.close()
    ours, sdk_s = statistics.median(times["ours"]), statistics.median(times["sdk"])
    say(f"  instant container: ours {ours:.2f} s, SDK {sdk_s:.2f} s (medians)")
    return {"echo_ours_s": ours, "echo_sdk_s": sdk_s}


def _lines(s3: Any, key: str) -> int:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return sum(1 for line in body.split(b"\n") if line)


def _ours(s3: Any, url: str, spec: Any, number: int, records: int, log: list[str]) -> float:
    from serving.transform import DataPlane, TransformJobSpec

    req = spec.to_request()
    req["TransformJobName"] = f"bench-ours-{number}"
    req["TransformOutput"]["S3OutputPath"] = f"s3://{BUCKET}/{WORK}ours/{number}/"
    result = DataPlane(s3, [url], TransformJobSpec.from_request(req), log=log.append).run()
    if not result.ok or written(s3, f"{WORK}ours/{number}/") != records:
        raise RuntimeError(f"ours, round {number}: {result.failure_reason() or 'records missing'}")
    return result.seconds


def _sdk(s3: Any, sdk: Any, port: int, env: Mapping[str, str], stack: Any, spec: Any,
         number: int, records: int) -> float:
    req = spec.to_request()
    req["TransformJobName"] = f"bench-sdk-{number}"
    req["TransformOutput"]["S3OutputPath"] = f"s3://{BUCKET}/{WORK}sdk/{number}/"
    run = sdk.run(req, port, env, endpoint=stack.endpoint_url)
    if run.error or run.state != "Completed":
        raise RuntimeError(f"SDK, round {number}: {run.state}: {run.error}")
    done = written(s3, f"{WORK}sdk/{number}/")
    if done != records:
        raise RuntimeError(f"SDK, round {number}: {done} of {records} records written")
    return float(run.seconds)


def _sdk_harness() -> tuple[Any, str]:
    try:
        from tests.integration.test_differential import sdk_or_reason
    except ImportError as err:  # pytest missing: no dev extras
        return None, f"cannot load the SDK harness: {err}"
    root = Path(tempfile.mkdtemp(prefix="bench-sdk-local-mode-"))
    harness, reason = sdk_or_reason(root)
    return harness, (f"{harness.version}" if harness is not None else reason)


def small_job(args: argparse.Namespace, clients: Any, env: Mapping[str, str],
              keys: Sequence[str], number: int, log: list[str]) -> dict[str, float]:
    """Part 2: a ``--small-records`` job through run_transform, start to finish."""
    from serving.transform import ProcessRunner, run_transform

    s3 = clients.client("s3")
    prefix = f"{WORK}small-input/"
    s3.put_object(Bucket=BUCKET, Key=prefix + "part-00.jsonl",
                  Body=request_objects(keys, args.small_records, 1, "small")[0])
    spec = job_spec(f"bench-small-{number}", prefix, f"{WORK}small/{number}/", 1)
    healthy: list[float] = []

    class Timing(ProcessRunner):
        def start(self, *a: Any, **kw: Any) -> Any:
            containers = super().start(*a, **kw)
            healthy.append(time.perf_counter())
            return containers

    start = time.perf_counter()
    run_transform(spec, MODELS / MODEL, clients, Timing(env=env, log=log.append), log=log.append)
    total = time.perf_counter() - start
    if written(s3, f"{WORK}small/{number}/") != args.small_records:
        raise RuntimeError(f"small job {number}: records missing")
    return {"total_s": total, "healthy_s": healthy[0] - start}


def api_job(args: argparse.Namespace, clients: Any, keys: Sequence[str], number: int
            ) -> tuple[float | None, str]:
    """Part 3: CreateTransformJob -> Completed through boto3, when the stack has the API."""
    import importlib.util

    if importlib.util.find_spec("serving.local.sagemaker") is None:
        return None, "serving.local.sagemaker does not exist yet"
    from serving.local.stackimages import stack_images
    from serving.package import build_archive

    s3, sm = clients.client("s3"), clients.client("sagemaker")
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    try:
        archive = build_archive(MODELS / MODEL, workdir / "model.tar.gz")
        s3.upload_file(str(archive), BUCKET, f"{WORK}model/model.tar.gz")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    name = f"bench-api-{number}-{os.getpid()}"
    # CreateModel takes only images the stack's ECR holds; the process runner never pulls it
    image = stack_images(clients, ["cpu"], registry=False)["cpu"]
    try:
        sm.create_model(ModelName=name, ExecutionRoleArn="arn:aws:iam::123456789012:role/bench",
                        PrimaryContainer={
                            "Image": image,
                            "ModelDataUrl": f"s3://{BUCKET}/{WORK}model/model.tar.gz",
                            # the stack's containers get only what the model says
                            "Environment": {"SMSERVE_ALLOWED_BUCKETS": BUCKET,
                                            "SMSERVE_OUTPUT_PREFIXES": OUTPUT_PREFIX}})
        spec = job_spec(name, f"{WORK}small-input/", f"{WORK}api/{number}/", 1)
        request = spec.to_request()
        request["ModelName"] = name
        start = time.perf_counter()
        sm.create_transform_job(**request)
        while True:
            status = sm.describe_transform_job(TransformJobName=name)
            if status["TransformJobStatus"] in ("Completed", "Failed", "Stopped"):
                break
            time.sleep(0.02)
        seconds = time.perf_counter() - start
    except Exception as err:  # the API is being built: report, do not fail the bench
        return None, f"{type(err).__name__}: {err}"
    if status["TransformJobStatus"] != "Completed":
        return None, f"{status['TransformJobStatus']}: {status.get('FailureReason', '')}"
    return seconds, "boto3 CreateTransformJob -> DescribeTransformJob Completed"


def main(argv: Sequence[str] | None = None) -> int:
    parser = start_script(__doc__)
    parser.add_argument("--records", type=int, default=2000, help="records in the big job")
    parser.add_argument("--objects", type=int, default=10, help="its JSON-lines objects")
    parser.add_argument("--concurrency", type=int, default=2, help="MaxConcurrentTransforms")
    parser.add_argument("--rounds", type=int, default=4,
                        help="rounds of each path (even: each goes first as often)")
    parser.add_argument("--small-records", type=int, default=10, help="records in the small job")
    parser.add_argument("--small-rounds", type=int, default=3, help="small jobs to run")
    parser.add_argument("--features", type=int, default=8, help="distinct feature arrays")
    args = parser.parse_args(argv)
    if args.objects < 1 or args.records < args.objects or args.rounds < 1:
        parser.error("need --objects >= 1, --records >= --objects and --rounds >= 1")

    bench = Run("local_transform")
    log: list[str] = []
    with bench_stack(args.stack) as setup:
        stack, env, clients = setup.stack, setup.env, setup.clients
        keys = upload_features(setup.s3, args.features)
        say(f"embedded stack ({stack.mode}) on {stack.endpoint_url}; {MODEL}; {args.records} "
            f"records in {args.objects} objects, MultiRecord 6 MB, MaxConcurrentTransforms "
            f"{args.concurrency}")
        try:
            big = throughput(args, clients, env, stack, keys, log)
            small = [small_job(args, clients, env, keys, n, log) for n in range(args.small_rounds)]
            for n, run in enumerate(small, start=1):
                say(f"  small job {n}: {run['total_s']:.2f} s (containers healthy after "
                    f"{run['healthy_s']:.2f} s)")
            api_s, api_note = api_job(args, clients, keys, 0)
        except BaseException:
            say("log tail:\n" + "\n".join(log[-40:]))
            raise

    inproc_rate = args.records / big["inproc_s"]
    ours_rate = args.records / big["ours_s"]
    sdk_s = big["sdk_s"]
    efficiency = ours_rate / inproc_rate
    speedup = sdk_s / big["ours_s"] if sdk_s else None
    small_s = statistics.median(r["total_s"] for r in small)
    goals = {"efficiency": efficiency >= GOAL_EFFICIENCY,
             "faster_than_sdk": None if speedup is None else speedup > 1.0,
             "small_job": small_s <= GOAL_SMALL_JOB_S}
    say("")
    say(f"in-process:     {inproc_rate:8.1f} records/s ({big['requests']} requests, median of "
        f"{args.rounds})")
    say(f"ours:           {ours_rate:8.1f} records/s  efficiency {efficiency:.3f} (goal >= "
        f"{GOAL_EFFICIENCY}: {'met' if goals['efficiency'] else 'MISSED'})")
    if sdk_s:
        say(f"SDK local mode: {args.records / sdk_s:8.1f} records/s  ours is {speedup:.2f}x as "
            f"fast ({'met' if goals['faster_than_sdk'] else 'MISSED'}; sagemaker-core "
            f"{big['sdk_note']})")
        say(f"                data planes alone (instant container): ours "
            f"{big['echo_ours_s']:.2f} s, SDK {big['echo_sdk_s']:.2f} s: "
            f"{big['echo_sdk_s'] / big['echo_ours_s']:.2f}x")
    else:
        say(f"SDK local mode: not measured: {big['sdk_note']}")
    say(f"10-record job:  {small_s:8.2f} s run_transform start -> Completed, median of "
        f"{len(small)} (goal <= {GOAL_SMALL_JOB_S:g} s: "
        f"{'met' if goals['small_job'] else 'MISSED'})")
    say("SageMaker API:  " + (f"{api_s:8.2f} s CreateTransformJob -> Completed" if api_s
                               else f"not measured: {api_note}")
        + f" ({bench.seconds():.0f} s in all)")
    bench.finish({
        "model": MODEL,
        "records": args.records,
        "objects": args.objects,
        "requests": big["requests"],
        "max_concurrent_transforms": args.concurrency,
        "rounds": args.rounds,
        "inproc_records_per_s": r3(inproc_rate),
        "ours_records_per_s": r3(ours_rate),
        "sdk_records_per_s": r3(args.records / sdk_s) if sdk_s else None,
        "efficiency": r3(efficiency),
        "speedup_vs_sdk": r3(speedup) if speedup else None,
        "data_plane_only": None if not sdk_s else {
            "ours_s": r3(big["echo_ours_s"]), "sdk_s": r3(big["echo_sdk_s"]),
            "speedup_vs_sdk": r3(big["echo_sdk_s"] / big["echo_ours_s"])},
        "sdk": big["sdk_note"],
        "small_job_records": args.small_records,
        "small_job_s": r3(small_s),
        "small_job_runs_s": [r3(r["total_s"]) for r in small],
        "small_job_healthy_s": r3(statistics.median(r["healthy_s"] for r in small)),
        "api_job_s": r3(api_s) if api_s else None,
        "api_note": api_note,
        "goal_efficiency": GOAL_EFFICIENCY,
        "goal_small_job_s": GOAL_SMALL_JOB_S,
        "goals_met": goals,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
