"""An echo server on ``EventLoop`` + ``Slab`` + edge-triggered ``TcpStream``s.

The connection slab hands out the tokens: the listener is token 0, each
accepted stream gets ``slab.insert(conn)`` and is registered once, for
``READABLE | WRITABLE`` with ``PollOpt.EDGE``, never re-registered.  On every
``ready`` the handler drains the stream (edge-triggered: read until
``try_read_into`` returns ``None``) and writes back what it read; bytes the
socket would not take are kept and flushed on the next writable edge.  A
closed or failed connection is deregistered, closed and removed from the
slab, which frees its token.

SIGINT and SIGTERM arrive through ``loop.add_signal`` as ``Handler.signal``
calls on the loop's thread; the handler shuts the loop down and the program
exits with status 0.

Run: ``python examples/echo_server.py [--host 127.0.0.1] [--port 0]``; it
prints ``listening on HOST:PORT`` (port 0 picks a free one).  Try it with
``nc 127.0.0.1 PORT``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from metalio import EventLoop, Handler, Interest, PollOpt, Ready, Slab
from metalio.net import TcpListener, TcpStream

LISTENER = 0
BUFSIZE = 65536


class Connection:
    __slots__ = ("pending", "stream")

    def __init__(self, stream: TcpStream) -> None:
        self.stream = stream
        self.pending = b""  # echoed bytes the socket has not taken yet


class EchoServer(Handler):
    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.conns: Slab = Slab(start=LISTENER + 1)
        # One reused receive buffer for every connection.
        self.buffer = bytearray(BUFSIZE)
        self.view = memoryview(self.buffer)

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == LISTENER:
            self.accept(loop)
            return
        conn = self.conns.get(token)
        if conn is None:
            return  # closed earlier in this iteration
        try:
            if conn.pending and ready.writable:
                self.flush(conn)
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
                return  # drained
            stream, _addr = accepted
            stream.set_nodelay(True)
            token = self.conns.insert(Connection(stream))
            loop.register(stream, token, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)

    def echo(self, loop: EventLoop, token: int, conn: Connection) -> None:
        stream = conn.stream
        view = self.view
        while True:
            n = stream.try_read_into(self.buffer)
            if n is None:
                return  # drained: the next arrival is a new edge
            if n == 0:
                self.drop(loop, token)  # the peer closed
                return
            if conn.pending:
                conn.pending += view[:n]
                continue
            written = stream.try_write(view[:n]) or 0
            if written < n:
                conn.pending = bytes(view[written:n])

    def flush(self, conn: Connection) -> None:
        written = conn.stream.try_write(conn.pending)
        if written:
            conn.pending = conn.pending[written:]

    def drop(self, loop: EventLoop, token: int) -> None:
        conn = self.conns.remove(token)
        loop.deregister(conn.stream)
        conn.stream.close()

    def signal(self, loop: EventLoop, signum: int) -> None:
        print(f"signal {signal.Signals(signum).name}: shutting down", flush=True)
        loop.shutdown()

    def close_all(self, loop: EventLoop) -> None:
        for token in [key for key, _ in self.conns.items()]:
            self.drop(loop, token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with TcpListener.bind((args.host, args.port)) as listener, EventLoop() as loop:
        loop.register(listener, LISTENER, Interest.READABLE, PollOpt.EDGE)
        loop.add_signal(signal.SIGINT)
        loop.add_signal(signal.SIGTERM)
        server = EchoServer(listener)
        host, port = listener.local_addr()[:2]
        print(f"listening on {host}:{port}", flush=True)
        try:
            loop.run(server)
        finally:
            server.close_all(loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
