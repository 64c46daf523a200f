"""What per-record outcomes cost: a local batch transform with and without them, in one run.

The same records (``--records``, default 240, in ``--objects`` JSON-lines
objects, each naming one of a few uploaded clips, new output keys every
round) go through a local ``MultiRecord`` batch transform of ``--model``
(default ``frame_features``, the transform benchmark's model) with the
model's own batch settings, alternating between two folders of that model:

- **outcomes**: the model as it is: :meth:`serving.s3refs.S3Refs.process`,
  one outcome per record, an error document deleted after each write;
- **all-or-nothing**: the same folder whose ``predict_fn`` calls
  ``bench/_all_or_nothing.py`` instead (what ``process`` did before: the
  first failure fails the request).

``cost`` = 1 - outcomes records/s / all-or-nothing records/s, on the data
plane's time (containers already healthy), medians of ``--rounds`` each
(goal <= 0.02).

On a busy machine the transforms' spread hides a 2 % difference, so the
same two folders' handlers also run **in-process** here, on the same
``MultiRecord`` bodies (``--inproc-rounds`` alternating repetitions, fresh
output keys each time, so every record costs a HeadObject, a GetObject and a
PutObject): ``inproc_cost`` compares the fastest repetition of each path
(the least disturbed by other load) and the medians.

    .venv/bin/python bench/record_outcomes.py [--records 240] [--rounds 3] [--inproc-rounds 9]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
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

GOAL_COST = 0.02
JSONLINES = "application/jsonlines"
HERE = Path(__file__).resolve().parent


def baseline_folder(model: str, root: Path) -> Path:
    """A copy of ``models/<model>`` whose ``predict_fn`` processes all or nothing."""
    folder = root / model
    shutil.copytree(MODELS / model, folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HERE / "_all_or_nothing.py", folder / "_all_or_nothing.py")
    serving = folder / "serving.py"
    text = serving.read_text()
    call = "s3refs.runtime().process(records,"
    if call not in text:
        raise RuntimeError(f"{serving}: no {call!r} to replace")
    serving.write_text(text.replace(call, "_all_or_nothing.process(s3refs.runtime(), records,")
                       + "\nimport _all_or_nothing  # noqa: E402\n")
    return folder


def run_round(name: str, folder: Path, setup: Any, keys: list[str], records: int,
              objects: int, spec_kwargs: dict[str, Any], model_env: dict[str, str]) -> float:
    """Records/s of the data plane for one transform of fresh records through ``folder``."""
    from serving.transform import ProcessRunner, TransformJobSpec, run_transform

    s3 = setup.s3
    base = f"bench/outcomes/{name}/"
    lines = [json.dumps({"bucket": BUCKET, "inputs": {"video": keys[i % len(keys)]},
                         "output_path": f"{OUTPUT_PREFIX}{base}rec-{i:05d}.npy"}).encode()
             for i in range(records)]
    for number, body in enumerate(jsonl_objects(lines, objects)):
        s3.put_object(Bucket=BUCKET, Key=f"{base}input/part-{number:02d}.jsonl", Body=body)
    spec = TransformJobSpec.simple(f"bench-outcomes-{name.replace('_', '-')}", "bench-model",
                                   f"s3://{BUCKET}/{base}input/", f"s3://{BUCKET}/{base}output/",
                                   **spec_kwargs)
    log: list[str] = []
    try:
        result = run_transform(spec, folder, setup.clients, ProcessRunner(env=setup.env,
                                                                          log=log.append),
                               log=log.append, model_environment=model_env)
    except BaseException:
        say("transform log tail:\n" + "\n".join(log[-40:]))
        raise
    written = sum(s3.get_object(Bucket=BUCKET, Key=o.output.split("/", 3)[3])["Body"].read()
                  .count(b'"written"') for o in result.objects)
    if written != records:
        raise RuntimeError(f"{name}: {written} of {records} records written")
    return records / result.seconds


def inproc_rates(folders: dict[str, Path], keys: list[str], records: int, per_request: int,
                 repetitions: int) -> dict[str, list[float]]:
    """Records/s of each folder's handlers invoked here, alternating, fresh outputs each time."""
    from serving.handler import load_handlers

    loaded = {}
    for name, folder in folders.items():
        handlers = load_handlers(folder, "serving.py")
        loaded[name] = (handlers, handlers.load_model(folder))
    rates: dict[str, list[float]] = {name: [] for name in folders}
    for number in range(repetitions + 1):  # the first repetition warms both up, unmeasured
        names = list(folders) if number % 2 == 0 else list(reversed(folders))
        for name in names:
            handlers, model = loaded[name]
            lines = [json.dumps({"bucket": BUCKET, "inputs": {"video": keys[i % len(keys)]},
                                 "output_path": f"{OUTPUT_PREFIX}bench/outcomes/inproc/{name}/"
                                                f"{number}/rec-{i:05d}.npy"}).encode()
                     for i in range(records)]
            bodies = [b"\n".join(lines[i:i + per_request])
                      for i in range(0, records, per_request)]
            start = time.perf_counter()
            written = 0
            for body in bodies:
                answer = handlers.invoke(model, body, JSONLINES, JSONLINES).body
                written += answer.count(b'"written"')
            seconds = time.perf_counter() - start
            if written != records:
                raise RuntimeError(f"in-process {name}: {written} of {records} written")
            if number:
                rates[name].append(records / seconds)
                say(f"  in-process {number} {name:<15} {records / seconds:8.1f} records/s")
    return rates


def main() -> int:
    parser = start_script(__doc__, worker_threads=True)
    parser.add_argument("--model", default="frame_features")
    parser.add_argument("--records", type=int, default=240)
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--inproc-rounds", type=int, default=9)
    parser.add_argument("--per-request", type=int, default=48,
                        help="records per in-process request body")
    args = parser.parse_args()

    from local_test.clips import upload_clips
    from serving.modelspec import discover

    bench = Run("record_outcomes")
    spec = discover(MODELS)[args.model]
    spec_kwargs = {"batch_strategy": spec.batch_strategy, "max_payload_mb": spec.max_payload_mb,
                   "max_concurrent": spec.max_concurrent_transforms,
                   "split_type": spec.split_type, "assemble_with": spec.assemble_with,
                   "content_type": spec.content_type, "accept": spec.accept}
    model_env = dict(spec.container_environment())
    rates: dict[str, list[float]] = {"outcomes": [], "all_or_nothing": []}
    inproc: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="smserve-bench-") as tmp, \
            bench_stack(args.stack) as setup:
        folders = {"outcomes": MODELS / args.model,
                   "all_or_nothing": baseline_folder(args.model, Path(tmp))}
        keys = upload_clips(setup.s3, BUCKET, "bench/clips/", args.clips)
        say(f"{args.model}: {args.records} records in {args.objects} objects, "
            f"{spec.batch_strategy}, MaxPayloadInMB={spec.max_payload_mb}, "
            f"MaxConcurrentTransforms={spec.max_concurrent_transforms}; {args.rounds} round(s)")
        for number in range(args.rounds):
            order = ("outcomes", "all_or_nothing") if number % 2 == 0 else \
                ("all_or_nothing", "outcomes")
            for name in order:
                rate = run_round(f"{name}-{number}", folders[name], setup, keys, args.records,
                                 args.objects, spec_kwargs, model_env)
                rates[name].append(rate)
                say(f"  round {number + 1} {name:<15} {rate:8.1f} records/s (data plane)")
        if args.inproc_rounds:
            inproc = inproc_rates(folders, keys, args.records, args.per_request,
                                  args.inproc_rounds)
    with_rate = statistics.median(rates["outcomes"])
    without = statistics.median(rates["all_or_nothing"])
    cost = 1 - with_rate / without
    ok = cost <= GOAL_COST
    say("")
    say(f"transform, per-record outcomes: {with_rate:.1f} records/s, all or nothing: "
        f"{without:.1f} records/s; cost {100 * cost:+.1f} % (goal <= {100 * GOAL_COST:g} %: "
        f"{'met' if ok else 'MISSED'})")
    figures: dict[str, Any] = {}
    if inproc:
        best = 1 - max(inproc["outcomes"]) / max(inproc["all_or_nothing"])
        mid = 1 - statistics.median(inproc["outcomes"]) / statistics.median(
            inproc["all_or_nothing"])
        inproc_ok = best <= GOAL_COST
        say(f"in-process, per-record outcomes: best {max(inproc['outcomes']):.1f}, median "
            f"{statistics.median(inproc['outcomes']):.1f} records/s; all or nothing: best "
            f"{max(inproc['all_or_nothing']):.1f}, median "
            f"{statistics.median(inproc['all_or_nothing']):.1f}; cost (best) "
            f"{100 * best:+.1f} % (goal <= {100 * GOAL_COST:g} %: "
            f"{'met' if inproc_ok else 'MISSED'}), cost (median) {100 * mid:+.1f} %")
        figures = {"inproc_rates": {k: [r3(v) for v in vs] for k, vs in inproc.items()},
                   "inproc_cost_best": r3(best), "inproc_cost_median": r3(mid),
                   "inproc_goal_met": inproc_ok}
    say(f"({bench.seconds():.0f} s)")
    bench.finish({"model": args.model, "records": args.records, "rounds": args.rounds,
                  "outcomes_records_per_s": r3(with_rate),
                  "all_or_nothing_records_per_s": r3(without),
                  "rates": {k: [r3(v) for v in vs] for k, vs in rates.items()},
                  "cost": r3(cost), "goal_cost": GOAL_COST, "goals_met": {"cost": ok},
                  **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
