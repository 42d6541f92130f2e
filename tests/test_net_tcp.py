"""metalio.net TCP: mio's tcp, tcp_listener and tcp_stream scenarios on real loopback sockets.

The poll-driven tests run on every backend (``poll`` fixture); a backend the
Poll does not offer yet (``ValueError``) is skipped.  Every wait is bounded.
"""

from __future__ import annotations

import errno
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from metalio import Events, Interest, Poll, PollOpt, Ready
from metalio._fdio import IOV_MAX
from metalio.net import TcpListener, TcpStream
from net_helpers import (
    needs_procfs,
    net_poll,  # noqa: F401 (the per-backend ``poll`` fixture)
    no_events,
    wait_for,
)

R, W = Interest.READABLE, Interest.WRITABLE
LOCAL4 = ("127.0.0.1", 0)
LOCAL6 = ("::1", 0)


def _ipv6_ok() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_ok(), reason="no IPv6 loopback")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def wait_any(poll: Poll, token: int, timeout: float = 3.0) -> Ready:
    """Poll until *token* shows up with any readiness; return its flags (ORed)."""
    events = Events(64)
    got = Ready(0)
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        poll.poll(events, min(left, 0.5))
        for ev in events:
            if ev.token == token:
                got |= ev.readiness
        if got:
            return got
    raise AssertionError(f"no event for token {token}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def accept_one(listener: TcpListener, tries: int = 300) -> TcpStream:
    for _ in range(tries):
        got = listener.try_accept()
        if got is not None:
            return got[0]
        time.sleep(0.01)
    raise AssertionError("no connection to accept")


@pytest.fixture
def listener() -> Iterator[TcpListener]:
    with TcpListener.bind(LOCAL4) as lst:
        yield lst


@pytest.fixture
def pair(listener: TcpListener) -> Iterator[tuple[TcpStream, TcpStream]]:
    """(client, server) connected over IPv4 loopback."""
    client = TcpStream.connect(listener.local_addr())
    server = accept_one(listener)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def read_exactly(poll: Poll, stream: TcpStream, token: int, n: int) -> bytes:
    out = b""
    for _ in range(200):
        data = stream.try_read(n - len(out))
        if data is None:
            wait_for(poll, {token: Ready.READABLE})
            continue
        assert data != b"", "unexpected end of stream"
        out += data
        if len(out) == n:
            return out
    raise AssertionError(f"read {len(out)} of {n} bytes")


# --------------------------------------------------------------------------
# socket level


def test_listener_is_nonblocking_and_cloexec(listener: TcpListener) -> None:
    fd = listener.fileno()
    assert fd >= 0 and not listener.closed
    assert os.get_blocking(fd) is False
    assert os.get_inheritable(fd) is False
    assert listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
    assert listener.try_accept() is None  # statement 43: nothing pending -> None
    host, port = listener.local_addr()
    assert host == "127.0.0.1" and port > 0
    assert listener.take_error() is None


def test_connect_returns_at_once_and_accepted_stream_is_nonblocking(
    pair: tuple[TcpStream, TcpStream],
) -> None:
    client, server = pair
    for s in (client, server):
        assert os.get_blocking(s.fileno()) is False
        assert os.get_inheritable(s.fileno()) is False
        assert s.socket.gettimeout() == 0.0
        assert s.try_read() is None  # statement 41
        assert s.take_error() is None
    assert client.peer_addr() == server.local_addr()
    assert server.peer_addr() == client.local_addr()


def test_accept_returns_peer_address(listener: TcpListener) -> None:
    client = TcpStream.connect(listener.local_addr())
    try:
        got = None
        for _ in range(300):
            got = listener.try_accept()
            if got is not None:
                break
            time.sleep(0.01)
        assert got is not None
        server, addr = got
        with server:
            assert type(server) is TcpStream
            assert addr == client.local_addr()
        assert listener.try_accept() is None
    finally:
        client.close()


@needs_ipv6
def test_ipv6_roundtrip() -> None:
    with TcpListener.bind(LOCAL6) as lst:
        host, port, _flow, _scope = lst.local_addr()
        assert host == "::1"
        with TcpStream.connect(("::1", port)) as client, accept_one(lst) as server:
            assert client.socket.family == socket.AF_INET6
            for _ in range(300):
                if client.try_write(b"six") is not None:
                    break
                time.sleep(0.01)
            for _ in range(300):
                data = server.try_read()
                if data is not None:
                    break
                time.sleep(0.01)
            assert data == b"six"


@needs_ipv6
def test_ipv6_four_tuple_address_is_accepted() -> None:
    with TcpListener.bind(("::1", 0, 0, 0)) as lst:
        port = lst.local_addr()[1]
        with TcpStream.connect(("::1", port, 0, 0)) as client, accept_one(lst):
            assert client.peer_addr()[1] == port


def test_read_write_eof(pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    assert client.try_write(b"hello") == 5
    data = None
    for _ in range(300):
        data = server.try_read()
        if data is not None:
            break
        time.sleep(0.01)
    assert data == b"hello"
    assert server.try_read() is None
    client.close()
    for _ in range(300):
        data = server.try_read()
        if data is not None:
            break
        time.sleep(0.01)
    assert data == b""  # end of stream, not None
    assert server.try_read_into(bytearray(8)) == 0


def test_try_read_into_fills_the_callers_buffer(pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    buf = bytearray(b"." * 16)
    assert server.try_read_into(buf) is None
    assert buf == b"." * 16
    client.try_write(b"abcdef")
    view = memoryview(buf)[4:]
    got = None
    for _ in range(300):
        got = server.try_read_into(view)
        if got is not None:
            break
        time.sleep(0.01)
    assert got == 6
    assert buf == b"....abcdef......"


def test_zero_sized_reads_are_refused(pair: tuple[TcpStream, TcpStream]) -> None:
    _client, server = pair
    with pytest.raises(ValueError):
        server.try_read(0)
    with pytest.raises(ValueError):
        server.try_read(-1)
    with pytest.raises(ValueError):
        server.try_peek(0)
    _client.try_write(b"x")
    time.sleep(0.05)
    # With data queued, an empty buffer would read 0 bytes: refused, not EOF.
    with pytest.raises(ValueError):
        server.try_read_into(bytearray(0))
    with pytest.raises(TypeError):
        server.try_read_into(b"read-only")


def test_try_writev_mixed_buffer_types(pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    backing = bytearray(b"0123456789")
    parts: list[Any] = [b"abc", bytearray(b"de"), memoryview(backing)[2:5], b"", memoryview(b"Z")]
    assert client.try_writev(parts) == 9
    assert client.try_writev(()) == 0
    out = b""
    for _ in range(300):
        data = server.try_read()
        if data:
            out += data
        if len(out) >= 9:
            break
        time.sleep(0.01)
    assert out == b"abcde234Z"


def test_try_writev_sends_at_most_iov_max_buffers(pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    parts = [bytes([i % 251]) for i in range(IOV_MAX + 10)]
    assert client.try_writev(parts) == IOV_MAX
    out = b""
    for _ in range(300):
        data = server.try_read()
        if data:
            out += data
        if len(out) >= IOV_MAX:
            break
        time.sleep(0.01)
    assert out == b"".join(parts[:IOV_MAX])


def test_writev_generator_is_a_type_error(pair: tuple[TcpStream, TcpStream]) -> None:
    client, _ = pair
    with pytest.raises(TypeError):
        client.try_writev(b for b in [b"a"])


def test_write_until_would_block(pair: tuple[TcpStream, TcpStream]) -> None:
    client, _server = pair
    chunk = b"x" * 65536
    total = 0
    for _ in range(10_000):
        n = client.try_writev([chunk, chunk])
        if n is None:
            break
        total += n
    else:
        pytest.fail("the send buffer never filled")
    assert total > 0
    assert client.try_write(b"y") is None


def test_try_peek_leaves_data(pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    assert server.try_peek() is None
    client.try_write(b"peek")
    data = None
    for _ in range(300):
        data = server.try_peek()
        if data is not None:
            break
        time.sleep(0.01)
    assert data == b"peek"
    assert server.try_read() == b"peek"


def test_nodelay_roundtrip(pair: tuple[TcpStream, TcpStream]) -> None:
    client, _ = pair
    client.set_nodelay(True)
    assert client.nodelay() is True
    client.set_nodelay(False)
    assert client.nodelay() is False


def test_bind_twice_fails(listener: TcpListener) -> None:
    with pytest.raises(OSError) as info:
        TcpListener.bind(listener.local_addr())
    assert info.value.errno == errno.EADDRINUSE


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port_allows_two_listeners() -> None:
    with TcpListener.bind(LOCAL4, reuse_port=True) as a:
        assert a.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        with TcpListener.bind(a.local_addr(), reuse_port=True) as b:
            assert b.local_addr() == a.local_addr()


def test_backlog_is_checked() -> None:
    with pytest.raises(TypeError):
        TcpListener.bind(LOCAL4, backlog="8")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        TcpListener.bind(LOCAL4, backlog=-1)


def test_from_socket_forces_nonblocking(listener: TcpListener) -> None:
    raw = socket.create_connection(listener.local_addr())
    assert raw.gettimeout() is None
    with TcpStream.from_socket(raw) as stream, accept_one(listener):
        assert stream.socket is raw
        assert os.get_blocking(stream.fileno()) is False
        assert stream.try_read() is None
    raw_l = socket.create_server(("127.0.0.1", 0))
    with TcpListener.from_socket(raw_l) as lst:
        assert os.get_blocking(lst.fileno()) is False
        assert lst.try_accept() is None


def test_from_socket_rejects_wrong_kinds() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        with pytest.raises(ValueError):
            TcpStream.from_socket(udp)
        with pytest.raises(ValueError):
            TcpListener.from_socket(udp)
    with pytest.raises(TypeError):
        TcpStream.from_socket(3)  # type: ignore[arg-type]
    closed = socket.socket()
    closed.close()
    with pytest.raises(ValueError):
        TcpStream.from_socket(closed)


BAD_ADDRESSES: list[tuple[object, type[Exception]]] = [
    ("127.0.0.1", TypeError),
    (None, TypeError),
    (["127.0.0.1", 80], TypeError),
    ((b"127.0.0.1", 80), TypeError),
    (("127.0.0.1", "80"), TypeError),
    (("127.0.0.1", True), TypeError),
    (("127.0.0.1", 80.0), TypeError),
    (("localhost", 80), ValueError),
    (("", 80), ValueError),
    (("127.0.0.1", 70000), ValueError),
    (("127.0.0.1", -1), ValueError),
    (("127.0.0.1",), ValueError),
    (("127.0.0.1", 1, 2), ValueError),
    (("127.0.0.1", 1, 0, 0), ValueError),
    (("::1", 1, 1 << 20, 0), ValueError),
    (("::1", 1, "0", 0), TypeError),
    (("1.2.3.4.5", 80), ValueError),
    (("/tmp/sock", 80), ValueError),
]


@needs_procfs
@pytest.mark.parametrize(("addr", "exc"), BAD_ADDRESSES, ids=repr)
def test_bad_address_raises_before_creating_a_socket(addr: object, exc: type[Exception]) -> None:
    before = fd_count()
    with pytest.raises(exc):
        TcpListener.bind(addr)  # type: ignore[arg-type]
    with pytest.raises(exc):
        TcpStream.connect(addr)  # type: ignore[arg-type]
    assert fd_count() == before


@needs_procfs
def test_failed_bind_leaks_nothing(listener: TcpListener) -> None:
    before = fd_count()
    for _ in range(5):
        with pytest.raises(OSError):
            TcpListener.bind(listener.local_addr())
    assert fd_count() == before


@needs_procfs
def test_synchronous_connect_failure_leaks_nothing() -> None:
    before = fd_count()
    # TCP to a multicast address fails inside connect() (ENETUNREACH on Linux).
    try:
        stream = TcpStream.connect(("224.0.0.1", 9))
    except OSError:
        pass
    else:
        stream.close()
        pytest.skip("this kernel does not refuse TCP to multicast synchronously")
    assert fd_count() == before


def test_closed_objects(pair: tuple[TcpStream, TcpStream], listener: TcpListener) -> None:
    client, server = pair
    client.close()
    client.close()  # idempotent
    assert client.fileno() == -1 and client.closed
    for call in (
        lambda: client.try_read(),
        lambda: client.try_read_into(bytearray(4)),
        lambda: client.try_write(b"x"),
        lambda: client.try_writev([b"x"]),
        lambda: client.try_peek(),
        lambda: client.peer_addr(),
        lambda: client.local_addr(),
        lambda: client.take_error(),
        lambda: client.shutdown(socket.SHUT_WR),
        lambda: client.set_nodelay(True),
    ):
        with pytest.raises((OSError, ValueError)):
            call()
    listener.close()
    assert listener.fileno() == -1
    with pytest.raises((OSError, ValueError)):
        listener.try_accept()
    with pytest.raises(ValueError):
        server.shutdown(7)


def test_rearm_hook_called_only_on_would_block(
    pair: tuple[TcpStream, TcpStream], listener: TcpListener
) -> None:
    client, server = pair
    calls: list[int] = []
    for s in (client, server, listener):
        assert s._rearm is None  # the backends install it; None costs nothing
        s._rearm = calls.append
    assert server.try_read() is None
    assert server.try_read_into(bytearray(4)) is None
    assert server.try_peek() is None
    assert listener.try_accept() is None
    assert calls == [1, 1, 1, 1]
    calls.clear()
    assert client.try_write(b"abc") == 3
    time.sleep(0.02)
    assert server.try_read() == b"abc"
    assert calls == []  # success: no hook call
    for _ in range(10_000):
        if client.try_writev([b"w" * 65536]) is None:
            break
    assert calls == [2]
    assert client.try_write(b"w") is None
    assert calls == [2, 2]


def test_context_manager_closes() -> None:
    with TcpListener.bind(LOCAL4) as lst:
        fd = lst.fileno()
        assert fd >= 0
    assert lst.closed and lst.fileno() == -1
    assert "fd=-1" in repr(lst)


# --------------------------------------------------------------------------
# poll driven, every backend


def test_listener_edge_accept_until_none(poll: Poll, listener: TcpListener) -> None:
    poll.registry.register(listener, 1, R, PollOpt.EDGE)
    no_events(poll)
    clients = []
    try:
        # One connect: one event, one accept, then None (mio tcp_listener).
        clients.append(TcpStream.connect(listener.local_addr()))
        assert wait_for(poll, {1: Ready.READABLE})[1].readable
        got = listener.try_accept()
        assert got is not None
        got[0].close()
        assert listener.try_accept() is None
        # Two connects: at least one new event; drain with two accepts, then None.
        clients.append(TcpStream.connect(listener.local_addr()))
        clients.append(TcpStream.connect(listener.local_addr()))
        time.sleep(0.05)
        wait_for(poll, {1: Ready.READABLE})
        accepted: list[TcpStream] = []
        for _ in range(300):
            got = listener.try_accept()
            if got is None:
                if len(accepted) == 2:
                    break
                wait_for(poll, {1: Ready.READABLE})
                continue
            accepted.append(got[0])
        assert len(accepted) == 2
        for s in accepted:
            s.close()
        assert listener.try_accept() is None
        no_events(poll)  # drained EDGE source: quiet
    finally:
        for c in clients:
            c.close()


def test_listener_level_reports_until_accepted(poll: Poll, listener: TcpListener) -> None:
    poll.registry.register(listener, 5, R, PollOpt.LEVEL)
    with TcpStream.connect(listener.local_addr()):
        wait_for(poll, {5: Ready.READABLE})
        wait_for(poll, {5: Ready.READABLE})  # still pending: reported again
        got = listener.try_accept()
        assert got is not None
        got[0].close()
        no_events(poll)


def test_connect_write_read_peer_close(poll: Poll, listener: TcpListener) -> None:
    client = TcpStream.connect(listener.local_addr())
    try:
        poll.registry.register(client, 1, R | W, PollOpt.EDGE)
        assert wait_for(poll, {1: Ready.WRITABLE})[1].writable  # connect done
        assert client.take_error() is None
        server = accept_one(listener)
        with server:
            poll.registry.register(server, 2, R, PollOpt.EDGE)
            assert client.try_write(b"hello world!") == 12
            assert read_exactly(poll, server, 2, 12) == b"hello world!"
            assert server.try_read() is None
            assert server.try_write(b"back") == 4
            assert read_exactly(poll, client, 1, 4) == b"back"
            poll.registry.deregister(server)
        # peer closed: readable (read_closed on epoll), then b"".
        seen = wait_for(poll, {1: Ready.READABLE})
        if poll.backend == "epoll":
            assert seen[1].read_closed
        assert client.try_read() == b""
    finally:
        poll.registry.deregister(client)
        client.close()


def test_readiness_rearms_after_would_block(poll: Poll, pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    poll.registry.register(server, 3, R, PollOpt.EDGE)
    no_events(poll)
    client.try_write(b"hello")
    wait_for(poll, {3: Ready.READABLE})
    assert server.try_read() == b"hello"
    assert server.try_read() is None
    no_events(poll)
    client.try_write(b"again")
    wait_for(poll, {3: Ready.READABLE})
    assert server.try_read() == b"again"


def test_accept_would_block_rearms_edge(poll: Poll, listener: TcpListener) -> None:
    poll.registry.register(listener, 1, R, PollOpt.EDGE)
    streams = []
    try:
        for _ in range(3):
            streams.append(TcpStream.connect(listener.local_addr()))
            wait_for(poll, {1: Ready.READABLE})
            got = listener.try_accept()
            assert got is not None
            streams.append(got[0])
            assert listener.try_accept() is None
            no_events(poll)
    finally:
        for s in streams:
            s.close()


def test_16mib_transfer_with_backpressure(poll: Poll, listener: TcpListener) -> None:
    total = 16 << 20
    payload = memoryview(random.Random(7).randbytes(total))
    client = TcpStream.connect(listener.local_addr())
    server: TcpStream | None = None
    try:
        poll.registry.register(client, 1, W, PollOpt.EDGE)
        wait_for(poll, {1: Ready.WRITABLE})
        server = accept_one(listener)
        poll.registry.register(server, 2, R, PollOpt.EDGE)
        received = bytearray()
        buf = bytearray(65536)
        sent = would_block_w = would_block_r = 0
        events = Events(16)
        write_ready = read_ready = True
        for _ in range(50_000):
            if write_ready:
                while sent < total:
                    n = client.try_write(payload[sent : sent + 262144])
                    if n is None:
                        would_block_w += 1
                        write_ready = False
                        break
                    sent += n
                else:
                    write_ready = False
            if read_ready:
                while True:
                    got = server.try_read_into(buf)
                    if got is None:
                        would_block_r += 1
                        read_ready = False
                        break
                    assert got > 0, "unexpected end of stream"
                    received += buf[:got]
            if len(received) == total:
                break
            assert poll.poll(events, 3.0) > 0, "stalled: no event within 3 s"
            for ev in events:
                if ev.token == 1 and ev.writable:
                    write_ready = True
                if ev.token == 2 and ev.readable:
                    read_ready = True
        assert sent == total
        assert len(received) == total
        assert received == payload
        assert would_block_w > 0, "backpressure never reached"
        assert would_block_r > 0
    finally:
        client.close()
        if server is not None:
            server.close()


def test_connection_refused(poll: Poll) -> None:
    port = free_port()
    try:
        stream = TcpStream.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return  # reported synchronously: allowed
    with stream:
        poll.registry.register(stream, 9, R | W, PollOpt.EDGE)
        ready = wait_any(poll, 9)
        assert ready & (Ready.WRITABLE | Ready.ERROR), ready
        err = stream.take_error()
        assert isinstance(err, ConnectionRefusedError)
        assert stream.take_error() is None  # SO_ERROR is cleared by reading it


def test_reset_by_peer_gives_eof_or_reset_never_data(poll: Poll, listener: TcpListener) -> None:
    client = TcpStream.connect(listener.local_addr())
    server = accept_one(listener)
    with server:
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        poll.registry.register(server, 4, R, PollOpt.EDGE)
        wait_for(poll, {4: Ready.READABLE})
        try:
            data = server.try_read()
        except ConnectionResetError:
            return
        assert data == b""


def test_write_after_peer_reset_raises(poll: Poll, listener: TcpListener) -> None:
    client = TcpStream.connect(listener.local_addr())
    server = accept_one(listener)
    with server:
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        poll.registry.register(server, 4, W, PollOpt.LEVEL)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(1000):
                if server.try_write(b"x" * 1024) is None:
                    wait_for(poll, {4: Ready.WRITABLE})


def test_peer_shutdown_write_gives_read_closed(
    poll: Poll, pair: tuple[TcpStream, TcpStream]
) -> None:
    client, server = pair
    poll.registry.register(client, 1, R, PollOpt.EDGE)
    server.shutdown(socket.SHUT_WR)
    seen = wait_for(poll, {1: Ready.READABLE})
    if poll.backend in ("epoll", "poll"):
        assert seen[1].read_closed and seen[1].hup
    assert client.try_read() == b""
    # The other direction still works.
    poll.registry.register(server, 2, R, PollOpt.EDGE)
    assert client.try_write(b"still") == 5
    assert read_exactly(poll, server, 2, 5) == b"still"


def test_local_shutdown_read(poll: Poll, pair: tuple[TcpStream, TcpStream]) -> None:
    client, _server = pair
    poll.registry.register(client, 1, R, PollOpt.EDGE)
    client.shutdown(socket.SHUT_RD)
    seen = wait_for(poll, {1: Ready.READABLE})
    if poll.backend in ("epoll", "poll"):
        assert seen[1].read_closed
    assert client.try_read() == b""


def test_local_shutdown_write(poll: Poll, pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    poll.registry.register(server, 2, R, PollOpt.EDGE)
    client.shutdown(socket.SHUT_WR)
    # Linux gives the shutting side no write_closed (mio ignores that test
    # there); the peer sees end of stream, and writing raises BrokenPipe.
    wait_for(poll, {2: Ready.READABLE})
    assert server.try_read() == b""
    with pytest.raises(BrokenPipeError):
        client.try_write(b"x")
    with pytest.raises(BrokenPipeError):
        client.try_writev([b"x"])


def test_local_shutdown_both(poll: Poll, pair: tuple[TcpStream, TcpStream]) -> None:
    client, _server = pair
    poll.registry.register(client, 1, R | W, PollOpt.EDGE)
    wait_for(poll, {1: Ready.WRITABLE})
    client.shutdown(socket.SHUT_RDWR)
    seen = wait_for(poll, {1: Ready.READABLE})
    if poll.backend in ("epoll", "poll"):
        assert seen[1].write_closed and seen[1].read_closed
    with pytest.raises(BrokenPipeError):
        client.try_write(b"x")
    assert client.try_read() == b""


def test_write_then_drop_delivers_exact_bytes(poll: Poll, listener: TcpListener) -> None:
    client = TcpStream.connect(listener.local_addr())
    with client:
        server = accept_one(listener)
        poll.registry.register(server, 2, W, PollOpt.EDGE)
        wait_for(poll, {2: Ready.WRITABLE})
        assert server.try_write(bytes([1, 2, 3, 4])) == 4
        poll.registry.deregister(server)
        server.close()
        poll.registry.register(client, 3, R, PollOpt.EDGE)
        wait_for(poll, {3: Ready.READABLE})
        assert client.try_read() == bytes([1, 2, 3, 4])
        assert client.try_read() == b""


def test_no_events_after_deregister(poll: Poll, pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    poll.registry.register(server, 2, R, PollOpt.LEVEL)
    client.try_write(b"one")
    wait_for(poll, {2: Ready.READABLE})
    poll.registry.deregister(server)
    no_events(poll)
    client.try_write(b"two")
    time.sleep(0.02)
    no_events(poll)
    assert server.try_read() == b"onetwo"  # still usable directly


def test_reregister_changes_token_and_interest(
    poll: Poll, pair: tuple[TcpStream, TcpStream]
) -> None:
    client, _ = pair
    poll.registry.register(client, 1, R, PollOpt.LEVEL)
    no_events(poll)  # connected, nothing to read: no event for READABLE
    poll.registry.reregister(client, 2, W, PollOpt.LEVEL)
    seen = wait_for(poll, {2: Ready.WRITABLE})
    assert 1 not in seen


def test_edge_after_deregister_and_close_is_tolerated(poll: Poll, listener: TcpListener) -> None:
    stream = TcpStream.connect(listener.local_addr())
    poll.registry.register(stream, 1, R | W, PollOpt.EDGE)
    stream.close()
    events = Events(8)
    poll.poll(events, 0.05)
    assert all(ev.token != 1 for ev in events)
    poll.registry.deregister(stream)  # tolerant teardown of a closed object


@pytest.mark.skipif(sys.platform != "linux", reason="urgent data mapping checked on Linux")
def test_priority_event_on_oob_data(poll: Poll, pair: tuple[TcpStream, TcpStream]) -> None:
    client, server = pair
    poll.registry.register(client, 1, R | Interest.PRIORITY, PollOpt.EDGE)
    server.socket.send(b"!", socket.MSG_OOB)
    seen = wait_for(poll, {1: Ready.PRIORITY})
    assert seen[1].priority
