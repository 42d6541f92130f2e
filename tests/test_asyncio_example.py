"""``examples/asyncio_broadcast.py`` in a subprocess, over real sockets on 127.0.0.1.

Broadcast clients talk to the metalio side while health checks go to the
asyncio side of the same thread; SIGINT and SIGTERM must end it with status
0.  Every read has a socket timeout and the process a bounded wait; it is
killed (by its PID) if it outlives the test.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "asyncio_broadcast.py"
TIMEOUT = 30


@pytest.fixture
def example() -> Iterator[tuple[subprocess.Popen[str], tuple[str, int], tuple[str, int]]]:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "--port", "0", "--health-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        addrs = []
        for name in ("broadcast", "health"):
            line = proc.stdout.readline()  # bounded: the example prints both at once
            match = re.fullmatch(rf"{name} on ([\d.]+):(\d+)\n", line)
            assert match, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
            addrs.append((match.group(1), int(match.group(2))))
        yield proc, addrs[0], addrs[1]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=TIMEOUT)


def http_get(addr: tuple[str, int], path: str) -> tuple[int, bytes]:
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, body


def recv_exactly(s: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, "connection closed"
        got += chunk
    return got


def wait_for_clients(addr: tuple[str, int], n: int) -> bytes:
    """Poll /health until it reports *n* clients (the accept may lag the connect)."""
    for _ in range(500):
        status, body = http_get(addr, "/health")
        assert status == 200
        if f'"clients": {n}'.encode() in body:
            return body
    raise AssertionError(f"/health never reported {n} clients: {body!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_health_and_broadcast_then_clean_exit(example: Any, signum: int) -> None:
    proc, bcast, health = example
    assert http_get(health, "/health") == (200, b'{"status": "ok", "clients": 0}\n')
    assert http_get(health, "/nope")[0] == 404
    clients = [socket.create_connection(bcast, timeout=10) for _ in range(3)]
    try:
        wait_for_clients(health, 3)
        for i, c in enumerate(clients):
            msg = f"hello from {i}\n".encode()
            c.sendall(msg)
            for r in clients:  # everyone gets it, the sender too
                assert recv_exactly(r, len(msg)) == msg
            # The asyncio side keeps answering while metalio broadcasts.
            assert http_get(health, "/health")[0] == 200
        # A closed client looks half-closed until a write to it fails
        # (BroadcastServer keeps half-closed clients): broadcast until it is gone.
        clients.pop().close()
        for _ in range(50):
            clients[0].sendall(b"ping\n")
            for r in clients:
                assert recv_exactly(r, 5) == b"ping\n"
            if b'"clients": 2' in http_get(health, "/health")[1]:
                break
        else:
            raise AssertionError("the closed client was never dropped")
    finally:
        for c in clients:
            c.close()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert out.endswith("stopped\n")
    assert f"received {signal.Signals(signum).name}: shutting down" in err
