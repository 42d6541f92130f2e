"""The kqueue backend's translation logic, driven through ``tests/fake_kqueue.py``.

These tests pin what the backend asks of the kernel (the exact changelists),
how it reads the answers (receipts, EV_EOF, fflags, udata generations) and
what it promises on top (ONESHOT disarm, rollback, stale records).  The fake
sits on a real epoll, so readiness is real; the changelists are what a BSD
kernel would receive.  Nothing here has run against a real kqueue.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fake_kqueue as fk
from conftest import WakeFds
from metalio import Events, Interest, Poll, PollOpt, Ready, Waker
from metalio._backends import _kqueue_changes as kqchanges
from metalio._backends import _kqueue_mask as kqmask
from metalio._backends import kqueue as kqmod
from metalio._backends.kqueue import KqueueBackend

R_FILT = fk.KQ_FILTER_READ
W_FILT = fk.KQ_FILTER_WRITE
ADD = fk.KQ_EV_ADD
DELETE = fk.KQ_EV_DELETE
ENABLE = fk.KQ_EV_ENABLE
DISABLE = fk.KQ_EV_DISABLE
CLEAR = fk.KQ_EV_CLEAR
EOF = fk.KQ_EV_EOF
ERROR = fk.KQ_EV_ERROR
RECEIPT = fk.EV_RECEIPT
DISPATCH = fk.EV_DISPATCH

N_READ = kqmask.N_READ
N_WRITE = kqmask.N_WRITE
N_READ_EOF = kqmask.N_READ_EOF
N_WRITE_EOF = kqmask.N_WRITE_EOF
N_ERROR = kqmask.N_ERROR

LEVEL, EDGE, ONESHOT = int(PollOpt.LEVEL), int(PollOpt.EDGE), int(PollOpt.ONESHOT)
LEVEL_ONESHOT = LEVEL | ONESHOT
EDGE_ONESHOT = EDGE | ONESHOT
R, W, P = int(Interest.READABLE), int(Interest.WRITABLE), int(Interest.PRIORITY)

TRIGGER = {LEVEL: 0, EDGE: CLEAR, LEVEL_ONESHOT: DISPATCH, EDGE_ONESHOT: CLEAR | DISPATCH}


@pytest.fixture
def kb() -> Iterator[KqueueBackend]:
    backend = KqueueBackend(select_module=fk)
    yield backend
    backend.close()


@pytest.fixture
def kq(kb: KqueueBackend) -> Any:
    """The fake kqueue object inside *kb*, with its history cleared."""
    fake = kb._kq
    assert isinstance(fake, fk.kqueue)
    fake.changelists.clear()
    fake.calls.clear()
    return fake


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def kev(fd: int, flt: int, flags: int, udata: int = 0) -> Any:
    return fk.kevent(fd, flt, flags, 0, 0, udata)


def udata_of(kb: KqueueBackend, fd: int) -> int:
    return kb._table[fd].udata


def poll_until(kb: KqueueBackend, fd: int, limit: float = 2.0) -> int:
    """Poll the backend until *fd* shows up; return its merged native mask."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for got_fd, mask in kb.poll(0.05, 16):
            if got_fd == fd:
                return mask
    raise AssertionError(f"fd {fd} not reported within {limit} s")


def collect(p: Poll, timeout: float) -> dict[int, Ready]:
    events = Events(64)
    p.poll(events, timeout)
    merged: dict[int, Ready] = {}
    for e in events:
        merged[e.token] = merged.get(e.token, Ready(0)) | e.readiness
    return merged


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- the module and the fake ---------------------------------------------------------


def test_fake_has_the_bsd_values_and_no_receipt_or_dispatch_export() -> None:
    assert (R_FILT, W_FILT) == (-1, -2)
    assert (ADD, DELETE, ENABLE, DISABLE) == (0x1, 0x2, 0x4, 0x8)
    assert (fk.KQ_EV_ONESHOT, CLEAR, EOF, ERROR) == (0x10, 0x20, 0x8000, 0x4000)
    # Like CPython: the backend must fall back to its own constants.
    assert not hasattr(fk, "KQ_EV_RECEIPT") and not hasattr(fk, "KQ_EV_DISPATCH")
    assert (kqchanges._EV_RECEIPT, kqchanges._EV_DISPATCH) == (RECEIPT, DISPATCH) == (0x40, 0x80)


def test_fake_models_freebsd_change_semantics(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    fd = a.fileno()
    q = fk.kqueue()
    try:
        # EV_DELETE or a touch of a missing knote: ENOENT, as a result or raised.
        missing = fk.kevent(fd, R_FILT, ERROR, 0, errno.ENOENT, 0)
        assert q.control([kev(fd, R_FILT, DELETE)], 1, 0) == [missing]
        with pytest.raises(FileNotFoundError):
            q.control([kev(fd, R_FILT, 0)], 0, 0)
        # EV_ADD of a bad descriptor: EBADF.
        bad = os.open(os.devnull, os.O_RDONLY)
        os.close(bad)
        with pytest.raises(OSError) as info:
            q.control([kev(bad, R_FILT, ADD)], 0, 0)
        assert info.value.errno == errno.EBADF
        # A modify keeps the trigger flags of the first EV_ADD, takes the udata.
        q.control([kev(fd, R_FILT, ADD, 7)], 0, 0)
        q.control([kev(fd, R_FILT, ADD | CLEAR, 9)], 0, 0)
        assert q.knote(fd, R_FILT) == {"flags": 0, "udata": 9, "disabled": False}
        # A change whose receipt finds no room is applied, and the rest of the
        # changelist is silently dropped (FreeBSD's kern_kevent_fp).
        changes = [
            kev(fd, W_FILT, ADD | RECEIPT),
            kev(fd, R_FILT, DELETE | RECEIPT),
            kev(fd, R_FILT, ADD | RECEIPT, 11),
        ]
        out = q.control(changes, 1, 0)
        assert out == [fk.kevent(fd, W_FILT, ERROR, 0, 0, 0)]
        assert q.knote(fd, W_FILT) is not None and q.knote(fd, R_FILT) is None
    finally:
        q.close()


def test_without_a_kqueue_module_is_enosys() -> None:
    with pytest.raises(OSError) as info:
        KqueueBackend(select_module=object())
    assert info.value.errno == errno.ENOSYS
    if not hasattr(select, "kqueue"):
        with pytest.raises(OSError):
            KqueueBackend()


# -- exact changelists -----------------------------------------------------------------


@pytest.mark.parametrize("opts", [LEVEL, EDGE, LEVEL_ONESHOT, EDGE_ONESHOT])
@pytest.mark.parametrize("interest", [R, W, R | W, R | P, W | P, R | W | P])
def test_register_changelist(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket], interest: int, opts: int
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, interest, opts)
    udata = udata_of(kb, fd)
    assert udata != 0 and udata & 1 == (1 if opts & ONESHOT else 0)
    flags = ADD | RECEIPT | TRIGGER[opts]
    filters = [f for bit, f in ((R, R_FILT), (W, W_FILT)) if interest & bit]
    assert kq.changelists == [[kev(fd, f, flags, udata) for f in filters]]
    # One call; room for every receipt; never waits.
    assert kq.calls == [(len(filters), len(filters), 0)]


def test_priority_alone_registers_no_knote(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, P, LEVEL)
    assert kq.calls == []
    with pytest.raises(FileExistsError):
        kb.register(fd, P, LEVEL)
    kb.reregister(fd, R | P, LEVEL)
    assert kq.changelists == [[kev(fd, R_FILT, ADD | RECEIPT, udata_of(kb, fd))]]
    kb.reregister(fd, P, EDGE)
    assert kq.changelists[-1] == [kev(fd, R_FILT, DELETE | RECEIPT)]
    kb.deregister(fd)
    with pytest.raises(FileNotFoundError):
        kb.deregister(fd)


@pytest.mark.parametrize("opts", [LEVEL, EDGE, EDGE_ONESHOT])
def test_reregister_same_options_modifies_in_place_after_a_probe(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket], opts: int
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, R | W, opts)
    old = udata_of(kb, fd)
    kb.reregister(fd, R | W, opts)
    new = udata_of(kb, fd)
    assert new != old and new & 1 == old & 1
    flags = ADD | ENABLE | RECEIPT | TRIGGER[opts]
    assert kq.changelists[-1] == [
        kev(fd, R_FILT, RECEIPT, old),  # probe: ENOENT if close(2) removed the knotes
        kev(fd, R_FILT, flags, new),
        kev(fd, W_FILT, flags, new),
    ]
    assert kq.knote(fd, W_FILT)["udata"] == new


def test_reregister_deletes_the_dropped_filter(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, R | W, LEVEL)
    kb.reregister(fd, R, LEVEL)
    new = udata_of(kb, fd)
    assert kq.changelists[-1] == [
        kev(fd, W_FILT, DELETE | RECEIPT),
        kev(fd, R_FILT, ADD | ENABLE | RECEIPT, new),
    ]
    assert kq.knote(fd, W_FILT) is None and kq.knote(fd, R_FILT) is not None


def test_reregister_switching_direction_deletes_then_adds(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, R, LEVEL)
    kb.reregister(fd, W, EDGE)
    assert kq.changelists[-1] == [
        kev(fd, R_FILT, DELETE | RECEIPT),
        kev(fd, W_FILT, ADD | RECEIPT | CLEAR, udata_of(kb, fd)),
    ]
    assert kq.knote(fd, R_FILT) is None


def test_reregister_with_new_options_replaces_the_knote(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    # EV_ADD on an existing knote would keep its old trigger flags.
    fd = pair[0].fileno()
    kb.register(fd, R | W, LEVEL)
    kb.reregister(fd, R | W, EDGE_ONESHOT)
    new = udata_of(kb, fd)
    add = ADD | RECEIPT | CLEAR | DISPATCH
    assert kq.changelists[-1] == [
        kev(fd, R_FILT, DELETE | RECEIPT),
        kev(fd, W_FILT, DELETE | RECEIPT),
        kev(fd, R_FILT, add, new),
        kev(fd, W_FILT, add, new),
    ]
    assert kq.knote(fd, R_FILT)["flags"] == add & ~ADD


def test_deregister_deletes_every_knote(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, R | W, EDGE)
    kb.deregister(fd)
    assert kq.changelists[-1] == [
        kev(fd, R_FILT, DELETE | RECEIPT),
        kev(fd, W_FILT, DELETE | RECEIPT),
    ]
    assert kq.knote(fd, R_FILT) is None and kq.knote(fd, W_FILT) is None
    with pytest.raises(FileNotFoundError):
        kb.deregister(fd)
    with pytest.raises(FileNotFoundError):
        kb.reregister(fd, R, LEVEL)


def test_register_twice_is_file_exists(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, R, LEVEL)
    udata = udata_of(kb, fd)
    with pytest.raises(FileExistsError):
        kb.register(fd, W, EDGE)
    # The kernel was asked (a probe), and nothing changed.
    assert kq.changelists[-1] == [kev(fd, R_FILT, RECEIPT, udata)]
    assert kq.knote(fd, W_FILT) is None and udata_of(kb, fd) == udata


# -- results: merge and translation ------------------------------------------------------


@pytest.mark.parametrize(
    ("kevents", "expected"),
    [
        ([(R_FILT, 0, 0)], N_READ),
        ([(W_FILT, 0, 0)], N_WRITE),
        ([(R_FILT, 0, 0), (W_FILT, 0, 0)], N_READ | N_WRITE),
        ([(R_FILT, EOF, 0)], N_READ | N_READ_EOF),
        ([(R_FILT, EOF, errno.ECONNRESET)], N_READ | N_READ_EOF | N_ERROR),
        ([(W_FILT, EOF, 0)], N_WRITE | N_WRITE_EOF),
        ([(W_FILT, EOF, errno.ECONNREFUSED)], N_WRITE | N_WRITE_EOF | N_ERROR),
        ([(R_FILT, ERROR, 0)], N_READ | N_ERROR),
        # fflags mean an error only together with EV_EOF
        ([(R_FILT, 0, errno.EIO)], N_READ),
        ([(R_FILT, EOF, 0), (W_FILT, EOF, errno.EPIPE)], 0x1F),
    ],
)
def test_kevents_translate_and_merge_into_one_pair(
    kb: KqueueBackend, kevents: list[tuple[int, int, int]], expected: int
) -> None:
    batch = [fk.kevent(5, flt, flags, fflags, 0, 2) for flt, flags, fflags in kevents]
    assert kb._merge(batch) == {5: expected}


def test_internal_and_unknown_kevents_are_dropped(kb: KqueueBackend) -> None:
    batch = [
        fk.kevent(5, R_FILT, 0, 0, 0, 0),  # udata 0: the backend's own wake-up
        fk.kevent(6, fk.KQ_FILTER_TIMER, 0, 0, 0, 2),
        fk.kevent(7, W_FILT, 0, 0, 0, 4),
    ]
    assert kb._merge(batch) == {7: N_WRITE}


@pytest.mark.parametrize(
    ("mask", "interest", "expected"),
    [
        (N_READ, R, Ready.READABLE),
        (N_WRITE, R | W, Ready.WRITABLE),
        (N_READ | N_WRITE, R | W, Ready.READABLE | Ready.WRITABLE),
        (N_READ | N_READ_EOF, R, Ready.READABLE | Ready.READ_CLOSED),
        (N_WRITE | N_WRITE_EOF, W, Ready.WRITABLE | Ready.WRITE_CLOSED),
        (
            N_WRITE | N_WRITE_EOF | N_ERROR,
            W,
            Ready.WRITABLE | Ready.WRITE_CLOSED | Ready.ERROR,
        ),
        (
            N_READ | N_READ_EOF | N_ERROR,
            R | W,
            Ready.READABLE | Ready.WRITABLE | Ready.READ_CLOSED | Ready.ERROR,
        ),
        # Readiness never leaves the interest; closed/error always show.
        (N_READ, W, Ready(0)),
        (N_READ | N_READ_EOF, W, Ready.READ_CLOSED),
        (N_WRITE | N_WRITE_EOF, R, Ready.WRITE_CLOSED),
        (N_READ, R | P, Ready.READABLE),
    ],
)
def test_readiness(kb: KqueueBackend, mask: int, interest: int, expected: Ready) -> None:
    assert Ready(kb.readiness(mask, interest)) == expected


def frozen_readiness(native_mask: int, interest: int) -> int:
    """``KqueueBackend.readiness`` as of commit 8d67937, verbatim but for the name."""
    ready = 0
    if native_mask & N_READ and interest & 1:
        ready |= 1
    if native_mask & N_WRITE and interest & 2:
        ready |= 2
    if native_mask & N_ERROR:
        ready |= 8
    if native_mask & N_READ_EOF:
        ready |= 16
    if native_mask & N_WRITE_EOF:
        ready |= 32
    if ready & (8 | 16) and interest & 1:
        ready |= 1
    if ready & (8 | 32) and interest & 2:
        ready |= 2
    return ready


def test_translation_is_unchanged(kb: KqueueBackend) -> None:
    # Every mask the merge can build: any subset of the five native bits.
    assert N_READ | N_WRITE | N_READ_EOF | N_WRITE_EOF | N_ERROR == 31
    differ = [
        (mask, interest)
        for mask in range(32)
        for interest in range(8)
        if kb.readiness(mask, interest) != frozen_readiness(mask, interest)
    ]
    assert differ == []
    assert type(kb.readiness(N_READ, R)) is int


def test_read_and_write_of_one_fd_come_back_as_one_pair(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    kb.register(a.fileno(), R | W, LEVEL)
    b.send(b"x")
    time.sleep(0.01)
    raw = kq.control(None, 8, 0)  # what the kernel returns: two kevents
    assert sorted(k.filter for k in raw) == sorted([R_FILT, W_FILT])
    assert kb.poll(0, 8) == [(a.fileno(), N_READ | N_WRITE)]
    # One kevent of room: one filter now, and the level knote again later.
    assert len(kb.poll(0, 1)) == 1


def test_eof_and_socket_errors_end_to_end(kb: KqueueBackend) -> None:
    # Peer closed: read EOF.
    a, b = socket.socketpair()
    kb.register(a.fileno(), R, LEVEL)
    b.close()
    assert poll_until(kb, a.fileno()) == N_READ | N_READ_EOF
    kb.deregister(a.fileno())
    a.close()
    # Reader of a pipe closed: write EOF, no error.
    r, w = os.pipe()
    kb.register(w, W, EDGE)
    assert poll_until(kb, w) == N_WRITE
    os.close(r)
    assert poll_until(kb, w) == N_WRITE | N_WRITE_EOF
    kb.deregister(w)
    os.close(w)
    # Refused connect: write EOF with the error, which stays readable.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect_ex(("127.0.0.1", port))
        kb.register(s.fileno(), W, LEVEL)
        mask = poll_until(kb, s.fileno())
        assert mask == N_WRITE | N_WRITE_EOF | N_ERROR
        assert Ready(kb.readiness(mask, W)) == Ready.WRITABLE | Ready.WRITE_CLOSED | Ready.ERROR
        assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    finally:
        s.close()


# -- ONESHOT ----------------------------------------------------------------------------------


def test_oneshot_fires_once_stays_registered_and_rearms(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = a.fileno()
    kb.register(fd, R, LEVEL_ONESHOT)
    b.send(b"x")
    assert poll_until(kb, fd) == N_READ
    # Disarmed, not deleted: the knote is still there, disabled by EV_DISPATCH.
    assert kq.knote(fd, R_FILT)["disabled"] is True
    assert kb.poll(0.05, 8) == []
    with pytest.raises(FileExistsError):
        kb.register(fd, R, LEVEL_ONESHOT)
    kb.reregister(fd, R, LEVEL_ONESHOT)
    assert kq.knote(fd, R_FILT)["disabled"] is False
    assert poll_until(kb, fd) == N_READ  # the condition still holds
    assert kb.poll(0.05, 8) == []
    kb.deregister(fd)  # no ENOENT: the knote was kept
    assert kq.knote(fd, R_FILT) is None


def test_oneshot_with_two_filters_disables_the_other(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = a.fileno()
    kb.register(fd, R | W, LEVEL_ONESHOT)
    udata = udata_of(kb, fd)
    b.send(b"x")
    time.sleep(0.01)
    kq.changelists.clear()
    # Room for one kevent: only EVFILT_READ is delivered and dispatched ...
    assert kb.poll(0, 1) == [(fd, N_READ)]
    # ... so the backend disables EVFILT_WRITE itself, in one call.
    assert kq.changelists == [[kev(fd, W_FILT, DISABLE | RECEIPT, udata)]]
    assert kq.knote(fd, W_FILT)["disabled"] is True
    assert kb.poll(0.05, 8) == []  # still writable and readable: silent


def test_oneshot_with_both_filters_in_one_batch_needs_no_change(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = a.fileno()
    kb.register(fd, R | W, EDGE_ONESHOT)
    b.send(b"x")
    time.sleep(0.01)
    kq.changelists.clear()
    assert kb.poll(0, 8) == [(fd, N_READ | N_WRITE)]
    assert kq.changelists == []


def test_oneshot_sibling_event_is_dropped_and_disabled(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    fd = pair[0].fileno()
    kb.register(fd, R | W, LEVEL_ONESHOT)
    udata = udata_of(kb, fd)
    assert kb._merge([fk.kevent(fd, R_FILT, DISPATCH, 0, 0, udata)]) == {fd: N_READ}
    kq.changelists.clear()
    # The write filter's kevent raced in through another call of the same arming.
    assert kb._merge([fk.kevent(fd, W_FILT, DISPATCH, 0, 0, udata)]) == {}
    assert kq.changelists == [[kev(fd, W_FILT, DISABLE | RECEIPT, udata)]]


def test_oneshot_event_of_an_old_arming_does_not_disarm_the_new_one(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = a.fileno()
    kb.register(fd, R, LEVEL_ONESHOT)
    old = udata_of(kb, fd)
    kb.reregister(fd, R, LEVEL_ONESHOT)
    kq.changelists.clear()
    # Collected by another thread before the reregister, processed after it.
    assert kb._merge([fk.kevent(fd, R_FILT, DISPATCH, 0, 0, old)]) == {}
    assert kq.changelists == [] and kb._table[fd].armed
    b.send(b"x")
    assert poll_until(kb, fd) == N_READ


def test_oneshot_delivers_to_one_of_several_pollers(
    kb: KqueueBackend, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    fd = a.fileno()
    kb.register(fd, R | W, LEVEL_ONESHOT)
    hits: list[list[tuple[int, int]]] = []
    barrier = threading.Barrier(5)

    def poller() -> None:
        barrier.wait()
        got = kb.poll(0.5, 8)
        if got:
            hits.append(got)

    threads = [threading.Thread(target=poller) for _ in range(4)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(5)
    assert len(hits) == 1 and hits[0][0][0] == fd


# -- rollback -----------------------------------------------------------------------------------


@pytest.mark.parametrize("refused", [R_FILT, W_FILT])
def test_register_rolls_back_when_one_filter_is_refused(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket], refused: int
) -> None:
    fd = pair[0].fileno()
    kq.refuse_next_add(fd, refused, errno.EPIPE)
    with pytest.raises(BrokenPipeError):
        kb.register(fd, R | W, EDGE)
    accepted = W_FILT if refused == R_FILT else R_FILT
    assert kq.changelists[-1] == [kev(fd, accepted, DELETE | RECEIPT)]
    assert kq.knote(fd, R_FILT) is None and kq.knote(fd, W_FILT) is None
    assert fd not in kb._table
    kb.register(fd, R | W, EDGE)  # nothing half-registered stands in the way


def test_reregister_failure_restores_the_old_registration(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = a.fileno()
    kb.register(fd, R, LEVEL)
    old = udata_of(kb, fd)
    kq.refuse_next_add(fd, W_FILT, errno.EINVAL)
    with pytest.raises(OSError) as info:
        kb.reregister(fd, R | W, EDGE)
    assert info.value.errno == errno.EINVAL
    assert kq.changelists[-1] == [
        kev(fd, R_FILT, DELETE | RECEIPT),
        kev(fd, R_FILT, ADD | RECEIPT, old),
    ]
    assert kq.knote(fd, R_FILT) == {"flags": RECEIPT, "udata": old, "disabled": False}
    assert kq.knote(fd, W_FILT) is None
    assert kb._table[fd].opts == LEVEL and kb._table[fd].udata == old
    b.send(b"x")
    for _ in range(2):  # still LEVEL
        assert poll_until(kb, fd) == N_READ


def test_reregister_failure_keeps_a_fired_oneshot_disarmed(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    fd = a.fileno()
    kb.register(fd, R, LEVEL_ONESHOT)
    b.send(b"x")
    assert poll_until(kb, fd) == N_READ
    kq.refuse_next_add(fd, W_FILT, errno.ENOMEM)
    with pytest.raises(OSError):
        kb.reregister(fd, R | W, EDGE_ONESHOT)
    assert kq.knote(fd, R_FILT)["disabled"] is True
    assert kb.poll(0.05, 8) == []


# -- stale records --------------------------------------------------------------------------------


def reuse_number(fd: int) -> tuple[socket.socket, socket.socket]:
    """A new socketpair whose first end has descriptor number *fd* (now free)."""
    c, d = socket.socketpair()
    if c.fileno() == fd:
        return c, d
    if d.fileno() == fd:
        return d, c
    os.dup2(c.fileno(), fd)
    c.close()
    return socket.socket(fileno=fd), d


def test_closed_and_reused_fd_registers_at_once(kb: KqueueBackend, kq: Any) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    kb.register(fd, R, LEVEL)
    a.close()
    b.close()
    c, d = reuse_number(fd)
    try:
        kb.register(fd, R, EDGE)  # the identity changed: no FileExistsError, no probe
        assert kq.changelists[-1] == [kev(fd, R_FILT, ADD | RECEIPT | CLEAR, udata_of(kb, fd))]
        d.send(b"x")
        assert poll_until(kb, fd) == N_READ
    finally:
        c.close()
        d.close()


def test_same_identity_decided_by_the_kernel(
    kb: KqueueBackend, kq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FreeBSD gives every socket st_dev = st_ino = 0: only the probe can tell.
    monkeypatch.setattr(kqmod, "identity", lambda fd: (0, 0))
    a, b = socket.socketpair()
    fd = a.fileno()
    kb.register(fd, R, LEVEL)
    old = udata_of(kb, fd)
    with pytest.raises(FileExistsError):
        kb.register(fd, R, LEVEL)
    a.close()  # removes the knotes
    b.close()
    c, d = reuse_number(fd)
    try:
        kb.register(fd, R, LEVEL)
        assert kq.changelists[-2] == [kev(fd, R_FILT, RECEIPT, old)]  # the probe: ENOENT
        d.send(b"x")
        assert poll_until(kb, fd) == N_READ
    finally:
        c.close()
        d.close()


def test_reregister_and_deregister_of_a_stale_record(
    kb: KqueueBackend, kq: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    kb.register(fd, R, LEVEL)
    a.close()
    b.close()
    c, d = reuse_number(fd)
    try:
        # Identity changed: dropped at once.
        with pytest.raises(FileNotFoundError):
            kb.reregister(fd, R, LEVEL)
        assert fd not in kb._table
        # Same identity (FreeBSD sockets): the kernel's ENOENT decides, and the
        # knote the reregister added to the new file is taken back.
        monkeypatch.setattr(kqmod, "identity", lambda fd: (0, 0))
        kb.register(fd, R, LEVEL)
        os.dup2(d.fileno(), fd)  # close(2) + reuse under the same number
        with pytest.raises(FileNotFoundError):
            kb.reregister(fd, R | W, LEVEL)
        assert fd not in kb._table
        assert kq.knote(fd, R_FILT) is None and kq.knote(fd, W_FILT) is None
        kb.register(fd, R, LEVEL)
        e, f = socket.socketpair()
        os.dup2(e.fileno(), fd)  # another file under the same number
        e.close()
        f.close()
        with pytest.raises(FileNotFoundError):
            kb.deregister(fd)
        assert kq.changelists[-1] == [kev(fd, R_FILT, DELETE | RECEIPT)]  # answered ENOENT
        assert fd not in kb._table
    finally:
        c.close()
        d.close()


def test_deregister_of_a_closed_fd_is_ebadf_and_forgets(kb: KqueueBackend) -> None:
    a, b = socket.socketpair()
    fd = a.fileno()
    kb.register(fd, R, LEVEL)
    a.close()
    b.close()
    with pytest.raises(OSError) as info:
        kb.deregister(fd)
    assert info.value.errno == errno.EBADF
    assert fd not in kb._table


def test_forget_never_fails(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    kb.forget(12345)  # unknown
    a, _ = pair
    fd = a.fileno()
    kb.register(fd, R | W, LEVEL)
    kb.forget(fd)  # open: its knotes go too
    assert kq.knote(fd, R_FILT) is None and kq.knote(fd, W_FILT) is None
    x, y = socket.socketpair()
    kb.register(x.fileno(), R, LEVEL)
    xfd = x.fileno()
    x.close()
    y.close()
    kb.forget(xfd)  # closed
    assert xfd not in kb._table


# -- kernels that ignore EV_RECEIPT -------------------------------------------------------------


def test_events_returned_instead_of_receipts_are_kept_for_poll(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    kb.register(a.fileno(), R, EDGE)
    b.send(b"x")
    time.sleep(0.01)
    kq.receipts_supported = False
    x, y = socket.socketpair()
    try:
        kb.register(x.fileno(), R, LEVEL)  # the kernel scans and hands back a's edge
        assert kq.knote(x.fileno(), R_FILT) is not None
        calls = len(kq.calls)
        assert kb.poll(0, 8) == [(a.fileno(), N_READ)]
        assert len(kq.calls) == calls  # served from the kept events
    finally:
        x.close()
        y.close()


# -- interrupt, close, fileno -------------------------------------------------------------------


def test_interrupt_wakes_a_blocked_poller_and_close_releases() -> None:
    before = open_fds()
    kb = KqueueBackend(select_module=fk)
    result: list[object] = []

    def poller() -> None:
        try:
            result.append(kb.poll(None, 8))
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=poller)
    t.start()
    time.sleep(0.1)
    assert t.is_alive()
    kb.interrupt()
    t.join(5)
    assert not t.is_alive(), "interrupt() must wake a thread blocked in kevent()"
    assert result == [[]]  # the wake-up knote (udata 0) is never reported
    kb.interrupt()  # idempotent
    kb.close()
    kb.close()
    assert kb._kq.closed
    with pytest.raises(ValueError):
        kb.fileno()
    assert open_fds() == before


def test_fileno_is_the_kqueue_and_nests(
    kb: KqueueBackend, kq: Any, pair: tuple[socket.socket, socket.socket]
) -> None:
    assert kb.fileno() == kq.fileno()
    a, b = pair
    kb.register(a.fileno(), R, LEVEL)
    outer = select.epoll()
    try:
        outer.register(kb.fileno(), select.EPOLLIN)
        assert outer.poll(0) == []
        b.send(b"x")
        assert outer.poll(1) == [(kb.fileno(), select.EPOLLIN)]
    finally:
        outer.close()


# -- end to end through Poll ----------------------------------------------------------------------


def test_smoke_socketpair_through_poll() -> None:
    with Poll.over_backend(KqueueBackend(select_module=fk)) as p:
        assert p.backend == "kqueue"
        a, b = socket.socketpair()
        try:
            p.registry.register(a, 7, Interest.READABLE | Interest.WRITABLE)
            assert collect(p, 1) == {7: Ready.WRITABLE}
            b.send(b"hello")
            time.sleep(0.01)
            assert collect(p, 1) == {7: Ready.READABLE | Ready.WRITABLE}
            p.registry.reregister(a, 8, Interest.READABLE, PollOpt.EDGE)
            assert collect(p, 1) == {8: Ready.READABLE}
            assert collect(p, 0.05) == {}  # undrained EDGE: silent
            b.close()
            got = collect(p, 1)[8]
            assert got.readable and got.read_closed
            with Waker(p.registry, 9) as waker:
                waker.wake()
                assert collect(p, 1).get(9) == Ready.READABLE
            p.registry.deregister(a)
            assert collect(p, 0.05) == {}
        finally:
            a.close()
            b.close()


def test_waker_socketpair_path_as_on_bsd(monkeypatch: pytest.MonkeyPatch, wakefds: WakeFds) -> None:
    # No eventfd outside Linux: the Waker registers a socketpair EDGE instead.
    wakefds.no_eventfd(monkeypatch)
    with Poll.over_backend(KqueueBackend(select_module=fk)) as p, Waker(p.registry, 3) as waker:
        assert not wakefds[0].is_eventfd
        got: list[dict[int, Ready]] = []
        t = threading.Thread(target=lambda: got.append(collect(p, 5)))
        t.start()
        time.sleep(0.05)
        waker.wake()  # unblocks the poller
        t.join(5)
        assert got == [{3: Ready.READABLE}]
        assert collect(p, 0.05) == {}
        waker.wake()
        waker.wake()  # wakes before one poll coalesce: each byte was an edge,
        assert collect(p, 1) == {3: Ready.READABLE}  # but they are one event
        assert collect(p, 0.05) == {}
