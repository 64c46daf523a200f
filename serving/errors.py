"""One exception tree for the whole toolkit.

Every error carries the context a person needs (a content type, a key, a
model folder) and knows the HTTP status a client should get for it. Servers
turn an error into ``{"error": <code>, "message": <text>}`` with
:func:`error_body`; the traceback goes to the log, never to the client.
Errors also subclass the built-in exception they resemble, so callers that
only know Python's tree still catch them.
"""

from __future__ import annotations

import json
from typing import Any


class SmserveError(Exception):
    """Root of every error this toolkit raises on purpose."""

    status: int = 500
    code: str = "InternalError"
    exit_code: int = 1

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context

    def __str__(self) -> str:
        return self.message


# --- client errors (4xx): the request is wrong; say what to fix -------------


class BadRequest(SmserveError, ValueError):
    """The request is malformed or names something it may not."""

    status = 400
    code = "BadRequest"


class Forbidden(BadRequest, PermissionError):
    """The request names a bucket or key outside what this model may touch."""

    status = 403
    code = "Forbidden"


class InputNotFound(BadRequest, LookupError):
    """An input object the request names does not exist."""

    status = 404
    code = "InputNotFound"


class PayloadTooLarge(BadRequest):
    """A body or an input object is over the configured limit."""

    status = 413
    code = "PayloadTooLarge"


class UnsupportedContentType(BadRequest):
    """No codec for this content type (or accept type)."""

    status = 415
    code = "UnsupportedContentType"


class InvalidInput(BadRequest):
    """The body decoded, but its value is not what the model takes (shape, dtype)."""

    status = 422
    code = "InvalidInput"


# --- our side (5xx) ----------------------------------------------------------


class HandlerError(SmserveError):
    """A model's handler module is missing, broken, or breaks the contract."""

    status = 500
    code = "HandlerError"


class ModelLoadError(HandlerError):
    """``model_fn`` raised."""

    code = "ModelLoadError"


class PredictionError(SmserveError):
    """A handler raised while answering a request."""

    status = 500
    code = "PredictionError"


class StorageError(SmserveError):
    """S3 failed in a way that is not the request's fault."""

    status = 502
    code = "StorageError"


class NoSpaceError(StorageError, OSError):
    """A local disk is full (ENOSPC): names the path, what is free and what was needed."""

    status = 507
    code = "NoSpace"
    exit_code = 7


# --- tool errors (CLI, config, jobs) ----------------------------------------


class ConfigError(SmserveError, ValueError):
    """A setting, a config file or a CLI flag has a bad value."""

    status = 400
    code = "ConfigError"
    exit_code = 2


class ModelSpecError(ConfigError):
    """A ``models/NAME/`` folder is incomplete or its ``model.toml`` is wrong."""

    code = "ModelSpecError"


class ServerStartError(SmserveError, RuntimeError):
    """The model server did not come up (model failed to load, port in use...)."""

    code = "ServerStartError"
    exit_code = 3


class TransformError(SmserveError, RuntimeError):
    """A batch transform could not run, or some of its objects failed."""

    code = "TransformError"
    exit_code = 4


class StackError(SmserveError, RuntimeError):
    """The embedded AWS stack could not start."""

    code = "StackError"
    exit_code = 5


def error_body(err: BaseException) -> bytes:
    """The JSON body a client gets for ``err`` (never a traceback).

    Args:
        err: any exception; ones outside our tree become a generic 500 text.

    Returns:
        ``{"error": code, "message": text}`` encoded as UTF-8 JSON.
    """
    if isinstance(err, SmserveError):
        payload = {"error": err.code, "message": err.message}
    else:
        payload = {
            "error": "InternalError",
            "message": f"{type(err).__name__} in the model's handler; see the server log",
        }
    return json.dumps(payload).encode()


def status_of(err: BaseException) -> int:
    """The HTTP status for ``err``."""
    return err.status if isinstance(err, SmserveError) else 500


class ImageError(SmserveError, RuntimeError):
    """A serving image could not be built or pushed (no engine, a failed step, a refused push)."""

    code = "ImageError"
    exit_code = 6
