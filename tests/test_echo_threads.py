"""``metalio echo --threads N``: one loop per thread on one port (``metalio.apps.threads``)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest

TIMEOUT = 30


def start(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "metalio", "echo", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.match(r"listening on 127\.0\.0\.1:(\d+)", line)
    assert m, (line, proc.stderr.read() if proc.stderr else "")
    return proc, int(m.group(1))


def test_two_threads_share_the_port_and_stop_on_sigterm() -> None:
    proc, port = start("--threads", "2")
    try:
        clients = [
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(40)
        ]
        for round_ in range(3):
            for i, c in enumerate(clients):
                c.sendall(b"%d:%d;" % (i, round_))
            for i, c in enumerate(clients):
                want = b"%d:%d;" % (i, round_)
                got = b""
                while len(got) < len(want):
                    got += c.recv(len(want) - len(got))
                assert got == want
        for c in clients:
            c.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    # Both loops accepted clients (40 connections land on one of two
    # listeners by a hash: both get some, except with odds of 2**-39).
    accepted = set(re.findall(r"\[(loop-\d)\]: client \d+ connected", err))
    assert accepted == {"loop-0", "loop-1"}, err


def test_one_thread_is_the_plain_server() -> None:
    proc, port = start("--threads", "1")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            c.sendall(b"x")
            assert c.recv(1) == b"x"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_bad_thread_counts_are_refused(bad: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "metalio", "echo", "--port", "0", "--threads", bad],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 2
    assert "--threads" in proc.stderr
