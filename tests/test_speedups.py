"""The descriptor calls of the C core and their pure-Python reference, side by side.

Every test runs against both implementations (``impl`` is ``"c"`` or
``"python"``; the C one is skipped where the extension is not built) on real
pipes and socket pairs: data, end of stream, would-block, every error path,
buffer types, huge sizes, partial and gathered writes, EINTR with real
signals, released buffers and bounded memory.  The loader and the build
guarantee (``metalio.speedups``) are in ``test_speedups_loader.py``.
"""

from __future__ import annotations

import array
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import pytest

from metalio import _speedups_loader as loader

try:
    from metalio import _speedups as c_core
except ImportError:  # not built: the C half of every test skips
    c_core = None  # type: ignore[assignment]


class Impl(NamedTuple):
    read: Callable[[int, int], bytes | None]
    readinto: Callable[[int, Any], int | None]
    write: Callable[[int, Any], int | None]
    writev: Callable[[int, Any], int | None]


def _impl(name: str) -> Impl:
    if name == "python":
        return Impl(loader.py_read, loader.py_readinto, loader.py_write, loader.py_writev)
    if c_core is None:
        pytest.skip("metalio._speedups is not built")
    return Impl(c_core.read, c_core.readinto, c_core.write, c_core.writev)


@pytest.fixture(params=["c", "python"])
def impl(request: pytest.FixtureRequest) -> Impl:
    return _impl(request.param)


class Chan(NamedTuple):
    r: int  # the reading end
    w: int  # the writing end


@pytest.fixture(params=["pipe", "socketpair"])
def chan(request: pytest.FixtureRequest) -> Iterator[Chan]:
    """A non-blocking pipe or Unix socket pair; the test may close either end."""
    if request.param == "pipe":
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    else:
        a, b = socket.socketpair()
        r, w = a.detach(), b.detach()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
    try:
        yield Chan(r, w)
    finally:
        for fd in (r, w):
            try:
                os.close(fd)
            except OSError:
                pass


def closed_fd() -> int:
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    return r  # just closed: nothing in this single-threaded test reuses it first


def _fill(fd: int) -> int:
    total = 0
    chunk = b"x" * 65536
    while True:
        try:
            total += os.write(fd, chunk)
        except BlockingIOError:
            return total


def drain(fd: int) -> bytes:
    out = bytearray()
    while True:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not data:
            return bytes(out)
        out += data


def resizable(buffer: bytearray) -> bool:
    """A bytearray with a buffer export still held cannot change size."""
    try:
        buffer.append(0)
    except BufferError:
        return False
    del buffer[-1]
    return True


# -- read ---------------------------------------------------------------------------


def test_read_data_eof_and_would_block(impl: Impl, chan: Chan) -> None:
    assert impl.read(chan.r, 10) is None
    os.write(chan.w, b"hello world")
    assert impl.read(chan.r, 5) == b"hello"
    assert impl.read(chan.r, 65536) == b" world"
    assert impl.read(chan.r, 65536) is None
    os.close(chan.w)
    assert impl.read(chan.r, 10) == b""


@pytest.mark.parametrize("n", [2**24, 2**24 + 1, 2**40, sys.maxsize, 2**100, True])
def test_read_huge_sizes_are_clamped(impl: Impl, chan: Chan, n: int) -> None:
    assert impl.read(chan.r, n) is None  # a clamped 16 MiB ask, not a MemoryError
    os.write(chan.w, b"abc")
    assert impl.read(chan.r, n) == (b"a" if n is True else b"abc")


@pytest.mark.parametrize("n", [0, -1, -(2**63), -(2**100), False])
def test_read_size_below_one_is_value_error(impl: Impl, chan: Chan, n: int) -> None:
    os.write(chan.w, b"abc")
    with pytest.raises(ValueError, match="n >= 1"):
        impl.read(chan.r, n)
    assert os.read(chan.r, 10) == b"abc"  # nothing consumed


@pytest.mark.parametrize("n", ["1", 1.5, None, b"1"])
def test_read_size_of_wrong_type(impl: Impl, chan: Chan, n: Any) -> None:
    with pytest.raises(TypeError):
        impl.read(chan.r, n)


class Index:
    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def test_fd_with_index_is_accepted(impl: Impl, chan: Chan) -> None:
    # As os.read: an object with __index__ is an int for the descriptor.
    os.write(chan.w, b"ok")
    assert impl.read(Index(chan.r), 10) == b"ok"  # type: ignore[arg-type]


CALLS: list[tuple[str, Any]] = [
    ("read", 10),
    ("readinto", bytearray(10)),
    ("write", b"x"),
    ("writev", [b"x"]),
]


@pytest.mark.parametrize(("call", "arg"), CALLS, ids=[c for c, _ in CALLS])
def test_bad_and_closed_descriptors(impl: Impl, call: str, arg: Any) -> None:
    fn = getattr(impl, call)
    for fd in (-1, -(2**31), closed_fd()):
        with pytest.raises(OSError) as info:
            fn(fd, arg)
        assert info.value.errno == errno.EBADF
        assert type(info.value) is OSError
    for fd in (2**31, 2**64, -(2**31) - 1):
        with pytest.raises(OverflowError):
            fn(fd, arg)
    for bad in ("3", 3.0, None, b"3", socket):
        with pytest.raises(TypeError):
            fn(bad, arg)


@pytest.mark.parametrize(("call", "arg"), CALLS, ids=[c for c, _ in CALLS])
def test_argument_count(impl: Impl, call: str, arg: Any) -> None:
    fn = getattr(impl, call)
    with pytest.raises(TypeError):
        fn(0)
    with pytest.raises(TypeError):
        fn(0, arg, arg)
    with pytest.raises(TypeError):
        fn(fd=0, n=arg)


def test_connection_reset_is_its_subclass(impl: Impl) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with client:
        # Linger on with a zero timeout: close() sends a reset, not a FIN.
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()
        client.setblocking(False)
        for _ in range(100):  # the reset crosses the loopback almost at once
            try:
                got = impl.read(client.fileno(), 100)
            except ConnectionResetError as exc:
                assert exc.errno == errno.ECONNRESET
                return
            assert got is None
            threading.Event().wait(0.02)
        pytest.fail("no ConnectionResetError")


def test_write_to_closed_reader_is_broken_pipe(impl: Impl, chan: Chan) -> None:
    os.close(chan.r)
    for call in (lambda: impl.write(chan.w, b"x"), lambda: impl.writev(chan.w, [b"x", b"y"])):
        with pytest.raises(BrokenPipeError) as info:
            call()
        assert info.value.errno == errno.EPIPE


# -- readinto -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        bytearray,
        lambda n: memoryview(bytearray(n + 4))[2:-2],
        lambda n: array.array("b", bytes(n)),
    ],
    ids=["bytearray", "memoryview-slice", "array"],
)
def test_readinto_writable_buffers(impl: Impl, chan: Chan, make: Callable[[int], Any]) -> None:
    buffer = make(8)
    assert impl.readinto(chan.r, buffer) is None
    os.write(chan.w, b"0123456789")
    assert impl.readinto(chan.r, buffer) == 8
    assert bytes(buffer) == b"01234567"
    assert impl.readinto(chan.r, buffer) == 2
    assert bytes(buffer)[:2] == b"89"
    os.close(chan.w)
    assert impl.readinto(chan.r, buffer) == 0


@pytest.mark.parametrize(
    "buffer",
    [
        b"immutable",
        memoryview(b"read-only view"),
        memoryview(bytearray(20))[::2],
        "text",
        12,
        None,
    ],
    ids=["bytes", "readonly-view", "non-contiguous", "str", "int", "None"],
)
def test_readinto_refuses_what_it_cannot_write(impl: Impl, chan: Chan, buffer: Any) -> None:
    os.write(chan.w, b"data")
    with pytest.raises(TypeError):
        impl.readinto(chan.r, buffer)
    assert os.read(chan.r, 10) == b"data"  # nothing consumed


def test_readinto_empty_buffer_is_value_error(impl: Impl, chan: Chan) -> None:
    for buffer in (bytearray(), memoryview(bytearray(4))[2:2]):
        with pytest.raises(ValueError, match="non-empty"):
            impl.readinto(chan.r, buffer)
        os.write(chan.w, b"data")
        with pytest.raises(ValueError, match="non-empty"):
            impl.readinto(chan.r, buffer)
        assert os.read(chan.r, 10) == b"data"


# -- write and writev ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"abc", bytearray(b"abc"), memoryview(b"xabcx")[1:4], array.array("b", b"abc")],
    ids=["bytes", "bytearray", "memoryview", "array"],
)
def test_write_bytes_like(impl: Impl, chan: Chan, data: Any) -> None:
    assert impl.write(chan.w, data) == 3
    assert impl.write(chan.w, b"") == 0
    assert os.read(chan.r, 10) == b"abc"


def test_write_refusals_match_os_write(impl: Impl, chan: Chan) -> None:
    with pytest.raises(TypeError):
        impl.write(chan.w, "text")
    with pytest.raises(TypeError):
        impl.write(chan.w, 7)
    # os.write says BufferError for a non-contiguous view; both keep that.
    with pytest.raises(BufferError):
        impl.write(chan.w, memoryview(bytearray(10))[::2])
    assert drain(chan.r) == b""


def test_write_full_would_block_then_partial(impl: Impl, chan: Chan) -> None:
    _fill(chan.w)
    assert impl.write(chan.w, b"y" * 1000) is None
    assert impl.writev(chan.w, [b"y", b"z"]) is None
    drain(chan.r)  # room again; now a write far larger than the buffer must be partial
    big = b"z" * (8 << 20)
    taken = impl.write(chan.w, big)
    assert taken is not None and 0 < taken < len(big)
    drain(chan.r)
    taken = impl.writev(chan.w, [big, big])
    assert taken is not None and 0 < taken < 2 * len(big)


def test_writev_gathers_in_order(impl: Impl, chan: Chan) -> None:
    parts = [b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3], b"", array.array("b", b"g")]
    assert impl.writev(chan.w, parts) == 7
    assert impl.writev(chan.w, ()) == 0
    assert impl.writev(chan.w, (b"h",)) == 1
    assert drain(chan.r) == b"abcdefgh"


@pytest.mark.parametrize("count", [15, 16, 17, 1024, 1025, 5000])
def test_writev_uses_at_most_iov_max_buffers(impl: Impl, chan: Chan, count: int) -> None:
    # 16 is the C core's stack/heap boundary; IOV_MAX (1024 here) the cut-off.
    parts = [bytes([i % 256]) for i in range(count)]
    taken = impl.writev(chan.w, parts)
    used = min(count, loader.IOV_MAX)
    assert taken == used
    assert drain(chan.r) == b"".join(parts[:used])


@pytest.mark.parametrize(
    "buffers",
    [(b"x" for _ in range(2)), {b"x"}, {b"x": 1}, b"bytes-of-ints", 5, None],
    ids=["generator", "set", "dict", "bytes", "int", "None"],
)
def test_writev_needs_a_sequence_of_buffers(impl: Impl, chan: Chan, buffers: Any) -> None:
    with pytest.raises(TypeError):
        impl.writev(chan.w, buffers)
    assert drain(chan.r) == b""


def test_writev_bad_item_releases_the_buffers_taken(impl: Impl, chan: Chan) -> None:
    for bad, kind in (("text", TypeError), (memoryview(bytearray(8))[::2], BufferError)):
        held = bytearray(b"first")
        before = sys.getrefcount(held)
        with pytest.raises(kind):
            impl.writev(chan.w, [held, held, bad])
        assert resizable(held)
        assert sys.getrefcount(held) == before
    many = [bytearray(b"m") for _ in range(40)]
    with pytest.raises(TypeError):
        impl.writev(chan.w, [*many, "bad"])  # past the C core's stack arrays
    assert all(resizable(b) for b in many)
    assert drain(chan.r) == b""


class Shrinking(Sequence[bytearray]):
    """Claims 3 items; the third fetch fails, as a list mutated meanwhile would."""

    def __init__(self) -> None:
        self.held = bytearray(b"held")

    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, int) and i < 2:
            return self.held
        raise IndexError(i)


def test_writev_sequence_failing_midway(impl: Impl, chan: Chan) -> None:
    seq = Shrinking()
    with pytest.raises(IndexError):
        impl.writev(chan.w, seq)
    assert resizable(seq.held)
    assert drain(chan.r) == b""


# -- buffers and memory ------------------------------------------------------------


def test_buffers_are_released_on_every_path(impl: Impl, chan: Chan) -> None:
    buffer = bytearray(16)
    before = sys.getrefcount(buffer)
    assert impl.readinto(chan.r, buffer) is None  # would block
    os.write(chan.w, b"abc")
    assert impl.readinto(chan.r, buffer) == 3  # data
    with pytest.raises(OSError):
        impl.readinto(closed_fd(), buffer)  # error
    assert impl.write(chan.w, buffer) == 16
    assert impl.writev(chan.w, [buffer, buffer]) == 32
    _fill(chan.w)
    assert impl.write(chan.w, buffer) is None
    assert impl.writev(chan.w, [buffer] * 20) is None
    with pytest.raises(OSError):
        impl.write(closed_fd(), buffer)
    with pytest.raises(OSError):
        impl.writev(closed_fd(), [buffer] * 20)
    assert resizable(buffer)
    assert sys.getrefcount(buffer) == before


def test_results_hold_no_extra_references(impl: Impl, chan: Chan) -> None:
    os.write(chan.w, b"abcdef")
    data = impl.read(chan.r, 3)
    assert sys.getrefcount(data) == 2  # the name and getrefcount's argument
    data = impl.read(chan.r, 65536)  # a short read resized the object
    assert data == b"def" and sys.getrefcount(data) == 2


def test_memory_stays_bounded_over_many_calls(impl: Impl, chan: Chan) -> None:
    # tracemalloc sees the allocations of C code too (PyBytes, PyMem): a lost
    # bytes object per call (the 64 KiB of a would-block read) would show here.
    buffer = bytearray(64)
    bad = closed_fd()
    many = [b"v"] * 20

    def once() -> None:
        assert impl.read(chan.r, 65536) is None
        assert impl.readinto(chan.r, buffer) is None
        os.write(chan.w, b"abc")
        assert impl.read(chan.r, 65536) == b"abc"
        assert impl.writev(chan.w, many) == 20
        assert impl.readinto(chan.r, buffer) == 20
        for call, arg in (("read", 10), ("readinto", buffer), ("write", buffer)):
            try:
                getattr(impl, call)(bad, arg)
            except OSError:
                pass
        try:
            impl.writev(chan.w, [buffer, "bad"])
        except TypeError:
            pass

    for _ in range(200):
        once()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        for _ in range(5000):
            once()
        grown = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes still allocated after 5000 rounds"


# -- the GIL and signals -----------------------------------------------------------


_GIL_PROBE = """
import os, sys, threading
from metalio import _speedups_loader as loader
if sys.argv[1] == "c":
    from metalio._speedups import read
else:
    read = loader.py_read
r, w = os.pipe()
got = []
reader = threading.Thread(target=lambda: got.append(read(r, 10)), daemon=True)
reader.start()
reader.join(0.1)  # the reader is (almost surely) blocked in read(2) by now
os.write(w, b"late")  # never runs if the blocked reader holds the GIL
reader.join(10)
assert got == [b"late"], got
"""


@pytest.mark.parametrize("name", ["c", "python"])
def test_blocking_call_releases_the_gil(name: str) -> None:
    # In a child: a call that kept the GIL would hang this process beyond any timeout.
    _impl(name)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _GIL_PROBE, name], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail("a blocking read kept the GIL")
    assert result.returncode == 0, result.stderr


class Interrupted(Exception):
    pass


@pytest.fixture
def alarm() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Install a SIGALRM handler firing every 20 ms from 100 ms on (no SA_RESTART)."""
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        pytest.skip("signals are delivered to the main thread")
    old = signal.getsignal(signal.SIGALRM)

    def arm(action: Callable[[], None]) -> None:
        signal.signal(signal.SIGALRM, lambda *_: action())
        signal.setitimer(signal.ITIMER_REAL, 0.1, 0.02)

    try:
        yield arm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)


def _blocking_call(impl: Impl, call: str, r: int, w: int) -> Callable[[], Any]:
    if call == "read":
        return lambda: impl.read(r, 10)
    if call == "readinto":
        return lambda: impl.readinto(r, bytearray(10))
    _fill_blocking(w)
    if call == "write":
        return lambda: impl.write(w, b"more")
    return lambda: impl.writev(w, [b"mo", b"re"])


def _fill_blocking(w: int) -> None:
    os.set_blocking(w, False)
    _fill(w)
    os.set_blocking(w, True)


def _unblock(call: str, r: int, w: int) -> None:
    """Make the blocked call able to finish (data to read, room to write)."""
    if call.startswith("read"):
        os.write(w, b"x")
    else:
        os.set_blocking(r, False)
        drain(r)


BLOCKING = ["read", "readinto", "write", "writev"]


@pytest.mark.parametrize("call", BLOCKING)
def test_eintr_handler_exception_propagates(impl: Impl, alarm: Any, call: str) -> None:
    r, w = os.pipe()
    rescued: list[str] = []

    def rescue() -> None:  # only if the handler's exception was lost and the call retried
        rescued.append(call)
        _unblock(call, r, w)

    def handler() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        raise Interrupted

    watchdog = threading.Timer(5, rescue)
    try:
        blocked = _blocking_call(impl, call, r, w)
        watchdog.start()
        alarm(handler)
        with pytest.raises(Interrupted):
            blocked()
        assert rescued == []
    finally:
        watchdog.cancel()
        watchdog.join()
        os.close(w)
        os.close(r)


@pytest.mark.parametrize("call", BLOCKING)
def test_eintr_quiet_handler_retries(impl: Impl, alarm: Any, call: str) -> None:
    r, w = os.pipe()
    ran: list[int] = []

    def handler() -> None:
        ran.append(1)
        if len(ran) == 3:  # interrupted twice with nothing to do: retried each time
            signal.setitimer(signal.ITIMER_REAL, 0, 0)
            _unblock(call, r, w)

    try:
        blocked = _blocking_call(impl, call, r, w)
        alarm(handler)
        assert blocked() == {"read": b"x", "readinto": 1}.get(call, 4)
        assert len(ran) == 3
    finally:
        os.close(w)
        os.close(r)
