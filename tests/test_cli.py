"""The ``metalio`` command line: help, version, argument errors, echo and the client.

Everything runs the real entry points in subprocesses (``python -m metalio``
and the installed ``metalio`` script); servers are killed by PID in a
``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import metalio
from metalio.cli import find_bench, parse_size

MODULE = [sys.executable, "-m", "metalio"]


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODULE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def server(
    tmp_path: Path, command: str, *args: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    log = tmp_path / f"{command}.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [*MODULE, command, "--port", "0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, f"no 'listening on' line: {log.read_text()}"
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, f"unexpected first line {line!r}"
        yield proc, int(match.group(1))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


# -- help and version -------------------------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"metalio {metalio.__version__} (speedups: {metalio.speedups})"


@pytest.mark.parametrize("command", ["broadcast", "echo", "client"])
def test_help_of_each_command(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: metalio {command}")
    assert "--help" in result.stdout


def test_broadcast_help_documents_the_limits_and_their_defaults() -> None:
    text = " ".join(run("broadcast", "--help").stdout.split())
    for option in ("--max-buffer", "--soft-buffer", "--slow-timeout"):
        assert option in text
    assert "default: 1M" in text and "default: 256K" in text and "default: 10)" in text


def test_top_level_help_lists_every_command() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("broadcast", "echo", "client", "bench"):
        assert command in result.stdout


def test_bare_module_prints_usage_and_exits_2() -> None:
    result = run()
    assert result.returncode == 2
    assert result.stderr.startswith("usage: metalio")
    assert "required" in result.stderr


def test_console_script_is_installed() -> None:
    script = shutil.which("metalio", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the metalio console script is not installed next to this interpreter")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.strip() == f"metalio {metalio.__version__} (speedups: {metalio.speedups})"


def test_bench_without_checkout_or_with_help() -> None:
    if find_bench() is None:
        result = run("bench")
        assert result.returncode == 2
        assert "bench/echo/run.py" in result.stderr
    else:
        result = run("bench", "--help", timeout=60)
        assert result.returncode == 0, result.stderr
        assert "usage" in result.stdout.lower()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["broadcast", "--port", "70000"], "port must be in 0..65535"),
        (["broadcast", "--port", "seven"], "invalid port"),
        (["broadcast", "--max-buffer", "12X"], "invalid size"),
        (["broadcast", "--max-buffer", "0"], "at least 1 byte"),
        (["broadcast", "--max-clients", "0"], "must be at least 1"),
        (["broadcast", "--soft-buffer", "lots"], "invalid size"),
        (["broadcast", "--slow-timeout", "soon"], "invalid duration"),
        (["broadcast", "--slow-timeout", "0"], "positive number of seconds"),
        (["broadcast", "--slow-timeout", "inf"], "positive number of seconds"),
        (["echo", "--soft-buffer", "1M"], "unrecognized arguments"),
        (["broadcast", "--backend", "nope"], "invalid choice"),
        (["broadcast", "--log-level", "loud"], "invalid choice"),
        (["echo", "--max-buffer", "1M"], "unrecognized arguments"),
        (["client", "127.0.0.1"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert message in result.stderr


def test_address_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("broadcast", "--port", str(port))
    assert result.returncode == 1
    assert "cannot serve on 127.0.0.1" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("1048576", 1 << 20),
        ("64K", 64 << 10),
        ("1M", 1 << 20),
        ("1MiB", 1 << 20),
        ("2g", 2 << 30),
        (" 512 kb ", 512 << 10),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "M", "-1", "1.5M", "1T", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


# -- the echo server -----------------------------------------------------------------


def test_echo_round_trip_with_backpressure_and_sigterm(tmp_path: Path) -> None:
    payload = os.urandom(8 << 20)
    with server(tmp_path, "echo") as (proc, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            # Send 8 MiB in one go from a thread while reading: the server stops
            # reading whenever this client is behind, and nothing is lost.
            writer = threading.Thread(target=sock.sendall, args=(payload,))
            writer.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = sock.recv(1 << 16)
                assert chunk, "echo server closed early"
                got += chunk
            writer.join(10)
            assert bytes(got) == payload
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(1) == b""  # end of stream is echoed as a close
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            time.sleep(0.1)
            started = time.monotonic()
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(5) == 0
            assert time.monotonic() - started < 3
            assert idle.recv(1) == b""
    assert "received SIGTERM" in (tmp_path / "echo.log").read_text()


# -- the client ------------------------------------------------------------------------


def test_client_talks_to_broadcast_server(tmp_path: Path) -> None:
    with server(tmp_path, "broadcast") as (proc, port):
        client = subprocess.Popen(
            [*MODULE, "client", "127.0.0.1", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert client.stdin is not None and client.stdout is not None
            with socket.create_connection(("127.0.0.1", port), timeout=10) as other:
                # Wait until the client is admitted: its bytes come back to it.
                deadline = time.monotonic() + 10
                client.stdin.write(b"hello\n")
                client.stdin.flush()
                assert select.select([client.stdout], [], [], 10)[0]
                assert client.stdout.readline() == b"hello\n"
                other.sendall(b"from the other side\n")
                assert client.stdout.readline() == b"from the other side\n"
                assert time.monotonic() < deadline
            client.stdin.close()  # half-close: the client keeps printing
            os.kill(proc.pid, signal.SIGTERM)
            assert proc.wait(5) == 0
            assert client.wait(5) == 0
        finally:
            if client.poll() is None:
                os.kill(client.pid, signal.SIGKILL)
            client.wait(5)
            for stream in (client.stdout, client.stderr):
                if stream is not None:
                    stream.close()


def test_client_reports_refused_connection() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connecting is refused
        result = run("client", "127.0.0.1", str(port))
    assert result.returncode == 1
    assert "cannot connect" in result.stderr


def _fake_bench(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'exe': sys.executable, 'main': __name__}))\n"
        + body
    )
    return script


def test_bench_runs_the_script_in_a_child_with_the_short_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import json

    import metalio.cli as cli

    script = _fake_bench(tmp_path, "")
    monkeypatch.setattr(cli, "find_bench", lambda: script)
    for args, expected in [
        ([], ["--quick"]),
        (["--full", "--json", "x"], ["--full", "--json", "x"]),
        (["--servers", "epoll_floor"], ["--quick", "--servers", "epoll_floor"]),
        (["--help"], ["--help"]),
    ]:
        assert cli.main(["bench", *args]) == 0
        seen = json.loads(capfd.readouterr().out)
        assert seen["argv"] == expected
        # A script run by this interpreter, not a module imported into this process.
        assert seen["exe"] == sys.executable
        assert seen["main"] == "__main__"
    assert "metalio_bench_echo_run" not in sys.modules


@pytest.mark.parametrize(("body", "status"), [("sys.exit(3)\n", 3), ("raise SystemExit(0)\n", 0)])
def test_bench_forwards_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, status: int
) -> None:
    import metalio.cli as cli

    monkeypatch.setattr(cli, "find_bench", lambda: _fake_bench(tmp_path, body))
    assert cli.main(["bench", "--quick"]) == status


def test_bench_child_killed_by_a_signal_gives_128_plus_n(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import metalio.cli as cli

    body = "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n"
    monkeypatch.setattr(cli, "find_bench", lambda: _fake_bench(tmp_path, body))
    assert cli.main(["bench"]) == 128 + signal.SIGTERM


def test_bench_without_a_checkout_says_so_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import metalio.cli as cli

    monkeypatch.setattr(cli, "find_bench", lambda: None)
    assert cli.main(["bench", "--full"]) == 2
    err = capsys.readouterr().err
    assert "source checkout only" in err
    assert "bench/echo/run.py" in err
