"""Non-blocking sockets whose ``try_*`` calls return ``None`` instead of blocking.

``None`` means "would block: wait for readiness"; ``b""``/``0`` means end of
stream (for datagram sockets ``b""`` is a real zero-length datagram); real
failures raise the ``OSError`` Python gives.  Every type is non-blocking and
close-on-exec from birth and can be registered with a ``metalio.Poll``.
"""

from __future__ import annotations

from .tcp import TcpListener, TcpStream
from .udp import UdpSocket
from .unix import UnixDatagram, UnixListener, UnixStream

__all__ = [
    "TcpListener",
    "TcpStream",
    "UdpSocket",
    "UnixDatagram",
    "UnixListener",
    "UnixStream",
]
