"""The funnel every ``try_*`` call of a metalio source passes through.

mio routes each I/O call through one ``do_io`` so that its rules are written
once.  Here the rules are three, and each has one home:

1. **would-block becomes ``None``**, and whatever must happen then happens in
   :func:`would_block`: the direction is marked drained for readiness
   tracking (``metalio._readiness``) and, on the backends that emulate edge
   triggering, the registration is re-armed through the source's ``_rearm``
   hook (``metalio._source``).  Every ``try_*`` of every source type calls it
   from its ``except BlockingIOError``.
2. **a drained direction answers ``None`` without a system call** while the
   source's epoch has not moved (:func:`drained`), and a short transfer
   marks the direction drained.  Only stream sources do this: the four hot
   calls below (a datagram, an accept or a peek says nothing about what is
   left).
3. **real failures raise** the ``OSError`` Python builds from the errno.

The system calls themselves are the C core's (``metalio._speedups``) when it
is built and not switched off (``METALIO_PURE_PYTHON=1``): the same calls,
but a would-block comes back as ``None`` instead of a raised and caught
``BlockingIOError``.  Otherwise they are ``os.read`` and friends.  Each call
below handles both answers, so there is one code path either way.

The four stream calls (``fd_try_read``, ``fd_try_read_into``,
``fd_try_write``, ``fd_try_writev``) are the ones a server makes per event.
With the C core they are C too: ``metalio._speedups`` holds the slots of
:class:`FdState` in a C base type (``StreamCore``, then the base of
:class:`FdSource`) and the four calls as its methods, following the rules
of the Python functions below line for line.  The classes bind whichever is
in use by name (``try_read = stream_try_read``), so neither costs more than
one call.  The Python functions are the reference, and the implementation
when the C core is absent or switched off.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._readiness import Epoch
from ._source import READ_LIMIT, RearmHook
from ._speedups_loader import CORE, IOV_MAX, SPEEDUPS
from ._speedups_loader import read as speedups_read
from ._speedups_loader import readinto as speedups_readinto
from ._speedups_loader import write as speedups_write
from ._speedups_loader import writev as speedups_writev

__all__ = [
    "IOV_MAX",
    "READ",
    "WRITE",
    "FdSource",
    "FdState",
    "fd_try_read",
    "fd_try_read_into",
    "fd_try_write",
    "fd_try_writev",
    "init_state",
    "read_size",
    "stream_try_read",
    "stream_try_read_into",
    "stream_try_write",
    "stream_try_writev",
    "would_block",
]

READ: Final = 1
"""The read direction (the ``Interest.READABLE`` bit), for :func:`would_block`."""
WRITE: Final = 2
"""The write direction (the ``Interest.WRITABLE`` bit)."""

# The system calls (see the module docstring).  _readinto is the C core's
# (fd, buffer) call, or None, and then os.readv takes the buffer in a tuple.
_read: Callable[[int, int], bytes | None] = os.read
_write: Callable[[int, Any], int | None] = os.write
_readv: Any = getattr(os, "readv", None)
_writev: Any = getattr(os, "writev", None)
_readinto: Callable[[int, Any], int | None] | None = None
if SPEEDUPS == "c":
    _read = speedups_read
    _write = speedups_write
    _writev = speedups_writev
    _readinto = speedups_readinto


class FdState(Protocol):
    """The slots a descriptor-backed source carries for the funnel."""

    _fd: int  # the descriptor, -1 once closed (a call then fails with EBADF)
    _rearm: RearmHook | None  # set while registered EDGE with an emulating backend
    _epoch: Epoch | None  # the tracking Poll's epoch; None while untracked
    _rmark: float  # the epoch at which reading was seen drained
    _wmark: float  # the epoch at which writing was seen drained
    _polls: int  # how many Polls the source is registered with


class _FdSlots:
    """The slots of :class:`FdState` in Python, when the C core is not in use."""

    __slots__ = ("_epoch", "_fd", "_polls", "_rearm", "_rmark", "_wmark")


if TYPE_CHECKING:
    _FdBase = _FdSlots  # the type checker reads the reference
else:
    _FdBase = _FdSlots if CORE is None else CORE.StreamCore


class FdSource(_FdBase):
    """Base of every metalio source type: the slots of :class:`FdState`."""

    __slots__ = ()

    _fd: int
    _rearm: RearmHook | None
    _epoch: Epoch | None
    _rmark: float
    _wmark: float
    _polls: int

    def fileno(self) -> int:
        """The descriptor number, ``-1`` once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        """``True`` once the source is closed."""
        return self._fd < 0


def init_state(source: Any, fd: int) -> None:
    """Give a new source its funnel state: descriptor *fd*, untracked, no hook."""
    source._fd = fd
    source._rearm = None
    source._epoch = None
    source._rmark = source._wmark = -1
    source._polls = 0


def read_size(n: int, what: str) -> int:
    """*n* for a read that allocates *n* bytes: at least 1, at most ``READ_LIMIT``.

    A read may always return fewer bytes than asked for, so a larger *n* is
    clamped rather than refused.  Callers test ``0 < n <= READ_LIMIT``
    themselves first, so the usual case costs no call.

    :raises ValueError: *n* < 1 (an empty read would look like end of stream).
    """
    if n < 1:
        raise ValueError(f"{what} needs n >= 1")
    return READ_LIMIT


def would_block(source: FdState, direction: int, now: float = -1) -> None:
    """The kernel said "would block" in *direction*: mark it, re-arm, answer ``None``.

    *now* is the epoch read before the call (``-1``: untracked).
    """
    if source._epoch is not None:
        if direction == READ:
            source._rmark = now
        else:
            source._wmark = now
    rearm = source._rearm
    if rearm is not None:
        rearm(direction)


def fd_try_read(self: FdState, n: int = 65536) -> bytes | None:
    """Read at most *n* bytes: data, ``b""`` at end of stream, ``None`` if none yet.

    *n* above 16 MiB is read as 16 MiB (a read may always return fewer bytes).
    ``None`` may come without a system call: see ``metalio._readiness``.

    :raises ValueError: *n* < 1.
    :raises OSError: a real failure (``ConnectionResetError``, ``EBADF`` once
        closed, ...).
    """
    if not 0 < n <= READ_LIMIT:
        n = read_size(n, "try_read")
    epoch = self._epoch
    if epoch is None:
        try:
            data = _read(self._fd, n)
        except BlockingIOError:
            data = None
        if data is None:
            would_block(self, READ)
        return data
    now = epoch.now
    if self._rmark == now:
        return None  # drained, and no wait has returned since
    try:
        data = _read(self._fd, n)
    except BlockingIOError:
        data = None
    if data is None or (len(data) < n and data):
        self._rmark = now
    return data


def fd_try_read_into(self: FdState, buffer: Any) -> int | None:
    """Read into the writable *buffer* (no copy): bytes read, ``0`` at end of
    stream, ``None`` if nothing yet (maybe without a system call).

    :raises ValueError: *buffer* is empty.
    :raises TypeError: *buffer* is not a writable bytes-like object.
    :raises OSError: a real failure (``EBADF`` once closed, ...).
    """
    epoch = self._epoch
    now = -1.0
    if epoch is not None:
        now = epoch.now
        if self._rmark == now:
            return None
    try:
        got = _readinto(self._fd, buffer) if _readinto else _readv(self._fd, (buffer,))
    except BlockingIOError:
        got = None
    except BufferError:
        raise TypeError("try_read_into needs a writable buffer") from None
    if got is None:
        would_block(self, READ, now)
        return None
    if got:
        # len() of a buffer counts items, never more than its bytes: a read
        # shorter than it is certainly short.
        if epoch is not None and got < len(buffer):
            self._rmark = now
        return got
    if len(memoryview(buffer)) == 0:
        raise ValueError("try_read_into needs a non-empty buffer (0 would mean end of stream)")
    return 0


def fd_try_write(self: FdState, data: Any) -> int | None:
    """Write some of *data*: the number of bytes taken (maybe fewer), ``None`` if none
    (maybe without a system call).

    :raises OSError: a real failure (``BrokenPipeError``, ``ConnectionResetError``,
        ``EBADF`` once closed, ...).
    """
    epoch = self._epoch
    if epoch is None:
        try:
            n = _write(self._fd, data)
        except BlockingIOError:
            n = None
        if n is None:
            would_block(self, WRITE)
        return n
    now = epoch.now
    if self._wmark == now:
        return None  # full, and no wait has returned since
    try:
        n = _write(self._fd, data)
    except BlockingIOError:
        n = None
    if n is None or n < len(data):
        self._wmark = now
    return n


def fd_try_writev(self: FdState, buffers: Any) -> int | None:
    """Gather-write a sequence of bytes-like objects in one ``writev(2)`` call.

    Returns the total number of bytes taken, which may end inside any
    buffer, or ``None`` if none.  At most ``IOV_MAX`` (normally 1024)
    buffers go in one call; the rest are for the next call.  (A partial
    gather-write does not mark the direction drained: the total is not
    worth computing; the would-block that follows does.)

    :raises TypeError: *buffers* is not a sequence of bytes-like objects.
    :raises OSError: a real failure, as :func:`fd_try_write`.
    """
    epoch = self._epoch
    now = -1.0
    if epoch is not None:
        now = epoch.now
        if self._wmark == now:
            return None
    if len(buffers) > IOV_MAX:
        buffers = buffers[:IOV_MAX]
    try:
        written: int | None = _writev(self._fd, buffers)
    except BlockingIOError:
        written = None
    if written is None:
        would_block(self, WRITE, now)
    return written


# What the stream classes bind as their try_* methods (see the docstring).
if TYPE_CHECKING or CORE is None:
    stream_try_read = fd_try_read
    stream_try_read_into = fd_try_read_into
    stream_try_write = fd_try_write
    stream_try_writev = fd_try_writev
else:
    stream_try_read = CORE.try_read
    stream_try_read_into = CORE.try_read_into
    stream_try_write = CORE.try_write
    stream_try_writev = CORE.try_writev
