"""The broadcast server, driven through the real command line over loopback sockets.

Every test starts ``python -m metalio broadcast --port 0`` in a subprocess,
reads its ``listening on HOST:PORT`` line and talks to it with plain
non-blocking sockets; the server is always killed by PID in a ``finally``.

How delivery is checked without framing: the server adds no framing and
chunks of different senders interleave wherever the server's reads cut
them, so each sender writes only byte values of its own *alphabet*
(sender ``i`` owns ``12*i .. 12*i+11``).  A receiver's stream, filtered to
one alphabet with ``bytes.translate``, must equal exactly what that sender
sent: every byte, intact, in order.  Byte ``0xFF`` belongs to nobody and is
used to synchronise (wait until the server has admitted every client).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from metalio._backends import available_backends

SYNC = 0xFF
WINDOW = 512 << 10
STEP = 64 << 10
ALPHABET = 12
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Runs the server under a low RLIMIT_NOFILE (soft and hard, so it cannot raise it).
_LIMITED = (
    "import os, resource, sys\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


# -- the server process ------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log: Path

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def _stat(self) -> list[str]:
        text = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()

    def cpu_seconds(self) -> float:
        fields = self._stat()  # fields[0] is field 3 (state); utime/stime are 14/15
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def vmhwm_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    def connect(self, **opts: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for name, value in opts.items():
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
        sock.settimeout(10)
        sock.connect(self.addr)
        sock.setblocking(False)
        return sock


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no 'listening on' line within {timeout} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"server exited before listening: {proc.wait(5)}")
            data += chunk
    return data.decode()


@contextlib.contextmanager
def broadcast_server(tmp_path: Path, *args: str, nofile: int | None = None) -> Iterator[Server]:
    cmd = [sys.executable, "-m", "metalio", "broadcast", "--port", "0", *args]
    if nofile is not None:
        cmd = [sys.executable, "-c", _LIMITED, str(nofile), *cmd]
    log = tmp_path / "server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    try:
        try:
            line = _read_line(proc, 20)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- server stderr ---\n{log.read_text()}") from None
        match = re.fullmatch(r"listening on (\S+):(\d+)\n", line)
        assert match, f"unexpected first line {line!r}"
        yield Server(proc, match.group(1), int(match.group(2)), log)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


# -- client side ---------------------------------------------------------------------


class Peer:
    """A non-blocking client socket with an outgoing queue and a record of what arrived."""

    def __init__(self, sock: socket.socket, *, keep: bool = True) -> None:
        self.sock = sock
        self.out: deque[memoryview] = deque()
        self.keep = keep
        self.data = bytearray()
        self.digest = hashlib.blake2b()
        self.nbytes = 0
        self.eof = False
        self.error: OSError | None = None

    def send(self, data: bytes) -> None:
        self.out.append(memoryview(data))

    def reset(self) -> None:
        self.data.clear()
        self.digest = hashlib.blake2b()
        self.nbytes = 0

    @property
    def open(self) -> bool:
        return not self.eof and self.error is None

    def on_readable(self, buf: memoryview) -> None:
        while True:
            try:
                n = self.sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                self.error = exc
                return
            if n == 0:
                self.eof = True
                return
            self.nbytes += n
            if self.keep:
                self.data += buf[:n]
            else:
                self.digest.update(buf[:n])

    def on_writable(self) -> None:
        while self.out:
            try:
                n = self.sock.send(self.out[0])
            except BlockingIOError:
                return
            except OSError as exc:
                self.error = exc
                self.out.clear()
                return
            if n == len(self.out[0]):
                self.out.popleft()
            else:
                self.out[0] = self.out[0][n:]

    def close(self) -> None:
        self.sock.close()


def pump(
    peers: list[Peer],
    done: Callable[[], bool],
    timeout: float,
    what: str = "",
    *,
    feed: Callable[[], None] | None = None,
    may_close: bool = False,
) -> None:
    """Move bytes for every peer until *done()* or fail after *timeout* seconds.

    *feed* runs before every wait (to queue more data); unless *may_close*,
    a peer whose connection ends fails the test at once.
    """
    buf = memoryview(bytearray(1 << 18))
    deadline = time.monotonic() + timeout
    registered: dict[int, int] = {}
    with selectors.DefaultSelector() as sel:
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s {what}")
            if not may_close:
                for i, peer in enumerate(peers):
                    if not peer.open:
                        raise AssertionError(f"peer {i} lost its connection {what}: {peer.error}")
            if feed is not None:
                feed()
            for peer in peers:
                fd = peer.sock.fileno()
                want = 0
                if peer.open:
                    want = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.out else 0)
                have = registered.get(fd, 0)
                if want == have:
                    continue
                if not want:
                    sel.unregister(fd)
                    del registered[fd]
                elif have:
                    sel.modify(fd, want, peer)
                    registered[fd] = want
                else:
                    sel.register(fd, want, peer)
                    registered[fd] = want
            for key, events in sel.select(0.05):
                peer = key.data
                if events & selectors.EVENT_WRITE:
                    peer.on_writable()
                if events & selectors.EVENT_READ:
                    peer.on_readable(buf)


def settle(peers: list[Peer], seconds: float) -> None:
    """Keep moving bytes for *seconds*."""
    end = time.monotonic() + seconds
    pump(peers, lambda: time.monotonic() >= end, seconds + 5, may_close=True)


def sync(peers: list[Peer], sender: Peer | None = None, timeout: float = 15) -> None:
    """Return once the server broadcasts to every peer (all admitted); clear what they got.

    Rounds of one ``SYNC`` byte: after a round that reached everybody nothing
    else is in flight, because each connection delivers in order.
    """
    sender = sender or peers[0]
    deadline = time.monotonic() + timeout
    while True:
        for peer in peers:
            peer.reset()
        sender.send(bytes([SYNC]))
        with contextlib.suppress(AssertionError):
            pump(peers, lambda: all(p.nbytes for p in peers), 0.5)
            break
        if time.monotonic() > deadline:
            missing = sum(1 for p in peers if not p.nbytes)
            raise AssertionError(f"{missing} of {len(peers)} peers never got a broadcast")
    settle(peers, 0.05)
    for peer in peers:
        assert peer.open, f"peer closed during sync: {peer.error}"
        peer.reset()


def connect_peers(server: Server, count: int, **kw: bool) -> list[Peer]:
    return [Peer(server.connect(), **kw) for _ in range(count)]


def close_all(peers: list[Peer]) -> None:
    for peer in peers:
        peer.close()


def alphabet(i: int) -> bytes:
    return bytes(range(ALPHABET * i, ALPHABET * (i + 1)))


def random_chunk(rng: random.Random, owner: int, size: int) -> bytes:
    table = bytes(ALPHABET * owner + v % ALPHABET for v in range(256))
    return rng.randbytes(size).translate(table)


def only(data: bytes | bytearray, owner: int) -> bytes:
    keep = set(alphabet(owner))
    return bytes(data).translate(None, bytes(v for v in range(256) if v not in keep))


def raise_own_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} descriptors, hard RLIMIT_NOFILE is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


# -- tests -------------------------------------------------------------------------------


def test_bytes_conserved_and_ordered_across_20_clients(tmp_path: Path) -> None:
    rng = random.Random(20)
    with broadcast_server(tmp_path) as server:
        peers = connect_peers(server, 20)
        try:
            sync(peers)
            sent = [bytearray() for _ in peers]
            for _ in range(12):  # chunks queued in rounds, so senders interleave
                for i, peer in enumerate(peers):
                    chunk = random_chunk(rng, i, rng.randint(1, 12_000))
                    sent[i] += chunk
                    peer.send(chunk)
            total = sum(len(s) for s in sent)
            pump(peers, lambda: all(p.nbytes >= total for p in peers), 30, "delivering")
            settle(peers, 0.1)
            for r, peer in enumerate(peers):
                assert peer.open, f"receiver {r}: {peer.error}"
                assert peer.nbytes == total, f"receiver {r} got {peer.nbytes} of {total}"
                for i in range(len(peers)):
                    assert only(peer.data, i) == sent[i], f"receiver {r}, sender {i}"
        finally:
            close_all(peers)
        assert server.proc.poll() is None


def test_slow_reader_is_cut_off_without_slowing_the_others(tmp_path: Path) -> None:
    total = 64 << 20
    block = os.urandom(1 << 20)
    expected = hashlib.blake2b(block * (total // len(block))).digest()
    with broadcast_server(tmp_path) as server:
        slow = server.connect(SO_RCVBUF=4096)
        fast = connect_peers(server, 2, keep=False)
        try:
            sync([*fast])
            started = time.monotonic()
            sent = 0
            sender = fast[0]

            def feed() -> None:
                # A well-behaved fast client: at most WINDOW bytes ahead of the
                # slowest fast reader, so the server's pacing hardly engages and
                # the test is about the slow client (stalled, then over the
                # hard limit), not about the sender being slowed down.
                nonlocal sent
                while sent < total and sent - min(p.nbytes for p in fast) < WINDOW:
                    offset = sent % len(block)
                    sender.send(block[offset : offset + STEP])
                    sent += STEP

            pump(fast, lambda: all(p.nbytes >= total for p in fast), 60, "64 MiB", feed=feed)
            elapsed = time.monotonic() - started
            for peer in fast:
                assert peer.open, peer.error
                assert peer.nbytes == total
                assert peer.digest.digest() == expected
            hwm = server.vmhwm_mib()
            assert hwm < 150, f"server VmHWM {hwm:.1f} MiB"
            # The slow client was disconnected: draining it reaches the end early.
            slow.setblocking(True)
            slow.settimeout(10)
            got = 0
            with contextlib.suppress(ConnectionResetError):
                while chunk := slow.recv(1 << 16):
                    got += len(chunk)
            assert got < total
            assert "slow reader" in server.stderr()
            print(
                f"64 MiB to 2 fast clients in {elapsed:.2f} s; VmHWM {hwm:.1f} MiB; "
                f"slow client got {got} bytes"
            )
        finally:
            slow.close()
            close_all(fast)


def test_abrupt_clients_and_garbage_do_not_disturb_others(tmp_path: Path) -> None:
    rng = random.Random(200)
    linger0 = struct.pack("ii", 1, 0)
    with broadcast_server(tmp_path) as server:
        watcher = Peer(server.connect())
        try:
            sync([watcher])
            for i in range(200):
                sock = server.connect()
                mode = i % 4
                try:
                    if mode in (0, 1):
                        with contextlib.suppress(BlockingIOError):
                            sock.send(rng.randbytes(rng.randint(1, 4096)))
                    if mode == 2:
                        sock.shutdown(socket.SHUT_WR)  # half-close, then vanish
                    if mode != 3:  # mode 3: connect and close in silence
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger0)
                finally:
                    sock.close()  # SO_LINGER 0: an RST instead of a FIN
                if i % 20 == 0:
                    settle([watcher], 0.01)
            # A working probe: two fresh clients and the watcher all get the probe bytes.
            probes = connect_peers(server, 2)
            try:
                peers = [watcher, *probes]
                sync(peers, probes[0])
                probes[1].send(alphabet(1) * 100)
                pump(peers, lambda: all(p.nbytes >= 1200 for p in peers), 10, "probe")
                for peer in peers:
                    assert peer.open and bytes(peer.data) == alphabet(1) * 100
            finally:
                close_all(probes)
        finally:
            watcher.close()
        assert server.proc.poll() is None, server.stderr()


def test_thousand_clients_each_receive_a_broadcast(tmp_path: Path) -> None:
    count = 1000
    raise_own_nofile(count + 200)
    with broadcast_server(tmp_path, "--log-level", "warning") as server:
        peers: list[Peer] = []
        try:
            for _ in range(count):
                peers.append(Peer(server.connect()))
            sync(peers, timeout=30)
            message = alphabet(3) * 10
            peers[-1].send(message)
            pump(peers, lambda: all(p.nbytes >= len(message) for p in peers), 30, "1000")
            for peer in peers:
                assert peer.open and bytes(peer.data) == message
        finally:
            close_all(peers)
        assert server.proc.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_closes_connections_and_exits_zero(tmp_path: Path, signum: int) -> None:
    with broadcast_server(tmp_path) as server:
        peers = connect_peers(server, 3)
        try:
            sync(peers)
            sent_at = time.monotonic()
            os.kill(server.proc.pid, signum)
            assert server.proc.wait(5) == 0, server.stderr()
            assert time.monotonic() - sent_at < 3
            pump(peers, lambda: not any(p.open for p in peers), 5, "closing", may_close=True)
        finally:
            close_all(peers)
        assert "shutting down" in server.stderr()


def test_max_clients_refuses_extras_and_keeps_the_rest(tmp_path: Path) -> None:
    with broadcast_server(tmp_path, "--max-clients", "3") as server:
        members = connect_peers(server, 3)
        extras: list[Peer] = []
        try:
            sync(members)
            extras = connect_peers(server, 2)
            pump(extras, lambda: not any(p.open for p in extras), 5, "extras", may_close=True)
            members[1].send(alphabet(2) * 5)
            pump(members, lambda: all(p.nbytes >= 60 for p in members), 5, "members")
            for peer in members:
                assert peer.open and bytes(peer.data) == alphabet(2) * 5
        finally:
            close_all(members + extras)
        assert "max-clients" in server.stderr()


def test_half_closed_client_keeps_receiving(tmp_path: Path) -> None:
    with broadcast_server(tmp_path) as server:
        peers = connect_peers(server, 2)
        try:
            sync(peers)
            peers[0].send(alphabet(0))
            pump(peers, lambda: all(p.nbytes >= ALPHABET for p in peers), 5)
            peers[0].sock.shutdown(socket.SHUT_WR)
            time.sleep(0.1)
            peers[1].send(alphabet(1))
            pump(peers, lambda: all(p.nbytes >= 2 * ALPHABET for p in peers), 5)
            for peer in peers:
                assert bytes(peer.data) == alphabet(0) + alphabet(1)
        finally:
            close_all(peers)


def test_out_of_descriptors_does_not_spin_and_recovers(tmp_path: Path) -> None:
    with broadcast_server(tmp_path, "--log-level", "info", nofile=64) as server:
        peers: list[Peer] = []
        try:
            for _ in range(90):  # far more than 64 descriptors
                peers.append(Peer(server.connect()))
            settle(peers, 0.7)
            alive = [p for p in peers if p.open]
            refused = [p for p in peers if not p.open]
            assert refused, "no connection was refused under RLIMIT_NOFILE 64"
            assert len(alive) >= 30, f"only {len(alive)} clients admitted"
            # No spinning: an idle second costs the server next to no CPU.
            before = server.cpu_seconds()
            time.sleep(1.0)
            spent = server.cpu_seconds() - before
            assert spent < 0.3, f"server burned {spent:.2f} s CPU while out of descriptors"
            assert "too many open files" in server.stderr().lower()
            # The admitted clients still work.
            sync(alive[:10])
            # Free some descriptors: a new client is served again.
            for peer in alive[10:30]:
                peer.close()
            time.sleep(0.3)
            newcomer = Peer(server.connect())
            peers.append(newcomer)
            group = [*alive[:10], newcomer]
            sync(group, newcomer)
            newcomer.send(alphabet(4))
            pump(group, lambda: all(p.nbytes >= ALPHABET for p in group), 5, "newcomer")
            assert bytes(newcomer.data) == alphabet(4)
            assert "accepting new clients" in server.stderr()
        finally:
            close_all(peers)
        assert server.proc.poll() is None


@pytest.mark.parametrize("backend", available_backends())
def test_every_backend_delivers_in_order(tmp_path: Path, backend: str) -> None:
    # poll and select emulate edges (re-armed when a try_* call says "would
    # block"), so the server drains there instead of stopping at short reads.
    rng = random.Random(backend)
    with broadcast_server(tmp_path, "--backend", backend) as server:
        peers = connect_peers(server, 5)
        try:
            sync(peers)
            sent = [random_chunk(rng, i, 50_000) for i in range(len(peers))]
            for peer, data in zip(peers, sent, strict=True):
                peer.send(data)
            total = sum(map(len, sent))
            pump(peers, lambda: all(p.nbytes >= total for p in peers), 20, backend)
            for peer in peers:
                for i, data in enumerate(sent):
                    assert only(peer.data, i) == data
        finally:
            close_all(peers)


def test_read_budget_continues_without_losing_bytes() -> None:
    # 64-byte reads: a 200 KB burst needs thousands of reads, far past the
    # per-turn budget, so the server must come back to the sender by itself.
    from metalio.apps import broadcast

    started = threading.Event()
    servers: list[broadcast.BroadcastServer] = []

    def on_listening(server: broadcast.BroadcastServer) -> None:
        servers.append(server)
        started.set()

    thread = threading.Thread(
        target=broadcast.serve,
        kwargs={
            "host": "127.0.0.1",
            "port": 0,
            "chunk_size": 64,
            "handle_signals": False,
            "on_listening": on_listening,
        },
    )
    thread.start()
    try:
        assert started.wait(10)
        host, port = servers[0].address
        peers = [Peer(socket.create_connection((host, port), timeout=5)) for _ in range(3)]
        try:
            for peer in peers:
                peer.sock.setblocking(False)
            sync(peers)
            burst = random_chunk(random.Random(1), 0, 200_000)
            peers[0].send(burst)
            peers[1].send(alphabet(1) * 1000)
            total = len(burst) + 12_000
            pump(peers, lambda: all(p.nbytes >= total for p in peers), 20, "burst")
            for peer in peers:
                assert only(peer.data, 0) == burst
                assert only(peer.data, 1) == alphabet(1) * 1000
        finally:
            close_all(peers)
    finally:
        if servers:
            servers[0].stop()
        thread.join(10)
    assert not thread.is_alive()


def test_serve_in_process_and_stop() -> None:
    from metalio.apps import broadcast

    started = threading.Event()
    servers: list[broadcast.BroadcastServer] = []

    def on_listening(server: broadcast.BroadcastServer) -> None:
        servers.append(server)
        started.set()

    thread = threading.Thread(
        target=broadcast.serve,
        kwargs={
            "host": "127.0.0.1",
            "port": 0,
            "handle_signals": False,
            "on_listening": on_listening,
        },
    )
    thread.start()
    try:
        assert started.wait(10)
        host, port = servers[0].address
        socks = [socket.create_connection((host, port), timeout=5) for _ in range(2)]
        try:
            peers = [Peer(s) for s in socks]
            for s in socks:
                s.setblocking(False)
            sync(peers)
            peers[0].send(b"in-process")
            pump(peers, lambda: all(p.nbytes >= 10 for p in peers), 5)
            assert all(bytes(p.data) == b"in-process" for p in peers)
        finally:
            for s in socks:
                s.close()
    finally:
        if servers:
            servers[0].stop()
        thread.join(10)
    assert not thread.is_alive()
