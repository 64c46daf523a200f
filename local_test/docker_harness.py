"""Run the built serving images the way batch transform runs them, against the embedded stack.

    python -m local_test.docker_harness [--models models] [--only NAME] [--clips N]
                                        [--tag T] [--flavor cpu|gpu] [-v]

Needs a Docker engine and the images (``smserve image build --flavor cpu``,
and ``--flavor gpu`` for GPU models). Starts the embedded AWS stack, uploads
synthetic clips, then runs each model (in ``depends_on`` order; ``--only``
stops after that one) as a local batch transform whose containers are the
real image: ``serve``, the model read-only at ``/opt/ml/model``, ``--gpus
all`` for ``image = "gpu"`` models where the engine has an NVIDIA runtime
(elsewhere they run on the CPU and say so; ``SMSERVE_DOCKER_GPUS``), and the
stack's endpoint and
credentials in the environment (see :mod:`serving.runners.docker`
for how a container reaches the stack's loopback port). ``--flavor cpu``
runs every model on the CPU image (a GPU model falls back to the CPU there).

Prints one line per model with what its records did, and exits 0 when every
record succeeded (or was skipped as already done), 1 otherwise, 2 when no
engine or image is there.

:func:`running_image` is the piece tests use: the image serving one model,
healthy, as a context manager.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUCKET = "smserve-docker-harness"
INPUT_PREFIX = "clips/"
RESULTS = "results/"


def harness_environ(stack: Any, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The containers' environment: the stack's endpoint and credentials, the harness bucket."""
    return {**dict(base or {}), **stack.environ(), "SMSERVE_ALLOWED_BUCKETS": BUCKET,
            "SMSERVE_OUTPUT_PREFIXES": RESULTS}


def runner_for(flavor: str, environ: Mapping[str, str], tag: str | None = None,
               log: Callable[[str], None] | None = None, **options: Any) -> Any:
    """A :class:`~serving.runners.docker.DockerRunner` for ``smserve-<flavor>:<tag>``."""
    from serving.runners.docker import DockerRunner

    return DockerRunner.for_flavor(flavor, environ, tag, log=log, **options)


@contextmanager
def running_image(model: Path, flavor: str, environ: Mapping[str, str], *,
                  tag: str | None = None, count: int = 1,
                  environment: Mapping[str, str] | None = None,
                  log: Callable[[str], None] | None = None) -> Iterator[list[Any]]:
    """The image serving ``model`` (a model folder, extracted model or model.tar.gz), healthy.

    Yields the containers (``.url`` to send requests to); stops and removes
    them, and the staged model, on exit.
    """
    from serving.transform.job import prepare_model

    workdir = Path(tempfile.mkdtemp(prefix="smserve-harness-"))
    containers: list[Any] = []
    try:
        model_dir = prepare_model(model, workdir)
        runner = runner_for(flavor, environ, tag, log=log)
        containers = runner.start(model_dir, dict(environment or {}), count=count)
        yield containers
    finally:
        for container in containers:
            container.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def run(models_root: Path, *, only: str | None = None, clips: int = 4, tag: str | None = None,
        flavor: str | None = None, verbose: bool = False,
        echo: Callable[[str], None] = print) -> int:
    """The whole harness; returns the exit status (see the module docstring)."""
    from local_test.clips import upload_clips
    from serving.aws import ClientFactory
    from serving.errors import SmserveError
    from serving.local.stack import LocalStack
    from serving.modelspec import discover
    from serving.pipeline import Graph
    from serving.settings import Settings
    from serving.transform import predict

    graph = Graph(discover(models_root))
    order = graph.order()
    if only is not None:
        if only not in order:
            echo(f"docker_harness: no model {only!r} in {models_root} "
                 f"(models: {', '.join(order)})")
            return 2
        order = order[: order.index(only) + 1]
    stack = LocalStack().start()
    try:
        environ = harness_environ(stack, Settings.from_environ().environ)
        clients = ClientFactory(Settings.from_environ(environ))
        clients.client("s3").create_bucket(Bucket=BUCKET)
        keys = upload_clips(clients.client("s3"), BUCKET, INPUT_PREFIX, clips)
        echo(f"embedded stack on {stack.endpoint_url}; {len(keys)} clips in "
             f"s3://{BUCKET}/{INPUT_PREFIX}")
        failed = False
        for name in order:
            spec = graph[name]
            use = flavor or spec.image
            runner = runner_for(use, environ, tag, log=echo if verbose else None)
            started = time.monotonic()
            answers = predict(spec.folder, graph.build_requests(name, BUCKET, keys, RESULTS),
                              clients, BUCKET, runner=runner, model_name=name.replace("_", "-"),
                              model_environment=spec.environment,
                              max_payload_mb=spec.max_payload_mb,
                              batch_strategy=spec.batch_strategy,
                              log=echo if verbose else None)
            counts: dict[str, int] = {}
            for answer in answers:
                status = str(answer.get("status", "?")) if isinstance(answer, dict) else "?"
                counts[status] = counts.get(status, 0) + 1
            failed = failed or any(s not in ("written", "skipped") for s in counts)
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            echo(f"  {name:<18} image {runner.image}: {summary} "
                 f"({time.monotonic() - started:.1f} s)")
        return 1 if failed else 0
    except SmserveError as err:
        echo(f"docker_harness: {err.message}")
        return 2 if type(err).__name__ in ("ImageError", "ServerStartError") else 1
    finally:
        stack.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("models"),
                        help="folder of model folders (models)")
    parser.add_argument("--only", default=None, help="stop after this model")
    parser.add_argument("--clips", type=int, default=4, help="synthetic clips to upload (4)")
    parser.add_argument("--tag", default=None, help="image tag (default: the smserve version)")
    parser.add_argument("--flavor", choices=("cpu", "gpu"), default=None,
                        help="run every model on this image (default: each model's own)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print container logs")
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    os.environ.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    return run(args.models, only=args.only, clips=args.clips, tag=args.tag,
               flavor=args.flavor, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
