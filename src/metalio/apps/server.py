"""The server base: one connection record, one ``Handler``, the life of a connection.

:class:`Conn` is what a server keeps per client (its stream, its outgoing
queue, its registration state); :class:`TcpServer` is the ``Handler`` the
servers of :mod:`metalio.apps` subclass.  It owns the connection slab and
everything a connection goes through whatever the server does with its
bytes: admission (through :class:`~metalio.apps.accept.Acceptor`),
``READABLE``/``WRITABLE`` interest changes, fairness between busy
connections, closing, and stopping.  What is read and where it goes is the
subclass's business (``ready``, ``continue_read``).

Theory of operation
-------------------
*One thread, one loop.*  A server is a :class:`~metalio.Handler` subclass
driven by one :class:`~metalio.EventLoop`.  The listener has token ``0``;
client connections get their tokens from a :class:`~metalio.Slab` starting
at ``1``, so a token names its connection with one lookup and a freed token
is reused for the next client.  Every registration is edge-triggered
(``PollOpt.EDGE``): readiness is reported once per change, so the servers
drain what they are told about (``try_*`` until it returns ``None``) and an
idle or stalled connection costs nothing per iteration.

*Fairness.*  A client's readable edge is served with at most
:data:`READ_BUDGET` reads, and the listener's with at most
:data:`~metalio.apps.accept.ACCEPT_BUDGET` accepts.  Whatever still has
work after that goes on an "unfinished" list (:meth:`TcpServer.defer_read`)
and the server sends itself a message through the loop's notify channel,
which makes the next poll return at once and runs the continuation after
everyone else's events.  One fast sender or a connect flood cannot starve
the others, and no edge is lost: the server, not a new edge, resumes them.
:meth:`TcpServer.call_soon` runs any other continuation in the same phase
(the broadcast's flow control resumes paused senders through it).

*Stale events.*  A token freed by a disconnect may be handed to a new
client within the same batch of events (the slab reuses keys at once), so
the new client can see the old one's leftover readiness.  That is harmless
by construction: every action is a ``try_*`` call whose result decides
what happens, so a spurious event costs one "would block" and nothing else.

*Stopping.*  ``SIGINT`` and ``SIGTERM`` arrive through
``loop.add_signal`` as ``Handler.signal`` on the loop thread and shut the
loop down; :meth:`TcpServer.stop` does the same from any thread through the
notify channel.  :meth:`TcpServer.close` then closes every connection.

*Errors.*  No client behaviour raises out of the loop: every ``OSError``
from a client's socket (reset, broken pipe, or anything unexpected) closes
that connection alone, with the reason logged.
"""

from __future__ import annotations

import logging
import os
import signal as signal_module
import sys
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

from metalio import Handler, Interest, PollOpt, Slab
from metalio.apps.accept import RETRY_ACCEPT, Acceptor
from metalio.apps.startup import describe_error, format_addr

if TYPE_CHECKING:
    from metalio import EventLoop, Ready
    from metalio.net import TcpListener, TcpStream

__all__ = ["CHUNK_SIZE", "LISTENER", "READ_BUDGET", "Buffer", "Conn", "TcpServer"]

LISTENER: Final = 0
"""The listener's token; client tokens start at 1."""

CHUNK_SIZE: Final = 65536
"""Bytes asked for per read: large enough to amortise a system call, well under
the 128 KiB above which glibc would ``mmap`` a fresh allocation for a copy."""

READ_BUDGET: Final = 16
"""Reads one client gets per turn before the others are served (1 MiB at 64 KiB)."""

Buffer: TypeAlias = "bytes | memoryview"

# os.write works on socket descriptors on POSIX only (Windows sockets are not
# C runtime file descriptors).
_POSIX: Final = os.name == "posix"

_EDGE: Final = int(PollOpt.EDGE)
_READABLE: Final = int(Interest.READABLE)
_READ_WRITE: Final = int(Interest.READABLE | Interest.WRITABLE)
_WRITABLE: Final = int(Interest.WRITABLE)

_STOP: Final = "metalio.apps:stop"
_KICK: Final = "metalio.apps:continue-reads"


class Conn:
    """One client connection.

    ``queue`` holds the bytes accepted for this client but not yet taken by
    its socket, oldest first; the head may be a ``memoryview`` into a
    partly written chunk.  It exists only while the client is behind
    (``None`` otherwise): an empty ``deque`` costs about 760 bytes, several
    times the rest of an idle connection's Python state.  ``queued`` is what
    the queue is charged against the server's per-client limits.
    ``writing`` says whether ``WRITABLE`` interest is registered (only while
    the queue is non-empty).  ``level`` and ``mark`` belong to the
    broadcast's flow control (:mod:`metalio.apps.pacing`): the receiver's
    pacing state and the queue size whose crossing changes it.

    ``write(data)`` is the socket's raw write, for the broadcast's inner loop
    (one call per client per chunk): ``os.write`` on the descriptor where
    that works on sockets (POSIX), ``socket.send`` elsewhere.  It returns the
    bytes taken and raises ``BlockingIOError`` when none are: unlike
    ``stream.try_write`` it costs no Python frame, and it does not re-arm an
    emulated edge (the caller's ``want_write`` does that).
    """

    __slots__ = (
        "addr",
        "closed",
        "eof",
        "level",
        "mark",
        "queue",
        "queued",
        "stream",
        "token",
        "write",
        "writing",
    )

    def __init__(self, stream: TcpStream, addr: str, token: int) -> None:
        self.stream = stream
        self.write: Callable[[Buffer], int] = (
            partial(os.write, stream.fileno()) if _POSIX else stream.socket.send
        )
        self.addr = addr
        self.token = token
        self.queue: deque[Buffer] | None = None
        self.queued = 0
        self.closed = False
        self.eof = False
        self.writing = False
        self.level = 0
        self.mark = sys.maxsize

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.queue or ())} queued"
        return f"<Conn {self.token} {self.addr} {state}>"


class TcpServer(Handler):
    """Admission, interest changes, fairness, closing and stopping.

    Subclasses implement :meth:`ready` for client tokens (calling
    :meth:`accept` for :data:`LISTENER`) and :meth:`continue_read` for the
    fairness list, and may override :meth:`on_admit`, :meth:`on_drop` and
    :meth:`on_membership_change`.

    :param loop: the loop this server runs on; the listener is registered here.
    :param listener: a bound, listening ``TcpListener``; the server owns it.
    :param max_clients: more simultaneous clients than this are accepted and
        closed at once; ``None`` means no limit but descriptors.
    :param logger: where connects, disconnects and their reasons go.
    :raises ValueError: ``max_clients < 1``.
    :raises OSError: the listener cannot be registered.
    """

    name: ClassVar[str] = "server"

    def __init__(
        self,
        loop: EventLoop,
        listener: TcpListener,
        *,
        max_clients: int | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_clients is not None and max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        self.loop = loop
        self.listener = listener
        self.max_clients = max_clients
        self.log = logger or logging.getLogger(f"metalio.{self.name}")
        self.clients: Slab[Conn] = Slab(start=LISTENER + 1)
        self._get: Callable[[int], Conn | None] = self.clients.get
        self._stopper = loop.channel()
        self._kicked = False
        self._accept_more = False
        self._unfinished: list[Conn] = []
        self._soon: list[Callable[[], None]] = []
        self._closed = False
        addr = listener.local_addr()
        self.address: tuple[str, int] = (str(addr[0]), int(addr[1]))
        """The address actually bound (the real port when 0 was asked for)."""
        self.acceptor = Acceptor(
            loop,
            listener,
            admit=self._admit,
            count=self.clients.__len__,
            max_clients=max_clients,
            log=self.log,
        )
        try:
            loop.register(listener, LISTENER, _READABLE, _EDGE)
        except BaseException:
            self.acceptor.close()
            raise

    # -- public --------------------------------------------------------------

    def stop(self) -> None:
        """Make :meth:`EventLoop.run` return soon.  Thread-safe, idempotent.

        :raises metalio.NotifyError: the loop is already closed or its
            channel is full (both mean it is stopping anyway).
        """
        self._stopper.send(_STOP)

    def connections(self) -> Iterator[Conn]:
        """The connections now open (a snapshot, safe to drop from while iterating)."""
        return iter([conn for _, conn in self.clients.items()])

    def close(self) -> None:
        """Close every connection, the listener and the spare descriptor.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        count = 0
        for conn in self.connections():
            self.drop(conn, "server shutting down", logging.DEBUG)
            count += 1
        if count:
            self.log.info("closed %d connection%s", count, "" if count == 1 else "s")
        self.acceptor.close()

    # -- Handler callbacks -----------------------------------------------------

    def notify(self, loop: EventLoop, msg: object) -> None:
        if msg == _KICK:
            self._continue_reads()
        elif msg == _STOP:
            self.log.info("stop requested: shutting down")
            loop.shutdown()

    def signal(self, loop: EventLoop, signum: int) -> None:
        try:
            name = signal_module.Signals(signum).name
        except ValueError:  # pragma: no cover - a number without a name
            name = str(signum)
        self.log.info("received %s: shutting down", name)
        loop.shutdown()

    def timeout(self, loop: EventLoop, payload: object) -> None:
        if payload == RETRY_ACCEPT:
            self.acceptor.retry()
            self.accept()

    # -- accepting -------------------------------------------------------------

    def accept(self) -> None:
        """Accept every pending connection (the listener is edge-triggered)."""
        if self._closed:
            return
        if self.acceptor.accept():
            # Budget spent with connections maybe still pending: continue after
            # everyone else's events (the edge will not come again for them).
            self._accept_more = True
            self._kick()

    def _admit(self, stream: TcpStream, peer: Any) -> None:
        clients = self.clients
        token = clients.vacant_key()
        conn = Conn(stream, format_addr(peer), token)
        try:
            stream.set_nodelay(True)  # broadcasts and echoes are latency-bound
            self.loop.register(stream, token, _READABLE, _EDGE)
        except OSError as exc:
            self.log.warning("could not register %s: %s", conn.addr, describe_error(exc))
            stream.close()
            return
        clients.insert(conn)
        self.on_membership_change()
        self.log.info("client %d connected from %s (%d connected)", token, conn.addr, len(clients))
        self.on_admit(conn)

    # -- closing ---------------------------------------------------------------

    def drop(self, conn: Conn, reason: str, level: int = logging.INFO) -> None:
        """Close *conn* and forget it; log *reason*.  Idempotent."""
        if conn.closed:
            return
        conn.closed = True
        self.on_drop(conn)
        conn.queue = None
        conn.queued = 0
        stream = conn.stream
        try:
            self.loop.deregister(stream)
        except (OSError, ValueError):
            pass
        stream.close()
        if self.clients.get(conn.token) is conn:
            self.clients.remove(conn.token)
        self.on_membership_change()
        self.log.log(
            level,
            "client %d (%s) disconnected: %s (%d connected)",
            conn.token,
            conn.addr,
            reason,
            len(self.clients),
        )
        if not self._closed:
            self.acceptor.descriptor_freed()

    # -- interest changes --------------------------------------------------------

    def want_write(self, conn: Conn, reading: bool = True) -> bool:
        """Register ``WRITABLE`` (plus ``READABLE`` if *reading*); ``False`` if *conn* was dropped."""
        try:
            self.loop.reregister(
                conn.stream, conn.token, _READ_WRITE if reading else _WRITABLE, _EDGE
            )
        except OSError as exc:
            self.drop(conn, f"reregister failed: {describe_error(exc)}", logging.WARNING)
            return False
        conn.writing = True
        return True

    def want_read(self, conn: Conn) -> bool:
        """Register ``READABLE`` only; ``False`` if *conn* was dropped."""
        try:
            self.loop.reregister(conn.stream, conn.token, _READABLE, _EDGE)
        except OSError as exc:
            self.drop(conn, f"reregister failed: {describe_error(exc)}", logging.WARNING)
            return False
        conn.writing = False
        return True

    @staticmethod
    def pending_error(conn: Conn) -> OSError | None:
        """*conn*'s failure, if it has one: ``SO_ERROR``, else what an empty
        write says (``EPIPE`` once the peer is gone for good).  Used to check
        a hang-up event before acting on it (it may be stale: see *Stale events*)."""
        stream = conn.stream
        try:
            error = stream.take_error()
            if error is None:
                stream.try_write(b"")
        except OSError as exc:
            return exc
        return error

    # -- fairness ----------------------------------------------------------------

    def defer_read(self, conn: Conn) -> None:
        """*conn* used its read budget with data left: continue after the others."""
        self._unfinished.append(conn)
        self._kick()

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run *callback* in this iteration's continuation phase, after every I/O event.

        Callbacks run after the :meth:`defer_read` continuations, in the
        order given.  Nothing runs once the server is closed.
        """
        if not self._closed:
            self._soon.append(callback)
            self._kick()

    def _kick(self) -> None:
        # A message to ourselves: the next poll does not block, and notify()
        # runs after this iteration's I/O events, so everyone gets a turn.
        if not self._kicked:
            self._kicked = True
            self._stopper.send(_KICK)

    def _continue_reads(self) -> None:
        self._kicked = False
        if self._accept_more:
            self._accept_more = False
            self.accept()
        pending = self._unfinished
        self._unfinished = []
        for conn in pending:
            if not conn.closed:
                self.continue_read(conn)
        if self._soon:
            soon = self._soon
            self._soon = []
            for callback in soon:
                callback()

    # -- subclass hooks ------------------------------------------------------------

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == LISTENER:
            self.accept()

    def continue_read(self, conn: Conn) -> None:
        """Resume reading *conn* after :meth:`defer_read` (subclasses implement)."""

    def on_admit(self, conn: Conn) -> None:
        """Called once *conn* is registered and counted."""

    def on_drop(self, conn: Conn) -> None:
        """Called once when *conn* starts closing, before its queue is discarded."""

    def on_membership_change(self) -> None:
        """Called after a connection is added or removed."""
