"""The socket base classes of ``metalio.net``, and making the sockets they wrap.

``SocketSource`` holds what every socket type has (the descriptor and the
funnel state of ``metalio._fdio`` in slots, closing, addresses, errors);
``StreamSource``, ``ListenerSource`` and ``DatagramSource`` hold the
``try_*`` calls the public types inherit.  Every one of those calls goes
through the funnel: would-block is handed to ``metalio._fdio.would_block``,
and the stream calls are the funnel's (``metalio._fdio.stream_try_*``).  Sockets
are created non-blocking and close-on-exec, in one system call where the
OS allows it.

What it must not know: addresses (``metalio.net._address`` checks them
before a socket exists) and registrations.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, ClassVar, Final, TypeVar

from .._fdio import (
    IOV_MAX,
    READ,
    WRITE,
    FdSource,
    init_state,
    read_size,
    stream_try_read,
    stream_try_read_into,
    stream_try_write,
    stream_try_writev,
    would_block,
)
from .._source import READ_LIMIT

__all__ = [
    "IOV_MAX",
    "POSIX_IO",
    "DatagramSource",
    "ListenerSource",
    "SocketSource",
    "StreamSource",
    "error_from_errno",
    "new_socket",
    "prepare_adopted",
]

POSIX_IO: Final = sys.platform != "win32"
"""On POSIX a socket's descriptor works with ``os.read``/``os.write``/``os.readv``
(no ``socket`` method dispatch or timeout bookkeeping); on Windows only the
``socket`` methods work."""

_NONBLOCK_FLAGS: Final = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_HAS_SOCK_NONBLOCK: Final = hasattr(socket, "SOCK_NONBLOCK")


def error_from_errno(err: int) -> OSError:
    """Build the ``OSError`` subclass Python uses for *err* (``ConnectionRefusedError`` ...)."""
    return OSError(err, os.strerror(err))


def new_socket(family: int, kind: int) -> socket.socket:
    """A new close-on-exec, non-blocking socket (one system call where the OS allows it)."""
    if _HAS_SOCK_NONBLOCK:
        return socket.socket(family, kind | _NONBLOCK_FLAGS)
    sock = socket.socket(family, kind)  # pragma: no cover - not Linux/BSD
    sock.setblocking(False)  # pragma: no cover
    return sock  # pragma: no cover


def prepare_adopted(sock: object, families: tuple[int, ...], kind: int, what: str) -> socket.socket:
    """Check *sock* for ``from_socket`` and switch it to non-blocking mode.

    :raises TypeError: not a ``socket.socket``.
    :raises ValueError: closed, or the wrong family or type for *what*.
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"{what}.from_socket needs a socket.socket, not {type(sock).__name__}")
    if sock.fileno() < 0:
        raise ValueError(f"{what}.from_socket: the socket is closed")
    if sock.family not in families or sock.type != kind:
        raise ValueError(
            f"{what}.from_socket: wrong socket family/type {sock.family!r}/{sock.type!r}"
        )
    sock.setblocking(False)
    return sock


_S = TypeVar("_S", bound="SocketSource")
_Socket = socket.socket
_MSG_PEEK: Final = socket.MSG_PEEK
_SHUT_HOWS: Final = frozenset({socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR})


def _empty_read(buffer: Any) -> int:
    """``0`` from ``readv``: end of stream, unless the caller gave no room at all."""
    if len(memoryview(buffer)) == 0:
        raise ValueError("try_read_into needs a non-empty buffer (0 would mean end of stream)")
    return 0


class SocketSource(FdSource):
    """Base of every socket type: the descriptor, the ``_rearm`` slot, closing.

    Subclasses add no per-instance state (``__slots__ = ()``) except the
    listeners and UDP sockets, so an idle stream is its funnel state
    (``metalio._fdio.FdState``) plus the ``socket.socket`` it owns.
    """

    __slots__ = ("socket",)

    socket: _Socket
    """The underlying ``socket.socket``, for options and inspection.

    Close through the metalio object, never through this attribute: the
    object caches the descriptor number, and a number closed behind its back
    may be reused by the OS for another file.
    """

    def __init__(self, sock: _Socket) -> None:
        """Wrap *sock*, which must already be non-blocking; prefer the class's constructors."""
        self.socket = sock
        init_state(self, sock.fileno())

    def close(self) -> None:
        """Close the socket.  Closing twice is harmless.

        Deregister from a ``Poll`` first where you can; a closed object is
        tolerated by every backend, but its entry stays until ``deregister``.
        """
        self._fd = -1
        self._epoch = None  # every later call reaches the kernel and fails
        self.socket.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def local_addr(self) -> Any:
        """The socket's own address (``getsockname()``).

        :raises OSError: as ``getsockname`` does (``EBADF`` once closed).
        """
        return self.socket.getsockname()

    def take_error(self) -> OSError | None:
        """Read and clear ``SO_ERROR``: the pending error as an ``OSError``, or ``None``.

        After a non-blocking connect this is the connect's result.

        :raises OSError: ``EBADF`` once closed.
        """
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return error_from_errno(err) if err else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"

    def shutdown(self, how: int) -> None:
        """Shut down reading (``socket.SHUT_RD``), writing (``SHUT_WR``) or both (``SHUT_RDWR``).

        :raises ValueError: *how* is not one of the three.
        :raises OSError: ``ENOTCONN`` if not connected, ``EBADF`` once closed.
        """
        if how not in _SHUT_HOWS:
            raise ValueError(f"how must be SHUT_RD, SHUT_WR or SHUT_RDWR, not {how!r}")
        self.socket.shutdown(how)


class StreamSource(SocketSource):
    """The ``try_*`` calls shared by ``TcpStream`` and ``UnixStream``.

    POSIX: ``os.read``/``os.readv``/``os.write``/``os.writev`` on the cached
    descriptor (no ``socket`` method dispatch, no timeout bookkeeping).
    Windows: the ``socket`` methods, the only ones that work there.
    """

    __slots__ = ()

    if sys.platform != "win32":  # POSIX_IO, spelled so that mypy follows it
        try_read = stream_try_read
        try_read_into = stream_try_read_into
        try_write = stream_try_write
        # On a connected stream writev is sendmsg without ancillary data or
        # flags (the same kernel path), and it keeps streams and pipes on one
        # code path.
        try_writev = stream_try_writev

    else:  # pragma: no cover - Windows

        def try_read(self, n: int = 65536) -> bytes | None:
            if not 0 < n <= READ_LIMIT:
                n = read_size(n, "try_read")
            try:
                return self.socket.recv(n)
            except BlockingIOError:
                would_block(self, READ)
                return None

        def try_read_into(self, buffer: Any) -> int | None:
            try:
                got = self.socket.recv_into(buffer)
            except BlockingIOError:
                would_block(self, READ)
                return None
            return got or _empty_read(buffer)

        def try_write(self, data: Any) -> int | None:
            try:
                return self.socket.send(data)
            except BlockingIOError:
                would_block(self, WRITE)
                return None

        def try_writev(self, buffers: Any) -> int | None:
            # No sendmsg/writev for sockets on Windows: one send of the joined bytes.
            if len(buffers) > IOV_MAX:
                buffers = buffers[:IOV_MAX]
            return self.try_write(b"".join(buffers))

    def try_peek(self, n: int = 65536) -> bytes | None:
        """Like :meth:`try_read` but leaves the data queued (``MSG_PEEK``).

        A successful peek leaves the readiness in place; a ``None`` re-arms
        like a read.

        :raises ValueError: *n* < 1.
        :raises OSError: a real failure.
        """
        if not 0 < n <= READ_LIMIT:
            n = read_size(n, "try_peek")
        try:
            return self.socket.recv(n, _MSG_PEEK)
        except BlockingIOError:
            would_block(self, READ)
            return None

    def peer_addr(self) -> Any:
        """The peer's address (``getpeername()``).

        :raises OSError: ``ENOTCONN`` while not (yet) connected, ``EBADF`` once closed.
        """
        return self.socket.getpeername()


class ListenerSource(SocketSource):
    """``try_accept`` shared by ``TcpListener`` and ``UnixListener``."""

    __slots__ = ("_family",)

    _family: int
    _stream_type: ClassVar[type[StreamSource]]

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._family = int(sock.family)

    def _accept_stream(self) -> tuple[StreamSource, Any] | None:
        """Accept one pending connection: ``(stream, peer_addr)``, or ``None`` if none is pending.

        The new stream is non-blocking and close-on-exec.  With an EDGE
        registration, accept until ``None`` to be sure of the next event.

        A connection the client aborted before it was accepted
        (``ECONNABORTED``) is skipped, not raised.

        :raises OSError: a real failure (``EMFILE`` when out of descriptors,
            ``EBADF`` once closed, ...).  After ``EMFILE`` the connection
            stays queued and the listener stays readable.
        """
        while True:
            try:
                fd, addr = self.socket._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                would_block(self, READ)
                return None
            except ConnectionAbortedError:
                # The client gave up while queued (BSD reports it; Linux hands
                # the socket over instead): not the listener's failure, and
                # raising mid-drain would strand an EDGE registration.
                continue
            break
        # Passing family/type/proto spares CPython the getsockopt calls; the
        # fd is close-on-exec already (accept4 with SOCK_CLOEXEC on Linux).
        sock = socket.socket(self._family, socket.SOCK_STREAM, 0, fd)
        sock.setblocking(False)  # one ioctl(FIONBIO); Linux does not inherit O_NONBLOCK
        stream = self._stream_type.__new__(self._stream_type)
        stream.socket = sock
        init_state(stream, fd)
        return stream, addr


class DatagramSource(SocketSource):
    """The datagram ``try_*`` calls shared by ``UdpSocket`` and ``UnixDatagram``.

    ``b""`` is a real zero-length datagram here, never end of stream.
    """

    __slots__ = ()

    def _check_addr(self, addr: object) -> Any:
        raise NotImplementedError  # pragma: no cover

    def try_send_to(self, data: Any, addr: Any) -> int | None:
        """Send one datagram to *addr*: its length, or ``None`` if the buffer is full.

        :raises TypeError, ValueError: a bad address (checked first).
        :raises OSError: a real failure (``EMSGSIZE``, ``EISCONN`` on some
            platforms for a connected socket, ...).
        """
        addr = self._check_addr(addr)
        try:
            return self.socket.sendto(data, addr)
        except BlockingIOError:
            would_block(self, WRITE)
            return None

    def try_recv_from(self, n: int = 65536) -> tuple[bytes, Any] | None:
        """Receive one datagram of at most *n* bytes (the rest is discarded) and its sender.

        :raises ValueError: *n* < 1.
        :raises OSError: a real failure.
        """
        if not 0 < n <= READ_LIMIT:
            n = read_size(n, "try_recv_from")
        try:
            return self.socket.recvfrom(n)
        except BlockingIOError:
            would_block(self, READ)
            return None

    def try_send(self, data: Any) -> int | None:
        """Send one datagram to the connected peer.

        :raises OSError: ``EDESTADDRREQ``/``ENOTCONN`` when not connected, or
            another real failure (``ConnectionRefusedError`` after an ICMP
            port-unreachable for UDP).
        """
        try:
            return self.socket.send(data)
        except BlockingIOError:
            would_block(self, WRITE)
            return None

    def try_recv(self, n: int = 65536) -> bytes | None:
        """Receive one datagram of at most *n* bytes (``b""`` is a zero-length datagram).

        :raises ValueError: *n* < 1.
        :raises OSError: a real failure.
        """
        if not 0 < n <= READ_LIMIT:
            n = read_size(n, "try_recv")
        try:
            return self.socket.recv(n)
        except BlockingIOError:
            would_block(self, READ)
            return None

    def try_peek_from(self, n: int = 65536) -> tuple[bytes, Any] | None:
        """Like :meth:`try_recv_from` but leaves the datagram queued (``MSG_PEEK``).

        :raises ValueError: *n* < 1.
        :raises OSError: a real failure.
        """
        if not 0 < n <= READ_LIMIT:
            n = read_size(n, "try_peek_from")
        try:
            return self.socket.recvfrom(n, _MSG_PEEK)
        except BlockingIOError:
            would_block(self, READ)
            return None

    def connect(self, addr: Any) -> None:
        """Fix the peer: ``try_send`` goes there and only its datagrams are received.

        Connecting again changes the peer.

        :raises TypeError, ValueError: a bad address (checked first).
        :raises OSError: as ``connect`` does.
        """
        self.socket.connect(self._check_addr(addr))

    def peer_addr(self) -> Any:
        """The connected peer's address.

        :raises OSError: ``ENOTCONN`` when not connected, ``EBADF`` once closed.
        """
        return self.socket.getpeername()
