"""Talk to one container: ``POST /invocations`` with retries, ``GET /execution-parameters``.

An invocation that answers non-2xx, times out or cannot connect is retried
``InvocationsMaxRetries`` times (a short, growing pause between tries), then
raises :class:`~serving.errors.TransformError` whose context says what
happened: ``kind`` (``ClientError``, ``ServerError``, ``Timeout``,
``ConnectionError``), ``status`` (the HTTP status or None), ``detail`` (the
container's message, trimmed) and ``attempts``.

One deliberate difference from the service, which retries every non-2xx
answer: a 403 or 404 (:data:`FINAL_STATUSES`) is not retried. The model
answers them for a request it will refuse again (a bucket outside its
allow-list, an input object that does not exist), so retrying only delays the
same failure; the object fails at once with the same status and message. A 403
also says what it means (:data:`FORBIDDEN_HINT`): the model's allow-list, and
how to set it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from serving.errors import TransformError
from serving.transform.params import parse_execution_parameters

MESSAGE_CHARS = 300
#: Answers the same request gets again: failed at the first try, not retried.
FINAL_STATUSES = frozenset({403, 404})
#: What a 403 from a model means, appended to its message.
FORBIDDEN_HINT = (
    "[a 403 from the model: the request names a bucket or output key outside the model's "
    "allow-list; set SMSERVE_ALLOWED_BUCKETS (and SMSERVE_OUTPUT_PREFIXES) in the model's "
    "container environment: export it in the shell that runs smserve transform or smserve "
    "local up (local up sets it and prints the export line), or set it in model.toml "
    "[environment] or CreateModel's Environment]")


def container_message(body: bytes, limit: int = MESSAGE_CHARS) -> str:
    """A container's error body as one short line (``error: message`` for our JSON errors)."""
    text = ""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and ("message" in doc or "error" in doc):
            parts = [str(doc[k]) for k in ("error", "message") if doc.get(k) not in (None, "")]
            text = ": ".join(parts)
    except ValueError:
        pass
    if not text:
        text = body.decode("utf-8", "replace")
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def new_session(pool_size: int, hosts: int = 1) -> requests.Session:
    """An HTTP session for containers: no proxies from the environment, no urllib3 retries.

    Args:
        pool_size: connections kept open per container.
        hosts: containers (connection pools) the session serves.
    """
    session = requests.Session()
    session.trust_env = False  # a loopback container must never go through HTTP(S)_PROXY
    adapter = HTTPAdapter(pool_connections=max(1, hosts), pool_maxsize=max(1, pool_size),
                          max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Invoker:
    """Invocations against one container.

    Args:
        url: the container's base URL (``http://127.0.0.1:PORT``).
        content_type: ``Content-Type`` for every request (None: no header).
        accept: ``Accept`` for every request (None: no header).
        timeout: seconds an invocation may take (``InvocationsTimeoutInSeconds``).
        retries: retries after a failure (``InvocationsMaxRetries``).
        session: the HTTP session to use (default: a new one sized ``pool_size``).
        pool_size: connections kept open (``MaxConcurrentTransforms``).
        backoff: first pause between tries, doubled each time, at most 5 s.
        sleep: how to pause (tests pass a no-op).
    """

    def __init__(self, url: str, *, content_type: str | None, accept: str | None,
                 timeout: float, retries: int, session: requests.Session | None = None,
                 pool_size: int = 1, backoff: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._own_session = session is None
        self.session = session or new_session(pool_size)
        # None removes requests' defaults (Accept: */*, Accept-Encoding: gzip): the
        # container gets the job's headers and no others it did not ask for.
        self.headers: dict[str, str | None] = {"Accept": accept, "Accept-Encoding": None,
                                               "User-Agent": "smserve-batch-transform"}
        if content_type is not None:
            self.headers["Content-Type"] = content_type

    def close(self) -> None:
        """Close the session when this invoker made it."""
        if self._own_session:
            self.session.close()

    def invoke(self, body: bytes, *, chunked: bool = False) -> bytes:
        """POST ``body`` to ``/invocations`` and return the response body.

        Args:
            body: the request body.
            chunked: send with ``Transfer-Encoding: chunked`` (what the service
                does when ``MaxPayloadInMB`` is 0).

        Raises:
            TransformError: every try failed; see the module docstring for its context.
        """
        attempts = 1 + self.retries
        last: TransformError | None = None
        for attempt in range(attempts):
            if attempt:
                self._sleep(min(5.0, self.backoff * 2 ** (attempt - 1)))
            answer, last = self._once(body, chunked, attempt + 1)
            if answer is not None:
                return answer
            if last is not None and last.context.get("status") in FINAL_STATUSES:
                break
        assert last is not None
        raise last

    def _once(self, body: bytes, chunked: bool, attempt: int
              ) -> tuple[bytes | None, TransformError | None]:
        data: Any = iter([body]) if chunked else body
        try:
            resp = self.session.post(self.url + "/invocations", data=data, headers=self.headers,
                                     timeout=(min(10.0, self.timeout), self.timeout))
        except requests.Timeout as err:
            return None, _failure("Timeout", None, f"no answer within {self.timeout:g} s "
                            "(InvocationsTimeoutInSeconds)", attempt, err)
        except requests.RequestException as err:
            return None, _failure("ConnectionError", None,
                            f"{type(err).__name__}: the container did not answer (did it "
                            "exit? see its log)", attempt, err)
        if 200 <= resp.status_code < 300:
            return resp.content, None
        kind = "ClientError" if 400 <= resp.status_code < 500 else "ServerError"
        detail = container_message(resp.content)
        if resp.status_code == 403:
            detail = f"{detail} {FORBIDDEN_HINT}" if detail else FORBIDDEN_HINT
        return None, _failure(kind, resp.status_code, detail, attempt)

    def execution_parameters(self, timeout: float = 10.0
                             ) -> tuple[dict[str, Any] | None, list[str]]:
        """``GET /execution-parameters``: the container's usable fields, and notes.

        Returns ``(None, notes)`` when the container has none (404, another
        status, no answer): the defaults apply.
        """
        try:
            resp = self.session.get(self.url + "/execution-parameters", timeout=timeout)
        except requests.RequestException as err:
            return None, [f"/execution-parameters did not answer ({type(err).__name__}); "
                          "using defaults"]
        if resp.status_code == 404:
            return None, ["/execution-parameters: 404; using defaults"]
        if resp.status_code != 200:
            return None, [f"/execution-parameters: {resp.status_code}; using defaults"]
        fields, notes = parse_execution_parameters(resp.content)
        return fields, notes


def _failure(kind: str, status: int | None, detail: str, attempts: int,
             cause: Exception | None = None) -> TransformError:
    head = f"{kind}: {status}" if status is not None else kind
    err = TransformError(f"{head}: {detail}" if detail else head, kind=kind, status=status,
                         detail=detail, attempts=attempts)
    err.__cause__ = cause
    return err
