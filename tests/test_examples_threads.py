"""The multi-threaded serving examples, run as real programs on 127.0.0.1.

``examples/threaded_oneshot.py`` (N threads polling one ``Poll``, every
source ``EDGE | ONESHOT``) and ``examples/reuseport_loops.py`` (one
``EventLoop`` per thread, ``SO_REUSEPORT`` listeners) each run in a
subprocess with two threads and a CPU-heavy handler, are driven by several
clients at once, and are stopped by SIGINT or SIGTERM, which must give exit
status 0.  Every wait is bounded.

The free-threaded CI lane sets ``METALIO_EXPECT_NO_GIL=1``; then the GIL
must be off in this process and in the servers it starts.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 30
EXPECT_NO_GIL = os.environ.get("METALIO_EXPECT_NO_GIL") == "1"
EXAMPLE_NAMES = ["threaded_oneshot.py", "reuseport_loops.py"]

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_sigmask") or not hasattr(socket, "SO_REUSEPORT"),
    reason="the examples need pthread_sigmask and SO_REUSEPORT",
)


def gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def test_gil_is_off_where_the_lane_expects_it() -> None:
    if not EXPECT_NO_GIL:
        pytest.skip("METALIO_EXPECT_NO_GIL is not set (only the free-threaded lane sets it)")
    assert hasattr(sys, "_is_gil_enabled"), f"not a free-threaded build: {sys.version}"
    assert not gil_enabled(), "the GIL was re-enabled (an extension module not marked safe?)"


class Server:
    """One example program in a subprocess, with its address."""

    def __init__(self, name: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / name), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline()  # bounded: printed at once, or EOF
        match = re.match(r"listening on ([\d.]+):(\d+) \((\d+) ", self.banner)
        if not match:
            self.kill()
            pytest.fail(f"no banner: {self.banner!r}")
        self.addr = (match.group(1), int(match.group(2)))

    def stop(self, signum: int) -> tuple[str, str]:
        """Send *signum* and return the rest of stdout and stderr; status must be 0."""
        self.proc.send_signal(signum)
        out, err = self.proc.communicate(timeout=TIMEOUT)
        assert self.proc.returncode == 0, (self.proc.returncode, out, err)
        return out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=TIMEOUT)


def send_in_pieces(sock: socket.socket, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        sock.sendall(data[start : start + piece])


def echo_concurrently(
    addr: tuple[str, int], payloads: list[bytes], piece: int = 1 << 20
) -> list[bytes]:
    """One connection per payload, all sent at once (pipelined) in sends of at
    most *piece* bytes, and all echoes read back."""
    socks = [socket.create_connection(addr, timeout=TIMEOUT) for _ in payloads]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    received = [bytearray() for _ in payloads]
    senders = [
        threading.Thread(target=send_in_pieces, args=(s, p, piece), daemon=True)
        for s, p in zip(socks, payloads, strict=True)
    ]
    try:
        for t in senders:
            t.start()
        with selectors.DefaultSelector() as sel:
            for i, s in enumerate(socks):
                sel.register(s, selectors.EVENT_READ, i)
            deadline = time.monotonic() + TIMEOUT
            remaining = sum(len(p) for p in payloads)
            while remaining:
                assert time.monotonic() < deadline, "echo timed out"
                for key, _ in sel.select(timeout=1.0):
                    i = key.data
                    chunk = socks[i].recv(65536)
                    assert chunk, f"server closed connection {i} early"
                    received[i] += chunk
                    remaining -= len(chunk)
                    if len(received[i]) >= len(payloads[i]):
                        sel.unregister(socks[i])
        for t in senders:
            t.join(TIMEOUT)
    finally:
        for s in socks:
            s.close()
    return [bytes(r) for r in received]


def numbered(client: int, lines: int) -> bytes:
    return b"".join(b"client %3d line %6d\n" % (client, n) for n in range(lines))


@pytest.fixture(params=EXAMPLE_NAMES)
def example(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_echo_with_two_threads_and_clean_stop(example: str, signum: int) -> None:
    server = Server(example, "--threads", "2", "--work", "2000")
    try:
        assert f"(2 {'threads' if 'oneshot' in example else 'loops'}" in server.banner
        if EXPECT_NO_GIL:
            assert "GIL off" in server.banner, server.banner
        # Round trips: eight clients, each waiting for its own echo.
        clients = [socket.create_connection(server.addr, timeout=TIMEOUT) for _ in range(8)]
        try:
            for round_ in range(10):
                for i, c in enumerate(clients):
                    c.sendall(b"client %d round %d\n" % (i, round_))
                for i, c in enumerate(clients):
                    want = b"client %d round %d\n" % (i, round_)
                    got = b""
                    while len(got) < len(want):
                        chunk = c.recv(4096)
                        assert chunk, "server closed the connection"
                        got += chunk
                    assert got == want
        finally:
            for c in clients:
                c.close()
        # One client still connected when the signal comes: the server closes it.
        idle = socket.create_connection(server.addr, timeout=TIMEOUT)
        idle.sendall(b"ping\n")
        assert idle.recv(16) == b"ping\n"
        out, _err = server.stop(signum)
        assert f"signal {signal.Signals(signum).name}: shutting down" in out
        assert idle.recv(16) == b""  # EOF: closed at shutdown, not left hanging
        idle.close()
        if "reuseport" in example:
            match = re.search(r"connections per loop: \[(\d+), (\d+)\]", out)
            assert match, out
            assert int(match[1]) + int(match[2]) == 9, out  # 8 clients and the idle one
    finally:
        server.kill()


def test_pipelined_streams_keep_their_order(example: str) -> None:
    # Each client pipelines ~200 KiB of numbered lines without waiting: with
    # two threads working, a connection handled by both at once would echo
    # its bytes out of order.  Large bursts also fill the socket buffers, so
    # the servers' partial-write path (pending bytes, WRITABLE) is exercised.
    server = Server(example, "--threads", "4", "--work", "2000")
    try:
        payloads = [numbered(i, 9000) for i in range(8)]
        for round_ in range(3):
            # Sent in small pieces (no Nagle): many separate arrivals, so many
            # new edges while a thread is still draining the connection.
            echoes = echo_concurrently(server.addr, payloads, piece=220)
            for i, (sent, got) in enumerate(zip(payloads, echoes, strict=True)):
                where = first_difference(sent, got)
                assert got == sent, f"round {round_} client {i}: echo differs at byte {where}"
        server.stop(signal.SIGTERM)
    finally:
        server.kill()


def test_many_short_connections(example: str) -> None:
    # Connections come and go while both threads serve: tokens/slots are
    # freed and reused, and nothing leaks or crashes the server.
    server = Server(example, "--threads", "2")
    try:
        for batch in range(5):
            payloads = [b"batch %d conn %d\n" % (batch, i) * 50 for i in range(12)]
            assert echo_concurrently(server.addr, payloads) == payloads
        out, _ = server.stop(signal.SIGTERM)
        if "reuseport" in example:
            assert re.search(r"connections per loop: \[\d+, \d+\]", out), out
    finally:
        server.kill()


def test_one_thread_also_works(example: str) -> None:
    server = Server(example, "--threads", "1", "--work", "100")
    try:
        payloads = [numbered(i, 2000) for i in range(3)]
        assert echo_concurrently(server.addr, payloads) == payloads
        server.stop(signal.SIGINT)
    finally:
        server.kill()


def first_difference(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))
