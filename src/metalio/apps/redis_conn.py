"""One connection to Redis on a metalio ``EventLoop``: its socket, buffers and handshake.

:class:`Connection` owns a non-blocking ``TcpStream`` to Redis, registered
EDGE under one token, its outgoing buffer (written with ``try_*`` until
``None``), a ``hiredis.Reader`` for the replies, and its handshake: the
commands sent first and the replies they must get.  Any failure raises
:class:`ConnectionLost` with a reason for the log.  What to publish, when to
reconnect and what a message means are :mod:`metalio.apps.relay`'s.
"""

from __future__ import annotations

import errno
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from metalio import Interest, PollOpt
from metalio.net import TcpStream

from .resp import UP, ConnectionLost, ProtocolError, Reader, check_handshake, describe

if TYPE_CHECKING:
    from metalio import EventLoop

__all__ = ["Connection"]

_READABLE_WRITABLE: Final = Interest.READABLE | Interest.WRITABLE
# A Redis host that vanishes without a reset is noticed in about 25 s when idle
# (keep-alive) and 30 s with unacknowledged writes (TCP_USER_TIMEOUT, Linux).
_KEEPALIVE: Final = tuple(
    (socket.IPPROTO_TCP, getattr(socket, name), value)
    for name, value in (
        ("TCP_KEEPIDLE", 10),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", 30_000),
    )
    if hasattr(socket, name)
)


class Connection:
    """One connection to Redis on an ``EventLoop``, registered ``EDGE`` under *token*.

    ``open`` starts it with the handshake *steps*; on its events the owner
    calls ``connected`` (while ``connecting``), ``write``, then ``fill`` and
    ``get`` in turn.  Every method raises :class:`ConnectionLost` when the
    connection is no good; the owner then calls ``close``.
    """

    __slots__ = ("connecting", "name", "out", "reader", "steps", "stream", "token", "up")

    def __init__(self, name: str, token: int) -> None:
        self.name = name
        self.token = token
        self.stream: TcpStream | None = None
        self.reader: Reader | None = None
        self.out = bytearray()
        """Bytes not yet written (the owner may append while ``up``)."""
        self.steps: deque[tuple[str, bytes]] = deque()
        self.connecting = False
        self.up = False

    def open(
        self,
        loop: EventLoop,
        address: tuple[str, int],
        reader: Reader,
        steps: list[tuple[str, bytes]],
    ) -> None:
        """Start connecting; *steps* are ``(name, command)`` pairs sent once connected.

        :raises ConnectionLost: the kernel refused at once.
        :raises OSError: the socket could not be set up or registered (nothing is left open).
        """
        try:
            stream = TcpStream.connect(address)
        except OSError as exc:
            raise ConnectionLost(f"cannot connect: {describe(exc)}") from None
        try:
            sock = stream.socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for level, option, value in _KEEPALIVE:
                sock.setsockopt(level, option, value)
            stream.set_nodelay(True)
            loop.register(stream, self.token, _READABLE_WRITABLE, PollOpt.EDGE)
        except BaseException:
            stream.close()
            raise
        self.stream, self.reader, self.connecting, self.up = stream, reader, True, False
        self.out.clear()
        self.steps = deque(steps)

    def close(self, loop: EventLoop) -> None:
        """Deregister and close; forget buffered bytes.  Idempotent."""
        stream, self.stream, self.reader = self.stream, None, None
        self.out.clear()
        self.connecting = self.up = False
        if stream is not None:
            try:
                loop.deregister(stream)
            except (OSError, ValueError):
                pass  # the loop is closed or the source already gone
            stream.close()

    def connected(self) -> bool:
        """After an event while connecting: ``True`` once connected (the handshake is sent).

        :raises ConnectionLost: the connect failed.
        """
        stream = self.stream
        assert stream is not None
        error = stream.take_error()
        if error is None:
            try:
                stream.peer_addr()
            except OSError as exc:
                if exc.errno == errno.ENOTCONN:
                    return False  # a spurious event: still connecting
                error = exc
        if error is not None:
            raise ConnectionLost(f"cannot connect: {describe(error)}")
        self.connecting = False
        for _, cmd in self.steps:
            self.out += cmd
        self.write()
        return True

    def write(self) -> None:
        """Write what the kernel takes of ``out``.

        :raises ConnectionLost: the write failed.
        """
        stream = self.stream
        assert stream is not None
        out = self.out
        try:
            while out:
                n = stream.try_write(out)
                if n is None:
                    return
                del out[:n]  # O(1) at the front of a bytearray
        except OSError as exc:
            raise ConnectionLost(f"{self.name} connection: {describe(exc)}") from None

    def fill(self, buf: bytearray) -> bool:
        """One read into the reader; ``False`` when there was nothing to read.

        :raises ConnectionLost: end of stream or a read error.
        """
        stream, reader = self.stream, self.reader
        assert stream is not None and reader is not None
        try:
            n = stream.try_read_into(buf)
        except OSError as exc:
            raise ConnectionLost(f"{self.name} connection: {describe(exc)}") from None
        if n is None:
            return False
        if n == 0:
            hint = "" if self.up else " during the handshake (not a Redis server?)"
            raise ConnectionLost(f"{self.name} connection closed by the server{hint}")
        reader.feed(buf, 0, n)
        return True

    def get(self) -> Any:
        """The next complete reply after the handshake, :data:`UP` once, or ``False``.

        :raises ConnectionLost: the bytes are not RESP, or a handshake reply is wrong.
        """
        reader = self.reader
        assert reader is not None
        while True:
            try:
                reply = reader.gets()
            except ProtocolError as exc:
                raise ConnectionLost(f"not a Redis server? {self.name} connection: {exc}") from None
            if reply is False or not self.steps:
                return reply
            step = self.steps.popleft()[0]
            check_handshake(step, reply)
            if not self.steps:
                self.up = True
                return UP
