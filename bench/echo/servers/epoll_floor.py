"""Echo server: a hand-written edge-triggered ``select.epoll`` loop -- the Python floor.

What the cheapest reasonable pure-Python server looks like: one ``epoll``
object, every connection registered once with ``EPOLLIN | EPOLLOUT |
EPOLLET`` (never modified), ``os.read`` / ``os.write`` straight on the
descriptors, no per-event objects.  After a short read (fewer bytes than
asked) it stops reading: on a stream socket that means the receive buffer was
empty at that moment, and with ``EPOLLET`` any later arrival raises a new
edge, so the extra read that would only fail with ``EAGAIN`` is skipped.
Partial writes are kept per connection and flushed on the next writable edge.

Usage: python epoll_floor.py PORT   (binds 127.0.0.1:PORT, prints "ready",
echoes until SIGTERM/SIGINT, exits 0)
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys

BUF = 65536


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def serve(port: int) -> None:
    listener = socket.create_server(("127.0.0.1", port))
    listener.setblocking(False)
    lfd = listener.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN | select.EPOLLET)
    socks: dict[int, socket.socket] = {}
    pending: dict[int, bytes] = {}

    conn_mask = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
    EPOLLIN = select.EPOLLIN
    EPOLLOUT = select.EPOLLOUT
    ERRHUP = select.EPOLLERR | select.EPOLLHUP
    read = os.read
    write = os.write
    poll = ep.poll

    def close(fd: int) -> None:
        pending.pop(fd, None)
        sock = socks.pop(fd, None)
        if sock is not None:
            ep.unregister(fd)
            sock.close()

    print("ready", flush=True)
    try:
        while True:
            for fd, ev in poll():
                if fd == lfd:
                    while True:
                        try:
                            conn, _ = listener.accept()
                        except BlockingIOError:
                            break
                        except ConnectionAbortedError:
                            continue
                        conn.setblocking(False)
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        cfd = conn.fileno()
                        socks[cfd] = conn
                        ep.register(cfd, conn_mask)
                    continue

                if ev & EPOLLOUT and fd in pending:
                    data = pending[fd]
                    try:
                        n = write(fd, data)
                    except BlockingIOError:
                        n = 0
                    except OSError:
                        close(fd)
                        continue
                    if n == len(data):
                        del pending[fd]
                    else:
                        pending[fd] = data[n:]

                if ev & EPOLLIN:
                    while True:
                        try:
                            data = read(fd, BUF)
                        except BlockingIOError:
                            break
                        except OSError:
                            close(fd)
                            break
                        if not data:
                            close(fd)
                            break
                        if fd in pending:
                            pending[fd] += data
                        else:
                            try:
                                n = write(fd, data)
                            except BlockingIOError:
                                n = 0
                            except OSError:
                                close(fd)
                                break
                            if n != len(data):
                                pending[fd] = data[n:]
                        if len(data) < BUF:
                            break  # short read: drained; the next arrival is a new edge
                elif ev & ERRHUP:
                    close(fd)
    except _Stop:
        pass
    finally:
        for fd in list(socks):
            close(fd)
        ep.close()
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
