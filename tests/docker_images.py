"""The serving images for tests that need them: built once per session, or a skip that says why.

A test that needs a real image calls :func:`serving_image`. It skips (with
the reason) where no Docker engine answers, or where a base image is not on
the engine: the tests never pull gigabytes of bases unasked.
``SMSERVE_PULL_BASE_IMAGES=1`` asks them to pull; ``SMSERVE_PYTHON_IMAGE``,
``SMSERVE_BUILD_IMAGE`` and ``SMSERVE_CUDA_IMAGE`` build on other bases (on
this project's machines ``../shared/tools/docker-engine`` makes stand-ins,
and ``.ci/run`` exports them). The images get the product's tags
(``smserve-<flavor>:<version>``) and are left in place afterwards: the layer
cache makes the next build take seconds, and nothing the tests did not build
is ever removed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from serving import _image_bases, images
from serving.errors import ImageError
from serving.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
#: Set to 1 to let the tests pull base images the engine lacks.
PULL = "SMSERVE_PULL_BASE_IMAGES"

_built: dict[str, str] = {}
_lock = threading.Lock()


class Lines:
    """A Progress that keeps the lines (the build log, shown when a build fails)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)

    def bar(self, done: int, total: int, text: str) -> None:
        """Ignore push progress."""


def engine_or_skip() -> Any:
    """A client for the engine the environment names, or a skip saying none answers."""
    try:
        return images.connect(dict(os.environ), timeout=3600)
    except ImageError as err:
        pytest.skip(f"needs a reachable Docker engine: {err.message}")


def build_args(flavor: str) -> dict[str, str]:
    """The base-image build arguments the environment asks for (``SMSERVE_<ARG>``)."""
    settings = Settings.from_environ(dict(os.environ))
    return _image_bases.base_build_args(images.dockerfile_for(flavor, ROOT),
                                        settings.base_images)


def bases_or_skip(client: Any, flavor: str) -> dict[str, str]:
    """The flavor's build arguments, or a skip naming each base the engine lacks."""
    args = build_args(flavor)
    bases = _image_bases.resolve(images.dockerfile_for(flavor, ROOT), args)
    pull = os.environ.get(PULL, "").strip().lower() in ("1", "true", "yes")
    absent = _image_bases.missing(client, bases)
    if absent and not pull:
        named = ", ".join(f"{image} ({arg}; SMSERVE_{arg} picks another)"
                          for arg, image in absent.items())
        pytest.skip(f"the {flavor} image's base images are not on the Docker engine: {named}; "
                    f"set {PULL}=1 to let the tests pull them, or run ../shared/tools/"
                    "docker-engine and export its stand-ins as SMSERVE_<ARG> (.ci/run does)")
    return args


def serving_image(flavor: str) -> str:
    """``smserve-<flavor>:<version>``, built from this tree once per session (or a skip)."""
    with _lock:
        if flavor in _built:
            return _built[flavor]
        client = engine_or_skip()
        try:
            args = bases_or_skip(client, flavor)
            progress = Lines()
            try:
                images.build(flavor, images.default_tag(), ROOT, client, progress,
                             build_args=args)
            except ImageError as err:
                tail = "\n".join(progress.lines[-30:])
                raise AssertionError(f"{err.message}\n{tail}") from err
        finally:
            client.close()
        _built[flavor] = images.local_image(flavor, images.default_tag())
        return _built[flavor]
