"""Fallback echo load generator in Python: the same protocol and JSON line as ``loadgen.c``.

Used by ``run.py`` when no C compiler is available.  Connections are spread
over several worker processes (``-t``), each running its own selector loop
with exactly one outstanding request per connection.  Phases, the ``-S``
stdin/stdout handshake and the histogram are those of ``loadgen.c``.  Being
Python, it costs several times more CPU per round trip than the C client, so
on a small machine it -- not the server -- is usually the bottleneck: read the
``client CPU`` column of the results before believing a throughput figure.

Usage: python loadgen.py -p PORT [-c CONNS] [-s SIZE] [-d SECONDS] [-w SECONDS]
                         [-t PROCESSES] [-a CPULIST] [-T STALL_SECONDS] [-S]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import selectors
import signal
import socket
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection, wait
from typing import Any

SUB_BITS = 7
SUB = 1 << SUB_BITS


def hist_index(v: int) -> int:
    if v < SUB:
        return v
    shift = v.bit_length() - 1 - SUB_BITS
    return SUB * (shift + 1) + (v >> shift) - SUB


def hist_mid(idx: int) -> float:
    if idx < SUB:
        return float(idx)
    shift = idx // SUB - 1
    return float(((idx % SUB) + SUB) << shift) + (1 << shift) / 2


def parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


class PhaseError(Exception):
    pass


def run_phase(
    sel: selectors.BaseSelector,
    socks: list[socket.socket],
    msg: bytes,
    deadline_ns: int,
    record: bool,
    hist: Counter[int],
    stall: float,
) -> tuple[int, int, int]:
    """One phase on this worker's connections; returns (round trips, first ns, last ns)."""
    size = len(msg)
    view = memoryview(msg)
    n = len(socks)
    sent = [0] * n
    recvd = [0] * n
    t_start = [0] * n
    fds = [s.fileno() for s in socks]
    read, write, now_ns = os.read, os.write, time.monotonic_ns
    READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
    rts = 0
    outstanding = n

    def push(i: int) -> None:
        while sent[i] < size:
            try:
                sent[i] += write(fds[i], view[sent[i] :])
            except BlockingIOError:
                sel.modify(socks[i], READ | WRITE, i)
                return
        sel.modify(socks[i], READ, i)

    first = t = now_ns()
    last_progress = t
    for i in range(n):
        t_start[i] = t
        sent[i] = write(fds[i], msg) if size else 0
        if sent[i] < size:
            push(i)
    while outstanding:
        ready = sel.select(0.2)
        if not ready:
            if (now_ns() - last_progress) / 1e9 > stall:
                raise PhaseError(f"no response for {stall:.1f} s (server stalled?)")
            continue
        for key, mask in ready:
            i = key.data
            if mask & WRITE and sent[i] < size:
                push(i)
            if not mask & READ:
                continue
            try:
                data = read(fds[i], size - recvd[i])
            except BlockingIOError:
                continue
            if not data:
                raise PhaseError("server closed the connection")
            recvd[i] += len(data)
            if recvd[i] < size:
                continue
            t = now_ns()
            last_progress = t
            if record:
                hist[hist_index(t - t_start[i])] += 1
                rts += 1
            if t < deadline_ns:
                t_start[i] = t
                recvd[i] = 0
                sent[i] = write(fds[i], msg)
                if sent[i] < size:
                    push(i)
            else:
                outstanding -= 1
    return rts, first, t


def worker(pipe: Connection, port: int, nconns: int, size: int, stall: float) -> None:
    socks: list[socket.socket] = []
    try:
        for _ in range(nconns):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            socks.append(s)
        sel = selectors.DefaultSelector()
        for i, s in enumerate(socks):
            sel.register(s, selectors.EVENT_READ, i)
        msg = bytes(97 + i % 26 for i in range(size))
        pipe.send(("ok",))
        while True:
            cmd = pipe.recv()
            if cmd[0] == "quit":
                break
            _, deadline_ns, record = cmd
            hist: Counter[int] = Counter()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            rts, first, last = run_phase(sel, socks, msg, deadline_ns, record, hist, stall)
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            pipe.send(
                (
                    "done",
                    rts,
                    dict(hist),
                    first,
                    last,
                    ru1.ru_utime - ru0.ru_utime,
                    ru1.ru_stime - ru0.ru_stime,
                )
            )
    except (EOFError, BrokenPipeError):
        pass  # the parent went away: just leave
    except Exception as exc:
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        for s in socks:
            s.close()


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _collect(pipes: list[Connection], timeout: float) -> list[tuple[Any, ...]]:
    replies: dict[int, tuple[Any, ...]] = {}
    deadline = time.monotonic() + timeout
    while len(replies) < len(pipes):
        left = deadline - time.monotonic()
        pending = [p for i, p in enumerate(pipes) if i not in replies]
        if left <= 0 or not wait(pending, left):
            raise PhaseError("a load generator worker did not answer in time")
        for i, p in enumerate(pipes):
            if i not in replies and p.poll():
                reply = p.recv()
                if reply[0] == "error":
                    raise PhaseError(str(reply[1]))
                replies[i] = reply
    return [replies[i] for i in range(len(pipes))]


def _phase(
    pipes: list[Connection], seconds: float, record: bool, stall: float
) -> list[tuple[Any, ...]]:
    deadline = time.monotonic_ns() + int(seconds * 1e9)
    for p in pipes:
        p.send(("run", deadline, record))
    return _collect(pipes, seconds + stall + 10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-p", type=int, required=True, dest="port")
    ap.add_argument("-c", type=int, default=10, dest="conns")
    ap.add_argument("-s", type=int, default=1024, dest="size")
    ap.add_argument("-d", type=float, default=5.0, dest="duration")
    ap.add_argument("-w", type=float, default=1.0, dest="warmup")
    ap.add_argument("-t", type=int, default=1, dest="procs")
    ap.add_argument("-a", default=None, dest="cpus")
    ap.add_argument("-T", type=float, default=5.0, dest="stall")
    ap.add_argument("-S", action="store_true", dest="sync")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)  # so that the finally below stops the workers
    if a.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, parse_cpus(a.cpus))  # inherited by the workers
    nprocs = max(1, min(a.procs, a.conns))
    methods = multiprocessing.get_all_start_methods()
    ctx: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    procs: list[multiprocessing.process.BaseProcess] = []
    pipes: list[Connection] = []
    rc = 0
    try:
        for k in range(nprocs):
            share = a.conns // nprocs + (k < a.conns % nprocs)
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(child, a.port, share, a.size, a.stall))
            p.daemon = True
            p.start()
            procs.append(p)
            pipes.append(parent)
        _collect(pipes, 30)
        if a.warmup > 0:
            _phase(pipes, a.warmup, False, a.stall)
        if a.sync:
            print("warm", flush=True)
            if not sys.stdin.readline().startswith("go"):
                raise PhaseError("runner went away before 'go'")
        t0 = time.monotonic_ns()
        replies = _phase(pipes, a.duration, True, a.stall)
        t1 = max(int(r[4]) for r in replies)
        hist: Counter[int] = Counter()
        rts = 0
        for r in replies:
            rts += int(r[1])
            hist.update(r[2])
        secs = (t1 - t0) / 1e9
        qs = [0.5, 0.9, 0.99, 0.999, 1.0]
        qv = [0.0] * len(qs)
        cum = 0
        total = 0.0
        qi = 0
        for idx in sorted(hist):
            cum += hist[idx]
            total += hist_mid(idx) * hist[idx]
            while qi < len(qs) and cum >= qs[qi] * rts:
                qv[qi] = hist_mid(idx) / 1000
                qi += 1
        out = {
            "loadgen": "python",
            "conns": a.conns,
            "size": a.size,
            "threads": nprocs,
            "round_trips": rts,
            "seconds": round(secs, 6),
            "rt_per_s": round(rts / secs, 1),
            "mean_us": round(total / rts / 1000, 2) if rts else 0.0,
            "p50_us": round(qv[0], 2),
            "p90_us": round(qv[1], 2),
            "p99_us": round(qv[2], 2),
            "p999_us": round(qv[3], 2),
            "max_us": round(qv[4], 2),
            "client_user_s": round(sum(float(r[5]) for r in replies), 6),
            "client_sys_s": round(sum(float(r[6]) for r in replies), 6),
        }
        print(json.dumps(out), flush=True)
        if a.sync:
            sys.stdin.readline()  # "quit" or EOF: the runner has sampled
    except (PhaseError, OSError) as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        rc = 1
    finally:
        for p in pipes:
            try:
                p.send(("quit",))
            except OSError:
                pass
        for p in procs:
            p.join(2)
            if p.is_alive():
                p.terminate()
                p.join(2)
    return rc


if __name__ == "__main__":
    sys.exit(main())
