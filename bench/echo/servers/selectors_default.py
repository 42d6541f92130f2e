"""Echo server on ``selectors.DefaultSelector`` (epoll on Linux, level-triggered).

The standard-library way to write a readiness loop by hand, as the
``selectors`` documentation shows it: sockets registered for ``EVENT_READ``,
``recv`` / ``send`` on the socket objects, ``EVENT_WRITE`` added only while a
partial write is pending.

Usage: python selectors_default.py PORT   (binds 127.0.0.1:PORT, prints
"ready", echoes until SIGTERM/SIGINT, exits 0)
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys

BUF = 65536


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


class Conn:
    __slots__ = ("out", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.out = b""


def serve(port: int) -> None:
    sel = selectors.DefaultSelector()
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    sel.register(listener, selectors.EVENT_READ, None)
    conns: set[Conn] = set()
    READ = selectors.EVENT_READ
    WRITE = selectors.EVENT_WRITE

    def close(conn: Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()
        conns.discard(conn)

    def accept() -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock)
        conns.add(conn)
        sel.register(sock, READ, conn)

    def on_read(conn: Conn) -> None:
        try:
            data = conn.sock.recv(BUF)
        except BlockingIOError:
            return
        except OSError:
            close(conn)
            return
        if not data:
            close(conn)
            return
        if conn.out:
            conn.out += data
            return
        try:
            n = conn.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            close(conn)
            return
        if n < len(data):
            conn.out = data[n:]
            sel.modify(conn.sock, READ | WRITE, conn)

    def on_write(conn: Conn) -> None:
        try:
            n = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError:
            close(conn)
            return
        conn.out = conn.out[n:]
        if not conn.out:
            sel.modify(conn.sock, READ, conn)

    print("ready", flush=True)
    try:
        while True:
            for key, mask in sel.select():
                conn = key.data
                if conn is None:
                    accept()
                    continue
                if mask & WRITE:
                    on_write(conn)
                    if conn not in conns:
                        continue
                if mask & READ:
                    on_read(conn)
    except _Stop:
        pass
    finally:
        for conn in list(conns):
            close(conn)
        sel.close()
        listener.close()


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
