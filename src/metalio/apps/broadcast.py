"""The broadcast ("multi-echo") server: every chunk any client sends goes to every client.

This is the server the metalio project started from (a connection slab
indexed by token, and on each read the bytes written to every connection),
made robust to whatever clients do.  Run it with ``metalio broadcast``.

Theory of operation
-------------------
*Ordering.*  Bytes are broadcast in the order the server reads them, one
chunk per read, and every client's outgoing stream is the same sequence of
chunks from the moment it joined.  So each client receives every sender's
bytes intact and in that sender's order (chunks of different senders
interleave at chunk boundaries; the server adds no framing).  The sender
receives its own bytes too.

*Zero copies where Python allows.*  Each read lands in one reused,
page-aligned 64 KiB buffer and is written straight from it to every client
whose queue is empty (on a healthy server, all of them): one kernel copy
in, one per client out.  Only when some client cannot take the whole chunk
now is one ``bytes`` copy made, shared by every lagging client's queue.

*The write queue.*  A client's queue is a ``deque`` of those shared chunks;
its head may be a ``memoryview`` that a partial write advanced, so a
partial write never copies or concatenates.  A lagging client is flushed
with one ``try_writev`` of up to :data:`WRITEV_BATCH` queued chunks per
system call when its socket becomes writable.

*Flow control* (:mod:`metalio.apps.pacing`).  ``WRITABLE`` interest is
registered only while a queue is non-empty, so healthy clients never
generate write events.  Each queued chunk is charged its length plus
:data:`CHUNK_OVERHEAD` bytes of bookkeeping.  While a receiver that keeps
up has more than half of ``--soft-buffer`` (256 KiB) queued, no sender is
read: the bytes wait in the kernel and TCP slows the senders to the
receivers' pace; below an eighth the senders are read again, one after the
other in the order they stopped (a stopped sender consumed its edge, so
the server resumes it, not a new edge).  A receiver over ``--soft-buffer``,
or one that holds the senders for a second without draining, no longer
counts and is disconnected unless it catches up within ``--slow-timeout``
(10 s); one over ``--max-buffer`` (1 MiB) is disconnected at once.  The
log names the limit.  Every queue is a suffix of the one broadcast stream
and chunks are shared, so all queues together hold at most
``--max-buffer`` plus one chunk of data (about 1.06 MiB with the
defaults, however many clients), plus at most ``--max-buffer / 64``
queue entries (references) per client; what pacing leaves unread stays in
the kernel.

*Half-closed clients.*  A client that shuts down its writing side (read
returns end of stream) stays subscribed: it keeps receiving broadcasts
until it closes or its connection fails, so ``printf 'hi' | nc -N`` style
clients see the traffic.  Since a peer that fully closed looks the same
until the next write to it fails, TCP keep-alive (probes after 30 s idle)
is switched on for such connections so they are reaped even when no one
broadcasts.

*Edge triggers.*  Every registration is ``PollOpt.EDGE`` and the server
follows metalio's rule on every backend: read until ``try_read_into``
returns ``None``, write until ``try_write``/``try_writev`` returns ``None``
or the queue is empty (a short read proves nothing; the contract lets the
streams answer that last call without a system call).  A client with data
left after :data:`~metalio.apps.READ_BUDGET` reads is continued later in
the same iteration (see :mod:`metalio.apps.server`).
"""

from __future__ import annotations

import logging
import math
import socket
from collections import deque
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Final

from metalio import Ready
from metalio.apps.pacing import FlowControl
from metalio.apps.server import CHUNK_SIZE, LISTENER, READ_BUDGET, Buffer, Conn, TcpServer
from metalio.apps.startup import aligned_buffer, describe_error, run_server

if TYPE_CHECKING:
    from collections.abc import Callable

    from metalio import EventLoop
    from metalio.net import TcpListener

__all__ = [
    "CHUNK_OVERHEAD",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BUFFER",
    "DEFAULT_PORT",
    "DEFAULT_SLOW_TIMEOUT",
    "DEFAULT_SOFT_BUFFER",
    "WRITEV_BATCH",
    "BroadcastServer",
    "serve",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 7000
DEFAULT_MAX_BUFFER: Final = 1 << 20
"""Hard per-client limit on queued outgoing bytes (1 MiB): over it, disconnected at once."""

DEFAULT_SOFT_BUFFER: Final = 256 << 10
"""Soft per-client limit (256 KiB): over it, not counted for pacing and on the slow clock."""

DEFAULT_SLOW_TIMEOUT: Final = 10.0
"""Seconds a receiver over the soft limit has to catch up before it is disconnected."""

CHUNK_OVERHEAD: Final = 64
"""Bytes charged per queued chunk on top of its length, so a flood of tiny
chunks cannot grow a queue's bookkeeping without bound."""

WRITEV_BATCH: Final = 64
"""Most queued chunks handed to one ``writev``."""

# Ready bits as plain ints: the hot path tests an int, never does enum arithmetic.
_WRITABLE: Final = int(Ready.WRITABLE)
_READ_ANY: Final = int(Ready.READABLE | Ready.ERROR | Ready.READ_CLOSED)
_GONE: Final = int(Ready.ERROR | Ready.WRITE_CLOSED)

_KEEPALIVE: Final = tuple(
    (socket.IPPROTO_TCP, getattr(socket, name), value)
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
)


class BroadcastServer(TcpServer):
    """The broadcast handler.  See the module docstring for how it works.

    :param loop: the loop to run on.
    :param listener: a bound, listening ``TcpListener`` (owned from now on).
    :param max_clients: surplus connections are accepted and closed at once.
    :param max_buffer: hard per-client limit on queued outgoing bytes; a
        client over it is disconnected at once.
    :param soft_buffer: soft per-client limit (clamped to *max_buffer*): a
        client over it stops counting for pacing and is disconnected unless
        it catches up within *slow_timeout*; half of it is the pacing
        high-water mark, an eighth the low-water mark.
    :param slow_timeout: seconds a lagging client has to catch up.
    :param chunk_size: bytes asked for per read (the largest broadcast chunk).
    :param logger: where connects, disconnects and reasons are logged.
    :raises ValueError: *max_buffer*, *soft_buffer* or *chunk_size* < 1,
        *slow_timeout* not finite and > 0, *max_clients* < 1.
    :raises OSError: the listener cannot be registered or the buffer mapped.
    """

    name = "broadcast"

    def __init__(
        self,
        loop: EventLoop,
        listener: TcpListener,
        *,
        max_clients: int | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        soft_buffer: int = DEFAULT_SOFT_BUFFER,
        slow_timeout: float = DEFAULT_SLOW_TIMEOUT,
        chunk_size: int = CHUNK_SIZE,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_buffer < 1 or soft_buffer < 1:
            raise ValueError(f"buffer limits must be >= 1, got {soft_buffer} and {max_buffer}")
        if not 0 < slow_timeout < math.inf:
            raise ValueError(f"slow_timeout must be a finite number > 0, got {slow_timeout}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        # Mapped first: a refusal must leave nothing registered.
        self._view = aligned_buffer(chunk_size)
        super().__init__(loop, listener, max_clients=max_clients, logger=logger)
        self.max_buffer = max_buffer
        self.chunk_size = chunk_size
        self.flow = FlowControl(
            loop,
            soft_limit=soft_buffer,
            hard_limit=max_buffer,
            slow_timeout=slow_timeout,
            call_soon=self.call_soon,
            disconnect=self._disconnect_slow,
            log=self.log,
        )
        """The pacing policy; a second source of chunks (a relay) uses its
        ``blocked`` and ``wait()`` and delivers through :meth:`deliver`."""
        self.on_read: Callable[[Conn, memoryview], object] | None = None
        """Called with each chunk read from a client, after its local fan-out (a relay's publish)."""
        self._fanout: list[Conn] | None = None
        self.chunks = 0
        """Chunks broadcast so far."""

    # -- membership --------------------------------------------------------------

    def on_admit(self, conn: Conn) -> None:
        self.flow.admit(conn)

    def on_drop(self, conn: Conn) -> None:
        self.flow.forget(conn)

    def on_membership_change(self) -> None:
        # Rebuilt lazily: a burst of connects costs nothing until the next broadcast.
        self._fanout = None

    def close(self) -> None:
        if not self._closed:
            flow = self.flow
            self.log.info(
                "flow control: senders paused %d time%s, %d resumed after waiting",
                flow.pauses,
                "" if flow.pauses == 1 else "s",
                flow.resumes,
            )
        super().close()

    # -- events ------------------------------------------------------------------

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == LISTENER:
            self.accept()
            return
        conn = self._get(token)
        if conn is None:  # closed earlier in this iteration
            return
        r = int(ready)
        if r & _WRITABLE and conn.writing:
            self._flush(conn)
            if conn.closed:
                return
        if r & _READ_ANY:
            if not conn.eof:
                if self.flow.blocked:
                    self._stop_reading(conn)
                else:
                    self._read(conn)
            elif r & _GONE:
                # Verify before dropping: the event may be a stale one meant for
                # the previous holder of this token (see metalio.apps.server).
                error = self.pending_error(conn)
                if error is not None:
                    self.drop(conn, describe_error(error))

    def continue_read(self, conn: Conn) -> None:
        if not conn.eof:
            if self.flow.blocked:
                self._stop_reading(conn)
            else:
                self._read(conn)

    def timeout(self, loop: EventLoop, payload: object) -> None:
        if not self.flow.on_timeout(payload):
            super().timeout(loop, payload)

    # -- reading -----------------------------------------------------------------

    def _read(self, conn: Conn) -> None:
        """Read and broadcast until ``try_read_into`` says "would block".

        Stops early when the budget is spent (continued after the others) or
        when the fan-out pauses (resumed by the flow control).
        """
        stream = conn.stream
        view = self._view
        size = self.chunk_size
        flow = self.flow
        on_read = self.on_read
        for _ in range(READ_BUDGET):
            try:
                n = stream.try_read_into(view)
            except OSError as exc:
                self.drop(conn, describe_error(exc))
                return
            if n is None:
                return
            if n == 0:
                self._half_closed(conn)
                return
            chunk = view if n == size else view[:n]
            self._broadcast(chunk, n)
            if on_read is not None:
                on_read(conn, chunk)
            if conn.closed:
                return
            if flow.paused:
                self._stop_reading(conn)
                return
        self.defer_read(conn)

    def _stop_reading(self, conn: Conn) -> None:
        # The sender may have unread bytes and its edge is spent: the flow
        # control calls us back on its turn (no new edge may ever come).
        self.flow.wait(conn, partial(self._resume_reading, conn))

    def _resume_reading(self, conn: Conn) -> None:
        if not conn.closed and not conn.eof:
            self._read(conn)

    def _half_closed(self, conn: Conn) -> None:
        conn.eof = True
        sock = conn.stream.socket
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for level, option, value in _KEEPALIVE:
                sock.setsockopt(level, option, value)
        except OSError:
            pass  # keep-alive is a courtesy; the next failed write reaps it anyway
        self.log.info(
            "client %d (%s) closed its sending side; it keeps receiving until it disconnects",
            conn.token,
            conn.addr,
        )

    # -- broadcasting --------------------------------------------------------------

    def deliver(self, data: Buffer) -> None:
        """Broadcast *data* to every client, as if a client had sent it.  Loop thread only.

        The entry point of a second source of chunks (a relay): the chunk is
        queued and charged exactly like a local one.  Such a source checks
        ``flow.blocked`` before each read and, when it is set, stops and calls
        ``flow.wait(key, resume)``.
        """
        n = len(data)
        if n:
            self._broadcast(memoryview(data), n)

    def _broadcast(self, data: memoryview, n: int) -> None:
        """Send *data* (``n`` bytes) to every client, sender included."""
        self.chunks += 1
        fanout = self._fanout
        if fanout is None:
            fanout = self._fanout = [conn for _, conn in self.clients.items()]
        chunk: bytes | None = None
        grew = self.flow.grew
        charge = n + CHUNK_OVERHEAD
        doomed: list[tuple[Conn, str, int]] = []
        for conn in fanout:
            if conn.closed:
                continue
            queue = conn.queue
            if queue:
                # Behind already: keep the order, the writable edge will flush it.
                if chunk is None:
                    chunk = bytes(data)
                queue.append(chunk)
                conn.queued += charge
                if conn.queued > conn.mark and grew(conn):
                    doomed.append((conn, self.flow.hard_limit_reason(), logging.WARNING))
                continue
            # The hot path: the raw write, no Python frame (see Conn.write).
            try:
                written = conn.write(data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                doomed.append((conn, describe_error(exc), logging.INFO))
                continue
            if written == n:
                continue
            # The socket took only part (or none): queue the rest, shared.
            if chunk is None:
                chunk = bytes(data)
            queue = conn.queue = deque()
            if written:
                queue.append(memoryview(chunk)[written:])
                conn.queued = charge - written
            else:
                queue.append(chunk)
                conn.queued = charge
            if conn.queued > conn.mark and grew(conn):
                doomed.append((conn, self.flow.hard_limit_reason(), logging.WARNING))
            elif not conn.writing:
                self.want_write(conn)
        for conn, reason, level in doomed:
            self.drop(conn, reason, level)

    def _disconnect_slow(self, conn: Conn, why: str) -> None:
        self.drop(conn, why, logging.WARNING)

    # -- writing -------------------------------------------------------------------

    def _flush(self, conn: Conn) -> None:
        """Write *conn*'s queue until its socket says "would block" or the queue is empty."""
        queue = conn.queue
        if queue is None:  # pragma: no cover - writing implies a queue
            return
        stream = conn.stream
        while queue:
            whole = len(queue) <= WRITEV_BATCH
            try:
                if len(queue) == 1:
                    written = stream.try_write(queue[0])
                elif whole:
                    written = stream.try_writev(queue)
                else:
                    written = stream.try_writev(list(islice(queue, WRITEV_BATCH)))
            except OSError as exc:
                self.drop(conn, describe_error(exc))
                return
            if written is None:
                break  # still full: wait for the next writable edge
            conn.queued -= written
            while written:
                head = queue[0]
                size = len(head)
                if written < size:
                    queue[0] = memoryview(head)[written:]
                    break
                queue.popleft()
                conn.queued -= CHUNK_OVERHEAD
                written -= size
        if queue:
            if conn.level and conn.queued <= self.flow.low:
                self.flow.drained(conn)
            return
        conn.queue = None  # caught up: give the deque back
        conn.queued = 0
        if conn.level:
            self.flow.drained(conn)
        self.want_read(conn)


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    max_clients: int | None = None,
    max_buffer: int = DEFAULT_MAX_BUFFER,
    soft_buffer: int = DEFAULT_SOFT_BUFFER,
    slow_timeout: float = DEFAULT_SLOW_TIMEOUT,
    backend: str | None = None,
    backlog: int = 1024,
    chunk_size: int = CHUNK_SIZE,
    on_listening: Callable[[BroadcastServer], None] | None = None,
    handle_signals: bool = True,
    logger: logging.Logger | None = None,
) -> None:
    """Run a broadcast server until ``SIGINT``/``SIGTERM`` or ``server.stop()``.

    Everything is closed on return.  *on_listening* receives the server as
    soon as it accepts connections; ``server.address`` is the bound address
    and ``server.stop()`` (thread-safe) ends :func:`serve`, which is how
    tests run it in a thread (with ``handle_signals=False``).  The limits
    are those of :class:`BroadcastServer`.

    :raises OSError: the address does not resolve or cannot be bound.
    :raises ValueError: an unknown backend or an invalid limit.
    """
    run_server(
        BroadcastServer,
        host,
        port,
        backend=backend,
        backlog=backlog,
        on_listening=on_listening,  # type: ignore[arg-type]
        handle_signals=handle_signals,
        max_clients=max_clients,
        max_buffer=max_buffer,
        soft_buffer=soft_buffer,
        slow_timeout=slow_timeout,
        chunk_size=chunk_size,
        logger=logger,
    )
