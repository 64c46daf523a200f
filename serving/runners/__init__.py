"""Things that start model-server containers: one interface, two ways to run one.

- :class:`~serving.runners.process.ProcessRunner` (``process``): ``smserve serve``
  in a subprocess with a private ``/opt/ml``-shaped directory; no Docker.
- :class:`~serving.runners.docker.DockerRunner` (``docker``): the real image on a
  Docker engine (``_container``: one running container; ``_gpu``: whether it asks
  for a GPU, ``SMSERVE_DOCKER_GPUS``).

``SMSERVE_CONTAINER_RUNNER`` picks one (:func:`~serving.runners.docker.choose_runner`);
:func:`~serving.runners.docker.runner_description` names it in progress lines and reports.

Both hand back containers with ``.url``, ``.stop()``, ``.log_tail()`` and
``.process.poll()``, so the batch-transform data plane (``serving.transform``)
drives either. This package imports nothing of ``serving.transform``: the data
plane sits above the runners, never the other way round.
"""

from __future__ import annotations
