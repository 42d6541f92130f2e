"""What can be registered: an ``int`` descriptor or anything with ``fileno()``.

metalio's own source types (``metalio.net``, ``metalio.pipe``) also carry a
``_rearm`` slot.  The emulating backends (poll, select) cannot see when a
program drains an edge-triggered source, so while such a source is registered
EDGE with one of them the registry stores a callback there, and the source
calls it with ``1`` (read side) or ``2`` (write side) whenever a ``try_*``
call returns ``None``.  On epoll and kqueue the slot stays ``None`` and costs
nothing: it is only looked at on the would-block path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias, runtime_checkable

__all__ = ["READ_LIMIT", "HasFileno", "RearmHook", "Source", "fd_of"]

READ_LIMIT = 1 << 24
"""The most bytes one ``try_read``/``try_recv``-style call asks the kernel for.

``os.read`` and ``socket.recv`` allocate *n* bytes before the call, so an
absurd *n* would raise ``MemoryError`` or ``OverflowError``.  A read may
always return fewer bytes than asked, so larger requests are clamped to 16 MiB
(more than any socket buffer holds) instead of refused."""


@runtime_checkable
class HasFileno(Protocol):
    def fileno(self) -> int: ...


Source: TypeAlias = "int | HasFileno"
RearmHook: TypeAlias = Callable[[int], None]


def fd_of(source: object) -> int:
    """Return the descriptor number of *source*; ``-1`` when it is closed.

    :raises TypeError: *source* is neither an ``int`` nor has a ``fileno()``
        method returning an ``int``.
    """
    if type(source) is int:
        return source
    if isinstance(source, bool):
        raise TypeError("a bool is not a file descriptor")
    if isinstance(source, int):
        return int(source)
    fileno = getattr(source, "fileno", None)
    if fileno is None or not callable(fileno):
        raise TypeError(f"{type(source).__name__} object has no fileno() method")
    try:
        fd = fileno()
    except ValueError:
        # Closed file objects raise instead of returning -1.
        return -1
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise TypeError(f"fileno() returned {type(fd).__name__}, not int")
    return int(fd)
