"""Echo server on ``metalio.EventLoop`` + ``Slab`` + edge-triggered ``metalio.net`` streams.

Placeholder for the metalio team, written against API.md sections 2-6: a
``Handler`` whose ``ready`` accepts on token 0 and echoes on the connection
tokens handed out by a ``Slab``.  Every stream is registered once with
``READABLE | WRITABLE`` and ``PollOpt.EDGE`` and never re-registered; reads go
with ``try_read`` (one ``read(2)`` into a fresh ``bytes``, which is then
written as it is); a partial write is kept and
flushed on the next writable edge.  SIGTERM/SIGINT reach ``Handler.signal``
through ``loop.add_signal`` and shut the loop down.

metalio is imported from this checkout's ``src/`` (so the benchmark measures
the code in the tree, not an installed copy).  Until ``metalio.EventLoop``
exists the import fails, the script exits non-zero before printing "ready",
and the runner reports it as skipped with the error.

Usage: python metalio_loop.py PORT   (binds 127.0.0.1:PORT, prints "ready",
echoes until SIGTERM/SIGINT, exits 0)
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

# METALIO_SRC: another tree's src/ (run.py --baseline measures two trees at once).
_SRC = Path(os.environ.get("METALIO_SRC") or Path(__file__).resolve().parents[3] / "src")
if (_SRC / "metalio").is_dir():
    sys.path.insert(0, str(_SRC))

from metalio import EventLoop, Handler, Interest, PollOpt, Ready, Slab  # noqa: E402
from metalio.net import TcpListener, TcpStream  # noqa: E402

LISTENER = 0
BUF = 65536


class Conn:
    __slots__ = ("out", "stream")

    def __init__(self, stream: TcpStream) -> None:
        self.stream = stream
        self.out = b""


class Echo(Handler):
    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.conns: Slab = Slab(start=LISTENER + 1)

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        conn = self.conns.get(token)
        if conn is None:  # the listener (its token is not a slab key) or a closed one
            if token == LISTENER:
                self.accept(loop)
            return
        stream = conn.stream
        if conn.out and ready.writable:
            try:
                n = stream.try_write(conn.out)
            except OSError:
                self.close(loop, token)
                return
            if n is not None:
                conn.out = conn.out[n:]
        while True:  # drain the read side
            try:
                data = stream.try_read(BUF)
            except OSError:
                self.close(loop, token)
                return
            if data is None:
                break
            if not data:
                self.close(loop, token)
                return
            if conn.out:
                conn.out += data
            else:
                try:
                    w = stream.try_write(data)
                except OSError:
                    self.close(loop, token)
                    return
                if w is None:
                    conn.out = data
                elif w < len(data):
                    conn.out = data[w:]
            if len(data) < BUF:
                # A short read on a stream socket: the receive buffer was empty
                # at that moment and the next arrival raises a new edge, so the
                # read that would only return None is skipped (a metalio-program
                # optimisation; API.md's rule for users stays "drain to None").
                break

    def accept(self, loop: EventLoop) -> None:
        while True:
            try:
                accepted = self.listener.try_accept()
            except OSError:
                return
            if accepted is None:
                return
            stream, _addr = accepted
            stream.set_nodelay(True)
            token = self.conns.insert(Conn(stream))
            loop.register(stream, token, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)

    def close(self, loop: EventLoop, token: int) -> None:
        conn = self.conns.remove(token)
        loop.deregister(conn.stream)
        conn.stream.close()

    def close_all(self, loop: EventLoop) -> None:
        for token in [key for key, _ in self.conns.items()]:
            self.close(loop, token)

    def signal(self, loop: EventLoop, signum: int) -> None:
        loop.shutdown()


def serve(port: int) -> None:
    with TcpListener.bind(("127.0.0.1", port)) as listener, EventLoop() as loop:
        loop.register(listener, LISTENER, Interest.READABLE, PollOpt.EDGE)
        loop.add_signal(signal.SIGTERM)
        loop.add_signal(signal.SIGINT)
        handler = Echo(listener)
        print("ready", flush=True)
        try:
            loop.run(handler)
        finally:
            handler.close_all(loop)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    serve(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
