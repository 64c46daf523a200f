"""``smserve check --serve`` in the model's serving image, with ``SMSERVE_CONTAINER_RUNNER=docker``.

Internal to :mod:`serving.check`. :func:`start_in_container` stages the model
folder as ``model.tar.gz`` would hold it, starts one container of the
model's image (``smserve-<image>:<version>``, ``model.toml``'s ``image``)
through :class:`~serving.runners.docker.DockerRunner`, and hands back
something :func:`serving.check.server.served` uses as it uses a local
server: ``.url``, ``.process``, ``.stop()``.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serving import scratch
from serving.check.run import Run
from serving.server.markers import ANSWERED_MARK
from serving.settings import Settings


class Served:
    """A started serving container and the staged folder it serves; stopped together.

    Attributes:
        url: where the container answers.
        process: ``.poll()`` gives its exit code once it stopped.
        runner: what runs it, in a few words (``docker smserve-cpu:0.1.0``).
    """

    def __init__(self, container: Any, workdir: Path, runner: str,
                 close: Callable[[], None] | None = None) -> None:
        self.container = container
        self._close = close
        self.url: str = container.url
        self.process = container.process
        self.runner = runner
        self._workdir = workdir
        #: Refused or failed requests whose log the workers finished (as ServerProcess).
        self.answers_logged = 0
        self._logged = threading.Condition()

    def saw(self, line: str) -> None:
        """Count a worker's end-of-request mark in the container's log."""
        if ANSWERED_MARK in line:
            with self._logged:
                self.answers_logged += 1
                self._logged.notify_all()

    def wait_answer_logged(self, after: int, timeout: float) -> bool:
        """Wait until the log has one more finished request than ``after`` (or ``timeout``)."""
        with self._logged:
            return self._logged.wait_for(lambda: self.answers_logged > after, timeout)

    def stop(self) -> None:
        """Stop and remove the container, then the staged folder."""
        try:
            self.container.stop()
        finally:
            if self._close is not None:
                self._close()
            shutil.rmtree(self._workdir, ignore_errors=True)


def start_in_container(run: Run, settings: Settings, echo: Callable[[str], None]) -> Served:
    """Start the model of ``run`` in its image, on the engine ``settings`` name.

    Raises:
        ServerStartError: the container did not pass ``/ping`` (its log is in the message).
        ImageError: no Docker engine is reachable.
        ConfigError: the model folder cannot be staged.
    """
    from serving.runners.docker import DockerRunner
    from serving.transform.job import prepare_model

    workdir = scratch.make("smserve-check-image-")
    runner: DockerRunner | None = None
    served: list[Served] = []

    def log(line: str) -> None:
        for one in served:
            one.saw(line)
        echo(line)

    try:
        model_dir = prepare_model(run.folder, workdir)
        runner = DockerRunner.for_flavor(run.spec.image, settings.environ, log=log,
                                         startup_timeout=float(settings.startup_timeout))
        label = runner.describe()
        echo(f"starting {label} on {run.folder.name}")
        (container,) = runner.start(model_dir, run.spec.container_environment(), count=1)
    except BaseException:
        if runner is not None:
            runner.close()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    served.append(Served(container, workdir, label, close=runner.close))
    return served[0]
