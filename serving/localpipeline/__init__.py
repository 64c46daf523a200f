"""The local pipeline run: the whole model graph on the embedded stack (or AWS), in one call.

``smserve pipeline run`` is this package::

    from serving.localpipeline import load_graph, run_pipeline

    report = run_pipeline(load_graph("models"), clients, "s3://my-bucket/videos/2026/11/")
    report.exit_code   # 0 only when every model succeeded

One local batch transform per model, each as soon as everything it depends
on has finished, independent models at the same time within the GPU-memory
and CPU-worker budgets (:mod:`~serving.localpipeline.plan`); finished
outputs are skipped, so a rerun redoes only what is missing.

Modules: ``plan`` (budgets and the chosen plan), ``scheduler`` (threads,
dependencies, budgets; no I/O), ``inputs`` (listing, requests, existence
checks), ``view`` (the live view), ``report`` (the result), ``run``
(:func:`run_pipeline`).
"""

from __future__ import annotations

from serving.localpipeline.inputs import ModelWork
from serving.localpipeline.plan import ModelNeeds, Plan, Resources, detect_gpu_memory_mb, plan
from serving.localpipeline.report import ModelReport, PipelineReport, report_message
from serving.localpipeline.run import (
    WORK_PREFIX,
    RunModel,
    TransformRunner,
    job_name,
    load_graph,
    run_pipeline,
)
from serving.localpipeline.scheduler import ModelResult, RunOne, Scheduler
from serving.localpipeline.view import LiveView

__all__ = [
    "WORK_PREFIX",
    "LiveView",
    "ModelNeeds",
    "ModelReport",
    "ModelResult",
    "ModelWork",
    "PipelineReport",
    "Plan",
    "Resources",
    "RunModel",
    "RunOne",
    "Scheduler",
    "TransformRunner",
    "detect_gpu_memory_mb",
    "job_name",
    "load_graph",
    "plan",
    "report_message",
    "run_pipeline",
]
