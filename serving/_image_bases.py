"""The base images a serving image is built on: which, whether the engine has them, pulling.

Each Dockerfile names its bases as build arguments with defaults
(``ARG PYTHON_IMAGE=python:3.11-slim-bookworm``; the GPU image has
``BUILD_IMAGE`` and ``CUDA_IMAGE``). A machine that cannot pull those builds
on others: ``SMSERVE_<ARG>`` in the environment (see
:mod:`serving.settings`) or ``--build-arg <ARG>=IMAGE``, the latter winning.

:func:`resolve` gives the bases a build will use, :func:`missing` those the
engine does not have, and :func:`ensure` pulls the missing ones before the
build starts, so a base that cannot be pulled is one
:class:`~serving.errors.ImageError` that names it and the way to point the
build at another one, instead of a failed build step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from serving._image_stream import Progress, one_line
from serving.errors import ImageError

#: ``ARG NAME=default`` where NAME ends in ``_IMAGE``, before or between stages.
_BASE_ARG = re.compile(r"^\s*ARG\s+([A-Z][A-Z0-9_]*_IMAGE)=(\S+)\s*$", re.MULTILINE)
#: Where the ways to change a base are written down, for error messages.
DOCS = "containers/README.md, 'Base images'"


def declared(dockerfile: Path) -> dict[str, str]:
    """The base-image build arguments ``dockerfile`` declares, with their defaults, in order."""
    return dict(_BASE_ARG.findall(Path(dockerfile).read_text()))


def resolve(dockerfile: Path, build_args: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{ARG: image}``: the bases a build of ``dockerfile`` with ``build_args`` uses."""
    args = dict(build_args or {})
    return {arg: args.get(arg) or default for arg, default in declared(dockerfile).items()}


def base_build_args(dockerfile: Path, from_settings: Mapping[str, str],
                    build_args: Mapping[str, str] | None = None) -> dict[str, str]:
    """``build_args`` with the settings' bases (``SMSERVE_<ARG>``) under them.

    Only the arguments ``dockerfile`` declares are added (the engine warns
    about build arguments a Dockerfile does not consume).
    """
    wanted = declared(dockerfile)
    merged = {arg: image for arg, image in from_settings.items() if arg in wanted}
    merged.update(build_args or {})
    return merged


def how_to_change(arg: str) -> str:
    """The two ways to build on another base, for messages."""
    return (f"set SMSERVE_{arg}=IMAGE or pass --build-arg {arg}=IMAGE to build on a base the "
            f"engine has ({DOCS})")


def missing(client: Any, bases: Mapping[str, str]) -> dict[str, str]:
    """The entries of ``bases`` whose image the engine does not have.

    Raises:
        ImageError: the engine could not be asked.
    """
    from docker.errors import APIError, DockerException, ImageNotFound

    absent = {}
    for arg, image in bases.items():
        try:
            client.api.inspect_image(image)
        except ImageNotFound:
            absent[arg] = image
        except (APIError, DockerException, OSError) as err:
            raise ImageError(f"the Docker engine could not look up the base image {image}: "
                             f"{one_line(str(err))}") from err
    return absent


def not_here(arg: str, image: str) -> str:
    """The message for a base the engine lacks where pulling is off."""
    return (f"the base image {image} ({arg}) is not on the Docker engine and pulling is off; "
            f"pull it (docker pull {image}), or {how_to_change(arg)}")


def unpullable(arg: str, image: str, reason: str) -> str:
    """The message for a base that could not be pulled."""
    return (f"the base image {image} ({arg}) is not on the Docker engine and could not be "
            f"pulled: {reason}; make its registry reachable, or {how_to_change(arg)}")


def ensure(client: Any, bases: Mapping[str, str], progress: Progress, *,
           pull: bool = True) -> None:
    """Make sure the engine has every base in ``bases``, pulling the missing ones.

    Args:
        client: a ``docker.DockerClient``.
        bases: ``{ARG: image}`` (see :func:`resolve`).
        progress: receives a line per pull.
        pull: pull what is missing; False: a missing base is an error at once.

    Raises:
        ImageError: a base is missing and could not be pulled (or pulling is
            off); the message names it and how to build on another one.
    """
    from docker.errors import APIError, DockerException
    from docker.utils import parse_repository_tag

    for arg, image in missing(client, bases).items():
        if not pull:
            raise ImageError(not_here(arg, image), image=image)
        progress.line(f"pulling the base image {image} ({arg})")
        repository, tag = parse_repository_tag(image)
        try:
            for event in client.api.pull(repository, tag=tag or "latest", stream=True,
                                         decode=True):
                if "error" in event or "errorDetail" in event:
                    detail = event.get("errorDetail") or {}
                    raise ImageError(unpullable(arg, image, one_line(str(
                        detail.get("message") or event.get("error") or "unknown"))),
                        image=image)
        except (APIError, DockerException, OSError) as err:
            reason = getattr(err, "explanation", None) or str(err)
            raise ImageError(unpullable(arg, image, one_line(str(reason))),
                             image=image) from err
