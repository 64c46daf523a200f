"""``make demo``: the example pipeline as local batch transforms on the embedded stack.

Starts the embedded AWS stack, uploads a few synthetic clips, runs
``frame_features`` then ``scene_classifier`` (the order comes from
``depends_on``) as batch transforms through the real model server, prints
what each clip was classified as, runs everything again to show that
finished work is skipped, and stops the stack.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serving.aws import ClientFactory
from serving.local.stack import LocalStack
from serving.pipeline import Graph
from serving.settings import Settings

BUCKET = "smserve-demo"
INPUT_PREFIX = "videos/2026/11/"
RESULTS = "results/"


def run_graph(graph: Graph, models_root: Path, clients: ClientFactory, bucket: str,
              input_keys: Sequence[str], echo: Callable[[str], None],
              verbose: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Run every model of ``graph`` in dependency order, one local transform each.

    Returns:
        model name -> the container's answer per request record.
    """
    from serving.transform import predict

    answers: dict[str, list[dict[str, Any]]] = {}
    for name in graph.order():
        spec = graph[name]
        requests = graph.build_requests(name, bucket, input_keys, prefix=RESULTS)
        started = time.monotonic()
        result = predict(
            spec.folder, requests, clients, bucket, work_prefix="smserve-work/",
            job_name=None, model_name=name.replace("_", "-"),
            max_payload_mb=spec.max_payload_mb, batch_strategy=spec.batch_strategy,
            instance_count=spec.instance_count, model_environment=spec.environment,
            log=echo if verbose else None,
        )
        answers[name] = result
        counts: dict[str, int] = {}
        for answer in result:
            counts[answer.get("status", "?")] = counts.get(answer.get("status", "?"), 0) + 1
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        echo(f"  {name:<18} {len(requests)} records: {summary}  "
             f"({time.monotonic() - started:.1f} s, batch transform on {spec.instance_type} "
             f"-> local process)")
    return answers


def _table(clients: ClientFactory, bucket: str, answers: list[dict[str, Any]],
           keys: Sequence[str]) -> list[str]:
    s3 = clients.client("s3")
    rows = [f"  {'clip':<34} {'top class':<10} {'prob':>6}  output key"]
    for key, answer in zip(keys, answers, strict=True):
        body = s3.get_object(Bucket=bucket, Key=answer["key"])["Body"].read()
        result = json.loads(body)
        rows.append(f"  {key:<34} {result['top_class']:<10} {result['top_probability']:>6.3f}"
                    f"  s3://{bucket}/{answer['key']}")
    return rows


def run_demo(models_root: Path, clips: int = 6, verbose: bool = False,
             echo: Callable[[str], None] = print) -> int:
    """The whole demo; returns the exit status."""
    from local_test.clips import upload_clips
    from serving.modelspec import discover

    graph = Graph(discover(models_root))
    stack = LocalStack().start()
    try:
        echo(f"embedded AWS stack on {stack.endpoint_url} (S3, SQS, ECR, IAM, STS, Logs)")
        settings = Settings.from_environ({
            **os.environ, **stack.environ(),
            "SMSERVE_ALLOWED_BUCKETS": BUCKET, "SMSERVE_OUTPUT_PREFIXES": RESULTS,
            "SETUPTOOLS_USE_DISTUTILS": "stdlib",
        })
        clients = ClientFactory(settings)
        clients.client("s3").create_bucket(Bucket=BUCKET)
        keys = upload_clips(clients.client("s3"), BUCKET, INPUT_PREFIX, clips)
        echo(f"uploaded {len(keys)} clips (8 frames of 32x32 RGB) to s3://{BUCKET}/{INPUT_PREFIX}")
        echo(f"model graph (from models/*/model.toml depends_on): {' -> '.join(graph.order())}")
        echo("")
        echo("run 1: one batch transform per model, in dependency order")
        answers = run_graph(graph, models_root, clients, BUCKET, keys, echo, verbose)
        last = graph.order()[-1]
        echo("")
        for row in _table(clients, BUCKET, answers[last], keys):
            echo(row)
        echo("")
        echo("run 2: the same input again; every output exists, so every record is skipped")
        again = run_graph(graph, models_root, clients, BUCKET, keys, echo, verbose)
        redone = [a for answers_ in again.values() for a in answers_
                  if a.get("status") != "skipped"]
        echo("")
        echo(f"outputs: s3://{BUCKET}/{RESULTS}<model>/{INPUT_PREFIX}clip-NNN.<npy|json>; "
             "`smserve local up` keeps a stack running to look at them with the AWS CLI")
        if redone:
            echo(f"unexpected: {len(redone)} records were redone on the second run")
            return 1
        return 0
    finally:
        stack.stop()
        echo("stopped the embedded stack")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Path("models")))
