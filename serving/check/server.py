"""``smserve check --serve`` and ``--transform``: the sample request through real processes.

Internal to :mod:`serving.check`. ``served`` starts multi-model-server on
the model folder (as ``smserve serve`` does) and POSTs the sample request to
``/invocations``; ``transformed`` runs the sample records as a local batch
transform (as ``smserve transform`` does). Both report what the server
answered, and on failure the model's own traceback frames from the server log.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from serving import codecs, scratch
from serving.check.report import Failure, Stage, describe, failure_of
from serving.check.run import Run, round_trip, run_settings
from serving.check.sample import outputs
from serving.errors import (
    BadRequest,
    ConfigError,
    ModelLoadError,
    PredictionError,
    ServerStartError,
    SmserveError,
    TransformError,
)

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_HANDLER = re.compile(r"\b(model_fn|input_fn|predict_fn|output_fn|transform_fn)\b")


_PREFIX = re.compile(r"^(?:\[container \d+\] )?(?:\S+ \[[A-Z]+ ?\] \S+ - )?")
_STAGED = re.compile(r"/[^\s\"']*?/model/code/")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?::|$)")


def unstage(text: str, folder: Path) -> str:
    """``text`` with staged code paths (``.../model/code/x.py``) shown as the model folder's."""
    return _STAGED.sub(str(folder) + "/", text)


def log_trace(lines: Iterable[str], folder: Path) -> str:
    """The model's own frames in a server log (log prefixes removed), innermost last.

    Frames are recognised by their file: the model folder's modules
    (``serving.py``, ``model.py``...) wherever the server staged them, never
    the toolkit's own ``serving/`` package.
    """
    names = {p.name for p in folder.glob("*.py")}
    text = [_PREFIX.sub("", line) for line in lines]
    out: list[str] = []
    for i, line in enumerate(text):
        match = _FRAME.search(line)
        if match and Path(match.group(1)).name in names and "/serving/" not in match.group(1):
            out.append(f'  File "{folder / Path(match.group(1)).name}", line {match.group(2)}, '
                       f"in {match.group(3)}")
            following = text[i + 1] if i + 1 < len(text) else ""
            if following.startswith("    ") and not _FRAME.search(following):
                out.append("    " + following.strip())
        elif out and _EXCEPTION_LINE.match(line) and not line.startswith("The above"):
            # The first traceback's exception: later ones repeat it (other workers, retries).
            out.append(unstage(line.rstrip(), folder))
            break
    return "\n".join(out) + "\n" if out else ""


def _answer_failure(status: int, body: bytes, run: Run, lines: list[str]) -> Failure:
    try:
        message = str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        message = ""
    message = unstage(message or body.decode(errors="replace")[:500], run.folder)
    match = _HANDLER.search(message)
    handler = match.group(1) if match else "the model server"
    err: SmserveError = PredictionError(message) if status >= 500 else BadRequest(message)
    failure = failure_of(handler, err, run.folder, at_start=False)
    failure.trace = log_trace(lines, run.folder)
    failure.status = status
    failure.body = body.decode(errors="replace")[:500]
    failure.sagemaker = f"the container answered {status} (this is its real answer):"
    return failure


def _start_failure(err: ServerStartError, run: Run, lines: list[str]) -> Failure:
    """The model did not load in the server: its cause, without the server's traceback."""
    first = unstage(err.message.split("\n", 1)[0].removesuffix(" Last log lines:"),
                    run.folder)
    failure = failure_of("model_fn", ModelLoadError(first), run.folder, at_start=True)
    failure.trace = log_trace(lines or err.message.splitlines(), run.folder)
    failure.exit_code = err.exit_code
    return failure


def _post(url: str, body: bytes, content_type: str, accept: str,
          timeout: float) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url + "/invocations", data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type", ""), err.read()


def _tree_rss(pid: int) -> int | None:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return None


def served(run: Run, log: Callable[[str], None] | None) -> None:
    """POST the sample request to the real model server, started on the model folder."""
    from serving._environ import model_environment
    from serving.ports import free_port
    from serving.server.serve import start

    report, sample = run.report, run.sample
    lines: list[str] = report.log

    def echo(line: str) -> None:
        lines.append(line)
        if log is not None:
            log(line)

    settings = run_settings(run.settings, run.env)
    run_dir = scratch.make("smserve-check-")
    boot = Stage("start model server", inputs=f"{run.folder.name} (model_fn in a worker)")
    report.stages.append(boot)
    started = time.perf_counter()
    try:
        with model_environment(run.env):
            try:
                server: Any
                if settings.container_runner == "docker":  # the model's image, not a process
                    from serving.check.container import start_in_container

                    server = start_in_container(run, settings, echo)
                else:
                    server = start(settings, run.folder, free_port(), run_dir=run_dir,
                                   echo=echo)
            except ServerStartError as err:
                boot.ok = False
                boot.seconds = time.perf_counter() - started
                report.failure = _start_failure(err, run, lines)
                return
            try:
                boot.seconds = time.perf_counter() - started
                pid = getattr(server.process, "pid", None)  # None: a container
                boot.rss_delta = _tree_rss(pid) if pid is not None else None
                runner = getattr(server, "runner", None)
                boot.output = f"{runner + ', ' if runner else ''}ready on {server.url}"
                invoke = Stage("POST /invocations", inputs=f"{describe(sample.body)}, "
                               f"{sample.content_type!r}")
                report.stages.append(invoke)
                mark, logged = len(lines), server.answers_logged
                began = time.perf_counter()
                status, kind, body = _post(server.url, sample.body, sample.content_type,
                                           sample.accept, settings.model_server_timeout + 30)
                invoke.seconds = time.perf_counter() - began
                after = _tree_rss(pid) if pid is not None else None
                if after is not None and boot.rss_delta is not None:
                    invoke.rss_delta = after - boot.rss_delta
                invoke.output = f"HTTP {status}, {kind!r}, {describe(body)}"
                if status != 200:
                    invoke.ok = False
                    # The answer can come before MMS has forwarded the worker's traceback.
                    server.wait_answer_logged(logged, timeout=10)
                    report.failure = _answer_failure(status, body, run, lines[mark:])
                    return
            finally:
                server.stop()
            answers = round_trip(report, body, kind, sample, run.folder, "output_fn")
            if answers is not None and run.clients is not None:
                report.outputs = outputs(run.clients.client("s3"), answers)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def transformed(run: Run, log: Callable[[str], None] | None) -> None:
    """Run the sample records as a local batch transform of the model folder."""
    from serving._environ import model_environment
    from serving.transform import predict

    report, sample, spec = run.report, run.sample, run.spec
    if sample.records is None or run.clients is None:
        report.failure = failure_of("load", ConfigError(
            f"{sample.path} is not S3-reference records; --transform runs S3-reference "
            "requests only (use --serve for other bodies)"), run.folder, at_start=False)
        return
    lines: list[str] = report.log

    def echo(line: str) -> None:
        lines.append(line)
        if log is not None:
            log(line)

    stage = Stage("batch transform", inputs=f"{len(sample.records)} record(s), "
                  f"{spec.batch_strategy}, {codecs.normalize(spec.content_type)}")
    report.stages.append(stage)
    started = time.perf_counter()
    try:
        with model_environment(run.env):
            answers: list[Any] = predict(
                run.folder, sample.records, run.clients, sample.records[0].bucket,
                work_prefix="smserve-check/", log=echo,
                model_name=run.folder.name.replace("_", "-"),
                batch_strategy=spec.batch_strategy, max_payload_mb=spec.max_payload_mb,
                max_concurrent=spec.max_concurrent_transforms,
                model_environment=spec.container_environment())
    except (TransformError, ServerStartError) as err:
        stage.ok = False
        report.failure = _transform_failure(err, run, lines)
        return
    finally:
        stage.seconds = time.perf_counter() - started
    stage.output = f"{len(answers)} answer(s): {describe(answers)}"
    report.answers = answers
    report.outputs = outputs(run.clients.client("s3"), answers)


def _transform_failure(err: SmserveError, run: Run, lines: list[str]) -> Failure:
    if isinstance(err, ServerStartError):
        return _start_failure(err, run, lines)
    message = unstage(err.message, run.folder)
    match = _HANDLER.search(message)
    failure = failure_of(match.group(1) if match else "batch transform",
                         TransformError(message), run.folder, at_start=False)
    failure.trace = log_trace(lines, run.folder)
    failure.sagemaker = "the transform job fails with this reason:"
    return failure
