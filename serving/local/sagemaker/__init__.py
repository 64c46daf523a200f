"""The embedded stack's SageMaker API: models and batch transform jobs that really run.

Served on the stack's one port next to moto's services (see
:mod:`~serving.local.sagemaker.app` for the routing): ``CreateModel``,
``DescribeModel``, ``DeleteModel``, ``ListModels``, ``CreateTransformJob``,
``DescribeTransformJob``, ``StopTransformJob``, ``ListTransformJobs``.

- :mod:`~serving.local.sagemaker.validate`: requests checked against botocore's model.
- :mod:`~serving.local.sagemaker.models`, :mod:`~serving.local.sagemaker.jobs`: the resources.
- :mod:`~serving.local.sagemaker.execution`: a job, run in the background.
- :mod:`~serving.local.sagemaker.artifacts`: ``ModelDataUrl`` fetched and extracted safely.
- :mod:`~serving.local.sagemaker.logs`: the job's CloudWatch log streams.
- :mod:`~serving.local.sagemaker.replay`: re-send a failed object's records (``smserve replay``).
"""

from __future__ import annotations

from serving.local.sagemaker.app import SageMakerMiddleware
from serving.local.sagemaker.service import SageMakerService

__all__ = ["SageMakerMiddleware", "SageMakerService"]
