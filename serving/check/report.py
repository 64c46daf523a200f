"""What ``smserve check`` found: per-handler measurements, the failure, and how to print them.

Internal to :mod:`serving.check`; the report's fields are what the tests
and the command read.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import (
    BadRequest,
    ConfigError,
    HandlerError,
    ModelLoadError,
    ModelSpecError,
    SmserveError,
    error_body,
    status_of,
)
from serving.handler import CONTRACT

_HANDLER = re.compile(r"\b(model_fn|input_fn|predict_fn|output_fn|transform_fn)\b")


@dataclass
class Stage:
    """One measured step: a handler, the model server, or decoding the answer."""

    name: str
    seconds: float = 0.0
    peak_bytes: int | None = None
    rss_delta: int | None = None
    gpu_bytes: int | None = None
    inputs: str = ""
    output: str = ""
    ok: bool = True


@dataclass
class Failure:
    """Why the check failed, and what SageMaker would have done.

    Attributes:
        handler: the handler that failed (``model_fn``...), or ``load``.
        message: the error's message (names the file and the function).
        fix: what to change.
        trace: the model's own traceback frames (may be empty).
        status: the HTTP status SageMaker's container would answer.
        body: the JSON body it would answer.
        sagemaker: in words, what SageMaker would have done.
        exit_code: the command's exit status (never 0).
        record: for a record answered ``failed`` inside a 200 answer, its
            index (``status`` and ``body`` are then the record's error).
    """

    handler: str
    message: str
    fix: str
    trace: str
    status: int
    body: str
    sagemaker: str
    exit_code: int = 1
    record: int | None = None


@dataclass
class Report:
    """The outcome of one check."""

    model: Path
    mode: str
    request: Path | None = None
    stages: list[Stage] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)
    failure: Failure | None = None
    log: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every handler ran and the answer decoded."""
        return self.failure is None

    @property
    def exit_code(self) -> int:
        """0 on success, else the failure's (non-zero) exit status."""
        return 0 if self.failure is None else self.failure.exit_code

    def render(self) -> str:
        """The report as text, as ``smserve check`` prints it."""
        how = {"handlers": "handlers in-process", "serve": "through the model server",
               "transform": "as a local batch transform"}[self.mode]
        lines = [f"smserve check {_rel(self.model)}: {how}"
                 + (f", request {_rel(self.request)}" if self.request else "")]
        for line in self.inputs:
            lines.append(f"  input   {line}")
        if self.stages:
            lines.append("")
            lines.extend(_table(self.stages))
        for line in self.outputs:
            lines.append(f"  output  {line}")
        if self.answers and not self.outputs:
            for answer in self.answers[:5]:
                lines.append(f"  answer  {_short(json.dumps(answer), 160)}")
        lines.append("")
        if self.failure is None:
            lines.append(f"ok: {_rel(self.model)} answered its sample request ({how})")
        else:
            lines.extend(_failure_lines(self.failure))
        return "\n".join(lines)


def _table(stages: list[Stage]) -> list[str]:
    head = f"  {'step':<18} {'time':>9} {'py peak':>9} {'RSS +/-':>9} {'GPU':>9}  input -> output"
    rows = [head]
    for s in stages:
        if s.ok and not s.inputs and not s.output and not s.seconds:
            rows.append(f"  {s.name:<18} {'(not run)':>9}")
            continue
        mark = "" if s.ok else "  FAILED"
        rows.append(f"  {s.name:<18} {s.seconds:>7.3f} s {_size(s.peak_bytes):>9} "
                    f"{_size(s.rss_delta, sign=True):>9} {_size(s.gpu_bytes):>9}  "
                    f"{_short(s.inputs or '-', 60)} -> {_short(s.output or '-', 70)}{mark}")
    return rows


def _failure_lines(f: Failure) -> list[str]:
    lines = [f"FAILED in {f.handler}: {f.message}"]
    if f.trace:
        lines.append("")
        lines.append("the model's traceback (its own frames, innermost last):")
        lines.extend("  " + line for line in f.trace.rstrip("\n").splitlines())
    lines.append("")
    lines.append(f"fix: {f.fix}")
    lines.append(f"SageMaker: {f.sagemaker}")
    if f.record is not None:  # a per-record outcome inside a 200 answer
        lines.append(f"  answer: HTTP 200, record {f.record} failed ({f.status}): {f.body}")
    else:
        lines.append(f"  answer: HTTP {f.status} {f.body}")
    return lines


def _size(value: int | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if magnitude >= scale:
            text = f"{magnitude / scale:.1f} {unit}"
            break
    else:
        text = f"{magnitude} B"
    if sign:
        return ("-" if value < 0 else "+") + text
    return text


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rel(path: Path | None) -> str:
    """``path`` relative to the working directory when it lies inside it."""
    if path is None:
        return ""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel


# --- describing values ----------------------------------------------------------------------


def describe(value: Any, depth: int = 0) -> str:
    """A short description of a value's type and shape: ``ndarray uint8 (8, 32, 32, 3)``."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None and not isinstance(value, type):
        kind = type(value)
        module = kind.__module__.split(".")[0]
        name = kind.__name__ if module in ("numpy", "builtins") else f"{module}.{kind.__name__}"
        return f"{name} {dtype} {tuple(shape)}"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"bytes ({len(value):,})"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"str ({len(value):,} chars)"
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)
    if depth >= 2:
        return type(value).__name__
    if isinstance(value, tuple):
        return "(" + ", ".join(describe(v, depth + 1) for v in value[:4]) + \
            (", ..." if len(value) > 4 else "") + ")"
    if isinstance(value, list):
        if not value:
            return "list[0]"
        kinds = {type(v) for v in value}
        first = describe(value[0], depth + 1)
        return f"list[{len(value)}] of {first}" + ("" if len(kinds) == 1 else ", ...")
    if isinstance(value, dict):
        items = list(value.items())
        inner = ", ".join(f"{k!s}: {describe(v, depth + 1)}" for k, v in items[:4])
        return "{" + inner + (", ..." if len(items) > 4 else "") + "}"
    return type(value).__name__


# --- failures ---------------------------------------------------------------------------------


def _chain(err: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or (None if current.__suppress_context__
                                        else current.__context__)
    return found


def _inside(filename: str, folder: Path) -> bool:
    try:
        return Path(filename).resolve().is_relative_to(folder)
    except (OSError, ValueError):
        return False


def model_trace(err: BaseException, folder: Path) -> str:
    """The frames of ``err`` (or its causes) that lie in the model's folder, formatted.

    A syntax error shows its line and caret; an error with no frame in the
    model's files shows nothing (its message says what is wrong).
    """
    folder = folder.resolve()
    for exc in reversed(_chain(err)):
        if isinstance(exc, SyntaxError) and exc.filename and _inside(exc.filename, folder):
            return "".join(traceback.format_exception_only(exc))
        own = [f for f in traceback.extract_tb(exc.__traceback__) if _inside(f.filename, folder)]
        if own:
            for frame in own:
                frame.filename = _rel(Path(frame.filename))
            return "".join(traceback.format_list(own) +
                           traceback.format_exception_only(type(exc), exc))
    return ""


def _fix(handler: str, err: BaseException, source: str) -> str:
    """What to change, for the errors whose messages do not say it already."""
    cause = _chain(err)[-1]
    if isinstance(cause, SyntaxError):
        return f"correct the syntax at {cause.filename}, line {cause.lineno}"
    if isinstance(err, ModelSpecError):
        return "correct model.toml as the message says (smserve new NAME writes a valid one)"
    if isinstance(err, ModelLoadError):
        return (f"make model_fn(model_dir) in {source} load and return the model; the traceback "
                "shows where it failed (model_dir is the model folder: weights at its top)")
    if isinstance(err, HandlerError):
        match = _HANDLER.search(err.message)
        if match and "does not match the contract" in err.message:
            return f"define it as {CONTRACT[match.group(1)][1]}"
        if err.message.startswith("no serving.py"):
            return "add serving.py with the handlers (smserve new NAME writes a template)"
        if isinstance(cause, ImportError):
            return ("add the missing module to the model folder, or install it in the image "
                    "(containers/cpu or containers/gpu) and in your environment")
        return "change serving.py as the message says; serving.handler documents the contract"
    if isinstance(err, SmserveError) and "the server can send only" in err.message:
        return (f"make {handler} in {source} return bytes, str or (bytes, content_type): for "
                "S3-reference requests serving.s3refs.response(results), otherwise "
                "serving.codecs.encode(prediction, accept)")
    if isinstance(err, SmserveError) and "answer" in err.context:
        return ("add the missing file under the model's sample_data/ as the message says (a "
                "key's file is sample_data/KEY), or name an object that is there")
    if isinstance(err, BadRequest):
        return (f"the sample request or its data is what {handler} refused: correct them, or "
                f"make {handler} in {source} accept them")
    return f"fix {handler} in {source} where the traceback points, then rerun smserve check"


def _load_step(err: SmserveError) -> str:
    """Which step of loading failed: a handler named by the contract, the spec, the file."""
    match = _HANDLER.search(err.message)
    if isinstance(err, HandlerError) and match and (
            "does not match the contract" in err.message or f": no {match.group(1)}" in err.message
            or ("is a " in err.message and "not a function" in err.message)):
        return match.group(1)
    if isinstance(err, ModelSpecError):
        return "model.toml"
    if isinstance(err, ConfigError):
        return "sample request"
    return "serving.py"


def failure_of(handler: str, err: SmserveError, folder: Path, *, at_start: bool) -> Failure:
    """A :class:`Failure` for ``err``, raised by ``handler`` of the model in ``folder``."""
    source = _rel(folder / "serving.py")
    if handler == "load":
        handler = _load_step(err)
    answer = err.context.get("answer")
    shown = answer if isinstance(answer, SmserveError) else err
    status = status_of(shown)
    if isinstance(err, ModelSpecError):
        sagemaker = ("nothing yet: smserve package and the pipeline refuse this model.toml "
                     "before any job starts; the error:")
    elif isinstance(err, ConfigError):
        sagemaker = ("nothing: the sample request is the check's own input, SageMaker never "
                     "sees it; the error:")
    elif at_start:
        sagemaker = ("the container would stop while starting (the model did not load), so "
                     "the batch transform job fails before any record is sent (an endpoint "
                     "fails to create); the error, as a client would see it:")
    elif status < 500:
        sagemaker = (f"the container refuses the request with {status}; in a batch transform "
                     "the job fails with this message (the record is left unanswered):")
    else:
        sagemaker = (f"the container answers {status} and logs the traceback; in a batch "
                     "transform the job fails after its retries:")
    return Failure(handler=handler, message=err.message, fix=_fix(handler, err, source),
                   trace=model_trace(err, folder), status=status,
                   body=error_body(shown).decode(), sagemaker=sagemaker,
                   exit_code=max(1, err.exit_code))
