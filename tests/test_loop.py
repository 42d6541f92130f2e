"""EventLoop: configuration, the iteration order, timers through the loop,
ready-merging, exception semantics, shutdown and mio's echo-server scenario.

I/O tests run on every backend this checkout offers (``ValueError`` from
``Poll(backend=...)`` skips the name).  Every wait is bounded; only
127.0.0.1 is used.  Timing assertions are one-sided with generous margins:
"never early" is exact, "not too late" allows seconds.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import select
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from metalio import Interest, Poll, PollOpt, Ready
from metalio._backends import available_backends, open_backend
from metalio._dispatch_index import DispatchIndex
from metalio.loop import EventLoop, EventLoopConfig, Handler

BACKENDS = ("epoll", "poll", "select")
R, W = Interest.READABLE, Interest.WRITABLE


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in available_backends():
        pytest.skip(f"backend {name!r} not available on this checkout")
    return name


@pytest.fixture
def loop(backend: str) -> Iterator[EventLoop]:
    with EventLoop(EventLoopConfig(backend=backend)) as ev:
        yield ev


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


class Recorder(Handler):
    """Records every callback in order as tuples."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        self.log.append(("ready", token, ready))

    def notify(self, loop: EventLoop, msg: Any) -> None:
        self.log.append(("notify", msg))

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        self.log.append(("timeout", payload))

    def tick(self, loop: EventLoop) -> None:
        self.log.append(("tick",))

    def kinds(self, kind: str) -> list[tuple[Any, ...]]:
        return [entry for entry in self.log if entry[0] == kind]


class ManualClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------
# EventLoopConfig


def test_config_defaults() -> None:
    cfg = EventLoopConfig()
    assert cfg.notify_capacity == 4096
    assert cfg.messages_per_tick == 256
    assert cfg.timer_tick == 0.001
    assert cfg.timer_wheel_size == 1024
    assert cfg.timer_capacity == 65536
    assert cfg.events_capacity == 1024
    assert cfg.clock is time.monotonic
    assert cfg.backend is None


COUNTS = (
    "notify_capacity",
    "messages_per_tick",
    "timer_wheel_size",
    "timer_capacity",
    "events_capacity",
)


@pytest.mark.parametrize("field", COUNTS)
@pytest.mark.parametrize("value", [0, -1])
def test_config_counts_below_one(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        EventLoopConfig(**{field: value})


@pytest.mark.parametrize("field", COUNTS)
@pytest.mark.parametrize("value", [True, 1.5, "8", None])
def test_config_counts_wrong_type(field: str, value: object) -> None:
    with pytest.raises(TypeError, match=field):
        EventLoopConfig(**{field: value})


@pytest.mark.parametrize("tick", [0, 0.0, -0.001, math.inf, math.nan])
def test_config_bad_tick(tick: float) -> None:
    with pytest.raises(ValueError, match="timer_tick"):
        EventLoopConfig(timer_tick=tick)


@pytest.mark.parametrize("tick", ["0.1", None, True])
def test_config_tick_wrong_type(tick: object) -> None:
    with pytest.raises(TypeError, match="timer_tick"):
        EventLoopConfig(timer_tick=tick)  # type: ignore[arg-type]


def test_config_clock_and_backend_types() -> None:
    with pytest.raises(TypeError, match="clock"):
        EventLoopConfig(clock=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backend"):
        EventLoopConfig(backend=1)  # type: ignore[arg-type]
    assert EventLoopConfig(timer_tick=1).timer_tick == 1


def test_unknown_backend_and_bad_config() -> None:
    with pytest.raises(ValueError):
        EventLoop(EventLoopConfig(backend="no-such-backend"))
    with pytest.raises(TypeError):
        EventLoop({"notify_capacity": 4})  # type: ignore[arg-type]
    cfg = EventLoopConfig()
    cfg.messages_per_tick = 0  # the dataclass is mutable: EventLoop checks again
    with pytest.raises(ValueError, match="messages_per_tick"):
        EventLoop(cfg)


def test_handler_defaults_do_nothing() -> None:
    h = Handler()
    with EventLoop() as ev:
        assert h.ready(ev, 0, Ready.READABLE) is None
        assert h.notify(ev, "m") is None
        assert h.timeout(ev, "p") is None
        assert h.signal(ev, 10) is None
        assert h.interrupted(ev) is None
        assert h.tick(ev) is None
        # A bare Handler runs: messages are consumed, nothing breaks.
        ev.channel().send(1)
        ev.run_once(h, timeout=0)
        assert len(ev._channel.queue) == 0


def test_attributes_and_lifecycle(backend: str) -> None:
    ev = EventLoop(EventLoopConfig(backend=backend))
    assert isinstance(ev.poll, Poll)
    assert ev.registry is ev.poll.registry
    assert ev.poll.backend == backend
    assert not ev.is_running()
    assert "idle" in repr(ev)
    ev.close()
    ev.close()  # harmless twice
    assert ev.closed
    with pytest.raises(ValueError):
        ev.run_once(Handler(), 0)
    with pytest.raises(ValueError):
        ev.run(Handler())
    with pytest.raises(ValueError):
        ev.timeout("x", 1)
    with socket.socket() as sock, pytest.raises(ValueError):
        ev.register(sock, 1, R)


def test_run_once_timeout_validation(loop: EventLoop) -> None:
    with pytest.raises(TypeError):
        loop.run_once(Handler(), "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        loop.run_once(Handler(), math.nan)
    loop.run_once(Handler(), -5)  # negative: does not block


# ---------------------------------------------------------------------------
# The iteration


def test_run_once_timeout_bounds_the_wait(loop: EventLoop) -> None:
    t0 = time.monotonic()
    loop.run_once(Handler(), timeout=0.05)
    elapsed = time.monotonic() - t0
    assert 0.04 <= elapsed < 5.0


def test_tick_after_ready(loop: EventLoop) -> None:
    """mio test_tick: a level-readable listener; each run_once: ready, then tick."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    try:
        listener.setblocking(False)
        loop.register(listener, 1, R, PollOpt.LEVEL)
        rec = Recorder()
        loop.run_once(rec, timeout=5)
        loop.run_once(rec, timeout=5)
        assert rec.log == [
            ("ready", 1, Ready.READABLE),
            ("tick",),
            ("ready", 1, Ready.READABLE),
            ("tick",),
        ]
    finally:
        client.close()
        listener.close()


def test_iteration_order(loop: EventLoop, pair: tuple[socket.socket, socket.socket]) -> None:
    """ready -> notify -> timeout -> tick within one iteration."""
    clock = ManualClock()
    with EventLoop(EventLoopConfig(backend=loop.poll.backend, clock=clock)) as ev:
        a, b = pair
        ev.register(a, 3, R)
        b.send(b"x")
        ev.channel().send("m")
        ev.timeout("t", 0.5)
        clock.now += 1.0
        rec = Recorder()
        ev.run_once(rec, timeout=5)
        assert rec.log == [
            ("ready", 3, Ready.READABLE),
            ("notify", "m"),
            ("timeout", "t"),
            ("tick",),
        ]


def test_ready_merges_flags_per_token(
    loop: EventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    """Two descriptors under one token: one ready call with the union of flags."""
    a, b = pair
    c, d = socket.socketpair()
    index = DispatchIndex(loop.registry)  # attached as the loop's own is
    try:
        loop.register(a, 7, R)  # readable once b writes
        loop.register(c, 7, W)  # writable at once
        loop.register(d, 8, W)  # a third source with its own token
        b.send(b"x")
        rec = Recorder()
        loop.run_once(rec, timeout=5)
        ready = rec.kinds("ready")
        assert sorted(ready) == [
            ("ready", 7, Ready.READABLE | Ready.WRITABLE),
            ("ready", 8, Ready.WRITABLE),
        ]
        assert index.shared == {7}
        # Once the token is no longer shared the fast path is taken again.
        loop.deregister(c)
        assert index.shared == set()
        rec = Recorder()
        loop.run_once(rec, timeout=5)
        assert sorted(rec.kinds("ready")) == [
            ("ready", 7, Ready.READABLE),
            ("ready", 8, Ready.WRITABLE),
        ]
    finally:
        c.close()
        d.close()


def _recount(ev: EventLoop) -> dict[int, int]:
    counts: dict[int, int] = {}
    for reg in ev.registry.rows().values():
        counts[reg.token] = counts.get(reg.token, 0) + 1
    return counts


def test_token_tracking_matches_the_table(loop: EventLoop) -> None:
    """The shared-token counts follow every path that changes the table."""
    socks = [socket.socket() for _ in range(6)]
    index = DispatchIndex(loop.registry)
    try:
        loop.register(socks[0], 1, R)
        loop.registry.register(socks[1], 1, R)
        loop.poll.registry.register(socks[2], 2, R)
        loop.reregister(socks[1], 2, W)
        loop.register(socks[3], 3, R)
        with pytest.raises(FileExistsError):
            loop.register(socks[3], 4, R)
        with pytest.raises(FileNotFoundError):
            loop.reregister(socks[4], 4, R)
        loop.register(socks[4], 3, R)
        assert index.counts == _recount(loop)
        assert index.shared == {2, 3}
        # Closed without deregister, then deregistered by identity.
        socks[4].close()
        loop.deregister(socks[4])
        # Closed without deregister, fd number reused by a new registration.
        fd = socks[3].fileno()
        socks[3].close()
        fresh = socket.socket()
        socks.append(fresh)
        if fresh.fileno() == fd:
            loop.register(fresh, 9, R)
        assert index.counts == _recount(loop)
        assert index.shared == {k for k, v in _recount(loop).items() if v > 1}
    finally:
        for s in socks:
            s.close()


def test_registration_from_handler_and_other_thread(
    loop: EventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    done = threading.Event()

    def later() -> None:
        time.sleep(0.05)
        loop.register(a, 11, R)
        b.send(b"x")
        done.set()

    th = threading.Thread(target=later)
    th.start()
    rec = Recorder()
    deadline = time.monotonic() + 10
    while not rec.kinds("ready") and time.monotonic() < deadline:
        loop.run_once(rec, timeout=1)
    th.join(5)
    assert rec.kinds("ready")[0] == ("ready", 11, Ready.READABLE)


def test_deregistered_source_not_reported(
    loop: EventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    loop.register(a, 1, R)
    b.send(b"x")
    loop.deregister(a)
    rec = Recorder()
    loop.run_once(rec, timeout=0.05)
    assert rec.kinds("ready") == []


# ---------------------------------------------------------------------------
# Timers through the loop


def test_timeouts_fire_in_order_never_early(loop: EventLoop) -> None:
    fired: list[tuple[str, float]] = []

    class H(Handler):
        def timeout(self, ev: EventLoop, payload: Any) -> None:
            fired.append((payload, time.monotonic()))
            if len(fired) == 3:
                ev.shutdown()

    start = time.monotonic()
    # Set a later one first (mio-extras): the earlier one still fires first.
    handles = {
        "c": loop.timeout("c", 0.15),
        "a": loop.timeout("a", 0.03),
        "b": loop.timeout("b", 0.08),
    }
    watchdog = loop.timeout("watchdog", 20)
    # Read while pending: a handle is an int, the timer knows its deadline.
    deadlines = {p: loop._timer.deadline_of(h) for p, h in handles.items()}
    loop.run(H())
    assert [p for p, _ in fired] == ["a", "b", "c"]
    for payload, at in fired:
        deadline = deadlines[payload]
        assert deadline is not None
        assert at >= deadline  # never early
        assert at - deadline < 2.0  # generous lateness
    assert at - start < 5
    assert loop.clear_timeout(watchdog) is True
    assert loop.clear_timeout(handles["a"]) is False  # already fired


def test_timeout_bounds_the_wait(loop: EventLoop) -> None:
    """A blocking run_once() wakes for the timer (no I/O, no messages)."""
    rec = Recorder()
    handle = loop.timeout("x", 0.05)
    deadline = loop._timer.deadline_of(handle)
    assert deadline is not None
    t0 = time.monotonic()
    while not rec.kinds("timeout") and time.monotonic() - t0 < 10:
        loop.run_once(rec)  # no timeout: only the timer bounds the wait
    assert rec.kinds("timeout") == [("timeout", "x")]
    assert time.monotonic() >= deadline
    assert time.monotonic() - t0 < 5


def test_cleared_timeout_never_fires(loop: EventLoop) -> None:
    rec = Recorder()
    t1 = loop.timeout("gone", 0.02)
    loop.timeout("stays", 0.06)
    assert loop.clear_timeout(t1) is True
    assert loop.clear_timeout(t1) is False
    t0 = time.monotonic()
    while not rec.kinds("timeout") and time.monotonic() - t0 < 10:
        loop.run_once(rec, timeout=1)
    loop.run_once(rec, timeout=0.05)
    assert rec.kinds("timeout") == [("timeout", "stays")]


def test_cancelled_earliest_timeout_costs_one_empty_wakeup(backend: str) -> None:
    """The wake-up time may be early after a cancel, never late: the loop wakes
    once at the cancelled deadline, finds nothing due, and then waits for the
    next one (it must not keep waking at the stale time)."""
    clock = ManualClock()
    with EventLoop(EventLoopConfig(backend=backend, clock=clock, timer_tick=0.01)) as ev:
        rec = Recorder()
        early = ev.timeout("early", 1.0)
        late = ev.timeout("late", 3.0)
        assert ev.clear_timeout(early)
        clock.now += 1.5  # past the cancelled deadline: one iteration with nothing due
        ev.run_once(rec, timeout=0)
        assert rec.kinds("timeout") == []
        # Exact again: the loop now sleeps until the late deadline.
        assert ev._timer.soonest == ev._timer.deadline_of(late) == clock.now + 1.5
        clock.now += 1.5
        ev.run_once(rec, timeout=0)
        assert rec.kinds("timeout") == [("timeout", "late")]
        assert ev._timer.soonest == math.inf


def test_timers_with_a_manual_clock(backend: str) -> None:
    """Deterministic: nothing before the deadline, everything due once after it."""
    clock = ManualClock()
    with EventLoop(EventLoopConfig(backend=backend, clock=clock, timer_tick=0.01)) as ev:
        rec = Recorder()
        ev.timeout("a", 1.0)
        ev.timeout("b", 2.0)
        ev.timeout("c", 2.0)
        clock.now += 0.999
        ev.run_once(rec, timeout=0)
        assert rec.kinds("timeout") == []
        clock.now += 0.001
        ev.run_once(rec, timeout=0)
        assert rec.kinds("timeout") == [("timeout", "a")]
        clock.now += 5
        ev.run_once(rec, timeout=0)
        ev.run_once(rec, timeout=0)
        assert rec.kinds("timeout") == [("timeout", "a"), ("timeout", "b"), ("timeout", "c")]


def test_timeout_set_from_handler(loop: EventLoop) -> None:
    class H(Handler):
        def __init__(self) -> None:
            self.seen: list[int] = []

        def timeout(self, ev: EventLoop, payload: Any) -> None:
            self.seen.append(payload)
            if payload < 3:
                ev.timeout(payload + 1, 0.005)
            else:
                ev.shutdown()

    h = H()
    loop.timeout(0, 0.005)
    loop.timeout("watchdog", 20)
    loop.run(h)
    assert h.seen == [0, 1, 2, 3]


# ---------------------------------------------------------------------------
# shutdown / run


def test_shutdown_from_another_thread(loop: EventLoop) -> None:
    def stopper() -> None:
        deadline = time.monotonic() + 10
        while not loop.is_running() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # let it block in the wait
        loop.shutdown()

    th = threading.Thread(target=stopper)
    th.start()
    loop.timeout("watchdog", 20)
    rec = Recorder()
    t0 = time.monotonic()
    loop.run(rec)
    th.join(5)
    assert time.monotonic() - t0 < 10
    assert rec.kinds("timeout") == []  # woken by shutdown, not the watchdog
    assert not loop.is_running()


def test_shutdown_from_handler_finishes_the_iteration(loop: EventLoop) -> None:
    class H(Recorder):
        def notify(self, ev: EventLoop, msg: Any) -> None:
            super().notify(ev, msg)
            if msg == 1:
                ev.shutdown()
                assert not ev.is_running()

    tx = loop.channel()
    tx.send(1)
    tx.send(2)
    h = H()
    loop.run(h)
    # The iteration completes (2 is delivered in it) and tick runs once.
    assert h.log == [("notify", 1), ("notify", 2), ("tick",)]


def test_reentrant_run_and_close_while_running(loop: EventLoop) -> None:
    errors: list[BaseException] = []

    class H(Handler):
        def tick(self, ev: EventLoop) -> None:
            for call in (lambda: ev.run(self), lambda: ev.run_once(self, 0), ev.close):
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(exc)
            ev.shutdown()

    loop.channel().send("go")  # something to do: the first wait does not block
    loop.run(H())
    assert len(errors) == 3
    assert not loop.closed


# ---------------------------------------------------------------------------
# Exceptions: propagate, nothing lost or duplicated, run() again


class Boom(Exception):
    pass


@contextlib.contextmanager
def _socketpairs(n: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    """*n* connected socket pairs, all closed on the way out."""
    pairs = [socket.socketpair() for _ in range(n)]
    try:
        yield pairs
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_exception_in_ready_keeps_the_other_events(backend: str) -> None:
    with EventLoop(EventLoopConfig(backend=backend)) as ev, _socketpairs(4) as pairs:
        for token, (a, b) in enumerate(pairs):
            a.setblocking(False)
            ev.register(a, token, R, PollOpt.EDGE)
            b.send(b"x")
        seen: list[int] = []

        class H(Handler):
            def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
                seen.append(token)
                if len(seen) == 2:
                    raise Boom

        # Wait until all four are ready at once (one batch).
        time.sleep(0.05)
        with pytest.raises(Boom):
            ev.run_once(H(), timeout=5)
        assert len(seen) == 2
        ev.run_once(H(), timeout=5)  # the kept events, without waiting
        # Edge-triggered and undrained: nothing more, whatever we wait.
        ev.run_once(H(), timeout=0.1)
        assert sorted(seen) == [0, 1, 2, 3]


def test_kept_events_of_deregistered_sources_are_dropped(backend: str) -> None:
    with EventLoop(EventLoopConfig(backend=backend)) as ev, _socketpairs(3) as pairs:
        for token, (a, b) in enumerate(pairs):
            ev.register(a, token, R, PollOpt.EDGE)
            b.send(b"x")
        seen: list[int] = []

        class H(Handler):
            def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
                seen.append(token)
                if len(seen) == 1:
                    raise Boom

        time.sleep(0.05)
        with pytest.raises(Boom):
            ev.run_once(H(), timeout=5)
        for token, (a, _) in enumerate(pairs):
            if token not in seen:
                ev.deregister(a)
        ev.run_once(H(), timeout=0.05)
        assert len(seen) == 1


def test_event_of_a_source_deregistered_earlier_in_the_iteration_is_dropped(
    backend: str,
) -> None:
    """Both sockets are ready in one wait; whichever the loop dispatches first
    deregisters and closes the other, whose event is then in hand but must not
    reach the handler (the dispatch finds no registration at that fd)."""
    with EventLoop(EventLoopConfig(backend=backend)) as ev, _socketpairs(2) as pairs:
        for token, (a, b) in enumerate(pairs):
            ev.register(a, 10 + token, R, PollOpt.EDGE)
            b.send(b"x")
        seen: list[int] = []

        class H(Handler):
            def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
                seen.append(token)
                other = pairs[1 - (token - 10)][0]
                if other.fileno() >= 0:
                    loop.deregister(other)
                    other.close()

        time.sleep(0.05)
        ev.run_once(H(), timeout=5)
        assert len(seen) == 1
        ev.run_once(H(), timeout=0.05)
        assert len(seen) == 1


@pytest.mark.skipif(not hasattr(select, "epoll"), reason="epoll only")
def test_refused_registration_leaves_no_dispatch_row(tmp_path: Path) -> None:
    """epoll refuses a regular file: the rolled-back row must not stay in the
    dispatch lists, or a later event at that fd number would reach the handler
    under a token that was never registered."""
    with EventLoop(EventLoopConfig(backend="epoll")) as ev, open(tmp_path / "f", "wb") as f:
        index = DispatchIndex(ev.registry)
        with pytest.raises(PermissionError):
            ev.register(f, 7, R)
        fd = f.fileno()
        assert ev.registry.row(fd) is None
        assert fd >= len(index.tokens) or index.tokens[fd] < 0


def test_exception_in_notify(loop: EventLoop) -> None:
    got: list[int] = []

    class H(Handler):
        def notify(self, ev: EventLoop, msg: Any) -> None:
            got.append(msg)
            if msg == 2:
                raise Boom
            if msg == 5:
                ev.shutdown()

    tx = loop.channel()
    for i in range(6):
        tx.send(i)
    with pytest.raises(Boom):
        loop.run(H())
    assert got == [0, 1, 2]
    assert not loop.is_running()
    loop.run(H())  # run() again: the rest, in order, exactly once
    assert got == [0, 1, 2, 3, 4, 5]


def test_exception_in_timeout(backend: str) -> None:
    clock = ManualClock()
    with EventLoop(EventLoopConfig(backend=backend, clock=clock)) as ev:
        got: list[str] = []

        class H(Handler):
            def timeout(self, loop: EventLoop, payload: Any) -> None:
                got.append(payload)
                if payload == "b":
                    raise Boom

        ev.timeout("a", 1)
        ev.timeout("b", 2)
        ev.timeout("c", 3)
        clock.now += 10
        with pytest.raises(Boom):
            ev.run_once(H(), timeout=0)
        assert got == ["a", "b"]
        ev.timeout("d", 0)  # due now: after the kept "c"
        clock.now += 1
        ev.run_once(H(), timeout=0)
        ev.run_once(H(), timeout=0)
        assert got == ["a", "b", "c", "d"]


def test_exception_in_tick(loop: EventLoop) -> None:
    calls = []

    class H(Handler):
        def notify(self, ev: EventLoop, msg: Any) -> None:
            calls.append(msg)

        def tick(self, ev: EventLoop) -> None:
            calls.append("tick")
            if calls.count("tick") == 1:
                raise Boom
            ev.shutdown()

    loop.channel().send("m")
    with pytest.raises(Boom):
        loop.run(H())
    assert not loop.is_running()
    loop.timeout("watchdog", 20)
    loop.channel().send("m2")
    loop.run(H())
    assert calls == ["m", "tick", "m2", "tick"]


def test_exception_in_ready_with_shared_tokens(
    loop: EventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    """The merging path keeps undelivered tokens the same way."""
    a, b = pair
    c, d = socket.socketpair()
    e, f = socket.socketpair()
    try:
        loop.register(a, 1, R, PollOpt.EDGE)
        loop.register(c, 1, R, PollOpt.EDGE)  # shared token 1
        loop.register(e, 2, R, PollOpt.EDGE)
        for s in (b, d, f):
            s.send(b"x")
        seen: list[tuple[int, Ready]] = []

        class H(Handler):
            def ready(self, ev: EventLoop, token: int, ready: Ready) -> None:
                seen.append((token, ready))
                if len(seen) == 1:
                    raise Boom

        time.sleep(0.05)
        with pytest.raises(Boom):
            loop.run_once(H(), timeout=5)
        loop.run_once(H(), timeout=5)
        loop.run_once(H(), timeout=0.05)
        assert sorted(t for t, _ in seen) == [1, 2]
    finally:
        for s in (c, d, e, f):
            s.close()


# ---------------------------------------------------------------------------
# mio's echo-server test shape: 50 clients x 20 messages through one loop

N_CLIENTS = 50
N_MESSAGES = 20
LISTENER = 10_000


def test_echo_server_50_clients(backend: str) -> None:
    from metalio.net import TcpListener, TcpStream

    try:
        from metalio.slab import Slab
    except ImportError:  # pragma: no cover - until the slab lands
        pytest.skip("metalio.slab not available yet")

    class Echo(Handler):
        def __init__(self, listener: TcpListener, addr: Any) -> None:
            self.listener = listener
            self.server: Any = Slab(start=1000)  # token -> [stream, pending bytes]
            self.clients: list[Any] = []  # token i -> [stream, expected, got, sent]
            self.done = 0
            self.failed: list[str] = []
            for _ in range(N_CLIENTS):
                self.clients.append([TcpStream.connect(addr), b"", b"", 0])

        def start(self, ev: EventLoop) -> None:
            ev.register(self.listener, LISTENER, R, PollOpt.EDGE)
            for i, c in enumerate(self.clients):
                ev.register(c[0], i, R | W, PollOpt.EDGE)

        def ready(self, ev: EventLoop, token: int, ready: Ready) -> None:
            if token == LISTENER:
                while (accepted := self.listener.try_accept()) is not None:
                    stream, _ = accepted
                    key = self.server.insert([stream, b""])
                    ev.register(stream, key, R | W, PollOpt.EDGE)
            elif token >= 1000:
                self.serve(ev, token)
            else:
                self.client(ev, token, ready)

        def serve(self, ev: EventLoop, token: int) -> None:
            conn = self.server[token]
            stream = conn[0]
            while True:
                data = stream.try_read(4096)
                if data is None:
                    break
                if data == b"":
                    ev.deregister(stream)
                    stream.close()
                    self.server.remove(token)
                    return
                conn[1] += data
            if conn[1]:
                n = stream.try_write(conn[1])
                if n:
                    conn[1] = conn[1][n:]

        def client(self, ev: EventLoop, token: int, ready: Ready) -> None:
            c = self.clients[token]
            stream = c[0]
            if c[3] == 0 and ready.writable:
                self.send_next(token)
            while True:
                data = stream.try_read(4096)
                if data is None or data == b"":
                    break
                c[2] += data
            if c[1] and c[2] == c[1]:
                if c[3] == N_MESSAGES:
                    self.done += 1
                    ev.deregister(stream)
                    stream.close()
                    if self.done == N_CLIENTS:
                        ev.shutdown()
                else:
                    self.send_next(token)
            elif len(c[2]) > len(c[1]) or not c[1].startswith(c[2]):
                self.failed.append(f"client {token}: {c[2]!r} vs {c[1]!r}")
                ev.shutdown()

        def send_next(self, token: int) -> None:
            c = self.clients[token]
            msg = f"client {token} message {c[3]}\n".encode()
            c[1], c[2] = msg, b""
            c[3] += 1
            assert c[0].try_write(msg) == len(msg)

        def timeout(self, ev: EventLoop, payload: Any) -> None:
            self.failed.append("watchdog: took too long")
            ev.shutdown()

    with (
        TcpListener.bind(("127.0.0.1", 0)) as listener,
        EventLoop(EventLoopConfig(backend=backend)) as ev,
    ):
        h = Echo(listener, listener.local_addr())
        try:
            h.start(ev)
            ev.timeout("watchdog", 30)
            ev.run(h)
        finally:
            for c in h.clients:
                c[0].close()
            for _, conn in list(h.server.items()):
                conn[0].close()
        assert h.failed == []
        assert h.done == N_CLIENTS


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_no_descriptor_leak(backend: str) -> None:
    def count() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = count()
    for _ in range(200):
        with EventLoop(EventLoopConfig(backend=backend)) as ev:
            ev.channel()
    with warnings.catch_warnings():
        # Dropped socket pairs say so (ResourceWarning), as sockets do.
        warnings.simplefilter("ignore", ResourceWarning)
        for _ in range(50):
            EventLoop(EventLoopConfig(backend=backend)).channel()  # dropped, never closed
        gc.collect()
    assert count() <= before + 2


def test_event_for_a_never_registered_fd_is_ignored() -> None:
    """A descriptor number past every registration (only a faulty or fake
    backend reports one) is skipped, not an IndexError out of run_once."""
    answers = [[(1 << 20, 1)]]

    class Answering:
        """The real poll backend, but its waits return the planned answers."""

        def __init__(self) -> None:
            self.real = open_backend("poll")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

        def poll(self, timeout: float | None, capacity: int) -> list[tuple[int, int]]:
            return answers.pop() if answers else []

    fake: Any = Answering()
    with EventLoop(poll=Poll.over_backend(fake)) as ev:
        rec = Recorder()
        ev.run_once(rec, timeout=0)
        assert answers == []  # the fake was asked
        assert rec.kinds("ready") == []


def test_subclass_overrides_are_honoured() -> None:
    """A subclass of EventLoop that overrides register & co. is called, not bypassed
    (the loop used to bind the registry's methods as instance attributes)."""
    calls: list[str] = []

    class Audited(EventLoop):
        def register(self, *args: Any, **kwargs: Any) -> None:
            calls.append("register")
            super().register(*args, **kwargs)

        def reregister(self, *args: Any, **kwargs: Any) -> None:
            calls.append("reregister")
            super().reregister(*args, **kwargs)

        def deregister(self, source: Any) -> None:
            calls.append("deregister")
            super().deregister(source)

        def clear_timeout(self, timeout: Any) -> bool:
            calls.append("clear_timeout")
            return super().clear_timeout(timeout)

    a, b = socket.socketpair()
    with a, b, Audited() as loop:
        loop.register(a, 1, R)
        loop.reregister(a, 2, R)
        loop.deregister(a)
        assert loop.clear_timeout(loop.timeout("x", 1.0))
    assert calls == ["register", "reregister", "deregister", "clear_timeout"]


def test_shutdown_while_run_starts_is_not_lost() -> None:
    """A shutdown() from another thread in the window where run() has begun but
    not yet iterated must end that run (it used to be overwritten)."""

    class Racy(EventLoop):
        def _enter(self) -> None:
            super()._enter()
            t = threading.Thread(target=self.shutdown)
            t.start()
            t.join()

    with Racy() as loop:
        watchdog = threading.Timer(10, loop.shutdown)
        watchdog.start()
        start = time.monotonic()
        loop.run(Handler())
        watchdog.cancel()
        assert time.monotonic() - start < 5
        assert not loop.is_running()
