"""``smserve check models/NAME``: the model's handlers on its sample request, in seconds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Run model_fn, input_fn, predict_fn and output_fn on the model's sample request
(models/NAME/sample_request.json), with S3 served by an embedded stack that
holds the files under models/NAME/sample_data/ (sample_data/<key> becomes
s3://<bucket>/<key>). Prints each handler's time, memory and the types and
shapes going in and out, decodes the answer as model.toml's accept type, and
lists the objects written. On failure it names the handler, shows the model's
own traceback and what SageMaker would have answered, and exits non-zero.
"""


def cmd_check(args: argparse.Namespace) -> int:
    """Check a model folder; returns 0 when it answered its sample request."""
    from serving.check import check
    from serving.settings import Settings

    if args.watch:
        from serving.commands.dev import watch

        if args.serve:
            from serving.errors import ConfigError

            raise ConfigError("--watch runs the handlers in-process and then a local batch "
                              "transform; drop --serve (or --watch)")
        return watch(args.model_folder, request=args.request, data_dir=args.data,
                     transform=True)
    mode = "serve" if args.serve else "transform" if args.transform else "handlers"
    log = (lambda line: print(line, file=sys.stderr)) if args.verbose else None
    if mode != "handlers":
        print(f"starting the model server for {args.model_folder} ...", file=sys.stderr)
    report = check(Path(args.model_folder), request=args.request, data_dir=args.data,
                   mode=mode, settings=Settings.from_environ(), log=log)
    print(report.render(), flush=True)
    if (report.failure is not None and report.log and not report.failure.trace
            and not args.verbose and mode != "handlers"):
        print("\n(the model server's last log lines)", file=sys.stderr)
        print("\n".join(report.log[-15:]), file=sys.stderr)
    return report.exit_code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``smserve check``."""
    p = subparsers.add_parser("check", help="run a model's handlers on its sample request",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_folder", help="models/NAME")
    p.add_argument("--request", default=None, metavar="FILE",
                   help="the request body to send (default: models/NAME/sample_request.json); "
                        "a failed record from a job, to replay it")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder uploaded as the request's S3 objects "
                        "(default: models/NAME/sample_data)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--serve", action="store_true",
                     help="send the request through the real model server (multi-model-server)")
    how.add_argument("--transform", action="store_true",
                     help="run the request as a local batch transform (as smserve transform)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print the model server's log (--serve, --transform)")
    p.add_argument("--watch", action="store_true",
                   help="rerun on every save: the handlers, then a local batch transform "
                        "(as smserve dev)")
    p.set_defaults(func=cmd_check)
