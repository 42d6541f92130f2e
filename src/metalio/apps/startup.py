"""Starting a server: binding, limits, buffers, and the words its log lines use.

This module owns what happens before and around a server's loop:
:func:`run_server` (resolve, bind, build the server, catch ``SIGINT`` and
``SIGTERM``, run, close everything), :func:`resolve_address` (the one place
a host name is resolved, since metalio itself never blocks on resolution),
:func:`raise_nofile_limit`, :func:`aligned_buffer` (the servers' read
buffer), and the two formatters log lines share, :func:`format_addr` and
:func:`describe_error`.

It knows nothing about connections or what a server does with its bytes:
the server type is passed in, and only its constructor, ``close()`` and its
being a ``Handler`` are used.
"""

from __future__ import annotations

import errno
import logging
import os
import signal as signal_module
import socket
from typing import TYPE_CHECKING, Any

from metalio import EventLoop, EventLoopConfig
from metalio.net import TcpListener

if TYPE_CHECKING:
    from collections.abc import Callable

    from metalio.apps.server import TcpServer

__all__ = [
    "aligned_buffer",
    "describe_error",
    "format_addr",
    "raise_nofile_limit",
    "resolve_address",
    "run_server",
]

log = logging.getLogger("metalio.apps")


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


def run_server(
    server_type: Callable[..., TcpServer],
    host: str,
    port: int,
    *,
    backend: str | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
    on_listening: Callable[[TcpServer], None] | None = None,
    handle_signals: bool = True,
    **options: Any,
) -> None:
    """Bind, run *server_type* until a signal or ``stop()``, then close everything.

    *reuse_port* binds with ``SO_REUSEPORT`` (several processes on one port).

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
        TcpListener.bind(addr, backlog=backlog, reuse_port=reuse_port) as listener,
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
