"""The Docker engine's streamed JSON (build output, push progress) turned into lines and a bar.

An error in a stream becomes a one-line :class:`~serving.errors.ImageError`
that says what to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from serving.errors import ImageError


class Progress(Protocol):
    """Where long work reports: whole lines, and a bar that redraws in place."""

    def line(self, text: str) -> None:
        """One line of output (a build step, a state change)."""

    def bar(self, done: int, total: int, text: str) -> None:
        """Progress of the current step: ``done`` of ``total`` bytes, described by ``text``."""


class Quiet:
    """A :class:`Progress` that discards everything."""

    def line(self, text: str) -> None:
        """Discard ``text``."""

    def bar(self, done: int, total: int, text: str) -> None:
        """Discard the update."""


def follow_build(events: Iterable[Mapping[str, Any]], progress: Progress, flavor: str) -> str:
    """Report a build stream's lines; the built image's id (empty if none was reported).

    Raises:
        ImageError: the stream reported an error (named with the step it failed at).
    """
    image_id = ""
    step = instruction = ""
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = one_line(str(detail.get("message") or event.get("error") or "unknown"))
            where = f" at {step}" if step else ""
            if instruction.upper().startswith("FROM "):
                raise ImageError(f"docker build failed{where} ({instruction}): {message}; the "
                                 "base image could not be had: point the build at one the "
                                 "engine has (SMSERVE_<ARG> or --build-arg <ARG>=IMAGE for the "
                                 "ARG in that FROM; containers/README.md, 'Base images')")
            raise ImageError(f"docker build failed{where}: {message}; fix the Dockerfile or the "
                             f"context and rerun: smserve image build --flavor {flavor}")
        text = event.get("stream")
        if isinstance(text, str):
            for line in text.splitlines():
                if line.strip():
                    if line.startswith("Step "):
                        step, _, instruction = line.partition(" : ")
                    progress.line(line.rstrip())
        elif "status" in event:  # pulling a base image
            status = " ".join(str(event[k]) for k in ("id", "status") if event.get(k))
            if "progressDetail" not in event or not event.get("progressDetail"):
                progress.line(status)
        aux = event.get("aux")
        if isinstance(aux, Mapping) and aux.get("ID"):
            image_id = str(aux["ID"])
    return image_id


def refused(message: str, uri: str, tag: str) -> str:
    """One line for a push the registry refused, with what to do about it."""
    low = message.lower()
    if "already exists" in low or "immutable" in low:
        return (f"the registry refused {uri}: {message}; tags are immutable there: build and "
                f"push a new tag (--tag), not {tag} again")
    if any(w in low for w in ("unauthorized", "authentication", "basic auth", "expired")):
        return (f"the registry refused the ECR login for {uri}: {message}; the token is wrong "
                "or has expired (ECR tokens last 12 hours): rerun the push, which gets a fresh "
                "one with GetAuthorizationToken, against the same AWS_ENDPOINT_URL and region")
    if "denied" in low:
        return (f"the registry refused {uri}: {message}; check that the credentials may push "
                "to this repository (ecr:InitiateLayerUpload, ecr:PutImage...) and rerun")
    return f"the registry refused {uri}: {message}; fix that and rerun the push"


def follow_push(events: Iterable[Mapping[str, Any]], progress: Progress, uri: str,
                 tag: str) -> str | None:
    """Report a push stream as lines and a bar; the pushed digest (None if not reported).

    Raises:
        ImageError: the registry refused the push (one line, see :func:`refused`).
    """
    layers = LayerProgress()
    digest: str | None = None
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            message = one_line(str(detail.get("message") or event.get("error") or "unknown"))
            raise ImageError(refused(message, uri, tag))
        aux = event.get("aux")
        if isinstance(aux, Mapping) and aux.get("Digest"):
            digest = str(aux["Digest"])
        lines, bar = layers.update(event)
        for line in lines:
            progress.line(line)
        if bar is not None:
            progress.bar(bar[0], bar[1], layers.describe())
    return digest


class LayerProgress:
    """Folds the engine's per-layer push events into totals for one bar."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.done: set[str] = set()
        self.existing: set[str] = set()
        self._last: tuple[int, int] = (-1, -1)

    def describe(self) -> str:
        """``pushed 3/7 layers (2 already there)``."""
        layers = set(self.sizes) | set(self.sent) | self.done | self.existing
        extra = f", {len(self.existing)} already there" if self.existing else ""
        return f"{len(self.done)}/{len(layers)} layers pushed{extra}"

    def update(self, event: Mapping[str, Any]) -> tuple[list[str], tuple[int, int] | None]:
        """What to report for ``event``: lines to print, and ``(done, total)`` bytes or None."""
        layer = str(event.get("id") or "")
        status = str(event.get("status") or "")
        detail = event.get("progressDetail") or {}
        if not layer:
            keep = status and not status.startswith("The push refers")
            return ([status] if keep else []), None
        if status == "Pushing" and isinstance(detail, Mapping):
            if detail.get("total"):
                self.sizes[layer] = int(detail["total"])
            self.sent[layer] = int(detail.get("current") or 0)
        elif status == "Pushed":
            self.done.add(layer)
            self.sent[layer] = self.sizes.get(layer, self.sent.get(layer, 0))
        elif status == "Layer already exists":
            self.existing.add(layer)
            self.done.add(layer)
        else:
            self.sizes.setdefault(layer, 0)
        total = sum(self.sizes.values())
        done = min(total, sum(self.sent.values()))
        percent = (100 * done // total) if total else 0
        key = (percent, len(self.done))
        if key == self._last:
            return [], None
        self._last = key
        return [], (done, total)


def one_line(text: str) -> str:
    """``text`` on one line: whitespace collapsed, at most 400 characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= 400 else flat[:397] + "..."
