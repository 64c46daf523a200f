"""Routing on the stack's one port: SageMaker to us, everything else to moto.

SageMaker speaks AWS's JSON 1.1 protocol: ``POST /`` with
``X-Amz-Target: SageMaker.<Operation>`` and a JSON body. moto tells its
services apart by host name and signing scope instead, so the middleware
looks at that header first: SageMaker requests go to
:class:`~serving.local.sagemaker.service.SageMakerService`, every other
request (S3, SQS, ECR, IAM, STS, Logs, ``/moto-api/``) goes to moto's app
unchanged. Two more paths are ours:

- ``GET /_smserve/sagemaker/transform-jobs/<name>``: a job's full record
  (description, model, per-object result) for ``smserve replay``;
- ``POST /moto-api/reset`` also stops and forgets every model and job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

from serving.local.sagemaker.service import SageMakerService

TARGET_PREFIX = "SageMaker."
#: Where a job's record is served (``smserve replay`` reads it).
RECORD_PATH = "/_smserve/sagemaker/transform-jobs/"
CONTENT_TYPE = "application/x-amz-json-1.1"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SageMakerMiddleware:
    """A WSGI app that serves SageMaker and hands every other request to ``app``.

    Args:
        app: moto's WSGI app (or any other).
        service: the SageMaker API.
    """

    def __init__(self, app: WsgiApp, service: SageMakerService) -> None:
        self.app = app
        self.service = service

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if target.startswith(TARGET_PREFIX):
            operation = target[len(TARGET_PREFIX):]
            status, doc = self.service.handle(operation, _body(environ))
            return _respond(start_response, status, doc, CONTENT_TYPE)
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path.startswith(RECORD_PATH) and method == "GET":
            name = unquote(path[len(RECORD_PATH):]).strip("/")
            record = self.service.job_record(name)
            if record is None:
                return _respond(start_response, 404, {
                    "__type": "ResourceNotFound",
                    "message": f"Could not find requested job with name {name}"})
            return _respond(start_response, 200, record)
        if path.rstrip("/") == "/moto-api/reset" and method == "POST":
            self.service.reset()
        return self.app(environ, start_response)


def _body(environ: dict[str, Any]) -> bytes:
    from werkzeug.wrappers import Request

    data: bytes = Request(environ).get_data()
    return data


def _respond(start_response: StartResponse, status: int, doc: dict[str, Any],
             content_type: str = "application/json") -> list[bytes]:
    from http import HTTPStatus

    body = json.dumps(doc, default=str).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}", [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("x-amzn-RequestId", str(uuid.uuid4())),
    ])
    return [body]
