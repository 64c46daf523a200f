"""The embedded SageMaker API: operations by name, JSON in, JSON (or a service error) out.

:class:`SageMakerService` is what :mod:`serving.local.sagemaker.app` hands
each ``X-Amz-Target: SageMaker.<Operation>`` request to. It checks the body
against botocore's service model (:mod:`~serving.local.sagemaker.validate`)
and calls the model or job store. Timestamps go out as epoch seconds, as the
JSON protocol has them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from serving.aws import ClientFactory
from serving.local.sagemaker.apierrors import (
    ApiError,
    SerializationException,
    UnknownOperation,
    error_document,
)
from serving.local.sagemaker.execution import ImagePull
from serving.local.sagemaker.jobs import JobStore
from serving.local.sagemaker.models import ModelStore
from serving.local.sagemaker.resources import DEFAULT_ACCOUNT
from serving.local.sagemaker.validate import RequestValidator
from serving.settings import Settings

_log = logging.getLogger("smserve.local.sagemaker")


class SageMakerService:
    """Models and transform jobs of one embedded stack.

    Args:
        settings: pointed at the stack itself (its S3 and Logs), with the
            environment every container starts from.
        account: the account in ARNs (moto's default).
        echo: receives one line per job status change.
        clock: epoch seconds.
        image_check: ``CreateModel``'s check of each ``Image`` (the stack's ECR;
            None: images are taken as given).
        image_pull: where the Docker runner pulls an ``Image`` from (the stack's
            registry and its login); None: the engine runs ``Image`` as given.
    """

    def __init__(self, settings: Settings, *, account: str = DEFAULT_ACCOUNT,
                 echo: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 image_check: Callable[[str], None] | None = None,
                 image_pull: ImagePull | None = None) -> None:
        self.settings = settings
        self.validator = RequestValidator()
        self.models = ModelStore(settings.region, account, clock, image_check)
        runner_env = {k: v for k, v in settings.environ.items()
                      if not k.startswith("AWS_ENDPOINT_URL_")}
        self.pool: Any = None
        if settings.warm_idle_s:  # smserve local up: servers stay warm between jobs
            from serving.runners.process import ProcessRunner
            from serving.runners.warm import WarmPool

            self.pool = WarmPool(ProcessRunner(env=runner_env, stop_grace=5.0,
                                               startup_timeout=settings.container_startup_timeout),
                                 idle_timeout=settings.warm_idle_s, log=echo)
            self.pool.start_reaper()
        self.jobs = JobStore(self.models, ClientFactory(settings), runner_env=runner_env,
                             startup_timeout=settings.container_startup_timeout, echo=echo,
                             clock=clock, image_pull=image_pull,
                             startup_delay=settings.local_job_startup_seconds, pool=self.pool)
        self._operations: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "CreateModel": self.models.create,
            "DescribeModel": self.models.describe,
            "DeleteModel": self.models.delete,
            "ListModels": self.models.list,
            "CreateTransformJob": self.jobs.create,
            "DescribeTransformJob": self.jobs.describe,
            "StopTransformJob": self.jobs.stop,
            "ListTransformJobs": self.jobs.list,
        }

    @property
    def operations(self) -> list[str]:
        """The operations served."""
        return sorted(self._operations)

    def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``operation`` on ``params`` (raises :class:`ApiError`)."""
        handler = self._operations.get(operation)
        if handler is None:
            raise UnknownOperation(
                f"SageMaker.{operation} is not served by the embedded stack; it serves "
                f"{', '.join(self.operations)}")
        return handler(self.validator.check(operation, params))

    def handle(self, operation: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """One HTTP request: ``(status, JSON document)``; never raises."""
        try:
            params = json.loads(body or b"{}")
            if not isinstance(params, dict):
                raise SerializationException("the request body must be a JSON object")
        except ValueError:
            return 400, error_document(SerializationException("the request body is not JSON"))
        except ApiError as err:
            return err.status, error_document(err)
        try:
            return 200, self.call(operation, params)
        except ApiError as err:
            return err.status, error_document(err)
        except Exception as err:  # a bug: answer like the service, keep the traceback here
            _log.exception("SageMaker.%s failed", operation)
            return 500, {"__type": "InternalFailure",
                         "message": f"{type(err).__name__} in the embedded SageMaker API; see "
                                    "the stack's log"}

    def job_record(self, name: str) -> dict[str, Any] | None:
        """The full record of a job (for ``smserve replay``), or None."""
        try:
            return self.jobs.record(name)
        except ApiError:
            return None

    def reset(self) -> None:
        """Stop every job, forget every job and model."""
        self.jobs.reset()
        self.models.reset()

    def shutdown(self) -> None:
        """Stop every running job and wait for its containers to end; stop the warm ones."""
        self.jobs.shutdown()
        if self.pool is not None:
            self.pool.close()
