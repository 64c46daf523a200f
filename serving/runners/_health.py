"""``GET /ping`` against a local container, and whether its answer means "ready"."""

from __future__ import annotations

import http.client
import json


def is_healthy(status: int, body: bytes) -> bool:
    """True for a 200 that does not say the model is still loading.

    SageMaker wants a 200 with an empty body. multi-model-server answers 200
    with ``{"status": "Healthy"}`` once its worker is up, and also 200 with
    ``"Unhealthy"`` or ``"Partial Healthy"`` while it is still loading: those
    are not ready yet.
    """
    if status != 200:
        return False
    if not body.strip():
        return True
    try:
        doc = json.loads(body)
    except ValueError:
        return b"unhealthy" not in body.lower()
    if isinstance(doc, dict) and "status" in doc:
        return str(doc["status"]).strip().lower() == "healthy"
    return True


def ping(port: int, timeout: float, host: str = "127.0.0.1") -> tuple[bool, str]:
    """Ping ``host:port`` once: ``(ready, what it answered)``."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException) as err:
        return False, f"{type(err).__name__}: {err}"
    finally:
        conn.close()
    text = body[:200].decode("utf-8", "replace").strip()
    return is_healthy(resp.status, body), f"{resp.status} {text}".strip()
