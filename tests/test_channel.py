"""The notify channel: FIFO, exactly once, the capacity bound, closing, and
the sleep/wake handshake (prompt wake-ups, coalesced system calls).

Each cross-thread test runs twice: with the lock-free handshake used under
the GIL and with the locked one used on free-threaded builds (forced here
through ``metalio.channel._FREE_THREADED``).  Every wait is bounded by a loop
watchdog timeout or a join timeout.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from metalio import NotifyClosed, NotifyError, NotifyFull
from metalio import channel as channel_mod
from metalio._backends import available_backends
from metalio.channel import Sender
from metalio.loop import EventLoop, EventLoopConfig, Handler

BACKENDS = ("epoll", "poll", "select")


@pytest.fixture(params=["gil", "locked"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(channel_mod, "_FREE_THREADED", request.param == "locked")
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name not in available_backends():
        pytest.skip(f"backend {name!r} not available on this checkout")
    return name


def make_loop(backend: str = "epoll", **kw: Any) -> EventLoop:
    return EventLoop(EventLoopConfig(backend=backend, **kw))


class Collect(Handler):
    """Collects messages; shuts the loop down after *expect* of them."""

    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.got: list[Any] = []
        self.watchdog = False

    def notify(self, loop: EventLoop, msg: Any) -> None:
        self.got.append(msg)
        if len(self.got) == self.expect:
            loop.shutdown()

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        self.watchdog = True
        loop.shutdown()


def send_retrying(tx: Sender[Any], msg: Any, deadline: float) -> None:
    while True:
        try:
            tx.send(msg)
            return
        except NotifyFull:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.0005)


# ---------------------------------------------------------------------------
# Ordering and delivery


def test_fifo_exactly_once_from_four_threads(mode: str, backend: str) -> None:
    threads_n, per_thread = 4, 5000
    with make_loop(backend) as loop:
        assert loop._channel.locked == (mode == "locked")
        h = Collect(threads_n * per_thread)
        deadline = time.monotonic() + 30
        start = threading.Barrier(threads_n)

        def producer(tid: int) -> None:
            tx = loop.channel()  # one Sender per thread, same queue
            start.wait(10)
            for i in range(per_thread):
                send_retrying(tx, (tid, i), deadline)

        threads = [threading.Thread(target=producer, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        loop.timeout("watchdog", 30)
        loop.run(h)
        for th in threads:
            th.join(10)
        assert not h.watchdog
        assert len(h.got) == threads_n * per_thread
        assert len(set(h.got)) == len(h.got)  # nothing twice
        for tid in range(threads_n):
            mine = [i for t, i in h.got if t == tid]
            assert mine == list(range(per_thread))  # each sender's order kept
        assert len(loop._channel.credits) == loop._channel.capacity  # every credit back


class _EqualToEverything:
    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = object.__hash__


class _EqRaises:
    """Like a numpy array: comparing it with an arbitrary object raises."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value is ambiguous")

    __hash__ = object.__hash__


def test_messages_are_never_compared() -> None:
    # Regression: the loop used to pop with iter(popleft, sentinel), which
    # compares each message with the sentinel through the message's __eq__:
    # a message "equal to everything" ended the batch and was lost, one whose
    # __eq__ raises was lost with the error, and both leaked their credit.
    weird, boom = _EqualToEverything(), _EqRaises()
    with make_loop(notify_capacity=8) as loop:
        tx = loop.channel()
        for msg in (weird, 1, boom, 2):
            tx.send(msg)
        h = Collect(4)
        loop.run_once(h, timeout=0)
        assert [m is weird for m in h.got] == [True, False, False, False]
        assert [m is boom for m in h.got] == [False, False, True, False]
        assert h.got[1] == 1 and h.got[3] == 2
        assert len(loop._channel.credits) == 8  # every credit back


def test_send_from_handler_arrives_next_iteration() -> None:
    """mio test_notify: 'First' from a thread, 'Second' sent by the handler."""
    with make_loop() as loop:
        tx = loop.channel()
        iterations: list[list[str]] = [[]]

        class H(Handler):
            def notify(self, ev: EventLoop, msg: Any) -> None:
                iterations[-1].append(msg)
                if msg == "First":
                    tx.send("Second")
                else:
                    ev.shutdown()

            def tick(self, ev: EventLoop) -> None:
                iterations.append([])

        threading.Timer(0.1, tx.send, args=("First",)).start()
        loop.timeout("watchdog", 20)
        loop.run(H())
        assert [m for it in iterations for m in it] == ["First", "Second"]
        assert ["First"] in iterations and ["Second"] in iterations


def test_messages_per_tick_splits_exactly() -> None:
    with make_loop(messages_per_tick=3) as loop:
        per_iteration: list[int] = []

        class H(Handler):
            def __init__(self) -> None:
                self.count = 0

            def notify(self, ev: EventLoop, msg: Any) -> None:
                self.count += 1

            def tick(self, ev: EventLoop) -> None:
                per_iteration.append(self.count)
                self.count = 0

        tx = loop.channel()
        for i in range(10):
            tx.send(i)
        h = H()
        for _ in range(5):
            loop.run_once(h, timeout=0)
        assert per_iteration == [3, 3, 3, 1, 0]


def test_pending_messages_do_not_wait() -> None:
    """With messages pending the wait does not block, even without a timeout."""
    with make_loop(messages_per_tick=1) as loop:
        tx = loop.channel()
        tx.send(1)
        tx.send(2)
        h = Collect(2)
        t0 = time.monotonic()
        loop.run_once(h)  # delivers 1; 2 is pending
        loop.run_once(h)  # must not block
        assert time.monotonic() - t0 < 5
        assert h.got == [1, 2]


# ---------------------------------------------------------------------------
# Waking a sleeping loop


def test_prompt_wake_from_another_thread(mode: str, backend: str) -> None:
    with make_loop(backend) as loop:
        tx = loop.channel()
        core = loop._channel
        sent_at: list[float] = []

        def sender() -> None:
            deadline = time.monotonic() + 10
            while not core.sleeping and time.monotonic() < deadline:
                time.sleep(0.001)  # wait until the loop is asleep
            time.sleep(0.02)
            sent_at.append(time.monotonic())
            tx.send("wake up")

        h = Collect(1)
        th = threading.Thread(target=sender)
        th.start()
        loop.timeout("watchdog", 20)
        loop.run(h)
        woke = time.monotonic()
        th.join(5)
        assert h.got == ["wake up"]
        assert not h.watchdog
        assert woke - sent_at[0] < 2.0  # promptly (generous on a loaded machine)
        assert core.wakes == 1


def test_no_wake_syscalls_while_busy(mode: str) -> None:
    """Sends to a loop that is not sleeping cost no wake-up at all."""
    with make_loop(notify_capacity=5000) as loop:
        tx = loop.channel()
        core = loop._channel
        inside = threading.Event()
        release = threading.Event()

        class H(Collect):
            def notify(self, ev: EventLoop, msg: Any) -> None:
                if msg == "block":
                    inside.set()
                    assert release.wait(10)
                super().notify(ev, msg)

        h = H(1001)
        tx.send("block")

        def burst() -> None:
            assert inside.wait(10)
            for i in range(1000):
                tx.send(i)
            release.set()

        th = threading.Thread(target=burst)
        th.start()
        loop.timeout("watchdog", 20)
        loop.run(h)
        th.join(5)
        assert not h.watchdog
        assert h.got == ["block", *range(1000)]
        assert core.wakes == 0


def test_wakes_coalesce_for_a_sleeping_loop(mode: str) -> None:
    """A burst sent to a sleeping loop writes the awakener once."""
    with make_loop() as loop:
        tx = loop.channel()
        core = loop._channel
        core.sleeping = True  # as the loop sets it right before blocking
        for i in range(1000):
            tx.send(i)
        assert core.wakes == 1
        assert core.sleeping is False
        h = Collect(1000)
        loop.run_once(h, timeout=5)  # the wake-up is pending: returns at once
        loop.run_once(h, timeout=0)
        loop.run_once(h, timeout=0)
        loop.run_once(h, timeout=0)
        assert h.got == list(range(1000))


def test_send_in_the_sleep_window_is_not_stranded(mode: str) -> None:
    """Deterministic form of the race the handshake exists for.

    The loop reads the clock after it found the queue empty and before it
    announces that it sleeps.  A clock that sends right then plays a sender
    thread whose append and read of ``sleeping`` fall into that window: the
    sender sees ``sleeping`` false and does not wake the loop, so only the
    loop's re-check after announcing keeps it from blocking until the timer
    (8 s) with a message pending.
    """
    sent: list[str] = []
    armed = False
    holder: list[Sender[Any]] = []

    def clock() -> float:
        if armed and not sent:
            holder[0].send("in the window")
            sent.append("x")
        return time.monotonic()

    with make_loop(clock=clock) as loop:
        holder.append(loop.channel())
        loop.timeout("far", 8)
        armed = True
        h = Collect(1)
        t0 = time.monotonic()
        loop.run_once(h)  # no bound: only the 8 s timer or a wake ends a wait
        assert sent == ["x"]
        assert h.got == ["in the window"]
        assert time.monotonic() - t0 < 10
        assert loop._channel.wakes == 0  # not woken: it never slept


def test_handshake_stress(mode: str) -> None:
    """Sends racing with the loop going to sleep: none is stranded.

    A lost wake-up leaves the loop blocked until the watchdog (20 s) fires,
    which fails the test.
    """
    n = 3000
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: more chances to race
    try:
        _stress(n)
    finally:
        sys.setswitchinterval(old_interval)


def _stress(n: int) -> None:
    with make_loop(messages_per_tick=7) as loop:
        tx = loop.channel()

        def sender() -> None:
            for i in range(n):
                tx.send(i)
                if i % 3 == 0:
                    time.sleep(0)  # let the loop catch up and fall asleep
                if i % 500 == 0:
                    time.sleep(0.002)

        h = Collect(n)
        th = threading.Thread(target=sender)
        th.start()
        loop.timeout("watchdog", 20)
        loop.run(h)
        th.join(5)
        assert not h.watchdog
        assert h.got == list(range(n))


# ---------------------------------------------------------------------------
# Capacity


def test_notify_full_carries_the_message() -> None:
    with make_loop(notify_capacity=3) as loop:
        tx = loop.channel()
        for i in range(3):
            tx.send(i)
        with pytest.raises(NotifyFull) as info:
            tx.send("refused")
        assert info.value.msg == "refused"
        assert isinstance(info.value, NotifyError)
        h = Collect(3)
        loop.run_once(h, timeout=0)
        assert h.got == [0, 1, 2]
        tx.send(3)  # room again


def test_capacity_bound_is_exact_under_concurrency(mode: str) -> None:
    capacity = 100
    with make_loop(notify_capacity=capacity) as loop:
        ok = []
        full = []
        start = threading.Barrier(8)

        def sender(tid: int) -> None:
            tx = loop.channel()
            start.wait(10)
            for i in range(50):
                try:
                    tx.send((tid, i))
                    ok.append(1)
                except NotifyFull:
                    full.append(1)

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        assert len(ok) == capacity
        assert len(full) == 8 * 50 - capacity
        assert len(loop._channel.queue) == capacity


def test_capacity_while_blocked_in_notify() -> None:
    """mio test_notify_capacity: capacity 1, the loop stuck inside notify(1)."""
    with make_loop(notify_capacity=1) as loop:
        tx = loop.channel()
        inside = threading.Event()
        release = threading.Event()
        results: dict[str, Any] = {}

        class H(Collect):
            def notify(self, ev: EventLoop, msg: Any) -> None:
                if msg == 1:
                    inside.set()
                    assert release.wait(10)
                super().notify(ev, msg)
                if msg == 3:
                    ev.shutdown()

        def main_side() -> None:
            assert inside.wait(10)
            tx.send(2)  # message 1 is out of the queue: room for one
            try:
                tx.send(99)
            except NotifyFull as exc:
                results["full"] = exc.msg
            release.set()
            deadline = time.monotonic() + 10
            send_retrying(tx, 3, deadline)

        h = H(10)
        tx.send(1)
        th = threading.Thread(target=main_side)
        th.start()
        loop.timeout("watchdog", 20)
        loop.run(h)
        th.join(10)
        assert results == {"full": 99}
        assert h.got == [1, 2, 3]


# ---------------------------------------------------------------------------
# Closing


def test_notify_closed_after_close() -> None:
    loop = make_loop()
    tx = loop.channel()
    loop.close()
    with pytest.raises(NotifyClosed) as info:
        tx.send("late")
    assert info.value.msg == "late"
    assert isinstance(info.value, NotifyError)
    assert tx.closed
    with pytest.raises(NotifyClosed):
        loop.channel().send("later")  # a sender made after close refuses too
    assert "closed" in repr(tx)


def test_messages_queued_at_close_are_dropped() -> None:
    class Msg:
        pass

    loop = make_loop()
    tx = loop.channel()
    msg = Msg()
    ref = weakref.ref(msg)
    tx.send(msg)
    del msg
    gc.collect()
    assert ref() is not None  # held by the queue
    loop.close()
    gc.collect()
    assert ref() is None  # dropped by close


def test_close_while_a_sender_races() -> None:
    """Senders see either success or NotifyClosed, never another error."""
    loop = make_loop(notify_capacity=1000)
    tx = loop.channel()
    errors: list[BaseException] = []
    stop = threading.Event()

    def sender() -> None:
        while not stop.is_set():
            try:
                tx.send(1)
            except NotifyClosed:
                return
            except NotifyFull:
                time.sleep(0)  # full before the close: keep trying until it closes
            except BaseException as exc:
                errors.append(exc)
                return

    th = threading.Thread(target=sender)
    th.start()
    time.sleep(0.02)
    loop.close()
    th.join(5)
    stop.set()
    assert errors == []
    assert not th.is_alive()


def test_repr() -> None:
    with make_loop() as loop:
        tx = loop.channel()
        tx.send(1)
        assert "1 queued" in repr(tx)
        assert isinstance(tx, Sender)


def test_the_handshake_matches_the_build(mode: str) -> None:
    # Free-threaded builds append and read the flag under the channel's lock;
    # under the GIL a send never touches it.
    with make_loop() as loop:
        tx = loop.channel()
        sent = threading.Event()

        def send() -> None:
            tx.send("x")
            sent.set()

        with loop._channel.lock:
            th = threading.Thread(target=send)
            th.start()
            blocked = not sent.wait(0.5 if mode == "locked" else 10)
        th.join(10)
        assert blocked == (mode == "locked")
        assert sent.is_set() and list(loop._channel.queue) == ["x"]


def test_subclasses_may_override_send() -> None:
    class Counting(Sender[Any]):
        __slots__ = ("count",)

        def send(self, msg: Any) -> None:
            self.count = getattr(self, "count", 0) + 1

    with make_loop() as loop:
        tx = Counting(loop._channel)
        tx.send(1)
        tx.send(2)
        assert tx.count == 2 and not loop._channel.queue


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    for th in set(threading.enumerate()) - before:
        th.join(5)


def test_first_channel_from_another_thread_wakes_a_blocked_loop() -> None:
    """A loop blocked with no senders yet did not announce its sleep; the first
    channel() made by another thread must still get its messages through."""
    got: list[Any] = []
    with EventLoop() as loop:

        class H(Handler):
            def notify(self, ev: EventLoop, msg: Any) -> None:
                got.append(msg)
                ev.shutdown()

        def later() -> None:
            time.sleep(0.2)  # the loop is blocked by now
            loop.channel().send("hello")

        t = threading.Thread(target=later)
        t.start()
        watchdog = threading.Timer(10, loop.shutdown)  # a lost wake-up fails, not hangs
        watchdog.start()
        start = time.monotonic()
        loop.run(H())
        watchdog.cancel()
        t.join()
        assert got == ["hello"]
        assert time.monotonic() - start < 8
