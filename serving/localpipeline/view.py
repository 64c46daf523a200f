"""The live view of a pipeline run: one line per model.

On a terminal (``live=True``) the lines are redrawn in place with ANSI
escapes (progress at most every ``interval`` seconds, state changes at
once). Otherwise (a log, a pipe, a test) a line is printed on each state
change and progress is left out.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence

from serving.localpipeline.report import ModelReport

_UP = "\x1b[{n}F"  # cursor to the start of the line n lines up
_CLEAR = "\x1b[2K"  # clear the whole line


def _first_line(text: str, limit: int = 90) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


class LiveView:
    """Shows each model's state as the run goes.

    Args:
        names: the models, in the order to show them.
        echo: prints one block of text (``print``).
        live: redraw in place (a terminal) instead of a line per change.
        clock: monotonic seconds.
        interval: least seconds between redraws for progress alone.
        columns: the terminal's width (default: asked of the terminal).
    """

    def __init__(self, names: Sequence[str], echo: Callable[[str], None], *, live: bool,
                 clock: Callable[[], float] = time.monotonic, interval: float = 0.2,
                 columns: int | None = None) -> None:
        self._names = list(names)
        self._echo = echo
        self._live = live
        self._clock = clock
        self._interval = interval
        self._start = clock()
        self._width = max((len(n) for n in self._names), default=0)
        self._state: dict[str, ModelReport] = {n: ModelReport(n) for n in self._names}
        # A line wider than the terminal wraps, and the redraw would climb too few lines.
        self._columns = columns or shutil.get_terminal_size().columns
        self._drawn = 0
        self._last_draw = float("-inf")

    def update(self, report: ModelReport) -> None:
        """Take a model's new state; show it if it changed what is shown."""
        old = self._state.get(report.model)
        self._state[report.model] = report
        status_changed = old is None or old.status != report.status
        if not self._live:
            if status_changed and report.status != "waiting":
                self._echo(self._line(report, timestamp=True))
            return
        now = self._clock()
        if status_changed or now - self._last_draw >= self._interval:
            self._draw(now)

    def tick(self) -> None:
        """Redraw (on a terminal) so running models' times move on."""
        if self._live:
            now = self._clock()
            if now - self._last_draw >= self._interval:
                self._draw(now)

    def close(self) -> None:
        """Draw the final state (on a terminal)."""
        if self._live:
            self._draw(self._clock())

    def _draw(self, now: float) -> None:
        lines = [_CLEAR + self._line(self._state[n])[: max(20, self._columns - 1)]
                 for n in self._names]
        prefix = _UP.format(n=self._drawn) if self._drawn else ""
        self._echo(prefix + "\n".join(lines))
        self._drawn = len(lines)
        self._last_draw = now

    def _line(self, r: ModelReport, timestamp: bool = False) -> str:
        now = self._clock()
        if r.status == "running" and not timestamp:
            total = r.total_records or r.records
            took = f"{now - r.started:.1f} s" if r.started is not None else ""
            text = f"running  {r.done_records}/{total} records  {took}"
        elif r.status == "running":
            text = "running"
        elif r.status == "done":
            took = f"  {r.seconds:.1f} s" if r.seconds is not None else ""
            ran = f"  -> {r.runner}" if r.runner else ""
            text = f"done     {r.written} written, {r.skipped} skipped{took}{ran}"
        elif r.status == "failed":
            ran = f" ({r.runner})" if r.runner else ""
            # a log keeps the whole first line (an engine's message); a terminal, one row
            limit = 10_000 if timestamp else 90
            text = f"failed{ran}   {_first_line(r.reason or '', limit)}"
        elif r.status == "skipped":
            text = f"skipped  {_first_line(r.reason or '')}"
        else:
            text = r.status
        stamp = f"[{now - self._start:6.1f} s] " if timestamp else ""
        return f"  {stamp}{r.model:<{self._width}}  {text}"
