"""A small client of Airflow's REST API (``/api/v2``), as a user drives a deployment with curl.

Only the standard library: a token from the simple auth manager (``GET /auth/token``,
which answers without credentials when every user is an admin), then JSON calls.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: DAG run states after which nothing more happens.
FINISHED = ("success", "failed")


class ApiError(RuntimeError):
    """The API answered with an error status; the message carries its body."""


class AirflowApi:
    """Calls to one api-server.

    Args:
        base_url: ``http://127.0.0.1:PORT`` of the api-server.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token: str | None = None

    def token(self) -> str:
        """A JWT for the API (the simple auth manager's all-admins token)."""
        if self._token is None:
            answer = self._call("GET", "/auth/token", auth=False)
            self._token = str(answer["access_token"])
        return self._token

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
              auth: bool = True, timeout: float = 30.0) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:2000]
            raise ApiError(f"{method} {path}: HTTP {err.code}: {detail}") from err
        return json.loads(text) if text else None

    def get(self, path: str) -> Any:
        """``GET /api/v2`` + ``path``."""
        return self._call("GET", "/api/v2" + path)

    def health(self) -> dict[str, Any]:
        """``/api/v2/monitor/health`` (no token needed)."""
        return dict(self._call("GET", "/api/v2/monitor/health", auth=False, timeout=5))

    def dag_ids(self) -> list[str]:
        """The DAGs the dag-processor has parsed."""
        return sorted(d["dag_id"] for d in self.get("/dags?limit=100")["dags"])

    def set_variable(self, key: str, value: Mapping[str, Any]) -> None:
        """Create or replace a Variable (stored as JSON text, as ``airflow variables set``)."""
        body = {"key": key, "value": json.dumps(dict(value))}
        try:
            self._call("PATCH", f"/api/v2/variables/{_q(key)}", body)
        except ApiError as err:
            if "HTTP 404" not in str(err):
                raise
            self._call("POST", "/api/v2/variables", body)

    def unpause(self, dag_id: str) -> None:
        """``PATCH /dags/{id}`` with ``is_paused: false``."""
        self._call("PATCH", f"/api/v2/dags/{_q(dag_id)}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Start a run now (no logical date, as docs/airflow.md's curl does); its run id."""
        answer = self._call("POST", f"/api/v2/dags/{_q(dag_id)}/dagRuns",
                            {"logical_date": None, "conf": dict(conf or {})})
        return str(answer["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The run's state (``queued``, ``running``, ``success``, ``failed``)."""
        return str(self.get(f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}")["state"])

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        """``task_id[map_index]`` -> state of every task instance of the run."""
        found = self.get(f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances?limit=1000")
        states = {}
        for ti in found["task_instances"]:
            index = ti.get("map_index", -1)
            name = ti["task_id"] + (f"[{index}]" if index is not None and index >= 0 else "")
            states[name] = str(ti["state"])
        return states

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """One XCom's value (deserialized)."""
        answer = self.get(f"/dags/{_q(dag_id)}/dagRuns/{_q(run_id)}/taskInstances/"
                          f"{_q(task_id)}/xcomEntries/{_q(key)}?deserialize=true")
        return answer["value"]

    def wait(self, dag_id: str, run_id: str, timeout: float, poll: float = 1.0,
             seen: dict[str, set[str]] | None = None) -> str:
        """Poll the run until it finishes; returns its final state.

        Args:
            seen: when given, every state each task was seen in at a poll is added to it
                (``task id -> states``): ``deferred`` shows a wait that freed its slot.

        Raises:
            TimeoutError: still unfinished after ``timeout`` seconds (the message lists the
                task states).
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.run_state(dag_id, run_id)
            if seen is not None:
                for task, task_state in self.task_states(dag_id, run_id).items():
                    seen.setdefault(task, set()).add(task_state)
            if state in FINISHED:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s; "
                                   f"tasks: {self.task_states(dag_id, run_id)}")
            time.sleep(poll)


def usage(url: str, logs: Path, env_file: Path, exports: str) -> list[str]:
    """The lines a ready deployment prints: its URL, export lines, how to trigger a DAG."""
    return [
        f"Airflow UI and REST API: {url}  (every user is an admin; logs in {logs})",
        f"export lines for the airflow CLI and AWS (also in {env_file}):",
        *exports.splitlines(),
        "trigger a DAG through the REST API:",
        f"  TOKEN=$(curl -s {url}/auth/token | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f"  curl -s -X PATCH -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: "
        f"application/json' {url}/api/v2/dags/sync_data_dev -d '{{\"is_paused\": false}}'",
        f"  curl -s -X POST -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: "
        f"application/json' {url}/api/v2/dags/sync_data_dev/dagRuns "
        "-d '{\"logical_date\": null}'",
        "Ctrl-C (or SIGTERM/SIGHUP) stops every process this started",
    ]


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")
