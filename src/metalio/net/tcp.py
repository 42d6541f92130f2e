"""Non-blocking TCP: ``TcpListener`` and ``TcpStream``.

Theory of operation
-------------------
Every socket is created non-blocking and close-on-exec (one ``socket()``
call with ``SOCK_NONBLOCK | SOCK_CLOEXEC`` on Linux), so no call here ever
waits.  Each ``try_*`` call gives one of three answers, as mio 0.5's
``TryRead``/``TryWrite`` did:

* ``None`` -- the kernel said "would block": wait for readiness and retry.
  This is the only path that costs an exception inside metalio (the
  kernel's ``EAGAIN``), and the only one that calls the ``_rearm`` hook the
  poll/select backends use to emulate edge triggering;
* ``b""`` or ``0`` -- end of stream: the peer shut down its writing side;
* anything else is data or a byte count.

Real failures raise the ``OSError`` Python builds from the errno
(``ConnectionResetError``, ``BrokenPipeError``, ...), never ``None``.  On
POSIX the stream calls go straight to ``os.read``/``os.readv``/``os.write``/
``os.writev`` on the descriptor cached in a slot (no ``socket`` method
dispatch or timeout bookkeeping; the perf anchors found them cheaper inside a
full server loop, ``bench/bench_sockets.py`` finds them at least as cheap
per call); on Windows, where those do not work on sockets, the ``socket``
methods.  The wrapper's cost per call over the bare call, and an idle
accepted stream's memory with its registration and slab entry, are in
``bench/README.md``.

Facts of the platforms that the API exposes rather than hides:

* ``TcpStream.connect`` returns at once.  Completion is writable readiness,
  after which ``take_error()`` gives the result (``None`` or e.g.
  ``ConnectionRefusedError``).  A refusal the kernel already knows during
  ``connect()`` (Linux loopback sometimes does) raises
  ``ConnectionRefusedError`` at once instead; programs must handle both.
* A peer reset (``SO_LINGER`` 0 then close) shows up as
  ``ConnectionResetError`` from the next read, or as ``b""`` when the reset
  was already consumed (for example by an earlier failed write); never data.
* After a local ``shutdown(SHUT_WR)`` Linux reports no ``write_closed``
  readiness (mio notes the same); after ``shutdown(SHUT_RD)`` a read gives
  ``b""``; after ``shutdown(SHUT_RDWR)`` a write raises ``BrokenPipeError``.
* Python ignores ``SIGPIPE`` at start-up, so writing to a closed connection
  raises ``BrokenPipeError``; a program that restores ``SIG_DFL`` would be
  killed instead (this is true of the ``socket`` methods too).
* ``bind`` sets ``SO_REUSEADDR`` (except on Windows, where it means
  something unsafe) so a restarted server can bind at once; binding an
  address another socket listens on still fails with ``EADDRINUSE``.
* Addresses are IP literals only (``"127.0.0.1"``, ``"::1"``,
  ``"fe80::1%eth0"``); no name is ever resolved, since resolution blocks.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any, Final

from ._address import InetAddr, check_inet_addr
from ._sources import ListenerSource, StreamSource, error_from_errno, new_socket, prepare_adopted

__all__ = ["TcpListener", "TcpStream"]

_INET: Final = (socket.AF_INET, socket.AF_INET6)
_IN_PROGRESS: Final = frozenset(
    {errno.EINPROGRESS, errno.EINTR} | ({errno.EWOULDBLOCK} if os.name == "nt" else set())
)


class TcpStream(StreamSource):
    """A non-blocking TCP connection.

    Made by :meth:`connect`, :meth:`TcpListener.try_accept` or
    :meth:`from_socket`.  ``try_read``, ``try_read_into``, ``try_write``,
    ``try_writev`` and ``try_peek`` follow the module's ``None``/``b""``
    rule; see :class:`metalio.net._sources.StreamSource` for their contracts.
    """

    __slots__ = ()

    @classmethod
    def connect(cls, addr: InetAddr) -> TcpStream:
        """Start connecting to *addr* and return at once.

        Register the stream for ``WRITABLE``; when it is writable, call
        :meth:`take_error` to learn whether the connect succeeded.

        :raises TypeError, ValueError: a bad address (no socket is created).
        :raises ConnectionRefusedError: the kernel refused at once (possible
            on loopback); otherwise refusal comes through ``take_error()``.
        :raises OSError: another immediate failure (``ENETUNREACH``,
            ``EADDRNOTAVAIL``, ``EAGAIN`` when no local port is free, ...).
        """
        family, checked = check_inet_addr(addr)
        sock = new_socket(family, socket.SOCK_STREAM)
        try:
            err = sock.connect_ex(checked)
        except BaseException:
            sock.close()
            raise
        if err and err not in _IN_PROGRESS:
            sock.close()
            raise error_from_errno(err)
        return cls(sock)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> TcpStream:
        """Take ownership of a connected (or connecting) TCP socket and make it non-blocking.

        :raises TypeError: *sock* is not a ``socket.socket``.
        :raises ValueError: it is closed, or not an IPv4/IPv6 stream socket.
        """
        return cls(prepare_adopted(sock, _INET, socket.SOCK_STREAM, "TcpStream"))

    def set_nodelay(self, flag: bool) -> None:
        """Turn Nagle's algorithm off (``True``) or on (``TCP_NODELAY``).

        :raises OSError: ``EBADF`` once closed.
        """
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1 if flag else 0)

    def nodelay(self) -> bool:
        """Whether ``TCP_NODELAY`` is set.

        :raises OSError: ``EBADF`` once closed.
        """
        return bool(self.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


class TcpListener(ListenerSource):
    """A non-blocking listening TCP socket."""

    __slots__ = ()
    _stream_type = TcpStream

    @classmethod
    def bind(cls, addr: InetAddr, *, backlog: int = 1024, reuse_port: bool = False) -> TcpListener:
        """Bind to *addr* (port ``0`` picks a free one) and listen.

        ``SO_REUSEADDR`` is set (not on Windows); ``reuse_port=True`` also
        sets ``SO_REUSEPORT`` so several listeners can share the address.

        :raises TypeError, ValueError: a bad address or backlog, or
            ``reuse_port`` where the platform lacks ``SO_REUSEPORT`` (all
            checked before a socket exists).
        :raises OSError: ``bind``/``listen`` failed (``EADDRINUSE``, ...).
        """
        family, checked = check_inet_addr(addr)
        if isinstance(backlog, bool) or not isinstance(backlog, int):
            raise TypeError(f"backlog must be an int, not {type(backlog).__name__}")
        if backlog < 0:
            raise ValueError(f"backlog must be >= 0, got {backlog}")
        if reuse_port and not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("SO_REUSEPORT is not available on this platform")
        sock = new_socket(family, socket.SOCK_STREAM)
        try:
            if os.name != "nt":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(checked)
            sock.listen(min(backlog, 0x7FFFFFFF))  # a C int; the kernel caps it at somaxconn
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> TcpListener:
        """Take ownership of a bound, listening TCP socket and make it non-blocking.

        :raises TypeError: *sock* is not a ``socket.socket``.
        :raises ValueError: it is closed, or not an IPv4/IPv6 stream socket.
        """
        return cls(prepare_adopted(sock, _INET, socket.SOCK_STREAM, "TcpListener"))

    if TYPE_CHECKING:

        def try_accept(self) -> tuple[TcpStream, Any] | None:
            """Accept one pending connection: ``(stream, peer_addr)``, or ``None`` if none."""
    else:
        try_accept = ListenerSource._accept_stream
