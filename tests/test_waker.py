"""Waker (API.md section 2), on every backend: real threads, coalescing."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import open_fds
from metalio import Events, Poll, Ready, Waker


def tokens(poll: Poll, timeout: float) -> list[tuple[int, Ready]]:
    events = Events()
    poll.poll(events, timeout)
    return [(e.token, e.readiness) for e in events]


def test_wake_from_another_thread_unblocks_poll(poll: Poll) -> None:
    waker = Waker(poll.registry, 77)
    timer = threading.Timer(0.2, waker.wake)
    t0 = time.monotonic()
    timer.start()
    try:
        got = tokens(poll, 10)
    finally:
        timer.join()
    assert time.monotonic() - t0 < 5
    assert got and all(tok == 77 and ready.readable for tok, ready in got)
    waker.close()


def test_wakes_coalesce_and_then_nothing(poll: Poll) -> None:
    waker = Waker(poll.registry, 5)

    def hammer() -> None:
        for _ in range(200):
            waker.wake()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    got = tokens(poll, 1)
    assert 1 <= len(got) <= 2 and all(tok == 5 for tok, _ in got)
    assert tokens(poll, 0.05) == []
    assert tokens(poll, 0.05) == []
    # a wake after the event was consumed produces a new one
    waker.wake()
    assert [tok for tok, _ in tokens(poll, 1)] == [5]
    assert tokens(poll, 0.05) == []
    waker.close()


def test_repeated_wake_cycles(poll: Poll) -> None:
    with Waker(poll.registry, 1) as waker:
        for _ in range(50):
            waker.wake()
            waker.wake()
            assert [tok for tok, _ in tokens(poll, 1)] == [1]
        assert tokens(poll, 0) == []


def test_waker_validation(poll: Poll) -> None:
    with pytest.raises(TypeError):
        Waker(poll, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Waker(poll.registry, -1)
    with pytest.raises(TypeError):
        Waker(poll.registry, 1.5)  # type: ignore[arg-type]


def test_waker_close_releases_fds(backend: str) -> None:
    from conftest import open_poll

    before = open_fds()
    for _ in range(50):
        with open_poll(backend) as p:
            w = Waker(p.registry, 3)
            w.wake()
            w.close()
            w.close()
    assert open_fds() == before


def test_wake_after_poll_closed(make_poll) -> None:
    p = make_poll()
    w = Waker(p.registry, 3)
    p.close()
    # acceptable: a no-op or ValueError; unacceptable: a crash or a hang
    try:
        w.wake()
    except ValueError:
        pass
    w.close()
