"""The deployment's process handling (local_test/_deploy_procs.py): real guards, real children."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from local_test._deploy_procs import Component, DeployError, tail
from local_test.airflow_deploy import Deployment, main


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_component_that_exits_at_start_fails_with_the_end_of_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "broken.log"
    component = Component("broken", ["sh", "-c", "echo first; echo 'the reason'; exit 3"], log,
                          dict(os.environ)).start()
    assert _wait_for(lambda: not component.alive())

    with pytest.raises(DeployError) as caught:
        component.check()

    assert "broken exited with status 3" in str(caught.value)
    assert "the reason" in str(caught.value) and str(log) in str(caught.value)
    assert tail(log, 1) == "the reason"


def test_stop_ends_the_component_and_what_it_started(tmp_path: Path) -> None:
    component = Component("sleeper", ["sh", "-c", "sleep 300 & sleep 300; wait"],
                          tmp_path / "sleeper.log", dict(os.environ)).start()
    assert _wait_for(lambda: len(component.tree()) >= 4)  # guard, sh, two sleeps
    started = component.tree()

    component.stop()

    assert [pid for pid in started if _alive(pid)] == []
    component.stop()  # idempotent


def test_a_killed_deployer_leaves_no_component_and_no_folder(tmp_path: Path) -> None:
    folder = tmp_path / "private"
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from local_test._deploy_procs import Component\n"
        f"Path({str(folder)!r}).mkdir()\n"
        f"c = Component('sleeper', ['sleep', '300'], Path({str(tmp_path / 'c.log')!r}),\n"
        f"              dict(os.environ), remove=Path({str(folder)!r})).start()\n"
        "while len(c.tree()) < 2: time.sleep(0.05)\n"
        "print(' '.join(map(str, sorted(c.tree()))), flush=True)\n"
        "time.sleep(300)\n")
    deployer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(Path.cwd())}, text=True)
    try:
        assert deployer.stdout is not None
        pids = [int(p) for p in deployer.stdout.readline().split()]
        assert len(pids) >= 2 and folder.exists()

        deployer.send_signal(signal.SIGKILL)
        deployer.wait(timeout=10)

        assert _wait_for(lambda: not any(_alive(pid) for pid in pids)), pids
        assert _wait_for(lambda: not folder.exists())
    finally:
        deployer.kill()
        deployer.wait(timeout=10)


def test_an_unknown_executor_or_a_busy_port_is_refused_before_anything_starts() -> None:
    with pytest.raises(DeployError, match="unknown executor 'kubernetes'"):
        Deployment("kubernetes")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DeployError, match=f"port {port} is in use: pick another"):
            Deployment(api_port=port, home=None)


def test_the_command_refuses_a_bad_port_executor_or_endpoint(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--api-port", "80"])
    assert caught.value.code == 2
    assert "--api-port 80: use a port from 1024 to 65535" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["--executor", "kubernetes"])
    assert caught.value.code == 2
    with pytest.raises(SystemExit) as caught:
        main(["--endpoint", "127.0.0.1:4566"])
    assert caught.value.code == 2
    assert "give a URL, like http://127.0.0.1:PORT" in capsys.readouterr().err
