"""Warm servers: a CSV Chainer MLP job through the SageMaker API, cold then warm, vs in-process.

The issue-14 workload: ``--records`` (2,000) CSV records of 784 floats in
``--objects`` (2) objects, a Chainer MLP (784-100-100-10, fixed seed),
``SplitType`` Line, ``MultiRecord``, ``MaxPayloadInMB`` 6, ``text/csv`` in
and out. Measured in one run, on ``smserve local up`` in its own process
(its SageMaker API keeps servers warm):

- *in-process* (the limit): the same 6 MB request bodies passed to the
  handlers here (:meth:`serving.handler.Handlers.invoke`), after one warm-up
  body;
- *cold*: boto3 ``CreateTransformJob`` -> ``DescribeTransformJob`` every
  20 ms until ``Completed``, the model's first job (its server starts);
- *warm*: the same again, a second job on the same model: local up reuses
  the server.

    python bench/warm_servers.py [--records 2000] [--objects 2] [--profile]

``--profile`` also runs the same job's data plane in this process, under
cProfile, against a server started here (its start not profiled), and
prints where the data plane's time goes: the functions with the most time
of their own, and the waits (invocations, S3 reads and writes).

Goals (issue 14): 2,000 records on a warm server at most 1 s; 20,000 records
end to end (cold) at least 0.5 of the in-process rate.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import BUCKET, Run, bench_stack, r3, say, start_script

WORK = "bench-warm/"
PAYLOAD_MB = 6
HANDLERS = '''\
"""A Chainer MLP on CSV rows: 784 floats in, 10 scores out (input_fn/output_fn: defaults)."""
import numpy as np

N_IN, N_UNITS, N_OUT = 784, 100, 10


def model_fn(model_dir):
    import chainer
    import chainer.functions as F
    import chainer.links as L

    class MLP(chainer.Chain):
        def __init__(self):
            super().__init__()
            with self.init_scope():
                self.l1 = L.Linear(N_IN, N_UNITS)
                self.l2 = L.Linear(N_UNITS, N_UNITS)
                self.l3 = L.Linear(N_UNITS, N_OUT)

        def forward(self, x):
            return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))

    np.random.seed(0)
    return MLP()


def predict_fn(data, model):
    import chainer

    x = np.asarray(data, dtype=np.float32)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        return model(x).array
'''


def csv_objects(records: int, objects: int) -> list[bytes]:
    """``records`` rows of 784 floats, as ``objects`` CSV bodies (fixed seed)."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = [",".join(f"{v:.4f}" for v in rng.random(784)) for _ in range(records)]
    parts = [rows[i * records // objects:(i + 1) * records // objects] for i in range(objects)]
    return [("\n".join(p) + "\n").encode() for p in parts]


def bodies_of(data: bytes, limit: int = PAYLOAD_MB * 1024 * 1024) -> list[bytes]:
    """Whole lines packed into bodies of at most ``limit`` bytes, as MultiRecord packs them."""
    bodies: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in data.splitlines(keepends=True):
        if current and size + len(line) > limit:
            bodies.append(b"".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        bodies.append(b"".join(current))
    return bodies


def in_process(folder: Path, objects: list[bytes]) -> float:
    """Seconds the handlers take here for every body (after a warm-up body)."""
    from serving.handler import load_handlers

    handlers = load_handlers(folder)
    model = handlers.load_model(folder)
    bodies = [b for data in objects for b in bodies_of(data)]
    handlers.invoke(model, bodies[0].split(b"\n", 1)[0], "text/csv", "text/csv")
    started = time.perf_counter()
    for body in bodies:
        handlers.invoke(model, body, "text/csv", "text/csv")
    return time.perf_counter() - started


def api_job(sm: Any, model: str, name: str) -> float:
    """Seconds from CreateTransformJob to Completed (raises on any other end)."""
    started = time.perf_counter()
    sm.create_transform_job(
        TransformJobName=name, ModelName=model, BatchStrategy="MultiRecord",
        MaxPayloadInMB=PAYLOAD_MB, MaxConcurrentTransforms=2,
        TransformInput={"DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": f"s3://{BUCKET}/{WORK}input/"}},
            "ContentType": "text/csv", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": f"s3://{BUCKET}/{WORK}out/{name}/",
                         "Accept": "text/csv", "AssembleWith": "Line"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
    while True:
        job = sm.describe_transform_job(TransformJobName=name)
        if job["TransformJobStatus"] not in ("InProgress", "Stopping"):
            break
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    if job["TransformJobStatus"] != "Completed":
        raise SystemExit(f"{name}: {job['TransformJobStatus']}: {job.get('FailureReason')}")
    return seconds


def profile(setup: Any, folder: Path, top: int = 14) -> None:
    """The data plane of one job, in this process, under cProfile; prints the top functions."""
    import cProfile
    import io
    import pstats

    from serving.runners.process import ProcessRunner
    from serving.transform.dataplane import DataPlane
    from serving.transform.spec import TransformJobSpec

    spec = TransformJobSpec.simple(
        "profiled", "mlp", f"s3://{BUCKET}/{WORK}input/", f"s3://{BUCKET}/{WORK}out/profiled/",
        content_type="text/csv", accept="text/csv", max_payload_mb=PAYLOAD_MB, max_concurrent=2)
    model_dir = folder.parent / "model"
    (model_dir / "code").mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "serving.py", model_dir / "code" / "serving.py")
    (container,) = ProcessRunner(env=setup.env).start(model_dir, {})
    profilers: list[cProfile.Profile] = []

    def in_each_thread(*_: Any) -> None:  # the data plane's threads: a profiler each
        profiler = cProfile.Profile()
        profilers.append(profiler)
        profiler.enable()  # replaces this hook for the thread

    try:
        plane = DataPlane(setup.s3, [container.url], spec)
        main = cProfile.Profile()
        profilers.append(main)
        threading.setprofile(in_each_thread)
        started = time.perf_counter()
        main.enable()
        result = plane.run()
        main.disable()
        seconds = time.perf_counter() - started
    finally:
        threading.setprofile(None)  # type: ignore[arg-type]
        container.stop()
    say(f"\nprofile: the data plane alone, in this process, all its threads, {seconds:.2f} s "
        f"({'ok' if result.ok else result.failure_reason()})")
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        stats = pstats.Stats(profilers[0], stream=text)
        for other in profilers[1:]:
            stats.add(other)
        stats.sort_stats(order).print_stats(top)
        lines = text.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
        say(f"by {order}:")
        for line in lines[start:start + top + 1]:
            say("  " + line[:150])


def main() -> int:
    """Run the benchmark; print the figures and the JSON line."""
    parser = start_script(__doc__, worker_threads=True)
    parser.add_argument("--records", type=int, default=2000, help="CSV records (2000)")
    parser.add_argument("--objects", type=int, default=2, help="input objects (2)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the data plane of one job in this process")
    args = parser.parse_args()
    run = Run("warm_servers")
    from serving.package import build_archive

    tmp = Path(tempfile.mkdtemp(prefix="smserve-bench-warm-"))
    try:
        folder = tmp / "mlp"
        folder.mkdir()
        (folder / "serving.py").write_text(HANDLERS)
        objects = csv_objects(args.records, args.objects)
        limit = in_process(folder, objects)
        with bench_stack(args.stack) as setup:
            s3, sm = setup.s3, setup.clients.client("sagemaker")
            for i, data in enumerate(objects):
                s3.put_object(Bucket=BUCKET, Key=f"{WORK}input/part-{i}.csv", Body=data)
            archive = build_archive(folder, tmp / "model.tar.gz")
            s3.upload_file(str(archive), BUCKET, f"{WORK}model.tar.gz")
            from serving.local.stackimages import stack_images

            image = stack_images(setup.clients, ("cpu",), registry=False)["cpu"]
            sm.create_model(ModelName="mlp", ExecutionRoleArn="arn:aws:iam::123456789012:role/b",
                            PrimaryContainer={"Image": image,
                                              "ModelDataUrl": f"s3://{BUCKET}/{WORK}model.tar.gz"})
            cold = api_job(sm, "mlp", f"mlp-cold-{os.getpid()}")
            warm = api_job(sm, "mlp", f"mlp-warm-{os.getpid()}")
            if args.profile:
                profile(setup, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = {k: args.records / v for k, v in (("in_process", limit), ("cold", cold),
                                              ("warm", warm))}
    say(f"{args.records:,} CSV records, MultiRecord {PAYLOAD_MB} MB, Chainer MLP")
    say(f"  in-process (the limit)          {limit:6.2f} s  {rate['in_process']:8,.0f} rec/s")
    say(f"  CreateTransformJob -> Completed, cold (server starts) {cold:6.2f} s  "
        f"{rate['cold']:8,.0f} rec/s = {rate['cold'] / rate['in_process']:.2f} of the limit")
    say(f"  CreateTransformJob -> Completed, warm (server reused) {warm:6.2f} s  "
        f"{rate['warm']:8,.0f} rec/s = {rate['warm'] / rate['in_process']:.2f} of the limit; "
        f"warm / cold time {warm / cold:.2f}")
    run.finish({"records": args.records, "objects": args.objects,
                "in_process_s": r3(limit), "cold_s": r3(cold), "warm_s": r3(warm),
                "cold_fraction_of_limit": r3(rate["cold"] / rate["in_process"]),
                "warm_fraction_of_limit": r3(rate["warm"] / rate["in_process"]),
                "warm_over_cold": r3(warm / cold)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
