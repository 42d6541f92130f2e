"""Signals through the EventLoop: real ``os.kill`` of this process.

SIGUSR1/SIGUSR2 terminate a process by default, so a test whose signal is
not caught by the loop kills the test run: that is a failure too.  Every
test restores the handlers and the wakeup fd it found (fixture).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from metalio.loop import EventLoop, EventLoopConfig, Handler

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1/SIGUSR2")

SIGUSR1 = getattr(signal, "SIGUSR1", 10)
SIGUSR2 = getattr(signal, "SIGUSR2", 12)


@pytest.fixture(autouse=True)
def _restore_signal_state() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (SIGUSR1, SIGUSR2)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    for s, h in saved.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)
    signal.set_wakeup_fd(wakeup)


class Sig(Handler):
    def __init__(self, stop_after: int = 1) -> None:
        self.log: list[Any] = []
        self.stop_after = stop_after

    def signal(self, loop: EventLoop, signum: int) -> None:
        self.log.append(("signal", signum))
        if len(self.signals()) >= self.stop_after:
            loop.shutdown()

    def interrupted(self, loop: EventLoop) -> None:
        self.log.append(("interrupted",))

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        self.log.append(("timeout", payload))
        loop.shutdown()

    def signals(self) -> list[int]:
        return [e[1] for e in self.log if e[0] == "signal"]


def run_until(loop: EventLoop, h: Handler, seconds: float = 20) -> None:
    watchdog = loop.timeout("watchdog", seconds)
    loop.run(h)
    loop.clear_timeout(watchdog)


def test_signal_delivered_on_the_loop_thread() -> None:
    with EventLoop() as loop:
        loop.add_signal(SIGUSR1)
        threads: list[int] = []

        class H(Sig):
            def signal(self, ev: EventLoop, signum: int) -> None:
                threads.append(threading.get_ident())
                super().signal(ev, signum)

        h = H()
        os.kill(os.getpid(), SIGUSR1)  # would terminate us if not caught
        run_until(loop, h)
        assert h.log == [("interrupted",), ("signal", SIGUSR1)]
        assert threads == [threading.get_ident()]


def test_signal_wakes_a_blocked_loop() -> None:
    with EventLoop() as loop:
        loop.add_signal(SIGUSR1)
        h = Sig()
        killer = threading.Timer(0.1, os.kill, args=(os.getpid(), SIGUSR1))
        killer.start()
        t0 = time.monotonic()
        run_until(loop, h)
        killer.join(5)
        assert h.signals() == [SIGUSR1]
        assert ("timeout", "watchdog") not in h.log
        assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("backend", ["poll", "select"])
def test_signal_on_fallback_backends(backend: str) -> None:
    try:
        loop = EventLoop(EventLoopConfig(backend=backend))
    except ValueError:
        pytest.skip(f"backend {backend!r} not available")
    with loop:
        loop.add_signal(SIGUSR1)
        h = Sig()
        threading.Timer(0.05, os.kill, args=(os.getpid(), SIGUSR1)).start()
        run_until(loop, h)
        assert h.signals() == [SIGUSR1]


def test_two_signals_in_order_and_only_added_ones() -> None:
    other: list[int] = []

    def python_handler(signum: int, frame: FrameType | None) -> None:
        other.append(signum)

    signal.signal(SIGUSR2, python_handler)  # handled by Python, not added to the loop
    with EventLoop() as loop:
        loop.add_signal(SIGUSR1)
        h = Sig()
        os.kill(os.getpid(), SIGUSR2)
        os.kill(os.getpid(), SIGUSR1)
        run_until(loop, h)
        # SIGUSR2's byte interrupts the wait but is not the loop's to deliver.
        assert h.signals() == [SIGUSR1]
        assert h.log[0] == ("interrupted",)
        assert other == [SIGUSR2]


def test_remove_signal_restores_the_previous_handler() -> None:
    def previous(signum: int, frame: FrameType | None) -> None:
        pass

    signal.signal(SIGUSR1, previous)
    signal.signal(SIGUSR2, signal.SIG_IGN)
    before_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before_fd)
    with EventLoop() as loop:
        loop.add_signal(SIGUSR1)
        loop.add_signal(SIGUSR1)  # twice: harmless
        loop.add_signal(SIGUSR2)
        assert signal.getsignal(SIGUSR1) is not previous
        # The loop's socket is the wakeup fd now.
        current = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(current)
        assert current != before_fd
        assert loop.remove_signal(SIGUSR1) is True
        assert loop.remove_signal(SIGUSR1) is False
        assert signal.getsignal(SIGUSR1) is previous
        assert loop.remove_signal(SIGUSR2) is True
        assert signal.getsignal(SIGUSR2) == signal.SIG_IGN
        # Last one removed: the previous wakeup fd is back.
        now = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(now)
        assert now == before_fd


def test_close_restores_everything() -> None:
    before = signal.getsignal(SIGUSR1)
    before_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before_fd)
    loop = EventLoop()
    loop.add_signal(SIGUSR1)
    loop.close()
    assert signal.getsignal(SIGUSR1) == before
    now = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(now)
    assert now == before_fd
    with pytest.raises(ValueError):
        loop.add_signal(SIGUSR1)


def test_add_signal_off_the_main_thread_is_refused() -> None:
    errors: list[BaseException] = []
    with EventLoop() as loop:

        def other() -> None:
            for call in (lambda: loop.add_signal(SIGUSR1), lambda: loop.remove_signal(SIGUSR1)):
                try:
                    call()
                except ValueError as exc:
                    errors.append(exc)

        th = threading.Thread(target=other)
        th.start()
        th.join(5)
        assert len(errors) == 2
        assert signal.getsignal(SIGUSR1) != signal.SIG_IGN


def test_invalid_signals() -> None:
    with EventLoop() as loop:
        with pytest.raises(ValueError):
            loop.add_signal(signal.SIGKILL)
        with pytest.raises(ValueError):
            loop.add_signal(0)
        with pytest.raises(TypeError):
            loop.add_signal("SIGUSR1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            loop.add_signal(True)


def test_exception_from_a_python_signal_handler_propagates() -> None:
    class Stop(Exception):
        pass

    def raising(signum: int, frame: FrameType | None) -> None:
        raise Stop

    signal.signal(SIGUSR2, raising)
    with EventLoop() as loop:
        loop.add_signal(SIGUSR1)
        h = Sig()
        threading.Timer(0.1, os.kill, args=(os.getpid(), SIGUSR2)).start()
        loop.timeout("watchdog", 20)
        with pytest.raises(Stop):
            loop.run(h)
        assert not loop.is_running()
        assert ("timeout", "watchdog") not in h.log
        # The loop is intact: a later signal still arrives.
        os.kill(os.getpid(), SIGUSR1)
        loop.run(h)
        assert h.signals() == [SIGUSR1]


def test_exception_in_signal_keeps_the_rest() -> None:
    class Boom(Exception):
        pass

    with EventLoop() as loop:
        loop.add_signal(SIGUSR1)
        loop.add_signal(SIGUSR2)
        seen: list[int] = []

        class H(Handler):
            def signal(self, ev: EventLoop, signum: int) -> None:
                seen.append(signum)
                if len(seen) == 1:
                    raise Boom
                ev.shutdown()

        os.kill(os.getpid(), SIGUSR1)
        os.kill(os.getpid(), SIGUSR2)
        loop.timeout("watchdog", 20)
        with pytest.raises(Boom):
            loop.run(H())
        loop.run(H())
        assert seen == [SIGUSR1, SIGUSR2]


def test_exception_in_interrupted_keeps_the_signal() -> None:
    class Boom(Exception):
        pass

    with EventLoop() as loop:
        loop.add_signal(SIGUSR1)
        log: list[str] = []

        class H(Handler):
            def interrupted(self, ev: EventLoop) -> None:
                log.append("interrupted")
                raise Boom

            def signal(self, ev: EventLoop, signum: int) -> None:
                log.append("signal")
                ev.shutdown()

        os.kill(os.getpid(), SIGUSR1)
        loop.timeout("watchdog", 20)
        with pytest.raises(Boom):
            loop.run(H())
        loop.run(H())
        assert log == ["interrupted", "signal"]
