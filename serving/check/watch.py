"""Watch mode (``smserve dev models/NAME``, ``smserve check --watch``): rerun the check on save.

The watcher polls the model folder's files (their size and modification
time; no new dependency) and, when they change, runs a *cycle*: the
in-process check on the sample request, then, when that passed, the sample
as a local batch transform. Each cycle prints the report: the result, or the
handler, file and line that failed.

Every cycle runs in a fresh process, forked from a server process that has
imported the heavy modules once (numpy, boto3, ``serving``, and chainer when
the model imports it), so a save is never checked against a module an earlier
cycle imported (``model.py`` is cached in ``sys.modules`` by name) and a cycle
starts in milliseconds. The embedded stack is started once, by the watcher,
and shared by every cycle. A save during a cycle's transform interrupts it
(its model server is stopped) and starts a new cycle on the new files.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.settings import Settings

#: Modules the cycle processes' server imports once (those missing are skipped).
PRELOAD = ("numpy", "boto3", "botocore", "psutil", "serving.check", "serving.check.server",
           "serving.handler", "serving.s3refs", "serving.aws")
#: Seconds the files must stay unchanged before a cycle starts (editors save in steps).
SETTLE_S = 0.05

Snapshot = dict[str, tuple[int, int]]


def snapshot(folder: Path) -> Snapshot:
    """Relative path -> (size, mtime in ns) of the files under ``folder``.

    Hidden files and folders, ``__pycache__`` and ``.pyc`` files are left
    out; a folder that does not exist has an empty snapshot.
    """
    found: Snapshot = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        for name in files:
            if name.startswith(".") or name.endswith(".pyc"):
                continue
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # removed while we looked
            found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return found


def changed(before: Snapshot, after: Snapshot) -> list[str]:
    """The paths added, removed or modified between two snapshots, sorted."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


@dataclass(frozen=True)
class _StackEnv:
    """What :func:`serving.check.check` needs of a running stack: its environment."""

    env: dict[str, str]

    def environ(self) -> dict[str, str]:
        return dict(self.env)


def _cycle(conn: Any, folder: str, mode: str, request: str | None, data_dir: str | None,
           settings: Settings, stack_env: dict[str, str]) -> None:
    """One check in a fresh process; sends ``(ok, rendered report)`` back on ``conn``."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a save interrupts a transform
    from serving.check import check

    try:
        report = check(folder, request=request, data_dir=data_dir, mode=mode,
                       settings=settings, stack=_StackEnv(stack_env))
        conn.send((report.ok, report.render()))
    except KeyboardInterrupt:
        conn.send((False, ""))
    finally:
        conn.close()


def _uses_chainer(folder: Path) -> bool:
    try:
        return any("import chainer" in p.read_text(errors="replace") or
                   "from chainer" in p.read_text(errors="replace")
                   for p in folder.glob("*.py"))
    except OSError:
        return False


class Watch:
    """Rerun a model's check on every save; see the module docstring.

    Args:
        folder: ``models/NAME``.
        request: the request file (default: the folder's ``sample_request.json``).
        data_dir: the sample data (default: the folder's ``sample_data``).
        transform: after the in-process check passes, run the sample as a
            local batch transform too.
        settings: the base environment (default: the process's).
        out: receives each line to show (default: ``print``).
        interval: seconds between polls.
    """

    def __init__(self, folder: str | Path, *, request: str | Path | None = None,
                 data_dir: str | Path | None = None, transform: bool = True,
                 settings: Settings | None = None,
                 out: Callable[[str], None] | None = None, interval: float = 0.1) -> None:
        self.folder = Path(folder)
        self.request = str(request) if request is not None else None
        self.data_dir = str(data_dir) if data_dir is not None else None
        self.transform = transform
        self.settings = settings or Settings.from_environ()
        self.out = out or (lambda line: print(line, flush=True))
        self.interval = interval
        self.cycles = 0
        self._ctx: Any = None
        self._stack: Any = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Watch:
        """Start the embedded stack and the server the cycles are forked from."""
        import multiprocessing

        from serving.local.stack import LocalStack

        self._stack = LocalStack(settings=self.settings).start()
        self._ctx = multiprocessing.get_context("forkserver")
        preload = [*PRELOAD, *(["chainer"] if _uses_chainer(self.folder) else [])]
        self._ctx.set_forkserver_preload(preload)
        return self

    def stop(self) -> None:
        """Stop the stack (idempotent); the fork server ends with this process."""
        if self._stack is not None:
            self._stack.stop()
            self._stack = None

    def __enter__(self) -> Watch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the loop -------------------------------------------------------------------------

    def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Check now, then on every change, until ``until()`` is true or Ctrl-C."""
        if self._ctx is None:
            raise RuntimeError("Watch.start() first")
        self.out(f"watching {self.folder} (Ctrl-C stops): the handlers in-process"
                 + (", then the sample as a local batch transform" if self.transform else ""))
        last: Snapshot | None = None
        gone = False
        while not until():
            now = snapshot(self.folder)
            if not now:
                if not gone:
                    self.out(f"{self.folder} is gone or empty; waiting for it to come back")
                    gone = True
                time.sleep(self.interval)
                continue
            if now == last and not gone:
                time.sleep(self.interval)
                continue
            now = self._settled(now)
            what = ("start" if last is None else f"{self.folder} is back" if gone
                    else ", ".join(changed(last, now)[:5]))
            gone = False
            last = now
            self.cycle(what, now)  # a change during it shows at the next poll

    def _settled(self, now: Snapshot) -> Snapshot:
        """``now`` once it has not changed for :data:`SETTLE_S`."""
        while True:
            time.sleep(SETTLE_S)
            again = snapshot(self.folder)
            if again == now:
                return now
            now = again

    def cycle(self, what: str, files: Snapshot) -> bool:
        """Run one check (and the transform) on ``files``; False when a change interrupted it.

        A change during the transform interrupts it (its model server is
        stopped); the loop then sees the change and starts again.
        """
        self.cycles += 1
        started = time.perf_counter()
        stamp = time.strftime("%H:%M:%S")
        self.out(f"\n[{stamp}] {what}: checking the handlers in-process ...")
        ok, text, _ = self._run("handlers", None)
        self.out(text)
        self.out(f"[{'ok' if ok else 'FAILED'}] handlers in-process, "
                 f"{time.perf_counter() - started:.2f} s after the change was seen")
        if not ok or not self.transform:
            return True
        self.out("checking the sample as a local batch transform ...")
        ok, text, interrupted = self._run("transform", files)
        if interrupted:
            self.out("(transform interrupted: the files changed)")
            return False
        self.out(text)
        self.out(f"[{'ok' if ok else 'FAILED'}] local batch transform, "
                 f"{time.perf_counter() - started:.2f} s after the change was seen")
        return True

    def _run(self, mode: str, files: Snapshot | None) -> tuple[bool, str, bool]:
        """Run a cycle process; ``files``: interrupt it when the folder differs from these."""
        assert self._ctx is not None and self._stack is not None
        parent, child = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=_cycle, name=f"smserve-check-{mode}",
            args=(child, str(self.folder), mode, self.request, self.data_dir, self.settings,
                  self._stack.environ()))
        proc.start()
        child.close()
        interrupted = False
        try:
            while not parent.poll(self.interval):
                if not proc.is_alive():
                    break
                if files is not None and not interrupted and snapshot(self.folder) != files:
                    interrupted = True
                    os.kill(proc.pid, signal.SIGINT)  # the check stops its model server
            result = parent.recv() if parent.poll(0) else None
        except EOFError:
            result = None
        except KeyboardInterrupt:  # Ctrl-C (the cycle got it too) or SIGTERM (pass it on)
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT)
            proc.join(60)
            if proc.is_alive():
                proc.kill()
            raise
        finally:
            parent.close()
        proc.join(60)
        if interrupted:
            return False, "", True
        if result is None:
            return False, (f"the check process ended without a report (exit code "
                           f"{proc.exitcode}); see the lines above"), False
        ok, text = result
        return bool(ok), str(text), False
