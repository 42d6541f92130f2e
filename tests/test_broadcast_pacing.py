"""The broadcast's flow-control policy (``metalio.apps.pacing``) on a real loop.

The end-to-end behaviour is tested through the command line in
``test_broadcast_flow.py``; here the policy's promises are checked one by
one, where the order of events can be chosen: sources resume in the order
they stopped, a source that stops again goes to the back, a newcomer waits
behind the queue, the soft limit and the stall patience take a receiver
out of the pacing, the slow timeout cuts it off unless it catches up, the
hard limit is reported.  Receivers are ``Conn`` records over real loopback
connections; timers run on a real ``EventLoop``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from metalio import EventLoop, Handler
from metalio.apps.pacing import HOLDING, LAGGING, NORMAL, FlowControl
from metalio.apps.server import Conn
from metalio.net import TcpListener, TcpStream

LOG = logging.getLogger("test.pacing")


class Timers(Handler):
    def __init__(self) -> None:
        self.flow: FlowControl | None = None

    def timeout(self, loop: EventLoop, payload: object) -> None:
        assert self.flow is not None and self.flow.on_timeout(payload)


class Rig:
    """A FlowControl with a recorded call_soon and disconnect, on a real loop."""

    def __init__(self, loop: EventLoop, conns: list[Conn], **limits: float) -> None:
        self.loop = loop
        self.conns = conns
        self.soon: list[Callable[[], None]] = []
        self.cut: list[tuple[Conn, str]] = []
        self.cut_at: list[float] = []
        self.handler = Timers()
        options: dict[str, float] = {"soft_limit": 800, "hard_limit": 10_000, "slow_timeout": 5}
        options.update(limits)
        self.flow = FlowControl(
            loop,
            soft_limit=int(options["soft_limit"]),
            hard_limit=int(options["hard_limit"]),
            slow_timeout=options["slow_timeout"],
            patience=options.get("patience"),
            call_soon=self.soon.append,
            disconnect=self._cut,
            log=LOG,
        )
        self.handler.flow = self.flow
        for conn in conns:
            self.flow.admit(conn)

    def _cut(self, conn: Conn, why: str) -> None:
        self.cut.append((conn, why))
        self.cut_at.append(time.monotonic())
        self.flow.forget(conn)  # what the server's drop does

    def set_queue(self, conn: Conn, queued: int) -> bool:
        """What the broadcast does: charge, then ask the policy on a crossing / drain."""
        conn.queued = queued
        if queued > conn.mark:
            return self.flow.grew(conn)
        if conn.level and queued <= self.flow.low:
            self.flow.drained(conn)
        return False

    def run_soon(self) -> None:
        soon, self.soon[:] = list(self.soon), []
        for callback in soon:
            callback()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.loop.run_once(self.handler, timeout=0.01)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    with EventLoop() as loop:
        yield loop


@pytest.fixture
def conns() -> Iterator[list[Conn]]:
    with TcpListener.bind(("127.0.0.1", 0)) as listener:
        streams = [TcpStream.connect(listener.local_addr()) for _ in range(3)]
        try:
            yield [Conn(stream, f"peer {i}", i + 1) for i, stream in enumerate(streams)]
        finally:
            for stream in streams:
                stream.close()


def test_marks_follow_the_soft_limit_and_are_clamped_to_the_hard_one(
    loop: EventLoop, conns: list[Conn]
) -> None:
    rig = Rig(loop, conns)
    assert (rig.flow.high, rig.flow.low, rig.flow.soft) == (400, 100, 800)
    clamped = Rig(loop, conns, soft_limit=1 << 20, hard_limit=4096).flow
    assert (clamped.soft, clamped.high, clamped.low) == (4096, 2048, 512)
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            Rig(loop, conns, slow_timeout=bad)


def test_sources_resume_in_order_and_a_restopped_one_goes_last(
    loop: EventLoop, conns: list[Conn]
) -> None:
    rig = Rig(loop, conns)
    flow = rig.flow
    receiver = conns[0]
    order: list[str] = []

    def source(name: str, stop_again: bool = False) -> Callable[[], None]:
        def resume() -> None:
            order.append(name)
            if stop_again:  # reads one chunk, which pauses the fan-out again
                rig.set_queue(receiver, 500)
                flow.wait(name, source(name))

        return resume

    assert not flow.blocked
    rig.set_queue(receiver, 500)  # over the high-water mark: hold
    assert receiver.level == HOLDING and flow.paused and flow.blocked
    flow.wait("a", source("a", stop_again=True))
    flow.wait("b", source("b"))
    flow.wait("a", source("a"))  # already waiting: keeps its place
    rig.set_queue(receiver, 300)  # between the marks: still holding
    assert flow.paused and not rig.soon
    rig.set_queue(receiver, 100)  # at the low-water mark: released
    assert receiver.level == NORMAL and not flow.paused
    assert flow.blocked, "sources still wait: a newcomer must queue behind them"
    flow.wait("c", source("c"))
    assert order == []  # nothing resumes inline, only from the continuation
    rig.run_soon()
    assert order == ["a"]  # a read and paused the fan-out again
    assert flow.paused
    rig.set_queue(receiver, 0)
    rig.run_soon()
    assert order == ["a", "b", "c", "a"]
    assert not flow.blocked and not flow.paused
    assert flow.pauses == 2 and flow.resumes == 4


def test_a_closed_source_is_skipped(loop: EventLoop, conns: list[Conn]) -> None:
    rig = Rig(loop, conns)
    order: list[int] = []
    rig.set_queue(conns[0], 500)
    for conn in conns[1:]:
        rig.flow.wait(conn, lambda conn=conn: order.append(conn.token))
    rig.flow.forget(conns[1])
    rig.set_queue(conns[0], 0)
    rig.run_soon()
    assert order == [conns[2].token]


def test_over_the_soft_limit_a_receiver_stops_counting_and_is_cut_off_later(
    loop: EventLoop, conns: list[Conn]
) -> None:
    rig = Rig(loop, conns, slow_timeout=0.2)
    slow, healthy = conns[0], conns[1]
    rig.set_queue(healthy, 500)
    assert rig.flow.paused
    assert not rig.set_queue(slow, 900)  # over soft, under hard
    assert slow.level == LAGGING and rig.flow.lagging() == 1
    rig.set_queue(healthy, 0)
    assert not rig.flow.paused, "a lagging receiver must not hold the others"
    rig.set_queue(slow, 5000)  # grows further while lagging: no new decision
    started = time.monotonic()
    while not rig.cut and time.monotonic() - started < 10:
        rig.run_for(0.02)
    assert rig.cut, "never cut off"
    assert time.monotonic() - started >= 0.2 - 0.05  # the timer never fires early
    conn, why = rig.cut[0]
    assert conn is slow
    assert "--soft-buffer" in why and "--slow-timeout" in why
    assert rig.set_queue(slow, 10_001), "over the hard limit must be reported"
    assert "--max-buffer" in rig.flow.hard_limit_reason()


def test_a_lagging_receiver_that_catches_up_is_kept(loop: EventLoop, conns: list[Conn]) -> None:
    rig = Rig(loop, conns, slow_timeout=0.1)
    rig.set_queue(conns[0], 900)
    assert conns[0].level == LAGGING
    rig.set_queue(conns[0], 50)
    assert conns[0].level == NORMAL and rig.flow.lagging() == 0
    rig.run_for(0.3)
    assert rig.cut == []


def test_the_slow_clock_restarts_when_a_receiver_lags_anew(
    loop: EventLoop, conns: list[Conn]
) -> None:
    rig = Rig(loop, conns, slow_timeout=0.5)
    first, other = conns[0], conns[1]
    rig.set_queue(first, 900)  # lagging: its first clock starts
    rig.set_queue(other, 900)  # another lagging receiver, one timer for both
    rig.run_for(0.2)
    rig.set_queue(first, 0)  # caught up: the first clock no longer counts
    rig.run_for(0.2)
    relagged = time.monotonic()
    rig.set_queue(first, 900)  # lagging anew: a fresh clock
    started = time.monotonic()
    while len(rig.cut) < 2 and time.monotonic() - started < 10:
        rig.run_for(0.02)
    assert [conn for conn, _ in rig.cut] == [other, first]
    assert rig.cut_at[1] - relagged >= 0.5 - 0.01, "cut by the clock of its first lag"
    assert rig.flow.lagging() == 0


def test_a_holder_that_stalls_is_let_go_after_the_patience(
    loop: EventLoop, conns: list[Conn]
) -> None:
    rig = Rig(loop, conns, slow_timeout=0.4, patience=0.1)
    stalled, other = conns[0], conns[1]
    resumed: list[str] = []
    rig.set_queue(stalled, 500)
    rig.flow.wait("sender", lambda: resumed.append("sender"))
    rig.set_queue(other, 450)
    rig.set_queue(other, 0)  # the other one drains; the stalled one never does
    assert rig.flow.paused
    started = time.monotonic()
    while rig.flow.paused and time.monotonic() - started < 10:
        rig.run_for(0.02)
    assert not rig.flow.paused
    assert stalled.level == LAGGING
    rig.run_soon()
    assert resumed == ["sender"]
    while not rig.cut and time.monotonic() - started < 10:
        rig.run_for(0.02)
    assert rig.cut and rig.cut[0][0] is stalled
    assert "stalled" in rig.cut[0][1]


def test_a_second_source_delivers_through_the_fan_out_and_is_paced() -> None:
    # The plug a relay uses: deliver() chunks while flow.blocked is clear,
    # flow.wait() when it is set.  Driven on this thread with run_once, so
    # the "relay" runs on the loop thread as the contract requires.
    from metalio.apps.broadcast import BroadcastServer

    chunks = [bytes([i % 251]) * 16384 for i in range(128)]  # 2 MiB in order
    expected = b"".join(chunks)
    with EventLoop() as loop, TcpListener.bind(("127.0.0.1", 0)) as listener:
        server = BroadcastServer(loop, listener, soft_buffer=64 << 10, max_buffer=64 << 20)
        fast = socket.create_connection(listener.local_addr()[:2])
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1024)
        slow.connect(listener.local_addr()[:2])
        try:
            for sock in (fast, slow):
                sock.setblocking(False)
            while len(server.clients) < 2:
                loop.run_once(server, timeout=0.01)
            pending = list(chunks)

            def relay() -> None:
                while pending and not server.flow.blocked:
                    server.deliver(pending.pop(0))
                if pending:
                    server.flow.wait("relay", relay)

            relay()
            got = {fast: bytearray(), slow: bytearray()}
            deadline = time.monotonic() + 30
            while any(len(data) < len(expected) for data in got.values()):
                assert time.monotonic() < deadline, {s.fileno(): len(d) for s, d in got.items()}
                loop.run_once(server, timeout=0.005)
                for sock, data in got.items():
                    with contextlib.suppress(BlockingIOError):
                        # The slow one reads a little per turn: it holds the relay back.
                        data += sock.recv(1 << 20 if sock is fast else 8192)
            assert got[fast] == expected and got[slow] == expected
            assert server.flow.pauses > 0 and server.flow.resumes > 0
            assert len(server.clients) == 2
        finally:
            fast.close()
            slow.close()
            server.close()
