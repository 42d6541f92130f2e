"""Broadcast flow control through the real command line: pacing, soft and hard limits.

Every test runs ``python -m metalio broadcast --port 0 ...`` in a subprocess,
waits for its ``listening on HOST:PORT`` line and talks to it over loopback
with plain sockets; the server is killed by PID in a ``finally``.  The
heavy streams are moved by one thread per socket (blocking sockets with a
timeout), so the test side keeps up with the server; the 50-sender test
uses one selector loop.  No assertion depends on speed: a time is only
ever checked from below ("not before the timeout") or with a wide window.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metalio._backends import available_backends

MiB = 1 << 20
BACKENDS = [b for b in ("epoll", "poll") if b in available_backends()]


# -- the server process ------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> float:
        """Wait until the log matches *pattern*; return the time it was first seen."""
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while not regex.search(self.text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not logged within {timeout} s:\n{self.text()}")
            time.sleep(0.02)
        return time.monotonic()

    def vmhwm_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    def connect(self, rcvbuf: int | None = None, mss: int | None = None) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if mss is not None:
            # A small segment size keeps the server's send buffer for this
            # connection small too (Linux sizes it in segments), so a backlog
            # shows in the server's queue after kilobytes, not megabytes.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def stop(self) -> str:
        """SIGTERM, wait for the clean exit, return the whole log."""
        os.kill(self.proc.pid, signal.SIGTERM)
        assert self.proc.wait(10) == 0, self.text()
        return self.text()


@contextlib.contextmanager
def broadcast_server(tmp_path: Path, *args: str) -> Iterator[Server]:
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "metalio", "broadcast", "--port", "0", *args]
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(20), f"no 'listening on' line:\n{log.read_text()}"
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, f"unexpected first line {line!r}"
        yield Server(proc, int(match.group(1)), log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


def addr_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


# -- threaded clients ---------------------------------------------------------------------


class Reader(threading.Thread):
    """Reads *expect* bytes (after an optional stall), hashing them."""

    def __init__(self, sock: socket.socket, expect: int, *, stall: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.expect = expect
        self.stall = stall
        self.digest = hashlib.blake2b()
        self.nbytes = 0
        self.eof = False
        self.error: OSError | None = None

    def run(self) -> None:
        if self.stall:
            time.sleep(self.stall)
        view = memoryview(bytearray(1 << 18))
        try:
            while self.nbytes < self.expect:
                n = self.sock.recv_into(view, min(len(view), self.expect - self.nbytes))
                if n == 0:
                    self.eof = True
                    return
                self.digest.update(view[:n])
                self.nbytes += n
        except OSError as exc:
            self.error = exc

    def check(self, expected: bytes, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"reader stuck at {self.nbytes} of {self.expect} bytes"
        assert self.error is None and not self.eof, (
            f"reader cut off at {self.nbytes} bytes: {self.error or 'end of stream'}"
        )
        assert self.nbytes == self.expect
        assert self.digest.digest() == expected


class Writer(threading.Thread):
    """Sends *count* copies of *block*."""

    def __init__(self, sock: socket.socket, block: bytes, count: int) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.block = block
        self.count = count
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            for _ in range(self.count):
                self.sock.sendall(self.block)
        except OSError as exc:
            self.error = exc

    def check(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), "sender stuck"
        assert self.error is None, f"sender failed: {self.error}"


def stream_digest(block: bytes, count: int) -> bytes:
    digest = hashlib.blake2b()
    for _ in range(count):
        digest.update(block)
    return digest.digest()


@contextlib.contextmanager
def closing(socks: list[socket.socket]) -> Iterator[None]:
    try:
        yield
    finally:
        for sock in socks:
            sock.close()


# -- a flood with continuous readers ----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_flood_paces_the_sender_and_disconnects_no_reader(tmp_path: Path, backend: str) -> None:
    # Default limits: before pacing, the small-buffer reader was cut off as a
    # "slow reader" within milliseconds although it never stopped reading.
    count = 200
    block = os.urandom(MiB)
    expected = stream_digest(block, count)
    total = count * len(block)
    with broadcast_server(tmp_path, "--backend", backend) as server:
        sender = server.connect()
        readers = [server.connect(), server.connect(rcvbuf=16 << 10)]
        with closing([sender, *readers]):
            server.wait_for(r"\(3 connected\)", 20)
            threads = [Reader(sock, total) for sock in (sender, *readers)]
            for thread in threads:
                thread.start()
            writer = Writer(sender, block, count)
            writer.start()
            writer.check(120)
            for thread in threads:
                thread.check(expected, 60)
            hwm = server.vmhwm_mib()
            assert hwm < 150, f"server VmHWM {hwm:.1f} MiB"
        log = server.stop()
    assert "disconnected: slow reader" not in log
    paused = re.search(r"senders paused (\d+) time", log)
    assert paused and int(paused.group(1)) > 0, log[-2000:]


# -- a stalled reader, a short stall --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_stalled_reader_is_cut_off_after_the_slow_timeout_not_before(
    tmp_path: Path, backend: str
) -> None:
    timeout = 2.0
    block = os.urandom(MiB)
    args = ("--backend", backend, "--max-buffer", "64M", "--slow-timeout", str(timeout))
    with broadcast_server(tmp_path, *args) as server:
        sender = server.connect()
        healthy = server.connect()
        stalled = server.connect(rcvbuf=4096)  # never read
        stalled_addr = addr_of(stalled)
        with closing([sender, healthy, stalled]):
            server.wait_for(r"\(3 connected\)", 20)
            first, second = 8, 4
            threads = [Reader(sock, (first + second) * MiB) for sock in (sender, healthy)]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            writer = Writer(sender, block, first)
            writer.start()
            gone = server.wait_for(re.escape(f"({stalled_addr}) disconnected"), 30)
            waited = gone - started
            # Its slow clock cannot start before the flood did.
            assert waited >= timeout, f"cut off after {waited:.2f} s, before --slow-timeout"
            assert waited < timeout + 20
            writer.check(30)
            # The others go on: another 4 MiB reach both after the disconnect.
            writer = Writer(sender, block, second)
            writer.start()
            writer.check(30)
            expected = stream_digest(block, first + second)
            for thread in threads:
                thread.check(expected, 30)
        log = server.stop()
    line = next(x for x in log.splitlines() if f"({stalled_addr}) disconnected" in x)
    assert "slow reader" in line and "--slow-timeout" in line, line
    assert log.count("disconnected: slow reader") == 1, log


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_stall_then_catch_up_keeps_every_byte(tmp_path: Path, backend: str) -> None:
    # 1.5 s without reading: longer than pacing waits for one receiver (1 s),
    # so the staller lags, but shorter than --slow-timeout (3 s): once it has
    # caught up it must be kept, also after its slow clock would have run out.
    count = 16
    block = os.urandom(MiB)
    args = ("--backend", backend, "--max-buffer", "64M", "--slow-timeout", "3")
    with broadcast_server(tmp_path, *args) as server:
        sender = server.connect()
        steady = server.connect()
        staller = server.connect(rcvbuf=8192)
        with closing([sender, steady, staller]):
            server.wait_for(r"\(3 connected\)", 20)
            threads = [
                Reader(sender, (count + 1) * MiB),
                Reader(steady, (count + 1) * MiB),
                Reader(staller, (count + 1) * MiB, stall=1.5),
            ]
            for thread in threads:
                thread.start()
            started = time.monotonic()
            writer = Writer(sender, block, count)
            writer.start()
            writer.check(60)
            while threads[2].nbytes < count * MiB and time.monotonic() - started < 60:
                time.sleep(0.05)
            time.sleep(max(0.0, started + 4.5 - time.monotonic()))
            writer = Writer(sender, block, 1)  # still a member: gets the next bytes
            writer.start()
            writer.check(30)
            for thread in threads:
                thread.check(stream_digest(block, count + 1), 60)
        log = server.stop()
    assert "disconnected: slow reader" not in log


@pytest.mark.parametrize("backend", BACKENDS)
def test_over_the_hard_limit_a_reader_is_cut_off_at_once(tmp_path: Path, backend: str) -> None:
    block = os.urandom(MiB)
    args = ("--backend", backend, "--max-buffer", "2M", "--slow-timeout", "60")
    with broadcast_server(tmp_path, *args) as server:
        sender = server.connect()
        stalled = server.connect(rcvbuf=4096, mss=1024)  # never read
        stalled_addr = addr_of(stalled)
        with closing([sender, stalled]):
            server.wait_for(r"\(2 connected\)", 20)
            echo = Reader(sender, 8 * MiB)
            echo.start()
            writer = Writer(sender, block, 8)
            writer.start()
            # Long before the 60 s slow timeout could run out.
            server.wait_for(re.escape(f"({stalled_addr}) disconnected"), 30)
            writer.check(30)
            echo.check(stream_digest(block, 8), 30)
        log = server.stop()
    line = next(x for x in log.splitlines() if f"({stalled_addr}) disconnected" in x)
    assert "slow reader" in line and "--max-buffer" in line, line


# -- 50 senders, pacing on and off ------------------------------------------------------------

SYMBOLS = 5  # sender i owns byte values 5*i .. 5*i+4 (50 senders: 0..249)


def owned(i: int) -> bytes:
    return bytes(range(SYMBOLS * i, SYMBOLS * (i + 1)))


def pump(
    socks: list[socket.socket],
    outgoing: list[bytearray],
    received: list[bytearray],
    done: Callable[[], bool],
    timeout: float,
) -> None:
    for sock in socks:
        sock.setblocking(False)
    buf = memoryview(bytearray(1 << 17))
    sent = [0] * len(socks)
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, i)
        while not done():
            assert time.monotonic() < deadline, f"not delivered within {timeout} s"
            for key, events in sel.select(0.1):
                i = key.data
                sock = socks[i]
                if events & selectors.EVENT_READ:
                    with contextlib.suppress(BlockingIOError):
                        # Read less per turn than is sent: receivers fall behind
                        # and the server has to pace the senders.
                        n = sock.recv_into(buf, 2048)
                        assert n, f"client {i} was disconnected"
                        received[i] += buf[:n]
                if events & selectors.EVENT_WRITE:
                    # Pieces: many senders interleave at the server.
                    piece = memoryview(outgoing[i])[sent[i] : sent[i] + 16384]
                    with contextlib.suppress(BlockingIOError):
                        sent[i] += sock.send(piece)
                    if sent[i] == len(outgoing[i]):
                        sel.modify(sock, selectors.EVENT_READ, i)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fifty_senders_keep_order_and_bytes_while_pacing_flips(
    tmp_path: Path, backend: str
) -> None:
    senders = 50
    rng = random.Random(backend)
    args = ("--backend", backend, "--soft-buffer", "64K", "--max-buffer", "16M")
    with broadcast_server(tmp_path, *args, "--slow-timeout", "30") as server:
        # Small buffers: the kernel cannot hide the backlog, the server queues.
        socks = [server.connect(rcvbuf=4096, mss=1024) for _ in range(senders)]
        with closing(socks):
            server.wait_for(rf"\({senders} connected\)", 30)
            outgoing = []
            for i in range(senders):
                table = bytes(SYMBOLS * i + v % SYMBOLS for v in range(256))
                outgoing.append(
                    bytearray(rng.randbytes(rng.randint(8_000, 32_000)).translate(table))
                )
            total = sum(map(len, outgoing))
            received = [bytearray() for _ in socks]
            pump(socks, outgoing, received, lambda: all(len(r) >= total for r in received), 50)
        log = server.stop()
    drop = [bytes(v for v in range(256) if v not in owned(i)) for i in range(senders)]
    for r, data in enumerate(received):
        assert len(data) == total, f"client {r}: {len(data)} of {total} bytes"
        for i in range(senders):
            assert data.translate(None, drop[i]) == outgoing[i], f"client {r}, sender {i}"
    paused = re.search(r"senders paused (\d+) times?, (\d+) resumed", log)
    assert paused, log[-2000:]
    assert int(paused.group(1)) >= 5 and int(paused.group(2)) >= 5, paused.group(0)
    assert "disconnected: slow reader" not in log
