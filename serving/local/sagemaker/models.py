"""``CreateModel``, ``DescribeModel``, ``DeleteModel``, ``ListModels``.

A model is what the service stores: its name, its container (``Image``,
``ModelDataUrl``, ``Environment``) and the rest of the request, kept as
given. Nothing is fetched or started here; a transform job reads the model
when it runs. Errors are the service's: a second model with the same name or
an unknown one is a ``ValidationException`` (the service does not declare
``ResourceNotFound`` for models). Each container's ``Image`` is checked
against the stack's ECR when the store is given an ``image_check``
(:meth:`serving.local.ecr.LocalEcr.check_image`): an image ECR does not hold,
one without a tag or digest, or one outside ECR is refused, as on AWS.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.local.sagemaker.apierrors import ValidationException
from serving.local.sagemaker.resources import arn, in_window, page, sort_items

#: Members of ``CreateModel`` that ``DescribeModel`` gives back as they were sent.
_DESCRIBED = ("PrimaryContainer", "Containers", "InferenceExecutionConfig", "ExecutionRoleArn",
              "VpcConfig")


@dataclass(frozen=True)
class ModelRecord:
    """One model.

    Attributes:
        name: ``ModelName`` as created.
        arn: its ARN.
        request: the ``CreateModel`` request (validated).
        creation_time: epoch seconds.
    """

    name: str
    arn: str
    request: Mapping[str, Any] = field(hash=False)
    creation_time: float = 0.0

    @property
    def containers(self) -> list[Mapping[str, Any]]:
        """``[PrimaryContainer]`` or ``Containers``."""
        if self.request.get("PrimaryContainer"):
            return [self.request["PrimaryContainer"]]
        return list(self.request.get("Containers") or [])

    def describe(self) -> dict[str, Any]:
        """The ``DescribeModel`` answer."""
        out: dict[str, Any] = {"ModelName": self.name}
        out.update({k: self.request[k] for k in _DESCRIBED if k in self.request})
        out.update(CreationTime=self.creation_time, ModelArn=self.arn,
                   EnableNetworkIsolation=bool(self.request.get("EnableNetworkIsolation")))
        return out


class ModelStore:
    """The models of one embedded stack.

    Args:
        region: the stack's region (in ARNs).
        account: the stack's account (in ARNs).
        clock: epoch seconds.
        image_check: raises ValidationException for an ``Image`` the service would refuse
            (None: every image is taken as given).
    """

    def __init__(self, region: str, account: str, clock: Callable[[], float] = time.time,
                 image_check: Callable[[str], None] | None = None) -> None:
        self.region = region
        self.account = account
        self._clock = clock
        self._image_check = image_check
        self._models: dict[str, ModelRecord] = {}
        self._lock = threading.Lock()

    def arn(self, name: str) -> str:
        """The ARN a model named ``name`` has (or would have)."""
        return arn(self.region, self.account, "model", name)

    def get(self, name: str) -> ModelRecord:
        """The model named ``name``.

        Raises:
            ValidationException: there is none (the service's answer).
        """
        with self._lock:
            found = self._models.get(name.lower())
        if found is None:
            raise ValidationException(f'Could not find model "{self.arn(name)}".')
        return found

    def reset(self) -> None:
        """Forget every model."""
        with self._lock:
            self._models.clear()

    # --- operations --------------------------------------------------------------------

    def create(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``CreateModel``."""
        name = request["ModelName"]
        primary, many = request.get("PrimaryContainer"), request.get("Containers")
        if not primary and not many:
            raise ValidationException("Either PrimaryContainer or Containers must be provided; "
                                      "give the model a PrimaryContainer with Image and "
                                      "ModelDataUrl")
        if primary and many:
            raise ValidationException("PrimaryContainer and Containers cannot both be "
                                      "provided; use PrimaryContainer for one container")
        record = ModelRecord(name, self.arn(name), dict(request), self._clock())
        if self._image_check is not None:
            for container in record.containers:
                self._image_check(str(container.get("Image") or ""))
        with self._lock:
            if name.lower() in self._models:
                raise ValidationException(
                    f'Cannot create already existing model "{record.arn}".')
            self._models[name.lower()] = record
        return {"ModelArn": record.arn}

    def describe(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``DescribeModel``."""
        return self.get(request["ModelName"]).describe()

    def delete(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``DeleteModel`` (jobs already running keep their copy)."""
        name = request["ModelName"]
        with self._lock:
            if self._models.pop(name.lower(), None) is None:
                raise ValidationException(f'Could not find model "{self.arn(name)}".')
        return {}

    def list(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``ListModels``: ``NameContains``, creation time window, sort, pages."""
        with self._lock:
            models = list(self._models.values())
        needle = (request.get("NameContains") or "").lower()
        models = [m for m in models if needle in m.name.lower()
                  and in_window(m.creation_time, request.get("CreationTimeAfter"),
                                request.get("CreationTimeBefore"))]
        models = sort_items(models, request, {"Name": lambda m: m.name.lower(),
                                              "CreationTime": lambda m: m.creation_time},
                            "CreationTime")
        chunk, token = page(models, request)
        out: dict[str, Any] = {"Models": [{"ModelName": m.name, "ModelArn": m.arn,
                                           "CreationTime": m.creation_time} for m in chunk]}
        if token:
            out["NextToken"] = token
        return out
