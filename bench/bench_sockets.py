"""What metalio's socket wrappers cost: time per ``try_*`` call and bytes per idle connection.

Part 1, per-call overhead.  A connected loopback pair (TCP with
``TCP_NODELAY``, and a Unix stream pair); one round is a 64-byte write on
one end and a read into a reused 64 KiB buffer on the other.  Timed side by
side, interleaved, best of several repeats:

* ``bare os``      -- ``os.write(fd, data)`` + ``os.readv(fd, (buf,))``
* ``bare socket``  -- ``sock.send(data)`` + ``sock.recv_into(buf)``
* ``metalio``      -- ``stream.try_write(data)`` + ``stream.try_read_into(buf)``
* ``via socket``   -- a variant of the wrapper that calls the ``socket``
  methods instead of ``os`` (the road not taken, for comparison)

and the would-block path: ``try_read`` on an empty socket against a bare
``os.read`` inside ``try/except BlockingIOError``.  The cases run in short
batches in shuffled order; the overhead per call is the median over batches
of ``(metalio - bare os) / 2`` (two calls per round).  Because loopback
round trips vary by more than the wrapper costs, the wrapper layer is also
timed alone, with the system calls replaced by a no-op builtin.

Part 2, idle memory.  A server process accepts N loopback connections made
by a separate client process, registers each READABLE|EDGE with a Poll on
epoll and keeps it in a slab (``metalio.Slab`` when present, else a list),
then reports the growth of its resident set (``/proc/self/statm``) per
connection.  The same run repeats it with a bare ``select.epoll`` loop that
keeps raw ``socket.socket`` objects in a dict, each variant in a fresh
process.  The soft ``RLIMIT_NOFILE`` is raised to the hard limit, and N is
lowered if the limit is too small.

    python bench/bench_sockets.py                 # both parts, 10,000 connections
    python bench/bench_sockets.py --conns 2000 --calls 100000
    python bench/bench_sockets.py --json out.json

Targets (issue 3): overhead at most 0.3 us per call over the bare calls;
at most 400 bytes per accepted, registered idle TcpStream (the bare epoll
loop: about 170 B; uvloop Protocol: about 1,270 B; asyncio: about 2,800 B).
Nothing here is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import random
import resource
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import metalio
from metalio import Events, Interest, Poll, PollOpt
from metalio.net import TcpListener, TcpStream, UnixStream

DATA = b"x" * 64


# --------------------------------------------------------------------------
# part 1: time per call


class _ViaSocketStream(TcpStream):
    """The same wrapper with the ``socket`` methods on the hot path, for comparison."""

    __slots__ = ()

    def try_read_into(self, buffer: Any) -> int | None:
        try:
            return self.socket.recv_into(buffer) or 0
        except BlockingIOError:
            rearm = self._rearm
            if rearm is not None:
                rearm(1)
            return None

    def try_write(self, data: Any) -> int | None:
        try:
            return self.socket.send(data)
        except BlockingIOError:
            rearm = self._rearm
            if rearm is not None:
                rearm(2)
            return None


def _tcp_pair() -> tuple[TcpStream, TcpStream, TcpListener]:
    listener = TcpListener.bind(("127.0.0.1", 0))
    client = TcpStream.connect(listener.local_addr())
    for _ in range(1000):
        got = listener.try_accept()
        if got is not None:
            break
        time.sleep(0.001)
    else:
        raise RuntimeError("accept failed")
    server = got[0]
    client.set_nodelay(True)
    server.set_nodelay(True)
    return client, server, listener


def _timed(fn: Callable[[int], None], calls: int) -> float:
    t0 = time.perf_counter()
    fn(calls)
    return (time.perf_counter() - t0) / calls * 1e6


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _round_trip_cases(w: Any, r: Any) -> dict[str, Callable[[int], None]]:
    buf = bytearray(65536)
    wfd, rfd = w.fileno(), r.fileno()
    ws, rs = w.socket, r.socket
    write, readv = os.write, os.readv

    def bare_os(n: int) -> None:
        for _ in range(n):
            write(wfd, DATA)
            readv(rfd, (buf,))

    def bare_socket(n: int) -> None:
        send, recv_into = ws.send, rs.recv_into
        for _ in range(n):
            send(DATA)
            recv_into(buf)

    def metalio(n: int) -> None:
        for _ in range(n):
            w.try_write(DATA)
            r.try_read_into(buf)

    cases: dict[str, Callable[[int], None]] = {
        "bare os": bare_os,
        "bare socket": bare_socket,
        "metalio": metalio,
    }
    if isinstance(w, TcpStream):
        vw = _ViaSocketStream(w.socket)
        vr = _ViaSocketStream(r.socket)

        def via_socket(n: int) -> None:
            for _ in range(n):
                vw.try_write(DATA)
                vr.try_read_into(buf)

        cases["via socket"] = via_socket
    return cases


def _would_block_cases(r: Any) -> dict[str, Callable[[int], None]]:
    rfd = r.fileno()
    read = os.read

    def bare_eagain(n: int) -> None:
        for _ in range(n):
            try:
                read(rfd, 65536)
            except BlockingIOError:
                pass

    def metalio_none(n: int) -> None:
        for _ in range(n):
            r.try_read()

    return {"bare os EAGAIN": bare_eagain, "metalio None": metalio_none}


def bench_dispatch(calls: int, repeats: int) -> dict[str, float]:
    """The wrappers' own Python cost, with the system call swapped for a no-op builtin.

    Real loopback round trips vary by more than the wrapper costs on a busy
    machine; replacing ``os.write``/``os.readv`` (in ``metalio._fdio``,
    where the wrappers look them up) with ``operator.is_not`` -- a two-argument C
    function returning a truthy value -- leaves exactly the layer metalio adds.
    """
    import operator

    from metalio import _fdio as _common  # where the stream try_* calls live

    nop = operator.is_not
    a, b = UnixStream.pair()
    buf = bytearray(65536)
    fd = a.fileno()
    saved = (_common._write, _common._readv)
    _common._write, _common._readv = nop, nop
    try:

        def bare(n: int) -> None:
            for _ in range(n):
                nop(fd, DATA)
                nop(fd, (buf,))

        def wrapped(n: int) -> None:
            for _ in range(n):
                a.try_write(DATA)
                a.try_read_into(buf)

        cases = {"bare": bare, "metalio": wrapped}
        samples: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                samples[name].append(_timed(fn, calls))
    finally:
        _common._write, _common._readv = saved
        a.close()
        b.close()
    best = {k: min(v) for k, v in samples.items()}
    return {
        "bare_us_per_round": best["bare"],
        "metalio_us_per_round": best["metalio"],
        "overhead_us_per_call": (best["metalio"] - best["bare"]) / 2,
    }


def bench_calls(calls: int, repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {"dispatch": bench_dispatch(calls, repeats)}
    rng = random.Random(3)
    client, server, listener = _tcp_pair()
    ua, ub = UnixStream.pair()
    try:
        for label, (w, r) in (("tcp", (client, server)), ("unix", (ua, ub))):
            cases = _round_trip_cases(w, r)
            cases.update(_would_block_cases(r))
            samples: dict[str, list[float]] = {k: [] for k in cases}
            paired: list[float] = []
            paired_wb: list[float] = []
            # Many short batches, interleaved, compared pairwise: on a busy
            # machine a batch's neighbour in time shares its noise.
            # The order is shuffled per batch: a fixed order biases a TCP
            # loopback pair (each case inherits the ACK state of the last).
            batch = max(1000, calls // 20)
            names = list(cases)
            for _ in range(repeats * 20):
                rng.shuffle(names)
                for name in names:
                    samples[name].append(_timed(cases[name], batch))
                paired.append(samples["metalio"][-1] - samples["bare os"][-1])
                paired_wb.append(samples["metalio None"][-1] - samples["bare os EAGAIN"][-1])
            best = {k: min(v) for k, v in samples.items()}
            med = {k: _median(v) for k, v in samples.items()}
            out[label] = {
                "best_us_per_round": best,
                "median_us_per_round": med,
                "overhead_us_per_call": _median(paired) / 2,
                "would_block_overhead_us": _median(paired_wb),
            }
    finally:
        for s in (client, server, listener, ua, ub):
            s.close()
    return out


# --------------------------------------------------------------------------
# part 2: memory per idle connection


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _client(port: int, count: int) -> None:
    """Open *count* idle connections, say so, hold them until stdin closes."""
    _raise_nofile()
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        sys.stdout.write("connected\n")
        sys.stdout.flush()
        sys.stdin.read()
    finally:
        for s in socks:
            s.close()


def _mem_server(variant: str, count: int, warmup: int) -> dict[str, Any]:
    """Accept warmup + count connections; RSS growth over the last *count*."""
    _raise_nofile()
    if variant == "metalio":
        listener = TcpListener.bind(("127.0.0.1", 0), backlog=4096)
        port = listener.local_addr()[1]
    else:
        raw_listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        raw_listener.setblocking(False)
        port = raw_listener.getsockname()[1]
    client = subprocess.Popen(
        [sys.executable, __file__, "--client", str(port), str(count + warmup)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    result: dict[str, Any] = {"variant": variant, "connections": count}
    try:
        if variant == "metalio":
            result.update(_hold_metalio(listener, count, warmup))
        else:
            result.update(_hold_bare(raw_listener, count, warmup))
    finally:
        assert client.stdin is not None
        client.stdin.close()
        client.wait(timeout=60)
        if variant == "metalio":
            listener.close()
        else:
            raw_listener.close()
    return result


def _hold_metalio(listener: TcpListener, count: int, warmup: int) -> dict[str, Any]:
    slab_type = getattr(metalio, "Slab", None)
    if slab_type is None:
        try:
            slab_type = getattr(importlib.import_module("metalio.slab"), "Slab", None)
        except ImportError:
            pass
    slab: Any
    if slab_type is not None:
        slab = slab_type()
        insert: Callable[[Any], int] = slab.insert
        store = "metalio.Slab"
    else:  # the slab is another issue's work; a list is the same idea
        slab = []
        store = "list"

        def insert(value: Any) -> int:
            slab.append(value)
            return len(slab) - 1

    poll = Poll(backend="epoll")
    register = poll.registry.register
    interest, opts = Interest.READABLE, PollOpt.EDGE
    accept = listener.try_accept
    poll.registry.register(listener, 1 << 40, Interest.READABLE, PollOpt.LEVEL)

    events = Events(64)
    accepted = 0
    base = 0
    deadline = time.monotonic() + 120
    while accepted < count + warmup and time.monotonic() < deadline:
        poll.poll(events, 1.0)
        while accepted < count + warmup:
            got = accept()
            if got is None:
                break
            stream = got[0]
            register(stream, insert(stream), interest, opts)
            accepted += 1
            if accepted == warmup:
                gc.collect()
                base = _rss()
    gc.collect()
    grown = _rss() - base
    held = len(slab)
    # teardown
    for _, stream in slab.items() if store == "metalio.Slab" else enumerate(slab):
        poll.registry.deregister(stream)
        stream.close()
    poll.close()
    return {
        "store": store,
        "accepted": accepted,
        "held": held,
        "rss_growth": grown,
        "bytes_per_conn": grown / max(1, accepted - warmup),
    }


def _hold_bare(listener: socket.socket, count: int, warmup: int) -> dict[str, Any]:
    ep = select.epoll()
    conns: dict[int, socket.socket] = {}
    ep.register(listener.fileno(), select.EPOLLIN)
    flags = select.EPOLLIN | select.EPOLLET
    accepted = 0
    base = 0
    deadline = time.monotonic() + 120
    while accepted < count + warmup and time.monotonic() < deadline:
        ep.poll(1.0)
        while accepted < count + warmup:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                break
            sock.setblocking(False)
            fd = sock.fileno()
            ep.register(fd, flags)
            conns[fd] = sock
            accepted += 1
            if accepted == warmup:
                gc.collect()
                base = _rss()
    gc.collect()
    grown = _rss() - base
    for sock in conns.values():
        sock.close()
    ep.close()
    return {
        "store": "dict fd -> socket",
        "accepted": accepted,
        "held": len(conns),
        "rss_growth": grown,
        "bytes_per_conn": grown / max(1, accepted - warmup),
    }


def bench_memory(count: int, warmup: int) -> dict[str, Any]:
    hard = _raise_nofile()
    limit = min(hard, resource.getrlimit(resource.RLIMIT_NOFILE)[0]) - 64
    if count + warmup > limit:
        count = max(100, limit - warmup)
    out: dict[str, Any] = {}
    for variant in ("bare", "metalio"):
        proc = subprocess.run(
            [sys.executable, __file__, "--mem-server", variant, str(count), str(warmup)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{variant} server failed:\n{proc.stderr}")
        out[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="rounds per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--conns", type=int, default=10_000, help="idle connections")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-calls", action="store_true")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--client", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mem-server", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.client:
        _client(*args.client)
        return 0
    if args.mem_server:
        variant, count, warmup = args.mem_server
        print(json.dumps(_mem_server(variant, int(count), int(warmup))))
        return 0

    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    print(f"metalio socket benchmark -- Python {report['python']}, {report['platform']}")
    if not args.skip_calls:
        calls = bench_calls(args.calls, args.repeats)
        report["calls"] = calls
        disp = calls["dispatch"]
        print(
            "\nwrapper layer alone (system call replaced by a no-op builtin): "
            f"{disp['overhead_us_per_call']:.3f} us per call "
            f"({disp['bare_us_per_round']:.3f} -> {disp['metalio_us_per_round']:.3f} us per round)"
        )
        for label, res in calls.items():
            if label == "dispatch":
                continue
            print(f"\n{label}: microseconds per round (write 64 B + read into a reused buffer)")
            for name, best in res["best_us_per_round"].items():
                med = res["median_us_per_round"][name]
                print(f"  {name:16s} best {best:6.3f}   median {med:6.3f}")
            print(
                f"  metalio overhead per call over bare os (median of paired batches): "
                f"{res['overhead_us_per_call']:+.3f} us; target <= 0.3"
            )
            print(
                f"  would-block path (None vs bare EAGAIN): "
                f"{res['would_block_overhead_us']:+.3f} us per call"
            )
    if not args.skip_memory:
        if not os.path.exists("/proc/self/statm"):
            print("\nmemory: skipped (needs /proc/self/statm)")
        else:
            mem = bench_memory(args.conns, args.warmup)
            report["memory"] = mem
            print(f"\nidle connections: RSS growth per connection ({mem['bare']['connections']})")
            for name, res in mem.items():
                print(
                    f"  {name:8s} {res['bytes_per_conn']:7.0f} B/conn "
                    f"({res['store']}; {res['held']} held)"
                )
            print("  target: metalio <= 400 B/conn incl. registration and slab entry")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
