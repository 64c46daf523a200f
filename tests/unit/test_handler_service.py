"""Tests for serving.server.handler_service, driven the way an MMS worker drives it.

The batch goes through multi-model-server's own Python side: the frame the Java
frontend sends is read from a socket by ``mms.protocol.otf_message_handler``,
``mms.service.Service`` builds the real ``Context`` and ``RequestProcessor``
objects and calls our entry point, and its response frame is decoded here.
"""

from __future__ import annotations

import json
import socket
import struct
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mms.context import Context, RequestProcessor
from mms.protocol.otf_message_handler import PREDICT_MSG, retrieve_msg
from mms.service import Service

from serving.errors import HandlerError
from serving.server import handler_service
from serving.server.handler_service import MODEL_ERROR_FILE, MODEL_READY_FILE, HandlerService
from serving.settings import Settings
from tests.helpers import handler_imports_undone

DOUBLE = """
    import numpy as np

    def model_fn(model_dir):
        return 2

    def predict_fn(data, model):
        return np.asarray(data) * model
"""


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what load_handlers does to sys.path and sys.modules; MMS's decode setting."""
    # config.properties says decode_input_request=false; MMS passes it on like this.
    monkeypatch.setenv("MMS_DECODE_INPUT_REQUEST", "false")
    with handler_imports_undone():
        yield


def _model_dir(tmp_path: Path, source: str = DOUBLE) -> Path:
    model_dir = tmp_path / "model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "serving.py").write_text(textwrap.dedent(source))
    return model_dir


def _settings(tmp_path: Path, **environ: str) -> Settings:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    return Settings.from_environ({"SMSERVE_RUN_DIR": str(run_dir), **environ})


# --- MMS's wire format, as the Java frontend writes and reads it --------------------


@dataclass(frozen=True)
class Request:
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class Answer:
    request_id: str
    content_type: str
    status: int
    phrase: str
    body: bytes


def _field(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack("!i", len(raw)) + raw


def _predict_frame(requests: list[Request]) -> bytes:
    """An inference message: per request its id, headers and one "body" parameter."""
    end = struct.pack("!i", -1)
    frame = PREDICT_MSG
    for i, req in enumerate(requests):
        frame += _field(f"req-{i}")
        for name, value in req.headers.items():
            frame += _field(name) + _field(value)
        frame += end
        content_type = req.headers.get("Content-Type", "")
        frame += _field("body") + _field(content_type) + _field(req.body) + end
    return frame + end


def _read_batch(frame: bytes) -> list[dict[str, Any]]:
    """The batch MMS's worker builds from ``frame``, read from a real socket."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.sendall(frame)
        command, batch = retrieve_msg(theirs)
    assert command == PREDICT_MSG
    return batch


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def int(self) -> int:
        (value,) = struct.unpack_from("!i", self.data, self.pos)
        self.pos += 4
        return int(value)

    def bytes(self) -> bytes:
        size = self.int()
        value = self.data[self.pos:self.pos + max(size, 0)]
        self.pos += max(size, 0)
        return value


def _decode_response(frame: bytes, count: int) -> tuple[int, str, list[Answer]]:
    """MMS's predict response: batch code and message, then one answer per request."""
    reader = _Reader(frame)
    code, message = reader.int(), reader.bytes().decode()
    answers = []
    for _ in range(count):
        request_id = reader.bytes().decode()
        content_type = reader.bytes().decode()
        status = reader.int()
        phrase = reader.bytes().decode()
        for _ in range(reader.int()):  # response headers
            reader.bytes()
            reader.bytes()
        answers.append(Answer(request_id, content_type, status, phrase, reader.bytes()))
    assert reader.int() == -1
    return code, message, answers


def _service(model_dir: Path, entry_point: Any) -> Service:
    return Service("model", str(model_dir), None, entry_point, None, 3)


def _run(service: Service, requests: list[Request]) -> tuple[int, str, list[Answer]]:
    response = service.predict(_read_batch(_predict_frame(requests)))
    return _decode_response(bytes(response), len(requests))


@pytest.fixture()
def loaded(tmp_path: Path) -> tuple[HandlerService, Service]:
    """A HandlerService with DOUBLE loaded, and the MMS Service that drives it."""
    svc = HandlerService(_settings(tmp_path))
    mms_service = _service(_model_dir(tmp_path), svc.handle)
    svc.initialize(mms_service.context)
    return svc, mms_service


# --- a batch -----------------------------------------------------------------------


def test_each_request_of_a_batch_gets_its_own_answer(
        loaded: tuple[HandlerService, Service]) -> None:
    _, mms_service = loaded
    code, message, answers = _run(mms_service, [
        Request(b"[1, 2, 3]", {"Content-Type": "application/json", "Accept": "application/json"}),
        Request(b"1,2\n3,4\n", {"content-type": "text/csv", "accept": "text/csv"}),
        Request(b"[1, 2,", {"Content-Type": "application/json", "Accept": "text/csv"}),
    ])

    assert (code, message) == (200, "Prediction success")
    assert [a.request_id for a in answers] == ["req-0", "req-1", "req-2"]
    assert [a.status for a in answers] == [200, 200, 400]
    assert [a.content_type for a in answers] == ["application/json", "text/csv",
                                                 "application/json"]
    assert json.loads(answers[0].body) == [2, 4, 6]
    assert answers[1].body == b"2.0,4.0\n6.0,8.0\n"
    error = json.loads(answers[2].body)
    assert set(error) == {"error", "message"}
    assert error["error"] == "BadRequest"
    assert "JSON" in error["message"]
    assert "Traceback" not in answers[2].body.decode()
    assert answers[2].phrase == "BadRequest"


def test_status_and_content_type_land_on_the_real_context(
        loaded: tuple[HandlerService, Service]) -> None:
    svc, mms_service = loaded
    batch = _read_batch(_predict_frame([
        Request(b"[1]", {"Content-Type": "application/json"}),
        Request(b"<x/>", {"Content-Type": "application/xml"}),
    ]))
    headers, inputs, ids = Service.retrieve_data_for_inference(batch)
    context: Context = mms_service.context
    context.request_ids = ids
    context.request_processor = headers
    assert all(isinstance(h, RequestProcessor) for h in headers)

    bodies = svc.handle(inputs, context)

    assert context.get_response_status(0) == (200, None)
    assert context.get_response_content_type(0) == "application/json"
    assert json.loads(bodies[0]) == [2]
    assert context.get_response_status(1) == (415, "UnsupportedContentType")
    assert context.get_response_content_type(1) == "application/json"
    assert json.loads(bodies[1])["error"] == "UnsupportedContentType"


@pytest.mark.parametrize("accept", [None, "*/*", " */* "], ids=["missing", "star", "spaced"])
def test_missing_or_any_accept_uses_the_default_accept(tmp_path: Path,
                                                       accept: str | None) -> None:
    svc = HandlerService(_settings(tmp_path, SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="text/csv"))
    mms_service = _service(_model_dir(tmp_path), svc.handle)
    svc.initialize(mms_service.context)
    headers = {"Content-Type": "application/json"}
    if accept is not None:
        headers["Accept"] = accept

    _, _, [answer] = _run(mms_service, [Request(b"[[1, 2]]", headers)])

    assert answer.status == 200
    assert answer.content_type == "text/csv"
    assert answer.body == b"2,4\n"


def test_default_accept_is_json_when_unset(loaded: tuple[HandlerService, Service]) -> None:
    _, mms_service = loaded
    _, _, [answer] = _run(mms_service, [Request(b"[5]", {"Content-Type": "application/json",
                                                          "Accept": "*/*"})])
    assert (answer.status, answer.content_type) == (200, "application/json")
    assert json.loads(answer.body) == [10]


def test_request_without_content_type_gets_400(loaded: tuple[HandlerService, Service]) -> None:
    _, mms_service = loaded
    _, _, [answer] = _run(mms_service, [Request(b"[1]", {"Accept": "application/json"})])
    assert answer.status == 400
    assert answer.content_type == "application/json"
    assert "Content-Type" in json.loads(answer.body)["message"]


def test_handler_error_is_a_500_without_the_traceback(tmp_path: Path) -> None:
    source = textwrap.dedent(DOUBLE) + textwrap.dedent("""
        def output_fn(prediction, accept):
            raise KeyError("secret-internal-detail")
    """)
    svc = HandlerService(_settings(tmp_path))
    mms_service = _service(_model_dir(tmp_path, source), svc.handle)
    svc.initialize(mms_service.context)

    _, _, [answer] = _run(mms_service, [Request(b"[1]", {"Content-Type": "application/json"})])

    assert answer.status == 500
    body = json.loads(answer.body)
    assert body["error"] == "PredictionError"
    assert "output_fn" in body["message"]
    assert "Traceback" not in answer.body.decode()


# --- loading -----------------------------------------------------------------------


def test_initialize_marks_the_model_ready(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    model_dir = _model_dir(tmp_path)
    svc = HandlerService(settings)

    svc.initialize(_service(model_dir, svc.handle).context)

    assert settings.run_dir is not None
    assert (settings.run_dir / MODEL_READY_FILE).read_text() == str(model_dir)
    assert not (settings.run_dir / MODEL_ERROR_FILE).exists()


@pytest.mark.parametrize("source,cause", [
    ("def model_fn(model_dir):\n    raise RuntimeError('no weights here')\n"
     "def predict_fn(data, model):\n    return data\n", "RuntimeError: no weights here"),
    ("def model_fn(model_dir:\n", "syntax error"),
    ("import smserve_missing_module_abc\n", "smserve_missing_module_abc"),
], ids=["model-fn-raises", "syntax-error", "missing-module"])
def test_initialize_failure_records_the_cause(tmp_path: Path, source: str, cause: str) -> None:
    settings = _settings(tmp_path)
    svc = HandlerService(settings)
    context = _service(_model_dir(tmp_path, source), svc.handle).context

    with pytest.raises(HandlerError) as caught:
        svc.initialize(context)

    assert settings.run_dir is not None
    recorded = (settings.run_dir / MODEL_ERROR_FILE).read_text()
    assert cause in recorded
    assert cause in str(caught.value)
    assert "Traceback" in recorded  # the whole story, for the log
    assert not (settings.run_dir / MODEL_READY_FILE).exists()


def test_module_entry_point_loads_then_answers(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``handle(None, ctx)`` loads from the process environment, as in an MMS worker."""
    settings = _settings(tmp_path)
    assert settings.run_dir is not None
    monkeypatch.setenv("SMSERVE_RUN_DIR", str(settings.run_dir))
    monkeypatch.setattr(handler_service, "_service", None)
    mms_service = _service(_model_dir(tmp_path), handler_service.handle)

    assert handler_service.handle(None, mms_service.context) is None
    _, _, [answer] = _run(mms_service, [Request(b"[4]", {"Content-Type": "application/json"})])

    assert (settings.run_dir / MODEL_READY_FILE).exists()
    assert (answer.status, json.loads(answer.body)) == (200, [8])


def _mark_many(run_dir: str, times: int) -> None:
    svc = HandlerService(Settings.from_environ({"SMSERVE_RUN_DIR": run_dir}))
    for _ in range(times):
        svc._mark("model_ready.txt", "ready")


def test_workers_loading_at_once_all_mark_the_model_ready(tmp_path: Path) -> None:
    # MMS starts one Python worker per CPU and they load together: each marks the run dir
    # without renaming the file another worker is about to rename (that killed workers).
    import multiprocessing

    run_dir = _settings(tmp_path).run_dir
    assert run_dir is not None
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_mark_many, args=(str(run_dir), 200)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    assert (run_dir / "model_ready.txt").read_text() == "ready"
    assert sorted(p.name for p in run_dir.iterdir()) == ["model_ready.txt"]
