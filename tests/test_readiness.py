"""Readiness tracking (``metalio._readiness``): ``None`` without a system call, never a lost wake-up.

System calls are counted by the kernel (``/proc/thread-self/io``: the read
and write calls this thread made), so the count is the same whichever
implementation made them.  Every test runs twice: on the C core's stream
calls (skipped where it is not in use) and on the pure-Python reference
(``metalio._fdio.fd_try_*``, bound onto the classes for the test).  Each
scenario of issue 13 has a test of its own.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

import metalio._fdio as fdio
from conftest import BACKENDS
from conftest import open_poll as open_any_poll
from metalio import EventLoop, EventLoopConfig, Events, Handler, Interest, Poll, PollOpt, Ready
from metalio import pipe as make_pipe
from metalio.net import TcpListener, TcpStream, UnixDatagram, UnixStream
from metalio.net._sources import StreamSource
from metalio.pipe import PipeReader, PipeWriter

R = Interest.READABLE
W = Interest.WRITABLE
EDGE = PollOpt.EDGE
TRACKING = [b for b in BACKENDS if b in ("epoll", "kqueue-fake")]
EMULATED = [b for b in BACKENDS if b in ("poll", "select")]


_STREAM_CALLS = {
    StreamSource: ("try_read", "try_read_into", "try_write", "try_writev"),
    PipeReader: ("try_read", "try_read_into"),
    PipeWriter: ("try_write", "try_writev"),
}


@pytest.fixture(autouse=True, params=["c", "python"])
def funnel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which stream calls the test runs on: the C core's, or the Python reference."""
    if request.param == "c":
        if fdio.CORE is None:
            pytest.skip("the C core is not in use")
    else:
        for cls, names in _STREAM_CALLS.items():
            for name in names:
                monkeypatch.setattr(cls, name, getattr(fdio, "fd_" + name))
    return str(request.param)


class Calls:
    """Counts this thread's read-side (or write-side) system calls, as the kernel does.

    ``/proc/thread-self/io`` counts every ``read``/``readv``/``pread`` (its
    ``syscr``) and ``write``/``writev`` (``syscw``) a thread makes, would-blocks
    included.  Each look at the file is one ``pread`` of its own, which the
    count subtracts, and so do :func:`poll_once` and :func:`open_poll` with
    what the backend made (the fake kqueue reads its module's source).  The tests read on one end and write
    on the other, so counting one side counts the calls of the source under
    test.
    """

    active: list[Calls] = []
    looks = 0  # by every counter: each is a read of its own

    def __init__(self, field: str = "syscr") -> None:
        self._field = field.encode()
        self._fd = os.open("/proc/thread-self/io", os.O_RDONLY)
        self._base = self._raw()
        Calls.active.append(self)

    def _raw(self) -> int:
        text = os.pread(self._fd, 4096, 0)
        # Every earlier look was a read (syscr); this one is counted after it returns.
        own = Calls.looks if self._field == b"syscr" else 0
        Calls.looks += 1
        for line in text.splitlines():
            key, _, value = line.partition(b":")
            if key == self._field:
                return int(value) - own
        raise AssertionError(f"no {self._field!r} in /proc/thread-self/io")

    @property
    def count(self) -> int:
        return self._raw() - self._base

    @staticmethod
    @contextlib.contextmanager
    def uncounted() -> Iterator[None]:
        """What runs inside is not counted by any active counter."""
        before = [counter.count for counter in Calls.active]
        yield
        for counter, then in zip(Calls.active, before, strict=True):
            counter._base += counter.count - then

    def close(self) -> None:
        Calls.active.remove(self)
        os.close(self._fd)


def _skip_unless_countable() -> None:
    if not os.path.exists("/proc/thread-self/io"):
        pytest.skip("needs Linux's per-thread I/O accounting")
    if "vgpreload" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("under valgrind, which makes system calls of its own in the thread")


@pytest.fixture
def calls() -> Iterator[Calls]:
    _skip_unless_countable()
    counter = Calls()
    yield counter
    counter.close()


@pytest.fixture
def write_calls() -> Iterator[Calls]:
    _skip_unless_countable()
    counter = Calls("syscw")
    yield counter
    counter.close()


@pytest.fixture
def upair() -> Iterator[tuple[UnixStream, UnixStream]]:
    """A stream pair."""
    a, b = UnixStream.pair()
    with a, b:
        yield a, b


def open_poll(backend: str) -> Poll:
    """A Poll on *backend*; what opening it reads is not counted."""
    with Calls.uncounted():
        return open_any_poll(backend)


def poll_once(poll: Poll, timeout: float = 2.0) -> list[tuple[int, Ready]]:
    """One wait; the system calls the backend makes in it are not counted."""
    events = Events()
    with Calls.uncounted():
        poll.poll(events, timeout)
    return [(e.token, e.readiness) for e in events]


# -- the mark -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", TRACKING)
def test_short_read_then_none_without_a_call(
    backend: str, calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)
        b.try_write(b"abc")
        assert poll_once(poll) == [(1, Ready.READABLE)]
        assert a.try_read(100) == b"abc"
        assert calls.count == 1
        assert a.try_read(100) is None  # the buffer was empty after the short read
        assert calls.count == 1
        b.try_write(b"def")
        assert poll_once(poll) == [(1, Ready.READABLE)]  # the new edge
        assert a.try_read(100) == b"def"  # a wait returned: the call is made again
        assert calls.count == 2


@pytest.mark.parametrize("backend", TRACKING)
def test_would_block_then_none_without_a_call(
    backend: str, calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    a, _ = upair
    buf = bytearray(16)
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)
        assert a.try_read_into(buf) is None
        assert calls.count == 1
        assert a.try_read_into(buf) is None
        assert a.try_read(5) is None
        assert calls.count == 1


@pytest.mark.parametrize("backend", TRACKING)
def test_full_read_keeps_calling(
    backend: str, calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    """A read that filled the request proves nothing: the next one is made."""
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)
        b.try_write(b"abcdef")
        poll_once(poll)
        assert a.try_read(3) == b"abc"
        assert a.try_read(3) == b"def"
        assert calls.count == 2


@pytest.mark.parametrize("backend", TRACKING)
def test_partial_write_then_none_without_a_call(backend: str, write_calls: Calls) -> None:
    calls = write_calls
    a, b = UnixStream.pair()
    with a, b, open_poll(backend) as poll:
        a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        poll.registry.register(a, 1, W, EDGE)
        poll_once(poll)
        big = b"x" * (1 << 20)
        n = a.try_write(big)
        assert n is not None and 0 < n < len(big)
        made = calls.count
        assert a.try_write(big) is None
        assert a.try_writev([big]) is None
        assert calls.count == made
        while b.try_read(1 << 20):  # the peer drains: space frees up, an edge follows
            pass
        assert (1, Ready.WRITABLE) in poll_once(poll)
        assert a.try_write(b"y") == 1
        assert calls.count > made


# -- what must never be hidden -------------------------------------------------------


@pytest.mark.parametrize("backend", TRACKING)
def test_end_of_stream_with_the_last_data(
    backend: str, upair: tuple[UnixStream, UnixStream]
) -> None:
    """Data and the end of stream in one event: after the short read, b"" still comes."""
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)
        b.try_write(b"last")
        b.shutdown(socket.SHUT_WR)
        ((_, ready),) = poll_once(poll)
        assert ready.read_closed
        assert a.try_read(100) == b"last"
        assert a.try_read(100) == b""  # sticky: never None
        assert a.try_read(100) == b""


@pytest.mark.parametrize("backend", TRACKING)
def test_error_with_the_last_data(backend: str) -> None:
    """Data, then a reset, in one batch: the error is read, not hidden behind None."""
    with TcpListener.bind(("127.0.0.1", 0)) as lst:
        client = TcpStream.connect(lst.local_addr())
        with open_poll(backend) as poll:
            accepted = None
            while accepted is None:
                accepted = lst.try_accept()
            server, _ = accepted
            with server, client:
                poll.registry.register(server, 1, R, EDGE)
                poll_once(poll, 0)
                client.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                client.socket.sendall(b"data")
                client.close()  # SO_LINGER 0: an RST follows the data
                seen = Ready(0)
                for _ in range(20):
                    for _, ready in poll_once(poll, 0.5):
                        seen |= ready
                    if seen.read_closed or seen.error:
                        break
                assert seen.read_closed or seen.error
                # Linux keeps the queued data readable after an RST, then the error.
                assert server.try_read(100) == b"data"
                with pytest.raises(ConnectionResetError):
                    server.try_read(100)


@pytest.mark.parametrize("backend", TRACKING)
def test_close_makes_every_call_raise(backend: str, upair: tuple[UnixStream, UnixStream]) -> None:
    a, _ = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R | W, EDGE)
        assert a.try_read(10) is None  # marked drained
        poll.registry.deregister(a)
        poll.registry.register(a, 1, R, EDGE)
        assert a.try_read(10) is None
        a.close()
        with pytest.raises(OSError):
            a.try_read(10)
        with pytest.raises(OSError):
            a.try_write(b"x")


# -- resetting the mark --------------------------------------------------------------


@pytest.mark.parametrize("backend", TRACKING)
@pytest.mark.parametrize("how", ["reregister", "deregister"])
def test_registration_changes_reset_the_mark(
    backend: str, how: str, calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    a, b = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)
        assert a.try_read(10) is None
        b.try_write(b"new")  # no poll in between
        if how == "reregister":
            poll.registry.reregister(a, 2, R, EDGE)
        else:
            poll.registry.deregister(a)
        assert a.try_read(10) == b"new"
        assert calls.count == 2


# -- no tracking where it cannot be trusted ------------------------------------------


def _two_empty_reads(a: Any, calls: Calls) -> int:
    before = calls.count
    assert a.try_read(10) is None
    assert a.try_read(10) is None
    return calls.count - before


def test_unregistered_source_always_calls(
    calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    a, _ = upair
    assert _two_empty_reads(a, calls) == 2


@pytest.mark.parametrize("backend", TRACKING)
def test_int_registration_is_not_tracked(
    backend: str, calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    a, _ = upair
    with open_poll(backend) as poll:
        poll.registry.register(a.fileno(), 1, R, EDGE)
        assert _two_empty_reads(a, calls) == 2


def test_two_polls_are_not_tracked(calls: Calls, upair: tuple[UnixStream, UnixStream]) -> None:
    a, _ = upair
    with open_poll("epoll") as one, open_poll("epoll") as two:
        one.registry.register(a, 1, R, EDGE)
        two.registry.register(a, 1, R, EDGE)
        assert _two_empty_reads(a, calls) == 2
        two.registry.deregister(a)  # still registered with one: stays untracked
        assert _two_empty_reads(a, calls) == 2
        one.registry.deregister(a)
        one.registry.register(a, 1, R, EDGE)  # alone again: tracked
        assert _two_empty_reads(a, calls) == 1


@pytest.mark.parametrize("backend", EMULATED)
def test_emulated_backends_are_not_tracked(
    backend: str, calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    """poll/select rebuild edges by re-arming on None: every None is a real call."""
    a, _ = upair
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)
        assert _two_empty_reads(a, calls) == 2


@pytest.mark.parametrize("backend", TRACKING)
def test_datagrams_are_not_tracked(backend: str) -> None:
    a, b = UnixDatagram.pair()
    with a, b, open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)
        b.try_send(b"one")
        b.try_send(b"two")
        poll_once(poll)
        assert a.try_recv(100) == b"one"  # short, yet another datagram waits
        assert a.try_recv(100) == b"two"


@pytest.mark.parametrize("backend", TRACKING)
def test_pipes_are_tracked(backend: str, calls: Calls) -> None:
    r, w = make_pipe()
    with r, w, open_poll(backend) as poll:
        poll.registry.register(r, 1, R, EDGE)
        w.try_write(b"hi")
        poll_once(poll)
        assert r.try_read(10) == b"hi"
        assert r.try_read(10) is None
        assert calls.count == 1
        w.close()
        assert poll_once(poll)[0][1].read_closed
        assert r.try_read(10) == b""


# -- the generation guard ------------------------------------------------------------


@pytest.mark.parametrize("backend", TRACKING)
@pytest.mark.parametrize("call", ["try_read", "try_read_into"])
def test_a_wait_during_the_read_leaves_a_stale_mark(
    backend: str,
    call: str,
    funnel: str,
    monkeypatch: pytest.MonkeyPatch,
    upair: tuple[UnixStream, UnixStream],
) -> None:
    """Another thread's poll returns while a read is in the kernel: the read's
    "drained" must not hide what that poll may have reported.  (The system
    call is replaced to stage the race, which only the Python reference
    allows; ``test_the_epoch_is_read_once_before_the_call`` checks the same
    rule on both.)"""
    if funnel == "c":
        pytest.skip("the C core's system call cannot be replaced")
    a, b = upair
    buf = bytearray(100)
    with open_poll(backend) as poll:
        poll.registry.register(a, 1, R, EDGE)

        def read_racing_a_poll(fd: int, *args: Any) -> Any:
            with pytest.raises(BlockingIOError):
                os.read(fd, 1)  # finds the buffer empty ...
            b.try_write(b"late")  # ... then data arrives ...
            poll_once(poll)  # ... and another poller reports it
            raise BlockingIOError

        # The funnel's system call for this try_*: the C core's where in use.
        name = "_read" if call == "try_read" else "_readinto" if fdio._readinto else "_readv"
        monkeypatch.setattr(fdio, name, read_racing_a_poll)
        attempt = (
            (lambda: a.try_read(100)) if call == "try_read" else (lambda: a.try_read_into(buf))
        )
        assert attempt() is None
        monkeypatch.undo()
        assert attempt() in (b"late", 4)  # the mark was stale: the call was made


class _Ticking:
    """An epoch stand-in whose value moves on every look, as if a wait returned
    between any two of them."""

    def __init__(self) -> None:
        self.looks = 0

    @property
    def now(self) -> float:
        self.looks += 1
        return float(self.looks)


@pytest.mark.parametrize("call", ["try_read", "try_read_into", "try_write", "try_writev"])
def test_the_epoch_is_read_once_before_the_call(
    call: str, calls: Calls, write_calls: Calls, upair: tuple[UnixStream, UnixStream]
) -> None:
    """The mark a would-block leaves is the value read before the system call,
    so a wait that returned during it makes the mark stale."""
    a, _ = upair
    if call.startswith("try_write"):
        a.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        while a.try_write(b"x" * 65536) is not None:  # untracked: fill the buffer
            pass
    arguments = {
        "try_read": (100,),
        "try_read_into": (bytearray(100),),
        "try_write": (b"more",),
        "try_writev": ([b"more"],),
    }[call]
    ticking = _Ticking()
    a._epoch = ticking  # tracked by a stand-in epoch
    made = calls.count + write_calls.count
    assert getattr(a, call)(*arguments) is None
    assert ticking.looks == 1
    assert (a._rmark if call.startswith("try_read") else a._wmark) == 1.0
    assert getattr(a, call)(*arguments) is None  # the epoch moved: a real call
    assert calls.count + write_calls.count == made + 2
    a._epoch = None


# -- through the EventLoop -----------------------------------------------------------


def test_loop_drain_until_none_makes_one_read_per_event(calls: Calls) -> None:
    """The idiom of the docs costs no would-block read on epoll."""
    a, b = UnixStream.pair()
    got: list[bytes] = []

    class Drain(Handler):
        def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
            while True:
                data = a.try_read(65536)
                if data is None:
                    return
                got.append(data)
                if not data:
                    loop.shutdown()
                    return

    with a, b, EventLoop(EventLoopConfig(backend="epoll")) as loop:
        loop.register(a, 1, R, EDGE)
        for i in range(5):
            b.try_write(b"x%d" % i)
            loop.run_once(Drain(), timeout=2)
        assert b"".join(got) == b"x0x1x2x3x4"
        assert calls.count == 5  # one read per event, none that would block
        b.shutdown(socket.SHUT_WR)
        loop.run_once(Drain(), timeout=2)
        assert got[-1] == b""


def test_loop_sticky_closing_reaches_the_handler() -> None:
    a, b = UnixStream.pair()
    seen: list[bytes | None] = []

    class Drain(Handler):
        def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
            while True:
                data = a.try_read(65536)
                seen.append(data)
                if not data:
                    return

    with a, b, EventLoop(EventLoopConfig(backend="epoll")) as loop:
        loop.register(a, 1, R, EDGE)
        b.try_write(b"bye")
        b.close()
        loop.run_once(Drain(), timeout=2)
        assert seen == [b"bye", b""]


def test_the_counting_seam_is_the_funnels_call() -> None:
    """The counting seam is real: the funnel looks its system calls up at call time,
    and they are the C core's exactly when it is in use."""
    import metalio

    assert (fdio._read is os.read) == (metalio.speedups == "python")


def _subsets(bits: list[int]) -> list[int]:
    masks = [0]
    for bit in bits:
        masks += [m | bit for m in masks]
    return masks


def test_closing_bits_sit_above_the_data_bits() -> None:
    """``Facts.closing_above``: the dispatch's one comparison per event is the
    closing-bit test, for every mask every backend can produce."""
    from metalio._backends import _kqueue_mask as kq
    from metalio._backends import _pollmask as pm
    from metalio._backends import facts_of
    from metalio._backends._emulated import EmulatedBackend
    from metalio._backends.epoll import EpollBackend
    from metalio._backends.kqueue import KqueueBackend

    cases: list[tuple[Any, list[int]]] = [
        (EpollBackend, list(EpollBackend.native_masks or ())),
        (
            KqueueBackend,
            _subsets([kq.N_READ, kq.N_WRITE, kq.N_READ_EOF, kq.N_WRITE_EOF, kq.N_ERROR]),
        ),
        (
            EmulatedBackend,
            _subsets(
                [
                    pm.POLLIN,
                    pm.POLLPRI,
                    pm.POLLOUT,
                    pm.POLLERR,
                    pm.POLLHUP,
                    pm.POLLNVAL,
                    pm.POLLRDHUP,
                ]
            ),
        ),
    ]
    for backend, masks in cases:
        facts = facts_of(backend)
        assert len(masks) >= 32
        for mask in masks:
            assert (mask > facts.closing_above) == bool(mask & facts.closing_mask), (backend, mask)
