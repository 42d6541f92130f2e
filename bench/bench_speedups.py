"""What the C core saves per descriptor call: ``metalio._speedups`` against the Python road.

Four cases, each timed per call on a pipe whose capacity is raised to
1 MiB (``F_SETPIPE_SZ``) so that a batch of 1 KiB calls never blocks:

* ``read, would block``  -- ``read(fd, 65536)`` on an empty pipe (``None``)
* ``read 1 KiB``         -- ``read(fd, 1024)`` with data queued
* ``read 1 KiB of 64``   -- ``read(fd, 65536)`` getting 1 KiB (what a server's
  ``try_read()`` does: the 64 KiB object is allocated, then shrunk); on a
  Unix ``SOCK_SEQPACKET`` pair, where each read returns one queued message
* ``write 1 KiB``        -- ``write(fd, data)`` with room
* ``writev 4 x 256 B``   -- ``writev(fd, [b0, b1, b2, b3])`` with room

and three ways to make each call:

* ``C``        -- the extension's function (``None`` on would-block, no exception)
* ``os+except``-- the pure-Python reference: ``os.read``/``os.write``/``os.writev``
  inside ``try/except BlockingIOError`` (what metalio does without the C core)
* ``plain os`` -- the bare ``os`` call, no wrapper (for would-block: the bare
  call raising ``BlockingIOError`` caught by the timing loop itself)

Refilling and draining the pipe happen outside the timed loops.  Every case
is timed in batches, interleaved, best of ``--repeats``; the ratios compare
within the same run.  Nothing is asserted; the table is printed.

    python bench/bench_speedups.py                # 1000 calls x 50 batches x 5 repeats
    python bench/bench_speedups.py --calls 500 --batches 20 --repeats 3
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import sys
import time
from collections.abc import Callable

from metalio import _speedups_loader as loader

try:
    from metalio import _speedups as c_core
except ImportError:
    sys.exit("metalio._speedups is not built: install with a C compiler (see docs/speedups.md)")

KIB = 1024
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def make_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # an unprivileged user above pipe-max-size: batches get smaller
    return r, w


def make_seqpacket() -> tuple[socket.socket, socket.socket]:
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    writer.setblocking(False)
    reader.setblocking(False)
    writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    return reader, writer


def drain(r: int) -> None:
    try:
        while os.read(r, 1 << 20):
            pass
    except BlockingIOError:
        pass


def refill(w: int, calls: int, chunk: bytes) -> None:
    for _ in range(calls):
        os.write(w, chunk)


def plain_would_block(read: Callable[[int, int], bytes], fd: int, calls: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(calls):
        try:
            read(fd, 65536)
        except BlockingIOError:
            pass
    return time.perf_counter_ns() - start


def timed(call: Callable[[int, object], object], fd: int, arg: object, calls: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(calls):
        call(fd, arg)
    return time.perf_counter_ns() - start


def run(calls: int, batches: int, repeats: int) -> dict[str, dict[str, float]]:
    r, w = make_pipe()
    seq_r, seq_w = make_seqpacket()
    data = b"d" * KIB
    parts = [b"a" * 256, b"b" * 256, b"c" * 256, b"e" * 256]
    ways: dict[str, dict[str, tuple[Callable[..., object], bool]]] = {
        "read, would block": {
            "C": (c_core.read, False),
            "os+except": (loader.py_read, False),
            "plain os": (os.read, True),
        },
        "read 1 KiB": {
            "C": (c_core.read, False),
            "os+except": (loader.py_read, False),
            "plain os": (os.read, False),
        },
        "read 1 KiB of 64": {
            "C": (c_core.read, False),
            "os+except": (loader.py_read, False),
            "plain os": (os.read, False),
        },
        "write 1 KiB": {
            "C": (c_core.write, False),
            "os+except": (loader.py_write, False),
            "plain os": (os.write, False),
        },
        "writev 4 x 256 B": {
            "C": (c_core.writev, False),
            "os+except": (loader.py_writev, False),
            "plain os": (os.writev, False),
        },
    }
    best: dict[str, dict[str, float]] = {case: {} for case in ways}
    try:
        for _ in range(repeats):
            for case, impls in ways.items():
                for way, (fn, raises) in impls.items():
                    total = 0
                    for _ in range(batches):
                        if case == "read 1 KiB":
                            refill(w, calls, data)
                            total += timed(fn, r, KIB, calls)
                        elif case == "read 1 KiB of 64":
                            refill(seq_w.fileno(), calls, data)
                            total += timed(fn, seq_r.fileno(), 65536, calls)
                        elif case == "read, would block":
                            total += (
                                plain_would_block(fn, r, calls)  # type: ignore[arg-type]
                                if raises
                                else timed(fn, r, 65536, calls)
                            )
                        else:
                            total += timed(
                                fn, w, data if case.startswith("write ") else parts, calls
                            )
                            drain(r)
                    per_call = total / (calls * batches)
                    old = best[case].get(way)
                    best[case][way] = per_call if old is None else min(old, per_call)
    finally:
        os.close(r)
        os.close(w)
        seq_r.close()
        seq_w.close()
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per batch (<= 1024)")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    calls = min(args.calls, PIPE_SIZE // KIB)
    best = run(calls, args.batches, args.repeats)
    print(
        f"Python {sys.version.split()[0]}, {calls} calls x {args.batches} batches, best of "
        f"{args.repeats}; ns per call"
    )
    header = (
        f"{'case':<20}{'C':>8}{'os+except':>11}{'plain os':>10}{'os+except/C':>13}{'plain/C':>9}"
    )
    print(header)
    print("-" * len(header))
    for case, row in best.items():
        c, ref, plain = row["C"], row["os+except"], row["plain os"]
        print(f"{case:<20}{c:>8.0f}{ref:>11.0f}{plain:>10.0f}{ref / c:>12.2f}x{plain / c:>8.2f}x")


if __name__ == "__main__":
    main()
