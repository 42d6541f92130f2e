"""A tiny line-agnostic TCP client: standard input to the server, the server to standard output.

``metalio client HOST PORT`` is ``nc`` for machines without one: run it in
two terminals against ``metalio broadcast`` and what you type in one shows
up in both.  Bytes pass through unchanged in both directions.

Theory of operation
-------------------
Two blocking pumps: a daemon thread copies standard input to the socket
and, at end of input, shuts down the socket's sending side (the broadcast
server keeps sending to a half-closed client, so the rest of the traffic
still arrives); the main thread copies the socket to standard output,
flushing every chunk, until the server closes the connection.  Blocking
I/O in two threads is the simplest correct tool here: the client serves one
connection and standard input may be a regular file, which readiness APIs
such as epoll refuse.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import BinaryIO

__all__ = ["run_client"]

_CHUNK = 65536


def _pump_input(fd: int, sock: socket.socket) -> None:
    try:
        while True:
            data = os.read(fd, _CHUNK)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the connection or stdin went away; the main thread reports it


def run_client(
    host: str,
    port: int,
    *,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    timeout: float = 10.0,
) -> int:
    """Connect to *host*:*port* and pump bytes until the server closes.

    Returns the exit status: ``0`` when the server closed the connection,
    ``1`` when connecting or the connection failed (the reason is printed to
    standard error).

    :param timeout: seconds allowed for connecting.
    """
    in_stream = stdin if stdin is not None else sys.stdin.buffer
    out = stdout if stdout is not None else sys.stdout.buffer
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        print(f"metalio client: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    with sock:
        sock.settimeout(None)
        threading.Thread(target=_pump_input, args=(in_stream.fileno(), sock), daemon=True).start()
        try:
            while True:
                data = sock.recv(_CHUNK)
                if not data:
                    return 0
                out.write(data)
                out.flush()
        except OSError as exc:
            print(f"metalio client: {exc}", file=sys.stderr)
            return 1
