"""Non-blocking UDP: ``UdpSocket``.

Theory of operation
-------------------
The socket is non-blocking and close-on-exec from birth.  ``None`` from a
``try_*`` call means "would block" (an empty receive queue, a full send
buffer); there is no end of stream on a datagram socket, so ``b""`` is a
real zero-length datagram.  Failures raise the ``OSError`` Python gives.

Facts of the platforms that the API exposes rather than hides:

* A connected socket receives only from its peer; datagrams from other
  addresses are dropped by the kernel.  Connecting again switches peers.
* After an ICMP port-unreachable, a *connected* socket's next receive or
  send raises ``ConnectionRefusedError`` (Linux; unconnected sockets do
  not see it).
* ``try_send_to`` on a connected socket works on Linux and Windows but
  raises ``OSError(EISCONN)`` on the BSDs and macOS.
* ``try_send`` on an unconnected socket raises ``OSError`` with
  ``EDESTADDRREQ``.
* A datagram larger than *n* is truncated to *n* bytes; the rest is lost.
* Addresses are IP literals of the socket's own family; no name is ever
  resolved.  ``"<broadcast>"`` is accepted for IPv4, as Python does.
"""

from __future__ import annotations

import socket
from typing import Final

from ._address import InetAddr, check_inet_addr
from ._sources import DatagramSource, new_socket, prepare_adopted

__all__ = ["UdpSocket"]

_INET: Final = (socket.AF_INET, socket.AF_INET6)


def _ipv4_bytes(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str IPv4 address, not {type(value).__name__}")
    try:
        return socket.inet_pton(socket.AF_INET, value)
    except OSError:
        raise ValueError(f"{what} {value!r} is not an IPv4 address literal") from None


def _membership(group: object, interface: object) -> bytes:
    raw_group = _ipv4_bytes(group, "group")
    if not 224 <= raw_group[0] <= 239:
        raise ValueError(f"{group!r} is not an IPv4 multicast address")
    return raw_group + _ipv4_bytes(interface, "interface")


class UdpSocket(DatagramSource):
    """A non-blocking UDP socket, IPv4 or IPv6 (fixed by the address it is bound to).

    ``try_send_to``, ``try_recv_from``, ``try_send``, ``try_recv``,
    ``try_peek_from``, ``connect`` and ``peer_addr`` are documented on
    :class:`metalio.net._sources.DatagramSource`.
    """

    __slots__ = ("_family",)

    _family: int

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._family = int(sock.family)

    def _check_addr(self, addr: object) -> InetAddr:
        return check_inet_addr(addr, self._family)[1]

    @classmethod
    def bind(cls, addr: InetAddr) -> UdpSocket:
        """Bind a new UDP socket to *addr*; port ``0`` picks a free one.

        :raises TypeError, ValueError: a bad address (no socket is created).
        :raises OSError: ``bind`` failed (``EADDRINUSE``, ``EADDRNOTAVAIL``, ...).
        """
        family, checked = check_inet_addr(addr)
        sock = new_socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind(checked)
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    @classmethod
    def from_socket(cls, sock: socket.socket) -> UdpSocket:
        """Take ownership of an IPv4/IPv6 datagram socket and make it non-blocking.

        :raises TypeError: *sock* is not a ``socket.socket``.
        :raises ValueError: it is closed, or not an IPv4/IPv6 datagram socket.
        """
        return cls(prepare_adopted(sock, _INET, socket.SOCK_DGRAM, "UdpSocket"))

    def set_broadcast(self, flag: bool) -> None:
        """Allow (``True``) or forbid sending to broadcast addresses (``SO_BROADCAST``).

        :raises OSError: ``EBADF`` once closed.
        """
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1 if flag else 0)

    def broadcast(self) -> bool:
        """Whether ``SO_BROADCAST`` is set.

        :raises OSError: ``EBADF`` once closed.
        """
        return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST))

    def join_multicast_v4(self, group: str, interface: str) -> None:
        """Join the IPv4 multicast *group* on the interface with address *interface*.

        ``"0.0.0.0"`` lets the kernel choose the interface (it needs a
        multicast route).

        :raises TypeError, ValueError: not IPv4 literals, or *group* not in
            224.0.0.0/4.
        :raises OSError: the kernel refused (``ENODEV`` without a route,
            ``EADDRINUSE`` if already joined, ...).
        """
        self.socket.setsockopt(
            socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, _membership(group, interface)
        )

    def leave_multicast_v4(self, group: str, interface: str) -> None:
        """Leave a group joined with :meth:`join_multicast_v4`.

        :raises TypeError, ValueError: as :meth:`join_multicast_v4`.
        :raises OSError: ``EADDRNOTAVAIL`` if not a member, ...
        """
        self.socket.setsockopt(
            socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, _membership(group, interface)
        )

    def set_multicast_loop_v4(self, flag: bool) -> None:
        """Whether this host's own multicast datagrams are looped back (``IP_MULTICAST_LOOP``).

        :raises OSError: ``EBADF`` once closed.
        """
        self.socket.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1 if flag else 0)
