"""``metalio broadcast --relay`` and ``--workers``: the real CLI in subprocesses.

Nodes are separate ``python -m metalio broadcast`` processes on one real
``redis-server`` (one per module on a free port, or one per test where the
test kills it), with real client sockets on 127.0.0.1.  Every process is
stopped by PID in a ``finally`` (workers too, found by their PIDs in the
log).  Without redis-server or hiredis the tests that need them skip,
except under ``CI=true``, where they fail.

Every client's bytes are drawn from its own alphabet (high nibble: the
sender, low nibble: a counter mod 16), so a receiver can split what it got
per sender whatever the chunk boundaries were, and check each sender's
bytes are all there and in order.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_helpers import (
    RedisServer,
    free_port,
    redis_server,
    require_hiredis,
    require_redis,
    wait_until,
)

# /proc for process states and CPU times; SO_REUSEPORT balancing as on Linux.
pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux only (/proc, SO_REUSEPORT)"
)

MODULE = [sys.executable, "-m", "metalio"]
EXTRA = "pip install 'metalio[relay]'"


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


# -- processes --------------------------------------------------------------------


class Broadcast:
    """One ``metalio broadcast`` process (maybe a worker parent); its log in a file."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.log_path = tmp_path / f"{name}.log"
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*MODULE, "broadcast", "--port", "0", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        try:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 30)
            assert ready, f"no 'listening on' line: {self.log()}"
            line = self.proc.stdout.readline().decode()
            match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
            assert match, f"unexpected first line {line!r}: {self.log()}"
            self.port = int(match.group(1))
        except BaseException:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 20) -> None:
        wait_until(lambda: self.count(pattern) >= count, timeout, f"{pattern!r} x{count}")

    def worker_pids(self) -> set[int]:
        return {int(p) for p in re.findall(r"worker \d+ \(pid (\d+)\) listening", self.log())}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.worker_pids():  # never leave a worker behind
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def alive(pid: int) -> bool:
    """Whether *pid* is a live metalio process (not a zombie, not a reused pid)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return state != "Z" and b"metalio" in cmdline


@contextlib.contextmanager
def broadcasts(
    tmp_path: Path, count: int, *args: str, name: str = "node"
) -> Iterator[list[Broadcast]]:
    made: list[Broadcast] = []
    try:
        for i in range(count):
            made.append(Broadcast(tmp_path, f"{name}{i}", *args))
        yield made
    finally:
        for node in made:
            node.kill()


# -- clients ----------------------------------------------------------------------


class Client:
    """A blocking client socket with a reader thread that keeps everything it gets."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.local_port = self.sock.getsockname()[1]
        self.data = bytearray()
        self.eof = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(1 << 16):
                self.data += chunk
        except OSError:
            pass
        self.eof = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


@contextlib.contextmanager
def clients(ports: list[int]) -> Iterator[list[Client]]:
    made: list[Client] = []
    try:
        for port in ports:
            made.append(Client(port))
        yield made
    finally:
        for client in made:
            client.close()


def stream(sender: int, size: int, start: int = 0) -> bytes:
    """*size* bytes of *sender*'s alphabet, the counter going on from *start*."""
    cycle = bytes((sender << 4) | ((start + i) & 15) for i in range(16))
    return (cycle * (size // 16 + 1))[:size]


def send_in_pieces(client: Client, data: bytes, seed: int) -> None:
    """Send *data* in pieces of varied sizes (1 byte .. 40 KiB)."""
    sizes = [1, 7, 1000, 40960, 333, 4096, 65536 - 1]
    i = 0
    k = seed
    while i < len(data):
        n = sizes[k % len(sizes)]
        client.sock.sendall(data[i : i + n])
        i += n
        k += 1


def per_sender(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytearray] = {}
    for byte in data:
        out.setdefault(byte >> 4, bytearray()).append(byte)
    return {k: bytes(v) for k, v in out.items()}


def check_received(client: Client, sent: dict[int, bytes], timeout: float = 30) -> None:
    """*client* got every sender's bytes, whole and in order, and nothing else."""
    total = sum(len(v) for v in sent.values())
    wait_until(lambda: len(client.data) >= total or client.eof, timeout, f"{total} bytes")
    assert not client.eof, f"disconnected after {len(client.data)} of {total} bytes"
    time.sleep(0.1)  # anything extra would show now
    got = per_sender(bytes(client.data))
    assert set(got) == set(sent)
    for sender, data in sent.items():
        assert len(got[sender]) == len(data), sender
        assert got[sender] == data, f"sender {sender}: bytes out of order or corrupted"


def connected(node: Broadcast, count: int) -> None:
    node.wait_log(r"client \d+ connected from", count)


# -- bad input ----------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODULE, "broadcast", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def test_workers_without_relay_is_refused() -> None:
    result = run("--workers", "2")
    assert result.returncode == 2, result
    assert "--workers 2 needs --relay" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:99999", "redis://"])
def test_a_bad_relay_url_is_refused(url: str) -> None:
    require_hiredis()  # without it, the missing extra is what is reported
    result = run("--relay", url)
    assert result.returncode == 2, result
    assert "bad --relay URL" in result.stderr and "redis://" in result.stderr
    assert "listening" not in result.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_without_hiredis_the_extra_is_named(tmp_path: Path, workers: str) -> None:
    # A module named hiredis that fails to import hides the real one.
    (tmp_path / "hiredis.py").write_text("raise ImportError('hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    result = run("--relay", "redis://127.0.0.1:6379", "--workers", workers, env=env)
    assert result.returncode == 2, result
    assert EXTRA in result.stderr and "hiredis" in result.stderr
    assert "Traceback" not in result.stderr
    assert "listening" not in result.stdout


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_unreachable_redis_at_start_serves_local_clients_and_retries(tmp_path: Path) -> None:
    require_hiredis()
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    with broadcasts(tmp_path, 1, "--relay", url) as (node,):
        node.wait_log(r"relay: redis://127\.0\.0\.1:\d+/metalio:broadcast: .*retrying in")
        with clients([node.port, node.port]) as (a, b):
            connected(node, 2)
            a.sock.sendall(b"local still works")
            wait_until(lambda: bytes(b.data) == b"local still works", what="local delivery")
        before = cpu_seconds(node.proc.pid)
        time.sleep(1.5)
        assert cpu_seconds(node.proc.pid) - before < 0.5  # retrying is not spinning
        assert node.proc.poll() is None


# -- several nodes ---------------------------------------------------------------------


@pytest.mark.parametrize("count", [2, 3])
def test_nodes_deliver_every_senders_bytes_in_order(
    tmp_path: Path, redis: RedisServer, count: int
) -> None:
    channel = f"{redis.url}/nodes{count}"
    with broadcasts(tmp_path, count, "--relay", channel) as group:
        for node in group:
            node.wait_log("relay: up on")
        ports = [node.port for node in group for _ in range(2)]
        with clients(ports) as made:
            for node in group:
                connected(node, 2)
            sent = {i: stream(i, 150_000 + 1000 * i) for i in range(len(made))}
            senders = [
                threading.Thread(target=send_in_pieces, args=(made[i], sent[i], i))
                for i in range(len(made))
            ]
            for thread in senders:
                thread.start()
            for thread in senders:
                thread.join(30)
            for client in made:  # the senders included, on their own node
                check_received(client, sent)
        for node in group:
            assert "relay loss" not in node.log()


def test_redis_killed_and_restarted_mid_stream(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer()
    server.start()
    try:
        a_args = ("--relay", server.url)
        with (
            broadcasts(tmp_path, 1, *a_args) as (a,),
            broadcasts(tmp_path, 1, *a_args, "--relay-loss", "close", name="b") as (b,),
        ):
            a.wait_log("relay: up on")
            b.wait_log("relay: up on")
            with clients([a.port, a.port, b.port]) as (sender, local, remote):
                connected(a, 2)
                connected(b, 1)
                one = stream(0, 50_000)
                send_in_pieces(sender, one, 0)
                check_received(remote, {0: one})

                server.kill()
                a.wait_log("relay: lost")
                b.wait_log("relay: lost")
                two = stream(0, 30_000, start=len(one))
                send_in_pieces(sender, two, 1)  # local clients are still served
                check_received(local, {0: one + two})
                # --relay-loss close: B's client was told by a disconnect.
                wait_until(lambda: remote.eof, what="B's client closed")
                assert re.search(r"relay loss \(relay lost: .*\): closing 1 local client", b.log())
                assert re.search(r"relay loss \(relay lost: .*\): 2 local clients kept", a.log())
                assert local.eof is False and sender.eof is False

                server.start()  # the same port
                for node in (a, b):
                    node.wait_log(r"relay: back on redis://\S+ after \d+\.\d+ s cut off")
                with clients([b.port]) as (late,):
                    connected(b, 2)
                    three = stream(0, 40_000, start=len(one) + len(two))
                    send_in_pieces(sender, three, 2)
                    check_received(late, {0: three})  # cross-node delivery again
                    check_received(local, {0: one + two + three})
    finally:
        server.stop()


# -- workers -----------------------------------------------------------------------------


def test_workers_share_the_port_relay_between_them_and_stop_on_sigterm(
    tmp_path: Path, redis: RedisServer
) -> None:
    node = Broadcast(tmp_path, "workers", "--workers", "2", "--relay", f"{redis.url}/workers")
    try:
        wait_until(lambda: len(node.worker_pids()) == 2, 20, "two workers listening")
        pids = node.worker_pids()
        assert node.proc.pid not in pids
        node.wait_log("relay: up on", 2)
        with clients([]) as made:
            where: dict[int, int] = {}  # client index -> worker pid
            for _ in range(60):
                client = Client(node.port)
                made.append(client)
                pattern = rf"\[(\d+)\]: client \d+ connected from 127\.0\.0\.1:{client.local_port} "
                node.wait_log(pattern)
                found = re.search(pattern, node.log())
                assert found is not None
                where[len(made) - 1] = int(found.group(1))
                if len(set(where.values())) == 2 and len(made) >= 4:
                    break
            assert set(where.values()) == pids, "clients did not land on both workers"
            first = {pid: next(i for i, p in where.items() if p == pid) for pid in pids}
            senders = sorted(first.values())
            sent = {k: stream(k, 120_000) for k in range(len(senders))}
            threads = [
                threading.Thread(target=send_in_pieces, args=(made[i], sent[k], k))
                for k, i in enumerate(senders)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            for client in made:
                check_received(client, sent)
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(20) == 0
        wait_until(lambda: not any(alive(pid) for pid in pids), 10, "workers gone")
        log = node.log()
        assert "stopping 2 workers" in log
        assert len(re.findall(r"worker \d \(pid \d+\) exited with status 0", log)) == 2, log
        assert "killed" not in log
    finally:
        node.kill()


def test_a_worker_that_dies_stops_the_others(tmp_path: Path, redis: RedisServer) -> None:
    node = Broadcast(tmp_path, "dying", "--workers", "2", "--relay", f"{redis.url}/dying")
    try:
        wait_until(lambda: len(node.worker_pids()) == 2, 20, "two workers listening")
        victim, other = sorted(node.worker_pids())
        os.kill(victim, signal.SIGKILL)
        assert node.proc.wait(20) == 1
        assert re.search(rf"worker \d \(pid {victim}\) was killed by SIGKILL; stopping", node.log())
        wait_until(lambda: not alive(other), 10, "the other worker gone")
    finally:
        node.kill()


# -- pacing across nodes -------------------------------------------------------------


def test_a_relayed_flood_is_paced_to_the_receivers_of_the_node(
    tmp_path: Path, redis: RedisServer
) -> None:
    # B's reader takes its bytes through a small receive buffer: without pausing the
    # relay, B would queue Redis's flood for it until --max-buffer cut it off.
    channel = f"{redis.url}/flood"
    size = 12 << 20
    with (
        broadcasts(tmp_path, 1, "--relay", channel) as (a,),
        broadcasts(tmp_path, 1, "--relay", channel, "--max-buffer", "512K", name="b") as (b,),
    ):
        a.wait_log("relay: up on")
        b.wait_log("relay: up on")
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", b.port))
        with clients([a.port]) as (sender,):
            reader = Client.__new__(Client)
            reader.sock, reader.data, reader.eof = slow, bytearray(), False
            reader.thread = threading.Thread(target=reader._read, daemon=True)
            reader.thread.start()
            try:
                connected(a, 1)
                connected(b, 1)
                data = stream(1, size)
                send_in_pieces(sender, data, 0)
                check_received(reader, {1: data}, timeout=45)
                check_received(sender, {1: data}, timeout=10)
                assert "disconnected" not in b.log()
            finally:
                reader.close()


def test_help_documents_the_relay_options() -> None:
    result = subprocess.run(
        [*MODULE, "broadcast", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in ("--relay URL", "--relay-loss {keep,close}", "--workers N", EXTRA):
        assert option in text, option
    assert "SO_REUSEPORT" in text and "at-most-once" in text


def test_a_stalled_redis_paces_the_local_sender_instead_of_dropping(tmp_path: Path) -> None:
    # Redis stopped (SIGSTOP) for less than the pacing patience while a local client
    # floods: node A stops reading it once Redis stops taking PUBLISHes, so nothing
    # overflows A's relay buffer and B's client gets every byte.
    require_redis()
    server = RedisServer()
    server.start()
    size = 24 << 20
    try:
        args = ("--relay", server.url)
        with (
            broadcasts(tmp_path, 1, *args) as (a,),
            broadcasts(tmp_path, 1, *args, name="b") as (b,),
        ):
            a.wait_log("relay: up on")
            b.wait_log("relay: up on")
            with clients([a.port, b.port]) as (sender, remote):
                connected(a, 1)
                connected(b, 1)
                data = stream(2, size)
                flood = threading.Thread(target=send_in_pieces, args=(sender, data, 3))
                flood.start()
                try:
                    wait_until(lambda: len(remote.data) > 2 << 20, 30, "the flood under way")
                    server.signal(signal.SIGSTOP)
                    time.sleep(0.4)
                    server.signal(signal.SIGCONT)
                finally:
                    flood.join(45)
                check_received(remote, {2: data}, timeout=45)
                check_received(sender, {2: data}, timeout=10)
        stats = re.search(r"relay: closed \(RelayStats\(published=(\d+), dropped=(\d+)", a.log())
        assert stats is not None and int(stats.group(1)) > 0
        assert stats.group(2) == "0", a.log()[-3000:]
        assert "relay loss" not in a.log() + b.log()
    finally:
        server.signal(signal.SIGCONT) if server.proc else None
        server.stop()
