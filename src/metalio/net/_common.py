"""Shared plumbing of ``metalio.net``: address checks, socket creation, the base classes.

Two kinds of code live here.  Address checks, socket creation and adoption
run once per object, before or while a descriptor is made.  The base classes
(``SocketSource``, ``StreamSource``, ``ListenerSource``, ``DatagramSource``)
hold the hot ``try_*`` methods every public type inherits; they are written
for the hot path: the descriptor sits in a slot, ``os`` functions are module
globals, nothing is allocated that the system call does not allocate, and
the only exception handled is the kernel's would-block, which is also the
only place the ``_rearm`` hook is looked at.

Addresses are checked in Python before any socket is created, so a bad
address raises ``TypeError``/``ValueError`` and leaks nothing.  Internet
addresses must be IP literals: metalio never resolves names, because
``getaddrinfo`` blocks (resolve first with ``socket.getaddrinfo``).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, ClassVar, Final, TypeAlias, TypeVar

from .._fdio import fd_try_read, fd_try_read_into, fd_try_write
from .._source import READ_LIMIT, RearmHook

__all__ = [
    "ABSTRACT_OK",
    "IOV_MAX",
    "POSIX_IO",
    "DatagramSource",
    "InetAddr",
    "ListenerSource",
    "SocketSource",
    "StreamSource",
    "UnixAddr",
    "check_inet_addr",
    "check_unix_path",
    "error_from_errno",
    "new_socket",
    "prepare_adopted",
]

InetAddr: TypeAlias = "tuple[str, int] | tuple[str, int, int, int]"
"""``(host, port)`` or, for IPv6 only, ``(host, port, flowinfo, scope_id)``."""

UnixAddr: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

POSIX_IO: Final = sys.platform != "win32"
"""On POSIX a socket's descriptor works with ``os.read``/``os.write``/``os.readv``
(no ``socket`` method dispatch or timeout bookkeeping); on Windows only the
``socket`` methods work."""

ABSTRACT_OK: Final = sys.platform.startswith("linux")
"""Linux (and Android) have the abstract Unix socket namespace."""

_SUN_PATH_MAX: Final = 108 if ABSTRACT_OK else 104


def _iov_max() -> int:
    try:
        return os.sysconf("SC_IOV_MAX") or 1024
    except (AttributeError, ValueError, OSError):  # pragma: no cover - Windows
        return 1024


IOV_MAX: Final = _iov_max()
"""The most buffers one ``writev``/``sendmsg`` takes; ``try_writev`` sends at most these."""

_NONBLOCK_FLAGS: Final = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_HAS_SOCK_NONBLOCK: Final = hasattr(socket, "SOCK_NONBLOCK")


def error_from_errno(err: int) -> OSError:
    """Build the ``OSError`` subclass Python uses for *err* (``ConnectionRefusedError`` ...)."""
    return OSError(err, os.strerror(err))


def _check_port(port: object) -> int:
    if type(port) is not int:
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        port = int(port)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return port


def _host_family(host: object) -> int:
    if not isinstance(host, str):
        raise TypeError(f"host must be a str IP address, not {type(host).__name__}")
    if ":" in host:
        literal = host.partition("%")[0]  # "fe80::1%eth0": the scope is the kernel's job
        family = socket.AF_INET6
    else:
        literal = host
        family = socket.AF_INET
    try:
        socket.inet_pton(family, literal)
    except (OSError, ValueError):
        if family == socket.AF_INET and host == "<broadcast>":
            return family
        raise ValueError(
            f"{host!r} is not an IP address literal "
            "(metalio does no name resolution: use socket.getaddrinfo first)"
        ) from None
    return family


def check_inet_addr(addr: object, family: int | None = None) -> tuple[int, InetAddr]:
    """Return ``(family, addr)`` for an IPv4 or IPv6 socket address.

    :param family: when given, the address must belong to it.
    :raises TypeError: *addr* is not a tuple, the host not a ``str``, a
        number not an ``int``.
    :raises ValueError: wrong length, a host that is not an IP literal, a
        port or flow label out of range, or the wrong family.
    """
    if not isinstance(addr, tuple):
        raise TypeError(f"address must be a (host, port) tuple, not {type(addr).__name__}")
    size = len(addr)
    if size == 2:
        host, port = addr
        fam = _host_family(host)
        out: InetAddr = (host, _check_port(port))
    elif size == 4:
        host, port, flowinfo, scope_id = addr
        fam = _host_family(host)
        if fam != socket.AF_INET6:
            raise ValueError("a 4-tuple address is IPv6 only: (host, port, flowinfo, scope_id)")
        for name, value, top in (
            ("flowinfo", flowinfo, 0xFFFFF),
            ("scope_id", scope_id, 2**32 - 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if not 0 <= value <= top:
                raise ValueError(f"{name} out of range: {value}")
        out = (host, _check_port(port), int(flowinfo), int(scope_id))
    else:
        raise ValueError(
            f"address must be (host, port) or (host, port, flowinfo, scope_id), got {addr!r}"
        )
    if family is not None and fam != family:
        want = "IPv4" if family == socket.AF_INET else "IPv6"
        raise ValueError(f"{addr!r} is not an {want} address, as this socket needs")
    return fam, out


def check_unix_path(path: object) -> bytes:
    """Return the raw ``sun_path`` bytes for a Unix socket address.

    ``str`` paths are encoded with the file-system encoding.  A leading NUL
    byte, or a leading ``"@"`` as shorthand (as ``ss`` and ``systemd`` print
    them), names the Linux abstract namespace; write ``"./@name"`` for a
    file whose name starts with ``@``.

    :raises TypeError: not ``str``, ``bytes`` or ``os.PathLike``.
    :raises ValueError: empty, a NUL inside a file-system path, too long for
        ``sun_path``, or an abstract name on a platform without them.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if isinstance(path, str):
        raw = os.fsencode(path)
    elif isinstance(path, bytes):
        raw = path
    else:
        raise TypeError(
            f"a Unix socket path must be str, bytes or os.PathLike, not {type(path).__name__}"
        )
    if not raw:
        raise ValueError("a Unix socket path must not be empty")
    if raw[0] == 0x40:  # "@name" -> "\0name"
        raw = b"\0" + raw[1:]
    if raw[0] == 0:
        if not ABSTRACT_OK:
            raise ValueError("abstract Unix socket names exist only on Linux")
        if len(raw) > _SUN_PATH_MAX:
            raise ValueError(f"abstract name longer than {_SUN_PATH_MAX - 1} bytes")
        return raw
    if 0 in raw:
        raise ValueError("a Unix socket path must not contain a NUL byte")
    if len(raw) >= _SUN_PATH_MAX:
        raise ValueError(f"Unix socket path longer than {_SUN_PATH_MAX - 1} bytes: {path!r}")
    return raw


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
_Socket: TypeAlias = socket.socket

# Module-level aliases: one cached global load on the hot path instead of
# ``os`` + attribute.
if sys.platform != "win32":
    _writev = os.writev
_MSG_PEEK: Final = socket.MSG_PEEK
_SHUT_HOWS: Final = frozenset({socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR})


def _empty_read(buffer: Any) -> int:
    """``0`` from ``readv``: end of stream, unless the caller gave no room at all."""
    if len(memoryview(buffer)) == 0:
        raise ValueError("try_read_into needs a non-empty buffer (0 would mean end of stream)")
    return 0


class SocketSource:
    """Base of every socket type: the descriptor, the ``_rearm`` slot, closing.

    Subclasses add no per-instance state (``__slots__ = ()``) except the
    listeners and UDP sockets, so an idle stream is three pointers plus the
    ``socket.socket`` it owns.
    """

    __slots__ = ("_fd", "_rearm", "socket")

    socket: _Socket
    """The underlying ``socket.socket``, for options and inspection.

    Close through the metalio object, never through this attribute: the
    object caches the descriptor number, and a number closed behind its back
    may be reused by the OS for another file.
    """
    _fd: int
    _rearm: RearmHook | None

    def __init__(self, sock: _Socket) -> None:
        """Wrap *sock*, which must already be non-blocking; prefer the class's constructors."""
        self.socket = sock
        self._fd = sock.fileno()
        self._rearm = None

    def fileno(self) -> int:
        """The descriptor number, ``-1`` once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`close` has run."""
        return self._fd < 0

    def close(self) -> None:
        """Close the socket.  Closing twice is harmless.

        Deregister from a ``Poll`` first where you can; a closed object is
        tolerated by every backend, but its entry stays until ``deregister``.
        """
        self._fd = -1
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
        try_read = fd_try_read
        try_read_into = fd_try_read_into
        try_write = fd_try_write

        def try_writev(self, buffers: Any) -> int | None:
            """Gather-write a sequence of bytes-like objects in one ``writev(2)`` call.

            On a connected stream ``writev`` is ``sendmsg`` without ancillary
            data or flags (the same kernel path); ``os.writev`` and
            ``socket.sendmsg`` measured alike here, and ``os.writev`` keeps
            streams and pipes on one code path.

            Returns the total number of bytes taken, which may end inside any
            buffer, or ``None`` if none.  At most ``IOV_MAX`` (normally 1024)
            buffers go in one call; the rest are for the next call.

            :raises TypeError: *buffers* is not a sequence of bytes-like objects.
            :raises OSError: a real failure, as :meth:`try_write`.
            """
            if len(buffers) > IOV_MAX:
                buffers = buffers[:IOV_MAX]
            try:
                return _writev(self._fd, buffers)
            except BlockingIOError:
                rearm = self._rearm
                if rearm is not None:
                    rearm(2)
                return None

    else:  # pragma: no cover - Windows

        def try_read(self, n: int = 65536) -> bytes | None:
            if not 0 < n <= READ_LIMIT:
                if n < 1:
                    raise ValueError("try_read needs n >= 1 (b'' would mean end of stream)")
                n = READ_LIMIT  # at most n bytes: a smaller read keeps the promise
            try:
                return self.socket.recv(n)
            except BlockingIOError:
                rearm = self._rearm
                if rearm is not None:
                    rearm(1)
                return None

        def try_read_into(self, buffer: Any) -> int | None:
            try:
                got = self.socket.recv_into(buffer)
            except BlockingIOError:
                rearm = self._rearm
                if rearm is not None:
                    rearm(1)
                return None
            return got or _empty_read(buffer)

        def try_write(self, data: Any) -> int | None:
            try:
                return self.socket.send(data)
            except BlockingIOError:
                rearm = self._rearm
                if rearm is not None:
                    rearm(2)
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
            if n < 1:
                raise ValueError("try_peek needs n >= 1 (b'' would mean end of stream)")
            n = READ_LIMIT  # at most n bytes: a smaller read keeps the promise
        try:
            return self.socket.recv(n, _MSG_PEEK)
        except BlockingIOError:
            rearm = self._rearm
            if rearm is not None:
                rearm(1)
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
                rearm = self._rearm
                if rearm is not None:
                    rearm(1)
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
        stream._fd = fd
        stream._rearm = None
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
            rearm = self._rearm
            if rearm is not None:
                rearm(2)
            return None

    def try_recv_from(self, n: int = 65536) -> tuple[bytes, Any] | None:
        """Receive one datagram of at most *n* bytes (the rest is discarded) and its sender.

        :raises ValueError: *n* < 1.
        :raises OSError: a real failure.
        """
        if not 0 < n <= READ_LIMIT:
            if n < 1:
                raise ValueError("try_recv_from needs n >= 1")
            n = READ_LIMIT  # at most n bytes: a smaller read keeps the promise
        try:
            return self.socket.recvfrom(n)
        except BlockingIOError:
            rearm = self._rearm
            if rearm is not None:
                rearm(1)
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
            rearm = self._rearm
            if rearm is not None:
                rearm(2)
            return None

    def try_recv(self, n: int = 65536) -> bytes | None:
        """Receive one datagram of at most *n* bytes (``b""`` is a zero-length datagram).

        :raises ValueError: *n* < 1.
        :raises OSError: a real failure.
        """
        if not 0 < n <= READ_LIMIT:
            if n < 1:
                raise ValueError("try_recv needs n >= 1")
            n = READ_LIMIT  # at most n bytes: a smaller read keeps the promise
        try:
            return self.socket.recv(n)
        except BlockingIOError:
            rearm = self._rearm
            if rearm is not None:
                rearm(1)
            return None

    def try_peek_from(self, n: int = 65536) -> tuple[bytes, Any] | None:
        """Like :meth:`try_recv_from` but leaves the datagram queued (``MSG_PEEK``).

        :raises ValueError: *n* < 1.
        :raises OSError: a real failure.
        """
        if not 0 < n <= READ_LIMIT:
            if n < 1:
                raise ValueError("try_peek_from needs n >= 1")
            n = READ_LIMIT  # at most n bytes: a smaller read keeps the promise
        try:
            return self.socket.recvfrom(n, _MSG_PEEK)
        except BlockingIOError:
            rearm = self._rearm
            if rearm is not None:
                rearm(1)
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
