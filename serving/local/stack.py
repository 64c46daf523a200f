"""Run moto's server on loopback as the embedded AWS stack.

One endpoint serves S3, SQS, ECR, IAM, STS and CloudWatch Logs; clients need
only ``AWS_ENDPOINT_URL=http://127.0.0.1:PORT`` (and any dummy credentials).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from serving.errors import StackError
from serving.ports import free_port, is_free

#: Credentials the embedded stack accepts (moto accepts any).
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class LocalStack:
    """moto's server in a thread of this process, on ``127.0.0.1``.

    Args:
        port: the port to listen on; None picks a free one.
        region: the region clients should use.
    """

    def __init__(self, port: int | None = None, region: str = "us-east-1") -> None:
        if port is not None and not is_free(port):
            raise StackError(
                f"port {port} is in use; pick another with --port, or omit it for a free one"
            )
        self.port = port or free_port()
        self.region = region
        self._server: Any = None

    @property
    def endpoint_url(self) -> str:
        """The one URL every AWS client should use."""
        return f"http://127.0.0.1:{self.port}"

    def environ(self) -> dict[str, str]:
        """Environment variables that point boto3 (and the AWS CLI) at the stack."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            **LOCAL_CREDENTIALS,
        }

    def exports(self) -> str:
        """``export`` lines for a shell."""
        return "\n".join(f"export {k}={v}" for k, v in self.environ().items())

    def start(self, timeout: float = 20.0) -> LocalStack:
        """Start the server and wait until it answers."""
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        self.stop()
        raise StackError(f"the embedded stack did not answer on {self.endpoint_url} "
                         f"within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def reset(self) -> None:
        """Forget every bucket, queue and repository (moto's reset API)."""
        req = urllib.request.Request(self.endpoint_url + "/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running_stack(port: int | None = None, region: str = "us-east-1") -> Iterator[LocalStack]:
    """Context manager: a started :class:`LocalStack`, stopped on exit."""
    stack = LocalStack(port=port, region=region).start()
    try:
        yield stack
    finally:
        stack.stop()


def stack_environ(stack: LocalStack, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the stack's endpoint, region and credentials on top."""
    return {**base, **stack.environ()}
