"""metalio.net Unix sockets: mio's unix_stream, unix_listener and unix_datagram scenarios."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metalio import Events, Interest, Poll, PollOpt, Ready
from metalio.net import UnixDatagram, UnixListener, UnixStream
from net_helpers import (
    needs_procfs,
    net_poll,  # noqa: F401 (the per-backend ``poll`` fixture)
    no_events,
    wait_for,
)

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no AF_UNIX")

R, W = Interest.READABLE, Interest.WRITABLE
LINUX = sys.platform.startswith("linux")
linux_only = pytest.mark.skipif(not LINUX, reason="abstract names are Linux-only")


@pytest.fixture
def sockdir() -> Iterator[Path]:
    # Short on purpose: sun_path holds at most 107 bytes.
    d = tempfile.mkdtemp(prefix="mio", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def abstract_name() -> str:
    return f"\0metalio-test-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def accept_one(listener: UnixListener) -> UnixStream:
    for _ in range(300):
        got = listener.try_accept()
        if got is not None:
            return got[0]
        time.sleep(0.01)
    raise AssertionError("no connection to accept")


@pytest.fixture
def spair() -> Iterator[tuple[UnixStream, UnixStream]]:
    a, b = UnixStream.pair()
    with a, b:
        yield a, b


@pytest.fixture
def dpair() -> Iterator[tuple[UnixDatagram, UnixDatagram]]:
    a, b = UnixDatagram.pair()
    with a, b:
        yield a, b


# --------------------------------------------------------------------------
# socket level


def test_listener_path_connect_accept(sockdir: Path) -> None:
    path = sockdir / "s"
    with UnixListener.bind(path) as lst:
        assert os.get_blocking(lst.fileno()) is False
        assert os.get_inheritable(lst.fileno()) is False
        assert lst.local_addr() == str(path)
        assert lst.try_accept() is None
        with UnixStream.connect(str(path)) as client:
            got = None
            for _ in range(300):
                got = lst.try_accept()
                if got is not None:
                    break
                time.sleep(0.01)
            assert got is not None
            server, addr = got
            with server:
                assert type(server) is UnixStream
                assert addr == ""  # the client is unnamed
                assert os.get_blocking(server.fileno()) is False
                assert os.get_inheritable(server.fileno()) is False
                assert client.peer_addr() == str(path)
                assert client.try_write(b"hi") == 2
                time.sleep(0.02)
                assert server.try_read() == b"hi"
                assert server.try_read() is None
    assert path.exists(), "close() leaves the socket file in place (documented)"


def test_pair_roundtrip_and_eof(spair: tuple[UnixStream, UnixStream]) -> None:
    a, b = spair
    for s in spair:
        assert os.get_blocking(s.fileno()) is False
        assert os.get_inheritable(s.fileno()) is False
        assert s.try_read() is None
    assert a.try_write(b"ab") == 2
    assert b.try_writev([b"x", bytearray(b"y"), memoryview(b"zz")[1:]]) == 3
    assert b.try_read() == b"ab"
    buf = bytearray(8)
    assert a.try_read_into(buf) == 3 and buf[:3] == b"xyz"
    assert a.local_addr() == "" and a.peer_addr() == ""
    a.close()
    assert b.try_read() == b""
    assert b.try_read_into(bytearray(1)) == 0
    with pytest.raises(BrokenPipeError):
        b.try_write(b"nobody")


def test_stream_write_until_would_block(spair: tuple[UnixStream, UnixStream]) -> None:
    a, b = spair
    total = 0
    for _ in range(10_000):
        n = a.try_write(b"q" * 65536)
        if n is None:
            break
        total += n
    else:
        pytest.fail("never blocked")
    got = 0
    while True:
        data = b.try_read()
        if data is None:
            break
        got += len(data)
    assert got == total


@linux_only
@pytest.mark.parametrize("spelling", ["nul-str", "nul-bytes", "at-str", "at-bytes"])
def test_abstract_names(spelling: str) -> None:
    name = abstract_name()
    spellings: dict[str, str | bytes] = {
        "nul-str": name,
        "nul-bytes": name.encode(),
        "at-str": "@" + name[1:],
        "at-bytes": b"@" + name[1:].encode(),
    }
    bind_as = spellings[spelling]
    with UnixListener.bind(bind_as) as lst:
        assert lst.local_addr() == name.encode()
        with UnixStream.connect(bind_as) as client, accept_one(lst):
            assert client.peer_addr() == name.encode()
        # the same name in the other spelling reaches the same listener
        with UnixStream.connect("@" + name[1:]) as again, accept_one(lst):
            assert again.peer_addr() == name.encode()
    assert again.closed


@linux_only
def test_abstract_name_is_free_after_close() -> None:
    name = abstract_name()
    with UnixListener.bind(name):
        with pytest.raises(OSError) as info:
            UnixListener.bind(name)
        assert info.value.errno == errno.EADDRINUSE
    with UnixListener.bind(name):  # no file to clean up: reusable at once
        pass


def test_stale_socket_file_is_not_removed_unless_asked(sockdir: Path) -> None:
    path = sockdir / "stale"
    UnixListener.bind(path).close()  # leaves the file behind
    assert path.exists()
    with pytest.raises(OSError) as info:
        UnixListener.bind(path)
    assert info.value.errno == errno.EADDRINUSE
    with (
        UnixListener.bind(path, unlink_existing=True) as lst,
        UnixStream.connect(path),
        accept_one(lst),
    ):
        pass
    dgram_path = sockdir / "dstale"
    UnixDatagram.bind(dgram_path).close()
    with pytest.raises(OSError):
        UnixDatagram.bind(dgram_path)
    UnixDatagram.bind(dgram_path, unlink_existing=True).close()


def test_unlink_existing_never_removes_a_regular_file(sockdir: Path) -> None:
    path = sockdir / "precious"
    path.write_bytes(b"data")
    with pytest.raises(OSError):
        UnixListener.bind(path, unlink_existing=True)
    assert path.read_bytes() == b"data"


def test_connect_errors_are_immediate(sockdir: Path) -> None:
    with pytest.raises(FileNotFoundError):
        UnixStream.connect(sockdir / "missing")
    bound = sockdir / "bound-not-listening"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(bound))
        with pytest.raises(ConnectionRefusedError):
            UnixStream.connect(bound)


BAD_PATHS: list[tuple[object, type[Exception]]] = [
    ("", ValueError),
    (b"", ValueError),
    ("/tmp/a\0b", ValueError),
    ("/tmp/" + "x" * 200, ValueError),
    ("\0" + "x" * 200, ValueError),
    (42, TypeError),
    (None, TypeError),
    (("127.0.0.1", 80), TypeError),
    (bytearray(b"/tmp/x"), TypeError),
]


@needs_procfs
@pytest.mark.parametrize(("path", "exc"), BAD_PATHS, ids=repr)
def test_bad_path_raises_before_creating_a_socket(path: object, exc: type[Exception]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(exc):
        UnixListener.bind(path)  # type: ignore[arg-type]
    with pytest.raises(exc):
        UnixStream.connect(path)  # type: ignore[arg-type]
    with pytest.raises(exc):
        UnixDatagram.bind(path)  # type: ignore[arg-type]
    with UnixDatagram.unbound() as d:
        fds = len(os.listdir("/proc/self/fd"))
        with pytest.raises(exc):
            d.try_send_to(b"x", path)
        with pytest.raises(exc):
            d.connect(path)
        assert len(os.listdir("/proc/self/fd")) == fds
    assert len(os.listdir("/proc/self/fd")) == before


@needs_procfs
def test_failed_connect_leaks_nothing(sockdir: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        with pytest.raises(FileNotFoundError):
            UnixStream.connect(sockdir / "nothing")
    assert len(os.listdir("/proc/self/fd")) == before


def test_datagram_bound_and_unbound(sockdir: Path) -> None:
    path = sockdir / "d"
    with UnixDatagram.bind(path) as rx, UnixDatagram.unbound() as tx:
        assert os.get_blocking(rx.fileno()) is False
        assert os.get_inheritable(tx.fileno()) is False
        assert rx.try_recv_from() is None
        assert tx.try_send_to(b"hello", path) == 5
        assert tx.try_send_to(b"", str(path)) == 0
        assert rx.try_recv_from() == (b"hello", None)  # unbound sender: no address
        assert rx.try_recv_from() == (b"", None)  # a real empty datagram
        assert rx.try_recv_from() is None
        with pytest.raises(OSError):
            tx.try_send(b"unconnected")
        tx.connect(path)
        assert tx.peer_addr() == str(path)
        assert tx.try_send(b"connected") == 9
        assert rx.try_recv() == b"connected"


def test_datagram_to_nobody(sockdir: Path) -> None:
    with UnixDatagram.unbound() as tx, pytest.raises(FileNotFoundError):
        tx.try_send_to(b"x", sockdir / "nobody")


def test_datagram_pair_and_shutdown(dpair: tuple[UnixDatagram, UnixDatagram]) -> None:
    a, b = dpair
    assert a.try_send(b"ping") == 4
    assert b.try_recv() == b"ping"
    assert b.try_peek_from() is None
    a.try_send(b"")
    assert b.try_recv() == b""
    a.shutdown(socket.SHUT_WR)
    with pytest.raises(BrokenPipeError):
        a.try_send(b"after shutdown")


def test_datagram_send_until_would_block(dpair: tuple[UnixDatagram, UnixDatagram]) -> None:
    a, b = dpair
    sent = 0
    for _ in range(100_000):
        if a.try_send(b"d" * 512) is None:
            break
        sent += 1
    else:
        pytest.fail("the receiver's queue never filled")
    got = 0
    while b.try_recv() is not None:
        got += 1
    assert got == sent  # no datagram lost between unix sockets


@linux_only
def test_datagram_abstract(dpair: tuple[UnixDatagram, UnixDatagram]) -> None:
    name = abstract_name()
    with UnixDatagram.bind("@" + name[1:]) as rx, UnixDatagram.unbound() as tx:
        assert rx.local_addr() == name.encode()
        tx.try_send_to(b"abs", name)
        assert rx.try_recv_from() == (b"abs", None)


def test_from_socket_kinds(sockdir: Path) -> None:
    a, b = socket.socketpair()
    with UnixStream.from_socket(a) as sa, UnixStream.from_socket(b) as sb:
        assert os.get_blocking(sa.fileno()) is False
        assert sb.try_read() is None
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with pytest.raises(ValueError):
        UnixStream.from_socket(raw)
    with pytest.raises(ValueError):
        UnixListener.from_socket(raw)
    with UnixDatagram.from_socket(raw) as d:
        assert d.try_recv() is None
    with socket.socket() as tcp, pytest.raises(ValueError):
        UnixDatagram.from_socket(tcp)
    raw_l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw_l.bind(str(sockdir / "l"))
    raw_l.listen()
    with UnixListener.from_socket(raw_l) as lst:
        assert lst.try_accept() is None


def test_closed_objects(sockdir: Path) -> None:
    a, b = UnixStream.pair()
    b.close()
    a.close()
    a.close()
    assert a.fileno() == -1 and a.closed
    for call in (
        lambda: a.try_read(),
        lambda: a.try_read_into(bytearray(1)),
        lambda: a.try_write(b"x"),
        lambda: a.try_writev([b"x"]),
        lambda: a.shutdown(socket.SHUT_RD),
    ):
        with pytest.raises((OSError, ValueError)):
            call()
    lst = UnixListener.bind(sockdir / "c")
    lst.close()
    with pytest.raises((OSError, ValueError)):
        lst.try_accept()
    d = UnixDatagram.unbound()
    d.close()
    with pytest.raises((OSError, ValueError)):
        d.try_recv_from()
    with pytest.raises((OSError, ValueError)):
        d.try_send_to(b"x", sockdir / "c")


# --------------------------------------------------------------------------
# poll driven, every backend


def test_listener_edge_two_connects(poll: Poll, sockdir: Path) -> None:
    path = sockdir / "e"
    with UnixListener.bind(path) as lst:
        poll.registry.register(lst, 1, R, PollOpt.EDGE)
        no_events(poll)
        c1 = UnixStream.connect(path)
        c2 = UnixStream.connect(path)
        with c1, c2:
            wait_for(poll, {1: Ready.READABLE})
            first, second = lst.try_accept(), lst.try_accept()
            assert first is not None and second is not None
            assert lst.try_accept() is None
            first[0].close()
            second[0].close()
            no_events(poll)


def test_connect_writable_then_hup_when_peer_drops(poll: Poll, sockdir: Path) -> None:
    path = sockdir / "h"
    with UnixListener.bind(path) as lst, UnixStream.connect(path) as client:
        poll.registry.register(client, 1, R | W, PollOpt.EDGE)
        assert wait_for(poll, {1: Ready.WRITABLE})[1].writable
        server = accept_one(lst)
        server.try_write(b"bye")
        server.close()
        seen = wait_for(poll, {1: Ready.READABLE})
        if poll.backend in ("epoll", "poll"):
            assert seen[1].read_closed
        assert client.try_read() == b"bye"
        assert client.try_read() == b""


def test_pair_events_both_ways(poll: Poll, spair: tuple[UnixStream, UnixStream]) -> None:
    a, b = spair
    poll.registry.register(a, 1, R, PollOpt.EDGE)
    poll.registry.register(b, 2, R, PollOpt.EDGE)
    no_events(poll)
    a.try_write(b"to b")
    b.try_write(b"to a")
    wait_for(poll, {1: Ready.READABLE, 2: Ready.READABLE})
    assert a.try_read() == b"to a"
    assert b.try_read() == b"to b"
    assert a.try_read() is None and b.try_read() is None
    no_events(poll)


def test_shutdown_read_gives_read_closed(poll: Poll, spair: tuple[UnixStream, UnixStream]) -> None:
    a, _b = spair
    poll.registry.register(a, 1, R, PollOpt.EDGE)
    a.shutdown(socket.SHUT_RD)
    seen = wait_for(poll, {1: Ready.READABLE})
    if poll.backend in ("epoll", "poll"):
        assert seen[1].read_closed
    assert a.try_read() == b""


def test_shutdown_write(poll: Poll, spair: tuple[UnixStream, UnixStream]) -> None:
    a, b = spair
    poll.registry.register(b, 2, R, PollOpt.EDGE)
    a.shutdown(socket.SHUT_WR)
    seen = wait_for(poll, {2: Ready.READABLE})
    if poll.backend in ("epoll", "poll"):
        assert seen[2].read_closed
    assert b.try_read() == b""
    with pytest.raises(BrokenPipeError):
        a.try_write(b"x")


def test_shutdown_both_gives_write_closed(poll: Poll, spair: tuple[UnixStream, UnixStream]) -> None:
    a, _b = spair
    poll.registry.register(a, 1, R | W, PollOpt.EDGE)
    wait_for(poll, {1: Ready.WRITABLE})
    a.shutdown(socket.SHUT_RDWR)
    seen = wait_for(poll, {1: Ready.READABLE})
    if poll.backend in ("epoll", "poll"):
        assert seen[1].write_closed
    with pytest.raises(BrokenPipeError):
        a.try_write(b"x")


def test_stream_backpressure_edge(poll: Poll, spair: tuple[UnixStream, UnixStream]) -> None:
    a, b = spair
    total = 4 << 20
    payload = memoryview(bytes(range(256)) * (total // 256))
    poll.registry.register(a, 1, W, PollOpt.EDGE)
    poll.registry.register(b, 2, R, PollOpt.EDGE)
    sent = blocked = 0
    received = bytearray()
    buf = bytearray(65536)
    events = Events(8)
    for _ in range(20_000):
        while sent < total:
            n = a.try_write(payload[sent : sent + 131072])
            if n is None:
                blocked += 1
                break
            sent += n
        while True:
            got = b.try_read_into(buf)
            if got is None:
                break
            assert got > 0
            received += buf[:got]
        if len(received) == total:
            break
        assert poll.poll(events, 3.0) > 0, "stalled"
    assert received == payload
    assert blocked > 0


def test_datagram_edge_rearm(poll: Poll, dpair: tuple[UnixDatagram, UnixDatagram]) -> None:
    a, b = dpair
    poll.registry.register(b, 2, R, PollOpt.EDGE)
    for word in (b"one", b"", b"three"):
        a.try_send(word)
        wait_for(poll, {2: Ready.READABLE})
        assert b.try_recv() == word
        assert b.try_recv() is None
        no_events(poll)


def test_datagram_writable_after_queue_drains(
    poll: Poll, dpair: tuple[UnixDatagram, UnixDatagram]
) -> None:
    a, b = dpair
    poll.registry.register(a, 1, W, PollOpt.EDGE)
    wait_for(poll, {1: Ready.WRITABLE})
    for _ in range(100_000):
        if a.try_send(b"d" * 512) is None:
            break
    else:
        pytest.fail("never blocked")
    while b.try_recv() is not None:
        pass
    wait_for(poll, {1: Ready.WRITABLE})
    assert a.try_send(b"again") == 5


def test_datagram_shutdown_events(poll: Poll, dpair: tuple[UnixDatagram, UnixDatagram]) -> None:
    a, b = dpair
    poll.registry.register(a, 1, R | W, PollOpt.EDGE)
    wait_for(poll, {1: Ready.WRITABLE})
    a.shutdown(socket.SHUT_RD)
    seen = wait_for(poll, {1: Ready.READABLE})
    if poll.backend in ("epoll", "poll"):
        assert seen[1].read_closed
    if LINUX:
        # Documented Linux fact: no end of stream on a datagram socket, so the
        # shut-down side reads "would block" and the peer's sends fail.
        assert a.try_recv() is None
        with pytest.raises(BrokenPipeError):
            b.try_send(b"refused")


def test_no_events_after_deregister(poll: Poll, spair: tuple[UnixStream, UnixStream]) -> None:
    a, b = spair
    poll.registry.register(b, 2, R, PollOpt.LEVEL)
    poll.registry.deregister(b)
    a.try_write(b"quiet")
    no_events(poll, 0.1)
    assert b.try_read() == b"quiet"
