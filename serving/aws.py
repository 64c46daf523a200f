"""The one factory every boto3 client in the toolkit comes from.

It honours the standard ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``
variables (read once into :class:`~serving.settings.Settings`), so pointing a
whole process at the embedded stack is one environment variable, and nothing
below this factory knows whether it talks to AWS or to the local stack.
"""

from __future__ import annotations

import threading
from typing import Any

from serving.settings import Settings


class ClientFactory:
    """Builds and caches boto3 clients for one :class:`Settings`.

    Args:
        settings: where endpoints and the region come from.
        session: a ``boto3.session.Session`` (default: a new one).
        max_pool_connections: HTTP connections per client (parallel S3 reads).
    """

    def __init__(self, settings: Settings, session: Any | None = None,
                 max_pool_connections: int = 32) -> None:
        self._settings = settings
        self._session = session
        self._pool = max(max_pool_connections, settings.fetch_concurrency)
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def settings(self) -> Settings:
        """The settings this factory was built from."""
        return self._settings

    def client(self, service: str) -> Any:
        """A (cached) boto3 client for ``service``."""
        with self._lock:
            found = self._clients.get(service)
            if found is None:
                found = self._clients[service] = self._make(service)
            return found

    def _make(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        env = self._settings.environ
        session: Any = self._session or boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
            profile_name=env.get("AWS_PROFILE") or None,
        )
        config = Config(
            max_pool_connections=self._pool,
            retries={"max_attempts": 4, "mode": "standard"},
            s3={"addressing_style": "path"} if service == "s3" else None,
        )
        kwargs: dict[str, Any] = {"region_name": self._settings.region, "config": config}
        endpoint = self._settings.endpoint_for(service)
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        return session.client(service, **kwargs)
