"""A transform job's log in CloudWatch Logs, where SageMaker users look for it.

Group ``/aws/sagemaker/TransformJobs``; like the service, one stream per
container, ``<job>/<instance-id>``, and the data plane's lines (what was
read, sent, answered, failed) in ``<job>/data-log``. :class:`JobLog` buffers
lines and sends them with batched ``PutLogEvents`` calls from one thread, so a
busy job makes few calls; :meth:`JobLog.close` sends what is left. A log
that cannot be written never fails the job: the lines go to this process's
``logging`` instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

LOG_GROUP = "/aws/sagemaker/TransformJobs"
DATA_LOG = "data-log"
#: PutLogEvents limits: events per call, bytes per call (26 bytes of overhead per event).
MAX_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD = 26
MAX_EVENT_BYTES = 256 * 1024 - EVENT_OVERHEAD

_CONTAINER_LINE = re.compile(r"^\[container (\d+)\] ?(.*)$", re.DOTALL)
_fallback = logging.getLogger("smserve.local.sagemaker")


def instance_id(job_arn: str, index: int) -> str:
    """An EC2-shaped instance id for container ``index`` of a job: ``i-`` and 17 hex digits.

    The first four digits are the container's number (``i-0001...`` is container 0), so
    streams sort in container order.
    """
    digest = hashlib.sha256(f"{job_arn}/{index}".encode()).hexdigest()
    return f"i-{index + 1:04d}{digest[:13]}"


class JobLog:
    """The log streams of one job.

    Args:
        client: a boto3 CloudWatch Logs client, or a function that makes one (called
            in the sending thread, so creating the log costs the caller nothing).
        job_name: the job (stream names start with it).
        instance_ids: one per container, in container order.
        interval: seconds between sends.
        clock: epoch seconds.
    """

    def __init__(self, client: Any, job_name: str, instance_ids: list[str], *,
                 interval: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self._client_or_maker = client
        self._client: Any = None
        self.job_name = job_name
        self.instance_ids = list(instance_ids)
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._last: dict[str, int] = {}
        self._created: set[str] = set()
        self._broken = False
        self._done = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"logs-{job_name}", daemon=True)
        self._thread.start()

    # --- streams ---------------------------------------------------------------------------

    @property
    def data_stream(self) -> str:
        """``<job>/data-log``."""
        return f"{self.job_name}/{DATA_LOG}"

    def container_stream(self, index: int) -> str:
        """``<job>/<instance-id>`` of container ``index``."""
        return f"{self.job_name}/{self.instance_ids[index]}"

    def streams(self) -> list[str]:
        """Every stream of the job: one per container, then the data log."""
        return [self.container_stream(i) for i in range(len(self.instance_ids))] + [
            self.data_stream]

    # --- writing ---------------------------------------------------------------------------

    def data(self, line: str) -> None:
        """A data-plane (or job) line, to ``<job>/data-log``."""
        self.write(self.data_stream, line)

    def container(self, line: str) -> None:
        """A runner line (``[container N] ...``), to that container's stream."""
        match = _CONTAINER_LINE.match(line)
        if match and int(match.group(1)) < len(self.instance_ids):
            self.write(self.container_stream(int(match.group(1))), match.group(2))
        else:
            self.data(line)

    def write(self, stream: str, line: str) -> None:
        """Queue ``line`` for ``stream`` (time-stamped now, never before the previous one)."""
        message = line if line else " "
        raw = message.encode("utf-8", "replace")
        if len(raw) > MAX_EVENT_BYTES:
            message = raw[:MAX_EVENT_BYTES - 3].decode("utf-8", "ignore") + "..."
        with self._lock:
            stamp = max(int(self._clock() * 1000), self._last.get(stream, 0))
            self._last[stream] = stamp
            self._pending.setdefault(stream, []).append({"timestamp": stamp,
                                                         "message": message})

    def flush(self) -> None:
        """Send every queued line now."""
        self._ready.wait(timeout=30)
        with self._lock:
            pending, self._pending = self._pending, {}
        for stream, events in pending.items():
            self._send(stream, events)

    def close(self) -> None:
        """Send what is left and end the sending thread (idempotent)."""
        self._done.set()
        self._thread.join(timeout=10)
        self.flush()

    # --- sending ---------------------------------------------------------------------------

    def _run(self) -> None:
        self._connect()
        while not self._done.wait(self._interval):
            self.flush()

    def _connect(self) -> None:
        try:
            maker = self._client_or_maker
            self._client = maker() if callable(maker) else maker
            self._client.create_log_group(logGroupName=LOG_GROUP)
        except Exception as err:
            if _code(err) != "ResourceAlreadyExistsException":
                self._broken = True
                _fallback.warning("cannot create log group %s: %s", LOG_GROUP, _code(err))
        finally:
            self._ready.set()

    def _send(self, stream: str, events: list[dict[str, Any]]) -> None:
        if self._broken:
            for event in events:
                _fallback.info("%s: %s", stream, event["message"])
            return
        try:
            if stream not in self._created:
                try:
                    self._client.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
                except Exception as err:
                    if _code(err) != "ResourceAlreadyExistsException":
                        raise
                self._created.add(stream)
            for batch in _batches(events):
                self._client.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                                            logEvents=batch)
        except Exception as err:
            _fallback.warning("cannot write %d line(s) to %s/%s: %s", len(events), LOG_GROUP,
                              stream, _code(err))


def _batches(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``events`` cut into PutLogEvents-sized batches."""
    out: list[list[dict[str, Any]]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for event in events:
        n = len(event["message"].encode("utf-8")) + EVENT_OVERHEAD
        if batch and (len(batch) >= MAX_EVENTS or size + n > MAX_BATCH_BYTES):
            out.append(batch)
            batch, size = [], 0
        batch.append(event)
        size += n
    if batch:
        out.append(batch)
    return out


def _code(err: Exception) -> str:
    response = getattr(err, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(err).__name__)
