"""Run moto's server on loopback as the embedded AWS stack, with our SageMaker API.

One endpoint serves S3, SQS, ECR, IAM, STS and CloudWatch Logs (moto) and the
SageMaker API whose transform jobs really run (:mod:`serving.local.sagemaker`,
routed by its ``X-Amz-Target`` header); clients need only
``AWS_ENDPOINT_URL=http://127.0.0.1:PORT`` (and any dummy credentials).

Where Debian's ``docker-registry`` is installed, a real registry runs beside
it on another loopback port, behind the stack's ECR API
(:mod:`serving.local.ecr`): ``smserve image push`` pushes layers there, and
``CreateModel`` accepts only images that ECR holds.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serving.errors import StackError
from serving.ports import free_port, is_free
from serving.settings import Settings

#: Credentials the embedded stack accepts (moto accepts any).
LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


class LocalStack:
    """moto's server and the SageMaker API in a thread of this process, on ``127.0.0.1``.

    Args:
        port: the port to listen on; None picks a free one.
        region: the region clients should use.
        settings: what transform jobs' containers start from (their environment,
            ``SMSERVE_CONTAINER_STARTUP_TIMEOUT``); default: the process environment.
        echo: receives one line per transform job status change.
        state: a folder that keeps buckets, objects, queues, models and finished
            jobs across restarts (:mod:`serving.local.state`); None keeps nothing.

    Attributes:
        sagemaker: the SageMaker API (:class:`~serving.local.sagemaker.SageMakerService`),
            once started.
    """

    def __init__(self, port: int | None = None, region: str = "us-east-1", *,
                 settings: Settings | None = None,
                 echo: Callable[[str], None] | None = None,
                 state: Path | None = None) -> None:
        if port is not None and not is_free(port):
            raise StackError(
                f"port {port} is in use; pick another with --port, or omit it for a free one"
            )
        self.port = port or free_port()
        self.region = region
        self._base = settings
        self._echo = echo
        self.state = state
        #: What was restored from ``state`` at start (counts), or None.
        self.restored: dict[str, int] | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.sagemaker: Any = None
        self.registry: Any = None
        self.ecr: Any = None
        #: One line per part that could not run (the registry), for the caller to print.
        self.notices: list[str] = []

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

    def settings(self) -> Settings:
        """Settings pointed at the stack (its endpoint for every service, its region)."""
        base = self._base or Settings.from_environ()
        env = {k: v for k, v in base.environ.items() if not k.startswith("AWS_ENDPOINT_URL_")}
        env.update(self.environ())
        return base.with_changes(endpoint_url=self.endpoint_url, service_endpoints={},
                                 region=self.region, environ=env)

    def start(self, timeout: float = 20.0) -> LocalStack:
        """Start the server and wait until it answers."""
        import logging

        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        from serving.local.ecr import EcrMiddleware, LocalEcr
        from serving.local.sagemaker import SageMakerMiddleware, SageMakerService
        from serving.local.sagemaker.resources import DEFAULT_ACCOUNT

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        try:
            self.registry = self._start_registry()
            self.ecr = LocalEcr(DEFAULT_ACCOUNT, self.region, self.registry)
            self.sagemaker = SageMakerService(self.settings(), echo=self._echo,
                                              image_check=self.ecr.check_image,
                                              image_pull=self.ecr.pull_source)
            app = EcrMiddleware(SageMakerMiddleware(DomainDispatcherApplication(create_backend_app),
                                                    self.sagemaker), self.ecr)
            try:
                self._server = make_server("127.0.0.1", self.port, app, threaded=True,
                                           request_handler=MotoRequestHandler)
            except OSError as err:
                raise StackError(f"cannot listen on 127.0.0.1:{self.port} ({err}); pick another "
                                 "port with --port, or omit it for a free one") from err
            self._thread = threading.Thread(target=self._server.serve_forever,
                                            name=f"stack-{self.port}", daemon=True)
            self._thread.start()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(self.endpoint_url + "/moto-api/", timeout=2):
                        pass
                except (urllib.error.URLError, OSError):
                    time.sleep(0.05)
                    continue
                self._load_state()
                return self
            raise StackError(f"the embedded stack did not answer on {self.endpoint_url} "
                             f"within {timeout:.0f} s")
        except BaseException:
            # A failed start, Ctrl-C or a stop signal while starting: nothing started may
            # outlive it, and nothing is saved (the state folder keeps what it had).
            self.stop(save=False)
            raise

    def _start_registry(self) -> Any:
        """The registry behind ECR, started; None (and a notice) when there is no binary."""
        from serving.local.registry import BINARY_VARIABLE, LocalRegistry, find_binary

        environ = (self._base or Settings.from_environ()).environ
        binary = find_binary(environ)
        if binary is None:
            self.notices.append(
                "no image registry: ECR holds only images recorded with PutImage and "
                "`smserve image push` cannot push (apt-get install -y docker-registry, or set "
                f"{BINARY_VARIABLE} to a registry binary)")
            return None
        try:
            return LocalRegistry(binary).start()
        except StackError as err:
            self.notices.append(f"no image registry ({err.message}); ECR holds only images "
                                "recorded with PutImage")
            return None

    @property
    def registry_address(self) -> str | None:
        """``127.0.0.1:PORT`` of the registry behind ECR, or None when none runs."""
        return self.registry.address if self.registry is not None else None

    def _load_state(self) -> None:
        if self.state is None:
            return
        from serving.local import state

        if state.has_state(self.state):
            try:
                self.restored = state.load(self, self.state)
            except BaseException:
                self.stop(save=False)
                raise

    def stop(self, *, save: bool = True) -> None:
        """Stop running transform jobs (and their containers), then the server (idempotent).

        With ``state``, what the stack holds is saved there first (``save``).
        """
        jobs = None
        if save and self.state is not None and self._server is not None:
            from serving.local.state import INTERRUPTED

            jobs = self.sagemaker.jobs.export(INTERRUPTED)
        if self.sagemaker is not None:
            self.sagemaker.shutdown()
        try:
            if jobs is not None and self.state is not None:
                from serving.local import state

                state.save(self, self.state, jobs)
        finally:
            if self._server is not None:
                if self._thread is not None and self._thread.is_alive():
                    self._server.shutdown()  # waits for serve_forever: only when it runs
                self._server.server_close()
                self._server = None
            if self._thread is not None:
                self._thread.join(timeout=10)
                self._thread = None
            if self.registry is not None:
                self.registry.stop()
                self.registry = None

    def reset(self) -> None:
        """Forget every bucket, queue, repository, model and job (moto's reset API)."""
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
