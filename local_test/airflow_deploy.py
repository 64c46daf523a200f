"""A real Airflow deployment of ``dags/`` against the embedded stack, in one command.

::

    python -m local_test.airflow_deploy [--executor celery|local] [--endpoint URL]
                                        [--home DIR] [--api-port N]

starts, each as its own process (under :mod:`serving.server.guard`, so nothing
outlives this one, even after a SIGKILL):

- a private **PostgreSQL** cluster, Airflow's metadata database (Debian's
  ``postgresql`` package; run as the ``postgres`` user when we are root);
- the embedded AWS stack (``smserve local up``) unless ``--endpoint`` names a running one;
- the pipeline's buckets, queues and SageMaker models (:mod:`local_test.airflow_setup`),
  ``airflow db migrate``, the ``aws_default`` connection (an environment variable,
  written to ``HOME/env.sh`` with the rest) and, once the api-server answers, the
  ``smserve_dev`` Variable (through the REST API);
- Airflow's **api-server, scheduler, dag-processor and triggerer**, and with
  ``--executor celery`` (the default) one **Celery worker** whose broker is an SQS
  queue on the stack (results in PostgreSQL); ``--executor local`` runs tasks in the
  scheduler's LocalExecutor instead.

It waits until every component is healthy and the DAGs are parsed, prints the
URL, the export lines and how to trigger a DAG, and runs until Ctrl-C, SIGTERM or
SIGHUP. Logs: ``HOME/logs/<component>.log``. Tests and the benchmark use
:class:`Deployment` (a context manager) instead. docs/airflow.md, "First deployment".
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from local_test._deploy_api import AirflowApi, usage
from local_test._deploy_procs import (
    Component,
    DeployError,
    Postgres,
    answers,
    base_environ,
    before,
    tail,
)

EXECUTORS = {"celery": "CeleryExecutor", "local": "LocalExecutor"}
#: The Celery broker's SQS queue (Airflow's ``default`` Celery queue) on the stack.
BROKER_QUEUE = "smserve-airflow-celery"
#: The Variable the ``dev`` DAGs read (set through the REST API, so it can be changed later).
VARIABLE = "smserve_dev"
#: The DAGs a deployment must have parsed before it is ready.
PIPELINE_DAGS = ("inference_dev", "sync_data_dev")
#: Health entries of ``/api/v2/monitor/health`` that must say ``healthy``.
HEALTH_PARTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


def _bin(name: str) -> str:
    """A console script of this environment (``airflow``, ``smserve``)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


class Deployment:
    """PostgreSQL, the stack and Airflow's components as processes; see the module docstring.

    Args:
        executor: ``celery`` (SQS broker on the stack, one worker) or ``local``.
        endpoint_url: a running stack (or any AWS-compatible endpoint); None starts one.
        home: ``AIRFLOW_HOME`` (kept); None: a temporary folder, removed at stop.
        api_port: the api-server's port; None picks a free one.
        variable: keys for the ``smserve_dev`` Variable on top of the resources' names.
        region: the AWS region.
        echo: prints one progress line.
        worker_concurrency: task slots of the Celery worker (and the executor's parallelism).
    """

    def __init__(self, executor: str = "celery", *, endpoint_url: str | None = None,
                 home: Path | None = None, api_port: int | None = None,
                 variable: Mapping[str, Any] | None = None, region: str = "us-east-1",
                 echo: Callable[[str], None] | None = None, worker_concurrency: int = 8) -> None:
        from serving.ports import free_port, is_free

        if executor not in EXECUTORS:
            raise DeployError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
        if api_port is not None and not is_free(api_port):
            raise DeployError(f"port {api_port} is in use: pick another with --api-port, or "
                              "omit it for a free one")
        self.executor = executor
        self.region = region
        self.echo = echo or (lambda _line: None)
        self.keep_home = home is not None
        self.home = Path(home).resolve() if home else Path(tempfile.mkdtemp(
            prefix="smserve-airflow-deploy-"))
        self.api_port = api_port or free_port()
        self.endpoint_url = endpoint_url
        self.variable_settings = dict(variable or {})
        self.worker_concurrency = worker_concurrency
        self.postgres = Postgres(free_port(), self.home / "logs" / "postgres.log")
        self.stack: Component | None = None
        self.components: list[Component] = []
        self.variable: dict[str, Any] = {}
        self.broker_queue_url: str | None = None
        self._jwt_secret = secrets.token_urlsafe(32)
        self.api = AirflowApi(self.api_url)

    # --- what users see -------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        """The api-server (UI and REST API)."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def logs(self) -> Path:
        """Where each component's log goes."""
        return self.home / "logs"

    def stack_environ(self) -> dict[str, str]:
        """AWS variables pointing at the endpoint (dummy credentials)."""
        from serving.local.stack import LOCAL_CREDENTIALS

        if self.endpoint_url is None:
            return {}
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_DEFAULT_REGION": self.region,
                "AWS_REGION": self.region, **LOCAL_CREDENTIALS}

    def airflow_environ(self) -> dict[str, str]:
        """Every ``AIRFLOW*`` variable the components (and an ``airflow`` CLI) need."""
        from local_test.airflow_setup import DAGS, aws_connection

        env = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS[self.executor],
            "AIRFLOW__CORE__PARALLELISM": str(self.worker_concurrency),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.logs / "tasks"),
            # Hand-overs: an idle scheduler loop sleeps this long before it queues a finished
            # task's downstream (default 1 s: ~0.5 s a hand-over); 0.25 s costs ~5 % of a core
            # more while idle (bench/scheduler_idle_cpu.py). Production keeps the default 1 s.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            "AIRFLOW_CONN_AWS_DEFAULT": aws_connection(self.endpoint_url, self.region),
        }
        if self.executor == "celery":
            host = (self.endpoint_url or "").split("://", 1)[-1]
            env.update({
                "AIRFLOW__CELERY__BROKER_URL": f"sqs://testing:testing@{host}",
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.postgres.url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__IS_SECURE": "False",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__REGION": self.region,
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "43200",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__WAIT_TIME_SECONDS": "1",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__POLLING_INTERVAL": "0.2",
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__PREDEFINED_QUEUES": json.dumps(
                    {"default": {"url": self.broker_queue_url}}),
            })
        return env

    def environ(self) -> dict[str, str]:
        """The components' environment: ours without any other Airflow settings, plus theirs."""
        return {**base_environ(), **self.stack_environ(), **self.airflow_environ()}

    def exports(self) -> str:
        """``export`` lines that give a shell this deployment's ``airflow`` CLI and AWS."""
        import shlex

        env = {**self.stack_environ(), **self.airflow_environ()}
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())

    def processes(self) -> set[int]:
        """Every process the deployment runs now (guards and their trees)."""
        found: set[int] = set()
        for component in self._all():
            found |= component.tree()
        return found

    def _all(self) -> list[Component]:
        parts = list(self.components)
        if self.stack is not None:
            parts.append(self.stack)
        if self.postgres.component is not None:
            parts.append(self.postgres.component)
        return parts

    # --- start ----------------------------------------------------------------------------

    def start(self, timeout: float = 600.0) -> Deployment:
        """Start everything and wait until it is healthy (stops what started on failure)."""
        deadline = time.monotonic() + timeout
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            self.postgres.start({})
            self.echo(f"PostgreSQL on 127.0.0.1:{self.postgres.port} "
                      f"(data in {self.postgres.folder})")
            if self.endpoint_url is None:
                self._start_stack(deadline)
            self._create_resources()
            self._migrate(deadline)
            self._start_components()
            self._wait_healthy(deadline)
            self.api.set_variable(VARIABLE, self.variable)
            self.echo(f"Variable {VARIABLE}: {json.dumps(self.variable)}")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_stack(self, deadline: float) -> None:
        from serving.ports import free_port

        port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.stack = Component("stack", [_bin("smserve"), "local", "up", "--port", str(port)],
                               self.logs / "stack.log", base_environ()).start()
        while not answers(self.endpoint_url + "/moto-api/"):
            self.stack.check()
            before(deadline, "the embedded stack did not answer", self.stack)
            time.sleep(0.2)
        self.echo(f"embedded AWS stack on {self.endpoint_url} (smserve local up)")

    def _create_resources(self) -> None:
        from local_test.airflow_setup import PipelineResources, create_resources
        from serving.aws import ClientFactory
        from serving.settings import Settings

        clients = ClientFactory(Settings.from_environ({**os.environ, **self.stack_environ()}))
        resources = PipelineResources()
        try:
            created = create_resources(clients, resources,
                                       echo=lambda line: self.echo("  " + line))
        except Exception as err:  # botocore's connection and API errors
            raise DeployError(f"cannot create the pipeline's resources at {self.endpoint_url} "
                              f"({type(err).__name__}: {err}); is the stack running there "
                              "(smserve local up)?") from err
        self.variable = resources.variable(images=created.images, **self.variable_settings)
        if self.executor == "celery":
            sqs = clients.client("sqs")
            self.broker_queue_url = str(sqs.create_queue(QueueName=BROKER_QUEUE, Attributes={
                "VisibilityTimeout": "43200"})["QueueUrl"])
            self.echo(f"  Celery broker: SQS queue {BROKER_QUEUE}")

    def _migrate(self, deadline: float) -> None:
        log = self.logs / "db-migrate.log"
        with log.open("ab") as out:
            done = subprocess.run([_bin("airflow"), "db", "migrate"], stdout=out,
                                  stderr=subprocess.STDOUT, env=self.environ(), check=False,
                                  timeout=max(30.0, deadline - time.monotonic()))
        if done.returncode != 0:
            raise DeployError(f"airflow db migrate failed (status {done.returncode}); the end "
                              f"of {log}:\n{tail(log)}")
        self.echo("airflow db migrate: done")

    def _start_components(self) -> None:
        airflow = _bin("airflow")
        commands = {"api-server": [airflow, "api-server"],
                    "scheduler": [airflow, "scheduler"],
                    "dag-processor": [airflow, "dag-processor"],
                    "triggerer": [airflow, "triggerer"]}
        if self.executor == "celery":
            commands["celery-worker"] = [airflow, "celery", "worker", "--without-mingle",
                                         "--without-gossip"]
        from local_test.airflow_setup import DAGS

        env = self.environ()
        for name, command in commands.items():
            # the api-server's guard removes a temporary home if this process is killed
            remove = self.home if name == "api-server" and not self.keep_home else None
            own = dict(env)
            if name == "triggerer":  # it imports triggers (smserve_dags.triggers) itself, and
                # unlike the dag-processor and task runs it does not put the DAGs folder on
                # sys.path
                own["PYTHONPATH"] = f"{DAGS}{os.pathsep}{env['PYTHONPATH']}"
            self.components.append(Component(name, command, self.logs / f"{name}.log",
                                             own, remove=remove).start())

    def _wait_healthy(self, deadline: float) -> None:
        waiting = "the api-server"
        while True:
            for component in self._all():
                component.check()
            waiting = self._not_ready()
            if not waiting:
                break
            before(deadline, f"still waiting for {waiting}", None, self.logs)
            time.sleep(0.5)
        self.echo(f"Airflow {EXECUTORS[self.executor]} ready: api-server, scheduler, "
                  "dag-processor, triggerer" + (", celery worker" if self.executor == "celery"
                                                 else ""))

    def _not_ready(self) -> str:
        """What is not ready yet ('' when everything is)."""
        try:
            health = self.api.health()
        except (OSError, ValueError, RuntimeError):
            return "the api-server"
        unhealthy = [part for part in HEALTH_PARTS
                     if (health.get(part) or {}).get("status") != "healthy"]
        if unhealthy:
            return ", ".join(unhealthy) + " (their heartbeat)"
        if self.executor == "celery":
            log = self.logs / "celery-worker.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            if " ready." not in text:
                return "the celery worker (its 'ready.' line)"
        missing = sorted(set(PIPELINE_DAGS) - set(self.api.dag_ids()))
        if missing:
            return "the dag-processor to parse " + ", ".join(missing)
        return ""

    # --- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop Airflow's components, the stack, then PostgreSQL (idempotent)."""
        for component in self.components:
            if component.alive() and component.process is not None:
                component.process.terminate()  # all at once; each guard stops its tree
        for component in self.components:
            component.stop()
        self.components = []
        if self.stack is not None:
            self.stack.stop()
            self.stack = None
        self.postgres.stop()
        if not self.keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def instructions(deployment: Deployment) -> list[str]:
    """What to print once the deployment is ready: URL, exports, trigger commands."""
    env_file = deployment.home / "env.sh"
    env_file.write_text(deployment.exports() + "\n")
    return usage(deployment.api_url, deployment.logs, env_file, deployment.exports())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m local_test.airflow_deploy``: deploy, print how to use it, run until stopped."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executor", choices=sorted(EXECUTORS), default="celery",
                        help="celery: one worker, SQS broker on the stack (default); local: "
                             "LocalExecutor in the scheduler")
    parser.add_argument("--endpoint", default=None, metavar="URL",
                        help="a running stack (smserve local up) instead of starting one")
    parser.add_argument("--home", default=None, type=Path,
                        help="AIRFLOW_HOME, kept at stop (default: a temporary folder, removed)")
    parser.add_argument("--api-port", type=int, default=None, metavar="N",
                        help="the api-server's port (default: a free one)")
    args = parser.parse_args(argv)
    if args.endpoint and not args.endpoint.startswith(("http://", "https://")):
        parser.error(f"--endpoint {args.endpoint}: give a URL, like http://127.0.0.1:PORT")
    if args.api_port is not None and not 1024 <= args.api_port <= 65535:
        parser.error(f"--api-port {args.api_port}: use a port from 1024 to 65535")

    def _stop(signo: int, frame: object) -> None:
        raise KeyboardInterrupt(signo)

    for signo in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signo, _stop)
    try:
        deployment = Deployment(args.executor, endpoint_url=args.endpoint, home=args.home,
                                api_port=args.api_port, echo=lambda line: print(line, flush=True))
        with deployment:
            for line in instructions(deployment):
                print(line, flush=True)
            while all(c.alive() for c in deployment.components):
                time.sleep(1)
            dead = [c for c in deployment.components if not c.alive()]
            print(f"{dead[0].name} exited; the end of {dead[0].log}:\n{tail(dead[0].log)}",
                  file=sys.stderr)
            return 1
    except DeployError as err:
        keep = "" if args.home else " (the temporary home is removed: --home DIR keeps the logs)"
        print(f"airflow_deploy: error: {err}{keep}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
