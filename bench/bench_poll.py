"""Cost of one ``Poll.poll()`` call that returns one ready event, by registered count.

For every backend, N idle sources (eventfds at 0, or socketpair ends where
there is no eventfd) and one ready source (an eventfd holding 1) are
registered LEVEL; one call is ``poll.poll(events, 0)``.  Next to it runs a
bare ``select.epoll`` loop over the same descriptors (``ep.poll(0)`` and a walk
over the result): the floor any Python library on epoll pays.

    python bench/bench_poll.py            # 10, 1,000 and the largest N the fd limit allows
    python bench/bench_poll.py --json out.json

Targets (issue 2): on epoll the cost with the most sources registered is
within 10% of the cost with 10 (O(ready), not O(registered)), and metalio's
overhead per event over bare ``select.epoll`` is at most 0.5 us.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import select
import socket
import sys
import time
from collections.abc import Callable

import metalio
from metalio import Events, Interest, Poll
from metalio._backends import available_backends

SELECT_LIMIT = 1000  # select(2) cannot watch fd numbers >= FD_SETSIZE (1024)


def _idle_sources(n: int) -> tuple[list[int], list[socket.socket]]:
    fds: list[int] = []
    socks: list[socket.socket] = []
    for _ in range(n):
        if hasattr(os, "eventfd"):
            fds.append(os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
        else:  # pragma: no cover - non-Linux
            a, b = socket.socketpair()
            socks += (a, b)
            fds.append(a.fileno())
    return fds, socks


def _ready_source() -> int:
    if hasattr(os, "eventfd"):  # an eventfd holding 1 stays readable (LEVEL)
        return os.eventfd(1, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    r, w = os.pipe()  # pragma: no cover - non-Linux
    os.write(w, b"x")
    return r


def _time_per_call(call: Callable[[], object], calls: int, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def measure(backend: str | None, n: int, calls: int, n_ready: int = 1) -> float:
    """Microseconds per poll() returning *n_ready* events with *n* idle sources."""
    idle, socks = _idle_sources(n)
    readies = [_ready_source() for _ in range(n_ready)]
    try:
        if backend is None:
            ep = select.epoll()
            for fd in idle:
                ep.register(fd, select.EPOLLIN)
            for ready in readies:
                ep.register(ready, select.EPOLLIN)
            ep_poll = ep.poll

            def bare() -> None:
                for _fd, _mask in ep_poll(0):
                    pass

            try:
                return _time_per_call(bare, calls)
            finally:
                ep.close()
        poll = Poll(backend=backend)
        try:
            register = poll.registry.register
            for i, fd in enumerate(idle):
                register(fd, i, Interest.READABLE)
            for j, ready in enumerate(readies):
                register(ready, n + j, Interest.READABLE)
            events = Events(64)
            assert poll.poll(events, 0) == n_ready
            do_poll = poll.poll

            def one() -> None:
                do_poll(events, 0)

            return _time_per_call(one, calls)
        finally:
            poll.close()
    finally:
        for fd in idle:
            os.close(fd)
        for s in socks:
            s.close()
        for ready in readies:
            os.close(ready)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="", help="comma-separated source counts")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    largest = (hard - 100) // 1000 * 1000 if hasattr(os, "eventfd") else (hard - 100) // 2000 * 1000
    largest = min(largest, 50_000)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [10, 1_000, largest]

    rows: list[dict[str, object]] = []
    names: list[str | None] = [None]
    for candidate in available_backends():
        try:
            Poll(backend=candidate).close()
        except (ImportError, ValueError) as exc:
            print(f"skipping {candidate}: {exc}", file=sys.stderr)
            continue
        names.append(candidate)
    for name in names:
        base: float | None = None
        for n in sizes:
            if name == "select" and n > SELECT_LIMIT:
                continue
            calls = (
                args.calls
                if name not in ("poll", "select") or n <= 1000
                else max(200, args.calls // 50)
            )
            us = measure(name, n, calls)
            base = us if base is None else base
            rows.append(
                {
                    "backend": name or "bare select.epoll",
                    "sources": n,
                    "us_per_poll": us,
                    "vs_10": us / base,
                }
            )

    # Per-event cost: the slope between 1 and 33 ready events, 1,000 registered.
    slopes = {}
    for name in names:
        if name == "select":
            continue
        one = measure(name, 1000, args.calls // 4)
        many = measure(name, 1000, args.calls // 4, n_ready=33)
        slopes[name or "bare select.epoll"] = (many - one) / 32

    bare = {
        r["sources"]: float(r["us_per_poll"]) for r in rows if r["backend"] == "bare select.epoll"
    }  # type: ignore[arg-type]
    print(
        f"metalio {metalio.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"RLIMIT_NOFILE hard {hard}"
    )
    print()
    print("| backend | registered | µs per poll() (1 event) | vs 10 registered | over bare epoll |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        us = float(r["us_per_poll"])  # type: ignore[arg-type]
        over = (
            us - bare[r["sources"]]
            if r["sources"] in bare and r["backend"] != "bare select.epoll"
            else None
        )  # type: ignore[index]
        over_s = f"{over:+.2f} µs" if over is not None else "—"
        print(
            f"| {r['backend']} | {r['sources']:,} | {us:.2f} | {float(r['vs_10']):.2f}× | {over_s} |"
        )  # type: ignore[arg-type]
    print()
    print("| backend | µs per extra ready event | over bare epoll per event |")
    print("|---|---:|---:|")
    for key, slope in slopes.items():
        over_e = slope - slopes["bare select.epoll"]
        print(
            f"| {key} | {slope:.3f} | {over_e:+.3f} µs |"
            if key != "bare select.epoll"
            else f"| {key} | {slope:.3f} | — |"
        )
        rows.append({"backend": key, "per_event_us": slope})
    if largest < 50_000:
        print(
            f"\n(50,000 sources need more descriptors than this machine's hard limit of {hard} allows.)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hard_nofile": hard, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
