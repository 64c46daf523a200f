"""Tests for serving.errors: statuses, codes, built-in bases, and what clients see."""

from __future__ import annotations

import json

import pytest

from serving import errors
from serving.errors import (
    BadRequest,
    ConfigError,
    Forbidden,
    HandlerError,
    InputNotFound,
    InvalidInput,
    ModelLoadError,
    ModelSpecError,
    PayloadTooLarge,
    PredictionError,
    ServerStartError,
    SmserveError,
    StackError,
    StorageError,
    TransformError,
    UnsupportedContentType,
    error_body,
    status_of,
)


@pytest.mark.parametrize(
    ("cls", "status", "code"),
    [
        (SmserveError, 500, "InternalError"),
        (BadRequest, 400, "BadRequest"),
        (Forbidden, 403, "Forbidden"),
        (InputNotFound, 404, "InputNotFound"),
        (PayloadTooLarge, 413, "PayloadTooLarge"),
        (UnsupportedContentType, 415, "UnsupportedContentType"),
        (InvalidInput, 422, "InvalidInput"),
        (HandlerError, 500, "HandlerError"),
        (ModelLoadError, 500, "ModelLoadError"),
        (PredictionError, 500, "PredictionError"),
        (StorageError, 502, "StorageError"),
        (ConfigError, 400, "ConfigError"),
        (ModelSpecError, 400, "ModelSpecError"),
        (ServerStartError, 500, "ServerStartError"),
        (TransformError, 500, "TransformError"),
        (StackError, 500, "StackError"),
    ],
)
def test_status_and_code(cls: type[SmserveError], status: int, code: str) -> None:
    err = cls("something is wrong")
    assert err.status == status
    assert status_of(err) == status
    assert err.code == code
    assert json.loads(error_body(err)) == {"error": code, "message": "something is wrong"}


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (BadRequest, ValueError),
        (Forbidden, PermissionError),
        (InputNotFound, LookupError),
        (PayloadTooLarge, ValueError),
        (UnsupportedContentType, ValueError),
        (InvalidInput, ValueError),
        (ConfigError, ValueError),
        (ModelSpecError, ValueError),
        (ServerStartError, RuntimeError),
        (TransformError, RuntimeError),
        (StackError, RuntimeError),
    ],
)
def test_errors_are_also_the_builtin_they_resemble(cls: type[SmserveError],
                                                   builtin: type[Exception]) -> None:
    with pytest.raises(builtin):
        raise cls("x")


def test_client_errors_are_bad_requests_and_server_errors_are_not() -> None:
    for cls in (Forbidden, InputNotFound, PayloadTooLarge, UnsupportedContentType, InvalidInput):
        assert issubclass(cls, BadRequest)
        assert 400 <= cls.status < 500
    for server in (HandlerError, ModelLoadError, PredictionError, StorageError):
        assert not issubclass(server, BadRequest)
        assert server.status >= 500
    assert issubclass(ModelLoadError, HandlerError)


def test_every_public_error_is_in_the_tree() -> None:
    public = [getattr(errors, name) for name in dir(errors) if name[0].isupper()]
    classes = [obj for obj in public if isinstance(obj, type) and issubclass(obj, BaseException)]
    assert len(classes) >= 16
    assert all(issubclass(cls, SmserveError) for cls in classes)


def test_message_and_context() -> None:
    err = UnsupportedContentType("no codec for text/plain", content_type="text/plain")
    assert str(err) == "no codec for text/plain"
    assert err.message == "no codec for text/plain"
    assert err.context == {"content_type": "text/plain"}
    assert err.args == ("no codec for text/plain",)


def test_exit_codes() -> None:
    assert SmserveError("x").exit_code == 1
    assert BadRequest("x").exit_code == 1
    assert ConfigError("x").exit_code == 2
    assert ModelSpecError("x").exit_code == 2
    assert ServerStartError("x").exit_code == 3
    assert TransformError("x").exit_code == 4
    assert StackError("x").exit_code == 5


def test_context_never_reaches_the_client() -> None:
    err = StorageError("could not read the input", key="a/b.npy", secret="AKIA-SECRET")
    body = error_body(err).decode()
    assert "AKIA-SECRET" not in body
    assert json.loads(body) == {"error": "StorageError", "message": "could not read the input"}


def _raised(err: BaseException) -> BaseException:
    try:
        raise err
    except BaseException as caught:
        return caught


def test_foreign_exceptions_get_a_generic_500_without_their_text() -> None:
    err = _raised(KeyError("aws_secret_access_key=abc123"))
    assert status_of(err) == 500
    payload = json.loads(error_body(err))
    assert payload["error"] == "InternalError"
    assert "KeyError" in payload["message"]
    assert "see the server log" in payload["message"]
    assert "abc123" not in error_body(err).decode()


@pytest.mark.parametrize("err", [ValueError("boom"), PredictionError("predict_fn raised")])
def test_error_body_never_has_a_traceback(err: BaseException) -> None:
    caught = _raised(err)
    try:
        raise RuntimeError("outer") from caught
    except RuntimeError as outer:
        for exc in (caught, outer):
            body = error_body(exc).decode()
            assert "Traceback" not in body
            assert __file__ not in body
            assert "line " not in body
            assert set(json.loads(body)) == {"error", "message"}


def test_error_body_is_utf8_json_bytes() -> None:
    body = error_body(BadRequest("bad é"))
    assert isinstance(body, bytes)
    assert json.loads(body.decode("utf-8"))["message"] == "bad é"
