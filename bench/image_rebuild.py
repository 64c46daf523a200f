"""Serving image rebuild after a change to ``serving/`` only, as a share of a cold build.

Measured in one run, through :func:`serving.images.build` (the Docker SDK's
classic builder, as ``smserve image build`` does), on a copy of the build
context in a temporary folder (the repository is not touched):

1. **cold**: ``--flavor`` (cpu) built with no layer cache (every step runs:
   the Debian packages and the Python wheels are downloaded again);
2. **rebuild**: one line appended to ``serving/__init__.py`` in the copy,
   then built again with the cache, as a developer's next build is.

``share`` = rebuild / cold seconds (goal <= 0.2). The Dockerfiles install
every dependency before ``serving/`` is copied, so the rebuild runs only the
wheel stage and the small layers after it. Base images come from
``SMSERVE_PYTHON_IMAGE``/``SMSERVE_BUILD_IMAGE``/``SMSERVE_CUDA_IMAGE`` as for
the CLI (``../shared/tools/docker-engine`` prints stand-ins). The images it
builds get the tag ``bench-rebuild-<pid>`` and are removed at the end.

    .venv/bin/python bench/image_rebuild.py [--flavor cpu|gpu]

The last line of stdout is one JSON object with the figures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import _common
from _common import ROOT, Run, r3, say

#: What the build context needs (the rest is left out by .dockerignore anyway).
CONTEXT = (".dockerignore", "pyproject.toml", "README.md", "serving", "containers")


class Lines:
    """A Progress that keeps the last lines (shown when a build fails) and the layers made.

    ``made``: the ids of the images the build's steps created (not a base named by
    ``FROM``, not a layer taken from the cache), for removal at the end.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.made: list[str] = []
        self._step = ""
        self._cached = False
        self._result = ""

    def line(self, text: str) -> None:
        self.lines = [*self.lines[-40:], text]
        if text.startswith("Step ") or text.startswith("Successfully built"):
            self._close_step()
            self._step = text.partition(" : ")[2].upper()
        elif text.strip() == "---> Using cache":
            self._cached = True
        elif text.startswith(" ---> ") and " " not in text.strip()[5:].strip():
            self._result = text.strip()[5:].strip()

    def _close_step(self) -> None:
        if self._result and not self._cached and not self._step.startswith("FROM "):
            self.made.append(self._result)
        self._cached, self._result = False, ""

    def bar(self, done: int, total: int, text: str) -> None:
        """Builds have no bar."""


def copy_context(dest: Path) -> Path:
    """The build context's files, copied to ``dest`` (caches and bytecode left out)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=ignore)
        else:
            shutil.copy2(source, dest / name)
    return dest


def main() -> None:
    parser = _common.start_script(__doc__)
    parser.add_argument("--flavor", choices=("cpu", "gpu"), default="cpu")
    args = parser.parse_args()

    from serving import _image_bases, images
    from serving.settings import Settings

    run = Run("image_rebuild")
    settings = Settings.from_environ()
    client = images.connect(settings.environ, timeout=3600)
    tag = f"bench-rebuild-{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="smserve-bench-rebuild-"))
    built: list[str] = []
    made: list[str] = []
    try:
        context = copy_context(work)
        dockerfile = images.dockerfile_for(args.flavor, context)
        build_args = _image_bases.base_build_args(dockerfile, settings.base_images)
        say(f"flavor {args.flavor}, bases "
            + ", ".join(f"{a}={i}" for a, i in _image_bases.resolve(dockerfile,
                                                                   build_args).items()))

        def timed(no_cache: bool) -> float:
            progress = Lines()
            started = time.perf_counter()
            try:
                built.append(images.build(args.flavor, tag, context, client, progress,
                                          build_args=build_args, no_cache=no_cache,
                                          pull_bases=False))
            except Exception:
                say("\n".join(progress.lines))
                raise
            finally:
                made.extend(progress.made)
            return time.perf_counter() - started

        cold = timed(no_cache=True)
        say(f"cold build (no cache):           {cold:7.1f} s")
        init = context / "serving" / "__init__.py"
        init.write_text(init.read_text() + f"# bench change {time.time()}\n")
        rebuild = timed(no_cache=False)
        say(f"rebuild after a serving/ change: {rebuild:7.1f} s")
        share = rebuild / cold
        say(f"share = rebuild / cold = {share:.3f}   (goal <= 0.2: "
            f"{'met' if share <= 0.2 else 'missed'})")
        run.finish({"flavor": args.flavor, "cold_s": r3(cold), "rebuild_s": r3(rebuild),
                    "share": r3(share), "goal": 0.2})
    finally:
        # only what this run made: its tag, its images, and the layers its steps created
        for image in [images.local_image(args.flavor, tag), *reversed(built), *reversed(made)]:
            with contextlib.suppress(Exception):
                client.api.remove_image(image, noprune=True)
        client.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
