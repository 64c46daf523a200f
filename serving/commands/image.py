"""``smserve image build`` and ``smserve image push``: the serving images, built and in ECR.

    smserve image build --flavor cpu|gpu [--tag T] [--build-arg K=V] [--context DIR] [--no-pull]
                        [--dry-run]
    smserve image push  --flavor cpu|gpu --repository NAME [--create-repository] [--region R]
                        [--tag T] [--dry-run]

Progress goes to stderr (a bar that redraws in place on a terminal); the
result goes to stdout: the built image's name, or the pushed image's digest,
its URI by digest, and its URI as the last line, ready for ``CreateModel``.
A push also records the URI and digest in the images file
(:mod:`serving.imagerecord`), where ``smserve pipeline run --api`` and the
Airflow set-up read them. ``--dry-run`` prints every step
and touches neither the Docker engine nor AWS.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO


class ConsoleProgress:
    """Progress on a stream: lines as they come, a bar redrawn in place on a terminal.

    Args:
        stream: where to write (stderr by default).
        tty: redraw the bar in place (default: whether ``stream`` is a terminal);
            otherwise a line is written each time the bar's text changes.
    """

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar_open = False
        self._last_text = ""

    def line(self, text: str) -> None:
        """Write ``text`` on a line of its own (ending a bar in progress)."""
        self._end_bar()
        self.stream.write(text + "\n")
        self.stream.flush()

    def bar(self, done: int, total: int, text: str) -> None:
        """Show ``done`` of ``total`` bytes."""
        if self.tty:
            width = 30
            filled = int(width * done / total) if total else 0
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{_mb(done)}/{_mb(total)} MB  {text}\x1b[K")
            self.stream.flush()
            self._bar_open = True
        elif text != self._last_text:
            self._last_text = text
            self.line(f"{text} ({_mb(done)}/{_mb(total)} MB)")

    def close(self) -> None:
        """End a bar in progress."""
        self._end_bar()

    def _end_bar(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False


def _mb(count: int) -> str:
    return f"{count / 1e6:,.1f}"


def _build_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value


def _print_plan(steps: list[str]) -> None:
    print("dry run: nothing is built, pushed or created; these steps would run:")
    for number, step in enumerate(steps, 1):
        print(f"  {number}. {step}")


def cmd_build(args: argparse.Namespace) -> int:
    """Build a serving image (cpu or gpu) through the Docker engine, showing its output."""
    from serving import images
    from serving._image_bases import base_build_args
    from serving.settings import Settings

    settings = Settings.from_environ()
    environ = settings.environ
    tag = args.tag or images.default_tag()
    context = Path(args.context)
    images.check_flavor(args.flavor)
    images.check_tag(tag)
    dockerfile = images.dockerfile_for(args.flavor, context)
    # the bases from SMSERVE_PYTHON_IMAGE/..., under any --build-arg
    build_args = base_build_args(dockerfile, settings.base_images, dict(args.build_arg or []))
    if args.dry_run:
        _print_plan(images.build_plan(args.flavor, tag, context, environ, build_args))
        return 0
    client = images.connect(environ, timeout=args.timeout)
    progress = ConsoleProgress()
    try:
        images.build(args.flavor, tag, context, client, progress, build_args=build_args,
                     pull_bases=not args.no_pull, no_cache=args.no_cache)
    finally:
        progress.close()
        client.close()
    print(images.local_image(args.flavor, tag))
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Push a built image to ECR, print its digest and URI, and record them."""
    from serving import imagerecord, images
    from serving.aws import ClientFactory
    from serving.settings import Settings

    settings = Settings.from_environ()
    tag = args.tag or images.default_tag()
    region = args.region or settings.region
    if args.dry_run:
        _print_plan(images.push_plan(args.flavor, args.repository, region, tag,
                                     settings.environ))
        return 0
    images.check_flavor(args.flavor)
    images.check_repository(args.repository)
    images.check_tag(tag)
    client = images.connect(settings.environ, timeout=args.timeout)
    progress = ConsoleProgress()
    try:
        result = images.push(args.flavor, args.repository, region, tag,
                             ClientFactory(settings.with_changes(region=region)), client,
                             progress, create_repository=args.create_repository)
    finally:
        progress.close()
        client.close()
    entry = imagerecord.record(Path(settings.images_file), args.flavor, result.uri,
                               result.digest, settings.endpoint_url)
    print(f"# recorded in {settings.images_file} for the {args.flavor} models "
          "(smserve pipeline run --api, the Airflow set-up)", file=sys.stderr)
    if result.digest:
        print(f"digest {result.digest}")
        print(f"by digest {entry['pinned']}")
    print(result.uri)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``smserve image build`` and ``smserve image push``."""
    p = subparsers.add_parser("image", help="build the serving images and push them to ECR",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    actions = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    b = actions.add_parser("build", help="build smserve-cpu or smserve-gpu",
                           description=cmd_build.__doc__)
    b.add_argument("--flavor", required=True, help="cpu or gpu (containers/FLAVOR/Dockerfile)")
    b.add_argument("--tag", default=None, help="the image's tag (default: the smserve version)")
    b.add_argument("--build-arg", type=_build_arg, action="append", metavar="KEY=VALUE",
                   help="a Dockerfile build argument, like EXTRA_REQUIREMENTS='scipy==1.11.4' "
                        "(a model's extra packages, baked into the image); repeatable")
    b.add_argument("--context", default=os.curdir,
                   help="the build context: the repository root (default: .)")
    b.add_argument("--timeout", type=int, default=3600, help="seconds per engine call (3600)")
    b.add_argument("--no-pull", action="store_true",
                   help="never pull base images: a missing one is an error naming it "
                        "(bases: $SMSERVE_PYTHON_IMAGE, $SMSERVE_BUILD_IMAGE, "
                        "$SMSERVE_CUDA_IMAGE or --build-arg PYTHON_IMAGE=...)")
    b.add_argument("--no-cache", action="store_true",
                   help="build every step again, without the engine's layer cache")
    b.add_argument("--dry-run", action="store_true", help="print the steps, do nothing")
    b.set_defaults(func=cmd_build)

    u = actions.add_parser("push", help="push a built image to ECR and print its URI",
                           description=cmd_push.__doc__)
    u.add_argument("--flavor", required=True, help="cpu or gpu: pushes smserve-FLAVOR:TAG")
    u.add_argument("--repository", required=True,
                   help="the ECR repository, like smserve-gpu or team/smserve-gpu")
    u.add_argument("--region", default=None, help="ECR region (default: $AWS_REGION)")
    u.add_argument("--tag", default=None, help="the tag to push (default: the smserve version)")
    u.add_argument("--create-repository", action="store_true",
                   help="create the ECR repository if it is missing (scan on push, immutable "
                        "tags); without it a missing repository is an error")
    u.add_argument("--timeout", type=int, default=3600, help="seconds per engine call (3600)")
    u.add_argument("--dry-run", action="store_true", help="print the steps, do nothing")
    u.set_defaults(func=cmd_push)

