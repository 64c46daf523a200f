"""The multi-model-server entry point: ``serving.server.handler_service:handle``.

MMS imports this module in each worker process and calls :func:`handle`
once with ``data=None`` to load the model, then once per batch of requests.
Unlike the toolkit's default transformer, every request of a batch gets its
own content type, accept and answer (status, content type, body), and an
error answers ``{"error", "message"}`` JSON with the error's status; the
traceback goes to the log only.

When ``model_fn`` fails, the cause is written to ``<run dir>/model_error.txt``
so the ``serve`` supervisor can stop the server and exit non-zero, instead
of MMS's own behaviour (a 200 on ``/ping`` with no model, for ever).
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Any

from sagemaker_inference.default_handler_service import DefaultHandlerService

from serving.errors import BadRequest, PayloadTooLarge, error_body, status_of
from serving.handler import Handlers, load_handlers
from serving.server.markers import ANSWERED, MODEL_ERROR_FILE, MODEL_READY_FILE
from serving.settings import Settings

log = logging.getLogger("smserve.worker")



def _header(headers: dict[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower() and isinstance(value, str):
            return value
    return None


class HandlerService(DefaultHandlerService):
    """Drives one model's :class:`~serving.handler.Handlers` inside an MMS worker.

    Args:
        settings: read once when the worker starts.
    """

    def __init__(self, settings: Settings) -> None:
        super().__init__(transformer=None)
        self._settings = settings
        self._handlers: Handlers | None = None
        self._model: Any = None

    def initialize(self, context: Any) -> None:
        """Load the handler module and the model; record failure for the supervisor."""
        model_dir = Path(context.system_properties.get("model_dir") or self._settings.model_dir)
        try:
            self._handlers = load_handlers(model_dir, self._settings.program)
            self._model = self._handlers.load_model(model_dir)
        except Exception as err:
            trace = traceback.format_exc()
            log.error("model failed to load from %s:\n%s", model_dir, trace)
            self._mark(MODEL_ERROR_FILE, f"{err}\n\n{trace}")
            raise
        self._warm_up()
        self._mark(MODEL_READY_FILE, str(model_dir))
        log.info("model loaded from %s", model_dir)

    def _warm_up(self) -> None:
        """Build the S3 client now, not in the first request (importing boto3 takes seconds)."""
        module = self._handlers.module if self._handlers is not None else None
        if module is not None and any(getattr(v, "__name__", "") == "serving.s3refs"
                                      for v in vars(module).values()):
            from serving import s3refs

            s3refs.runtime()

    def _mark(self, name: str, text: str) -> None:
        if self._settings.run_dir is not None:
            path = self._settings.run_dir / name
            # One temporary name per worker: several workers load at once, and a shared one
            # would be renamed away under the slower worker (FileNotFoundError kills it).
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(text)
            tmp.replace(path)

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[bytes]:
        """Answer every request of an MMS batch on its own terms."""
        assert self._handlers is not None
        answers: list[bytes] = []
        for idx, item in enumerate(data):
            headers = context.get_all_request_header(idx) or {}
            body = item.get("body")
            if body is None:
                body = item.get("data", b"")
            if isinstance(body, str):
                body = body.encode()
            elif isinstance(body, bytearray):
                body = bytes(body)
            content_type = _header(headers, "Content-Type") or ""
            accept = _header(headers, "Accept") or ""
            if not accept or accept.strip() == "*/*":
                accept = self._settings.default_accept
            try:
                if len(body) > self._settings.max_payload_bytes:
                    raise PayloadTooLarge(
                        f"the body is {len(body):,} bytes, over the model server's limit of "
                        f"{self._settings.max_payload_bytes:,}; send fewer records per request "
                        "(MaxPayloadInMB) or raise SAGEMAKER_MAX_PAYLOAD_IN_MB")
                if not content_type:
                    raise BadRequest("the request has no Content-Type; set it to the type of "
                                     "the body, e.g. application/json")
                response = self._handlers.invoke(self._model, body, content_type, accept)
            except Exception as err:
                status = status_of(err)
                answered = ANSWERED.format(index=idx, status=status)
                if status >= 500:
                    log.error("request %d failed:\n%s%s", idx, traceback.format_exc(), answered)
                else:
                    log.warning("request %d refused (%d): %s\n%s", idx, status, err, answered)
                context.set_response_status(status, type(err).__name__, idx)
                context.set_response_content_type(idx, "application/json")
                answers.append(error_body(err))
                continue
            context.set_response_content_type(idx, response.content_type)
            answers.append(response.body)
        return answers


_service: HandlerService | None = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[bytes] | None:
    """MMS entry point: load on the first call (``data is None``), then answer."""
    global _service
    if data is None:
        service = HandlerService(Settings.from_environ())
        service.initialize(context)
        _service = service
        return None
    if _service is None:  # pragma: no cover - MMS always loads first
        raise RuntimeError("handle() called before the model was loaded")
    return _service.handle(data, context)
