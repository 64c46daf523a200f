"""What the local pipeline run may use, and the plan it chose: order, groups, budgets.

Two budgets bound what runs at once:

- **GPU memory.** Each model's declared ``gpu_memory_mb`` (times its
  ``instance_count``: locally every instance runs on this machine) counts
  against the budget; models whose sum exceeds it never run together. A
  model that alone needs more than the budget runs with no other GPU model.
  With a budget of 0 (no GPU), every GPU model (``image = "gpu"`` or a
  declared ``gpu_memory_mb``) runs on CPU, one at a time.
- **CPU workers.** Each model's ``cpu_workers`` (times ``instance_count``)
  counts against the machine's CPUs; a model that alone needs more than the
  machine has runs alone.

The default GPU budget is what GPU 0 reports free through cupy, when cupy is
importable and sees a GPU; the default CPU count is :func:`os.cpu_count`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.pipeline import Graph

MB = 1024 * 1024


def detect_gpu_memory_mb() -> tuple[int, str]:
    """What GPU 0 reports free, in MB, through cupy; 0 without cupy or a GPU.

    Returns:
        ``(megabytes, where the figure came from)``.
    """
    try:
        import cupy  # type: ignore[import-not-found,unused-ignore]
    except Exception as err:  # ImportError, or a CUDA library that fails to load
        return 0, f"no GPU: cupy is not importable ({type(err).__name__})"
    try:
        if int(cupy.cuda.runtime.getDeviceCount()) < 1:
            return 0, "no GPU: cupy sees none"
        free, total = cupy.cuda.Device(0).mem_info
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props.get("name", b"GPU")
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    except Exception as err:  # no driver, no device: cupy raises its own errors
        return 0, f"no GPU: cupy could not query one ({type(err).__name__})"
    return int(free) // MB, (f"GPU 0 ({name}) reports {int(free) // MB} MB free of "
                             f"{int(total) // MB} MB")


@dataclass(frozen=True)
class Resources:
    """The budgets a run may use.

    Attributes:
        gpu_memory_mb: GPU memory the models may declare at once (0: no GPU).
        cpu_count: CPU workers the models may ask for at once.
        gpu_source: where ``gpu_memory_mb`` came from, for the plan.
        cpu_source: where ``cpu_count`` came from, for the plan.
    """

    gpu_memory_mb: int
    cpu_count: int
    gpu_source: str = "given"
    cpu_source: str = "given"

    @classmethod
    def detect(cls, gpu_memory_mb: int | None = None, cpu_count: int | None = None, *,
               probe_gpu: Callable[[], tuple[int, str]] = detect_gpu_memory_mb,
               os_cpu_count: Callable[[], int | None] = os.cpu_count) -> Resources:
        """The machine's budgets, with explicit values taking precedence.

        Args:
            gpu_memory_mb: the GPU budget (None: what ``probe_gpu`` finds).
            cpu_count: the CPU budget (None: ``os_cpu_count()``, at least 1).
            probe_gpu: finds the GPU budget (tests pass a fake).
            os_cpu_count: counts the CPUs (tests pass a fake).
        """
        if gpu_memory_mb is None:
            gpu, gpu_source = probe_gpu()
        else:
            gpu, gpu_source = gpu_memory_mb, "--gpu-memory-mb"
        if cpu_count is None:
            cpus, cpu_source = max(1, os_cpu_count() or 1), "os.cpu_count()"
        else:
            cpus, cpu_source = max(1, cpu_count), "--cpu-workers"
        return cls(max(0, gpu), cpus, gpu_source, cpu_source)


@dataclass(frozen=True)
class ModelNeeds:
    """What one model asks for, and what the scheduler counts for it.

    Attributes:
        name: the model.
        image: ``cpu`` or ``gpu``.
        gpu_memory_mb: declared GPU memory times ``instance_count``.
        cpu_workers: declared CPU workers times ``instance_count``.
        uses_gpu: a GPU image, or declares GPU memory.
        gpu_units: counted against :attr:`Plan.gpu_capacity`.
        cpu_units: counted against :attr:`Plan.cpu_capacity`.
        note: why the model runs alone or on CPU, when it does ("" otherwise).
    """

    name: str
    image: str
    gpu_memory_mb: int
    cpu_workers: int
    uses_gpu: bool
    gpu_units: int
    cpu_units: int
    note: str = ""


@dataclass(frozen=True)
class Plan:
    """The chosen plan: dependencies, order, parallel groups and budgets.

    Attributes:
        order: every model, each after all it depends on.
        groups: models that can run at the same time (no path between them), in order.
        dependencies: model -> the models it waits for (inside the run).
        needs: model -> what it asks for.
        resources: the budgets.
        gpu_capacity: GPU units that may be in use at once (the budget in MB;
            1 when the budget is 0, so GPU models take turns).
        cpu_capacity: CPU workers that may be in use at once.
        outside: model -> its dependencies left out of the run (``--models``):
            their outputs are read as they are.
    """

    order: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    dependencies: Mapping[str, tuple[str, ...]]
    needs: Mapping[str, ModelNeeds]
    resources: Resources
    gpu_capacity: int
    cpu_capacity: int
    outside: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def fits(self, running: Iterable[str], name: str) -> bool:
        """Whether ``name`` may start while ``running`` run."""
        names = [*running, name]
        gpu = sum(self.needs[n].gpu_units for n in names)
        cpu = sum(self.needs[n].cpu_units for n in names)
        return gpu <= self.gpu_capacity and cpu <= self.cpu_capacity

    def steps(self) -> list[list[str]]:
        """The order models would start in if every model took as long.

        Each step starts what is ready and fits next to what that step
        already started; what does not fit waits for the next step. It shows
        how the budgets split the parallel groups.
        """
        finished: set[str] = set()
        out: list[list[str]] = []
        while len(finished) < len(self.order):
            step: list[str] = []
            for name in self.order:
                ready = all(d in finished for d in self.dependencies[name])
                if name not in finished and ready and self.fits(step, name):
                    step.append(name)
            finished.update(step)
            out.append(step)
        return out

    def describe(self) -> list[str]:
        """The plan as lines to print before the run starts."""
        lines = [f"plan: {len(self.order)} model(s), {len(self.groups)} group(s)"]
        lines.append("  graph (from models/*/model.toml depends_on):")
        width = max((len(n) for n in self.order), default=0)
        for name in self.order:
            deps = self.dependencies[name]
            after = f"after {', '.join(deps)}" if deps else "no dependencies"
            outside = self.outside.get(name, ())
            if outside:
                after += f"; reads existing outputs of {', '.join(outside)}"
            lines.append(f"    {name:<{width}}  {after}")
        lines.append(f"  order: {' -> '.join(self.order) or '(none)'}")
        for number, group in enumerate(self.groups, start=1):
            lines.append(f"  group {number} (run at the same time): {', '.join(group)}")
        lines.append(f"  budgets: {self._gpu_line()}; CPU workers {self.cpu_capacity} "
                     f"({self.resources.cpu_source})")
        for name in self.order:
            need = self.needs[name]
            gpu = f"GPU {need.gpu_memory_mb} MB" if need.uses_gpu else "CPU only"
            extra = f"  ({need.note})" if need.note else ""
            lines.append(f"    {name:<{width}}  {need.image} image, {gpu}, "
                         f"{need.cpu_workers} CPU worker(s){extra}")
        steps = self.steps()
        if len(steps) != len(self.groups):
            lines.append("  with these budgets, models start in "
                         f"{len(steps)} step(s): "
                         + "; ".join(", ".join(s) for s in steps))
        return lines

    def _gpu_line(self) -> str:
        res = self.resources
        if res.gpu_memory_mb == 0:
            return (f"GPU memory 0 MB ({res.gpu_source}): GPU models run on CPU, "
                    "one at a time")
        return f"GPU memory {res.gpu_memory_mb} MB ({res.gpu_source})"

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return {
            "order": list(self.order),
            "groups": [list(g) for g in self.groups],
            "steps": self.steps(),
            "gpu_memory_mb": self.resources.gpu_memory_mb,
            "cpu_count": self.resources.cpu_count,
            "needs": {n: {"gpu_memory_mb": v.gpu_memory_mb, "cpu_workers": v.cpu_workers,
                          "uses_gpu": v.uses_gpu, "note": v.note}
                      for n, v in self.needs.items()},
        }


def _needs(graph: Graph, name: str, resources: Resources, cpu_capacity: int) -> ModelNeeds:
    spec = graph[name]
    count = spec.instance_count
    gpu_mb = spec.gpu_memory_mb * count
    cpus = spec.cpu_workers * count
    uses_gpu = spec.image == "gpu" or gpu_mb > 0
    notes: list[str] = []
    budget = resources.gpu_memory_mb
    if not uses_gpu:
        gpu_units = 0
    elif budget == 0:
        gpu_units = 1
        notes.append("no GPU budget: runs on CPU, one GPU model at a time")
    elif gpu_mb > budget:
        gpu_units = budget
        notes.append(f"needs {gpu_mb} MB of GPU memory, over the {budget} MB budget: "
                     "runs with no other GPU model")
    else:
        gpu_units = gpu_mb
        if gpu_mb == 0:
            notes.append("declares no gpu_memory_mb: not counted against the GPU budget")
    if cpus > cpu_capacity:
        notes.append(f"needs {cpus} CPU workers, the machine has {cpu_capacity}: runs alone")
    return ModelNeeds(name=name, image=spec.image, gpu_memory_mb=gpu_mb, cpu_workers=cpus,
                      uses_gpu=uses_gpu, gpu_units=gpu_units,
                      cpu_units=min(cpus, cpu_capacity), note="; ".join(notes))


def plan(graph: Graph, resources: Resources) -> Plan:
    """Choose the plan for running ``graph`` within ``resources``.

    Args:
        graph: the models to run (a :meth:`~serving.pipeline.Graph.subgraph` for ``--models``).
        resources: the budgets.
    """
    cpu_capacity = max(1, resources.cpu_count)
    needs = {name: _needs(graph, name, resources, cpu_capacity) for name in graph.order()}
    outside = {name: tuple(sorted(d for d in graph[name].depends_on if d not in graph))
               for name in graph.order()}
    return Plan(
        order=tuple(graph.order()),
        groups=tuple(tuple(g) for g in graph.levels()),
        dependencies={name: graph.dependencies(name) for name in graph.order()},
        needs=needs,
        resources=resources,
        gpu_capacity=resources.gpu_memory_mb if resources.gpu_memory_mb > 0 else 1,
        cpu_capacity=cpu_capacity,
        outside={name: deps for name, deps in outside.items() if deps},
    )
