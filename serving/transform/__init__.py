"""Batch transform, run locally as the service runs it.

The parts, each usable on its own:

- :class:`TransformJobSpec` (``spec``): a ``CreateTransformJob`` request, validated.
- ``split`` / ``batching``: records from raw bytes, request bodies from records.
- :class:`DataPlane` (``dataplane``): list, split, batch, invoke, assemble, write.
- :class:`ProcessRunner` (re-exported from ``serving.runners``): model servers as
  local processes; the runners live in their own package below this one.
- :func:`run_transform` (``job``): the three above, for one job.
- :class:`DataTransfer`, :func:`predict`: records in, decoded answers out.
"""

from __future__ import annotations

from serving.runners.process import Container, ProcessRunner
from serving.transform.batching import Batch, MultiRecord, SingleRecord, make_batcher
from serving.transform.dataplane import DataPlane, Progress
from serving.transform.job import prepare_model, run_transform
from serving.transform.params import BatchParams, container_environment, resolve
from serving.transform.predict import predict
from serving.transform.result import JobResult, ObjectResult
from serving.transform.spec import TransformJobSpec, parse_s3_uri
from serving.transform.split import Record, decompress, split_records
from serving.transform.transfer import DataTransfer

__all__ = [
    "Batch",
    "BatchParams",
    "Container",
    "DataPlane",
    "DataTransfer",
    "JobResult",
    "MultiRecord",
    "ObjectResult",
    "ProcessRunner",
    "Progress",
    "Record",
    "SingleRecord",
    "TransformJobSpec",
    "container_environment",
    "decompress",
    "make_batcher",
    "parse_s3_uri",
    "predict",
    "prepare_model",
    "resolve",
    "run_transform",
    "split_records",
]
