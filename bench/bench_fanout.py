"""Broadcast fan-out: metalio's broadcast server next to asyncio and uvloop, one run.

One sender writes 1 KiB messages to a broadcast server, which writes every
byte to N receivers (and back to the sender).  Reported per window, N and
server: MiB/s delivered to the receivers, the server's CPU (user+sys from
``/proc/PID/stat``) as a share of one core, per delivered MiB, and its user
part, with the ratios against asyncio and uvloop measured in the same run.

Usage::

    python bench/bench_fanout.py              # windows 1 KiB and 64 KiB, N = 10 and 100
    python bench/bench_fanout.py --windows 1024 --receivers 10 --repeat 1 --servers metalio,asyncio
    python bench/bench_fanout.py --windows flood --receivers 2,10   # one sender flooding
    python bench/bench_fanout.py --baseline main=/path/to/other/checkout/src   # before/after

Two regimes
-----------
The *window* is how many bytes the sender may have sent and not yet seen
come back (it is a client of the broadcast too, and last in every server's
list, so its echo means the whole fan-out of that byte was written).

* ``--windows 1024``: one 1 KiB message in flight, so the server reads and
  broadcasts 1 KiB chunks, one per event: the per-message cost of the
  server's code, as in the echo benchmark's one-outstanding-message runs.
  The loop through the load generator is part of every round, so the
  server is not 100 % busy; compare servers by the ratios.
* ``--windows 65536``: 64 messages in flight, the server reads them in
  batches and writes large chunks: the kernel's copying and TCP work
  dominates and every server converges (CPU per MiB is the figure).
* ``--windows flood``: no window and no lag limit: the sender writes 64 KiB
  blocks as fast as the server reads them (draining its own echo), the
  receivers read continuously (no nap).  The server's flow control is
  what is measured: metalio paces the sender to the receivers
  (``--soft-buffer``), and the asyncio/uvloop servers run with the
  standard asyncio equivalent, ``pause_reading()`` on every client while
  any transport is over its write high-water mark (``pause_writing``),
  ``resume_reading()`` once none is.  Receivers lost (disconnected) are
  reported; with flow control there should be none.

Method
------
* Servers: ``python -m metalio broadcast`` from this checkout's ``src/``
  (and, with ``--baseline NAME=SRC``, from another source tree, for a
  before/after comparison in one run), and an equivalent asyncio ``Protocol`` server (``data_received`` writes
  the bytes to every transport) on the default loop and on uvloop, run from
  this file (``--serve asyncio|uvloop``).  All print ``listening on
  HOST:PORT`` and set ``TCP_NODELAY`` on their connections (asyncio and
  uvloop do so by default).
* Load: separate processes.  The sender (``TCP_NODELAY``, one ``send`` per
  1 KiB message) waits on its own echo, so the window refills the moment
  the server has written.  The receivers are spread over ``--procs``
  processes that read in bulk: each pass reads every ready connection once
  with ``MSG_TRUNC`` (the kernel discards the bytes without copying them
  out; ``--copy`` to copy) and then naps ``--nap`` seconds, so the load side
  makes far fewer system calls than the server it measures.  Receivers
  publish their byte counts in shared memory; the sender also stays at most
  ``--max-lag`` bytes ahead of the slowest receiver, so no server ever
  buffers without bound (and metalio never has to cut a slow reader off).
* CPU: with two or more cores the server is pinned to CPU 0 and every load
  process to CPU 1 (``--no-pin`` to leave scheduling alone).
* Each (window, N, server) runs ``--repeat`` times, interleaved (the
  server order rotates between repetitions), after a synchronisation round
  (every receiver admitted) and ``--warmup`` seconds; medians are reported,
  and each ratio is the median of the per-repetition ratios (the two runs
  of one repetition met the same background load).  Every process is killed by PID in a
  ``finally``; loopback only.  The machine is shared and noisy: compare
  ratios within one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
MESSAGE = 1024
FLOOD = 0  # the window value that stands for the flood case
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVERS = ("metalio", "asyncio", "uvloop")

# Shared slots (uint64): [0, n) receiver byte counts, then these.
SLOT_SENT = 0  # + n
SLOT_STOP = 1  # + n
SLOT_READY = 2  # + n: receiver processes connected
SLOT_GO = 3  # + n: the sender may start
SLOT_DEAD = 4  # + n: connections that ended early
SLOTS = 5


# -- the asyncio / uvloop servers (run as subprocesses of this file) ----------------


def serve_asyncio(flavour: str, paced: bool) -> None:
    import asyncio

    clients: list[asyncio.Transport] = []
    full: set[asyncio.BaseTransport] = set()  # transports over their write high-water mark

    class Broadcast(asyncio.Protocol):
        transport: asyncio.Transport

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
            clients.append(transport)  # type: ignore[arg-type]
            if full:
                self.transport.pause_reading()

        def data_received(self, data: bytes) -> None:
            for transport in clients:
                transport.write(data)

        def connection_lost(self, exc: Exception | None) -> None:
            clients.remove(self.transport)
            if self.transport in full:
                self.resume_writing()

        if paced:
            # asyncio's flow control: a full transport pauses every sender.
            def pause_writing(self) -> None:
                if not full:
                    for transport in clients:
                        transport.pause_reading()
                full.add(self.transport)

            def resume_writing(self) -> None:
                full.discard(self.transport)
                if not full:
                    for transport in clients:
                        if not transport.is_closing():
                            transport.resume_reading()

    if flavour == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server = loop.run_until_complete(loop.create_server(Broadcast, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{port}", flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, loop.stop)
    loop.run_forever()


# -- process helpers -----------------------------------------------------------------


def start_server(
    name: str, cpu: int | None, *, sources: dict[str, Path], paced: bool
) -> tuple[subprocess.Popen[bytes], int]:
    if name in sources:
        src = sources[name]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
        )
        cmd = [
            sys.executable,
            "-m",
            "metalio",
            "broadcast",
            "--port",
            "0",
            "--log-level",
            "warning",
        ]
    else:
        env = dict(os.environ)
        cmd = [sys.executable, __file__, "--serve", name, *(["--paced"] if paced else [])]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env)
    try:
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        assert proc.stdout is not None
        if not select.select([proc.stdout], [], [], 20)[0]:
            raise RuntimeError(f"{name} server did not start")
        line = proc.stdout.readline().decode()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        if not match:
            raise RuntimeError(f"{name} server said {line!r}")
        return proc, int(match.group(1))
    except BaseException:
        kill(proc.pid)
        proc.wait()
        raise


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of *pid* from ``/proc/PID/stat``."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def fork(target: object, *args: object, cpu: int | None) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            target(*args)  # type: ignore[operator]
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


# -- the load generator -----------------------------------------------------------------


def receiver(port: int, counts: memoryview, indices: range, n: int, copy: bool, nap: float) -> None:
    socks = []
    for _ in indices:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    by_fd = {sock.fileno(): (i, sock) for i, sock in zip(indices, socks, strict=True)}
    ep = select.epoll()
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    buf = bytearray(1 << 20)
    size = len(buf)
    flags = 0 if copy else socket.MSG_TRUNC
    ready_slot = n + SLOT_READY
    counts[ready_slot] = counts[ready_slot] + 1  # small race is harmless: see main
    stop_slot = n + SLOT_STOP
    while not counts[stop_slot]:
        # Read in bulk: every connection once per pass, then a short nap, so the
        # load side costs far fewer system calls than the server it measures.
        for fd, _ev in ep.poll(0.05):
            i, sock = by_fd[fd]
            try:
                got = sock.recv_into(buf, size, flags)
            except BlockingIOError:
                continue
            except OSError:
                got = 0
            if got:
                counts[i] += got
            else:
                ep.unregister(fd)
                counts[n + SLOT_DEAD] += 1
        if nap:
            time.sleep(nap)


def _connect_sender(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _synchronise(sock: socket.socket, counts: memoryview, n: int, drain: Callable[[], int]) -> None:
    """Probe bytes until every receiver has seen one (all admitted), then tell the driver."""
    receivers = counts[:n]
    while not counts[n + SLOT_GO]:
        time.sleep(0.005)
    deadline = time.monotonic() + 20
    sent = echoed = 0
    while True:
        before = list(receivers)
        sock.send(b"\x00")
        sent += 1
        end = time.monotonic() + 0.3
        while time.monotonic() < end and any(
            a <= b for a, b in zip(receivers, before, strict=True)
        ):
            select.select([sock], [], [], 0.005)
            echoed += drain()
        if all(a > b for a, b in zip(receivers, before, strict=True)):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("receivers were never all admitted")
    time.sleep(0.05)
    echoed += drain()
    if echoed != sent:
        raise RuntimeError(f"sender echo {echoed} != sent {sent}")
    counts[n + SLOT_GO] = 2  # synchronised: the driver starts its clock


def _drainer(sock: socket.socket) -> Callable[[], int]:
    sink = bytearray(1 << 20)
    size = len(sink)
    trunc = socket.MSG_TRUNC

    def drain() -> int:
        got = 0
        while True:
            try:
                n = sock.recv_into(sink, size, trunc)
            except BlockingIOError:
                return got
            if not n:
                raise ConnectionError("server closed the sender")
            got += n

    return drain


def sender(port: int, counts: memoryview, n: int, window: int, max_lag: int, batch: int) -> None:
    sock = _connect_sender(port)
    block = memoryview(bytes(range(256)) * (64 * MESSAGE // 256))
    drain = _drainer(sock)
    receivers = counts[:n]
    stop_slot = n + SLOT_STOP
    _synchronise(sock, counts, n, drain)
    base = list(receivers)
    sent = echoed = 0
    message = block[: MESSAGE * batch]
    step = len(message)
    lag_checked = 0
    while not counts[stop_slot]:
        echoed += drain()
        room = window - (sent - echoed)
        if room < step:
            # Woken by the echo of what is in flight: no polling delay.
            select.select([sock], [], [], 0.01)
            continue
        if sent - lag_checked >= max_lag >> 2:
            # Rarely: never get more than max_lag ahead of the slowest receiver.
            slowest = min(a - b for a, b in zip(receivers, base, strict=True))
            if sent - slowest > max_lag:
                select.select([sock], [], [], 0.0005)
                continue
            lag_checked = sent
        for _ in range(room // step):
            try:
                sent += sock.send(message)
            except BlockingIOError:
                select.select([sock], [sock], [], 0.001)
                break
        counts[n + SLOT_SENT] = sent


def flood_sender(port: int, counts: memoryview, n: int) -> None:
    """Send 64 KiB blocks as fast as the server takes them, draining the echo."""
    sock = _connect_sender(port)
    block = memoryview(bytes(range(256)) * 256)
    drain = _drainer(sock)
    stop_slot = n + SLOT_STOP
    _synchronise(sock, counts, n, drain)
    sent = 0
    while not counts[stop_slot]:
        try:
            drain()
            sent += sock.send(block)
        except BlockingIOError:
            select.select([sock], [sock], [], 0.01)
            continue
        except OSError:  # cut off (a server without flow control): counted, not a crash
            counts[n + SLOT_DEAD] += 1
            return
        counts[n + SLOT_SENT] = sent


# -- one measurement ----------------------------------------------------------------------


@dataclass
class Result:
    mib_s: float
    cpu_share: float
    cpu_ms_per_mib: float
    user_ms_per_mib: float
    dead: int


def measure(
    server: str, n: int, window: int, args: argparse.Namespace, sources: dict[str, Path]
) -> Result:
    """One run; *window* 0 is the flood case."""
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    server_cpu, load_cpu = (0, 1) if pin else (None, None)
    shared = mmap.mmap(-1, 8 * (n + SLOTS))
    counts = memoryview(shared).cast("Q")
    pids: list[int] = []
    flood = window == FLOOD
    proc, port = start_server(server, server_cpu, sources=sources, paced=flood)
    try:
        procs = max(1, min(args.procs, n))
        for k in range(procs):
            indices = range(k * n // procs, (k + 1) * n // procs)
            nap = 0.0 if flood else args.nap
            pids.append(fork(receiver, port, counts, indices, n, args.copy, nap, cpu=load_cpu))
        deadline = time.monotonic() + 20
        while counts[n + SLOT_READY] < procs:
            if time.monotonic() > deadline:
                raise RuntimeError("receivers did not connect")
            time.sleep(0.01)
        if flood:
            pids.append(fork(flood_sender, port, counts, n, cpu=load_cpu))
        else:
            pids.append(
                fork(sender, port, counts, n, window, args.max_lag, args.batch, cpu=load_cpu)
            )
        counts[n + SLOT_GO] = 1
        while counts[n + SLOT_GO] != 2:
            if time.monotonic() > deadline:
                raise RuntimeError("the sender could not synchronise")
            time.sleep(0.01)
        time.sleep(args.warmup)
        t0, c0, d0 = time.monotonic(), cpu_seconds(proc.pid), sum(counts[:n])
        time.sleep(args.duration)
        t1, c1, d1 = time.monotonic(), cpu_seconds(proc.pid), sum(counts[:n])
        dead = counts[n + SLOT_DEAD]
        counts[n + SLOT_STOP] = 1
        mib = max((d1 - d0) / (1 << 20), 1e-9)
        user = c1[0] - c0[0]
        cpu = user + c1[1] - c0[1]
        return Result(mib / (t1 - t0), cpu / (t1 - t0), 1000 * cpu / mib, 1000 * user / mib, dead)
    finally:
        for pid in pids:
            kill(pid)
        kill(proc.pid)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        counts.release()
        shared.close()


# -- driver --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=("asyncio", "uvloop"), help=argparse.SUPPRESS)
    parser.add_argument("--paced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run 'python -m metalio broadcast' from the source tree SRC (a src/ "
        "directory of another checkout) under the server name NAME; repeatable",
    )
    parser.add_argument("--receivers", default="10,100", help="comma-separated N (default: 10,100)")
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help="default: metalio,asyncio,uvloop"
    )
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--repeat", type=int, default=3, help="runs per (server, N); medians")
    parser.add_argument(
        "--windows",
        default="1024,65536",
        help="comma-separated bytes the sender may have in flight, or 'flood' "
        "(default: 1024,65536)",
    )
    parser.add_argument(
        "--max-lag",
        type=int,
        default=512 << 10,
        help="bytes the sender may be ahead of the slowest receiver (default: 524288)",
    )
    parser.add_argument(
        "--batch", type=int, default=1, help="1 KiB messages per send() of the sender (default: 1)"
    )
    parser.add_argument("--procs", type=int, default=2, help="receiver processes")
    parser.add_argument(
        "--copy",
        action="store_true",
        help="receivers copy the data out (default: MSG_TRUNC, the kernel discards it uncopied)",
    )
    parser.add_argument(
        "--nap",
        type=float,
        default=0.0005,
        help="seconds each receiver process sleeps between read passes (default: 0.0005)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin server / load to CPUs 0 / 1"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve_asyncio(args.serve, args.paced)
        return 0
    sources = {"metalio": SRC}
    for item in args.baseline:
        name, sep, path = item.partition("=")
        if not sep or not name or name in SERVERS:
            raise SystemExit(f"--baseline wants NAME=SRC with a new NAME, got {item!r}")
        sources[name] = Path(path).resolve()
    servers = [s for s in args.servers.split(",") if s] + [
        b.partition("=")[0] for b in args.baseline
    ]
    if "uvloop" in servers:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print("uvloop is not installed: skipping it", file=sys.stderr)
            servers.remove("uvloop")
    sizes = [int(x) for x in args.receivers.split(",") if x]
    windows = [FLOOD if x == "flood" else int(x) for x in args.windows.split(",") if x]
    results: dict[tuple[int, int, str], list[Result]] = {}
    for rep in range(args.repeat):
        # The order rotates from one repetition to the next, so that no
        # server always runs first (or right after the same neighbour).
        order = servers[rep % len(servers) :] + servers[: rep % len(servers)]
        for window in windows:
            for n in sizes:
                for server in order:
                    res = measure(server, n, window, args, sources)
                    results.setdefault((window, n, server), []).append(res)
                    lost = f"  ({res.dead} receivers lost)" if res.dead else ""
                    print(
                        f"  window {window or 'flood':>6}  {server:8} N={n:<4} {res.mib_s:8.1f} MiB/s"
                        f"  server CPU {100 * res.cpu_share:5.1f}%"
                        f"  {res.cpu_ms_per_mib:6.3f} ms/MiB (user {res.user_ms_per_mib:6.3f}){lost}",
                        file=sys.stderr,
                        flush=True,
                    )
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) >= 2
    print(
        f"fan-out: 1 sender, N receivers, {MESSAGE} B messages, "
        f"{args.duration:g} s x {args.repeat} runs (medians; ratios: medians of per-run ratios), "
        + ("server on CPU 0, load on CPU 1" if pinned else "unpinned")
        + f"; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs\n"
    )
    print(
        "| window | N | server | MiB/s delivered | server CPU | CPU ms / MiB | user ms / MiB "
        "| MiB/s vs asyncio | vs uvloop | CPU/MiB vs asyncio | vs uvloop |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for window in windows:
        for n in sizes:
            med = {
                s: tuple(
                    statistics.median(getattr(r, field) for r in results[(window, n, s)])
                    for field in ("mib_s", "cpu_share", "cpu_ms_per_mib", "user_ms_per_mib")
                )
                for s in servers
            }
            for s in servers:
                mib_s, share, ms, user_ms = med[s]
                lost = max(r.dead for r in results[(window, n, s)])
                label = f"{window >> 10} KiB" if window else "flood"
                if mib_s < 0.1:  # nothing delivered (everyone cut off): no per-MiB figures
                    print(f"| {label} | {n} | {s} | 0 ({lost} lost) | — | — | — |" + " — |" * 4)
                    continue
                speed, cost = [], []
                mine = results[(window, n, s)]
                for ref in ("asyncio", "uvloop"):
                    if ref in med and ref != s:
                        # Ratios are medians of per-repetition ratios: the two
                        # runs of one repetition met the same background load.
                        pairs = list(zip(mine, results[(window, n, ref)], strict=True))
                        speed.append(
                            f"{statistics.median(a.mib_s / b.mib_s for a, b in pairs):.2f}×"
                        )
                        cost.append(
                            f"{statistics.median(a.cpu_ms_per_mib / b.cpu_ms_per_mib for a, b in pairs):.2f}×"
                        )
                    else:
                        speed.append("—")
                        cost.append("—")
                print(
                    f"| {label} | {n} | {s} | {mib_s:.0f}{f' ({lost} lost)' if lost else ''} | {100 * share:.0f}% "
                    f"| {ms:.3f} | {user_ms:.3f} | {speed[0]} | {speed[1]} | {cost[0]} | {cost[1]} |"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
