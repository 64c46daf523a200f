"""The warm pool: real server processes (the process runner's stand-in), reused or replaced."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.runners.process import Container, ProcessRunner
from serving.runners.warm import WarmPool, model_digest, pool_key
from tests.unit.test_runners_process import SERVER, gone


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "model-src"
    (model / "code").mkdir(parents=True)
    (model / "weights.npz").write_bytes(b"weights")
    (model / "code" / "serving.py").write_text("def model_fn(d):\n    return d\n")
    return model


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def lines() -> list[str]:
    return []


@pytest.fixture()
def pool(tmp_path: Path, clock: Clock, lines: list[str]) -> Iterator[WarmPool]:
    script = tmp_path / "fake_server.py"
    script.write_text(SERVER)
    runner = ProcessRunner([sys.executable, str(script)],
                           env={"PATH": os.environ.get("PATH", ""), "BASE": "1"},
                           startup_timeout=30, stop_grace=2)
    with WarmPool(runner, idle_timeout=60, clock=clock, log=lines.append) as warm:
        yield warm


def serve_one_job(pool: WarmPool, model_dir: Path, env: dict[str, str] | None = None
                  ) -> tuple[Container, bool]:
    container, reused = pool.start(model_dir, env or {"SMSERVE_ALLOWED_BUCKETS": "a"})
    pool.release(container)
    return container, reused


def test_the_same_model_in_the_same_environment_reuses_the_server(
        pool: WarmPool, model_dir: Path, lines: list[str]) -> None:
    first, reused_first = serve_one_job(pool, model_dir)
    second, reused_second = serve_one_job(pool, model_dir)
    assert (reused_first, reused_second) == (False, True)
    assert second is first and first.alive()
    assert pool.pids() == [first.pid]
    assert f"warm server reused for model-src (pid {first.pid}, 1 earlier job(s))" in lines
    assert pool.servers() == [f"model-src: pid {first.pid}, {first.url}, idle 0 s, 2 job(s)"]


def test_another_allow_list_or_a_changed_model_gets_its_own_server(
        pool: WarmPool, model_dir: Path) -> None:
    first, _ = serve_one_job(pool, model_dir, {"SMSERVE_ALLOWED_BUCKETS": "a"})
    other_env, reused = serve_one_job(pool, model_dir, {"SMSERVE_ALLOWED_BUCKETS": "b"})
    assert not reused and other_env.pid != first.pid
    (model_dir / "code" / "serving.py").write_text("def model_fn(d):\n    return 2\n")
    changed, reused = serve_one_job(pool, model_dir, {"SMSERVE_ALLOWED_BUCKETS": "a"})
    assert not reused and changed.pid not in (first.pid, other_env.pid)
    assert sorted(pool.pids()) == sorted([first.pid, other_env.pid, changed.pid])


def test_a_warm_server_whose_process_died_is_replaced_with_a_line(
        pool: WarmPool, model_dir: Path, lines: list[str]) -> None:
    first, _ = serve_one_job(pool, model_dir)
    os.killpg(first.pid, signal.SIGKILL)
    first.process.wait(10)
    second, reused = pool.start(model_dir, {"SMSERVE_ALLOWED_BUCKETS": "a"})
    assert not reused and second.pid != first.pid and second.alive()
    assert any(f"(pid {first.pid}) had exited (code -9); starting a fresh one" in line
               for line in lines), lines
    assert pool.pids() == [second.pid]


def test_two_jobs_at_once_never_share_a_server(pool: WarmPool, model_dir: Path) -> None:
    serve_one_job(pool, model_dir)
    got: list[tuple[Container, bool]] = []
    lock = threading.Lock()

    def job() -> None:
        answer = pool.start(model_dir, {"SMSERVE_ALLOWED_BUCKETS": "a"})
        with lock:
            got.append(answer)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(reused for _, reused in got) == [False, True]
    assert got[0][0].pid != got[1][0].pid


def test_idle_servers_stop_after_the_timeout_and_close_stops_the_rest(
        pool: WarmPool, model_dir: Path, clock: Clock) -> None:
    idle, _ = serve_one_job(pool, model_dir)
    clock.now += 30
    busy, _ = pool.start(model_dir, {"SMSERVE_ALLOWED_BUCKETS": "other"})
    assert pool.reap() == []
    clock.now += 30
    assert pool.reap() == [f"warm server for model-src (pid {idle.pid}) stopped after 60 s idle"]
    assert gone(idle.pid) and busy.alive()
    pool.close()
    assert gone(busy.pid) and pool.pids() == []
    with pytest.raises(RuntimeError, match="closed"):
        pool.start(model_dir, {})


def test_a_server_released_as_not_reusable_is_stopped(pool: WarmPool, model_dir: Path) -> None:
    container, _ = pool.start(model_dir, {})
    pool.release(container, reusable=False)
    assert gone(container.pid) and pool.pids() == []


def test_the_key_covers_every_file_and_the_whole_environment(model_dir: Path) -> None:
    digest = model_digest(model_dir)
    assert digest == model_digest(model_dir)
    (model_dir / "weights.npz").write_bytes(b"weights2")
    assert model_digest(model_dir) != digest
    assert pool_key(digest, {"A": "1", "B": "2"}) == pool_key(digest, {"B": "2", "A": "1"})
    assert pool_key(digest, {"A": "1"}) != pool_key(digest, {"A": "1", "B": "2"})
