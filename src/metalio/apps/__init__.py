"""Ready-made servers on metalio's ``EventLoop``: the plumbing they share.

The servers themselves live in :mod:`metalio.apps.broadcast` (every chunk
any client sends goes to every client) and :mod:`metalio.apps.echo`; the
``metalio`` command line (:mod:`metalio.cli`) runs them.  This module holds
what both need: the connection record, accepting, descriptor exhaustion,
closing a connection, stopping, and a few start-up helpers.

Theory of operation
-------------------
*One thread, one loop.*  A server is a :class:`~metalio.loop.Handler`
subclass driven by one :class:`~metalio.loop.EventLoop`.  The listener has
token ``0``; client connections get their tokens from a
:class:`~metalio.slab.Slab` starting at ``1``, so a token names its
connection with one lookup and a freed token is reused for the next client.
Every registration is edge-triggered (``PollOpt.EDGE``): readiness is
reported once per change, so the servers drain what they are told about and
an idle or stalled connection costs nothing per iteration.

*Accepting.*  The listener's readiness is drained: ``try_accept`` until it
returns ``None``.  ``--max-clients`` is enforced by accepting the surplus
connection and closing it at once, so the client learns immediately (a
connection left in the kernel's backlog would hang instead) and the others
never notice.

*Running out of descriptors (EMFILE/ENFILE).*  ``accept`` fails while the
pending connection stays in the backlog, so a level-triggered server would
spin on it and an edge-triggered one would forget it.  The server keeps one
*spare descriptor* (``/dev/null``) open for this moment: it closes the
spare, accepts the pending connection into the freed slot, closes that
connection (the client sees an orderly close and may retry), reopens the
spare and goes on until the backlog is empty.  Existing clients are served
throughout, nothing spins, and as soon as descriptors free up new clients
are accepted normally again.  The shortage is logged once when it starts
and once when it ends (with the number of refused connections).  If even
that fails (no spare, or ENFILE while another process grabbed the freed
slot), or accept fails for another resource reason (``ENOBUFS``,
``ENOMEM``), accepting pauses and is retried on a timer with exponential
back-off (50 ms to 1 s) and at once whenever a client disconnects.

*Fairness.*  A client's readable edge is served with at most
:data:`READ_BUDGET` reads, and the listener's with at most
:data:`ACCEPT_BUDGET` accepts.  Whatever still has work after that goes on
an "unfinished" list and the server sends itself a message through the
loop's notify channel, which makes the next poll return at once and runs
the continuation after everyone else's events.  One fast sender or a
connect flood cannot starve the others, and no edge is lost.

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

import errno
import logging
import os
import signal as signal_module
import socket
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeAlias

from metalio._flags import Interest, PollOpt
from metalio.loop import EventLoop, EventLoopConfig, Handler
from metalio.net import TcpListener, TcpStream
from metalio.slab import Slab

if TYPE_CHECKING:
    from metalio._flags import Ready

__all__ = [
    "ACCEPT_BUDGET",
    "CHUNK_SIZE",
    "LISTENER",
    "READ_BUDGET",
    "Buffer",
    "Conn",
    "TcpServer",
    "aligned_buffer",
    "describe_error",
    "format_addr",
    "raise_nofile_limit",
    "resolve_address",
    "run_server",
]

log = logging.getLogger("metalio.apps")

LISTENER: Final = 0
"""The listener's token; client tokens start at 1."""

CHUNK_SIZE: Final = 65536
"""Bytes asked for per read: large enough to amortise a system call, well under
the 128 KiB above which glibc would ``mmap`` a fresh allocation for a copy."""

READ_BUDGET: Final = 16
"""Reads one client gets per turn before the others are served (1 MiB at 64 KiB)."""

ACCEPT_BUDGET: Final = 256
"""Connections accepted per turn: a connect flood cannot starve the clients."""

Buffer: TypeAlias = "bytes | memoryview"

# os.write works on socket descriptors on POSIX only (Windows sockets are not
# C runtime file descriptors).
_POSIX: Final = os.name == "posix"

_READ_EDGE: Final = int(PollOpt.EDGE)
_READABLE: Final = int(Interest.READABLE)
_READ_WRITE: Final = int(Interest.READABLE | Interest.WRITABLE)
_WRITABLE: Final = int(Interest.WRITABLE)

# accept(2) on Linux passes on errors of the pending connection itself;
# they concern that one connection, so the next one is tried at once.
_ACCEPT_SKIP: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EINTR",
    )
    if hasattr(errno, name)
)
_OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE})

_STOP: Final = "metalio.apps:stop"
_KICK: Final = "metalio.apps:continue-reads"
_RETRY_ACCEPT: Final = "metalio.apps:retry-accept"
_RETRY_MIN: Final = 0.05
_RETRY_MAX: Final = 1.0


# -- small helpers ---------------------------------------------------------


def aligned_buffer(size: int) -> memoryview:
    """A writable, zero-filled, page-aligned buffer of *size* bytes.

    Anonymous ``mmap`` memory starts on a page boundary, so the kernel's copy
    into it is never slowed by a misaligned destination (a fresh
    ``bytearray`` often starts 16 bytes off a 32-byte boundary).

    :raises ValueError: *size* < 1.
    :raises OSError: the kernel refused the mapping.
    """
    import mmap

    if size < 1:
        raise ValueError(f"buffer size must be >= 1, got {size}")
    return memoryview(mmap.mmap(-1, size))


def describe_error(exc: BaseException | None) -> str:
    """A short lower-case reason for a log line ("connection reset by peer")."""
    if exc is None:
        return "hang-up"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


def format_addr(addr: Any) -> str:
    """``host:port``, with IPv6 hosts in brackets (``[::1]:7000``)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if ":" in str(host):
            return f"[{host}]:{port}"
        return f"{host}:{port}"
    return str(addr)


def resolve_address(host: str, port: int) -> tuple[str, int]:
    """Turn *host* into the IP literal ``metalio.net`` binds to.

    IP literals pass through; ``""`` means every IPv4 interface; a name is
    resolved once, here, with ``getaddrinfo`` (metalio itself never resolves
    names because resolution blocks).

    :raises OSError: the name does not resolve (``socket.gaierror``).
    """
    if host == "":
        return ("0.0.0.0", port)
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.partition("%")[0])
        except OSError:
            continue
        return (host, port)
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(errno.EADDRNOTAVAIL, f"{host!r} has no address")
    sockaddr = infos[0][4]
    return (str(sockaddr[0]), port)


def raise_nofile_limit(logger: logging.Logger | None = None) -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; return the soft limit now in force.

    A thousand clients need a thousand descriptors, and most systems start
    programs with a soft limit of 1024.  The change is logged.  Platforms
    without ``resource`` (Windows) are left alone (``-1`` is returned).
    """
    logger = logger or log
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft == target:
        logger.info("open-file limit (RLIMIT_NOFILE): %d, already the hard limit", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        logger.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft
    logger.info("raised the open-file limit (RLIMIT_NOFILE) from %d to %d", soft, target)
    return target


# -- the connection record -------------------------------------------------


class Conn:
    """One client connection.

    ``queue`` holds the bytes accepted for this client but not yet taken by
    its socket, oldest first; the head may be a ``memoryview`` into a
    partly written chunk.  It exists only while the client is behind
    (``None`` otherwise): an empty ``deque`` costs about 760 bytes, several
    times the rest of an idle connection's Python state.  ``queued`` is what
    the queue is charged against the server's per-client limit.  ``writing``
    says whether ``WRITABLE`` interest is registered (only while the queue is
    non-empty).

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

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.queue or ())} queued"
        return f"<Conn {self.token} {self.addr} {state}>"


# -- the server base class -------------------------------------------------


class TcpServer(Handler):
    """Accepting, admission, descriptor exhaustion, closing and stopping.

    Subclasses implement :meth:`ready` for client tokens (calling
    :meth:`accept` for :data:`LISTENER`) and :meth:`continue_read` for the
    fairness list, and may override :meth:`on_admit` / :meth:`on_membership_change`.

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
        self._spare = self._open_spare()
        self._accept_paused = False
        self._retry_timer: Any = None
        self._retry_delay = _RETRY_MIN
        self._shortage = False
        self._refused = 0
        self._closed = False
        addr = listener.local_addr()
        self.address: tuple[str, int] = (str(addr[0]), int(addr[1]))
        """The address actually bound (the real port when 0 was asked for)."""
        try:
            loop.register(listener, LISTENER, _READABLE, _READ_EDGE)
        except BaseException:
            if self._spare >= 0:
                os.close(self._spare)
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
        try:
            self.loop.deregister(self.listener)
        except (OSError, ValueError):
            pass
        self.listener.close()
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1

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
        if payload == _RETRY_ACCEPT:
            self._retry_timer = None
            self._accept_paused = False
            self.accept()

    # -- accepting -------------------------------------------------------------

    def accept(self) -> None:
        """Accept every pending connection (the listener is edge-triggered)."""
        if self._accept_paused or self._closed:
            return
        listener = self.listener
        for _ in range(ACCEPT_BUDGET):
            try:
                accepted = listener.try_accept()
            except OSError as exc:
                code = exc.errno
                if code in _ACCEPT_SKIP:
                    continue
                if code in _OUT_OF_FDS:
                    shed = self._shed_pending(exc)
                    if shed is None:  # backlog empty: done until the next edge
                        return
                    if shed:
                        continue
                self._pause_accepting(exc)
                return
            if accepted is None:
                return
            stream, peer = accepted
            if self._shortage:
                self._end_shortage()
            if self.max_clients is not None and len(self.clients) >= self.max_clients:
                self.log.info(
                    "refused %s: already %d clients (--max-clients)",
                    format_addr(peer),
                    len(self.clients),
                )
                stream.close()
                continue
            self._admit(stream, peer)
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
            self.loop.register(stream, token, _READABLE, _READ_EDGE)
        except OSError as exc:
            self.log.warning("could not register %s: %s", conn.addr, describe_error(exc))
            stream.close()
            return
        clients.insert(conn)
        self.on_membership_change()
        self.log.info("client %d connected from %s (%d connected)", token, conn.addr, len(clients))
        self.on_admit(conn)

    def _open_spare(self) -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return -1

    def _shed_pending(self, exc: OSError) -> bool | None:
        """Out of descriptors: accept-and-close one pending connection through the spare.

        Returns ``True`` when one was shed (try the next), ``None`` when the
        backlog turned out empty, ``False`` when shedding is impossible.
        """
        if not self._shortage:
            self._shortage = True
            self._refused = 0
            self.log.warning(
                "accept: %s: refusing new connections until descriptors free up "
                "(%d clients connected)",
                describe_error(exc),
                len(self.clients),
            )
        if self._spare < 0:
            self._spare = self._open_spare()
            return False
        os.close(self._spare)
        self._spare = -1
        try:
            accepted = self.listener.try_accept()
        except OSError:
            accepted = None
            result: bool | None = False
        else:
            result = None
        if accepted is not None:
            accepted[0].close()
            self._refused += 1
            result = True
        self._spare = self._open_spare()
        return result

    def _end_shortage(self) -> None:
        self._shortage = False
        self._retry_delay = _RETRY_MIN
        self.log.warning(
            "descriptors available again: accepting new clients "
            "(%d connection%s refused during the shortage)",
            self._refused,
            "" if self._refused == 1 else "s",
        )

    def _pause_accepting(self, exc: OSError) -> None:
        if not self._shortage:
            self._shortage = True
            self._refused = 0
            self.log.warning(
                "accept: %s: pausing accepts, retrying in %.2f s",
                describe_error(exc),
                self._retry_delay,
            )
        self._accept_paused = True
        self._schedule_accept_retry(self._retry_delay)
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    def _schedule_accept_retry(self, delay: float) -> None:
        if self._retry_timer is not None:
            self.loop.clear_timeout(self._retry_timer)
        self._retry_timer = self.loop.timeout(_RETRY_ACCEPT, delay)

    # -- closing ---------------------------------------------------------------

    def drop(self, conn: Conn, reason: str, level: int = logging.INFO) -> None:
        """Close *conn* and forget it; log *reason*.  Idempotent."""
        if conn.closed:
            return
        conn.closed = True
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
        if self._accept_paused and not self._closed:
            # A descriptor just came free: try the backlog now, not at the timer.
            self._retry_delay = _RETRY_MIN
            self._schedule_accept_retry(0.0)

    # -- interest changes --------------------------------------------------------

    def want_write(self, conn: Conn, reading: bool = True) -> bool:
        """Register ``WRITABLE`` (plus ``READABLE`` if *reading*); ``False`` if *conn* was dropped."""
        try:
            self.loop.reregister(
                conn.stream, conn.token, _READ_WRITE if reading else _WRITABLE, _READ_EDGE
            )
        except OSError as exc:
            self.drop(conn, f"reregister failed: {describe_error(exc)}", logging.WARNING)
            return False
        conn.writing = True
        return True

    def want_read(self, conn: Conn) -> bool:
        """Register ``READABLE`` only; ``False`` if *conn* was dropped."""
        try:
            self.loop.reregister(conn.stream, conn.token, _READABLE, _READ_EDGE)
        except OSError as exc:
            self.drop(conn, f"reregister failed: {describe_error(exc)}", logging.WARNING)
            return False
        conn.writing = False
        return True

    # -- fairness ----------------------------------------------------------------

    def defer_read(self, conn: Conn) -> None:
        """*conn* used its read budget with data left: continue after the others."""
        self._unfinished.append(conn)
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

    # -- subclass hooks ------------------------------------------------------------

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == LISTENER:
            self.accept()

    def continue_read(self, conn: Conn) -> None:
        """Resume reading *conn* after :meth:`defer_read` (subclasses implement)."""

    def on_admit(self, conn: Conn) -> None:
        """Called once *conn* is registered and counted."""

    def on_membership_change(self) -> None:
        """Called after a connection is added or removed."""


def run_server(
    server_type: Callable[..., TcpServer],
    host: str,
    port: int,
    *,
    backend: str | None = None,
    backlog: int = 1024,
    on_listening: Callable[[TcpServer], None] | None = None,
    handle_signals: bool = True,
    **options: Any,
) -> None:
    """Bind, run *server_type* until a signal or ``stop()``, then close everything.

    :param on_listening: called with the server once it accepts connections
        (and, with *handle_signals*, once ``SIGINT``/``SIGTERM`` are caught).
    :param handle_signals: catch ``SIGINT`` and ``SIGTERM`` (main thread only).
    :param options: passed on to *server_type*.
    :raises OSError: resolving or binding the address failed.
    :raises ValueError: an unknown backend or a bad option.
    """
    addr = resolve_address(host, port)
    with (
        EventLoop(EventLoopConfig(backend=backend)) as loop,
        TcpListener.bind(addr, backlog=backlog) as listener,
    ):
        server = server_type(loop, listener, **options)
        signals = (signal_module.SIGINT, signal_module.SIGTERM) if handle_signals else ()
        try:
            for signum in signals:
                loop.add_signal(signum)
            if on_listening is not None:
                on_listening(server)
            loop.run(server)
        finally:
            server.close()
            for signum in signals:
                try:
                    loop.remove_signal(signum)
                except (ValueError, OSError):
                    pass
