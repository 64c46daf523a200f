"""``smserve dev models/NAME``: rerun the model's check on every save (watch mode).

The same as ``smserve check models/NAME --watch``; :mod:`serving.check.watch`
does the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from serving.errors import ConfigError

DESCRIPTION = """\
Watch a model folder and, on every save, run its handlers in-process on the
sample request (as smserve check does), then, when they pass, the sample as a
local batch transform (as smserve check --transform does). Prints each result,
or the handler, file and line that failed. Ctrl-C stops it.
"""


def watch(folder: str, *, request: str | None, data_dir: str | None, transform: bool) -> int:
    """Run watch mode on ``folder`` until Ctrl-C; returns the exit status (0).

    Raises:
        ConfigError: ``folder`` is not a folder.
    """
    import signal

    from serving.check.watch import Watch
    from serving.settings import Settings

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # stop as Ctrl-C does: the model server goes too

    if not Path(folder).is_dir():
        raise ConfigError(f"{folder} is not a folder; pass a model folder, like models/NAME")
    with Watch(folder, request=request, data_dir=data_dir, transform=transform,
               settings=Settings.from_environ()) as watcher:
        try:
            watcher.run()
        except KeyboardInterrupt:
            print(f"\nstopped watching {folder} after {watcher.cycles} check(s)", flush=True)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Rerun the model's check on every save."""
    return watch(args.model_folder, request=args.request, data_dir=args.data,
                 transform=not args.no_transform)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``smserve dev``."""
    p = subparsers.add_parser("dev", help="rerun a model's check on every save (watch mode)",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_folder", help="models/NAME")
    p.add_argument("--request", default=None, metavar="FILE",
                   help="the request body to send (default: models/NAME/sample_request.json)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder uploaded as the request's S3 objects "
                        "(default: models/NAME/sample_data)")
    p.add_argument("--no-transform", action="store_true",
                   help="only the handlers in-process, not the local batch transform after them")
    p.set_defaults(func=cmd_dev)
