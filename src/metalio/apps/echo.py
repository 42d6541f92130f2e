"""The echo server: every client gets back exactly the bytes it sent.

Run it with ``metalio echo``.

Theory of operation
-------------------
Each read lands in one reused, page-aligned 64 KiB buffer and is written
straight back from it, so a client that keeps up costs one kernel copy in
and one out per chunk and no Python allocation.

*Backpressure.*  If the client's socket takes only part of the echo, the
rest is copied once into the client's queue and the server stops reading
from that client: its registration becomes ``WRITABLE`` only.  Unread data
then stays in the kernel, whose receive window pushes back on the client,
so a client that sends without reading holds at most one chunk of server
memory and never disturbs anyone else.  When the queue drains the
registration returns to ``READABLE`` and reading resumes at once (the
``reregister`` reports data that is already waiting).

*End of stream.*  End of stream is only read once nothing is queued (the
server does not read while it is behind), so by then every echo has been
handed to the kernel; the connection is closed and the kernel delivers the
rest before its FIN.

Registrations are ``PollOpt.EDGE``: a client is read until ``try_read_into``
returns ``None`` (a short read is not taken as proof of an empty buffer; the
contract lets the streams answer that last call without a system call), and reads are budgeted per turn as
in :mod:`metalio.apps.broadcast` (see :mod:`metalio.apps.server`).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from metalio import Ready
from metalio.apps.server import CHUNK_SIZE, LISTENER, READ_BUDGET, Conn, TcpServer
from metalio.apps.startup import aligned_buffer, describe_error, run_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from metalio import EventLoop
    from metalio.net import TcpListener

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "EchoServer", "serve"]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7007

# Ready bits as plain ints: the hot path tests an int, never does enum arithmetic.
_READ_ANY: Final = int(Ready.READABLE | Ready.ERROR | Ready.READ_CLOSED)
_WRITE_ANY: Final = int(Ready.WRITABLE | Ready.ERROR)


class EchoServer(TcpServer):
    """The echo handler.  See the module docstring for how it works.

    :param loop: the loop to run on.
    :param listener: a bound, listening ``TcpListener`` (owned from now on).
    :param max_clients: surplus connections are accepted and closed at once.
    :param chunk_size: bytes asked for per read.
    :param logger: where connects, disconnects and reasons are logged.
    :raises ValueError: *chunk_size* < 1, *max_clients* < 1.
    :raises OSError: the listener cannot be registered or the buffer mapped.
    """

    name = "echo"

    def __init__(
        self,
        loop: EventLoop,
        listener: TcpListener,
        *,
        max_clients: int | None = None,
        chunk_size: int = CHUNK_SIZE,
        logger: logging.Logger | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        # Mapped first: a refusal must leave nothing registered.
        self._view = aligned_buffer(chunk_size)
        super().__init__(loop, listener, max_clients=max_clients, logger=logger)
        self.chunk_size = chunk_size

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == LISTENER:
            self.accept()
            return
        conn = self._get(token)
        if conn is None:
            return
        r = int(ready)
        if conn.writing:
            if not r & _WRITE_ANY:
                return
            if not self._flush(conn):
                return  # still behind (or closed): not reading meanwhile
            self._read(conn)  # data may have waited while we did not read
        elif r & _READ_ANY:
            self._read(conn)

    def continue_read(self, conn: Conn) -> None:
        if not conn.writing:
            self._read(conn)

    def _read(self, conn: Conn) -> None:
        """Read and echo until ``try_read_into`` says "would block" (or the budget is spent)."""
        stream = conn.stream
        view = self._view
        size = self.chunk_size
        for _ in range(READ_BUDGET):
            try:
                n = stream.try_read_into(view)
            except OSError as exc:
                self.drop(conn, describe_error(exc))
                return
            if n is None:
                return
            if n == 0:
                self.drop(conn, "end of stream")
                return
            data = view if n == size else view[:n]
            try:
                written = stream.try_write(data)
            except OSError as exc:
                self.drop(conn, describe_error(exc))
                return
            if written != n:
                # Keep the rest (one copy) and stop reading until it is gone.
                conn.queue = deque((bytes(data[written or 0 :]),))
                self.want_write(conn, reading=False)
                return
        self.defer_read(conn)

    def _flush(self, conn: Conn) -> bool:
        """Write the queue; ``True`` once it is empty and reading is back on."""
        queue = conn.queue
        while queue:
            try:
                written = conn.stream.try_write(queue[0])
            except OSError as exc:
                self.drop(conn, describe_error(exc))
                return False
            if written is None:
                return False
            head = queue[0]
            if written < len(head):
                queue[0] = memoryview(head)[written:]
            else:
                queue.popleft()
        conn.queue = None
        return self.want_read(conn)


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_clients: int | None = None,
    backend: str | None = None,
    backlog: int = 1024,
    chunk_size: int = CHUNK_SIZE,
    on_listening: Callable[[EchoServer], None] | None = None,
    handle_signals: bool = True,
    logger: logging.Logger | None = None,
) -> None:
    """Run an echo server until ``SIGINT``/``SIGTERM`` or ``server.stop()``.

    Everything is closed on return; see :func:`metalio.apps.broadcast.serve`
    for *on_listening* and *handle_signals*.

    :raises OSError: the address does not resolve or cannot be bound.
    :raises ValueError: an unknown backend or an invalid option.
    """
    options: dict[str, Any] = {
        "max_clients": max_clients,
        "chunk_size": chunk_size,
        "logger": logger,
    }
    run_server(
        EchoServer,
        host,
        port,
        backend=backend,
        backlog=backlog,
        on_listening=on_listening,  # type: ignore[arg-type]
        handle_signals=handle_signals,
        **options,
    )
