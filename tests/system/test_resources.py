"""Resource accounting: descriptors and memory before and after heavy repetition.

Each test does one warm-up round (so caches, free lists and allocator arenas
reach their working size), collects garbage, measures open descriptors
(``/proc/self/fd``, or ``/proc/PID/fd`` for a subprocess) and resident memory
(``/proc/self/statm``, ``VmRSS`` for a subprocess), repeats the work many
times, and measures again:

* descriptors must be *exactly* equal;
* resident memory may grow by at most ``RSS_MARGIN`` (a leak of a few dozen
  bytes per cycle would show as several MiB over these counts).

Counts (none scaled down; each part takes a few seconds here):

* 10,000 connect/accept/close cycles through the broadcast server, once
  in-process (``metalio.apps.broadcast.serve`` in a thread) and once as the
  real command line in a subprocess;
* 1,000 ``EventLoop`` create/close cycles per backend;
* 1,000,000 timer set/cancel through ``EventLoop.timeout`` /
  ``clear_timeout`` (1 in 100 allowed to fire);
* 1,000,000 notify messages from another thread.

How the broadcast server lets go of clients: a client that closes normally
(FIN) is indistinguishable from one that only shut down its sending side,
which the server keeps subscribed (``metalio.apps.broadcast``: half-closed
clients keep receiving); it is reaped when a broadcast to it fails, or by
TCP keep-alive after 30 s of silence.  So each batch ends with a broadcast
from a short-lived client, which reaps the batch's closed clients, as any
traffic would.  A third of the clients close abruptly (``SO_LINGER`` 0: a
reset), which the server sees at once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from metalio import EventLoop, EventLoopConfig, Handler, NotifyFull
from metalio._backends import available_backends

RSS_MARGIN = 5 << 20
TRACED_MARGIN = 256 << 10  # Python-level allocations still alive after 1M pure-Python cycles
PAGE = os.sysconf("SC_PAGE_SIZE")
RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST

CYCLES = 10_000
BATCH = 100
LOOPS = 1_000
TIMERS = 1_000_000
MESSAGES = 1_000_000
# A free-threaded build frees some memory late (QSBR-deferred frees, run by a
# later gc.collect) and its allocator keeps pages that RSS then counts.
FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc for descriptor and memory counts"
)


BACKENDS = [name for name in ("epoll", "poll", "select") if name in available_backends()]


# -- measuring -----------------------------------------------------------------------


def fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss(pid: int | str = "self") -> int:
    if pid == "self":
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/PID/status")


def settled() -> tuple[int, int]:
    gc.collect()
    return fds(), rss()


def check_flat(
    name: str, before: tuple[int, int], after: tuple[int, int], count: int, *, rss: bool = True
) -> None:
    growth = after[1] - before[1]
    print(
        f"\nRESOURCES {name}: {count:,} cycles, fds {before[0]} -> {after[0]}, "
        f"RSS {before[1] / 2**20:.1f} -> {after[1] / 2**20:.1f} MiB ({growth / 2**10:+.0f} KiB)"
    )
    assert after[0] == before[0], f"{name}: descriptors {before[0]} -> {after[0]}"
    if rss:
        assert growth <= RSS_MARGIN, f"{name}: RSS grew by {growth / 2**20:.1f} MiB"


@contextlib.contextmanager
def traced(name: str) -> Iterator[None]:
    """Fail if Python-level allocations still alive afterwards grew by more than
    ``TRACED_MARGIN``: finer than RSS, which the allocator's arenas blur."""
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        yield
        gc.collect()
        if FREE_THREADED:
            gc.collect()  # runs the frees the first collection deferred
        growth = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    print(f"\nRESOURCES {name}: traced Python allocations {growth / 2**10:+.0f} KiB")
    assert growth <= TRACED_MARGIN, f"{name}: {growth / 2**10:.0f} KiB still allocated"


def wait_for(cond: Callable[[], bool], bound: float, what: str) -> None:
    deadline = time.monotonic() + bound
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound} s waiting for {what}")
        time.sleep(0.005)


# -- the broadcast server --------------------------------------------------------------


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise AssertionError("the server closed a live client")
        data += chunk
    return data


def broadcast_round(addr: tuple[str, int]) -> None:
    """One short-lived client broadcasts twice and reads both back, then resets."""
    with socket.create_connection(addr, timeout=10) as s:
        for _ in range(2):
            s.sendall(b"!")
            assert recv_exactly(s, 1) == b"!"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)


def client_cycles(addr: tuple[str, int], count: int) -> None:
    """*count* connect/close cycles in batches; every batch exchanges data."""
    for _ in range(count // BATCH):
        socks = []
        try:
            for _ in range(BATCH):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.settimeout(10)
                s.connect(addr)
            # The first one broadcasts; it (and, unread, every other) receives it.
            socks[0].sendall(b"hello")
            assert recv_exactly(socks[0], 5) == b"hello"
            for i, s in enumerate(socks):
                if i % 3 == 0:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        finally:
            for s in socks:
                s.close()
        broadcast_round(addr)


@contextlib.contextmanager
def in_process_server() -> Iterator[Any]:
    from metalio.apps import broadcast

    started = threading.Event()
    servers: list[broadcast.BroadcastServer] = []
    errors: list[BaseException] = []
    quiet = logging.getLogger("tests.resources.broadcast")
    quiet.setLevel(logging.ERROR)

    def on_listening(server: broadcast.BroadcastServer) -> None:
        servers.append(server)
        started.set()

    def serve() -> None:
        try:
            broadcast.serve(
                "127.0.0.1", 0, handle_signals=False, on_listening=on_listening, logger=quiet
            )
        except BaseException as exc:
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert started.wait(10) and not errors, errors
        yield servers[0]
    finally:
        if servers:
            servers[0].stop()
        thread.join(10)
    assert not thread.is_alive()
    assert errors == []


@pytest.mark.slow
def test_broadcast_in_process_10k_connections() -> None:
    with in_process_server() as server:
        addr = server.address
        client_cycles(addr, 1_000)  # warm-up
        wait_for(lambda: len(server.clients) == 0, 20, "the warm-up clients to be reaped")
        before = settled()
        client_cycles(addr, CYCLES)
        wait_for(lambda: len(server.clients) == 0, 20, "every client to be reaped")
        after = settled()
    check_flat("broadcast in-process connect/accept/close", before, after, CYCLES)


@pytest.mark.slow
def test_broadcast_subprocess_10k_connections(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metalio", "broadcast", "--port", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        addr = _listening_addr(proc)
        pid = proc.pid
        idle = fds(pid)  # listener, spare, epoll, awakener, signal pair ...
        client_cycles(addr, 1_000)
        wait_for(lambda: fds(pid) == idle, 20, "the warm-up clients to be reaped")
        before = (fds(pid), rss(pid))
        client_cycles(addr, CYCLES)
        wait_for(lambda: fds(pid) <= before[0], 20, "every client to be reaped")
        time.sleep(0.2)
        after = (fds(pid), rss(pid))
        assert proc.poll() is None, log.read_text()
    finally:
        proc.kill()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()
    check_flat("broadcast subprocess (server's fds and RSS)", before, after, CYCLES)


def _listening_addr(proc: subprocess.Popen[bytes]) -> tuple[str, int]:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + 20
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError("no 'listening on' line from the server")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError("the server exited before listening")
            data += chunk
    m = re.search(rb"listening on ([\d.]+):(\d+)", data)
    assert m is not None, data
    return m.group(1).decode(), int(m.group(2))


# -- event loops ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_event_loop_create_close_1000(backend: str) -> None:
    def cycle() -> None:
        loop = EventLoop(EventLoopConfig(backend=backend))
        tx = loop.channel()
        tx.send("m")
        loop.timeout("t", 0)
        loop.run_once(Handler(), timeout=0)
        loop.close()

    name = f"EventLoop create/close [{backend}]"
    for _ in range(100):
        cycle()
    before = settled()
    # RSS on a free-threaded build swings by 10-30 MiB over these cycles with
    # no object left alive (the allocator's pages, see FREE_THREADED): there
    # the live Python allocations are what is checked.
    with traced(name) if FREE_THREADED else contextlib.nullcontext():
        for _ in range(LOOPS):
            cycle()
    check_flat(name, before, settled(), LOOPS, rss=not FREE_THREADED)


# -- timers ----------------------------------------------------------------------------


class CountTimeouts(Handler):
    def __init__(self) -> None:
        self.fired = 0

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        self.fired += 1


@pytest.mark.slow
def test_timer_set_cancel_1m() -> None:
    with EventLoop() as loop:
        h = CountTimeouts()

        def churn(n: int) -> None:
            timeout, clear = loop.timeout, loop.clear_timeout
            for i in range(n):
                handle = timeout(i, 0.0 if i % 100 == 0 else (i % 977) * 0.01)
                if i % 100:
                    assert clear(handle)
                if i % 10_000 == 9_999:
                    loop.run_once(h, timeout=0)
            loop.run_once(h, timeout=0.01)

        churn(100_000)
        assert len(loop._timer) == 0
        h.fired = 0
        before = settled()
        with traced("timer set/cancel"):
            churn(TIMERS)

            def all_fired() -> bool:
                loop.run_once(h, timeout=0.01)
                return h.fired >= TIMERS // 100

            wait_for(all_fired, 10, "the uncancelled timeouts to fire")
        after = settled()
        assert h.fired == TIMERS // 100  # every uncancelled one, once; no cancelled one
        assert len(loop._timer) == 0
    check_flat("timer set/cancel", before, after, TIMERS)


# -- notify messages ---------------------------------------------------------------------


class CountMessages(Handler):
    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.in_order = True

    def notify(self, loop: EventLoop, msg: Any) -> None:
        if msg != self.count:
            self.in_order = False
        self.count += 1
        if self.count == self.total:
            loop.shutdown()

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        loop.shutdown()  # the watchdog


@pytest.mark.slow
def test_notify_1m_messages() -> None:
    with EventLoop(EventLoopConfig(notify_capacity=4096)) as loop:
        tx = loop.channel()

        def pump(n: int) -> CountMessages:
            errors: list[BaseException] = []

            def send() -> None:
                try:
                    for i in range(n):
                        while True:
                            try:
                                tx.send(i)
                                break
                            except NotifyFull:
                                time.sleep(0.0002)
                except BaseException as exc:
                    errors.append(exc)

            h = CountMessages(n)
            th = threading.Thread(target=send)
            th.start()
            watchdog = loop.timeout("watchdog", 60)
            loop.run(h)
            loop.clear_timeout(watchdog)
            th.join(10)
            assert not th.is_alive() and errors == []
            assert h.count == n and h.in_order
            return h

        pump(100_000)
        before = settled()
        with traced("notify messages"):
            pump(MESSAGES)
        after = settled()
        assert len(loop._channel.queue) == 0
        assert len(loop._channel.credits) == 4096  # every credit given back
    check_flat("notify messages", before, after, MESSAGES)
