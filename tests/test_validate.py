"""One rule for seconds and one for counts, at every public entry point (``metalio._validate``).

Seconds: any real number (``int``, ``float``, ``Fraction``, ``Decimal``) is
accepted and means the same as its ``float``; ``bool`` and non-numbers are
``TypeError``; NaN is ``ValueError``; a wait longer than ``MAX_WAIT`` is a
wait without a bound, in ``Poll.poll`` and ``run_once`` alike.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from metalio import EventLoop, EventLoopConfig, Events, Handler, Poll, Timer
from metalio._validate import MAX_WAIT, count, wait

REALS = [0.25, Fraction(1, 4), Decimal("0.25")]
NOT_SECONDS = [True, "1", b"1", None, [1], 1j]


class Fires(Handler):
    def __init__(self) -> None:
        self.payloads: list[Any] = []

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        self.payloads.append(payload)


def clock_at(now: list[float]) -> Callable[[], float]:
    return lambda: now[0]


# -- delays ----------------------------------------------------------------------------


@pytest.mark.parametrize("delay", REALS, ids=type)
def test_loop_timeout_accepts_every_real(delay: Any) -> None:
    """Before: a Decimal delay leaked "unsupported operand type(s) for +"."""
    now = [100.0]
    with EventLoop(EventLoopConfig(clock=clock_at(now))) as loop:
        handle = loop.timeout("x", delay)
        assert loop._timer.deadline_of(handle) == 100.25
        now[0] = 100.25
        handler = Fires()
        loop.run_once(handler, timeout=0)
        assert handler.payloads == ["x"]


@pytest.mark.parametrize("delay", REALS, ids=type)
def test_timer_set_timeout_accepts_every_real(delay: Any) -> None:
    now = [5.0]
    timer = Timer(clock=clock_at(now))
    handle = timer.set_timeout(delay, "p")
    assert timer.deadline_of(handle) == 5.25


@pytest.mark.parametrize("bad", NOT_SECONDS, ids=repr)
def test_delays_refuse_non_reals(bad: Any) -> None:
    with EventLoop() as loop:
        with pytest.raises(TypeError, match="delay must be a real number"):
            loop.timeout("x", bad)
        with pytest.raises(TypeError, match="delay must be a real number"):
            Timer().set_timeout(bad, "x")


@pytest.mark.parametrize("bad", [math.nan, Decimal("NaN"), -1, Fraction(-1, 3), math.inf, 10**400])
def test_delays_refuse_nan_negative_infinite(bad: Any) -> None:
    with EventLoop() as loop, pytest.raises(ValueError):
        loop.timeout("x", bad)
    with pytest.raises(ValueError):
        Timer().set_timeout(bad, "x")


# -- waits -----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0, 0.0, -5, Fraction(0), Decimal("-1"), Decimal("0.01")])
def test_short_waits_everywhere(timeout: Any) -> None:
    with Poll() as poll:
        assert poll.poll(Events(), timeout) == 0
    with EventLoop() as loop:
        loop.run_once(Handler(), timeout=timeout)


@pytest.mark.parametrize("bad", [True, "1", b"1", [1], 1j], ids=repr)
def test_waits_refuse_non_reals(bad: Any) -> None:
    with Poll() as poll, pytest.raises(TypeError, match="timeout must be a real number"):
        poll.poll(Events(), bad)
    with EventLoop() as loop, pytest.raises(TypeError, match="timeout must be a real number"):
        loop.run_once(Handler(), timeout=bad)


@pytest.mark.parametrize("nan", [math.nan, Decimal("NaN")])
def test_waits_refuse_nan(nan: Any) -> None:
    with Poll() as poll, pytest.raises(ValueError, match="NaN"):
        poll.poll(Events(), nan)
    with EventLoop() as loop, pytest.raises(ValueError, match="NaN"):
        loop.run_once(Handler(), timeout=nan)


def test_huge_waits_are_unbounded_in_poll_and_run_once_alike() -> None:
    """Before: Poll.poll blocked forever above MAX_TIMEOUT while run_once clamped."""
    for huge in (MAX_WAIT * 2, math.inf, 10**400, Decimal("1e30")):
        assert wait(huge) is None
    a, b = socket.socketpair()
    with a, b, EventLoop() as loop:
        loop.register(a, 1, 1)

        class Ready(Handler):
            def ready(self, loop: EventLoop, token: int, ready: Any) -> None:
                pass

        threading.Timer(0.1, b.send, (b"x",)).start()
        start = time.monotonic()
        loop.run_once(Ready(), timeout=math.inf)  # returns on the event, not at once
        assert time.monotonic() - start >= 0.05


# -- ticks and counts ------------------------------------------------------------------


@pytest.mark.parametrize("tick", REALS, ids=type)
def test_ticks_accept_every_real(tick: Any) -> None:
    assert Timer(tick=tick).tick == 0.25
    assert EventLoopConfig(timer_tick=tick).timer_tick == tick


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, Decimal("0")])
def test_ticks_refuse_non_positive(bad: Any) -> None:
    with pytest.raises(ValueError, match="positive finite"):
        Timer(tick=bad)
    with pytest.raises(ValueError, match="positive finite"):
        EventLoopConfig(timer_tick=bad)


@pytest.mark.parametrize("bad", [True, 1.0, "1", None, Decimal(1)], ids=repr)
def test_counts_are_ints_only(bad: Any) -> None:
    with pytest.raises(TypeError):
        count(bad, "n")
    with pytest.raises(TypeError):
        EventLoopConfig(events_capacity=bad)
    with pytest.raises(TypeError):
        Timer(capacity=bad)


def test_count_range() -> None:
    assert count(3, "n", maximum=3) == 3
    with pytest.raises(ValueError, match=">= 1"):
        count(0, "n")
    with pytest.raises(ValueError, match="<= 3"):
        count(4, "n", maximum=3)
