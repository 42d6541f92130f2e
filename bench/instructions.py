"""Instruction counts of the event loop's own work, under callgrind: steady on a busy machine.

Timing the kernel-free model (``bench_loop.py --only model``) on a shared
2-core machine scatters by 2x; callgrind counts the instructions the
interpreter executes, which do not depend on what else runs.  Each case runs
an ``EventLoop`` over a fake backend whose every wait returns the same
ready events (no kernel), with a handler that does nothing, twice: for
ITERATIONS and for none; the difference divided by ITERATIONS is the loop's
instruction cost per iteration.  ``--tree DIR`` measures another metalio
tree (e.g. a git worktree of an older commit) the same way, so two versions
compare in one run.

``--echo`` counts a real round trip instead: an ``EventLoop`` on epoll
echoing 1 KiB over a Unix socket pair, the peer's write and read done in
the handler's ``tick``, for the two handler styles of ``bench/echo``
(``user``: drain until ``None``; ``tuned``: one read per event), and the
same round trip through a raw ``Poll`` (write, ``poll(0)``, read, write
back, as ``bench/echo``'s raw-Poll server).  ``--pure``
runs every case with ``METALIO_PURE_PYTHON=1``.

Usage: python bench/instructions.py [--iterations 20000] [--events 1,10]
       [--echo] [--pure] [--tree DIR ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import socket, sys
sys.path.insert(0, {src!r})
from metalio import EventLoop, Handler, Interest, Poll, PollOpt
from metalio._backends import open_backend

ITER, EVENTS = {iterations}, {events}
socks = [socket.socketpair() for _ in range(EVENTS)]
raw = [(a.fileno(), 1) for a, _ in socks]

class Answering:
    def __init__(self):
        self.real = open_backend("epoll")
    def __getattr__(self, name):
        return getattr(self.real, name)
    def poll(self, timeout, maxevents):
        return raw

try:
    poll = Poll.over_backend(Answering())
    loop = EventLoop(poll=poll)
except (TypeError, AttributeError):  # an older tree: patch its wait instead
    loop = EventLoop()
    hot = list(loop._hot)
    hot[0] = lambda timeout, maxevents: raw
    loop._hot = tuple(hot)
for a, _ in socks:
    loop.register(a, a.fileno(), Interest.READABLE, PollOpt.EDGE)
left = [ITER]

class H(Handler):
    def ready(self, ev, token, ready):
        pass
    def tick(self, ev):
        left[0] -= 1
        if left[0] <= 0:
            ev.shutdown()

if ITER:
    loop.run(H())
"""


ECHO_CASE = r"""
import os, sys
sys.path.insert(0, {src!r})
from metalio import EventLoop, Handler, Interest, PollOpt
from metalio.net import UnixStream

ITER, STYLE = {iterations}, {style!r}
a, b = UnixStream.pair()
msg = b"x" * 1024
peer = b.fileno()

class Echo(Handler):
    n = 0
    def ready(self, loop, token, ready):
        if STYLE == "user":
            while True:
                data = a.try_read(65536)
                if data is None:
                    break
                a.try_write(data)
        elif ready.readable:
            data = a.try_read(65536)
            if data:
                a.try_write(data)
    def tick(self, loop):
        try:
            os.read(peer, 65536)
        except BlockingIOError:
            pass
        self.n += 1
        if self.n > ITER:
            loop.shutdown()
        else:
            os.write(peer, msg)

loop = EventLoop()
loop.register(a, 1, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)
loop.run(Echo())
"""


POLL_CASE = r"""
import os, sys
sys.path.insert(0, {src!r})
from metalio import Events, Interest, Poll, PollOpt
from metalio.net import UnixStream

ITER = {iterations}
a, b = UnixStream.pair()
poll = Poll()
poll.registry.register(a, 1, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)
events = Events(64)
poll.poll(events, 0)
msg = b"x" * 1024
peer = b.fileno()
for _ in range(ITER):
    os.write(peer, msg)
    poll.poll(events, 0)
    for event in events:
        data = a.try_read(65536)
        if data:
            a.try_write(data)
    os.read(peer, 65536)
"""


def instructions(
    src: Path, iterations: int, events: int, style: str = "", pure: bool = False
) -> int:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        if style == "raw Poll":
            f.write(POLL_CASE.format(src=str(src), iterations=iterations))
        elif style:
            f.write(ECHO_CASE.format(src=str(src), iterations=iterations, style=style))
        else:
            f.write(CASE.format(src=str(src), iterations=iterations, events=events))
        script = f.name
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if pure:
        env["METALIO_PURE_PYTHON"] = "1"
    try:
        out = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/dev/null",
                sys.executable,
                script,
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
    finally:
        os.unlink(script)
    m = re.search(r"Collected : (\d+)", out.stderr)
    assert m, out.stderr[-2000:]
    return int(m.group(1))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20000)
    ap.add_argument("--events", default="1,10")
    ap.add_argument("--tree", action="append", default=[], help="another metalio tree")
    ap.add_argument("--echo", action="store_true", help="count 1 KiB echo round trips instead")
    ap.add_argument("--pure", action="store_true", help="METALIO_PURE_PYTHON=1 for every case")
    args = ap.parse_args(argv)
    trees = [ROOT, *map(Path, args.tree)]
    if args.echo:
        print(f"instructions per 1 KiB echo round trip (callgrind), {args.iterations} round trips")
        print("| tree | handler | instructions/round trip |")
        print("|---|---|---:|")
        for style in ("user", "tuned", "raw Poll"):
            for tree in trees:
                base = instructions(tree / "src", 0, 0, style, args.pure)
                full = instructions(tree / "src", args.iterations, 0, style, args.pure)
                print(f"| {tree} | {style} | {(full - base) / args.iterations:,.0f} |")
        return 0
    print(f"instructions per loop iteration (callgrind), {args.iterations} iterations")
    print("| tree | events/iteration | instructions/iteration | per event |")
    print("|---|---:|---:|---:|")
    for events in map(int, args.events.split(",")):
        for tree in trees:
            base = instructions(tree / "src", 0, events, pure=args.pure)
            full = instructions(tree / "src", args.iterations, events, pure=args.pure)
            per = (full - base) / args.iterations
            print(f"| {tree} | {events} | {per:,.0f} | {per / events:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
