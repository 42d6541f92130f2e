"""kqueue's results as one native mask per descriptor, and that mask's translation into ``Ready``.

kqueue returns one kevent per (fd, filter), not one mask per fd, so the
kqueue backend hands the layer above a mask of its own encoding: the bits
below, one kevent translated by :class:`KeventBits`, the kevents of one fd
from one call ORed together.  This module owns that encoding and both
translations.  It does not know the knote table, the ``udata`` generations,
oneshot settlement or threads (``kqueue.py``), nor tokens.

What a kevent says (read from the FreeBSD, OpenBSD and NetBSD sources and
man pages; not run on a real kernel):

* ``EVFILT_READ`` fires while data is queued (``data``: how much), a
  connection waits to be accepted, or at EOF.  ``EV_EOF`` on it means the
  peer shut down its sending side (socket) or the last writer went away
  (pipe, fifo); data may still be queued.
* ``EVFILT_WRITE`` fires while there is room to send.  ``EV_EOF`` on it means
  nothing more can be sent: the send side is shut, or a pipe lost its reader.
* With ``EV_EOF`` a socket's pending error (``so_error``) is in ``fflags``: a
  refused non-blocking connect is ``EVFILT_WRITE`` + ``EV_EOF`` + ``ECONNREFUSED``.
* ``EV_ERROR`` only marks the result of a change (a receipt); the backend
  never passes a changelist to the ``kevent()`` call that waits, but treats
  it as an error should one appear among events.
"""

from __future__ import annotations

from typing import Any, Final

from ._bits import (
    ERROR,
    INTEREST_READABLE,
    INTEREST_WRITABLE,
    READ_CLOSED,
    READABLE,
    WRITABLE,
    WRITE_CLOSED,
)

__all__ = [
    "CLOSING_MASK",
    "N_ERROR",
    "N_READ",
    "N_READ_EOF",
    "N_WRITE",
    "N_WRITE_EOF",
    "KeventBits",
    "is_error",
    "is_read_closed",
    "is_readable",
    "is_writable",
    "is_write_closed",
    "readiness",
]

N_READ: Final = 0x01  # EVFILT_READ fired
N_WRITE: Final = 0x02  # EVFILT_WRITE fired
N_READ_EOF: Final = 0x04  # EV_EOF on EVFILT_READ: no more data will arrive
N_WRITE_EOF: Final = 0x08  # EV_EOF on EVFILT_WRITE: nothing more can be sent
N_ERROR: Final = 0x10  # EV_ERROR, or EV_EOF with a socket error in fflags

# The bits that report hang-up or an error (the backend's ``closing_mask``).
CLOSING_MASK: Final = N_READ_EOF | N_WRITE_EOF | N_ERROR


class KeventBits:
    """Translate one kevent into native bits, for the ``KQ_*`` values of one ``select`` module.

    The filter and flag numbers differ between systems (NetBSD's
    ``EVFILT_READ`` is 0, the others' -1), so they are read from the module
    the backend was built with (the real ``select``, or a fake in tests).
    """

    __slots__ = ("_eof", "_error", "_read", "_write")

    def __init__(self, mod: Any) -> None:
        self._read: int = mod.KQ_FILTER_READ
        self._write: int = mod.KQ_FILTER_WRITE
        self._eof: int = mod.KQ_EV_EOF
        self._error: int = mod.KQ_EV_ERROR

    def __call__(self, kev: Any) -> int:
        """The native bits of *kev*; ``0`` for a filter the backend never adds."""
        flags = kev.flags
        flt = kev.filter
        if flt == self._read:
            bits = N_READ | N_READ_EOF if flags & self._eof else N_READ
        elif flt == self._write:
            bits = N_WRITE | N_WRITE_EOF if flags & self._eof else N_WRITE
        else:
            return 0
        if flags & self._error or (flags & self._eof and kev.fflags):
            bits |= N_ERROR
        return bits


# -- what a merged mask means (one predicate per readiness, as in epoll.py) ------


def is_readable(mask: int) -> bool:
    """``EVFILT_READ`` fired: data, a connection to accept, or EOF."""
    return mask & N_READ != 0


def is_writable(mask: int) -> bool:
    """``EVFILT_WRITE`` fired: room to send, a connect finished (or failed)."""
    return mask & N_WRITE != 0


def is_error(mask: int) -> bool:
    """A socket error came with ``EV_EOF`` (a refused connect, a reset)."""
    return mask & N_ERROR != 0


def is_read_closed(mask: int) -> bool:
    """The peer's FIN, or a pipe's last writer gone: ``EV_EOF`` on the read filter."""
    return mask & N_READ_EOF != 0


def is_write_closed(mask: int) -> bool:
    """The send side is shut, or a pipe's reader gone: ``EV_EOF`` on the write filter.

    A peer's FIN alone is not this: kqueue splits hang-up by direction,
    where epoll's ``EPOLLHUP`` reports both at once.
    """
    return mask & N_WRITE_EOF != 0


def readiness(native_mask: int, interest: int) -> int:
    """Translate a merged mask into ``Ready`` bits for a registration with *interest*.

    READABLE and WRITABLE are reported only within *interest*: a kevent of a
    filter that ``reregister`` just deleted can still come back from a
    ``kevent()`` call that raced with it.  Error and hang-up fold into them,
    as on every backend: a read or write that will fail or see EOF at once
    is "ready".
    """
    ready = 0
    if is_readable(native_mask) and interest & INTEREST_READABLE:
        ready |= READABLE
    if is_writable(native_mask) and interest & INTEREST_WRITABLE:
        ready |= WRITABLE
    if is_error(native_mask):
        ready |= ERROR
    if is_read_closed(native_mask):
        ready |= READ_CLOSED
    if is_write_closed(native_mask):
        ready |= WRITE_CLOSED
    if ready & (ERROR | READ_CLOSED) and interest & INTEREST_READABLE:
        ready |= READABLE
    if ready & (ERROR | WRITE_CLOSED) and interest & INTEREST_WRITABLE:
        ready |= WRITABLE
    return ready
