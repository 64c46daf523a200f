"""``smserve pipeline run``: the whole model graph as local batch transforms.

Reads :class:`~serving.settings.Settings` from the environment, so the same
command runs against the embedded stack (``smserve local up`` prints the
variables) or against AWS. Errors are mapped to exit codes by
:mod:`serving.cli`; a run where a model failed exits 4.
"""

from __future__ import annotations

import argparse
import sys

from serving.commands._args import count, positive
from serving.settings import Settings

DESCRIPTION = """\
Run every model of models/ (or those --models names) on the objects under
--input: one local batch transform per model through the real model server,
each as soon as the models it depends on (depends_on in model.toml) have
finished, independent models at the same time within the GPU-memory and
CPU-worker budgets. Records whose output exists are skipped unless
--overwrite, so running the command again redoes only what is missing.
Exit status: 0 when every model succeeded, 4 when one failed, 2 for a bad
graph or flag.
"""

EPILOG = """\
examples:
  smserve local up        # in another shell; paste the exports it prints here
  smserve pipeline run --input s3://my-bucket/videos/2026/11/ --dry-run
  smserve pipeline run --input s3://my-bucket/videos/2026/11/ --models scene_classifier
"""


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("name at least one model, like frame_features,b")
    return names


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``smserve pipeline run`` to the ``smserve`` parser."""
    p = sub.add_parser("pipeline", help="run the model graph locally, one transform per model",
                       description="The model graph of models/*/model.toml, run locally.")
    actions = p.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run every model on the objects under --input",
                             description=DESCRIPTION, epilog=EPILOG,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--input", required=True, metavar="s3://BUCKET/PREFIX/",
                     help="the input objects: every object under this prefix (recursive)")
    run.add_argument("--models", type=_names, default=None, metavar="A,B",
                     help="run only these models; their other dependencies' outputs must "
                     "exist already (default: every model)")
    run.add_argument("--overwrite", action="store_true",
                     help="redo records whose output exists")
    run.add_argument("--gpu-memory-mb", type=count, default=None, metavar="N",
                     help="GPU memory the models may declare at once (default: what GPU 0 "
                     "reports free through cupy; 0 without a GPU: GPU models then run on "
                     "CPU, one at a time)")
    run.add_argument("--cpu-workers", type=positive, default=None, metavar="N",
                     help="CPU workers the models may ask for at once (default: the "
                     "machine's CPU count)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the graph, the order, the parallel groups and the request "
                     "counts; run nothing, write nothing")
    run.add_argument("--models-dir", default="models", metavar="DIR",
                     help="the folder of model folders (default: models)")
    run.add_argument("--output-prefix", default="results/", metavar="PREFIX",
                     help="where outputs go: PREFIX<model>/<input key> (default: results/)")
    run.add_argument("--api", action="store_true",
                     help="run each model through the SageMaker API (CreateModel, "
                          "CreateTransformJob) at AWS_ENDPOINT_URL: `smserve local up`'s, "
                          "or AWS's; models run on the ECR images `smserve image push` "
                          "recorded (or SMSERVE_IMAGE_CPU / SMSERVE_IMAGE_GPU)")
    run.add_argument("--role-arn", default=None, metavar="ARN",
                     help="with --api: ExecutionRoleArn for CreateModel (default: a local "
                          "placeholder the embedded stack accepts)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="print the jobs' and containers' log lines")
    run.set_defaults(func=cmd_run)


def run_settings(bucket: str, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings for a run on ``bucket``: the environment's, with defaults the run needs.

    The model containers only touch buckets on ``SMSERVE_ALLOWED_BUCKETS``;
    when it is unset, the run allows the input bucket (and says so).

    Args:
        bucket: the input bucket.
        base: the settings to start from (default: read from the environment).

    Returns:
        ``(settings, notes to print with the plan)``.
    """
    settings = base if base is not None else Settings.from_environ()
    env = dict(settings.environ)
    notes: list[str] = []
    if not settings.allowed_buckets:
        env["SMSERVE_ALLOWED_BUCKETS"] = bucket
        notes.append(f"  SMSERVE_ALLOWED_BUCKETS is not set: the model containers may use "
                     f"s3://{bucket} for this run")
    # chainer imports numpy.distutils, which needs the stdlib distutils on Python 3.11.
    env.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    return Settings.from_environ(env), notes


def cmd_run(args: argparse.Namespace) -> int:
    """Run the model graph on the objects under ``--input``."""
    from serving.aws import ClientFactory
    from serving.localpipeline import load_graph, report_message, run_pipeline
    from serving.transform.spec import parse_s3_uri

    bucket, _ = parse_s3_uri(args.input, "--input")
    graph = load_graph(args.models_dir)
    settings, notes = run_settings(bucket)
    jobs = None
    if args.api:
        from serving import imagerecord
        from serving.sagemaker.jobs import LOCAL_ROLE, SageMakerJobs

        wanted = sorted({graph[name].image for name in (args.models or graph.order())
                         if name in graph})
        jobs = SageMakerJobs(ClientFactory(settings), role_arn=args.role_arn or LOCAL_ROLE,
                             images=imagerecord.require(settings, wanted))
    report = run_pipeline(
        graph, ClientFactory(settings), args.input, models=args.models,
        overwrite=args.overwrite, gpu_memory_mb=args.gpu_memory_mb,
        cpu_count=args.cpu_workers, dry_run=args.dry_run, live=sys.stdout.isatty(),
        verbose=args.verbose, output_prefix=args.output_prefix, notes=notes, jobs=jobs,
        echo=lambda line: print(line, flush=True))
    if not args.dry_run:
        print()
        print(report_message(report))
    return report.exit_code
