"""EventLoop benchmarks, side by side with asyncio and uvloop in one run.

Three measurements, each printed with ratios (never asserted anywhere):

1. **notify** -- 200,000 messages sent from another thread and delivered to
   ``Handler.notify``, against ``call_soon_threadsafe`` on asyncio and uvloop
   (each message runs a callback).  Time runs from the moment the sender is
   released until the last message is delivered.  For metalio the number of
   wake-up system calls (awakener writes) is printed too; asyncio writes its
   self-pipe on every ``call_soon_threadsafe``.  metalio runs with
   ``notify_capacity=2**18`` so the sender never meets ``NotifyFull`` (the
   other two queues are unbounded) and the default ``messages_per_tick``.
2. **timers** -- 200,000 timeouts with random delays in [0, 10) s, then half
   of them cancelled, through ``loop.timeout`` / ``loop.clear_timeout``
   (``timer_capacity=2**18``), against ``call_later`` / ``Handle.cancel``.
   Combined operations per second; the bare ``Timer`` is shown for
   reference (the loop's own overhead is the difference).
3. **dispatch** -- echo servers in their own process, pinned to CPU 0, loaded
   by ``bench/echo/loadgen.c`` (compiled into a temporary directory; the
   Python ``loadgen.py`` when there is no C compiler) on CPU 1: 1 KiB
   messages, one outstanding per connection, 10 and 100 connections.  The
   figure is the server's **user CPU per round trip** over the measured
   window (the load generator stops with every connection idle at both ends
   of it), sampled by ``perf`` every 50 µs of CPU where perf may run
   (``bench/usertime.py``), else ``utime`` of ``/proc/PID/stat``, which is
   only good to about ±15% per window.  Five servers:

   ``epoll-raw``  a hand-written edge-triggered ``select.epoll`` loop,
                  ``os.read``/``os.write`` on the descriptors, a dict of
                  connections (the floor);
   ``loop-raw``   the same work as ``epoll-raw`` as a ``Handler`` on
                  ``EventLoop``, token = descriptor, the same dict: what the
                  loop's dispatch costs;
   ``loop-slab``  the same with ``Slab`` tokens, as a mio program has them;
   ``epoll-net``  the hand-written loop again, doing its I/O through
                  ``metalio.net.TcpStream`` (``try_read_into``/``try_write``);
   ``loop-net``   ``EventLoop`` + ``Slab`` + edge-triggered ``TcpStream``:
                  the whole metalio stack.

   The target is ``loop-raw / epoll-raw <= 1.25`` (and the same for the
   ``-net`` pair).  Every server stops reading after a short read (see
   ``bench/echo/servers/epoll_floor.py`` for why that is sound with EPOLLET).

A fourth section, **model**, runs the loop over a fake backend (no kernel)
and prints its Python overhead per event and per iteration against a bare
loop: where the dispatch time goes, free of the machine's noise.  A fifth,
**echo-model**, runs the echo benchmark's own servers (``epoll_floor``'s
loop body, ``metalio_loop``'s handler on an ``EventLoop``, ``metalio_poll``'s
loop over a ``Poll``) over the same kind of fake backend, with the streams'
``os.read``/``os.write`` replaced by C-level stand-ins: each server's whole
Python path per round trip, steady to a few percent where the echo harness
varies by ten.  The real gap to the floor is larger (the kernel's work
between events leaves the caches cold), but changes rank the same.

Run: ``python bench/bench_loop.py [--only notify,timers,model,echo-model,dispatch] [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "metalio").is_dir():
    sys.path.insert(0, str(ROOT / "src"))

from metalio import Interest, Poll, PollOpt, Ready  # noqa: E402
from metalio._backends import open_backend  # noqa: E402
from metalio.loop import EventLoop, EventLoopConfig, Handler  # noqa: E402
from metalio.timer import Timer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import usertime  # noqa: E402

try:
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None

N_MESSAGES = 200_000
N_TIMERS = 200_000
BUF = 65536

# ---------------------------------------------------------------------------
# 1. notify


class _Answering:
    """The real epoll backend, but every wait returns what *answer* gives (the
    kernel-free models): built with ``Poll.over_backend``, the seam for fakes."""

    def __init__(self, answer: Callable[[float | None, int], list[tuple[int, int]]]) -> None:
        self.real = open_backend("epoll")
        self.poll = answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _answering_poll(answer: Callable[[float | None, int], list[tuple[int, int]]]) -> Poll:
    backend: Any = _Answering(answer)
    return Poll.over_backend(backend)


class _Count(Handler):
    __slots__ = ("n", "target")

    def __init__(self, target: int) -> None:
        self.n = 0
        self.target = target

    def notify(self, loop: EventLoop, msg: Any) -> None:
        self.n += 1
        if self.n == self.target:
            loop.shutdown()


def notify_metalio(n: int) -> tuple[float, int]:
    """Seconds for *n* cross-thread messages, and the wake-up syscalls made."""
    with EventLoop(EventLoopConfig(notify_capacity=1 << 18)) as loop:
        send = loop.channel().send
        go = threading.Event()

        def sender() -> None:
            go.wait()
            for i in range(n):
                send(i)

        th = threading.Thread(target=sender)
        th.start()
        handler = _Count(n)
        t0 = time.perf_counter()
        go.set()
        loop.run(handler)
        dt = time.perf_counter() - t0
        th.join()
        return dt, loop._channel.wakes


def notify_asyncio_like(new_loop: Callable[[], asyncio.AbstractEventLoop], n: int) -> float:
    loop = new_loop()
    try:
        count = [0]

        def cb(i: int) -> None:
            count[0] += 1
            if count[0] == n:
                loop.stop()

        call = loop.call_soon_threadsafe
        go = threading.Event()

        def sender() -> None:
            go.wait()
            for i in range(n):
                call(cb, i)

        th = threading.Thread(target=sender)
        th.start()
        t0 = time.perf_counter()
        go.set()
        loop.run_forever()
        dt = time.perf_counter() - t0
        th.join()
        return dt
    finally:
        loop.close()


def bench_notify(reps: int) -> None:
    print(f"\n== notify: {N_MESSAGES:,} messages from another thread ==")
    rows: dict[str, list[float]] = {"metalio": [], "asyncio": []}
    if uvloop is not None:
        rows["uvloop"] = []
    wakes: list[int] = []
    for _ in range(reps):  # interleaved repetitions
        dt, w = notify_metalio(N_MESSAGES)
        rows["metalio"].append(N_MESSAGES / dt)
        wakes.append(w)
        rows["asyncio"].append(N_MESSAGES / notify_asyncio_like(asyncio.new_event_loop, N_MESSAGES))
        if uvloop is not None:
            rows["uvloop"].append(
                N_MESSAGES / notify_asyncio_like(uvloop.new_event_loop, N_MESSAGES)
            )
    best = {k: max(v) for k, v in rows.items()}
    for name, rate in best.items():
        extra = f"   wake syscalls: {min(wakes)}-{max(wakes)}" if name == "metalio" else ""
        print(f"  {name:8s} {rate / 1e6:6.2f} M msgs/s (best of {reps}){extra}")
    _print_ratios(rows, "metalio")


# ---------------------------------------------------------------------------
# 2. timers


def _delays(n: int) -> list[float]:
    rng = random.Random(42)
    return [rng.uniform(0.0, 10.0) for _ in range(n)]


def timers_metalio(delays: list[float]) -> float:
    with EventLoop(EventLoopConfig(timer_capacity=1 << 18)) as loop:
        timeout = loop.timeout
        clear = loop.clear_timeout
        gc.collect()
        t0 = time.perf_counter()
        handles = [timeout(i, d) for i, d in enumerate(delays)]
        for h in handles[::2]:
            clear(h)
        return time.perf_counter() - t0


def timers_bare(delays: list[float]) -> float:
    timer = Timer(capacity=1 << 18)
    set_timeout = timer.set_timeout
    cancel = timer.cancel
    gc.collect()
    t0 = time.perf_counter()
    handles = [set_timeout(d, i) for i, d in enumerate(delays)]
    for h in handles[::2]:
        cancel(h)
    return time.perf_counter() - t0


def timers_asyncio_like(
    new_loop: Callable[[], asyncio.AbstractEventLoop], delays: list[float]
) -> float:
    loop = new_loop()
    try:
        call_later = loop.call_later

        def cb(i: int) -> None:
            pass

        gc.collect()
        t0 = time.perf_counter()
        handles = [call_later(d, cb, i) for i, d in enumerate(delays)]
        for h in handles[::2]:
            h.cancel()
        dt = time.perf_counter() - t0
        for h in handles:
            h.cancel()
        return dt
    finally:
        loop.close()


def bench_timers(reps: int) -> None:
    delays = _delays(N_TIMERS)
    ops = N_TIMERS + N_TIMERS // 2
    print(f"\n== timers: {N_TIMERS:,} set (0-10 s) + {N_TIMERS // 2:,} cancelled ==")
    rows: dict[str, list[float]] = {"metalio": [], "Timer": [], "asyncio": []}
    if uvloop is not None:
        rows["uvloop"] = []
    for _ in range(reps):
        rows["metalio"].append(ops / timers_metalio(delays))
        rows["Timer"].append(ops / timers_bare(delays))
        rows["asyncio"].append(ops / timers_asyncio_like(asyncio.new_event_loop, delays))
        if uvloop is not None:
            rows["uvloop"].append(ops / timers_asyncio_like(uvloop.new_event_loop, delays))
    best = {k: max(v) for k, v in rows.items()}
    labels = {"metalio": "loop.timeout/clear", "Timer": "bare Timer (ref.)"}
    for name, rate in best.items():
        print(f"  {labels.get(name, name):20s} {rate / 1e6:6.2f} M ops/s (best of {reps})")
    _print_ratios(rows, "metalio")
    print(f"  loop overhead over the bare wheel: {best['Timer'] / best['metalio']:.2f}x")


def _print_ratios(rows: dict[str, list[float]], ours: str) -> None:
    """Ratios of *ours* to asyncio and uvloop: best over best, and the median of
    the per-repetition ratios (the runs of one repetition met the same
    background load, so this one is the steadier on a noisy machine)."""
    for ref in ("asyncio", "uvloop"):
        if ref not in rows:
            continue
        best = max(rows[ours]) / max(rows[ref])
        paired = statistics.median(a / b for a, b in zip(rows[ours], rows[ref], strict=True))
        print(
            f"  metalio / {ref:7s} = {paired:.1f}x (median of per-repetition ratios;"
            f" best over best {best:.1f}x)"
        )


# ---------------------------------------------------------------------------
# 3a. dispatch model: the loop's own Python cost, without the kernel


def _model_once(n_events: int, iterations: int) -> tuple[float, float]:
    """ns per iteration: EventLoop.run vs a bare loop, over a fake backend.

    The backend is replaced by a function returning the same *n_events*
    ``(fd, mask)`` pairs every time, so only Python runs: the loop's
    dispatch (table lookup, Ready translation, the ``ready`` call, the
    per-iteration checks) against a hand-written loop that looks the
    connection up by fd and calls a function with it.  Both handlers do the
    same: one dict lookup and a counter.
    """
    socks = [socket.socketpair() for _ in range(n_events)]
    try:
        raw = [(a.fileno(), 1) for a, _ in socks]

        def fake_poll(timeout: float | None, maxevents: int) -> list[tuple[int, int]]:
            return raw

        with EventLoop(poll=_answering_poll(fake_poll)) as loop:
            for a, _ in socks:
                loop.register(a, a.fileno(), Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)
            conns = {a.fileno(): [a] for a, _ in socks}
            left = [0]

            class H(Handler):
                def __init__(self) -> None:
                    self.get = conns.get

                def ready(self, ev: EventLoop, token: int, ready: Ready) -> None:
                    self.get(token)
                    left[0] -= 1
                    if not left[0]:
                        ev.shutdown()

            handler = H()

            def bare() -> None:
                get = conns.get
                poll = fake_poll

                def handle(conn: Any, ev: int) -> None:
                    left[0] -= 1

                for _ in range(iterations):
                    for fd, ev in poll(None, 1024):
                        conn = get(fd)
                        if conn is None:
                            continue
                        handle(conn, ev)

            best_loop = best_bare = math.inf
            for _ in range(5):
                left[0] = iterations * n_events
                t0 = time.perf_counter()
                loop.run(handler)
                best_loop = min(best_loop, time.perf_counter() - t0)
                t0 = time.perf_counter()
                bare()
                best_bare = min(best_bare, time.perf_counter() - t0)
            return best_loop / iterations * 1e9, best_bare / iterations * 1e9
    finally:
        for a, b in socks:
            a.close()
            b.close()


def bench_model() -> None:
    print("\n== dispatch model: Python cost per iteration, fake backend (no kernel) ==")
    rows = {n: _model_once(n, 20_000) for n in (1, 10)}
    for n, (lp, bare) in rows.items():
        print(f"  {n:2d} events/iteration: EventLoop {lp:6.0f} ns, bare loop {bare:6.0f} ns")
    (l1, b1), (l10, b10) = rows[1], rows[10]
    per_event = ((l10 - b10) - (l1 - b1)) / 9
    per_iter = (l1 - b1) - per_event
    print(f"  EventLoop extra: {per_event:.0f} ns per event + {per_iter:.0f} ns per iteration")


# ---------------------------------------------------------------------------
# 3b. echo model: the benchmark servers' whole Python path, without the kernel

ECHO_SERVERS = ROOT / "bench" / "echo" / "servers"
_MSG = b"x" * 1024


def _load_server(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_echo_{name}", ECHO_SERVERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _echo_floor(raw: list[tuple[int, int]], read: Any, write: Any, iterations: int) -> float:
    """``bench/echo/servers/epoll_floor.py``'s event loop body, verbatim."""
    pending: dict[int, bytes] = {}
    lfd = -1
    epollin, epollout = select.EPOLLIN, select.EPOLLOUT
    errhup = select.EPOLLERR | select.EPOLLHUP

    def poll() -> list[tuple[int, int]]:
        return raw

    t0 = time.perf_counter()
    for _ in range(iterations):
        for fd, ev in poll():
            if fd == lfd:
                continue
            if ev & epollout and fd in pending:
                pending.pop(fd)
            if ev & epollin:
                while True:
                    try:
                        data = read(fd, BUF)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    if fd in pending:
                        pending[fd] += data
                    else:
                        try:
                            n = write(fd, data)
                        except BlockingIOError:
                            n = 0
                        if n != len(data):
                            pending[fd] = data[n:]
                    if len(data) < BUF:
                        break
            elif ev & errhup:
                break
    return time.perf_counter() - t0


def _echo_model_once(n_conns: int, iterations: int) -> tuple[float, float, float]:
    """ns per event: the epoll floor, ``metalio_loop`` and ``metalio_poll``.

    Real loopback streams are accepted and registered (real tables, real
    ``TcpStream`` objects), but every poll returns the same *n_conns*
    readable-and-writable events and the streams' ``os.read``/``os.write``
    are C-level stand-ins (``dict.get`` returning a 1 KiB message / 1024), so
    only the Python of each server runs: the loop's dispatch, the handler,
    ``Slab.get``, the ``try_*`` frames.  The servers are the benchmark's own
    files (``metalio_poll``'s event loop is cut out of ``serve``).  The
    ``metalio_loop`` figure includes one ``tick`` call per iteration (how the
    run stops).  On the real benchmark the gap to the floor is larger (the
    kernel's work between events leaves the caches cold), but the ranking
    of changes to the Python path is the same and runs here vary by a few
    percent instead of the harness's ten.
    """
    import inspect

    import metalio._fdio as fdio
    from metalio import Events
    from metalio.net import TcpListener

    echo_loop = _load_server("metalio_loop")
    echo_poll = _load_server("metalio_poll")
    listener = TcpListener.bind(("127.0.0.1", 0))
    clients: list[socket.socket] = []
    streams: list[Any] = []
    saved = fdio._read, fdio._write
    try:
        for _ in range(n_conns):
            clients.append(socket.create_connection(listener.local_addr()))
            while (accepted := listener.try_accept()) is None:
                pass
            streams.append(accepted[0])
        fds = [s.fileno() for s in streams]
        read = dict.fromkeys(fds, _MSG).get
        write = dict.fromkeys(fds, len(_MSG)).get
        mask = select.EPOLLIN | select.EPOLLOUT
        raw = [(fd, mask) for fd in fds]
        fdio._read, fdio._write = read, write  # type: ignore[misc]

        def fake_poll(timeout: float | None, maxevents: int) -> list[tuple[int, int]]:
            return raw

        # metalio_loop: the Echo handler on an EventLoop with the fake backend.
        left = [0]

        class Echo(echo_loop.Echo):  # type: ignore[misc, name-defined]
            def tick(self, loop: EventLoop) -> None:
                left[0] -= 1
                if not left[0]:
                    loop.shutdown()

        def run_loop() -> float:
            with EventLoop(poll=_answering_poll(fake_poll)) as loop:
                handler = Echo(listener)
                for s in streams:
                    token = handler.conns.insert(echo_loop.Conn(s))
                    loop.register(s, token, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)
                left[0] = iterations
                t0 = time.perf_counter()
                loop.run(handler)
                elapsed = time.perf_counter() - t0
                for s in streams:
                    loop.deregister(s)
            return elapsed

        # metalio_poll: serve()'s "for event in events" body, run over a Poll.
        body = inspect.getsource(echo_poll.serve)
        body = body[
            body.index("                for event in events:") : body.index("        except _Stop:")
        ]
        code = "def hot(poll, events, conns, iterations, LISTENER, BUF):\n"
        code += "    for _ in range(iterations):\n        poll.poll(events)\n"
        code += "\n".join(line[8:] for line in body.splitlines()) + "\n"
        namespace = dict(vars(echo_poll))
        exec(compile(code, "<metalio_poll event loop>", "exec"), namespace)
        hot_poll = namespace["hot"]

        def run_poll() -> float:
            with _answering_poll(fake_poll) as poll:
                conns = {}
                for token, s in enumerate(streams, 1):
                    conns[token] = echo_poll.Conn(s)
                    poll.registry.register(
                        s, token, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE
                    )
                t0 = time.perf_counter()
                hot_poll(poll, Events(1024), conns, iterations, 0, BUF)
                elapsed = time.perf_counter() - t0
                for s in streams:
                    poll.registry.deregister(s)
            return elapsed

        best = [math.inf] * 3
        for _ in range(7):
            for i, run in enumerate(
                (lambda: _echo_floor(raw, read, write, iterations), run_loop, run_poll)
            ):
                best[i] = min(best[i], run())
        scale = 1e9 / (iterations * n_conns)
        return best[0] * scale, best[1] * scale, best[2] * scale
    finally:
        fdio._read, fdio._write = saved  # type: ignore[misc]
        for sock in clients:
            sock.close()
        for stream in streams:
            stream.close()
        listener.close()


def bench_echo_model() -> None:
    print("\n== echo model: each echo server's Python per event, no kernel ==")
    for n in (10, 100):
        floor, lp, pl = _echo_model_once(n, 200_000 // n)
        print(
            f"  {n:3d} events/poll: epoll_floor {floor:4.0f} ns, metalio_loop {lp:4.0f} ns "
            f"(+{lp - floor:.0f}), metalio_poll {pl:4.0f} ns (+{pl - floor:.0f})"
        )


# ---------------------------------------------------------------------------
# 3. dispatch: the servers (run in a child process with --serve)

# Ready -> bool tables: IntFlag's own & and properties run Python code.
_READABLE = tuple(bool(i & 1) for i in range(64))
_WRITABLE = tuple(bool(i & 2) for i in range(64))


def _listener(port: int) -> socket.socket:
    sock = socket.create_server(("127.0.0.1", port), backlog=1024)
    sock.setblocking(False)
    return sock


def _accepted(listener: socket.socket) -> Iterator[socket.socket]:
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        except ConnectionAbortedError:
            continue
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield conn


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def serve_epoll_raw(port: int) -> None:
    """The floor: edge-triggered epoll, os.read/os.write, dict of connections."""
    listener = _listener(port)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN | select.EPOLLET)
    mask = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
    conns: dict[int, list[Any]] = {}  # fd -> [socket, pending]
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
    read, write, poll, get = os.read, os.write, ep.poll, conns.get

    def close(fd: int) -> None:
        conn = conns.pop(fd)
        ep.unregister(fd)
        conn[0].close()

    print(f"ready {listener.getsockname()[1]}", flush=True)
    try:
        while True:
            for fd, ev in poll():
                conn = get(fd)
                if conn is None:
                    if fd == lfd:
                        for sock in _accepted(listener):
                            conns[sock.fileno()] = [sock, b""]
                            ep.register(sock.fileno(), mask)
                    continue
                try:
                    if ev & EPOLLOUT and conn[1]:
                        n = write(fd, conn[1])
                        conn[1] = conn[1][n:]
                    if ev & EPOLLIN:
                        while True:
                            try:
                                data = read(fd, BUF)
                            except BlockingIOError:
                                break
                            if not data:
                                close(fd)
                                break
                            if conn[1]:
                                conn[1] += data
                            else:
                                try:
                                    n = write(fd, data)
                                except BlockingIOError:
                                    n = 0
                                if n < len(data):
                                    conn[1] = data[n:]
                            if len(data) < BUF:
                                break  # short read: drained
                except OSError:
                    close(fd)
    except _Stop:
        pass


def serve_epoll_net(port: int) -> None:
    """The hand-written epoll loop doing its I/O through metalio's TcpStream."""
    from metalio.net import TcpListener

    listener = TcpListener.bind(("127.0.0.1", port))
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN | select.EPOLLET)
    mask = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
    conns: dict[int, list[Any]] = {}  # fd -> [stream, pending]
    EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
    buf = bytearray(BUF)
    view = memoryview(buf)
    poll, get = ep.poll, conns.get

    def close(fd: int) -> None:
        conn = conns.pop(fd)
        ep.unregister(fd)
        conn[0].close()

    print(f"ready {listener.local_addr()[1]}", flush=True)
    try:
        while True:
            for fd, ev in poll():
                conn = get(fd)
                if conn is None:
                    if fd == lfd:
                        while (acc := listener.try_accept()) is not None:
                            stream = acc[0]
                            stream.set_nodelay(True)
                            conns[stream.fileno()] = [stream, b""]
                            ep.register(stream.fileno(), mask)
                    continue
                stream = conn[0]
                try:
                    if ev & EPOLLOUT and conn[1]:
                        n = stream.try_write(conn[1]) or 0
                        conn[1] = conn[1][n:]
                    if ev & EPOLLIN:
                        while True:
                            n = stream.try_read_into(buf)
                            if n is None:
                                break
                            if n == 0:
                                close(fd)
                                break
                            if conn[1]:
                                conn[1] += view[:n]
                            else:
                                w = stream.try_write(view[:n]) or 0
                                if w < n:
                                    conn[1] = bytes(view[w:n])
                            if n < BUF:
                                break
                except OSError:
                    close(fd)
    except _Stop:
        pass


_read = os.read
_write = os.write


class _LoopRaw(Handler):
    """``serve_epoll_raw``'s work as a Handler, os.read/os.write on the fds.

    ``slab=False`` (server ``loop-raw``): the token *is* the descriptor and the
    connections sit in a dict keyed by it, exactly the lookup ``epoll-raw``
    makes, so the difference between the two is the loop's dispatch alone.
    ``slab=True`` (``loop-slab``): tokens come from a ``Slab``, as a mio
    program would do it.
    """

    def __init__(self, listener: socket.socket, slab: bool) -> None:
        from metalio.slab import Slab

        self.listener = listener
        self.slab: Any = Slab(start=1) if slab else None
        self.conns: dict[int, list[Any]] = {}
        self.get = self.slab.get if slab else self.conns.get
        self.listen_token = 0 if slab else listener.fileno()

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        conn = self.get(token)
        if conn is None:
            if token == self.listen_token:
                for sock in _accepted(self.listener):
                    fd = sock.fileno()
                    entry = [sock, b"", fd]
                    if self.slab is not None:
                        key = self.slab.insert(entry)
                    else:
                        key = fd
                        self.conns[fd] = entry
                    loop.register(sock, key, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)
            return
        fd = conn[2]
        try:
            if conn[1] and _WRITABLE[ready]:
                n = _write(fd, conn[1])
                conn[1] = conn[1][n:]
            if _READABLE[ready]:
                while True:
                    try:
                        data = _read(fd, BUF)
                    except BlockingIOError:
                        break
                    if not data:
                        self.close(loop, token)
                        break
                    if conn[1]:
                        conn[1] += data
                    else:
                        try:
                            n = _write(fd, data)
                        except BlockingIOError:
                            n = 0
                        if n < len(data):
                            conn[1] = data[n:]
                    if len(data) < BUF:
                        break
        except OSError:
            self.close(loop, token)

    def close(self, loop: EventLoop, token: int) -> None:
        conn = self.slab.remove(token) if self.slab is not None else self.conns.pop(token)
        loop.deregister(conn[0])
        conn[0].close()

    def signal(self, loop: EventLoop, signum: int) -> None:
        loop.shutdown()


class _LoopNet(Handler):
    """EventLoop + Slab + edge-triggered TcpStream: the whole metalio stack."""

    def __init__(self, listener: Any) -> None:
        from metalio.slab import Slab

        self.listener = listener
        self.slab = Slab(start=1)
        self.get = self.slab.get
        self.buf = bytearray(BUF)
        self.view = memoryview(self.buf)

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        conn = self.get(token)
        if conn is None:
            if token == 0:
                while (acc := self.listener.try_accept()) is not None:
                    stream = acc[0]
                    stream.set_nodelay(True)
                    key = self.slab.insert([stream, b""])
                    loop.register(stream, key, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)
            return
        stream = conn[0]
        try:
            if conn[1] and _WRITABLE[ready]:
                n = stream.try_write(conn[1]) or 0
                conn[1] = conn[1][n:]
            if _READABLE[ready]:
                buf, view = self.buf, self.view
                while True:
                    n = stream.try_read_into(buf)
                    if n is None:
                        break
                    if n == 0:
                        self.close(loop, token)
                        break
                    if conn[1]:
                        conn[1] += view[:n]
                    else:
                        w = stream.try_write(view[:n]) or 0
                        if w < n:
                            conn[1] = bytes(view[w:n])
                    if n < BUF:
                        break
        except OSError:
            self.close(loop, token)

    def close(self, loop: EventLoop, token: int) -> None:
        conn = self.slab.remove(token)
        loop.deregister(conn[0])
        conn[0].close()

    def signal(self, loop: EventLoop, signum: int) -> None:
        loop.shutdown()


def serve_loop(port: int, kind: str) -> None:
    with EventLoop() as loop:
        if kind in ("loop-raw", "loop-slab"):
            listener: Any = _listener(port)
            raw_handler = _LoopRaw(listener, slab=kind == "loop-slab")
            handler: Handler = raw_handler
            bound = listener.getsockname()[1]
            listen_token = raw_handler.listen_token
        else:
            from metalio.net import TcpListener

            listener = TcpListener.bind(("127.0.0.1", port))
            handler = _LoopNet(listener)
            bound = listener.local_addr()[1]
            listen_token = 0
        loop.register(listener, listen_token, Interest.READABLE, PollOpt.EDGE)
        loop.add_signal(signal.SIGTERM)
        print(f"ready {bound}", flush=True)
        loop.run(handler)
        listener.close()


SERVERS = ("epoll-raw", "loop-raw", "loop-slab", "epoll-net", "loop-net")


def serve(kind: str, port: int, cpu: int | None) -> int:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    if kind.startswith("epoll"):
        signal.signal(signal.SIGTERM, _raise_stop)
        (serve_epoll_raw if kind == "epoll-raw" else serve_epoll_net)(port)
    else:
        serve_loop(port, kind)
    return 0


# ---------------------------------------------------------------------------
# 3. dispatch: the runner


def _utime(pid: int) -> tuple[int, int, int]:
    """utime, stime (clock ticks, split by tick sampling) and total run time (ns, exact)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12]), usertime.run_ns(pid) or 0


@contextlib.contextmanager
def _server(kind: str, cpu: int | None) -> Iterator[tuple[int, int]]:
    cmd = [sys.executable, __file__, "--serve", kind, "--port", "0"]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"server {kind} did not start: {line!r}")
        yield proc.pid, int(line.split()[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _loadgen(tmp: Path) -> list[str]:
    src = ROOT / "bench" / "echo" / "loadgen.c"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc and src.exists():
        exe = tmp / "loadgen"
        subprocess.run([cc, "-O2", "-pthread", "-o", str(exe), str(src)], check=True)
        return [str(exe)]
    py = ROOT / "bench" / "echo" / "loadgen.py"
    return [sys.executable, str(py)]


def _measure(
    loadgen: list[str], kind: str, conns: int, size: int, seconds: float, pin: bool, perf: bool
) -> dict[str, float]:
    tck = os.sysconf("SC_CLK_TCK")
    with _server(kind, 0 if pin else None) as (pid, port):
        cmd = [*loadgen, "-p", str(port), "-c", str(conns), "-s", str(size)]
        cmd += ["-d", str(seconds), "-w", "1", "-S"]
        if pin:
            cmd += ["-a", "1"]
        gen = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert gen.stdin is not None and gen.stdout is not None
        try:
            line = gen.stdout.readline()
            if line.strip() != "warm":
                raise RuntimeError(f"load generator: {line!r}")
            # Every connection is idle now and until "go": attach perf here.
            with usertime.sampler(pid, perf) as sampler:
                u0, s0, r0 = _utime(pid)
                gen.stdin.write("go\n")
                gen.stdin.flush()
                result = json.loads(gen.stdout.readline())
                u1, s1, r1 = _utime(pid)
                user_ns = None if sampler is None else sampler.stop()
            gen.stdin.write("quit\n")
            gen.stdin.flush()
            gen.wait(30)
        finally:
            if gen.poll() is None:
                gen.kill()
                gen.wait(10)
    rts = result["round_trips"]
    cpu_us = (r1 - r0) / 1e3 / rts
    if user_ns is None:  # tick sampling: see bench/usertime.py
        user_us = (u1 - u0) / tck / rts * 1e6
        sys_us = (s1 - s0) / tck / rts * 1e6
    else:
        user_us = user_ns / 1e3 / rts
        sys_us = cpu_us - user_us
    return {
        "rt_s": result["rt_per_s"],
        "user_us": user_us,
        "sys_us": sys_us,
        "cpu_us": cpu_us,
        "p50_us": result["p50_us"],
    }


def bench_dispatch(
    reps: int, seconds: float, servers: tuple[str, ...] = SERVERS, perf: bool = True
) -> None:
    try:
        import metalio.net
        import metalio.slab  # noqa: F401
    except ImportError as exc:
        print(f"\n== dispatch: skipped ({exc}) ==")
        return
    if not Path("/proc/self/stat").exists() or not hasattr(select, "epoll"):
        print("\n== dispatch: skipped (needs Linux: epoll and /proc) ==")
        return
    pin = hasattr(os, "sched_getaffinity") and {0, 1} <= os.sched_getaffinity(0)
    cells = [(1024, 10), (1024, 100)]
    print(f"\n== dispatch: echo, server user CPU per round trip ({seconds:g} s windows) ==")
    with tempfile.TemporaryDirectory() as tmp:
        loadgen = _loadgen(Path(tmp))
        perf = perf and usertime.available()
        how = "perf cpu-clock:u samples, 50 µs" if perf else "/proc ticks (noisy)"
        print(f"  load generator: {Path(loadgen[-1]).name}; pinned: {pin}; user time: {how}")
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for rep in range(reps):
            order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
            for size, conns in cells:
                for kind in order:
                    m = _measure(loadgen, kind, conns, size, seconds, pin, perf)
                    results.setdefault((kind, conns), []).append(m)
    print(
        f"  {'server':10s} {'conns':>5s} {'rt/s':>9s} {'user µs/rt':>11s} {'sys µs/rt':>10s}"
        f" {'total µs/rt':>12s}"
    )
    med: dict[tuple[str, int], dict[str, float]] = {}
    for (kind, conns), ms in sorted(
        results.items(), key=lambda kv: (kv[0][1], SERVERS.index(kv[0][0]))
    ):
        row = {key: statistics.median(m[key] for m in ms) for key in ms[0]}
        med[kind, conns] = row
        print(
            f"  {kind:10s} {conns:5d} {row['rt_s']:9.0f} {row['user_us']:11.2f}"
            f" {row['sys_us']:10.2f} {row['cpu_us']:12.2f}"
        )
    if perf:
        print(
            "  user is sampled by perf every 50 µs of CPU (see bench/usertime.py); total is\n"
            "  exact (schedstat) and sys = total - user.  'exact' ratio = (reference user +\n"
            "  extra total CPU) / reference user: it charges any kernel difference to Python."
        )
    else:
        print(
            "  user/sys are split by tick sampling (noisy); total is exact (schedstat).\n"
            "  'exact' ratio = (reference user + exact extra CPU) / reference user:\n"
            "  the extra CPU of the same work can only be Python, i.e. user time."
        )
    for _, conns in cells:
        for a, b in (
            ("loop-raw", "epoll-raw"),
            ("loop-slab", "epoll-raw"),
            ("loop-net", "epoll-net"),
            ("loop-net", "epoll-raw"),
        ):
            if (a, conns) not in med or (b, conns) not in med:
                continue
            # Medians of per-repetition figures: the two servers of one
            # repetition ran back to back, under the same background load.
            pairs = list(zip(results[a, conns], results[b, conns], strict=True))
            ratios = sorted(x["user_us"] / y["user_us"] for x, y in pairs)
            sampled = statistics.median(ratios)
            spread = f"{ratios[0]:.2f}-{ratios[-1]:.2f}" if len(ratios) > 1 else "-"
            extra = statistics.median(x["cpu_us"] - y["cpu_us"] for x, y in pairs)
            exact = statistics.median(
                (y["user_us"] + x["cpu_us"] - y["cpu_us"]) / y["user_us"] for x, y in pairs
            )
            print(
                f"  x{conns:<3d} {a + '/' + b:20s} user ratio {sampled:4.2f} ({spread}),"
                f" extra CPU {extra:+5.2f} µs/rt -> {exact:4.2f} (exact)   target <= 1.25"
            )


# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="EventLoop benchmarks")
    parser.add_argument("--only", default="notify,timers,model,echo-model,dispatch")
    parser.add_argument("--servers", default=",".join(SERVERS), help="dispatch servers")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (interleaved)")
    parser.add_argument("--seconds", type=float, default=3.0, help="dispatch window")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 1 s windows")
    parser.add_argument(
        "--no-perf", action="store_true", help="dispatch: user time from /proc ticks, not perf"
    )
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve, args.port, args.cpu)
    if args.quick:
        args.reps, args.seconds = 1, 1.0
    only = set(args.only.split(","))
    print(f"Python {sys.version.split()[0]}, uvloop {getattr(uvloop, '__version__', 'absent')}")
    if "notify" in only:
        bench_notify(args.reps)
    if "timers" in only:
        bench_timers(args.reps)
    if "model" in only:
        bench_model()
    if "echo-model" in only:
        bench_echo_model()
    if "dispatch" in only:
        servers = tuple(x for x in args.servers.split(",") if x)
        unknown = set(servers) - set(SERVERS)
        if unknown:
            parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
        bench_dispatch(args.reps, args.seconds, servers, perf=not args.no_perf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
