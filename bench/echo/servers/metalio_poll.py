"""Echo server on raw ``metalio.Poll`` + ``Events`` (no EventLoop).

Placeholder for the metalio team, written against API.md sections 2-3: the
mio-style loop a user writes by hand -- ``poll.poll(events)``, a dispatch on
``event.token``, edge-triggered ``metalio.net`` streams registered once with
``READABLE | WRITABLE``, reads with ``try_read`` (one ``read(2)`` into a
fresh ``bytes``, which is then written as it is; cheaper in Python than
``try_read_into`` a reused buffer plus a ``memoryview`` slice to write), partial
writes flushed on the next writable edge.  SIGTERM/SIGINT handlers raise, and
per the contract the exception propagates out of ``poll()``.

metalio is imported from this checkout's ``src/``.  If it is not usable yet
the script exits non-zero before printing "ready" and the runner reports it as
skipped with the error.

Usage: python metalio_poll.py PORT   (binds 127.0.0.1:PORT, prints "ready",
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

from metalio import Events, Interest, Poll, PollOpt  # noqa: E402
from metalio.net import TcpListener, TcpStream  # noqa: E402

LISTENER = 0
BUF = 65536


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


class Conn:
    __slots__ = ("out", "stream")

    def __init__(self, stream: TcpStream) -> None:
        self.stream = stream
        self.out = b""


def serve(port: int) -> None:
    with TcpListener.bind(("127.0.0.1", port)) as listener, Poll() as poll:
        registry = poll.registry
        registry.register(listener, LISTENER, Interest.READABLE, PollOpt.EDGE)
        events = Events(1024)
        conns: dict[int, Conn] = {}
        next_token = LISTENER + 1
        conn_interest = Interest.READABLE | Interest.WRITABLE

        def close(token: int) -> None:
            conn = conns.pop(token)
            registry.deregister(conn.stream)
            conn.stream.close()

        def accept(next_token: int) -> int:
            while True:
                try:
                    accepted = listener.try_accept()
                except OSError:
                    return next_token
                if accepted is None:
                    return next_token
                stream = accepted[0]
                stream.set_nodelay(True)
                conns[next_token] = Conn(stream)
                registry.register(stream, next_token, conn_interest, PollOpt.EDGE)
                next_token += 1

        print("ready", flush=True)
        try:
            while True:
                poll.poll(events)
                for event in events:
                    token = event.token
                    conn = conns.get(token)
                    if conn is None:  # the listener (not in conns) or a closed one
                        if token == LISTENER:
                            next_token = accept(next_token)
                        continue
                    stream = conn.stream
                    if conn.out and event.writable:
                        try:
                            n = stream.try_write(conn.out)
                        except OSError:
                            close(token)
                            continue
                        if n is not None:
                            conn.out = conn.out[n:]
                    while True:  # drain the read side
                        try:
                            data = stream.try_read(BUF)
                        except OSError:
                            close(token)
                            break
                        if data is None:
                            break
                        if not data:
                            close(token)
                            break
                        if conn.out:
                            conn.out += data
                        else:
                            try:
                                w = stream.try_write(data)
                            except OSError:
                                close(token)
                                break
                            if w is None:
                                conn.out = data
                            elif w < len(data):
                                conn.out = data[w:]
                        if len(data) < BUF:
                            break  # short read: drained; the next arrival is a new edge
        except _Stop:
            pass
        finally:
            for token in list(conns):
                close(token)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    serve(int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
