"""Count a server's system calls per round trip under load, with ``strace -c``.

Starts ``bench/echo/servers/NAME.py`` (each given NAME, optionally
``NAME@base`` with ``--baseline DIR`` as in ``echo/run.py``), drives it with
the C load generator for a few seconds, attaches ``strace -c -f`` for the
measured window only, and prints per round trip: reads, reads that failed
with EAGAIN, writes, ``epoll_wait`` calls.  What it shows: whether a server
pays the would-block read that readiness tracking removes.

Usage: python bench/strace_echo.py [--size 1024] [--conns 10] [--seconds 3]
       [--baseline DIR] NAME [NAME ...]
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "echo"))
import run as echo_run  # noqa: E402


def strace_table(text: str) -> dict[str, tuple[int, int]]:
    """``strace -c`` output -> syscall: (calls, errors)."""
    out: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(\d*)\s*(\w+)\s*$", line)
        if m:
            out[m.group(3)] = (int(m.group(1)), int(m.group(2) or 0))
    return out


def measure(name: str, args: argparse.Namespace, loadgen: str) -> dict[str, float]:
    server = echo_run.launch_server(name, None)
    try:
        echo_run.wait_ready(server)
        gen = subprocess.Popen(
            [
                loadgen,
                "-p",
                str(server.port),
                "-c",
                str(args.conns),
                "-s",
                str(args.size),
                "-d",
                str(args.seconds),
                "-w",
                "0.5",
                "-S",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert gen.stdin is not None and gen.stdout is not None
        assert gen.stdout.readline().strip() == "warm"
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(server.pid)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(0.5)  # strace attached
        gen.stdin.write("go\n")
        gen.stdin.flush()
        result = json.loads(gen.stdout.readline())
        tracer.send_signal(signal.SIGINT)
        _, err = tracer.communicate(timeout=30)
        gen.stdin.write("quit\n")
        gen.stdin.flush()
        gen.wait(10)
    finally:
        server.stop()
    table = strace_table(err)
    rts = float(result["round_trips"])
    reads = table.get("read", (0, 0))
    readv = table.get("readv", (0, 0))
    return {
        "round trips": rts,
        "reads/rt": (reads[0] + readv[0]) / rts,
        "EAGAIN reads/rt": (reads[1] + readv[1]) / rts,
        "writes/rt": (table.get("write", (0, 0))[0] + table.get("writev", (0, 0))[0]) / rts,
        "epoll_wait/rt": table.get("epoll_wait", (0, 0))[0] / rts,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--conns", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--baseline")
    args = ap.parse_args(argv)
    if args.baseline:
        echo_run.BASELINE["dir"] = args.baseline
    loadgen = echo_run.prepare_loadgen("c").argv[0]
    print(f"{args.size} B x {args.conns} connections, {args.seconds} s under strace -c -f")
    print("| server | round trips | reads/rt | EAGAIN reads/rt | writes/rt | epoll_wait/rt |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.names:
        r = measure(name, args, loadgen)
        print(
            f"| {name} | {r['round trips']:.0f} | {r['reads/rt']:.3f} | "
            f"{r['EAGAIN reads/rt']:.3f} | {r['writes/rt']:.3f} | {r['epoll_wait/rt']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
