"""metalio.net UDP: mio's udp_socket scenarios on real loopback sockets, on every backend."""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from metalio import Interest, Poll, PollOpt, Ready
from metalio.net import UdpSocket
from net_helpers import (
    needs_procfs,
    net_poll,  # noqa: F401 (the per-backend ``poll`` fixture)
    no_events,
    wait_for,
)

R, W = Interest.READABLE, Interest.WRITABLE
LOCAL4 = ("127.0.0.1", 0)


def _ipv6_ok() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _ipv6_ok(), reason="no IPv6 loopback")


def recv_soon(sock: UdpSocket, n: int = 65536) -> tuple[bytes, Any]:
    for _ in range(300):
        got = sock.try_recv_from(n)
        if got is not None:
            return got
        time.sleep(0.01)
    raise AssertionError("no datagram arrived")


@pytest.fixture
def two() -> Iterator[tuple[UdpSocket, UdpSocket]]:
    with UdpSocket.bind(LOCAL4) as a, UdpSocket.bind(LOCAL4) as b:
        yield a, b


# --------------------------------------------------------------------------
# socket level


def test_bound_socket_is_nonblocking_and_cloexec(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, _ = two
    assert os.get_blocking(a.fileno()) is False
    assert os.get_inheritable(a.fileno()) is False
    assert a.try_recv_from() is None  # statement 41
    assert a.try_recv() is None
    assert a.try_peek_from() is None
    host, port = a.local_addr()
    assert host == "127.0.0.1" and port > 0


def test_unconnected_send_to_recv_from(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    assert a.try_send_to(b"hello world", b.local_addr()) == 11
    assert b.try_send_to(bytearray(b"back"), a.local_addr()) == 4
    assert recv_soon(b) == (b"hello world", a.local_addr())
    assert recv_soon(a) == (b"back", b.local_addr())


def test_zero_length_datagram_is_data_not_eof(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    assert a.try_send_to(b"", b.local_addr()) == 0
    assert recv_soon(b) == (b"", a.local_addr())
    assert b.try_recv_from() is None


def test_peek_then_recv_same_datagram(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    a.try_send_to(b"peek", b.local_addr())
    for _ in range(300):
        peeked = b.try_peek_from()
        if peeked is not None:
            break
        time.sleep(0.01)
    assert peeked == (b"peek", a.local_addr())
    assert b.try_recv_from() == (b"peek", a.local_addr())


def test_truncation_discards_the_rest(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    a.try_send_to(b"0123456789", b.local_addr())
    a.try_send_to(b"next", b.local_addr())
    assert recv_soon(b, 4) == (b"0123", a.local_addr())
    assert recv_soon(b) == (b"next", a.local_addr())


def test_connected_send_recv_and_reconnect() -> None:
    with (
        UdpSocket.bind(LOCAL4) as a,
        UdpSocket.bind(LOCAL4) as b,
        UdpSocket.bind(LOCAL4) as c,
    ):
        a.connect(b.local_addr())
        assert a.peer_addr() == b.local_addr()
        assert a.try_send(b"to b") == 4
        assert recv_soon(b) == (b"to b", a.local_addr())
        a.connect(c.local_addr())  # re-connect switches peers
        assert a.try_send(memoryview(b"to c")) == 4
        assert recv_soon(c) == (b"to c", a.local_addr())
        b.try_send_to(b"from b", a.local_addr())  # no longer the peer: dropped
        c.try_send_to(b"from c", a.local_addr())
        for _ in range(300):
            data = a.try_recv()
            if data is not None:
                break
            time.sleep(0.01)
        assert data == b"from c"
        time.sleep(0.02)
        assert a.try_recv() is None


def test_try_send_unconnected_raises(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, _ = two
    with pytest.raises(OSError) as info:
        a.try_send(b"x")
    assert info.value.errno in (errno.EDESTADDRREQ, errno.ENOTCONN)
    with pytest.raises(OSError):
        a.peer_addr()


@pytest.mark.skipif(sys.platform != "linux", reason="send_to on a connected socket: Linux allows")
def test_send_to_on_connected_socket_linux(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    a.connect(b.local_addr())
    assert a.try_send_to(b"ok", b.local_addr()) == 2
    assert recv_soon(b) == (b"ok", a.local_addr())


@pytest.mark.skipif(sys.platform != "linux", reason="ICMP errors on connected UDP: Linux")
def test_connected_socket_reports_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(LOCAL4)
        dead = s.getsockname()
    with UdpSocket.bind(LOCAL4) as a:
        a.connect(dead)
        a.try_send(b"anyone?")
        with pytest.raises(ConnectionRefusedError):
            for _ in range(300):
                if a.try_recv() is None:
                    time.sleep(0.01)


def test_zero_sized_receive_is_refused(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, _ = two
    for call in (a.try_recv_from, a.try_recv, a.try_peek_from):
        with pytest.raises(ValueError):
            call(0)


def test_broadcast_option(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, _ = two
    assert a.broadcast() is False
    a.set_broadcast(True)
    assert a.broadcast() is True
    a.set_broadcast(False)
    assert a.broadcast() is False


def test_multicast_join_and_receive() -> None:
    with UdpSocket.bind(("0.0.0.0", 0)) as rx, UdpSocket.bind(LOCAL4) as tx:
        try:
            rx.join_multicast_v4("227.1.1.100", "127.0.0.1")
        except OSError as exc:
            pytest.skip(f"no multicast on loopback here: {exc}")
        rx.join_multicast_v4("227.1.1.101", "127.0.0.1")
        with pytest.raises(OSError):
            rx.join_multicast_v4("227.1.1.100", "127.0.0.1")  # already a member
        port = rx.local_addr()[1]
        tx.socket.setsockopt(
            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1")
        )
        assert tx.try_send_to(b"hello world", ("227.1.1.100", port)) == 11
        assert recv_soon(rx) == (b"hello world", tx.local_addr())
        rx.leave_multicast_v4("227.1.1.100", "127.0.0.1")
        rx.leave_multicast_v4("227.1.1.101", "127.0.0.1")
        with pytest.raises(OSError):
            rx.leave_multicast_v4("227.1.1.101", "127.0.0.1")


def test_multicast_arguments_are_checked(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, _ = two
    with pytest.raises(ValueError):
        a.join_multicast_v4("10.0.0.1", "0.0.0.0")  # not a multicast group
    with pytest.raises(ValueError):
        a.join_multicast_v4("227.1.1.1", "nope")
    with pytest.raises(TypeError):
        a.leave_multicast_v4(227, "0.0.0.0")  # type: ignore[arg-type]


@needs_ipv6
def test_ipv6_send_recv() -> None:
    with UdpSocket.bind(("::1", 0)) as a, UdpSocket.bind(("::1", 0)) as b:
        assert a.socket.family == socket.AF_INET6
        a.try_send_to(b"six", b.local_addr())
        data, addr = recv_soon(b)
        assert data == b"six" and addr[:2] == a.local_addr()[:2]
        with pytest.raises(ValueError):
            a.try_send_to(b"x", ("127.0.0.1", 9))  # wrong family, caught first


def test_wrong_family_and_bad_address_on_send_to(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, _ = two
    with pytest.raises(ValueError):
        a.try_send_to(b"x", ("::1", 9))
    with pytest.raises(ValueError):
        a.try_send_to(b"x", ("localhost", 9))
    with pytest.raises(TypeError):
        a.try_send_to(b"x", "127.0.0.1:9")
    with pytest.raises(ValueError):
        a.connect(("localhost", 9))


@needs_procfs
@pytest.mark.parametrize(
    ("addr", "exc"),
    [
        (("localhost", 0), ValueError),
        (("127.0.0.1", 65536), ValueError),
        (("127.0.0.1", "0"), TypeError),
        ("127.0.0.1", TypeError),
        ((1, 2), TypeError),
        (("127.0.0.1", 0, 0, 0), ValueError),
    ],
    ids=repr,
)
def test_bad_bind_address_leaks_nothing(addr: object, exc: type[Exception]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(exc):
        UdpSocket.bind(addr)  # type: ignore[arg-type]
    assert len(os.listdir("/proc/self/fd")) == before


def test_from_socket() -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(LOCAL4)
    with UdpSocket.from_socket(raw) as u:
        assert os.get_blocking(u.fileno()) is False
        assert u.try_recv_from() is None
    with socket.socket() as tcp, pytest.raises(ValueError):
        UdpSocket.from_socket(tcp)


def test_rearm_hook_on_empty_receive(two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    calls: list[int] = []
    assert a._rearm is None
    a._rearm = calls.append
    assert a.try_recv_from() is None
    assert a.try_recv() is None
    assert a.try_peek_from() is None
    assert calls == [1, 1, 1]
    assert a.try_send_to(b"x", b.local_addr()) == 1
    assert calls == [1, 1, 1]


def test_closed_socket() -> None:
    u = UdpSocket.bind(LOCAL4)
    u.close()
    u.close()
    assert u.fileno() == -1 and u.closed
    for call in (
        lambda: u.try_recv_from(),
        lambda: u.try_recv(),
        lambda: u.try_send(b"x"),
        lambda: u.try_send_to(b"x", ("127.0.0.1", 9)),
        lambda: u.local_addr(),
        lambda: u.set_broadcast(True),
    ):
        with pytest.raises((OSError, ValueError)):
            call()


# --------------------------------------------------------------------------
# poll driven, every backend


def test_empty_datagram_event(poll: Poll, two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    poll.registry.register(b, 2, R, PollOpt.EDGE)
    no_events(poll)
    a.try_send_to(b"", b.local_addr())
    wait_for(poll, {2: Ready.READABLE})
    assert b.try_recv_from() == (b"", a.local_addr())
    assert b.try_recv_from() is None


def test_unconnected_both_ways(poll: Poll, two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    poll.registry.register(a, 1, R | W, PollOpt.EDGE)
    poll.registry.register(b, 2, R | W, PollOpt.EDGE)
    wait_for(poll, {1: Ready.WRITABLE, 2: Ready.WRITABLE})
    assert a.try_recv_from() is None and b.try_recv_from() is None
    a.try_send_to(b"ping", b.local_addr())
    b.try_send_to(b"pong", a.local_addr())
    wait_for(poll, {1: Ready.READABLE, 2: Ready.READABLE})
    assert b.try_recv_from() == (b"ping", a.local_addr())
    assert a.try_recv_from() == (b"pong", b.local_addr())


def test_connected_socket_ignores_other_peers(poll: Poll) -> None:
    with (
        UdpSocket.bind(LOCAL4) as rx,
        UdpSocket.bind(LOCAL4) as tx,
        UdpSocket.bind(LOCAL4) as other,
    ):
        rx.connect(tx.local_addr())
        poll.registry.register(rx, 1, R, PollOpt.EDGE)
        other.try_send_to(b"intruder", rx.local_addr())
        no_events(poll, 0.2)
        assert rx.try_recv() is None
        tx.try_send_to(b"friend", rx.local_addr())
        wait_for(poll, {1: Ready.READABLE})
        assert rx.try_recv() == b"friend"


def test_edge_rearms_after_would_block(poll: Poll, two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    b.connect(a.local_addr())
    poll.registry.register(b, 2, R, PollOpt.EDGE)
    for word in (b"one", b"two", b"three"):
        a.try_send_to(word, b.local_addr())
        wait_for(poll, {2: Ready.READABLE})
        assert b.try_recv() == word
        assert b.try_recv() is None
        no_events(poll)


def test_level_reports_writable_and_pending_datagrams(
    poll: Poll, two: tuple[UdpSocket, UdpSocket]
) -> None:
    a, b = two
    poll.registry.register(b, 2, R | W, PollOpt.LEVEL)
    for _ in range(2):
        seen = wait_for(poll, {2: Ready.WRITABLE})
        assert not seen[2].readable
    a.try_send_to(b"x", b.local_addr())
    for _ in range(2):
        wait_for(poll, {2: Ready.READABLE | Ready.WRITABLE})
    assert b.try_recv_from() == (b"x", a.local_addr())
    seen = wait_for(poll, {2: Ready.WRITABLE})
    assert not seen[2].readable


def test_no_events_after_deregister(poll: Poll, two: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = two
    poll.registry.register(b, 2, R, PollOpt.LEVEL)
    poll.registry.deregister(b)
    a.try_send_to(b"quiet", b.local_addr())
    no_events(poll, 0.1)
    assert b.try_recv_from() == (b"quiet", a.local_addr())
