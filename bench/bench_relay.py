"""The relayed broadcast: fan-out over 1 and 2 workers on Redis, and the cross-node latency.

Not a test: a measurement, run by hand (it needs ``redis-server`` and the
``metalio[relay]`` extra).  Two parts:

* **Fan-out.**  One sender writes 1 KiB messages (one ``send`` each,
  ``TCP_NODELAY``) and N receivers read; reported: MiB/s delivered to the
  receivers (all of them together), for the single-process server without
  relay, one node with the relay, and ``--workers 2`` with the relay (the
  receivers spread over both workers by ``SO_REUSEPORT``; the sender lands
  on one of them, so the other worker gets every chunk through Redis).
  The sender stays at most ``--max-lag`` bytes ahead of the slowest
  receiver (counts in shared memory), so no configuration buffers without
  bound and Redis never drops a subscriber; the servers may read several
  queued messages at once (a chunk is then larger than 1 KiB).  Receivers
  are spread over ``--procs`` processes that read with ``MSG_TRUNC`` (the
  kernel discards the bytes without copying them out) and nap ``--nap``
  seconds after each pass over the ready connections.  Also reported: the
  CPU (user+sys, as a share of one core) of the servers and of Redis.
* **Latency.**  Two nodes (two ``metalio broadcast --relay`` processes), a
  sender and a receiver on node A, a receiver on node B, nothing else
  running: one 1 KiB message at a time; reported are p50/p99 of the time
  from ``send`` to the last byte on A's receiver (local) and on B's (cross
  node), and of their difference per message (what the relay adds).

Usage::

    python bench/bench_relay.py                       # N = 100 and 1000, 5 s each
    python bench/bench_relay.py --receivers 100 --seconds 2 --samples 200

The machine (2 cores, shared) runs the servers, Redis and the load
generators at once: compare the rows of one run, not figures across runs.
Every process is started here and killed by PID in a ``finally``.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MSG = 1024
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    """A server process started here; its stderr in a file; stopped by PID."""

    def __init__(self, argv: list[str], log: Path, *, announce: bool = True) -> None:
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(SRC))
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
            )
        self.port = 0
        if announce:
            assert self.proc.stdout is not None
            ready, _, _ = select.select([self.proc.stdout], [], [], 30)
            line = self.proc.stdout.readline().decode() if ready else ""
            match = re.match(r"listening on \S+:(\d+)", line)
            if not match:
                self.stop()
                raise RuntimeError(f"no 'listening on' line: {log.read_text()[-2000:]}")
            self.port = int(match.group(1))

    def pids(self) -> list[int]:
        """The process and its children (the workers)."""
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [pid, *map(int, f.read().split())]
        except OSError:
            return [pid]

    def stop(self) -> None:
        workers = self.pids()[1:]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_redis(tmp: Path) -> Proc:
    exe = shutil.which("redis-server")
    if exe is None:
        sys.exit("bench_relay: redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    redis = Proc(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        tmp / "redis.log",
        announce=False,
    )
    redis.port = port
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith(b"+PONG"):
                return redis
        if time.monotonic() > deadline:
            redis.stop()
            sys.exit("bench_relay: redis-server did not start")
        time.sleep(0.05)


def broadcast(tmp: Path, name: str, *args: str) -> Proc:
    argv = [sys.executable, "-m", "metalio", "broadcast", "--port", "0", "--log-level", "warning"]
    return Proc([*argv, *args], tmp / f"{name}.log")


# -- load -----------------------------------------------------------------------------


def fork(target: object, *args: object) -> int:
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            target(*args)  # type: ignore[operator]
        except BaseException:
            import traceback

            traceback.print_exc()
            status = 1
        finally:
            os._exit(status)
    return pid


def receiver(port: int, counts: memoryview, indices: range, nap: float) -> None:
    """Connect the receivers *indices*, then count what each reads until killed.

    Each pass reads every ready connection once, then naps *nap* seconds, so
    the load side makes far fewer system calls than the servers it measures.
    """
    socks = {}
    poller = select.epoll()
    for i in indices:
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        socks[s.fileno()] = (s, i)
        poller.register(s.fileno(), select.EPOLLIN)
    buf = bytearray(1 << 18)
    while True:
        for fd, _ in poller.poll():
            s, i = socks[fd]
            try:
                n = s.recv_into(buf, len(buf), socket.MSG_TRUNC)
            except BlockingIOError:
                continue
            if n == 0:
                poller.unregister(fd)
                continue
            counts[i] += n
        if nap:
            time.sleep(nap)


def sender(port: int, counts: memoryview, n: int, max_lag: int, sent: memoryview) -> None:
    """1 KiB messages, never more than *max_lag* ahead of the slowest receiver."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    msg = os.urandom(MSG)
    sink = bytearray(1 << 18)
    total = 0
    allowance = 0
    while True:
        if allowance < MSG:
            slowest = min(counts[:n])
            allowance = max_lag - (total - slowest)
        want_write = allowance >= MSG
        r, w, _ = select.select([s], [s] if want_write else [], [], 0.002)
        if r:
            with contextlib.suppress(BlockingIOError):
                s.recv_into(sink, len(sink), socket.MSG_TRUNC)  # our own echo
        if w:
            for _ in range(min(allowance // MSG, 64)):
                try:
                    k = s.send(msg)
                except BlockingIOError:
                    break
                total += k
                allowance -= k
                if k < MSG:
                    s.setblocking(True)  # finish the message: chunks stay whole messages
                    s.sendall(msg[k:])
                    s.setblocking(False)
                    total += MSG - k
                    allowance -= MSG - k
            sent[0] = total


def fanout(server: Proc, redis: Proc | None, n: int, ns: argparse.Namespace) -> dict:
    shared = mmap.mmap(-1, 8 * (n + 1))
    counts = memoryview(shared).cast("q")[:n]
    sent = memoryview(shared).cast("q")[n:]
    pids: list[int] = []
    try:
        per = -(-n // ns.procs)
        for start in range(0, n, per):
            indices = range(start, min(start + per, n))
            pids.append(fork(receiver, server.port, counts, indices, ns.nap))
        time.sleep(0.5 + n / 2000)  # every receiver connected and admitted
        pids.append(fork(sender, server.port, counts, n, ns.max_lag, sent))
        deadline = time.monotonic() + 30
        while min(counts) == 0:  # everyone gets bytes (the relays are up)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(1 for c in counts if c == 0)} receivers got nothing")
            time.sleep(0.05)
        time.sleep(1.0)  # warm-up
        watched = server.pids() + ([redis.proc.pid] if redis else [])
        cpu0 = [cpu_seconds(pid) for pid in watched]
        b0, t0 = sum(counts), time.monotonic()
        time.sleep(ns.seconds)
        b1, t1 = sum(counts), time.monotonic()
        cpu1 = [cpu_seconds(pid) for pid in watched]
        elapsed = t1 - t0
        cpu = [(b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)]
        return {
            "mib_s": (b1 - b0) / elapsed / MiB,
            "server_cpu": sum(cpu[: len(server.pids())]),
            "redis_cpu": cpu[-1] if redis else 0.0,
        }
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        del counts, sent


# -- latency ----------------------------------------------------------------------------


def latency(tmp: Path, redis: Proc, samples: int) -> dict[str, list[float]]:
    url = f"redis://127.0.0.1:{redis.port}/latency"
    a = broadcast(tmp, "lat-a", "--relay", url)
    b = broadcast(tmp, "lat-b", "--relay", url)
    socks: list[socket.socket] = []
    try:
        time.sleep(1.0)  # both relays up
        s, la, rb = (socket.create_connection(("127.0.0.1", p)) for p in (a.port, a.port, b.port))
        socks += [s, la, rb]
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(0.3)
        local: list[float] = []
        cross: list[float] = []
        added: list[float] = []
        for i in range(samples + 10):
            msg = i.to_bytes(4, "big") * (MSG // 4)
            got = {la: 0, rb: 0, s: 0}
            when: dict[socket.socket, float] = {}
            t0 = time.perf_counter()
            s.sendall(msg)
            deadline = t0 + 5
            while len(when) < 3:
                r, _, _ = select.select(list(got), [], [], max(deadline - time.perf_counter(), 0))
                if not r:
                    raise RuntimeError(f"message {i} not delivered within 5 s")
                for sock in r:
                    got[sock] += len(sock.recv(65536))
                    if got[sock] >= MSG and sock not in when:
                        when[sock] = time.perf_counter()
            if i >= 10:  # the first ones warm the path up
                local.append(when[la] - t0)
                cross.append(when[rb] - t0)
                added.append(when[rb] - when[la])
            time.sleep(0.002)
        return {"local": local, "cross": cross, "added": added}
    finally:
        for sock in socks:
            sock.close()
        a.stop()
        b.stop()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--receivers", default="100,1000", help="N values (default: %(default)s)")
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per row")
    ap.add_argument("--procs", type=int, default=2, help="receiver processes")
    ap.add_argument("--max-lag", type=int, default=256 << 10, help="sender's lead, bytes")
    ap.add_argument("--nap", type=float, default=0.002, help="receivers' nap per pass, s")
    ap.add_argument("--samples", type=int, default=500, help="latency samples")
    ns = ap.parse_args(argv)
    try:
        import hiredis  # noqa: F401
    except ImportError:
        sys.exit("bench_relay: the relay needs hiredis: pip install 'metalio[relay]'")
    with tempfile.TemporaryDirectory(prefix="bench_relay.") as name:
        tmp = Path(name)
        redis = start_redis(tmp)
        try:
            url = f"redis://127.0.0.1:{redis.port}"
            configs = [
                ("single process, no relay", ()),
                ("1 worker + relay", ("--relay", f"{url}/one")),
                ("2 workers + relay", ("--workers", "2", "--relay", f"{url}/two")),
            ]
            print(f"fan-out, 1 KiB messages, sender <= {ns.max_lag >> 10} KiB ahead, "
                  f"{ns.seconds:g} s per row, {os.cpu_count()} cores")  # fmt: skip
            print(f"{'N':>5}  {'server':<26} {'MiB/s':>8} {'x 1 worker':>10} "
                  f"{'server CPU':>10} {'redis CPU':>9}")  # fmt: skip
            for n in (int(x) for x in ns.receivers.split(",")):
                one = None
                for label, args in configs:
                    server = broadcast(tmp, f"fan-{n}-{len(args)}", *args)
                    try:
                        row = fanout(server, redis if args else None, n, ns)
                    finally:
                        server.stop()
                    if label.startswith("1 worker"):
                        one = row["mib_s"]
                    ratio = f"{row['mib_s'] / one:.2f}" if one and "relay" in label else ""
                    print(f"{n:>5}  {label:<26} {row['mib_s']:>8.1f} {ratio:>10} "
                          f"{row['server_cpu']:>9.0%} {row['redis_cpu']:>9.0%}", flush=True)  # fmt: skip
            result = latency(tmp, redis, ns.samples)
            print(f"\nlatency, one 1 KiB message at a time, {ns.samples} samples (ms)")
            for key in ("local", "cross", "added"):
                values = result[key]
                print(f"  {key:<6} p50 {pct(values, 50) * 1e3:7.3f}  p99 {pct(values, 99) * 1e3:7.3f}"
                      f"  mean {statistics.fmean(values) * 1e3:7.3f}")  # fmt: skip
        finally:
            redis.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
