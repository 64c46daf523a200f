"""The processes of a local Airflow deployment: each one under a guard, and a private PostgreSQL.

Every component runs as ``python -m serving.server.guard --pdeathsig PID -- COMMAND`` (see
:mod:`serving.server.guard`): the guard is a child subreaper that ends the component's
whole tree when told to stop, when COMMAND exits, or when the deploying process dies
(even by SIGKILL), so nothing a deployment started outlives it.

PostgreSQL refuses to run as root: as root, the cluster's folder belongs to the
``postgres`` user and ``initdb``/``postgres`` run as that user (``setpriv``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Where Debian's ``postgresql`` package puts the server binaries (newest first).
POSTGRES_ROOTS = ("/usr/lib/postgresql",)
#: Seconds a component gets to stop before its guard is killed.
STOP_TIMEOUT = 20.0


class DeployError(RuntimeError):
    """The deployment could not start; the message says which part and what to fix."""


def postgres_bin() -> Path | None:
    """The folder of ``initdb`` and ``postgres`` (Debian's layout, else ``PATH``), or None."""
    for root in POSTGRES_ROOTS:
        versions = sorted(Path(root).glob("*/bin/postgres"), reverse=True)
        if versions:
            return versions[0].parent
    found = shutil.which("postgres")
    return Path(found).parent if found else None


def _as_postgres() -> list[str]:
    """The prefix that runs a command as ``postgres`` when this process is root, else none."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as err:
        raise DeployError("PostgreSQL refuses to run as root and there is no `postgres` user: "
                          "install Debian's postgresql package (apt-get install -y postgresql) "
                          "or run as another user") from err
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file (or why there are none)."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:]) or "(empty log)"


@dataclass
class Component:
    """One long-running process of the deployment, under a guard, logging to ``log``.

    Attributes:
        name: what the messages call it (``scheduler``, ``postgres``, ...).
        command: what the guard runs.
        log: its stdout and stderr.
        env: its environment.
        remove: a folder the guard removes when this process dies without stopping it.
    """

    name: str
    command: Sequence[str]
    log: Path
    env: Mapping[str, str]
    remove: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Component:
        """Start it (the guard watches this process: started from the main thread, it also
        gets a parent-death signal)."""
        import threading

        guard = [sys.executable, "-m", "serving.server.guard"]
        if threading.current_thread() is threading.main_thread():
            guard.append("--pdeathsig")
        if self.remove is not None:
            guard += ["--remove", str(self.remove)]
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            try:
                self.process = subprocess.Popen(
                    [*guard, str(os.getpid()), "--", *self.command], stdin=subprocess.DEVNULL,
                    stdout=out, stderr=subprocess.STDOUT, env=dict(self.env),
                    start_new_session=True)
            except OSError as err:
                raise DeployError(f"cannot start {self.name} ({self.command[0]}): {err}") from err
        return self

    @property
    def pid(self) -> int | None:
        """The guard's process id."""
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        """True while the guard (and so the component) runs."""
        return self.process is not None and self.process.poll() is None

    def check(self) -> None:
        """Raise :class:`DeployError` with the log's tail when the component has exited."""
        if self.process is not None and self.process.poll() is not None:
            raise DeployError(f"{self.name} exited with status {self.process.returncode} "
                              f"during start-up; the end of {self.log}:\n{tail(self.log)}")

    def tree(self) -> set[int]:
        """The guard and every process below it."""
        from serving.server.guard import descendants

        if not self.alive() or self.pid is None:
            return set()
        return {self.pid, *descendants(self.pid)}

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the guard to stop the component's tree; kill it after ``timeout`` (idempotent)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@dataclass
class Postgres:
    """A private PostgreSQL cluster in a temporary folder, on ``127.0.0.1:port`` and a socket.

    The folder is made at start (under the system's temporary folder, which the
    ``postgres`` user can reach, unlike a root-only home) and removed at stop.

    Attributes:
        port: its TCP port on loopback.
        log: the server's log.
        database: the database Airflow uses (made at start).
        folder: the cluster's data (``data/``) and socket, once started.
    """

    port: int
    log: Path
    database: str = "airflow"
    folder: Path | None = None
    component: Component | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of :attr:`database` (trust authentication on loopback)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{self.database}"

    def start(self, env: Mapping[str, str], timeout: float = 60.0) -> Postgres:
        """``initdb``, start ``postgres`` under a guard, wait until it answers, create the db."""
        binaries = postgres_bin()
        if binaries is None:
            raise DeployError("PostgreSQL is not installed: apt-get install -y postgresql "
                              "(Debian's package; /usr/lib/postgresql/*/bin)")
        prefix = _as_postgres()
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="smserve-postgres-"))
        _chown_postgres(self.folder)
        data = self.folder / "data"
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
        init = subprocess.run(
            [*prefix, str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
             "--auth=trust", "--encoding=UTF8", "--no-sync"],
            capture_output=True, text=True, env=base_env, cwd=self.folder, check=False)
        if init.returncode != 0:
            raise DeployError(f"initdb failed in {data}:\n{(init.stdout + init.stderr)[-2000:]}")
        self.component = Component("postgres", [
            *prefix, str(binaries / "postgres"), "-D", str(data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
            "-c", "fsync=off", "-c", "max_connections=200"],
            self.log, {**base_env, **env}, remove=self.folder).start()
        deadline = time.monotonic() + timeout
        while not self._answers():
            self.component.check()
            if time.monotonic() > deadline:
                raise DeployError(f"PostgreSQL did not answer on 127.0.0.1:{self.port} within "
                                  f"{timeout:.0f} s:\n{tail(self.component.log)}")
            time.sleep(0.2)
        self._create_database()
        return self

    def _connect(self, database: str) -> object:
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname=database, connect_timeout=2)

    def _answers(self) -> bool:
        import psycopg2

        try:
            conn = self._connect("postgres")
        except psycopg2.OperationalError:
            return False
        conn.close()  # type: ignore[attr-defined]
        return True

    def _create_database(self) -> None:
        conn = self._connect("postgres")
        try:
            conn.autocommit = True  # type: ignore[attr-defined]
            with conn.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            conn.close()  # type: ignore[attr-defined]

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the server: no waiting for clients), the guard, the folder."""
        if self.component is not None:
            self._shut_down(self.component)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _shut_down(self, component: Component) -> None:
        from serving.server.guard import descendants

        pid = component.pid
        if component.alive() and pid is not None and self.folder is not None:
            pidfile = self.folder / "data" / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError, IndexError):
                server = int(pidfile.read_text().split()[0])
                if server in descendants(pid):
                    os.kill(server, signal.SIGINT)
                    deadline = time.monotonic() + STOP_TIMEOUT
                    while server in descendants(pid) and time.monotonic() < deadline:
                        time.sleep(0.1)
        component.stop()


def base_environ() -> dict[str, str]:
    """This process's environment less any Airflow or AWS settings; the repository importable."""
    root = Path(__file__).resolve().parents[1]
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "AWS_", "SMSERVE_AIRFLOW"))}
    path = base.get("PYTHONPATH")
    base["PYTHONPATH"] = str(root) + (os.pathsep + path if path else "")
    base.setdefault("SETUPTOOLS_USE_DISTUTILS", "stdlib")
    return base


def answers(url: str) -> bool:
    """True when ``url`` answers with a success status."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (urllib.error.URLError, OSError):
        return False


def before(deadline: float, what: str, component: Component | None,
           logs: Path | None = None) -> None:
    """Raise :class:`DeployError` (with a log's tail) once ``deadline`` has passed."""
    if time.monotonic() < deadline:
        return
    detail = f"; the end of {component.log}:\n{tail(component.log)}" if component else ""
    if logs is not None:
        detail = f"; logs in {logs}"
    raise DeployError(f"start-up timed out: {what}{detail}")
