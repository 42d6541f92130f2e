"""Echo server written exactly as a user following metalio's docs would write it.

``EventLoop`` + ``Slab`` + ``PollOpt.EDGE``, and on every readiness event the
contract's rule: read until ``try_read`` returns ``None``, write until the
data is taken or ``try_write`` returns ``None``.  No private tricks (no stop
after a short read): whatever that last ``None`` costs, this server pays,
so it measures what the library gives every user.

Usage: python metalio_user.py PORT   (binds 127.0.0.1:PORT, prints "ready",
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


class Conn:
    __slots__ = ("out", "stream")

    def __init__(self, stream: TcpStream) -> None:
        self.stream = stream
        self.out = b""


class Echo(Handler):
    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.conns: Slab[Conn] = Slab(start=1)

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == LISTENER:
            self.accept(loop)
            return
        conn = self.conns.get(token)
        if conn is None:
            return
        try:
            if conn.out and ready.writable:
                self.flush(conn)
            while True:  # drain until None, as the docs say
                data = conn.stream.try_read(65536)
                if data is None:
                    break
                if not data:
                    self.close(loop, token)
                    return
                conn.out += data
                self.flush(conn)
        except OSError:
            self.close(loop, token)

    def flush(self, conn: Conn) -> None:
        while conn.out:
            n = conn.stream.try_write(conn.out)
            if n is None:
                return  # the writable edge will come
            conn.out = conn.out[n:]

    def accept(self, loop: EventLoop) -> None:
        while True:
            try:
                accepted = self.listener.try_accept()
            except OSError:
                return
            if accepted is None:
                return
            stream, _ = accepted
            stream.set_nodelay(True)
            token = self.conns.insert(Conn(stream))
            loop.register(stream, token, Interest.READABLE | Interest.WRITABLE, PollOpt.EDGE)

    def close(self, loop: EventLoop, token: int) -> None:
        conn = self.conns.remove(token)
        loop.deregister(conn.stream)
        conn.stream.close()

    def signal(self, loop: EventLoop, signum: int) -> None:
        loop.shutdown()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    with TcpListener.bind(("127.0.0.1", int(argv[1]))) as listener, EventLoop() as loop:
        loop.register(listener, LISTENER, Interest.READABLE, PollOpt.EDGE)
        loop.add_signal(signal.SIGTERM)
        loop.add_signal(signal.SIGINT)
        handler = Echo(listener)
        print("ready", flush=True)
        loop.run(handler)
        for token, _ in list(handler.conns.items()):
            handler.close(loop, token)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
