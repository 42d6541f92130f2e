"""Which implementation of the four descriptor calls metalio uses, decided once at import.

Owns: the choice between the C core (``metalio._speedups``) and its
pure-Python reference, and the reference itself.  ``read``, ``readinto``,
``write`` and ``writev`` here are the chosen ones; ``py_read`` ... are always
the pure-Python ones; ``SPEEDUPS`` says which is in use (``"c"`` or
``"python"``; ``metalio.speedups`` re-exports it).  ``CORE`` is the C module
itself when it is in use, ``None`` otherwise: ``metalio._fdio`` and
``metalio._readiness`` take their base types (``StreamCore``,
``EpochCore``) and the stream calls from it.

Every function takes a raw descriptor and behaves as ``os.read``,
``os.readv``, ``os.write``, ``os.writev`` do, except that the kernel's
would-block returns ``None``.  The two implementations behave identically
(``tests/test_speedups.py`` runs every test against both); the one known
difference is a non-``int`` *n* for ``read``: the reference compares it
before converting it, so ``0.5`` is a ``ValueError`` there and a
``TypeError`` in C (both refuse ``1.5``).

Must not know: sources, registries, readiness marks, rearm hooks; the
callers (``metalio._fdio``, ``metalio.net``) own those.

``METALIO_PURE_PYTHON`` set to anything but ``""`` or ``"0"`` in the
environment at import time selects the reference without even importing
the extension.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, Literal

from ._source import READ_LIMIT

__all__ = [
    "CORE",
    "IOV_MAX",
    "SPEEDUPS",
    "py_read",
    "py_readinto",
    "py_write",
    "py_writev",
    "read",
    "readinto",
    "write",
    "writev",
]


def _iov_max() -> int:
    try:
        return os.sysconf("SC_IOV_MAX") or 1024
    except (AttributeError, ValueError, OSError):  # pragma: no cover - Windows
        return 1024


IOV_MAX: Final = _iov_max()
"""The most buffers one ``writev`` call uses; the rest of the sequence is ignored."""


def _missing(fd: int, buffers: Any, /) -> int:  # pragma: no cover - Windows
    raise OSError("readv/writev are not available on this platform")


_os_read: Final = os.read
_os_write: Final = os.write
# os.readv/os.writev do not exist on Windows, where metalio's sources use the
# socket methods and call nothing here; a stand-in keeps the import working.
_os_readv: Final[Callable[[int, Any], int]] = getattr(os, "readv", _missing)
_os_writev: Final[Callable[[int, Any], int]] = getattr(os, "writev", _missing)


def py_read(fd: int, n: int, /) -> bytes | None:
    """Read at most *n* bytes from *fd*: data, ``b""`` at end of stream, ``None`` if none yet.

    *n* above 16 MiB is read as 16 MiB (a read may always return fewer bytes).

    :raises ValueError: *n* < 1.
    :raises TypeError: *fd* or *n* is not an ``int``.
    :raises OverflowError: *fd* does not fit a C ``int``.
    :raises OSError: a real failure (``EBADF`` for a closed or negative *fd*, ...).
    """
    if not 0 < n <= READ_LIMIT:
        if n < 1:
            raise ValueError("try_read needs n >= 1 (b'' would mean end of stream)")
        n = READ_LIMIT  # at most n bytes: a smaller read keeps the promise
    try:
        return _os_read(fd, n)
    except BlockingIOError:
        return None


def py_readinto(fd: int, buffer: Any, /) -> int | None:
    """Read into the writable C-contiguous *buffer*: bytes read, ``0`` at end of
    stream, ``None`` if nothing yet.

    :raises TypeError: *buffer* is not a writable contiguous bytes-like object,
        or *fd* not an ``int``.
    :raises ValueError: *buffer* is empty (``0`` would mean end of stream).
    :raises OSError: a real failure.
    """
    try:
        got = _os_readv(fd, (buffer,))
    except BlockingIOError:
        return None
    except BufferError:
        raise TypeError("try_read_into needs a writable buffer") from None
    if got:
        return got
    if len(memoryview(buffer)) == 0:
        raise ValueError("try_read_into needs a non-empty buffer (0 would mean end of stream)")
    return 0


def py_write(fd: int, data: Any, /) -> int | None:
    """Write some of the bytes-like *data*: the number of bytes taken, ``None`` if none.

    :raises TypeError: *data* is not bytes-like, or *fd* not an ``int``.
    :raises BufferError: *data* is not C-contiguous (as ``os.write``).
    :raises OSError: a real failure (``BrokenPipeError``, ...).
    """
    try:
        return _os_write(fd, data)
    except BlockingIOError:
        return None


def py_writev(fd: int, buffers: Any, /) -> int | None:
    """Gather-write a sequence of bytes-like objects: the total taken, ``None`` if none.

    At most ``IOV_MAX`` buffers are used; the rest are for the next call.

    :raises TypeError: not a sequence, an item not bytes-like, *fd* not an ``int``.
    :raises BufferError: an item is not C-contiguous (as ``os.writev``).
    :raises OSError: a real failure.
    """
    if len(buffers) > IOV_MAX:
        buffers = buffers[:IOV_MAX]
    try:
        return _os_writev(fd, buffers)
    except BlockingIOError:
        return None


def _forced_pure() -> bool:
    return os.environ.get("METALIO_PURE_PYTHON", "") not in ("", "0")


read: Callable[[int, int], bytes | None] = py_read
readinto: Callable[[int, Any], int | None] = py_readinto
write: Callable[[int, Any], int | None] = py_write
writev: Callable[[int, Any], int | None] = py_writev
SPEEDUPS: Literal["c", "python"] = "python"
CORE: ModuleType | None = None

if not _forced_pure() and sys.platform != "win32":
    try:
        from . import _speedups
    except ImportError:
        # Not built (no compiler at install time, METALIO_PURE_PYTHON at build
        # time) or built for another interpreter: the reference is complete.
        pass
    else:
        read = _speedups.read
        readinto = _speedups.readinto
        write = _speedups.write
        writev = _speedups.writev
        SPEEDUPS = "c"
        CORE = _speedups
