"""The SageMaker API's error codes, as errors of our own tree.

Each error knows its HTTP status and the ``__type`` the service answers with;
:func:`error_document` turns one into the JSON body botocore parses
(``{"__type": code, "message": text}``; modeled errors such as
``ResourceNotFound`` carry ``Message``, the member their shape declares).
"""

from __future__ import annotations

from typing import Any

from serving.errors import BadRequest


class ApiError(BadRequest):
    """An error the embedded SageMaker API answers a client with."""

    status = 400
    code = "ValidationException"
    #: The body member botocore reads the message from (``Message`` for modeled errors).
    message_member = "message"


class ValidationException(ApiError):
    """The request breaks a constraint of the service model or of the service."""

    code = "ValidationException"


class ResourceInUse(ApiError):
    """A resource with that name exists already."""

    code = "ResourceInUse"
    message_member = "Message"


class ResourceNotFound(ApiError, LookupError):
    """The named resource does not exist."""

    code = "ResourceNotFound"
    message_member = "Message"


class SerializationException(ApiError):
    """The body is not JSON, or a member has the wrong type."""

    code = "SerializationException"


class UnknownOperation(ApiError):
    """The operation is not one the embedded API serves."""

    code = "UnknownOperationException"


def error_document(err: ApiError) -> dict[str, Any]:
    """The JSON body for ``err``."""
    return {"__type": err.code, err.message_member: err.message}
