"""Each program in ``examples/`` runs in a subprocess and prints what it should.

Every run is bounded (``timeout=``); the echo server is driven over
127.0.0.1 and stopped with SIGTERM, which must give exit status 0.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 30


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_hello_notify() -> None:
    done = run_example("hello_notify.py")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Hello, world!\n"


def test_counter() -> None:
    done = run_example("counter.py")
    assert done.returncode == 0, done.stderr
    totals = [int(m) for m in re.findall(r"total (\d+)", done.stdout)]
    assert totals == [0, 1, 3, 6, 10, 10]  # running totals, then the final one
    received = [int(m) for m in re.findall(r"received (\d+)", done.stdout)]
    assert received == [0, 1, 2, 3, 4]


def test_state_game() -> None:
    t0 = time.monotonic()
    done = run_example("state_game.py")
    elapsed = time.monotonic() - t0
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == [
        "command: add 3 (count 3)",
        "command: add 2 (count 5)",
        "command: start, first serve in 250 ms",
    ]
    assert [int(v) for v in re.findall(r"A: count is (\d+)", done.stdout)] == [4, 3, 2, 1, 0]
    assert [int(v) for v in re.findall(r"serve: A sends (\d+)", done.stdout)] == [5, 4, 3, 2, 1]
    assert lines[-1] == "game over"
    # Five moves paced by a 250 ms timer: at least 1.25 s, done by itself soon after.
    assert 1.2 <= elapsed < TIMEOUT


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs SIGTERM")
def test_echo_server() -> None:
    pytest.importorskip("metalio.slab")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # bounded by the server printing at once
        match = re.fullmatch(r"listening on ([\d.]+):(\d+)\n", line)
        assert match, line
        addr = (match.group(1), int(match.group(2)))
        clients = [socket.create_connection(addr, timeout=10) for _ in range(5)]
        try:
            for round_ in range(20):
                for i, c in enumerate(clients):
                    c.sendall(f"client {i} round {round_}\n".encode())
                for i, c in enumerate(clients):
                    want = f"client {i} round {round_}\n".encode()
                    got = b""
                    while len(got) < len(want):
                        chunk = c.recv(4096)
                        assert chunk, "server closed the connection"
                        got += chunk
                    assert got == want
            big = os.urandom(1 << 20)  # more than the socket buffers: partial writes
            clients[0].sendall(big[: 1 << 19])
            received = b""
            clients[0].sendall(big[1 << 19 :])
            while len(received) < len(big):
                chunk = clients[0].recv(1 << 16)
                assert chunk
                received += chunk
            assert received == big
        finally:
            for c in clients:
                c.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert "signal SIGTERM: shutting down" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=TIMEOUT)
