"""The ``try_*`` calls every descriptor-backed source shares, written once.

Streams (TCP, Unix) and pipe ends read and write their cached descriptor with
``os.read``/``os.readv``/``os.write`` on POSIX.  These functions are those
methods: the classes bind them as attributes (``try_read = fd_try_read``), so
a call costs exactly one Python frame, as a method written in the class would.
Each expects ``self._fd`` (the descriptor, ``-1`` once closed, which makes the
call fail with ``EBADF``) and ``self._rearm`` (see ``metalio._source``).
"""

from __future__ import annotations

import os
from typing import Any, Final, Protocol

from ._source import READ_LIMIT, RearmHook

__all__ = ["FdBacked", "fd_try_read", "fd_try_read_into", "fd_try_write"]

_read: Final = os.read
_write: Final = os.write
_readv: Final = getattr(os, "readv", None)


class FdBacked(Protocol):
    _fd: int
    _rearm: RearmHook | None


def fd_try_read(self: FdBacked, n: int = 65536) -> bytes | None:
    """Read at most *n* bytes: data, ``b""`` at end of stream, ``None`` if none yet.

    *n* above 16 MiB is read as 16 MiB (a read may always return fewer bytes).

    :raises ValueError: *n* < 1.
    :raises OSError: a real failure (``ConnectionResetError``, ``EBADF`` once
        closed, ...).
    """
    if not 0 < n <= READ_LIMIT:
        if n < 1:
            raise ValueError("try_read needs n >= 1 (b'' would mean end of stream)")
        n = READ_LIMIT  # at most n bytes: a smaller read keeps the promise
    try:
        return _read(self._fd, n)
    except BlockingIOError:
        rearm = self._rearm
        if rearm is not None:
            rearm(1)
        return None


def fd_try_read_into(self: FdBacked, buffer: Any) -> int | None:
    """Read into the writable *buffer* (no copy): bytes read, ``0`` at end of
    stream, ``None`` if nothing yet.

    :raises ValueError: *buffer* is empty.
    :raises TypeError: *buffer* is not a writable bytes-like object.
    :raises OSError: a real failure (``EBADF`` once closed, ...).
    """
    try:
        got: int = _readv(self._fd, (buffer,))  # type: ignore[misc]
    except BlockingIOError:
        rearm = self._rearm
        if rearm is not None:
            rearm(1)
        return None
    except BufferError:
        raise TypeError("try_read_into needs a writable buffer") from None
    if got:
        return got
    if len(memoryview(buffer)) == 0:
        raise ValueError("try_read_into needs a non-empty buffer (0 would mean end of stream)")
    return 0


def fd_try_write(self: FdBacked, data: Any) -> int | None:
    """Write some of *data*: the number of bytes taken (maybe fewer), ``None`` if none.

    :raises OSError: a real failure (``BrokenPipeError``, ``ConnectionResetError``,
        ``EBADF`` once closed, ...).
    """
    try:
        return _write(self._fd, data)
    except BlockingIOError:
        rearm = self._rearm
        if rearm is not None:
            rearm(2)
        return None
