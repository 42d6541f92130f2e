"""An echo server run as one ``EventLoop`` per thread, sharing a port with ``SO_REUSEPORT``.

Nothing is shared between the threads: each has its own ``EventLoop``, its
own ``TcpListener.bind(..., reuse_port=True)`` on the same address, its own
``Slab`` of connections and its own receive buffer.  The kernel spreads the
incoming connections over the listeners (on Linux by a hash of the
connection's addresses), and each connection then lives on one loop for
its whole life.  This is the model that needs no thread-safety at all from
the loop-thread-only parts (``Timer``, ``Slab``, ``run``); the only calls
that cross threads are ``Sender.send`` (thread-safe) to stop the loops.

The first listener binds the requested port (``0`` picks a free one) and the
others bind the port it got.  ``--work N`` makes each chunk read cost N
iterations of a pure-Python loop before it is echoed (a CPU-heavy handler):
under the GIL the loops take turns, on a free-threaded CPython (3.13t with
``PYTHON_GIL=0``) they run in parallel.

SIGINT and SIGTERM are blocked in every thread and taken by the main thread
with ``sigtimedwait`` (``EventLoop.add_signal`` is for a loop on the main
thread); it sends ``"stop"`` on each loop's channel, which makes that loop's
handler call ``shutdown()``.  A message sent before a loop starts waits in
its channel, so no stop is lost.  The threads are joined and the program
exits with status 0.

Run: ``python examples/reuseport_loops.py [--host 127.0.0.1] [--port 0]
[--threads 2] [--work 0]``; it prints ``listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from metalio import EventLoop, Handler, Interest, NotifyError, PollOpt, Ready, Slab
from metalio.net import TcpListener, TcpStream

LISTENER = 0
BUFSIZE = 65536
SIGNALS = {signal.SIGINT, signal.SIGTERM}


def burn(iterations: int) -> int:
    """A pure-Python CPU burn: holds the GIL (hashlib would release it)."""
    x = 0
    for i in range(iterations):
        x = (x * 31 + i) & 0xFFFFFFFF
    return x


class Connection:
    __slots__ = ("pending", "stream")

    def __init__(self, stream: TcpStream) -> None:
        self.stream = stream
        self.pending = b""  # echoed bytes the socket has not taken yet


class EchoLoop(Handler):
    """The handler of one loop; everything in it belongs to that loop's thread."""

    def __init__(self, listener: TcpListener, work: int) -> None:
        self.listener = listener
        self.work = work
        self.conns: Slab[Connection] = Slab(start=LISTENER + 1)
        self.buffer = bytearray(BUFSIZE)
        self.view = memoryview(self.buffer)
        self.accepted = 0
        self.echoed = 0

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == LISTENER:
            self.accept(loop)
            return
        conn = self.conns.get(token)
        if conn is None:
            return  # closed earlier in this iteration
        try:
            if conn.pending and ready.writable:
                written = conn.stream.try_write(conn.pending)
                if written:
                    conn.pending = conn.pending[written:]
            self.echo(loop, token, conn)
        except OSError:
            self.drop(loop, token)

    def accept(self, loop: EventLoop) -> None:
        while True:
            try:
                accepted = self.listener.try_accept()
            except OSError:
                return  # e.g. out of descriptors: the next connection retries
            if accepted is None:
                return
            stream, _addr = accepted
            stream.set_nodelay(True)
            token = self.conns.insert(Connection(stream))
            try:
                loop.register(stream, token, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)
            except OSError:
                self.conns.remove(token)
                stream.close()
                continue
            self.accepted += 1

    def echo(self, loop: EventLoop, token: int, conn: Connection) -> None:
        stream = conn.stream
        view = self.view
        while True:
            n = stream.try_read_into(self.buffer)
            if n is None:
                return  # drained: the next arrival is a new edge
            if n == 0:
                self.drop(loop, token)
                return
            if self.work:
                burn(self.work)
            self.echoed += 1
            if conn.pending:
                conn.pending += view[:n]
                continue
            written = stream.try_write(view[:n]) or 0
            if written < n:
                conn.pending = bytes(view[written:n])

    def drop(self, loop: EventLoop, token: int) -> None:
        conn = self.conns.remove(token)
        try:
            loop.deregister(conn.stream)
        finally:
            conn.stream.close()

    def notify(self, loop: EventLoop, msg: Any) -> None:
        if msg == "stop":
            loop.shutdown()

    def close_all(self, loop: EventLoop) -> None:
        for token in list(self.conns.keys()):
            self.drop(loop, token)


def serve(loop: EventLoop, handler: EchoLoop) -> None:
    """The body of one thread: run its loop, then close what it owns."""
    try:
        loop.run(handler)
    finally:
        handler.close_all(loop)
        loop.close()
        handler.listener.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=int, default=0, help="pure-Python loop iterations per chunk")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.work < 0:
        parser.error("--threads must be >= 1, --work >= 0")
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # inherited by every thread
    listeners = [TcpListener.bind((args.host, args.port), reuse_port=True)]
    host, port = listeners[0].local_addr()[:2]
    loops: list[EventLoop] = []
    handlers: list[EchoLoop] = []
    threads: list[threading.Thread] = []
    try:
        listeners += [
            TcpListener.bind((host, port), reuse_port=True) for _ in range(args.threads - 1)
        ]
        for listener in listeners:
            loop = EventLoop()
            loops.append(loop)
            loop.register(listener, LISTENER, Interest.READABLE, PollOpt.EDGE)
            handlers.append(EchoLoop(listener, args.work))
        senders = [loop.channel() for loop in loops]
    except BaseException:
        for loop in loops:
            loop.close()
        for listener in listeners:
            listener.close()
        raise
    for i, (loop, handler) in enumerate(zip(loops, handlers, strict=True)):
        threads.append(threading.Thread(target=serve, args=(loop, handler), name=f"loop-{i}"))
        threads[-1].start()
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(
        f"listening on {host}:{port} ({args.threads} loops, SO_REUSEPORT, "
        f"GIL {'on' if gil else 'off'})",
        flush=True,
    )
    signum = None
    try:
        while signum is None and all(t.is_alive() for t in threads):
            info = signal.sigtimedwait(SIGNALS, 0.5)
            signum = info.si_signo if info is not None else None
    finally:
        for sender in senders:
            try:
                sender.send("stop")
            except NotifyError:
                pass  # that loop already ended (and closed its channel)
        for thread in threads:
            thread.join()
    if signum is None:
        print("a loop thread died", file=sys.stderr, flush=True)
        return 1
    print(
        f"signal {signal.Signals(signum).name}: shutting down; "
        f"connections per loop: {[h.accepted for h in handlers]}; "
        f"chunks echoed per loop: {[h.echoed for h in handlers]}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
