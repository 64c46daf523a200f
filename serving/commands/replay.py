"""``smserve replay JOB_NAME``: re-send a failed object's records to a fresh model."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from serving import scratch
from serving.commands._args import whole_number

if TYPE_CHECKING:
    from serving.local.sagemaker.replay import JobInfo
    from serving.transform.batching import Batch

DESCRIPTION = """\
Re-send the records of a failed object of a batch transform job to a fresh
copy of the job's model, in the foreground, and show what each request got.

The job's request and model come from the SageMaker API (AWS_ENDPOINT_URL:
the embedded stack of `smserve local up`, or AWS); its failed objects from
the stack's record of the job (elsewhere: the inputs that have no .out).
The model.tar.gz is fetched from ModelDataUrl and run with the container's
environment (the model's Environment, the job's on top, SAGEMAKER_BATCH=true).
Records are split and batched as the job did; --record N sends record N alone.

By default (--in-process) the handlers run in this process, so a breakpoint()
in predict_fn stops with the exact input that failed and a traceback shows the
model's own frames: the mode for debugging. --server runs the real model server
(multi-model-server, as the container does) with its log on this terminal.
Exits 0 when every request succeeded, 1 when one failed.
"""


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay a failed object of a transform job; returns 0 when every request succeeded."""
    from serving.aws import ClientFactory
    from serving.errors import TransformError
    from serving.local.sagemaker.artifacts import fetch_model
    from serving.local.sagemaker.replay import load_job, plan
    from serving.settings import Settings
    from serving.transform.params import container_environment

    settings = Settings.from_environ()
    clients = ClientFactory(settings)
    info = load_job(clients, args.job_name)
    obj = info.pick(args.object)
    spec = info.spec
    print(f"job {spec.name} ({info.status}), model {spec.model_name}: replaying "
          f"s3://{obj.bucket}/{obj.key}" + (f" record {args.record}" if args.record is not None
                                           else ""))
    if obj.error:
        print(f"  the job said: {obj.error}")
    if spec.has_data_processing():
        print("  note: the job's DataProcessing InputFilter is not applied; the records go "
              "as they are in the object")
    try:
        batches = plan(info, clients.client("s3"), obj, args.record)
    except TransformError as err:
        print(f"  {err.message}")
        return 1
    environment = container_environment(spec, info.container.get("Environment") or {})
    program = environment.get("SAGEMAKER_PROGRAM") or settings.program
    workdir = scratch.make("smserve-replay-")
    try:
        model_dir = fetch_model(clients.client("s3"), info.container, workdir, program)
        return _send_all(args, info, model_dir, environment, program, batches)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _send_all(args: argparse.Namespace, info: JobInfo, model_dir: Path,
              environment: dict[str, str], program: str, batches: list[Batch]) -> int:
    from serving.local.sagemaker.replay import (
        InProcessSender,
        ServerSender,
        container_environ,
        shown,
    )
    from serving.settings import Settings

    spec = info.spec
    failures = 0
    with container_environ(environment if not args.server else {}):
        if args.server:
            print(f"starting the model server (smserve serve) for {spec.model_name} ...")
            sender: InProcessSender | ServerSender = ServerSender(
                model_dir, environment, spec.content_type, spec.accept, spec.timeout_s, print)
        else:
            default_accept = Settings.from_environ().default_accept
            print(f"loading the model in this process (model_fn from code/{program}) ...")
            sender = InProcessSender(model_dir, program, spec.content_type, spec.accept,
                                     default_accept)
        try:
            for number, batch in enumerate(batches, start=1):
                answer = sender.send(batch.body)
                head = (f"request {number} of {len(batches)} ({batch.records}, "
                        f"{len(batch.body)} bytes)")
                if 200 <= answer.status < 300:
                    print(f"{head}: {answer.status}, {len(answer.body)} bytes: "
                          f"{shown(answer.body)}")
                    continue
                failures += 1
                print(f"{head}: {answer.status or 'no answer'}: {shown(answer.body)}")
                if answer.trace:
                    print(answer.trace.rstrip(), file=sys.stderr)
        finally:
            sender.close()
    print(f"{len(batches) - failures} of {len(batches)} request(s) succeeded")
    return 1 if failures else 0


def _record(text: str) -> int:
    value = whole_number(text, "a record index")
    if value < 0:
        raise argparse.ArgumentTypeError("a record index is 0 or more")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``smserve replay``."""
    p = subparsers.add_parser("replay", help="re-send a failed transform object's records to a "
                              "fresh model, in the foreground", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job_name", metavar="JOB_NAME", help="the transform job")
    p.add_argument("--object", default=None, metavar="KEY",
                   help="the input object to replay: a key in the job's input bucket or an "
                        "s3:// URI (default: the job's first failed object)")
    p.add_argument("--record", type=_record, default=None, metavar="N",
                   help="send only record N of the object (0-based, as the job log counts)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--in-process", dest="server", action="store_false",
                     help="run the handlers in this process (the default: breakpoints in "
                          "predict_fn work, tracebacks show the model's frames)")
    how.add_argument("--server", dest="server", action="store_true",
                     help="run the real model server (multi-model-server) in the foreground, "
                          "its log on this terminal")
    p.set_defaults(func=cmd_replay, server=False)
