"""The operators' bounded concurrent calls: order kept, bounded, every call ended before a raise."""

from __future__ import annotations

import threading

import pytest

from smserve_dags.operators.aws import at_once, each


def test_each_keeps_the_items_order_when_later_calls_end_first() -> None:
    first_may_end = threading.Event()
    ended: list[int] = []

    def call(item: int) -> int:
        if item == 0:
            assert first_may_end.wait(30), "the other calls did not run while the first waited"
        ended.append(item)
        if len(ended) == 3:
            first_may_end.set()
        return item * 10

    assert each(call, range(4), limit=4) == [0, 10, 20, 30]
    assert ended[-1] == 0, "the first call ended last, yet its result comes first"


def test_each_runs_at_most_limit_calls_at_once() -> None:
    barrier = threading.Barrier(3, timeout=30)  # breaks unless 3 calls run at the same time
    lock = threading.Lock()
    running = peak = 0

    def call(item: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        barrier.wait()
        with lock:
            running -= 1
        return item

    assert each(call, range(9), limit=3) == list(range(9))
    assert peak == 3


def test_each_raises_the_first_failure_in_order_after_every_call_ended() -> None:
    done: list[int] = []

    def call(item: int) -> int:
        if item in (1, 3):
            raise ValueError(f"item {item}")
        done.append(item)
        return item

    with pytest.raises(ValueError, match="item 1"):
        each(call, range(6), limit=2)
    assert sorted(done) == [0, 2, 4, 5], "the calls after the failure still ran to their end"


def test_at_once_runs_both_together_and_returns_both() -> None:
    second_started = threading.Event()

    def first() -> str:
        assert second_started.wait(30), "the second call did not run beside the first"
        return "a"

    def second() -> int:
        second_started.set()
        return 2

    assert at_once(first, second) == ("a", 2)


def test_at_once_waits_for_the_second_before_raising_the_first_failure() -> None:
    second_ended = threading.Event()

    def first() -> None:
        raise KeyError("first")

    def second() -> None:
        second_ended.set()
        raise KeyError("second")

    with pytest.raises(KeyError, match="first"):
        at_once(first, second)
    assert second_ended.is_set()
    with pytest.raises(KeyError, match="second"):
        at_once(lambda: 1, second)
