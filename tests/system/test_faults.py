"""Fault injection: failing kernel calls, raising signal handlers and Handlers,
full wake-up channels, and closing under a blocked thread.

Kernel failures are simulated through the backend interface
(``metalio._backends``): a ``Faulty`` proxy wraps a Poll's backend object
(the Poll is built over it with ``Poll.over_backend``; with no faults
planned it is transparent) and raises a planned ``OSError`` *before* the
real call, exactly as a kernel
that refused the request would.  Afterwards the token table, the kernel's
view (``/proc/self/fdinfo`` of the epoll fd; the emulated backends' records;
the fake kqueue's knotes) and the events that come back must tell one story.

Each test lists what it accepts and what it does not, as trio's tests do.
Signals go to the main thread with ``signal.pthread_kill`` (a process-wide
``os.kill`` may be taken by another thread and never interrupt the wait).
"""

from __future__ import annotations

import errno
import gc
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest

from conftest import BACKENDS, WakeFds, fill_wakefd, open_backend_object, open_fds
from metalio import (
    EventLoop,
    EventLoopConfig,
    Events,
    Handler,
    Interest,
    Poll,
    PollOpt,
    Ready,
    Waker,
)
from metalio._wakefd import WakeFd
from metalio.net import UnixStream

R, W = Interest.READABLE, Interest.WRITABLE
SIGUSR1 = getattr(signal, "SIGUSR1", 10)
needs_signals = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="POSIX signals")
REAL_BACKENDS = [b for b in BACKENDS if b != "kqueue-fake"]
FAULTS = [errno.EINTR, errno.ENOMEM, errno.EBADF]


class Boom(Exception):
    """What the injected handlers raise."""


# -- the fault-injecting backend ---------------------------------------------------


class Faulty:
    """A backend proxy: each method may be given a queue of exceptions to raise
    before delegating, and a hook to run at that moment."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.plan: dict[str, list[BaseException]] = {
            "register": [],
            "reregister": [],
            "deregister": [],
            "poll": [],
        }
        self.hooks: dict[str, Callable[[], None]] = {}
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        hook = self.hooks.get(method)
        if hook is not None:
            hook()
        if self.plan[method]:
            raise self.plan[method].pop(0)

    def register(self, fd: int, interest: int, opts: int) -> None:
        self._enter("register")
        self.real.register(fd, interest, opts)

    def reregister(self, fd: int, interest: int, opts: int) -> None:
        self._enter("reregister")
        self.real.reregister(fd, interest, opts)

    def deregister(self, fd: int) -> None:
        self._enter("deregister")
        self.real.deregister(fd)

    def poll(self, timeout: float | None, maxevents: int) -> list[tuple[int, int]]:
        self._enter("poll")
        result: list[tuple[int, int]] = self.real.poll(timeout, maxevents)
        return result


# The Faulty proxy under each Poll this module opened, by id(poll).
_faulty: dict[int, Faulty] = {}


def open_poll(name: str) -> Poll:
    """A Poll over a Faulty proxy of the backend *name* (transparent until planned)."""
    faulty = Faulty(open_backend_object(name))
    proxy: Any = faulty  # duck-typed: stands in for the Backend protocol
    poll = Poll.over_backend(proxy)
    _faulty[id(poll)] = faulty
    return poll


def inject(poll: Poll) -> Faulty:
    """The Faulty proxy under *poll* (made by this module's ``open_poll``)."""
    return _faulty[id(poll)]


def fault(code: int) -> OSError:
    return OSError(code, os.strerror(code))  # EINTR builds an InterruptedError


# -- what the kernel holds ----------------------------------------------------------


def kernel_view(poll: Poll, fd: int) -> object:
    """The backend's own record of *fd* (``None``: not registered there)."""
    backend: Any = inject(poll).real
    name = poll.backend
    if name == "epoll":
        with open(f"/proc/self/fdinfo/{backend._epoll.fileno()}") as f:
            text = f.read()
        for m in re.finditer(r"tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)", text):
            if int(m.group(1)) == fd:
                return int(m.group(2), 16)
        return None
    if name == "kqueue":
        kq = backend._kq
        notes = (kq.knote(fd, backend._READ), kq.knote(fd, backend._WRITE))
        return None if notes == (None, None) else notes
    entry = backend._entries.get(fd)
    if entry is None or entry.stale:
        return None
    return (entry.interest, entry.mode, entry.armed)


def table_row(poll: Poll, fd: int) -> tuple[int, int, int] | None:
    row = poll.registry.row(fd)
    return None if row is None else (row.token, row.interest, row.opts)


def tokens(poll: Poll, timeout: float) -> list[int]:
    events = Events()
    poll.poll(events, timeout)
    return [e.token for e in events]


@pytest.fixture(params=REAL_BACKENDS)
def loop_backend(request: pytest.FixtureRequest) -> str:
    """Backends an EventLoop can be built on by name (not the fake kqueue)."""
    return str(request.param)


@pytest.fixture
def upair() -> Iterator[tuple[UnixStream, UnixStream]]:
    a, b = UnixStream.pair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


# -- registration failures -------------------------------------------------------------


@pytest.mark.parametrize("code", FAULTS)
def test_failed_register_leaves_nothing(
    backend: str, code: int, upair: tuple[UnixStream, UnixStream]
) -> None:
    # acceptable: the OSError the "kernel" gave propagates (an InterruptedError
    #   for EINTR: PEP 475 retries only blocking waits, and a registration
    #   never blocks), with no row in the table, nothing in the kernel and no
    #   re-arm hook left on the source; the next register succeeds and works.
    # unacceptable: a half-done registration (a row without a kernel entry or
    #   the reverse), FileExistsError on the retry, a hook left installed,
    #   any other exception type.
    a, b = upair
    with open_poll(backend) as poll:
        faulty = inject(poll)
        faulty.plan["register"].append(fault(code))
        with pytest.raises(OSError) as info:
            poll.registry.register(a, 7, R, PollOpt.EDGE)
        assert info.value.errno == code
        assert type(info.value) is type(fault(code))
        fd = a.fileno()
        assert table_row(poll, fd) is None
        assert kernel_view(poll, fd) is None
        assert getattr(a, "_rearm", None) is None
        b.try_write(b"x")
        assert tokens(poll, 0.05) == []  # nothing registered, nothing reported
        poll.registry.register(a, 7, R, PollOpt.EDGE)
        assert table_row(poll, fd) == (7, R, PollOpt.EDGE)
        assert kernel_view(poll, fd) is not None
        assert tokens(poll, 2) == [7]


@pytest.mark.parametrize("code", FAULTS)
def test_failed_register_over_a_stale_row_keeps_the_table_consistent(
    backend: str, code: int
) -> None:
    # A source closed without deregister leaves a stale row; a new source gets
    # its number.  A failed register of the new source must not leave a row
    # for it; the retry must succeed (no FileExistsError from the stale row).
    # acceptable: the injected OSError, then a working registration.
    # unacceptable: the new source looking registered after the failure, or
    #   the retry refused.
    with open_poll(backend) as poll:
        old_a, old_b = socket.socketpair()
        poll.registry.register(old_a, 1, R)
        fd = old_a.fileno()
        old_a.close()
        old_b.close()
        new_a, new_b = socket.socketpair()
        try:
            if new_a.fileno() != fd:
                pytest.skip("the descriptor number was not reused")
            faulty = inject(poll)
            faulty.plan["register"].append(fault(code))
            with pytest.raises(OSError):
                poll.registry.register(new_a, 2, R)
            row = poll.registry.row(fd)
            assert row is None or row.source is not new_a
            poll.registry.register(new_a, 2, R)
            new_b.send(b"x")
            assert tokens(poll, 2) == [2]
        finally:
            new_a.close()
            new_b.close()


@pytest.mark.parametrize("code", FAULTS)
def test_failed_reregister_keeps_the_old_registration(
    backend: str, code: int, upair: tuple[UnixStream, UnixStream]
) -> None:
    # acceptable: the injected OSError propagates; the row (token, interest,
    #   options), the kernel's entry and the reported token are the old ones;
    #   a later reregister works.
    # unacceptable: the new token or interest in the table or the kernel, the
    #   registration lost (FileNotFoundError later), events under the new token.
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R)
        fd = a.fileno()
        kernel_before = kernel_view(poll, fd)
        faulty = inject(poll)
        faulty.plan["reregister"].append(fault(code))
        with pytest.raises(OSError) as info:
            poll.registry.reregister(a, 2, R | W, PollOpt.EDGE)
        assert info.value.errno == code
        assert table_row(poll, fd) == (1, R, PollOpt.LEVEL)
        assert kernel_view(poll, fd) == kernel_before
        b.try_write(b"x")
        assert tokens(poll, 2) == [1]
        assert tokens(poll, 2) == [1]  # still LEVEL
        poll.registry.reregister(a, 3, R, PollOpt.EDGE)
        assert tokens(poll, 2) == [3]


@pytest.mark.parametrize("code", FAULTS)
def test_failed_reregister_does_not_rearm_a_oneshot(
    backend: str, code: int, upair: tuple[UnixStream, UnixStream]
) -> None:
    # acceptable: a disarmed ONESHOT stays disarmed after a failed reregister
    #   (no event at all), and a successful one re-arms it.
    # unacceptable: an event after the failed call.
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, PollOpt.ONESHOT)
        b.try_write(b"x")
        assert tokens(poll, 2) == [1]
        assert tokens(poll, 0.05) == []  # disarmed
        faulty = inject(poll)
        faulty.plan["reregister"].append(fault(code))
        with pytest.raises(OSError):
            poll.registry.reregister(a, 2, R, PollOpt.ONESHOT)
        assert tokens(poll, 0.1) == []
        poll.registry.reregister(a, 2, R, PollOpt.ONESHOT)
        assert tokens(poll, 2) == [2]


@pytest.mark.parametrize("code", [errno.EINTR, errno.ENOMEM])
def test_failed_deregister_keeps_the_registration(
    backend: str, code: int, upair: tuple[UnixStream, UnixStream]
) -> None:
    # (EBADF is the registry's "closed behind our back" signal and is covered
    # by the contract tests with a really closed descriptor.)
    # acceptable: the injected OSError propagates and the source is still
    #   fully registered (table, kernel, events); deregister again succeeds.
    # unacceptable: a row dropped while the kernel still watches the fd (a
    #   later register would then fail with FileExistsError), or the reverse.
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R)
        fd = a.fileno()
        faulty = inject(poll)
        faulty.plan["deregister"].append(fault(code))
        with pytest.raises(OSError):
            poll.registry.deregister(a)
        assert table_row(poll, fd) == (1, R, PollOpt.LEVEL)
        assert kernel_view(poll, fd) is not None
        b.try_write(b"x")
        assert tokens(poll, 2) == [1]
        poll.registry.deregister(a)
        assert table_row(poll, fd) is None
        assert kernel_view(poll, fd) is None
        assert tokens(poll, 0.05) == []
        poll.registry.register(a, 5, R)
        assert tokens(poll, 2) == [5]


@pytest.mark.parametrize("backend_name", REAL_BACKENDS)
def test_failed_register_never_lends_its_token(backend_name: str) -> None:
    # The window is real: epoll_ctl releases the GIL, and tests/test_stress.py
    # counts thousands of such events under contention.  Here a hook polls at
    # exactly that moment, so the outcome is deterministic.
    # acceptable: FileExistsError; every event names token 1 (the live one).
    # unacceptable: an event carrying token 2, which was never registered.
    a, b = socket.socketpair()
    try:
        with open_poll(backend_name) as poll:
            poll.registry.register(a.fileno(), 1, R)
            b.send(b"x")
            faulty = inject(poll)
            seen: list[int] = []
            faulty.hooks["register"] = lambda: seen.extend(tokens(poll, 0))
            with pytest.raises(FileExistsError):
                poll.registry.register(a.fileno(), 2, R)
            seen.extend(tokens(poll, 0))
            assert 1 in seen
            assert 2 not in seen, f"events under the failed register's token: {seen}"
    finally:
        a.close()
        b.close()


# -- poll failures ------------------------------------------------------------------


@pytest.mark.parametrize("code", FAULTS)
def test_failed_poll_loses_nothing_and_leaks_nothing(
    backend: str, code: int, upair: tuple[UnixStream, UnixStream]
) -> None:
    # acceptable: the OSError propagates out of Poll.poll (the backend layer
    #   below CPython's PEP 475 retry is where it was injected), the Poll stays
    #   open and usable, the pending EDGE event comes with the next poll, and
    #   close() releases the kernel object (no in-flight count left behind).
    # unacceptable: a different exception, the Poll closed or wedged, the
    #   edge lost, the table changed, a descriptor leaked.
    a, b = upair
    base = open_fds()
    poll = open_poll(backend)
    try:
        poll.registry.register(a, 9, R, PollOpt.EDGE)
        b.try_write(b"x")
        faulty = inject(poll)
        faulty.plan["poll"] += [fault(code), fault(code)]
        for _ in range(2):
            with pytest.raises(OSError) as info:
                poll.poll(Events(), 1)
            assert info.value.errno == code
        assert not poll.closed
        assert poll._inflight == []
        assert table_row(poll, a.fileno()) == (9, R, PollOpt.EDGE)
        assert tokens(poll, 2) == [9]
        assert tokens(poll, 0.05) == []  # exactly once
    finally:
        poll.close()
    assert open_fds() == base


@pytest.fixture
def loop_with_faults(loop_backend: str) -> Iterator[tuple[Any, Any]]:
    """An EventLoop whose Poll has a Faulty backend (installed before the loop reads it)."""
    poll = open_poll(loop_backend)
    loop = EventLoop(EventLoopConfig(backend=loop_backend), poll=poll)
    try:
        yield loop, inject(poll)
    finally:
        loop.close()


@pytest.mark.parametrize("code", FAULTS)
def test_failed_wait_in_the_loop_loses_nothing(
    loop_with_faults: tuple[EventLoop, Faulty], code: int
) -> None:
    # acceptable: the OSError propagates out of run_once() and run(); queued
    #   messages, due timeouts and pending I/O are all delivered, once each,
    #   by the next iterations; is_running() is false after it propagated.
    # unacceptable: anything lost or duplicated, the loop left "running".
    loop, faulty = loop_with_faults
    a, b = UnixStream.pair()
    try:
        loop.register(a, 4, R, PollOpt.EDGE)
        b.try_write(b"x")
        got: list[Any] = []

        class H(Handler):
            def ready(self, ev: EventLoop, token: int, ready: Ready) -> None:
                got.append(("ready", token))

            def notify(self, ev: EventLoop, msg: Any) -> None:
                got.append(("notify", msg))
                if msg == "stop":
                    ev.shutdown()

            def timeout(self, ev: EventLoop, payload: Any) -> None:
                got.append(("timeout", payload))

        tx = loop.channel()
        tx.send(1)
        loop.timeout("t", 0)
        faulty.plan["poll"].append(fault(code))
        with pytest.raises(OSError):
            loop.run_once(H(), timeout=1)
        assert got == []
        faulty.plan["poll"].append(fault(code))
        with pytest.raises(OSError):
            loop.run(H())
        assert not loop.is_running()
        tx.send(2)
        tx.send("stop")
        loop.timeout("watchdog", 10)
        loop.run(H())
        expected = [
            ("ready", 4),
            ("notify", 1),
            ("notify", 2),
            ("notify", "stop"),
            ("timeout", "t"),
        ]
        assert Counter(got) == Counter(expected)
        assert [g for g in got if g[0] == "notify"] == expected[1:4]
    finally:
        loop.deregister(a)
        a.close()
        b.close()


# -- signals whose Python handler raises, during the wait --------------------------------


class OneShotBoom:
    """SIGUSR1's Python handler: raises Boom the first time, ignores later ones
    (a stray second signal must not raise somewhere else in the test)."""

    def __init__(self) -> None:
        self.fired = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if not self.fired.is_set():
            self.fired.set()
            raise Boom("from the signal handler")


@pytest.fixture
def raising_sigusr1() -> Iterator[OneShotBoom]:
    handler = OneShotBoom()
    old = signal.signal(SIGUSR1, handler)
    try:
        yield handler
    finally:
        signal.signal(SIGUSR1, old)


class Kicker:
    """Sends SIGUSR1 to the main thread, 0.1 s after start and then every
    0.5 s, until the handler has fired."""

    def __init__(self, handler: OneShotBoom) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self.main = threading.main_thread().ident
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.stop.wait(0.1):
            return
        while not self.stop.is_set() and not self.handler.fired.is_set():
            assert self.main is not None
            signal.pthread_kill(self.main, SIGUSR1)
            self.stop.wait(0.5)

    def __enter__(self) -> Kicker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


def raised_inside(info: pytest.ExceptionInfo[BaseException], function: str) -> bool:
    return any(entry.name == function for entry in info.traceback)


@needs_signals
def test_signal_handler_exception_propagates_out_of_poll(
    backend: str, raising_sigusr1: OneShotBoom, upair: tuple[UnixStream, UnixStream]
) -> None:
    # acceptable: Boom propagates out of Poll.poll promptly (not at the 10 s
    #   timeout); the Poll is open, nothing in flight, its registrations intact,
    #   and the next poll reports the pending readiness.
    # unacceptable: the exception swallowed (the wait retried to its timeout),
    #   a different exception, the Poll wedged or a registration lost.
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 3, R, PollOpt.EDGE)
        t0 = time.monotonic()
        with pytest.raises(Boom) as info, Kicker(raising_sigusr1):
            poll.poll(Events(), 10)
        assert time.monotonic() - t0 < 8
        assert raised_inside(info, "poll")
        assert not poll.closed and poll._inflight == []
        b.try_write(b"x")
        assert tokens(poll, 2) == [3]


@needs_signals
@pytest.mark.parametrize("how", ["run_once", "run"])
def test_signal_handler_exception_propagates_out_of_the_loop(
    loop_backend: str, how: str, raising_sigusr1: OneShotBoom
) -> None:
    # acceptable: Boom propagates out of run_once()/run() promptly; the loop
    #   is not running, and the next run delivers what was pending, once.
    # unacceptable: the exception swallowed, a message lost or duplicated,
    #   the loop refusing to run again.
    with EventLoop(EventLoopConfig(backend=loop_backend)) as loop:
        got: list[Any] = []

        class H(Handler):
            def notify(self, ev: EventLoop, msg: Any) -> None:
                got.append(msg)
                if msg == "stop":
                    ev.shutdown()

        tx = loop.channel()
        t0 = time.monotonic()
        with pytest.raises(Boom) as info, Kicker(raising_sigusr1):
            if how == "run":
                loop.run(H())
            else:
                loop.run_once(H(), timeout=10)
        assert raised_inside(info, "_iterate")
        assert time.monotonic() - t0 < 8
        assert not loop.is_running()
        tx.send("a")
        tx.send("stop")
        loop.timeout("watchdog", 10)
        loop.run(H())
        assert got == ["a", "stop"]


@needs_signals
def test_signal_during_poll_is_retried(backend: str, upair: tuple[UnixStream, UnixStream]) -> None:
    # PEP 475: a signal whose Python handler returns normally does not end the
    # wait early with nothing.
    # acceptable: the poll returns the event written after the signal.
    # unacceptable: InterruptedError, or an empty early return.
    a, b = upair
    hits: list[int] = []
    old = signal.signal(SIGUSR1, lambda signum, frame: hits.append(signum))
    try:
        with open_poll(backend) as poll:
            poll.registry.register(a, 3, R)
            main = threading.main_thread().ident
            assert main is not None

            def later() -> None:
                time.sleep(0.2)
                signal.pthread_kill(main, SIGUSR1)
                time.sleep(0.3)
                b.try_write(b"x")

            th = threading.Thread(target=later)
            th.start()
            try:
                got = tokens(poll, 10)
            finally:
                th.join(10)
            assert hits == [SIGUSR1]
            assert got == [3]
    finally:
        signal.signal(SIGUSR1, old)


# -- Handlers that raise from every callback ---------------------------------------------

CALLBACKS = ["ready", "notify", "timeout", "signal", "tick", "all"]
N_SOCKS, N_MSGS, N_TIMERS, N_SIGNALS = 6, 30, 10, 5


class Chaos(Handler):
    """Records every delivery, then raises Boom on every other call of the chosen callbacks."""

    def __init__(self, raising: set[str], expected: int) -> None:
        self.raising = raising
        self.calls: Counter[str] = Counter()
        self.ready_tokens: list[int] = []
        self.messages: list[int] = []
        self.payloads: list[int] = []
        self.signals: list[int] = []
        self.watchdog = False
        self.expected = expected

    def _after(self, loop: EventLoop, kind: str) -> None:
        self.calls[kind] += 1
        if self.delivered() >= self.expected:
            loop.shutdown()
        if kind in self.raising and self.calls[kind] % 2 == 1:
            raise Boom(kind)

    def delivered(self) -> int:
        return len(self.ready_tokens) + len(self.messages) + len(self.payloads) + len(self.signals)

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        self.ready_tokens.append(token)
        self._after(loop, "ready")

    def notify(self, loop: EventLoop, msg: Any) -> None:
        self.messages.append(msg)
        self._after(loop, "notify")

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        if payload == "watchdog":
            self.watchdog = True
            loop.shutdown()
            return
        self.payloads.append(payload)
        self._after(loop, "timeout")

    def signal(self, loop: EventLoop, signum: int) -> None:
        self.signals.append(signum)
        self._after(loop, "signal")

    def interrupted(self, loop: EventLoop) -> None:
        self.calls["interrupted"] += 1
        if "interrupted" in self.raising and self.calls["interrupted"] % 2 == 1:
            raise Boom("interrupted")

    def tick(self, loop: EventLoop) -> None:
        self._after(loop, "tick")


@needs_signals
@pytest.mark.parametrize("callback", CALLBACKS)
@pytest.mark.parametrize("driver", ["run", "run_once"])
def test_handler_exceptions_lose_and_duplicate_nothing(
    loop_backend: str, callback: str, driver: str
) -> None:
    # Workload: 6 EDGE sources made readable once, 30 messages, 10 due
    # timeouts, 5 signals; the chosen callback raises on every other call.
    # acceptable: each exception propagates out of run()/run_once(); in the
    #   end every source was reported exactly once, every message exactly
    #   once in order, every timeout once, every signal once.
    # unacceptable: anything lost (the watchdog fires) or duplicated, an
    #   exception other than Boom, run() refusing to start again.
    raising = {"ready", "notify", "timeout", "signal", "tick", "interrupted"}
    if callback != "all":
        raising = {callback}
    pairs = [socket.socketpair() for _ in range(N_SOCKS)]
    old = signal.getsignal(SIGUSR1)
    try:
        with EventLoop(EventLoopConfig(backend=loop_backend, messages_per_tick=7)) as loop:
            loop.add_signal(SIGUSR1)
            for token, (a, b) in enumerate(pairs):
                a.setblocking(False)
                loop.register(a, token, R, PollOpt.EDGE)
                b.send(b"x")
            tx = loop.channel()
            for i in range(N_MSGS):
                tx.send(i)
            for i in range(N_TIMERS):
                loop.timeout(i, 0)
            for _ in range(N_SIGNALS):
                os.kill(os.getpid(), SIGUSR1)
            time.sleep(0.02)
            h = Chaos(raising, N_SOCKS + N_MSGS + N_TIMERS + N_SIGNALS)
            watchdog = loop.timeout("watchdog", 10)
            booms = 0
            for _ in range(1000):
                try:
                    if driver == "run":
                        loop.run(h)
                    else:
                        loop.run_once(h, timeout=0.5)
                except Boom:
                    booms += 1
                    if h.delivered() >= h.expected or h.watchdog:
                        break
                    continue
                if driver == "run" or h.delivered() >= h.expected or h.watchdog:
                    break
            loop.clear_timeout(watchdog)
            # One more quiet iteration: nothing left over comes late.
            loop.run_once(h, timeout=0.05)
            loop.remove_signal(SIGUSR1)
    finally:
        signal.signal(SIGUSR1, old)
        for a, b in pairs:
            a.close()
            b.close()
    assert not h.watchdog, f"something was lost: {h.calls}"
    assert booms >= 1
    assert Counter(h.ready_tokens) == Counter(range(N_SOCKS))
    assert h.messages == list(range(N_MSGS))
    assert sorted(h.payloads) == list(range(N_TIMERS))
    assert h.signals == [SIGUSR1] * N_SIGNALS


# -- a Waker whose channel is full ----------------------------------------------------------


def test_full_waker_still_wakes(
    backend: str, monkeypatch: pytest.MonkeyPatch, wakefds: WakeFds
) -> None:
    # On poll/select (ONESHOT socketpair) and kqueue (EDGE socketpair, drained
    # by wake() when full) the Waker writes bytes; on epoll it adds to an
    # eventfd counter.  Fill it.  (On Linux the fake kqueue would get an
    # eventfd too: it is hidden so the Waker takes the real kqueue's shape.)
    # acceptable: wake() from several threads never raises; a blocked poll
    #   returns with the token; after that event, nothing until the next wake.
    # unacceptable: BlockingIOError (or any exception) from wake(), a missed
    #   wake-up, an event storm.
    with open_poll(backend) as poll:
        if backend == "kqueue-fake":
            wakefds.no_eventfd(monkeypatch)
        waker = Waker(poll.registry, 42)
        (wakefd,) = wakefds
        if backend == "kqueue-fake":
            assert not wakefd.is_eventfd
        _fill_and_wake(poll, waker, wakefd)
        waker.close()


def _fill_and_wake(poll: Poll, waker: Waker, wakefd: WakeFd) -> None:
    fill_wakefd(wakefd)
    assert tokens(poll, 2) == [42]
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(300):
                waker.wake()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert tokens(poll, 2) == [42]
    assert tokens(poll, 0.05) == []
    later = threading.Timer(0.1, waker.wake)
    later.start()
    try:
        assert tokens(poll, 5) == [42]
    finally:
        later.join(10)


def test_full_loop_awakener_still_delivers(loop_backend: str, wakefds: WakeFds) -> None:
    # The EventLoop's own wake-up channel (poll/select: a socketpair) filled
    # to the brim before the loop sleeps.
    # acceptable: every message still reaches notify(), promptly, in order.
    # unacceptable: a send that raises, a loop that sleeps on a pending message.
    with EventLoop(EventLoopConfig(backend=loop_backend)) as loop:
        (awakener,) = wakefds
        fill_wakefd(awakener)
        got: list[int] = []

        class H(Handler):
            def notify(self, ev: EventLoop, msg: Any) -> None:
                got.append(msg)
                if msg == 49:
                    ev.shutdown()

        tx = loop.channel()
        errors: list[BaseException] = []

        def send() -> None:
            try:
                for i in range(50):
                    time.sleep(0.005)  # the loop falls asleep in between
                    tx.send(i)
            except BaseException as exc:
                errors.append(exc)

        th = threading.Thread(target=send)
        th.start()
        loop.timeout("watchdog", 20)
        t0 = time.monotonic()
        loop.run(H())
        th.join(10)
        assert errors == []
        assert got == list(range(50))
        assert time.monotonic() - t0 < 15


# -- closing under a blocked thread ------------------------------------------------------------


def _blocked_poller(poll: Poll, outcome: list[BaseException | str]) -> threading.Thread:
    def run() -> None:
        try:
            poll.poll(Events(), None)
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_close_wakes_a_blocked_poll(backend: str) -> None:
    # acceptable: the blocked thread wakes and gets ValueError; the kernel
    #   object and every internal descriptor are released once it has left.
    # unacceptable: the thread stays blocked, returns normally, gets another
    #   exception, or the process crashes; a descriptor leaks.
    base = open_fds()
    for i in range(30):
        poll = open_poll(backend)
        a, b = socket.socketpair()
        poll.registry.register(a, 1, R, PollOpt.EDGE)
        outcome: list[BaseException | str] = []
        th = _blocked_poller(poll, outcome)
        # From "before it blocks" to "well inside the wait".
        time.sleep(0.1 if i == 0 else random.random() * 0.003)
        poll.close()
        th.join(10)
        assert not th.is_alive(), "close() did not wake the blocked poll"
        assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
        a.close()
        b.close()
    gc.collect()
    assert open_fds() == base


def test_close_wakes_several_blocked_pollers() -> None:
    # epoll allows several polling threads (API.md section 2).
    base = open_fds()
    poll = Poll(backend="epoll")
    outcomes: list[BaseException | str] = []
    threads = [_blocked_poller(poll, outcomes) for _ in range(4)]
    time.sleep(0.1)
    poll.close()
    for th in threads:
        th.join(10)
    assert not any(th.is_alive() for th in threads)
    assert len(outcomes) == 4 and all(isinstance(o, ValueError) for o in outcomes)
    assert open_fds() == base


def test_close_of_a_running_loop_from_another_thread(loop_backend: str) -> None:
    # acceptable: close() refuses with RuntimeError while the loop runs (the
    #   loop keeps working: a message still arrives); after shutdown() and
    #   run()'s return, close() succeeds and releases every descriptor.
    # unacceptable: the loop thread crashing or hanging, close() half-done
    #   (a NotifyClosed channel while the loop still runs), a leak.
    base = open_fds()
    loop = EventLoop(EventLoopConfig(backend=loop_backend))
    got: list[Any] = []
    started = threading.Event()

    class H(Handler):
        def notify(self, ev: EventLoop, msg: Any) -> None:
            got.append(msg)

        def tick(self, ev: EventLoop) -> None:
            started.set()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run(H())
        except BaseException as exc:
            errors.append(exc)

    tx = loop.channel()
    tx.send("first")
    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert started.wait(10)
    with pytest.raises(RuntimeError):
        loop.close()
    assert not loop.closed
    tx.send("after the refused close")
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == ["first", "after the refused close"]
    loop.shutdown()
    th.join(10)
    assert not th.is_alive() and errors == []
    loop.close()
    gc.collect()
    assert open_fds() == base


def test_close_racing_with_run_once_in_another_thread(loop_backend: str) -> None:
    # The loop thread calls run_once() up to 100 times; the main thread calls
    # close() until it is accepted.  Whatever the interleaving:
    # acceptable: close() raises RuntimeError (running) until it succeeds; the
    #   loop thread's calls return normally, and once the loop is closed one
    #   raises ValueError (closed) and the thread stops; every descriptor is
    #   released.
    # unacceptable: any other exception in either thread (OSError EBADF from a
    #   closed descriptor, AttributeError, NotifyClosed ...), a hang, a leak.
    base = open_fds()
    rng = random.Random(7)
    closed_under_it = 0
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        closed_under_it = _close_race(loop_backend, rng)
    finally:
        sys.setswitchinterval(old_interval)
    print(f"closed while run_once() was being called: {closed_under_it}/40")
    gc.collect()
    assert open_fds() == base


def _close_race(backend: str, rng: random.Random) -> int:
    closed_under_it = 0
    for _ in range(40):
        loop = EventLoop(EventLoopConfig(backend=backend))
        tx = loop.channel()
        outcome: list[BaseException | str] = []
        go = threading.Event()

        def spin(
            loop: EventLoop = loop,
            outcome: list[BaseException | str] = outcome,
            go: threading.Event = go,
        ) -> None:
            go.set()
            try:
                for _ in range(100):
                    loop.run_once(Handler(), timeout=0.001)
                    time.sleep(0)  # a gap for close() to land in
                outcome.append("finished")
            except BaseException as exc:
                outcome.append(exc)

        th = threading.Thread(target=spin, daemon=True)
        th.start()
        go.wait(10)
        time.sleep(rng.random() * 0.02)
        deadline = time.monotonic() + 20
        while True:
            tx.send("x")
            try:
                loop.close()
                break
            except RuntimeError:
                assert time.monotonic() < deadline, "close() refused for 20 s"
                time.sleep(0)
        th.join(10)
        assert not th.is_alive()
        assert len(outcome) == 1, outcome
        if outcome[0] != "finished":
            assert type(outcome[0]) is ValueError, outcome
            closed_under_it += 1
    return closed_under_it


if sys.platform != "linux":  # pragma: no cover
    pytestmark = pytest.mark.skip("fdinfo and eventfd checks are Linux-only")
