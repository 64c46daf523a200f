"""Things that start model-server containers: one interface, two ways to run one.

- :class:`~serving.runners.process.ProcessRunner` (``process``): ``smserve serve``
  in a subprocess with a private ``/opt/ml``-shaped directory; no Docker.
- :class:`~serving.runners.docker.DockerRunner` (``docker``): the real image on a
  Docker engine.

Both hand back containers with ``.url``, ``.stop()``, ``.log_tail()`` and
``.process.poll()``, so the batch-transform data plane (``serving.transform``)
drives either. This package imports nothing of ``serving.transform``: the data
plane sits above the runners, never the other way round.
"""

from __future__ import annotations
