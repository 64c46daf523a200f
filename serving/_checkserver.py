"""``smserve check --serve`` and ``--transform``: the sample request through real processes.

Internal to :mod:`serving.checking`. ``served`` starts multi-model-server on
the model folder (as ``smserve serve`` does) and POSTs the sample request to
``/invocations``; ``transformed`` runs the sample records as a local batch
transform (as ``smserve transform`` does). Both report what the server
answered, and on failure the model's own traceback frames from the server log.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving import codecs
from serving._checkreport import Failure, Stage, describe, failure_of
from serving.errors import ConfigError, ServerStartError, SmserveError, TransformError
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.checking import _Run

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_HANDLER = re.compile(r"\b(model_fn|input_fn|predict_fn|output_fn|transform_fn)\b")
_EXCEPTION = re.compile(r"\b([A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b.*)$")


def _settings(run: _Run) -> Settings:
    env = dict(run.settings.environ)
    for key, value in run.env.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return Settings.from_environ(env)


def log_trace(lines: Iterable[str], folder: Path) -> str:
    """The model's own frames in a server log (any prefix before ``File "..."``).

    Frames are recognised by the file name: ``serving.py``, ``model.py`` and
    the model folder's other modules, wherever the server staged them.
    """
    names = {p.name for p in folder.glob("*.py")}
    out: list[str] = []
    last_frame = -1
    text = list(lines)
    for i, line in enumerate(text):
        match = _FRAME.search(line)
        if not match or Path(match.group(1)).name not in names or "/serving/" in match.group(1):
            continue
        where = folder / Path(match.group(1)).name
        out.append(f'  File "{where}", line {match.group(2)}, in {match.group(3)}')
        if i + 1 < len(text) and not _FRAME.search(text[i + 1]):
            source = text[i + 1].split(" - ", 1)[-1].strip()
            if source and not _EXCEPTION.search(source):
                out.append(f"    {source}")
        last_frame = i
    if last_frame < 0:
        return ""
    for line in text[last_frame + 1:last_frame + 6]:
        match = _EXCEPTION.search(line)
        if match and not _FRAME.search(line):
            out.append(match.group(1))
            break
    return "\n".join(out) + "\n"


def _answer_failure(status: int, body: bytes, run: _Run, lines: list[str]) -> Failure:
    try:
        parsed = json.loads(body)
        message = str(parsed.get("message", body.decode(errors="replace")))
    except (ValueError, AttributeError):
        message = body.decode(errors="replace")[:500]
    match = _HANDLER.search(message)
    handler = match.group(1) if match else "the model server"
    where = run.folder / "serving.py"
    return Failure(
        handler=handler, message=message,
        fix=(f"the sample request or its data is what {handler} refused: correct them, or make "
             f"{handler} in {where} accept them" if status < 500 else
             f"fix {handler} in {where} where the traceback points, then rerun smserve check"),
        trace=log_trace(lines, run.folder), status=status,
        body=body.decode(errors="replace")[:500],
        sagemaker=f"the container answered {status} (this is its real answer):")


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


def served(run: _Run, log: Callable[[str], None] | None) -> None:
    """POST the sample request to the real model server, started on the model folder."""
    from serving.checking import _environment, _outputs, _round_trip
    from serving.ports import free_port
    from serving.server.serve import start

    report, sample = run.report, run.sample
    lines: list[str] = report.log

    def echo(line: str) -> None:
        lines.append(line)
        if log is not None:
            log(line)

    settings = _settings(run)
    run_dir = Path(tempfile.mkdtemp(prefix="smserve-check-"))
    boot = Stage("start model server", inputs=f"{run.folder.name} (model_fn in a worker)")
    report.stages.append(boot)
    started = time.perf_counter()
    try:
        with _environment(run.env, run.settings.environ):
            try:
                server = start(settings, run.folder, free_port(), run_dir=run_dir, echo=echo)
            except ServerStartError as err:
                boot.ok = False
                boot.seconds = time.perf_counter() - started
                report.failure = failure_of("model_fn", err, run.folder, at_start=True)
                report.failure.trace = log_trace(err.message.splitlines() + lines, run.folder)
                return
            try:
                boot.seconds = time.perf_counter() - started
                boot.rss_delta = _tree_rss(server.process.pid)
                boot.output = f"ready on {server.url}"
                invoke = Stage("POST /invocations", inputs=f"{describe(sample.body)}, "
                               f"{sample.content_type!r}")
                report.stages.append(invoke)
                mark = len(lines)
                began = time.perf_counter()
                status, kind, body = _post(server.url, sample.body, sample.content_type,
                                           sample.accept, settings.model_server_timeout + 30)
                invoke.seconds = time.perf_counter() - began
                invoke.rss_delta = _tree_rss(server.process.pid)
                invoke.output = f"HTTP {status}, {kind!r}, {describe(body)}"
                if status != 200:
                    invoke.ok = False
                    time.sleep(0.3)  # let the worker's traceback reach the log
                    report.failure = _answer_failure(status, body, run, lines[mark:])
                    return
            finally:
                server.stop()
            answers = _round_trip(report, body, kind, sample, run.folder, "output_fn")
            if answers is not None and run.clients is not None:
                report.outputs = _outputs(run.clients.client("s3"), answers)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def transformed(run: _Run, log: Callable[[str], None] | None) -> None:
    """Run the sample records as a local batch transform of the model folder."""
    from serving.checking import _environment, _outputs
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
        with _environment(run.env, run.settings.environ):
            answers: list[Any] = predict(
                run.folder, sample.records, run.clients, sample.records[0].bucket,
                work_prefix="smserve-check/", log=echo,
                model_name=run.folder.name.replace("_", "-"),
                batch_strategy=spec.batch_strategy, max_payload_mb=spec.max_payload_mb,
                model_environment=spec.environment)
    except (TransformError, ServerStartError) as err:
        stage.ok = False
        report.failure = _transform_failure(err, run, lines)
        return
    finally:
        stage.seconds = time.perf_counter() - started
    stage.output = f"{len(answers)} answer(s): {describe(answers)}"
    report.answers = answers
    report.outputs = _outputs(run.clients.client("s3"), answers)


def _transform_failure(err: SmserveError, run: _Run, lines: list[str]) -> Failure:
    at_start = isinstance(err, ServerStartError)
    match = _HANDLER.search(err.message)
    failure = failure_of(match.group(1) if match else "batch transform", err, run.folder,
                         at_start=at_start)
    failure.trace = log_trace(lines, run.folder) or failure.trace
    failure.sagemaker = ("the transform job fails with this reason:" if not at_start else
                         failure.sagemaker)
    return failure
