"""Non-blocking Unix domain sockets: ``UnixListener``, ``UnixStream``, ``UnixDatagram``.

Theory of operation
-------------------
The same rules as TCP and UDP (``None`` = would block, ``b""``/``0`` = end
of stream on a stream socket, a real empty datagram on a datagram socket;
failures raise the ``OSError`` Python gives), on ``AF_UNIX`` sockets that
are non-blocking and close-on-exec from birth.

Addresses are ``str``, ``bytes`` or ``os.PathLike`` file-system paths, or
Linux abstract names, written with a leading NUL byte (``"\\0name"``,
``b"\\0name"``) or with ``"@name"`` as shorthand.  To bind a relative file
whose name really starts with ``@``, write ``"./@name"``.  ``local_addr()``
and the peer addresses come back as Python reports them: ``str`` for a
file path, ``bytes`` starting with NUL for an abstract name, ``""`` for an
unnamed socket (a ``pair()`` end, an unbound client) and ``None`` as the
sender address of a datagram from an unbound socket.

Facts of the platforms that the API exposes rather than hides:

* ``bind`` does **not** remove a file left behind at the path by an earlier
  run: it fails with ``OSError(EADDRINUSE)``.  Pass ``unlink_existing=True``
  to remove it first; only a *socket* file is removed, anything else still
  makes ``bind`` fail.  ``close()`` never removes the file either; the
  abstract namespace needs no cleanup.
* A non-blocking ``UnixStream.connect`` completes at once or fails at once:
  ``FileNotFoundError`` (no such path), ``ConnectionRefusedError`` (nobody
  listening) or, on Linux, ``BlockingIOError`` when the listener's backlog is
  full (the connect did not start; try again later).
* Writing to a stream whose peer closed raises ``BrokenPipeError`` (or
  ``ConnectionResetError`` if the peer closed with unread data); after a
  local ``shutdown(SHUT_WR)``, ``BrokenPipeError``.
* Sending to a datagram socket whose receive queue is full gives ``None``
  on Linux (``EAGAIN``); sending to a path nobody is bound to raises
  ``ConnectionRefusedError`` or ``FileNotFoundError``.
* A datagram socket has no end of stream.  After ``shutdown(SHUT_RD)`` Linux
  reports it readable with ``read_closed``, yet ``try_recv`` returns ``None``
  (``EAGAIN``) and the peer's sends raise ``BrokenPipeError``: treat
  ``read_closed`` as the signal to stop reading, or a LEVEL registration spins.
* Abstract names exist only on Linux; elsewhere they raise ``ValueError``.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import TYPE_CHECKING, Any, Final

from ._address import UnixAddr, check_unix_path
from ._sources import (
    DatagramSource,
    ListenerSource,
    StreamSource,
    error_from_errno,
    new_socket,
    prepare_adopted,
)

__all__ = ["UnixDatagram", "UnixListener", "UnixStream"]

_AF_UNIX: Final[int] = getattr(socket, "AF_UNIX", -1)
_IN_PROGRESS: Final = frozenset({errno.EINPROGRESS, errno.EINTR})


def _unlink_stale(raw: bytes) -> None:
    """Remove a socket file at *raw*; leave anything else for ``bind`` to refuse."""
    if raw[0] == 0:
        return
    try:
        mode = os.lstat(raw).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode):
        os.unlink(raw)


def _bound(kind: int, raw: bytes, unlink_existing: bool) -> socket.socket:
    if unlink_existing:
        _unlink_stale(raw)
    sock = new_socket(_AF_UNIX, kind)
    try:
        sock.bind(raw)
    except BaseException:
        sock.close()
        raise
    return sock


def _nonblocking_pair(kind: int) -> tuple[socket.socket, socket.socket]:
    flags = getattr(socket, "SOCK_NONBLOCK", 0)
    a, b = socket.socketpair(_AF_UNIX, kind | flags)
    if not flags:  # pragma: no cover - not Linux/BSD
        a.setblocking(False)
        b.setblocking(False)
    return a, b


class UnixStream(StreamSource):
    """A non-blocking Unix stream connection.

    ``try_read``, ``try_read_into``, ``try_write``, ``try_writev``,
    ``try_peek``, ``shutdown``, ``peer_addr`` are as on ``TcpStream``.
    """

    __slots__ = ()

    @classmethod
    def connect(cls, path: UnixAddr) -> UnixStream:
        """Connect to the listener at *path*.

        :raises TypeError, ValueError: a bad path (no socket is created).
        :raises FileNotFoundError: nothing at *path*.
        :raises ConnectionRefusedError: nobody listening there.
        :raises BlockingIOError: the listener's backlog is full (Linux).
        :raises OSError: another failure (``EACCES``, ...).
        """
        raw = check_unix_path(path)
        sock = new_socket(_AF_UNIX, socket.SOCK_STREAM)
        try:
            err = sock.connect_ex(raw)
        except BaseException:
            sock.close()
            raise
        if err and err not in _IN_PROGRESS:
            sock.close()
            raise error_from_errno(err)
        return cls(sock)

    @classmethod
    def pair(cls) -> tuple[UnixStream, UnixStream]:
        """Two connected, unnamed streams (``socketpair``).

        :raises OSError: ``EMFILE`` and the like.
        """
        a, b = _nonblocking_pair(socket.SOCK_STREAM)
        return cls(a), cls(b)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> UnixStream:
        """Take ownership of a Unix stream socket and make it non-blocking.

        :raises TypeError: *sock* is not a ``socket.socket``.
        :raises ValueError: it is closed, or not an ``AF_UNIX`` stream socket.
        """
        return cls(prepare_adopted(sock, (_AF_UNIX,), socket.SOCK_STREAM, "UnixStream"))


class UnixListener(ListenerSource):
    """A non-blocking listening Unix stream socket."""

    __slots__ = ()
    _stream_type = UnixStream

    @classmethod
    def bind(
        cls, path: UnixAddr, *, backlog: int = 1024, unlink_existing: bool = False
    ) -> UnixListener:
        """Bind to *path* and listen.

        :param unlink_existing: first remove a stale *socket* file at *path*
            (other files are never removed).
        :raises TypeError, ValueError: a bad path or backlog (no socket is created).
        :raises OSError: ``EADDRINUSE`` (the path exists), ``EACCES``, ...
        """
        raw = check_unix_path(path)
        if isinstance(backlog, bool) or not isinstance(backlog, int):
            raise TypeError(f"backlog must be an int, not {type(backlog).__name__}")
        if backlog < 0:
            raise ValueError(f"backlog must be >= 0, got {backlog}")
        sock = _bound(socket.SOCK_STREAM, raw, unlink_existing)
        try:
            sock.listen(min(backlog, 0x7FFFFFFF))  # a C int; the kernel caps it at somaxconn
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> UnixListener:
        """Take ownership of a bound, listening Unix stream socket and make it non-blocking.

        :raises TypeError: *sock* is not a ``socket.socket``.
        :raises ValueError: it is closed, or not an ``AF_UNIX`` stream socket.
        """
        return cls(prepare_adopted(sock, (_AF_UNIX,), socket.SOCK_STREAM, "UnixListener"))

    if TYPE_CHECKING:

        def try_accept(self) -> tuple[UnixStream, Any] | None:
            """Accept one pending connection: ``(stream, peer_addr)``, or ``None`` if none."""
    else:
        try_accept = ListenerSource._accept_stream


class UnixDatagram(DatagramSource):
    """A non-blocking Unix datagram socket.

    ``try_send_to``, ``try_recv_from``, ``try_send``, ``try_recv``,
    ``try_peek_from``, ``connect`` and ``peer_addr`` are documented on
    :class:`metalio.net._sources.DatagramSource`; addresses are paths.
    """

    __slots__ = ()

    def _check_addr(self, addr: object) -> bytes:
        return check_unix_path(addr)

    @classmethod
    def bind(cls, path: UnixAddr, *, unlink_existing: bool = False) -> UnixDatagram:
        """A datagram socket bound to *path*.

        :param unlink_existing: as for :meth:`UnixListener.bind`.
        :raises TypeError, ValueError: a bad path (no socket is created).
        :raises OSError: ``EADDRINUSE``, ``EACCES``, ...
        """
        return cls(_bound(socket.SOCK_DGRAM, check_unix_path(path), unlink_existing))

    @classmethod
    def unbound(cls) -> UnixDatagram:
        """A datagram socket with no address: it can send, and receive once connected to.

        :raises OSError: ``EMFILE`` and the like.
        """
        return cls(new_socket(_AF_UNIX, socket.SOCK_DGRAM))

    @classmethod
    def pair(cls) -> tuple[UnixDatagram, UnixDatagram]:
        """Two unnamed datagram sockets connected to each other.

        :raises OSError: ``EMFILE`` and the like.
        """
        a, b = _nonblocking_pair(socket.SOCK_DGRAM)
        return cls(a), cls(b)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> UnixDatagram:
        """Take ownership of a Unix datagram socket and make it non-blocking.

        :raises TypeError: *sock* is not a ``socket.socket``.
        :raises ValueError: it is closed, or not an ``AF_UNIX`` datagram socket.
        """
        return cls(prepare_adopted(sock, (_AF_UNIX,), socket.SOCK_DGRAM, "UnixDatagram"))
