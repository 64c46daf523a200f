"""``report_message`` and the reporter: one readable summary of a DAG run, in one task's log.

Each task says what it did with :func:`report_message` (an XCom with the key
``report``): a line of text, or, for a model, the per-model dict of the local
pipeline run (:meth:`serving.localpipeline.ModelReport.to_dict`). The
``report`` task (:func:`reporter`, trigger rule ``all_done``) runs last, even
after failures and skips, gathers the reports of every task upstream of it
and the tasks' states, and logs one summary::

    inference_dev manual__2026-11-29T10:00:00+00:00: FAILED: frame_features failed
      wait_for_messages [success]: received 6 message(s) in 1 receive call(s) ...
          6 message(s): 6 usable (6 object(s)), none left on the queue
      model             status   records written skipped  failed  time    job
      clip_stats        done           6       6       0       0  4.1 s   smserve-clip-...
      frame_features    failed         6       0       0       6  2.9 s   smserve-frame-...
          transform job smserve-frame-... failed: ClientError: ...
      scene_classifier  skipped        0       0       0       0  -
          upstream frame_features failed
      delete_messages [upstream_failed]: not run

Then it fails when anything failed, so the run ends ``failed`` while the
summary is still there to read (the report is the only leaf task: its state
decides the run's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

__all__ = [
    "REPORT_KEY",
    "SUMMARY_KEY",
    "TaskOutcome",
    "collect_states",
    "fail",
    "is_model_report",
    "report_message",
    "reporter",
    "summarize",
    "trigger_failed",
    "upstream_task_ids",
]

#: The XCom key every task reports under.
REPORT_KEY = "report"
#: The XCom key the reporter pushes its summary under (the demo prints it).
SUMMARY_KEY = "summary"
#: States of a task that did not succeed.
FAILED_STATES = ("failed", "upstream_failed")

log = logging.getLogger("smserve.report")

_MODEL_KEYS = frozenset({"model", "status", "written", "skipped", "failed"})


def report_message(ti: Any, message: Any) -> None:
    """Report what the task did: ``message`` (text, or a JSON-ready value) as its ``report`` XCom.

    One report per task: a second call replaces the first, so build the
    whole report and send it once. The message is also logged.

    Args:
        ti: the running task instance (``context["ti"]``).
        message: a line of text, a list of lines, or a dict (a model's report).
    """
    ti.xcom_push(key=REPORT_KEY, value=message)
    for line in _lines(message):
        log.info("report: %s", line)


def fail(ti: Any, message: str, report: Any = None) -> NoReturn:
    """Report ``report`` (default: ``message``) and fail the task without retries.

    For errors a retry cannot fix: a missing Variable or connection, a model
    that is not there, a transform job that failed.

    Raises:
        AirflowFailException: always, with ``message``.
    """
    from airflow.sdk.exceptions import AirflowFailException

    report_message(ti, message if report is None else report)
    raise AirflowFailException(message) from None


def trigger_failed(ti: Any, event: Mapping[str, Any]) -> NoReturn:
    """Fail on a trigger's error event; retried (``retries``) when the event says a retry helps.

    Raises:
        AirflowFailException: not retryable (no connection, an unknown job).
        AirflowException: retryable (AWS could not be reached).
    """
    message = str(event.get("message") or event)
    if not event.get("retryable"):
        fail(ti, message)
    from airflow.sdk.exceptions import AirflowException

    report_message(ti, message)
    raise AirflowException(message)


def is_model_report(value: Any) -> bool:
    """True for a model's report (the local pipeline's per-model dict)."""
    return isinstance(value, Mapping) and set(value) >= _MODEL_KEYS


def _lines(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.splitlines() or [""]
    if isinstance(value, (list, tuple)):
        return [line for item in value for line in _lines(item)]
    return [json.dumps(value, default=str, sort_keys=True)]


def upstream_task_ids(task: Any) -> list[str]:
    """Every task upstream of ``task`` (directly or not), in the DAG's definition order."""
    seen: set[str] = set()
    todo = list(task.upstream_list)
    while todo:
        node = todo.pop()
        if node.task_id not in seen:
            seen.add(node.task_id)
            todo.extend(node.upstream_list)
    dag = getattr(task, "dag", None)
    order = [t.task_id for t in dag.tasks] if dag is not None else sorted(seen)
    return [t for t in order if t in seen]


@dataclass(frozen=True)
class TaskOutcome:
    """One upstream task: its state and what it reported.

    Attributes:
        task_id: the task.
        state: its state (None: unknown).
        reports: its ``report`` XComs (one per map index; empty: none).
    """

    task_id: str
    state: str | None
    reports: Sequence[Any] = field(default_factory=list)


def _closure(model: str, deps: Mapping[str, Sequence[str]]) -> list[str]:
    seen: list[str] = []
    todo = list(deps.get(model, ()))
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.append(name)
            todo.extend(deps.get(name, ()))
    return seen


def _model_rows(outcomes: Sequence[TaskOutcome], deps: Mapping[str, Sequence[str]]
                ) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        for report in outcome.reports:
            if is_model_report(report):
                rows[str(report["model"])] = dict(report)
    failed = {name for name, row in rows.items() if row.get("status") == "failed"}
    by_model: dict[str, list[TaskOutcome]] = {}
    for outcome in outcomes:
        prefix = outcome.task_id.split(".", 1)[0]
        if "." in outcome.task_id and prefix in deps:
            by_model.setdefault(prefix, []).append(outcome)
    for model in deps:  # models without a report: say why from their tasks' states
        if model in rows:
            continue
        states = [o.state for o in by_model.get(model, [])]
        row: dict[str, Any] = {"model": model, "records": 0, "written": 0, "skipped": 0,
                               "failed": 0, "job": None, "seconds": None}
        if "failed" in states:
            crashed = [o.task_id for o in by_model[model] if o.state == "failed"]
            row.update(status="failed", reason=f"{', '.join(crashed)} failed without a "
                                               "report; see the task's log")
            failed.add(model)
        elif "upstream_failed" in states:
            roots = [m for m in _closure(model, deps) if m in failed]
            why = f"upstream {', '.join(sorted(roots))} failed" if roots else \
                "an upstream task failed"
            row.update(status="skipped", reason=why)
        elif states and all(s == "skipped" for s in states):
            row.update(status="skipped", reason="nothing to process in this run")
        else:
            row.update(status=states[0] if states else "unknown", reason=None)
        rows[model] = row
    return {m: rows[m] for m in [*deps, *sorted(set(rows) - set(deps))]}


def _table(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    width = max([len("model"), *(len(m) for m in rows)])
    out = [f"  {'model':<{width}}  {'status':<8} {'records':>7} {'written':>7} "
           f"{'skipped':>7} {'failed':>7}  {'time':<7} job"]
    for model, row in rows.items():
        seconds = row.get("seconds")
        took = f"{seconds:.1f} s" if isinstance(seconds, (int, float)) else "-"
        out.append(f"  {model:<{width}}  {row.get('status', '?'):<8} "
                   f"{row.get('records', 0):>7} {row.get('written', 0):>7} "
                   f"{row.get('skipped', 0):>7} {row.get('failed', 0):>7}  {took:<7} "
                   f"{row.get('job') or '-'}")
        for key in ("reason", "note"):
            if row.get(key):
                out.extend(f"      {line}" for line in str(row[key]).splitlines())
    return out


def summarize(title: str, outcomes: Sequence[TaskOutcome],
              models: Mapping[str, Sequence[str]] | None = None,
              not_run: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """The summary of a run, and what failed.

    Args:
        title: what ran (DAG id and run id).
        outcomes: the upstream tasks, in order.
        models: model -> the models it depends on, for a DAG with model task
            groups (``<model>.<task>``); their reports become a table.
        not_run: task id -> what it means that the task did not run.

    Returns:
        ``(lines, problems)``: the summary, and one short line per failure
        (empty when the run succeeded).
    """
    deps = dict(models or {})
    rows = _model_rows(outcomes, deps) if deps else {}
    problems = [f"{m} failed" for m, r in rows.items() if r.get("status") == "failed"]
    problems += [f"{m} failed on {r.get('failed', '?')} record(s)" for m, r in rows.items()
                 if r.get("status") == "partial"]
    body: list[str] = []
    table_done = False
    for outcome in outcomes:
        in_model = "." in outcome.task_id and outcome.task_id.split(".", 1)[0] in deps
        if in_model:
            if not table_done and rows:
                body.extend(_table(rows))
                table_done = True
            texts = [r for r in outcome.reports if not is_model_report(r)]
            if not texts:
                continue
        else:
            texts = list(outcome.reports)
        state = outcome.state or "unknown"
        if outcome.state == "failed" and not in_model:
            first = _lines(texts[0])[0] if texts else "see the task's log"
            problems.append(f"{outcome.task_id} failed: {first}")
        lines = [line for text in texts for line in _lines(text)]
        if not lines and state in ("upstream_failed", "skipped"):
            hint = (not_run or {}).get(outcome.task_id)
            lines = [f"not run: {hint}" if hint else "not run"]
        head = f"  {outcome.task_id} [{state}]"
        if not lines:
            body.append(head)
        else:
            body.append(f"{head}: {lines[0]}")
            body.extend(f"      {line}" for line in lines[1:])
    if rows and not table_done:
        body.extend(_table(rows))
    verdict = "succeeded" if not problems else "FAILED: " + "; ".join(
        p.split(":", 1)[0] if ":" in p else p for p in problems)
    return [f"{title}: {verdict}", *body], problems


def collect_states(ti: Any) -> dict[str, str]:
    """Task id (``<task_id>_<index>`` for a mapped one) -> state, for the running DAG run."""
    return _states(ti)


def _states(ti: Any) -> dict[str, str]:
    try:
        found = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id])
    except Exception as err:  # an older API server: go on with the reports alone
        log.warning("cannot read the task states (%s); reporting from the XComs alone", err)
        return {}
    run = found.get(ti.run_id, {}) if isinstance(found, Mapping) else {}
    return {str(k): str(v) for k, v in run.items()}


#: Which state a mapped task shows when its instances differ: the worst one.
_RANK = ("failed", "upstream_failed", "up_for_retry", "running", "skipped", "success")


def task_state(states: Mapping[str, str], task_id: str) -> str | None:
    """The state of ``task_id``; a mapped task's instances come as ``<task_id>_<index>``."""
    if task_id in states:
        return states[task_id]
    found = [v for k, v in states.items()
             if k.startswith(task_id + "_") and k[len(task_id) + 1:].isdigit()]
    if not found:
        return None
    return min(found, key=lambda s: _RANK.index(s) if s in _RANK else len(_RANK))


def collect(ti: Any, task_ids: Iterable[str]) -> list[TaskOutcome]:
    """The state and the ``report`` XComs (every map index) of each of ``task_ids``."""
    states = _states(ti)
    outcomes = []
    for task_id in task_ids:
        pulled = ti.xcom_pull(task_ids=[task_id], key=REPORT_KEY)
        reports = [r for r in (pulled or []) if r is not None]
        outcomes.append(TaskOutcome(task_id, task_state(states, task_id), reports))
    return outcomes


def reporter(models: Mapping[str, Sequence[str]] | None = None,
             not_run: Mapping[str, str] | None = None,
             task_id: str = "report") -> Callable[[], Any]:
    """The ``report`` task: gathers every upstream report, logs one summary, fails on failure.

    Args:
        models: model -> its dependencies, for a DAG with one task group per model.
        not_run: task id -> what it means when that task did not run.
        task_id: the task's id.

    Returns:
        a ``@task`` to call inside the DAG (``reporter(...)()``); it runs with
        trigger rule ``all_done`` and pushes the summary as XCom ``summary``.
    """
    from airflow.sdk import TriggerRule, get_current_context, task

    deps = {name: list(d) for name, d in (models or {}).items()}
    hints = dict(not_run or {})

    @task(task_id=task_id, trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def report() -> None:
        context = get_current_context()
        ti = context["ti"]
        outcomes = collect(ti, upstream_task_ids(context["task"]))
        lines, problems = summarize(f"{ti.dag_id} {ti.run_id}", outcomes, deps, hints)
        text = "\n".join(lines)
        log.info("\n%s", text)
        ti.xcom_push(key=SUMMARY_KEY, value=text)
        if problems:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException("the run failed: " + "; ".join(problems)
                                       + " (the summary above says why)")

    return report
