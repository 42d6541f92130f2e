"""Soak: the broadcast server under churning clients for minutes; does anything grow?

The server is the real command line (``python -m metalio broadcast`` from
this checkout, loopback only).  A separate *churn* process keeps up to
``--clients`` connections going, each with a behaviour drawn at random and
a bounded lifetime:

* ``chatty``  sends a timestamped record every 0.1-0.3 s and reads everything;
  closes normally (FIN);
* ``abrupt``  the same, but closes with ``SO_LINGER`` 0 (a reset), sometimes
  in the middle of a burst;
* ``slow``    never reads (a slow reader: the server queues for it until its
  1 MiB limit, then disconnects it), sends now and then;
* ``half``    sends a few records, shuts down its sending side, keeps
  reading, then closes;
* ``flash``   connects and closes at once (FIN or reset), no data;
* ``blaster`` sends 16 KiB chunks of filler every 50 ms and reads everything,
  so slow readers really do fall behind.

Connects are rate-limited (``--connect-rate`` per second), every lifetime is
at most 30 s, and the whole run lasts ``--minutes``.

In this process a *probe* connection stays up the whole time, sends a
20-byte record (magic, ``time.monotonic_ns()``, sender, sequence) every
20 ms and reads every broadcast; the delivery latency of every record it
receives (its own and the churn clients', clocks are system-wide) is
recorded.  Every ``--interval`` seconds one row is printed: the server's
RSS (``VmRSS``) and open descriptors (``/proc/PID/fd``), the churn counts,
and the probe's p50/p99/max latency over the interval.  ``--plot FILE``
also draws them (needs matplotlib).  Flat lines are the target: RSS and
descriptors must not drift upwards, the p99 must not creep.

Usage::

    python bench/soak.py                   # 10 minutes
    python bench/soak.py --minutes 3 --plot soak.png

Every process started here is killed by PID in a ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing as mp
import os
import random
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
RECORD = struct.Struct("!4sqII")  # magic, monotonic ns at send, sender, sequence
MAGIC = b"SOAK"
RESET = struct.pack("ii", 1, 0)
MAX_LIFETIME = 30.0
REPO_SRC = Path(__file__).resolve().parent.parent / "src"

# Churn counters, in one shared array.
C_CONNECTS, C_FIN, C_RST, C_SERVER_CLOSED, C_CONNECT_FAILS, C_ACTIVE, C_SENT = range(7)
COUNTER_NAMES = ("connects", "fin", "rst", "server_closed", "connect_fails", "active", "sent")

BEHAVIOURS = (
    ("chatty", 0.35),
    ("abrupt", 0.20),
    ("slow", 0.12),
    ("half", 0.10),
    ("flash", 0.18),
    ("blaster", 0.05),
)


# -- the server ---------------------------------------------------------------------


def start_server(backend: str | None, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    cmd = [sys.executable, "-m", "metalio", "broadcast", "--host", HOST, "--port", "0"]
    cmd += ["--log-level", "warning"]
    if backend:
        cmd += ["--backend", backend]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_SRC), env.get("PYTHONPATH")]))
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env)
    assert proc.stdout is not None
    data = b""
    deadline = time.monotonic() + 20
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                proc.kill()
                raise SystemExit("the server did not print 'listening on' within 20 s")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise SystemExit(f"the server exited: {log.read_text(errors='replace')}")
            data += chunk
    m = re.search(rb"listening on [\d.]+:(\d+)", data)
    if m is None:
        proc.kill()
        raise SystemExit(f"unexpected server output: {data!r}")
    return proc, int(m.group(1))


def server_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def server_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# -- the churn process ---------------------------------------------------------------


@dataclass
class Client:
    sock: socket.socket
    kind: str
    ends: float
    next_send: float = 0.0
    seq: int = 0
    half_closed: bool = False


def churn_main(
    port: int,
    seconds: float,
    max_clients: int,
    connect_rate: float,
    seed: int,
    counters: Any,
    stop: Any,
) -> None:
    """The churn process: runs until *seconds* pass or *stop* is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    rng = random.Random(seed)
    sel = selectors.DefaultSelector()
    clients: dict[int, Client] = {}
    sender_base = (os.getpid() & 0xFFFF) << 16
    filler = b"\0" * 16384
    deadline = time.monotonic() + seconds
    next_connect = time.monotonic()
    kinds = [k for k, _ in BEHAVIOURS]
    weights = [w for _, w in BEHAVIOURS]

    def close(fd: int, abrupt: bool) -> None:
        c = clients.pop(fd)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(c.sock)
        if abrupt:
            with contextlib.suppress(OSError):
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
        c.sock.close()
        counters[C_RST if abrupt else C_FIN] += 1
        counters[C_ACTIVE] = len(clients)

    while time.monotonic() < deadline and not stop.is_set():
        now = time.monotonic()
        # New connections, rate-limited and bounded.
        while len(clients) < max_clients and now >= next_connect:
            next_connect += 1.0 / connect_rate
            kind = rng.choices(kinds, weights)[0]
            try:
                sock = socket.create_connection((HOST, port), timeout=2)
            except OSError:
                counters[C_CONNECT_FAILS] += 1
                continue
            counters[C_CONNECTS] += 1
            if kind == "flash":
                if rng.random() < 0.5:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
                    counters[C_RST] += 1
                else:
                    counters[C_FIN] += 1
                sock.close()
                continue
            sock.setblocking(False)
            if kind == "slow":
                # A small receive buffer so the server's queue for it fills sooner.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c = Client(sock, kind, now + rng.uniform(2.0, MAX_LIFETIME), now)
            clients[sock.fileno()] = c
            if kind != "slow":  # a slow reader is never read
                sel.register(sock, selectors.EVENT_READ)
            counters[C_ACTIVE] = len(clients)
        # Reads (slow readers are not even registered: they never read).
        for key, _ in sel.select(0.01):
            fd = key.fd
            reader = clients.get(fd)
            if reader is None or reader.kind == "slow":
                continue
            try:
                while True:
                    data = reader.sock.recv(262144)
                    if not data:
                        counters[C_SERVER_CLOSED] += 1
                        close(fd, abrupt=False)
                        break
                    if len(data) < 262144:
                        break
            except BlockingIOError:
                pass
            except OSError:
                counters[C_SERVER_CLOSED] += 1
                close(fd, abrupt=False)
        # Sends and ends of life.
        now = time.monotonic()
        for fd, c in list(clients.items()):
            if now >= c.ends:
                close(fd, abrupt=c.kind == "abrupt" or (c.kind == "slow" and rng.random() < 0.5))
                continue
            if c.half_closed or now < c.next_send:
                continue
            if c.kind == "blaster":
                payload, c.next_send = filler, now + 0.05
            else:
                c.seq += 1
                payload = RECORD.pack(
                    MAGIC, time.monotonic_ns(), sender_base | (fd & 0xFFFF), c.seq
                )
                c.next_send = now + (rng.uniform(0.1, 0.3) if c.kind != "slow" else 1.0)
            try:
                c.sock.send(payload)
                counters[C_SENT] += 1
            except BlockingIOError:
                pass
            except OSError:
                counters[C_SERVER_CLOSED] += 1
                close(fd, abrupt=False)
                continue
            if c.kind == "abrupt" and rng.random() < 0.02:
                close(fd, abrupt=True)  # mid-conversation reset
            elif c.kind == "half" and c.seq >= 5:
                with contextlib.suppress(OSError):
                    c.sock.shutdown(socket.SHUT_WR)
                c.half_closed = True
    for fd in list(clients):
        close(fd, abrupt=True)
    sel.close()


# -- the probe ------------------------------------------------------------------------


@dataclass
class Probe:
    port: int
    sock: socket.socket = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)  # ms, since the last take()
    records: int = 0
    resyncs: int = 0
    own_sent: int = 0
    closed: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    error: str = ""

    def __post_init__(self) -> None:
        self.sock = socket.create_connection((HOST, self.port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.thread = threading.Thread(target=self._run, name="probe", daemon=True)

    def take(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
        return out

    def _run(self) -> None:
        buf = bytearray()
        seq = 0
        next_send = time.monotonic()
        size = RECORD.size
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(self.sock, selectors.EVENT_READ)
                while not self.stop.is_set():
                    now = time.monotonic()
                    if now >= next_send:
                        seq += 1
                        rec = RECORD.pack(MAGIC, time.monotonic_ns(), 0xFFFFFFFF, seq)
                        with contextlib.suppress(BlockingIOError):
                            self.sock.send(rec)
                            self.own_sent += 1
                        next_send = now + 0.02
                    if not sel.select(max(0.0, next_send - time.monotonic())):
                        continue
                    while True:
                        try:
                            data = self.sock.recv(262144)
                        except BlockingIOError:
                            break
                        if not data:
                            self.closed = True
                            self.error = "the server closed the probe connection"
                            return
                        buf += data
                    arrived = time.monotonic_ns()
                    got: list[float] = []
                    i = 0
                    while True:
                        j = buf.find(MAGIC, i)
                        if j < 0:
                            i = max(i, len(buf) - 3)  # keep a possible partial magic
                            break
                        if j != i and any(buf[i:j]):
                            self.resyncs += 1  # filler (zeros) is expected, nothing else
                        if j + size > len(buf):
                            i = j
                            break
                        _, sent_ns, _, _ = RECORD.unpack_from(buf, j)
                        got.append((arrived - sent_ns) / 1e6)
                        i = j + size
                    del buf[:i]
                    if got:
                        with self.lock:
                            self.latencies += got
                            self.records += len(got)
        except OSError as exc:
            self.error = f"probe: {exc!r}"
            self.closed = True


# -- the report -------------------------------------------------------------------------


@dataclass
class Row:
    t: float
    rss: float
    fds: int
    active: int
    connects: int
    records: int
    p50: float
    p99: float
    worst: float


HEADER = (
    f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'active':>6} {'connects':>8} "
    f"{'records':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}"
)


def fmt(row: Row) -> str:
    return (
        f"{row.t:7.0f} {row.rss:8.1f} {row.fds:5d} {row.active:6d} {row.connects:8d} "
        f"{row.records:8d} {row.p50:7.2f} {row.p99:7.2f} {row.worst:7.1f}"
    )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def plot(rows: list[Row], path: str) -> None:
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print(f"(no matplotlib: {path} not written)")
        return
    t = [r.t / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [r.rss for r in rows])
    axes[0].set_ylabel("server RSS (MiB)")
    axes[1].plot(t, [r.fds for r in rows])
    axes[1].set_ylabel("server fds")
    axes[2].plot(t, [r.p99 for r in rows], label="p99")
    axes[2].plot(t, [r.p50 for r in rows], label="p50")
    axes[2].set_ylabel("delivery latency (ms)")
    axes[2].set_xlabel("minutes")
    axes[2].legend()
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle("metalio broadcast soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}")


# -- main ---------------------------------------------------------------------------------


@contextlib.contextmanager
def killed_in_the_end(procs: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            pid = p.pid
            if pid is None:
                continue
            alive = p.poll() is None if isinstance(p, subprocess.Popen) else p.is_alive()
            if alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if isinstance(p, subprocess.Popen):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
            else:
                p.join(10)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds per row (10)")
    parser.add_argument("--clients", type=int, default=100, help="most churn connections (100)")
    parser.add_argument(
        "--connect-rate", type=float, default=25.0, help="new connections per second (25)"
    )
    parser.add_argument("--backend", default=None, help="the server's --backend")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--plot", metavar="FILE", help="also draw the rows (needs matplotlib)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seconds = args.minutes * 60
    log = Path(tempfile.mkdtemp(prefix="metalio-soak-")) / "server.log"
    server, port = start_server(args.backend, log)
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", len(COUNTER_NAMES), lock=False)
    stop = ctx.Event()
    churn = ctx.Process(
        target=churn_main,
        args=(port, seconds, args.clients, args.connect_rate, args.seed, counters, stop),
        name="soak-churn",
        daemon=True,
    )
    procs: list[Any] = [server, churn]
    rows: list[Row] = []
    probe: Probe | None = None
    status = 0
    with killed_in_the_end(procs):
        probe = Probe(port)
        probe.thread.start()
        churn.start()
        print(
            f"metalio broadcast soak: server pid {server.pid} on {HOST}:{port}, churn pid "
            f"{churn.pid}, {args.minutes:g} min, up to {args.clients} clients, "
            f"{args.connect_rate:g} connects/s; server log {log}"
        )
        print(HEADER, flush=True)
        t0 = time.monotonic()
        next_row = t0 + args.interval
        try:
            while True:
                time.sleep(max(0.0, next_row - time.monotonic()))
                next_row += args.interval
                if server.poll() is not None:
                    print(f"the server exited with status {server.returncode}")
                    status = 1
                    break
                lat = probe.take()
                row = Row(
                    t=time.monotonic() - t0,
                    rss=server_rss_mib(server.pid),
                    fds=server_fds(server.pid),
                    active=counters[C_ACTIVE],
                    connects=counters[C_CONNECTS],
                    records=len(lat),
                    p50=statistics.median(lat) if lat else float("nan"),
                    p99=percentile(lat, 0.99),
                    worst=max(lat) if lat else float("nan"),
                )
                rows.append(row)
                print(fmt(row), flush=True)
                if probe.closed:
                    print(probe.error)
                    status = 1
                    break
                if row.t >= seconds - 1e-6 or not churn.is_alive():
                    break
        except KeyboardInterrupt:
            print("interrupted")
        stop.set()
        churn.join(10)
        # Quiet period: the churn is gone; what does the server still hold?
        probe.stop.set()
        probe.thread.join(5)
        probe.sock.close()
        time.sleep(2)
        idle_fds = server_fds(server.pid) if server.poll() is None else -1
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(10)
        except subprocess.TimeoutExpired:
            code = None
    print()
    print("counts: " + ", ".join(f"{n} {counters[i]}" for i, n in enumerate(COUNTER_NAMES)))
    print(
        f"probe: {probe.records} records received, {probe.resyncs} resyncs, {probe.own_sent} sent"
    )
    print(f"server after the churn stopped: {idle_fds} fds; exit status on SIGTERM: {code}")
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(f"first row: {fmt(first)}")
        print(f"last row:  {fmt(last)}")
        print(
            f"drift first->last: RSS {last.rss - first.rss:+.1f} MiB, fds {last.fds - first.fds:+d}, "
            f"p99 {last.p99 - first.p99:+.2f} ms"
        )
        half = rows[len(rows) // 2 :]
        print(
            f"second half: RSS {min(r.rss for r in half):.1f}-{max(r.rss for r in half):.1f} MiB, "
            f"fds {min(r.fds for r in half)}-{max(r.fds for r in half)}"
        )
    if args.plot and rows:
        plot(rows, args.plot)
    if code != 0:
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
