"""The epoll backend's readiness translation, and the kernel situations its comments name.

``test_translation_is_unchanged`` holds a frozen copy of the translation as it
was before the bits were named (bare numbers and all): the named version must
be the same function of (mask, interest) for every mask epoll can return.
The situation tests check the comments in ``epoll.py`` against the running
kernel, so a comment that stops being true fails here.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time
from collections.abc import Iterator

import pytest

from metalio import Ready

if sys.platform != "linux" or not hasattr(select, "epoll"):
    pytest.skip("epoll is Linux-only", allow_module_level=True)

from metalio._backends import epoll as epmod
from metalio._backends.epoll import EpollBackend

_IN, _OUT, _PRI = select.EPOLLIN, select.EPOLLOUT, select.EPOLLPRI
_ERR, _HUP, _RDHUP = select.EPOLLERR, select.EPOLLHUP, select.EPOLLRDHUP
_ASK_ALL = _IN | _OUT | _PRI | _RDHUP


def frozen_readiness(native_mask: int, interest: int) -> int:
    """``EpollBackend.readiness`` as of commit 8d67937, verbatim but for the name."""
    ready = 0
    if native_mask & _IN:
        ready |= 1
    if native_mask & _OUT:
        ready |= 2
    if native_mask & _PRI:
        ready |= 4
    if native_mask & _ERR:
        ready |= 8
    if native_mask & (_HUP | _RDHUP):
        ready |= 16
    if native_mask & _HUP or native_mask == _ERR or native_mask & (_OUT | _ERR) == _OUT | _ERR:
        ready |= 32
    if ready & (8 | 16) and interest & 1:
        ready |= 1
    if ready & (8 | 32) and interest & 2:
        ready |= 2
    return ready


def test_native_masks_are_every_subset_of_the_six_bits() -> None:
    masks = EpollBackend.native_masks
    assert masks is not None
    assert len(set(masks)) == 64
    assert set(masks) == {
        m for m in range(1 << 14) if m & ~(_IN | _OUT | _PRI | _ERR | _HUP | _RDHUP) == 0
    }


def test_translation_is_unchanged() -> None:
    be = EpollBackend()
    try:
        masks = EpollBackend.native_masks
        assert masks is not None
        differ = [
            (mask, interest)
            for mask in masks
            for interest in range(8)
            if be.readiness(mask, interest) != frozen_readiness(mask, interest)
        ]
        assert differ == []
    finally:
        be.close()


def test_translation_returns_plain_ints() -> None:
    # The layer above caches these and builds Ready values itself.
    assert type(epmod.readiness(_IN | _HUP, 1)) is int


# -- the kernel situations named in epoll.py -------------------------------------------------


def mask_of(fd: int, request: int = _ASK_ALL) -> int:
    ep = select.epoll()
    try:
        ep.register(fd, request)
        got = ep.poll(2.0)
    finally:
        ep.close()
    assert len(got) == 1
    return got[0][1]


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    yield client, accepted
    client.close()
    accepted.close()


def _settle(fd: int, request: int, want: int) -> int:
    # Loopback delivers FIN and RST asynchronously: wait (boundedly) until
    # the bits the test expects have all arrived, then return the mask.
    mask = 0
    for _ in range(200):
        mask = mask_of(fd, request)
        if mask & want == want:
            break
        time.sleep(0.01)
    return mask


def test_peer_fin_is_in_rdhup_and_read_closed(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = tcp_pair
    client.shutdown(socket.SHUT_WR)
    mask = _settle(accepted.fileno(), _ASK_ALL, _IN | _RDHUP)
    assert mask == _IN | _OUT | _RDHUP
    ready = Ready(epmod.readiness(mask, 1 | 2))
    assert ready.read_closed and not ready.write_closed and not ready.error


def test_reset_is_err_hup_and_everything_closed(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = tcp_pair
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
    client.close()
    mask = _settle(accepted.fileno(), _ASK_ALL, _ERR | _HUP)
    assert mask == _IN | _OUT | _ERR | _HUP | _RDHUP
    ready = Ready(epmod.readiness(mask, 1 | 2))
    assert ready.error and ready.read_closed and ready.write_closed


def test_refused_connect_is_out_err_hup() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed at once: nobody listens there
    with socket.socket() as s:
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        mask = _settle(s.fileno(), _OUT, _ERR | _HUP)
        assert mask == _OUT | _ERR | _HUP
        ready = Ready(epmod.readiness(mask, 2))
        assert ready.writable and ready.error and ready.write_closed


def test_never_connected_tcp_socket_is_out_hup() -> None:
    with socket.socket() as s:
        assert mask_of(s.fileno()) == _OUT | _HUP


def test_pipe_read_end_after_last_writer_is_hup_alone() -> None:
    r, w = os.pipe()
    try:
        os.close(w)
        mask = mask_of(r, _IN | _RDHUP)
        assert mask == _HUP
        ready = Ready(epmod.readiness(mask, 1))
        assert ready.readable and ready.read_closed
    finally:
        os.close(r)


def test_pipe_write_end_after_reader_is_out_err_or_err_alone() -> None:
    r, w = os.pipe()
    try:
        os.close(r)
        assert mask_of(w, _OUT) == _OUT | _ERR
        assert mask_of(w, _IN) == _ERR  # OUT not asked for: epoll drops it
        for mask in (_OUT | _ERR, _ERR):
            ready = Ready(epmod.readiness(mask, 2))
            assert ready.writable and ready.error and ready.write_closed
    finally:
        os.close(w)


def test_fin_both_ways_is_hup_with_everything(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = tcp_pair
    accepted.shutdown(socket.SHUT_WR)
    client.shutdown(socket.SHUT_WR)
    mask = _settle(accepted.fileno(), _ASK_ALL, _HUP)
    assert mask == _IN | _OUT | _HUP | _RDHUP
    ready = Ready(epmod.readiness(mask, 1))
    assert ready.readable and ready.read_closed and ready.write_closed and not ready.error


def test_udp_icmp_error_is_out_err_and_reads_as_write_closed() -> None:
    # The row docs/epoll.md calls the price of the pipe rule: the socket can
    # send again once its next send has raised the error.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed at once: ICMP port unreachable
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
        u.connect(("127.0.0.1", port))
        u.send(b"x")
        mask = _settle(u.fileno(), _ASK_ALL, _ERR)
        assert mask == _OUT | _ERR
        assert Ready(epmod.readiness(mask, 2)).write_closed
        with pytest.raises(ConnectionRefusedError):
            u.send(b"y")
        assert mask_of(u.fileno()) == _OUT  # writable again
