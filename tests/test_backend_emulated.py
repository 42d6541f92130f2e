"""What the poll and select backends emulate in user space, tested directly.

The generic contract lives in ``test_poll_contract.py``; this file pins the
emulation itself: how EDGE re-arms (the ``rearm`` hook, the not-ready probe,
``reregister``) and the documented difference for raw descriptors, how
ONESHOT disarms, the surplus queue, stale descriptors, the internal wake-up
pair and the one-poller rule.  Most tests call the backend objects directly
(plain ints in, ``(fd, native_mask)`` pairs out); some go through ``Poll``.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import drain, open_fds
from metalio import Events, Interest, Poll, PollOpt, Ready
from metalio._backends import available_backends, open_backend
from metalio._backends._emulated import EmulatedBackend
from metalio._backends._pollmask import (
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLNVAL,
    POLLOUT,
    POLLPRI,
    POLLRDHUP,
    readiness,
)

NAMES = [n for n in ("poll", "select") if n in available_backends()]

R, W = 1, 2
LEVEL, EDGE, ONESHOT, EDGE_ONESHOT = 1, 2, 1 | 4, 2 | 4


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def be(name: str) -> Iterator[EmulatedBackend]:
    backend = open_backend(name)
    assert isinstance(backend, EmulatedBackend)
    yield backend
    backend.close()


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made: list[tuple[socket.socket, socket.socket]] = []
    yield made
    for a, b in made:
        a.close()
        b.close()


def new_pair(
    pairs: list[tuple[socket.socket, socket.socket]],
) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    pairs.append((a, b))
    return a, b


def fds(events: list[tuple[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for fd, mask in events:
        merged[fd] = merged.get(fd, 0) | mask
    return merged


def in_thread(fn, *args):  # type: ignore[no-untyped-def]
    """Run *fn* in a thread; return (thread, result box)."""
    box: dict[str, object] = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc
        box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def settle(be: EmulatedBackend) -> None:
    """Wait until the thread polling *be* is blocked in the kernel call."""
    deadline = time.monotonic() + 5
    while not be._wakeup.in_wait:
        assert time.monotonic() < deadline, "the poller never started waiting"
        time.sleep(0.005)
    time.sleep(0.05)


# -- the interface -----------------------------------------------------------------


def test_attributes_and_fileno(be: EmulatedBackend, name: str) -> None:
    assert be.name == name
    assert be.emulates_edge is True
    assert be.concurrent_poll is False
    with pytest.raises(io.UnsupportedOperation):
        be.fileno()


def test_readiness_translation() -> None:
    assert readiness(POLLIN, R) == Ready.READABLE
    assert readiness(POLLOUT, W) == Ready.WRITABLE
    assert readiness(POLLPRI, 4) == Ready.PRIORITY
    # hang-up: both sides closed, folded into the interests that were asked for
    assert readiness(POLLHUP, R) == Ready.READ_CLOSED | Ready.WRITE_CLOSED | Ready.READABLE
    assert readiness(POLLHUP, W) == Ready.READ_CLOSED | Ready.WRITE_CLOSED | Ready.WRITABLE
    assert readiness(POLLERR, R | W) == Ready.ERROR | Ready.READABLE | Ready.WRITABLE
    assert readiness(POLLERR, 4) == Ready.ERROR
    assert readiness(POLLIN | POLLRDHUP, R) == Ready.READABLE | Ready.READ_CLOSED


def frozen_readiness(native_mask: int, interest: int) -> int:
    """``_emulated.readiness`` as of commit 8d67937, verbatim but for the name."""
    ready = 0
    if native_mask & POLLIN:
        ready |= 1
    if native_mask & POLLOUT:
        ready |= 2
    if native_mask & POLLPRI:
        ready |= 4
    if native_mask & POLLERR:
        ready |= 8
    if native_mask & POLLHUP:
        ready |= 16 | 32
    if native_mask & POLLRDHUP:
        ready |= 16
    if ready & (8 | 16) and interest & 1:
        ready |= 1
    if ready & (8 | 32) and interest & 2:
        ready |= 2
    return ready


def test_translation_is_unchanged(be: EmulatedBackend) -> None:
    # Every combination of the seven bits a kernel set can report.
    bits = (POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL, POLLRDHUP)
    masks = [sum(b for k, b in enumerate(bits) if m >> k & 1) for m in range(1 << len(bits))]
    assert len(set(masks)) == 128
    differ = [
        (mask, interest)
        for mask in masks
        for interest in range(8)
        if be.readiness(mask, interest) != frozen_readiness(mask, interest)
    ]
    assert differ == []
    assert type(be.readiness(POLLIN | POLLHUP, R)) is int


# -- EDGE ----------------------------------------------------------------------------


def test_edge_rearmed_by_hook_sees_data_that_arrives_before_the_next_poll(
    be: EmulatedBackend, pairs
) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R, EDGE)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {fd: POLLIN}
    drain(a)
    be.rearm(fd, 1)  # what a metalio try_read does at the would-block
    b.send(b"y")  # arrives before the next poll: still new readiness
    assert fds(be.poll(1, 8)) == {fd: POLLIN}


def test_edge_rearmed_by_the_not_ready_probe(be: EmulatedBackend, pairs) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R, EDGE)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {fd: POLLIN}
    drain(a)
    assert be.poll(0, 8) == []  # the probe finds it drained and re-arms it
    b.send(b"y")
    assert fds(be.poll(1, 8)) == {fd: POLLIN}


def test_edge_raw_fd_refilled_before_the_next_poll_is_the_documented_difference(
    be: EmulatedBackend, pairs
) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R, EDGE)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {fd: POLLIN}
    drain(a)
    b.send(b"y")  # no rearm: the probe sees "still ready"
    assert be.poll(0.05, 8) == []
    drain(a)
    assert be.poll(0, 8) == []  # drained again: re-armed by the probe
    b.send(b"z")
    assert fds(be.poll(1, 8)) == {fd: POLLIN}
    # reregister re-arms too
    be.reregister(fd, R, EDGE)
    assert fds(be.poll(0, 8)) == {fd: POLLIN}


def test_edge_undrained_is_silent_and_does_not_spin(be: EmulatedBackend, pairs) -> None:
    a, b = new_pair(pairs)
    c, _ = new_pair(pairs)
    be.register(a.fileno(), R, EDGE)
    be.register(c.fileno(), W, EDGE)  # writable for ever
    b.send(b"x" * 100)
    assert fds(be.poll(0, 8)) == {a.fileno(): POLLIN, c.fileno(): POLLOUT}
    wall0, cpu0 = time.monotonic(), time.process_time()
    for _ in range(20):
        assert be.poll(0.05, 8) == []
    wall = time.monotonic() - wall0
    assert wall >= 0.9
    assert time.process_time() - cpu0 < wall / 4


def test_edge_rearm_directions_are_independent(be: EmulatedBackend, pairs) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R | W, EDGE)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {fd: POLLIN | POLLOUT}
    be.rearm(fd, 2)  # write side re-armed, still writable: reported again
    assert fds(be.poll(0, 8)) == {fd: POLLOUT}
    assert be.poll(0, 8) == []  # read side never drained: silent
    drain(a)
    be.rearm(fd, 1)
    b.send(b"y")
    assert fds(be.poll(0.5, 8)) == {fd: POLLIN}


def test_edge_hangup_is_reported_once(be: EmulatedBackend, pairs, name: str) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R | W, EDGE)
    assert fds(be.poll(0, 8)) == {fd: POLLOUT}
    b.close()
    ready = readiness(fds(be.poll(1, 8))[fd], R | W)
    assert ready & Ready.READABLE  # the read sees EOF at once
    if name == "poll":
        assert ready & Ready.READ_CLOSED
    wall0, cpu0 = time.monotonic(), time.process_time()
    for _ in range(5):
        assert be.poll(0.05, 8) == []
    assert time.process_time() - cpu0 < (time.monotonic() - wall0) / 2


@pytest.mark.skipif("poll" not in NAMES, reason="poll(2) not available")
def test_edge_probe_reports_hangup_of_a_fully_disarmed_source() -> None:
    # A pipe writer registered EDGE WRITABLE is disarmed after its first
    # event and stays writable; the reader going away must still be news.
    be = open_backend("poll")
    r, w = os.pipe()
    try:
        be.register(w, W, EDGE)
        assert fds(be.poll(0, 8)) == {w: POLLOUT}
        assert be.poll(0, 8) == []
        os.close(r)
        r = -1
        got = fds(be.poll(1, 8))
        assert got[w] & POLLERR
        assert readiness(got[w], W) & Ready.ERROR
        assert be.poll(0.05, 8) == []  # once
    finally:
        be.close()
        os.close(w)
        if r >= 0:
            os.close(r)


def test_edge_priority_direction(be: EmulatedBackend) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(lst.getsockname())
    srv, _ = lst.accept()
    try:
        fd = srv.fileno()
        be.register(fd, R | 4, EDGE)
        cli.send(b"!", socket.MSG_OOB)
        deadline = time.monotonic() + 2
        got = 0
        while not got & POLLPRI and time.monotonic() < deadline:
            got |= fds(be.poll(0.1, 8)).get(fd, 0)
        assert got & POLLPRI
        assert be.poll(0.05, 8) == []  # urgent byte unread: silent
        assert srv.recv(1, socket.MSG_OOB) == b"!"
        assert be.poll(0, 8) == []  # the probe sees it consumed and re-arms
        cli.send(b"?", socket.MSG_OOB)
        got = 0
        deadline = time.monotonic() + 2
        while not got & POLLPRI and time.monotonic() < deadline:
            got |= fds(be.poll(0.1, 8)).get(fd, 0)
        assert got & POLLPRI
    finally:
        for s in (cli, srv, lst):
            s.close()


def test_edge_through_poll_with_a_metalio_source_is_exact(name: str) -> None:
    from metalio.net import UnixStream

    left, right = UnixStream.pair()
    with Poll(backend=name) as p, left, right:
        p.registry.register(left, 7, Interest.READABLE, PollOpt.EDGE)
        events = Events(8)
        right.try_write(b"hello")
        assert p.poll(events, 1) == 1
        assert left.try_read() == b"hello"
        assert left.try_read() is None  # the hook re-arms right here
        right.try_write(b"again")  # before the next poll: reported anyway
        assert p.poll(events, 1) == 1
        assert [e.token for e in events] == [7]
        # after deregister the hook is gone and try_read still works
        p.registry.deregister(left)
        assert left.try_read() == b"again"
        assert left.try_read() is None


# -- ONESHOT -----------------------------------------------------------------------------


@pytest.mark.parametrize("opts", [ONESHOT, EDGE_ONESHOT])
def test_oneshot_disarms_until_reregister(be: EmulatedBackend, pairs, opts: int) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R, opts)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {fd: POLLIN}
    b.send(b"more")
    be.rearm(fd, 1)  # a try_* would-block does not re-arm a oneshot
    assert be.poll(0.05, 8) == []
    b.close()  # poll(2) reports POLLHUP even for events=0: must be out of the set
    assert be.poll(0.05, 8) == []
    with pytest.raises(FileExistsError):
        be.register(fd, R, opts)
    for _ in range(3):
        be.reregister(fd, R, opts)
        assert fd in fds(be.poll(0, 8))
        assert be.poll(0, 8) == []
    be.deregister(fd)
    with pytest.raises(FileNotFoundError):
        be.deregister(fd)


def test_rearm_is_ignored_for_level_and_unknown_fds(be: EmulatedBackend, pairs) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R, LEVEL)
    be.rearm(fd, 1)
    be.rearm(fd + 1000, 1)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {fd: POLLIN}
    assert fds(be.poll(0, 8)) == {fd: POLLIN}


# -- capacity ------------------------------------------------------------------------------


def test_surplus_is_delivered_next_call_and_edge_oneshot_are_not_lost(
    be: EmulatedBackend, pairs
) -> None:
    opts = [LEVEL, EDGE, ONESHOT, EDGE_ONESHOT, EDGE, ONESHOT]
    socks = []
    for o in opts:
        a, b = new_pair(pairs)
        be.register(a.fileno(), R, o)
        b.send(b"x")
        socks.append(a)
    seen: list[int] = []
    for _ in range(3):
        got = be.poll(0, 2)
        assert len(got) == 2
        seen += [fd for fd, _ in got]
    assert sorted(seen) == sorted(s.fileno() for s in socks)
    # the queued EDGE/ONESHOT events were their one event: only LEVEL comes back
    assert fds(be.poll(0, 8)) == {socks[0].fileno(): POLLIN}


def test_surplus_drops_deregistered_and_reregistered(be: EmulatedBackend, pairs) -> None:
    socks = []
    for _ in range(4):
        a, b = new_pair(pairs)
        be.register(a.fileno(), R, ONESHOT)
        b.send(b"x")
        socks.append(a)
    first = [fd for fd, _ in be.poll(0, 1)]
    rest = [s.fileno() for s in socks if s.fileno() not in first]
    be.deregister(rest[0])
    be.reregister(rest[1], W, ONESHOT)  # replaced: the queued readable event is void
    got = fds(be.poll(0, 8))
    assert rest[0] not in got
    assert got.get(rest[2]) == POLLIN
    assert got.get(rest[1], 0) & POLLIN == 0
    got = fds(be.poll(0, 8))
    assert got == {rest[1]: POLLOUT}


def test_no_starvation_at_the_end_of_the_set(be: EmulatedBackend, pairs) -> None:
    socks = []
    for _ in range(10):
        a, b = new_pair(pairs)
        be.register(a.fileno(), R, LEVEL)
        b.send(b"x")
        socks.append(a.fileno())
    seen: set[int] = set()
    for _ in range(4):
        seen.update(fd for fd, _ in be.poll(0, 3))
    assert seen == set(socks)


# -- stale descriptors -----------------------------------------------------------------


def test_closed_fd_is_dropped_silently_and_others_still_reported(
    be: EmulatedBackend, pairs
) -> None:
    a, b = socket.socketpair()
    c, d = new_pair(pairs)
    stale = a.fileno()
    be.register(stale, R | W, LEVEL)
    be.register(c.fileno(), R, LEVEL)
    d.send(b"x")
    a.close()
    b.close()
    assert fds(be.poll(0, 8)) == {c.fileno(): POLLIN}
    wall0, cpu0 = time.monotonic(), time.process_time()
    drain(c)
    for _ in range(5):
        assert be.poll(0.05, 8) == []
    assert time.process_time() - cpu0 < (time.monotonic() - wall0) / 2
    # the record is kept so that deregister finds it
    with pytest.raises(FileNotFoundError):
        be.deregister(stale)
    with pytest.raises(FileNotFoundError):
        be.deregister(stale)


def test_closed_while_disarmed_is_dropped_by_the_probe(be: EmulatedBackend, pairs) -> None:
    a, b = socket.socketpair()
    c, d = new_pair(pairs)
    old = a.fileno()
    be.register(old, R, EDGE)
    be.register(c.fileno(), R, LEVEL)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {old: POLLIN}  # disarmed, left undrained
    a.close()
    b.close()
    d.send(b"y")
    for _ in range(3):  # the probe meets the closed fd (POLLNVAL / EBADF)
        assert fds(be.poll(0, 8)) == {c.fileno(): POLLIN}
    assert not be._edges.disarmed


def _reuse(old_fd: int, pairs) -> tuple[socket.socket, socket.socket]:
    c, d = new_pair(pairs)
    if old_fd not in (c.fileno(), d.fileno()):
        pytest.skip("the kernel did not reuse the fd number")
    return (c, d) if c.fileno() == old_fd else (d, c)


@pytest.mark.parametrize("poll_first", [False, True])
def test_reused_fd_registers_at_once(be: EmulatedBackend, pairs, poll_first: bool) -> None:
    a, b = socket.socketpair()
    old = a.fileno()
    be.register(old, R, EDGE)
    a.close()
    b.close()
    if poll_first:
        assert be.poll(0, 8) == []  # POLLNVAL / EBADF: marked stale
    _reuse(old, pairs)
    be.register(old, W, LEVEL)  # identity differs: the stale record is replaced
    assert fds(be.poll(0, 8)) == {old: POLLOUT}
    with pytest.raises(FileExistsError):
        be.register(old, R, LEVEL)  # but a live one is not


def test_reused_fd_not_reported_under_the_old_record(be: EmulatedBackend, pairs) -> None:
    a, b = socket.socketpair()
    old = a.fileno()
    be.register(old, R, LEVEL)
    a.close()
    b.close()
    _, peer = _reuse(old, pairs)
    peer.send(b"x")  # the new file is readable, and nobody registered it
    for _ in range(3):
        assert be.poll(0, 8) == []
    with pytest.raises(FileNotFoundError):
        be.reregister(old, R, LEVEL)  # stale: dropped
    be.register(old, R, LEVEL)
    assert fds(be.poll(0, 8)) == {old: POLLIN}


def test_closed_fd_errors(be: EmulatedBackend) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as info:
        be.register(r, R, LEVEL)
    assert info.value.errno == 9  # EBADF, from os.fstat
    with pytest.raises(FileNotFoundError):
        be.deregister(r)  # nothing was left registered
    r, w = os.pipe()
    be.register(r, R, LEVEL)
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        be.reregister(r, R, LEVEL)  # EBADF like epoll_ctl; the record is dropped
    with pytest.raises(FileNotFoundError):
        be.deregister(r)
    be.forget(r)
    be.forget(12345)


def test_deregister_of_a_closed_fd_succeeds(be: EmulatedBackend) -> None:
    r, w = os.pipe()
    be.register(r, R, LEVEL)
    os.close(r)
    os.close(w)
    be.deregister(r)  # closed behind our back: forgotten
    with pytest.raises(FileNotFoundError):
        be.deregister(r)


@pytest.mark.skipif("select" not in NAMES or sys.platform == "win32", reason="Unix select")
def test_select_refuses_fd_beyond_fd_setsize() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 1030:
        pytest.skip("RLIMIT_NOFILE too low to open fd 1030")
    be = open_backend("select")
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 1030)
    try:
        with pytest.raises(ValueError, match="FD_SETSIZE"):
            be.register(high, R, LEVEL)
        with pytest.raises(FileNotFoundError):
            be.deregister(high)
        assert be.poll(0, 8) == []
    finally:
        os.close(high)
        a.close()
        b.close()
        be.close()


@pytest.mark.skipif("select" not in NAMES or sys.platform == "win32", reason="Unix select")
def test_select_refuses_an_internal_fd_beyond_fd_setsize() -> None:
    # Fill every descriptor number below FD_SETSIZE, so the backend's own
    # wake-up descriptor gets one select() cannot watch: it must refuse to
    # start (ValueError) and leave nothing open.
    import resource

    from metalio._backends.select import FD_SETSIZE

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= FD_SETSIZE + 8:
        pytest.skip("RLIMIT_NOFILE too low to fill every fd below FD_SETSIZE")
    filler: list[int] = []
    r, w = os.pipe()
    try:
        while True:
            fd = os.dup(r)
            if fd >= FD_SETSIZE:
                os.close(fd)  # the lowest free number is now >= FD_SETSIZE
                break
            filler.append(fd)
        before = open_fds()
        with pytest.raises(ValueError, match="internal descriptor") as info:
            open_backend("select")
        # The traceback keeps the half-built backend alive: only an explicit
        # release, not a finalizer, can have closed its descriptor.
        assert info.traceback
        assert open_fds() == before
    finally:
        for fd in filler:
            os.close(fd)
        os.close(r)
        os.close(w)


# -- threads ---------------------------------------------------------------------------


def test_registration_during_a_blocking_poll_is_seen(be: EmulatedBackend, pairs) -> None:
    a, b = new_pair(pairs)
    b.send(b"x")
    t, box = in_thread(be.poll, 5.0, 8)
    settle(be)
    be.register(a.fileno(), R, LEVEL)
    t.join(5)
    assert fds(box["result"]) == {a.fileno(): POLLIN}  # type: ignore[arg-type]
    assert box["elapsed"] < 2.5  # type: ignore[operator]


def test_internal_wake_does_not_end_the_wait_early(be: EmulatedBackend, pairs) -> None:
    a, _ = new_pair(pairs)
    t, box = in_thread(be.poll, 0.6, 8)
    settle(be)
    be.register(a.fileno(), R, LEVEL)  # not ready: the poll must go on waiting
    t.join(5)
    assert box["result"] == []
    assert box["elapsed"] >= 0.55  # type: ignore[operator]


def test_rearm_from_another_thread_wakes_the_blocked_poller(be: EmulatedBackend, pairs) -> None:
    a, b = new_pair(pairs)
    fd = a.fileno()
    be.register(fd, R, EDGE)
    b.send(b"x")
    assert fds(be.poll(0, 8)) == {fd: POLLIN}
    # undrained when the poll starts: the probe leaves it disarmed
    t, box = in_thread(be.poll, 5.0, 8)
    settle(be)
    drain(a)
    be.rearm(fd, 1)  # must make the blocked poll watch fd again
    b.send(b"y")
    t.join(5)
    assert fds(box["result"]) == {fd: POLLIN}  # type: ignore[arg-type]
    assert box["elapsed"] < 2.5  # type: ignore[operator]


def test_a_second_poller_gets_runtime_error(be: EmulatedBackend) -> None:
    t, box = in_thread(be.poll, 5.0, 8)
    settle(be)
    with pytest.raises(RuntimeError, match="one"):
        be.poll(0, 8)
    be.interrupt()  # the blocked poller returns, nothing is released
    t.join(5)
    assert box["result"] == []
    assert box["elapsed"] < 2.5  # type: ignore[operator]
    assert be.poll(0, 8) == []  # usable again


def test_interrupt_before_the_wait_is_not_lost(be: EmulatedBackend) -> None:
    be.interrupt()
    t0 = time.monotonic()
    assert be.poll(5.0, 8) == []
    assert time.monotonic() - t0 < 2.5
    t0 = time.monotonic()
    assert be.poll(0.05, 8) == []  # consumed: this one waits
    assert time.monotonic() - t0 >= 0.045


def test_threads_hammering_the_registry_while_one_polls(be: EmulatedBackend, pairs) -> None:
    socks = [new_pair(pairs) for _ in range(8)]
    for _, b in socks:
        b.send(b"x")
    stop = threading.Event()
    errors: list[BaseException] = []

    def worker(mine: list[tuple[socket.socket, socket.socket]]) -> None:
        try:
            while not stop.is_set():
                for a, _ in mine:
                    fd = a.fileno()
                    be.register(fd, R | W, EDGE)
                    be.rearm(fd, 1)
                    be.reregister(fd, R, ONESHOT)
                    be.rearm(fd, 2)
                    be.deregister(fd)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(socks[i::2],)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 0.5
        registered = {a.fileno() for a, _ in socks}
        while time.monotonic() < deadline:
            for fd, _ in be.poll(0.01, 4):
                assert fd in registered
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert not errors
    assert be.poll(0, 8) == []  # everything was deregistered
    assert not be._entries and not be._edges.disarmed and not be._pending


def test_close_from_another_thread_wakes_the_poller(name: str) -> None:
    before = open_fds()
    p = Poll(backend=name)
    events = Events()
    t, box = in_thread(p.poll, events, None)
    settle(p._backend)  # type: ignore[arg-type]
    p.close()
    t.join(5)
    assert not t.is_alive()
    assert isinstance(box["error"], ValueError)
    assert open_fds() == before


def test_direct_close_during_a_poll_releases_after_it(name: str) -> None:
    before = open_fds()
    be = open_backend(name)
    assert isinstance(be, EmulatedBackend)
    assert open_fds() > before  # the internal wake-up descriptor(s)
    t, box = in_thread(be.poll, None, 8)
    settle(be)
    be.close()
    t.join(5)
    assert isinstance(box["error"], ValueError)
    assert open_fds() == before  # released on the poller's way out
    with pytest.raises(ValueError):
        be.poll(0, 8)
    with pytest.raises(ValueError):
        be.register(0, R, LEVEL)
    be.forget(0)
    be.rearm(0, 1)


def test_no_fd_leak_over_1000_create_close(name: str) -> None:
    before = open_fds()
    for _ in range(1000):
        be = open_backend(name)
        be.poll(0, 8)
        be.close()
        be.close()
    assert open_fds() == before


# -- timeouts and signals ---------------------------------------------------------------


def test_timeouts(be: EmulatedBackend) -> None:
    t0 = time.monotonic()
    assert be.poll(0, 8) == []
    assert be.poll(0.0015, 8) == []
    assert be.poll(0.05, 8) == []
    assert time.monotonic() - t0 >= 0.05


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_signals_retry_or_propagate(be: EmulatedBackend) -> None:
    class Boom(Exception):
        pass

    calls: list[int] = []

    def quiet(signum, frame) -> None:  # type: ignore[no-untyped-def]
        calls.append(signum)

    def loud(signum, frame) -> None:  # type: ignore[no-untyped-def]
        raise Boom

    old = signal.signal(signal.SIGALRM, quiet)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        assert be.poll(0.3, 8) == []  # EINTR retried with the time left
        assert calls
        assert time.monotonic() - t0 >= 0.28
        signal.signal(signal.SIGALRM, loud)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        with pytest.raises(Boom):
            be.poll(5.0, 8)
        assert time.monotonic() - t0 < 2.5
        assert be.poll(0, 8) == []  # not stuck "already polling"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
