"""metalio.pipe: mio's unix_pipe scenarios (smoke, close events both ways, child processes)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from metalio import Events, Interest, Poll, PollOpt, Ready
from metalio.pipe import PipeReader, PipeWriter, pipe
from net_helpers import (
    needs_procfs,
    net_poll,  # noqa: F401 (the per-backend ``poll`` fixture)
    no_events,
    wait_for,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")

R, W = Interest.READABLE, Interest.WRITABLE


@pytest.fixture
def ends() -> Iterator[tuple[PipeReader, PipeWriter]]:
    r, w = pipe()
    try:
        yield r, w
    finally:
        r.close()
        w.close()


def collect(poll: Poll, timeout: float) -> list[tuple[int, Ready]]:
    """Every event of several polls over *timeout* seconds (bounded)."""
    events = Events(64)
    out: list[tuple[int, Ready]] = []
    deadline = time.monotonic() + timeout
    for _ in range(100):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        poll.poll(events, min(left, 0.1))
        out.extend((ev.token, ev.readiness) for ev in events)
    return out


def fill(w: PipeWriter) -> int:
    total = 0
    for _ in range(100_000):
        n = w.try_write(b"f" * 65536)
        if n is None:
            return total
        total += n
    raise AssertionError("the pipe never filled")


# --------------------------------------------------------------------------
# without a Poll


def test_both_ends_nonblocking_and_cloexec(ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    for end in ends:
        assert end.fileno() >= 0 and not end.closed
        assert os.get_blocking(end.fileno()) is False
        assert os.get_inheritable(end.fileno()) is False
    assert not hasattr(r, "socket")
    assert r.try_read() is None
    assert r.try_read_into(bytearray(4)) is None
    assert w.try_write(b"Hello world") == 11
    assert r.try_read() == b"Hello world"


def test_read_into_and_eof(ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    w.try_write(b"abcdef")
    buf = bytearray(b"........")
    assert r.try_read_into(memoryview(buf)[2:]) == 6
    assert buf == b"..abcdef"
    with pytest.raises(ValueError):
        r.try_read(0)
    w.try_write(b"x")
    with pytest.raises(ValueError):
        r.try_read_into(bytearray())  # would read 0: refused, not end of stream
    with pytest.raises(TypeError):
        r.try_read_into(b"immutable")
    assert r.try_read(1) == b"x"
    w.close()
    assert r.try_read() == b""
    assert r.try_read_into(bytearray(1)) == 0


def test_writev_mixed_buffers_and_backpressure(ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    assert w.try_writev([b"ab", bytearray(b"cd"), memoryview(b"xefx")[1:3]]) == 6
    assert r.try_read() == b"abcdef"
    total = fill(w)
    assert total > 0
    assert w.try_write(b"more") is None
    assert w.try_writev([b"more"]) is None
    drained = 0
    while (data := r.try_read()) is not None:
        drained += len(data)
    assert drained == total


def test_broken_pipe_after_reader_closed(ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    r.close()
    with pytest.raises(BrokenPipeError):
        w.try_write(b"x")
    with pytest.raises(BrokenPipeError):
        w.try_writev([b"x"])


def test_closed_ends(ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    r.close()
    r.close()
    w.close()
    assert r.fileno() == -1 and w.fileno() == -1 and r.closed and w.closed
    for call in (
        lambda: r.try_read(),
        lambda: r.try_read_into(bytearray(1)),
        lambda: w.try_write(b"x"),
        lambda: w.try_writev([b"x"]),
    ):
        with pytest.raises((OSError, ValueError)):
            call()


def test_rearm_hook_directions(ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    calls: list[int] = []
    assert r._rearm is None and w._rearm is None
    r._rearm = w._rearm = calls.append
    assert r.try_read() is None
    assert r.try_read_into(bytearray(1)) is None
    assert calls == [1, 1]
    fill(w)
    assert calls == [1, 1, 2]
    assert w.try_writev([b"x"]) is None
    assert calls == [1, 1, 2, 2]


def test_context_managers() -> None:
    r, w = pipe()
    with r as rr, w as ww:
        assert rr is r and ww is w
    assert r.closed and w.closed


def test_adopting_a_descriptor() -> None:
    rfd, wfd = os.pipe()
    os.set_inheritable(wfd, True)
    with PipeReader(rfd) as r, PipeWriter(wfd) as w:
        assert os.get_blocking(rfd) is False and os.get_blocking(wfd) is False
        assert os.get_inheritable(wfd) is False
        assert r.try_read() is None
        w.try_write(b"adopted")
        assert r.try_read() == b"adopted"
    with pytest.raises(OSError):
        os.fstat(rfd)  # closed by the reader


def test_adopting_bad_descriptors() -> None:
    with pytest.raises(TypeError):
        PipeReader("3")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        PipeWriter(True)
    with pytest.raises(ValueError):
        PipeReader(-1)
    rfd, wfd = os.pipe()
    os.close(rfd)
    os.close(wfd)
    with pytest.raises(OSError):
        PipeReader(rfd)


@needs_procfs
def test_unclosed_end_warns_and_closes() -> None:
    before = len(os.listdir("/proc/self/fd"))
    r, w = pipe()
    w.close()
    with pytest.warns(ResourceWarning):
        del r
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before


def test_child_process_does_not_inherit() -> None:
    r, w = pipe()
    with r, w:
        code = f"import os\ntry:\n    os.fstat({w.fileno()})\nexcept OSError:\n    print('closed')"
        out = subprocess.run(
            [sys.executable, "-c", code], close_fds=False, capture_output=True, timeout=30
        )
        assert out.stdout.strip() == b"closed"


# --------------------------------------------------------------------------
# poll driven, every backend


def test_smoke(poll: Poll, ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    poll.registry.register(r, 0, R, PollOpt.EDGE)
    poll.registry.register(w, 1, W, PollOpt.EDGE)
    assert r.try_read() is None
    wait_for(poll, {1: Ready.WRITABLE})
    assert w.try_write(b"Hello world") == 11
    wait_for(poll, {0: Ready.READABLE})
    assert r.try_read() == b"Hello world"


def test_event_when_writer_closed(poll: Poll, ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    poll.registry.register(r, 0, R, PollOpt.EDGE)
    no_events(poll)
    w.close()
    if poll.backend == "select":
        # select(2) has no hang-up bit (documented in the select backend):
        # the close arrives as readability and the read says end of stream.
        wait_for(poll, {0: Ready.READABLE})
    else:
        seen = wait_for(poll, {0: Ready.READ_CLOSED})
        assert seen[0].read_closed and seen[0].hup
    assert r.try_read() == b""
    # One edge, not a stream of them.
    assert collect(poll, 0.1) == []


def test_event_when_reader_closed(poll: Poll, ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    poll.registry.register(w, 1, W, PollOpt.EDGE)
    wait_for(poll, {1: Ready.WRITABLE})
    fill(w)  # so the next event is the close, not plain writability
    no_events(poll)
    r.close()
    events = collect(poll, 0.3)
    flags = Ready(0)
    for token, ready in events:
        assert token == 1
        flags |= ready
    if poll.backend == "select":
        # No error/hang-up bits in select(2): the close arrives as writability
        # and the write raises (documented in the select backend).
        assert flags & Ready.WRITABLE, flags
    else:
        assert flags & (Ready.WRITE_CLOSED | Ready.ERROR), flags
    assert 1 <= len(events) <= 2  # an edge, not a busy loop
    with pytest.raises(BrokenPipeError):
        w.try_write(b"x")


def test_reader_edge_rearms_after_would_block(
    poll: Poll, ends: tuple[PipeReader, PipeWriter]
) -> None:
    r, w = ends
    poll.registry.register(r, 0, R, PollOpt.EDGE)
    for word in (b"one", b"two", b"three"):
        w.try_write(word)
        wait_for(poll, {0: Ready.READABLE})
        assert r.try_read() == word
        assert r.try_read() is None
        no_events(poll)


def test_writer_edge_after_drain(poll: Poll, ends: tuple[PipeReader, PipeWriter]) -> None:
    r, w = ends
    poll.registry.register(w, 1, W, PollOpt.EDGE)
    wait_for(poll, {1: Ready.WRITABLE})
    total = fill(w)
    no_events(poll)
    got = 0
    while (data := r.try_read()) is not None:
        got += len(data)
    assert got == total
    wait_for(poll, {1: Ready.WRITABLE})
    assert w.try_write(b"again") == 5


def test_closed_reader_registered_is_tolerated(poll: Poll) -> None:
    # mio's broken_pipe: register a reader with all interests, drop it, poll.
    r, w = pipe()
    with w:
        poll.registry.register(r, 1, R | W, PollOpt.EDGE)
        r.close()
        assert all(token != 1 for token, _ in collect(poll, 0.1))
        poll.registry.deregister(r)


def test_child_process_io(poll: Poll) -> None:
    # Pipes to ``cat``: what goes into its stdin comes out of its stdout, and
    # closing our writer ends the child's input, which ends its output.
    to_child_r, to_child = pipe()
    from_child, from_child_w = pipe()
    # O_NONBLOCK belongs to the open file description, which the child
    # shares: hand it blocking ends, or cat fails with EAGAIN (documented).
    os.set_blocking(to_child_r.fileno(), True)
    os.set_blocking(from_child_w.fileno(), True)
    proc = subprocess.Popen(["cat"], stdin=to_child_r.fileno(), stdout=from_child_w.fileno())
    try:
        to_child_r.close()
        from_child_w.close()
        poll.registry.register(from_child, 0, R, PollOpt.EDGE)
        poll.registry.register(to_child, 1, W, PollOpt.EDGE)
        wait_for(poll, {1: Ready.WRITABLE})
        assert to_child.try_write(b"through cat") == 11
        poll.registry.deregister(to_child)
        to_child.close()
        out = b""
        for _ in range(200):
            data = from_child.try_read()
            if data is None:
                wait_for(poll, {0: Ready.READABLE})
                continue
            if data == b"":
                break
            out += data
        assert out == b"through cat"
    finally:
        to_child.close()
        from_child.close()
        proc.wait(timeout=10)
