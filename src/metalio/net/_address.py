"""Socket addresses for ``metalio.net``: checked in Python before any socket exists.

A bad address raises ``TypeError``/``ValueError`` and leaks nothing.
Internet addresses must be IP literals: metalio never resolves names,
because ``getaddrinfo`` blocks (resolve first with ``socket.getaddrinfo``).
Unix addresses are file-system paths or Linux abstract names.

What it must not know: sockets themselves.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Final, TypeAlias

__all__ = ["ABSTRACT_OK", "InetAddr", "UnixAddr", "check_inet_addr", "check_unix_path"]

InetAddr: TypeAlias = "tuple[str, int] | tuple[str, int, int, int]"
"""``(host, port)`` or, for IPv6 only, ``(host, port, flowinfo, scope_id)``."""

UnixAddr: TypeAlias = "str | bytes | os.PathLike[str] | os.PathLike[bytes]"

ABSTRACT_OK: Final = sys.platform.startswith("linux")
"""Linux (and Android) have the abstract Unix socket namespace."""

_SUN_PATH_MAX: Final = 108 if ABSTRACT_OK else 104


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
