"""``make demo``: the example pipeline as local batch transforms on the embedded stack.

Starts the embedded AWS stack, uploads a few synthetic clips and runs every
model of ``models/`` through :func:`serving.localpipeline.run_pipeline`, as
``smserve pipeline run`` does: one batch transform per model through the
real model server, in the order ``depends_on`` gives, independent models at
the same time. It prints the plan, the live view, what each clip was
classified as, then runs everything again to show that finished work is
skipped (no transform job starts), and stops the stack.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from serving.aws import ClientFactory
from serving.local.stack import LocalStack
from serving.localpipeline import PipelineReport, load_graph, run_pipeline
from serving.pipeline import Graph, output_key
from serving.settings import Settings

BUCKET = "smserve-demo"
INPUT_PREFIX = "videos/2026/11/"
RESULTS = "results/"
#: The model whose answers the table shows.
CLASSIFIER = "scene_classifier"


def summary_lines(report: PipelineReport, graph: Graph,
                  runs_on: str = "local process") -> list[str]:
    """One line per model: records, what happened to them, how long it took, what ran it.

    ``runs_on`` names the runner of a model whose report does not.
    """
    lines = []
    for m in report.models:
        counts = [(m.written, "written"), (m.skipped, "skipped"), (m.failed, "failed")]
        what = ", ".join(f"{n} {status}" for n, status in counts if n) or "nothing to do"
        if m.seconds is not None:
            how = (f"{m.seconds:.1f} s, batch transform on {graph[m.model].instance_type} "
                   f"-> {m.runner or runs_on}")
        else:
            how = m.reason or m.status
        lines.append(f"  {m.model:<18} {m.records} records: {what}  ({how})")
    return lines


def _table(clients: ClientFactory, graph: Graph, keys: Sequence[str]) -> list[str]:
    s3 = clients.client("s3")
    suffix = graph[CLASSIFIER].output_suffix
    rows = [f"  {'clip':<34} {'top class':<10} {'prob':>6}  output key"]
    for key in keys:
        out = output_key(CLASSIFIER, key, RESULTS, suffix)
        result = json.loads(s3.get_object(Bucket=BUCKET, Key=out)["Body"].read())
        rows.append(f"  {key:<34} {result['top_class']:<10} {result['top_probability']:>6.3f}"
                    f"  s3://{BUCKET}/{out}")
    return rows


def run_demo(models_root: Path, clips: int = 6, verbose: bool = False,
             echo: Callable[[str], None] = print, api: bool = False) -> int:
    """The whole demo; returns the exit status.

    With ``api``, each model runs through the embedded stack's SageMaker API
    (``CreateModel``, ``CreateTransformJob``) with plain boto3, as on AWS.
    """
    from local_test.clips import upload_clips

    graph = load_graph(models_root)
    live = echo is print and sys.stdout.isatty()
    stack = LocalStack().start()
    try:
        echo(f"embedded AWS stack on {stack.endpoint_url} (S3, SQS, ECR, IAM, STS, Logs)")
        for notice in stack.notices:
            echo(notice)
        settings = Settings.from_environ().with_environ({
            **stack.environ(),
            "SMSERVE_ALLOWED_BUCKETS": BUCKET, "SMSERVE_OUTPUT_PREFIXES": RESULTS,
            "SETUPTOOLS_USE_DISTUTILS": "stdlib",
        })
        clients = ClientFactory(settings)
        clients.client("s3").create_bucket(Bucket=BUCKET)
        keys = upload_clips(clients.client("s3"), BUCKET, INPUT_PREFIX, clips)
        echo(f"uploaded {len(keys)} clips (8 frames of 32x32 RGB) to s3://{BUCKET}/{INPUT_PREFIX}")
        echo(f"model graph (from models/*/model.toml depends_on): {' -> '.join(graph.order())}")
        echo("")
        uri = f"s3://{BUCKET}/{INPUT_PREFIX}"
        jobs = None
        if api:
            from serving.local.stackimages import stack_images
            from serving.sagemaker.jobs import SageMakerJobs

            flavors = sorted({graph[name].image for name in graph.order()})
            images = stack_images(clients, flavors, registry=stack.registry_address is not None,
                                  push_built=settings.container_runner == "docker", echo=echo)
            jobs = SageMakerJobs(clients, poll=0.25, images=images)
            echo("through the SageMaker API: CreateModel + CreateTransformJob on "
                 f"{stack.endpoint_url}, as boto3 does on AWS")
        echo(f"run 1: smserve pipeline run --input {uri} (one batch transform per model)")
        first = run_pipeline(graph, clients, uri, echo=echo, live=live, verbose=verbose,
                             output_prefix=RESULTS, jobs=jobs)
        echo("")
        runs_on = "CreateTransformJob on the stack" if api else "local process"
        for line in summary_lines(first, graph, runs_on):
            echo(line)
        if not first.ok:
            echo(f"unexpected: {', '.join(first.failed_models)} failed")
            return first.exit_code
        if CLASSIFIER in graph:
            echo("")
            for row in _table(clients, graph, keys):
                echo(row)
        echo("")
        echo("run 2: the same input again; every output exists, so every model is skipped "
             "and no transform job starts")
        again = run_pipeline(graph, clients, uri, echo=echo, live=live, verbose=verbose,
                             output_prefix=RESULTS, show_plan=False, jobs=jobs)
        echo("")
        for line in summary_lines(again, graph, runs_on):
            echo(line)
        redone = [m.model for m in again.models if m.status != "skipped" or m.job]
        echo("")
        echo(f"outputs: s3://{BUCKET}/{RESULTS}<model>/{INPUT_PREFIX}clip-NNN.<npy|json>; "
             "`smserve local up` keeps a stack running to look at them with the AWS CLI")
        if redone:
            echo(f"unexpected: {', '.join(redone)} ran again on the second run")
            return 1
        return 0
    finally:
        stack.stop()
        echo("stopped the embedded stack")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Path("models")))
