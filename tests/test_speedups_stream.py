"""The stream source base of the C core (``StreamCore`` and its four calls) against the reference.

Every test runs on two source types built the same way: one on the C core's
``StreamCore`` with its method descriptors (skipped where the extension is
not built), one on the pure-Python slots with ``metalio._fdio.fd_try_*``.
They must agree on every answer and every error: arguments, closed and bad
descriptors, buffer types, huge sizes, the marks, the epoch stand-ins, the
re-arm hook and what it raises, and reference counts and memory.  The
readiness scenarios themselves are in ``test_readiness.py``.
"""

from __future__ import annotations

import array
import errno
import gc
import math
import os
import select
import socket
import sys
import threading
import tracemalloc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from metalio import _fdio
from metalio._readiness import NEVER, Epoch

try:
    from metalio import _speedups as c_core
except ImportError:  # not built: the C half of every test skips
    c_core = None  # type: ignore[assignment]


class PySource(_fdio._FdSlots):
    __slots__ = ("extra",)
    try_read = _fdio.fd_try_read
    try_read_into = _fdio.fd_try_read_into
    try_write = _fdio.fd_try_write
    try_writev = _fdio.fd_try_writev


if c_core is not None:

    class CSource(c_core.StreamCore):
        __slots__ = ("extra",)
        try_read = c_core.try_read
        try_read_into = c_core.try_read_into
        try_write = c_core.try_write
        try_writev = c_core.try_writev


@pytest.fixture(params=["c", "python"])
def kind(request: pytest.FixtureRequest) -> type:
    if request.param == "python":
        return PySource
    if c_core is None:
        pytest.skip("metalio._speedups is not built")
    return CSource


@pytest.fixture
def pair(kind: type) -> Iterator[tuple[Any, int]]:
    """A source on one end of a Unix socket pair, and the peer's raw descriptor."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    source = kind()
    _fdio.init_state(source, a.fileno())
    try:
        yield source, b.fileno()
    finally:
        source._epoch = None
        source._rearm = None
        a.close()
        b.close()


def tracked(source: Any) -> Epoch:
    epoch = Epoch()
    epoch.now = 5
    source._epoch = epoch
    return epoch


# -- the layout ---------------------------------------------------------------------


def test_a_new_source_is_closed_and_untracked(kind: type) -> None:
    source = kind()
    if kind is PySource:
        _fdio.init_state(source, -1)  # Python slots start empty
    assert (source._fd, source._polls, source._rearm, source._epoch) == (-1, 0, None, None)
    assert source._rmark == source._wmark == -1


def test_c_slots_convert_and_refuse_as_attributes() -> None:
    if c_core is None:
        pytest.skip("metalio._speedups is not built")
    source = CSource()
    source._rmark = 3  # an int epoch value is stored as a float
    assert source._rmark == 3.0 and isinstance(source._rmark, float)
    with pytest.raises(TypeError):
        source._fd = "3"
    with pytest.raises(TypeError):
        source._wmark = "x"
    source.extra = 1  # a subclass's own slot sits after the C layout
    assert source.extra == 1


def test_c_descriptors_refuse_other_objects() -> None:
    if c_core is None:
        pytest.skip("metalio._speedups is not built")
    for call in (c_core.try_read, c_core.try_read_into, c_core.try_write, c_core.try_writev):
        with pytest.raises(TypeError):
            call(object(), 1)
    assert c_core.try_read.__name__ == "try_read"
    assert not hasattr(c_core.StreamCore, "try_read")  # bound by name, never inherited


def test_a_deleted_epoch_is_untracked(kind: type, pair: tuple[Any, int]) -> None:
    """C only: an emptied slot reads as None there (Python raises AttributeError)."""
    if kind is PySource:
        pytest.skip("a deleted Python slot is an AttributeError")
    source, _ = pair
    tracked(source)
    assert source.try_read(10) is None
    del source._epoch
    source._rmark = 5
    assert source.try_read(10) is None  # a real call: nothing to compare with


# -- arguments ------------------------------------------------------------------------


def test_keywords_and_defaults(pair: tuple[Any, int]) -> None:
    source, peer = pair
    os.write(peer, b"abcdef")
    assert source.try_read(n=2) == b"ab"
    buf = bytearray(2)
    assert source.try_read_into(buffer=buf) == 2 and buf == b"cd"
    assert source.try_read() == b"ef"
    assert source.try_write(data=b"x") == 1
    assert source.try_writev(buffers=[b"y", b"z"]) == 2
    assert os.read(peer, 10) == b"xyz"


@pytest.mark.parametrize(
    ("call", "args", "kwargs"),
    [
        ("try_read", (1, 2), {}),
        ("try_read", (), {"m": 1}),
        ("try_read", (1,), {"n": 1}),
        ("try_read_into", (), {}),
        ("try_write", (), {}),
        ("try_write", (), {"buffer": b"x"}),
        ("try_writev", (), {}),
    ],
)
def test_wrong_arguments_are_type_errors(
    pair: tuple[Any, int], call: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    source, _ = pair
    with pytest.raises(TypeError):
        getattr(source, call)(*args, **kwargs)


@pytest.mark.parametrize("n", [0, -1, -(2**100)])
def test_read_size_below_one(pair: tuple[Any, int], n: int) -> None:
    source, peer = pair
    os.write(peer, b"abc")
    with pytest.raises(ValueError, match="n >= 1"):
        source.try_read(n)
    assert source.try_read(10) == b"abc"  # nothing consumed


@pytest.mark.parametrize("n", [2**24 + 1, 2**100])
def test_read_huge_sizes_are_clamped(pair: tuple[Any, int], n: int) -> None:
    source, peer = pair
    tracked(source)
    os.write(peer, b"abc")
    assert source.try_read(n) == b"abc"
    assert source._rmark == 5  # short against the clamped size: drained


def test_read_into_buffer_types(pair: tuple[Any, int]) -> None:
    source, peer = pair
    for bad in (b"read-only", memoryview(b"ro"), "text", 3):
        with pytest.raises(TypeError):
            source.try_read_into(bad)
    with pytest.raises(TypeError):  # not contiguous
        source.try_read_into(memoryview(bytearray(8))[::2])
    os.write(peer, b"12345678")
    ints = array.array("i", [0, 0])
    assert source.try_read_into(ints) == 8
    with pytest.raises(ValueError, match="non-empty"):
        source.try_read_into(bytearray())


def test_write_buffer_types(pair: tuple[Any, int]) -> None:
    source, peer = pair
    with pytest.raises(TypeError):
        source.try_write("text")
    with pytest.raises(BufferError):  # as os.write
        source.try_write(memoryview(bytearray(8))[::2])
    with pytest.raises(TypeError):
        source.try_writev(b"not a list of buffers")
    with pytest.raises(TypeError):
        source.try_writev([b"ok", "text"])
    assert source.try_write(memoryview(b"xyz")[1:]) == 2
    assert os.read(peer, 10) == b"yz"


@pytest.mark.parametrize("call", ["try_read", "try_read_into", "try_write", "try_writev"])
def test_closed_and_bad_descriptors_raise_ebadf(kind: type, call: str) -> None:
    arg = {"try_read": 10, "try_read_into": bytearray(4), "try_write": b"x"}.get(call, [b"x"])
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    for fd in (-1, r):
        source = kind()
        _fdio.init_state(source, fd)
        tracked(source)
        with pytest.raises(OSError) as info:
            getattr(source, call)(arg)
        assert info.value.errno == errno.EBADF and type(info.value) is OSError


# -- marks and epochs ---------------------------------------------------------------


def test_marks_follow_the_reference(pair: tuple[Any, int]) -> None:
    source, peer = pair
    epoch = tracked(source)
    os.write(peer, b"abcd")
    assert source.try_read(4) == b"abcd"  # full: proves nothing
    assert source._rmark == -1
    assert source.try_read(4) is None  # would-block: marked
    assert source._rmark == 5
    epoch.now = 6
    os.write(peer, b"ab")
    assert source.try_read_into(bytearray(4)) == 2  # short: marked
    assert source._rmark == 6
    assert source.try_read_into(bytearray(4)) is None  # no call
    assert source.try_write(b"out") == 3
    assert source._wmark == -1  # all taken: not full


def test_the_never_epoch_matches_no_mark(pair: tuple[Any, int]) -> None:
    source, peer = pair
    source._epoch = NEVER
    assert source.try_read(10) is None
    assert math.isnan(source._rmark)
    os.write(peer, b"x")
    assert source.try_read(10) == b"x"  # NaN never equals NaN: the call is made


class _BadEpoch:
    @property
    def now(self) -> float:
        raise LookupError("no epoch")


@pytest.mark.parametrize(
    ("epoch", "error"), [(object(), AttributeError), (_BadEpoch(), LookupError)]
)
def test_a_broken_epoch_stand_in_raises_before_any_call(
    pair: tuple[Any, int], epoch: Any, error: type[Exception]
) -> None:
    source, peer = pair
    os.write(peer, b"keep")
    source._epoch = epoch
    with pytest.raises(error):
        source.try_read(10)
    source._epoch = None
    assert source.try_read(10) == b"keep"  # nothing was consumed


def test_the_rearm_hook_on_would_block_only(pair: tuple[Any, int]) -> None:
    source, peer = pair
    seen: list[int] = []
    source._rearm = seen.append
    assert source.try_read(10) is None
    assert source.try_read_into(bytearray(4)) is None
    os.write(peer, b"x")
    assert source.try_read(10) == b"x"
    assert seen == [1, 1]
    assert source.try_write(b"y") == 1
    assert seen == [1, 1]


def test_an_exception_from_the_rearm_hook_propagates(pair: tuple[Any, int]) -> None:
    source, _ = pair

    def hook(direction: int) -> None:
        raise RuntimeError(f"rearm {direction}")

    source._rearm = hook
    with pytest.raises(RuntimeError, match="rearm 1"):
        source.try_read(10)
    with pytest.raises(RuntimeError, match="rearm 1"):
        source.try_read_into(bytearray(2))


# -- references and memory ----------------------------------------------------------


def test_calls_hold_no_extra_references(pair: tuple[Any, int]) -> None:
    source, peer = pair
    epoch = tracked(source)
    hook = [].append
    source._rearm = hook
    data = b"payload"
    before = (sys.getrefcount(epoch), sys.getrefcount(hook), sys.getrefcount(data))
    for _ in range(100):
        source.try_write(data)
        source.try_read(100)
        epoch.now += 1
        source.try_read(100)
        epoch.now += 1
    after = (sys.getrefcount(epoch), sys.getrefcount(hook), sys.getrefcount(data))
    assert before == after
    assert os.read(peer, 1 << 16) == data * 100


def test_a_cycle_through_the_rearm_hook_is_collected(kind: type) -> None:
    source = kind()
    _fdio.init_state(source, -1)

    class Owner:
        def rearm(self, direction: int) -> None:
            pass

    owner = Owner()
    owner.source = source  # type: ignore[attr-defined]
    source._rearm = owner.rearm  # source -> bound method -> owner -> source
    gone = weakref.ref(owner)
    del owner, source
    gc.collect()
    assert gone() is None


def test_memory_stays_bounded_over_many_sources(kind: type) -> None:
    def churn() -> None:
        for _ in range(2000):
            source = kind()
            _fdio.init_state(source, -1)
            source._epoch = Epoch()
            source.extra = bytearray(16)

    churn()
    tracemalloc.start()
    try:
        churn()
        first, _ = tracemalloc.get_traced_memory()
        churn()
        second, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert second - first < 64 * 1024


# -- the read buffers ---------------------------------------------------------------


def test_reads_of_every_size_in_any_order(pair: tuple[Any, int]) -> None:
    """C: small reads go through a per-thread scratch buffer, bulk ones through an
    allocation sized to the request, chosen by the previous read's size."""
    source, peer = pair
    sock = socket.socket(fileno=os.dup(peer))
    sock.setblocking(True)
    try:
        for size, ask in [(10, 100), (70000, 65536), (5000, 65536), (3, 65536), (200000, 1 << 20)]:
            payload = os.urandom(size)
            sender = threading.Thread(target=sock.sendall, args=(payload,))
            sender.start()
            got = bytearray()
            while len(got) < size:
                chunk = source.try_read(ask)
                if chunk is None:
                    select.select([source._fd], [], [], 5)
                    continue
                assert 0 < len(chunk) <= ask
                got += chunk
            sender.join(10)
            assert bytes(got) == payload
    finally:
        sock.close()


def test_threads_reading_at_once_get_their_own_data(kind: type) -> None:
    results: dict[int, bytes] = {}
    pairs = [socket.socketpair() for _ in range(4)]

    def reader(i: int) -> None:
        a, b = pairs[i]
        a.setblocking(False)
        source = kind()
        _fdio.init_state(source, a.fileno())
        chunks = []
        expected = bytes([i]) * 3000
        for _ in range(200):
            b.sendall(expected)
            got = b""
            while len(got) < len(expected):
                chunk = source.try_read(65536)
                if chunk is not None:
                    got += chunk
            chunks.append(got == expected)
        results[i] = bytes(chunks)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for a, b in pairs:
        a.close()
        b.close()
    assert results == {i: bytes([1]) * 200 for i in range(4)}
