"""The ``smserve`` command.

Every subcommand maps our errors to exit codes here, in one place: a
:class:`~serving.errors.SmserveError` prints ``smserve: error: <message>``
and exits with the error's ``exit_code``. Signals are mapped here too:
SIGTERM (what Airflow, CI, ``timeout`` and systemd send) and SIGHUP (a closed
terminal) run the same clean-up as Ctrl-C (SIGINT) in every command, and
exit ``128 + signal`` (130, 143, 129). Whatever a command started (model
servers, jobs' containers) ends with it; a model server also ends on its own
when its starter is killed with SIGKILL. Heavy modules are imported inside the
command that needs them, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from serving import __version__, scratch
from serving.commands._args import count, port
from serving.errors import ConfigError, SmserveError

if TYPE_CHECKING:
    from serving.local.stack import LocalStack
    from serving.settings import Settings

Handler = Callable[[argparse.Namespace], int]


def _settings() -> Settings:
    """The process's settings, read once for the command."""
    from serving.settings import Settings

    return Settings.from_environ()


# --- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """Start multi-model-server for a model; with no folder, the image's /opt/ml/model."""
    from serving.server.serve import serve_forever

    settings = _settings()
    model = Path(args.model_dir) if args.model_dir else None
    return serve_forever(settings, model, args.port)


# --- package -------------------------------------------------------------------------------


def cmd_package(args: argparse.Namespace) -> int:
    """Write the model.tar.gz SageMaker expects."""
    from serving.package import build_archive

    out = build_archive(Path(args.model_folder), Path(args.output))
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    return 0


# --- transform -----------------------------------------------------------------------------


def cmd_transform(args: argparse.Namespace) -> int:
    """Run a batch transform locally against S3 (the embedded stack or AWS)."""
    from serving.aws import ClientFactory
    from serving.transform import TransformJobSpec, run_transform
    from serving.transform.dataplane import Progress

    settings = _settings()
    model = Path(args.model)
    model_name = model.name.removesuffix(".tar.gz").replace("_", "-")
    # A model folder's model.toml gives the defaults; flags win over it.
    toml: dict[str, object] = {}
    model_environment: dict[str, str] = {}
    if (model / "model.toml").is_file():
        from serving.modelspec import load_spec

        ms = load_spec(model)
        toml = {"content_type": ms.content_type, "accept": ms.accept,
                "split_type": ms.split_type, "batch_strategy": ms.batch_strategy,
                "max_payload_mb": ms.max_payload_mb,
                "max_concurrent": ms.max_concurrent_transforms,
                "assemble_with": ms.assemble_with, "instance_count": ms.instance_count}
        model_environment = ms.container_environment()
    fallback: dict[str, object] = {
        "content_type": "application/jsonlines", "accept": "application/jsonlines",
        "split_type": "Line", "batch_strategy": "MultiRecord", "max_payload_mb": 6,
        "max_concurrent": None, "assemble_with": "Line", "instance_count": 1}
    value = {key: (getattr(args, key) if getattr(args, key) is not None
                   else toml.get(key, default)) for key, default in fallback.items()}
    spec = TransformJobSpec.simple(
        args.job_name or f"local-{model_name}", model_name, args.input, args.output,
        content_type=str(value["content_type"]) or None, accept=str(value["accept"]) or None,
        split_type=str(value["split_type"]), batch_strategy=str(value["batch_strategy"]),
        max_payload_mb=int(str(value["max_payload_mb"])),
        max_concurrent=(int(str(value["max_concurrent"]))
                        if value["max_concurrent"] is not None else None),
        assemble_with=str(value["assemble_with"]),
        instance_count=int(str(value["instance_count"])), compression=args.compression,
    )

    def progress(p: Progress) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\r{p.records_done}/{p.records_total} records, "
                             f"{p.objects_done}/{p.objects_total} objects")
            sys.stderr.flush()

    log = print if args.verbose else None
    result = run_transform(spec, args.model, ClientFactory(settings), log=log,
                           progress=progress, model_environment=model_environment)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(result.summary())
    for obj in result.objects:
        print(f"  {obj.output}")
    return 0


# --- local stack ---------------------------------------------------------------------------


#: Seconds ``smserve local up`` keeps an idle model server warm.
WARM_IDLE_S = 300


def _print_banner(stack: LocalStack, state: Path | None, settings: Settings, allowed: str) -> None:
    """What ``local up`` serves, what it keeps, and the export lines (flushed)."""
    import shlex

    print(f"# embedded AWS stack (S3, SQS, ECR, IAM, STS, CloudWatch Logs) on {stack.endpoint_url}")
    if state is None:
        print("# state is NOT kept: stopping the stack loses every bucket, object, queue, model "
              "and job\n# (smserve local up --state DIR keeps them across restarts)")
    else:
        restored = stack.restored
        print(f"# state is kept in {state}: buckets, objects, queues, models and finished jobs "
              "are saved\n# when the stack stops (Ctrl-C, SIGTERM, SIGHUP; not on SIGKILL); "
              + ("restored " + ", ".join(f"{n} {what}" for what, n in restored.items())
                 if restored else "nothing to restore yet"))
    print("# and the SageMaker API (models and batch transform jobs that really run, as local "
          "processes;\n# job logs in CloudWatch Logs /aws/sagemaker/TransformJobs; "
          "smserve replay JOB re-sends a failed object)")
    if stack.registry_address:
        print(f"# ECR's images live in a real registry on {stack.registry_address} "
              "(smserve image push puts them there)")
    for notice in stack.notices:
        print(f"# {notice}")
    print(f"# buckets models may name: SMSERVE_ALLOWED_BUCKETS={allowed} ('*': any bucket on "
          "this stack;\n# set it before local up to narrow it); the stack's jobs get it too")
    print(f"# a job's model server stays warm {settings.warm_idle_s} s for the next job on the "
          "same model and environment\n# (SMSERVE_WARM_IDLE_S; 0 = never); the lines below "
          "list servers as they start, are reused and stop")
    print("# paste these into another shell; Ctrl-C stops the stack")
    print(f"export SMSERVE_ALLOWED_BUCKETS={shlex.quote(allowed)}")
    print(stack.exports(), flush=True)


def cmd_local_up(args: argparse.Namespace) -> int:
    """Run the embedded AWS stack in the foreground.

    Models get ``SMSERVE_ALLOWED_BUCKETS=*`` (every bucket on the stack is local)
    unless it is set already; the stack's jobs' containers get it, and the
    printed ``export`` line gives it to the shell that runs other commands.
    Model servers stay warm between jobs (``SMSERVE_WARM_IDLE_S``, default
    :data:`WARM_IDLE_S`); they are this process's children and stop with it.
    """
    import threading

    from serving.local.stack import LocalStack

    settings = _settings()
    extra = {}
    if not settings.allowed_buckets:
        # Every bucket on this stack is local (and made after it starts): allow them all.
        extra["SMSERVE_ALLOWED_BUCKETS"] = "*"
    if "SMSERVE_WARM_IDLE_S" not in settings.environ:
        extra["SMSERVE_WARM_IDLE_S"] = str(WARM_IDLE_S)
    settings = settings.with_environ(extra)
    allowed = ",".join(settings.allowed_buckets)
    state = Path(args.state).resolve() if args.state else None
    stack = LocalStack(port=args.port, settings=settings, echo=lambda line: _say(f"# {line}"),
                       state=state).start()
    # From here on a signal (even one that arrives while the banner prints) stops the stack.
    try:
        done = threading.Event()
        _print_banner(stack, state, settings, allowed)
        done.wait()  # until a stop signal (main() turns each into _Stopped)
    finally:
        stack.stop()
    return 0


# --- demo ----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """The example models as local batch transforms on the embedded stack."""
    from serving.demo import run_demo

    return run_demo(Path(args.models), clips=args.clips, verbose=args.verbose, api=args.api)


# --- parser --------------------------------------------------------------------------------


#: Modules under serving/commands/ that add subcommands: each has
#: ``register(subparsers) -> None`` and sets ``func`` on its parsers.
COMMAND_MODULES: tuple[str, ...] = ("pipeline", "check", "new", "image", "replay", "plan", "dev")


def _register_plugins(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"serving.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"serving.commands.{name}":
                raise
            continue
        module.register(sub)


def build_parser() -> argparse.ArgumentParser:
    """The ``smserve`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="smserve",
        description="Serve, package and batch-transform SageMaker models, locally or on AWS.",
    )
    parser.add_argument("--version", action="version", version=f"smserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("serve", help="start the model server (the image's entry point)",
                       description=cmd_serve.__doc__)
    p.add_argument("model_dir", nargs="?", help="model folder (default: /opt/ml/model, "
                   "or $SAGEMAKER_BASE_DIR/model)")
    p.add_argument("--port", type=port, default=None,
                   help="port to listen on (default: $SAGEMAKER_BIND_TO_PORT or 8080)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("package", help="write model.tar.gz for a model folder",
                       description=cmd_package.__doc__)
    p.add_argument("model_folder", help="models/NAME")
    p.add_argument("-o", "--output", default="model.tar.gz", help="archive path or folder")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("transform", help="run a batch transform locally",
                       description=cmd_transform.__doc__)
    p.add_argument("--model", required=True, help="models/NAME, an extracted model or a "
                   "model.tar.gz")
    p.add_argument("--input", required=True, help="s3://bucket/prefix of the input objects")
    p.add_argument("--output", required=True, help="s3://bucket/prefix for the .out objects")
    p.add_argument("--job-name", default=None)
    p.epilog = ("Batch settings not given as flags come from the model folder's model.toml, "
                "else: JSON lines in and out, Line split, MultiRecord, 6 MB, one instance.")
    p.add_argument("--content-type", default=None, help="ContentType sent to the container")
    p.add_argument("--accept", default=None, help="Accept sent to the container")
    p.add_argument("--split-type", default=None, choices=["None", "Line", "RecordIO",
                                                          "TFRecord"])
    p.add_argument("--batch-strategy", default=None, choices=["MultiRecord", "SingleRecord"])
    p.add_argument("--max-payload-mb", type=count, default=None,
                   help="MaxPayloadInMB (0 = no limit)")
    p.add_argument("--max-concurrent", type=count, default=None,
                   help="MaxConcurrentTransforms per container")
    p.add_argument("--assemble-with", default=None, choices=["None", "Line"])
    p.add_argument("--compression", default="None", choices=["None", "Gzip"])
    p.add_argument("--instance-count", type=count, default=None,
                   help="containers to run (InstanceCount)")
    p.add_argument("-v", "--verbose", action="store_true", help="print container logs")
    p.set_defaults(func=cmd_transform)

    p = sub.add_parser("local", help="the embedded AWS stack")
    local = p.add_subparsers(dest="local_command", metavar="ACTION", required=True)
    up = local.add_parser("up", help="run S3/SQS/ECR/IAM/STS/Logs and SageMaker on 127.0.0.1",
                          description=cmd_local_up.__doc__)
    up.add_argument("--port", type=port, default=None, help="port (default: a free one)")
    up.add_argument("--state", default=None, metavar="DIR",
                    help="keep buckets, objects, queues, models and finished jobs in DIR "
                         "across restarts (default: nothing is kept)")
    up.set_defaults(func=cmd_local_up)

    p = sub.add_parser("demo", help="run the example models on the embedded stack",
                       description=cmd_demo.__doc__)
    p.add_argument("--models", default="models", help="folder of model folders")
    p.add_argument("--clips", type=count, default=6, help="sample clips to make")
    p.add_argument("--api", action="store_true",
                   help="run the models through the embedded stack's SageMaker API "
                        "(CreateModel, CreateTransformJob) with boto3")
    p.add_argument("-v", "--verbose", action="store_true", help="print container logs")
    p.set_defaults(func=cmd_demo)
    _register_plugins(sub)
    return parser


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so the same clean-up runs."""

    def __init__(self, signo: int) -> None:
        super().__init__(signo)
        self.signo = signo


def _stop_on(signo: int, frame: object) -> None:
    # Once is enough: a second signal must not interrupt the clean-up under way.
    for other in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(other, signal.SIG_IGN)
    raise _Stopped(signo)


def _say(line: str, *, err: bool = False) -> None:
    """Print, unless the terminal is gone (SIGHUP) or stdout's disk is full."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr if err else sys.stdout, flush=True)


def _handle_stop_signals() -> None:
    """SIGTERM and SIGHUP unwind the command like SIGINT (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    for signo in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signo) is not signal.SIG_IGN:  # nohup keeps SIGHUP ignored
            signal.signal(signo, _stop_on)


def _thread_dumps() -> None:
    """``kill -USR1 <pid>`` prints every thread's stack to stderr (a command that seems stuck)."""
    import faulthandler

    if hasattr(signal, "SIGUSR1"):
        with contextlib.suppress(ValueError, OSError, AttributeError, RuntimeError):
            faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _handle_stop_signals()
    _thread_dumps()
    # What a command killed earlier (SIGKILL, OOM) could not remove: see serving/scratch.py.
    scratch.reap()
    try:
        code: int = args.func(args)
        return code
    except SmserveError as err:
        _say(f"smserve: error: {err.message}", err=True)
        return err.exit_code
    except _Stopped as stop:
        _say(f"smserve: stopped by {signal.Signals(stop.signo).name}; what it started has "
             "been stopped", err=True)
        return 128 + stop.signo
    except KeyboardInterrupt:
        _say("smserve: interrupted", err=True)
        return 130
    except Exception as err:
        if type(err).__module__.startswith("botocore"):
            # Credentials, endpoints, throttling: say what AWS said, not a traceback.
            print(f"smserve: error: AWS: {err}; check your credentials and AWS_ENDPOINT_URL "
                  "(smserve local up prints the variables for the embedded stack)",
                  file=sys.stderr)
            return 1
        if not isinstance(err, OSError):
            raise
        print(f"smserve: error: {err}", file=sys.stderr)
        return ConfigError.exit_code


if __name__ == "__main__":
    sys.exit(main())
