"""An echo server served by N threads polling one shared ``Poll`` (the seed's model).

Every source (the listener and each connection) is registered
``EDGE | ONESHOT``.  Oneshot is what makes the threads safe without a lock
per connection: after one event the kernel disarms the registration, so
exactly one thread owns a connection from the moment ``poll()`` hands it the
event until that thread calls ``reregister`` to re-arm it.  The owner drains
the stream (edge-triggered: read until ``try_read_into`` returns ``None``),
echoes what it read and re-arms, for ``READABLE`` or, while echoed bytes are
still pending, ``READABLE | WRITABLE``.  Re-arming is the last thing the
owner does with a connection: once it returns, another thread may already
hold the next event for it.

The table of connections is shared by all threads and guarded by a lock
(``metalio.Slab`` is loop-thread only); a connection is put in the table
before it is registered, so an event for it always finds it.

``--work N`` makes each chunk read cost N iterations of a pure-Python loop
before it is echoed: a CPU-heavy handler.  Under the GIL the threads then
take turns; on a free-threaded CPython (3.13t with ``PYTHON_GIL=0``) they
run in parallel.  ``--events`` is how many events one ``poll()`` may take:
1 (the default) hands each ready connection to whichever thread is free,
larger batches save ``poll()`` calls but let one thread sit on work another
could do.

Shared-``Poll`` polling from several threads is for the epoll and kqueue
backends only (the contract says so), so this program uses the default one.

SIGINT and SIGTERM are blocked in every thread and taken by the main
thread with ``sigtimedwait``; it then writes to a stop pipe registered
``LEVEL``, which every poller sees, joins the threads and exits with status 0.

Run: ``python examples/threaded_oneshot.py [--host 127.0.0.1] [--port 0]
[--threads 2] [--work 0]``; it prints ``listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import metalio
from metalio import Events, Interest, Poll, PollOpt, Ready
from metalio.net import TcpListener, TcpStream

LISTENER = 0
STOP = 1
FIRST_CONN = 2
BUFSIZE = 65536
ARMED = PollOpt.EDGE | PollOpt.ONESHOT
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


class Server:
    """State shared by every polling thread."""

    def __init__(self, poll: Poll, listener: TcpListener, work: int, events: int) -> None:
        self.poll = poll
        self.listener = listener
        self.work = work
        self.events_capacity = events
        self.lock = threading.Lock()  # guards conns and next_token
        self.conns: dict[int, Connection] = {}
        self.next_token = FIRST_CONN

    def worker(self, counts: list[int], index: int) -> None:
        """One polling thread: poll, own the event, handle it, re-arm."""
        events = Events(self.events_capacity)
        buffer = bytearray(BUFSIZE)  # this thread's own: threads must not share one
        served = 0
        try:
            while True:
                self.poll.poll(events)
                for event in events:
                    token = event.token
                    if token == STOP:
                        return  # LEVEL: the stop pipe stays readable for every thread
                    if token == LISTENER:
                        self.accept()
                    else:
                        served += self.serve(token, event.readiness, buffer)
        finally:
            counts[index] = served

    def accept(self) -> None:
        while True:
            try:
                accepted = self.listener.try_accept()
            except OSError:
                break  # e.g. out of descriptors: the next connection retries
            if accepted is None:
                break  # drained
            stream, _addr = accepted
            stream.set_nodelay(True)
            with self.lock:
                token = self.next_token
                self.next_token += 1
                self.conns[token] = Connection(stream)  # before register: see the docstring
            try:
                self.poll.registry.register(stream, token, Interest.READABLE, ARMED)
            except OSError:
                with self.lock:
                    del self.conns[token]
                stream.close()
        self.poll.registry.reregister(self.listener, LISTENER, Interest.READABLE, ARMED)

    def serve(self, token: int, ready: Ready, buffer: bytearray) -> int:
        """Handle one event of a connection this thread now owns; return chunks echoed."""
        with self.lock:
            conn = self.conns.get(token)
        if conn is None:
            return 0
        view = memoryview(buffer)
        stream = conn.stream
        echoed = 0
        try:
            if conn.pending and ready.writable:
                written = stream.try_write(conn.pending)
                if written:
                    conn.pending = conn.pending[written:]
            while True:
                n = stream.try_read_into(buffer)
                if n is None:
                    break  # drained: re-arm below
                if n == 0:
                    self.drop(token, conn)  # the peer closed
                    return echoed
                if self.work:
                    burn(self.work)
                echoed += 1
                if conn.pending:
                    conn.pending += view[:n]
                    continue
                written = stream.try_write(view[:n]) or 0
                if written < n:
                    conn.pending = bytes(view[written:n])
            interest = Interest.READABLE | Interest.WRITABLE if conn.pending else Interest.READABLE
            # The last use of conn by this thread: from here on another may own it.
            self.poll.registry.reregister(stream, token, interest, ARMED)
        except OSError:
            self.drop(token, conn)
        return echoed

    def drop(self, token: int, conn: Connection) -> None:
        with self.lock:
            self.conns.pop(token, None)
        try:
            self.poll.registry.deregister(conn.stream)
        finally:
            conn.stream.close()

    def close_all(self) -> None:
        with self.lock:
            conns = list(self.conns.items())
            self.conns.clear()
        for _token, conn in conns:
            try:
                self.poll.registry.deregister(conn.stream)
            finally:
                conn.stream.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=int, default=0, help="pure-Python loop iterations per chunk")
    parser.add_argument("--events", type=int, default=1, help="events per poll() call")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.work < 0 or args.events < 1:
        parser.error("--threads and --events must be >= 1, --work >= 0")
    # Blocked before any thread starts, so every thread inherits the mask and
    # only the main thread's sigtimedwait takes SIGINT/SIGTERM.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    stop_r, stop_w = metalio.pipe()
    with TcpListener.bind((args.host, args.port)) as listener, Poll() as poll, stop_r, stop_w:
        server = Server(poll, listener, args.work, args.events)
        poll.registry.register(stop_r, STOP, Interest.READABLE, PollOpt.LEVEL)
        poll.registry.register(listener, LISTENER, Interest.READABLE, ARMED)
        counts = [0] * args.threads
        threads = [
            threading.Thread(target=server.worker, args=(counts, i), name=f"poller-{i}")
            for i in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        host, port = listener.local_addr()[:2]
        gil = getattr(sys, "_is_gil_enabled", lambda: True)()
        print(
            f"listening on {host}:{port} ({args.threads} threads, one Poll, "
            f"GIL {'on' if gil else 'off'})",
            flush=True,
        )
        signum = None
        try:
            while signum is None and all(t.is_alive() for t in threads):
                signum = signal.sigtimedwait(SIGNALS, 0.5)
                signum = signum.si_signo if signum is not None else None
        finally:
            stop_w.try_write(b"x")
            for thread in threads:
                thread.join()
            server.close_all()
        if signum is None:
            print("a polling thread died", file=sys.stderr, flush=True)
            return 1
        print(
            f"signal {signal.Signals(signum).name}: shutting down; "
            f"chunks echoed per thread: {counts}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
