"""The poll(2) bit layout the poll and select backends report in, and what each mask means.

Both fallback backends hand the layer above a native mask in poll(2)'s bit
values on Linux and the BSDs (the poll backend translates where a platform
differs; the select backend builds masks from its three sets).  This module
owns those bits, their translation into ``Ready``, and the two tables the
emulation reads them through (which native bits an armed registration may
see, which directions a mask reports).  It does not know records, trigger
modes, threads or any system call.
"""

from __future__ import annotations

from typing import Final

from ._bits import (
    ERROR,
    INTEREST_PRIORITY,
    INTEREST_READABLE,
    INTEREST_WRITABLE,
    PRIORITY,
    READ_CLOSED,
    READABLE,
    WRITABLE,
    WRITE_CLOSED,
)

__all__ = [
    "ALLOWED",
    "CONDITIONS",
    "DIRECTIONS",
    "DIRECTION_BITS",
    "ERRHUP",
    "POLLERR",
    "POLLHUP",
    "POLLIN",
    "POLLNVAL",
    "POLLOUT",
    "POLLPRI",
    "POLLRDHUP",
    "RDHUP_SHIFT",
    "conditions",
    "is_error",
    "is_priority",
    "is_read_closed",
    "is_readable",
    "is_writable",
    "is_write_closed",
    "readiness",
]

POLLIN: Final = 0x001
POLLPRI: Final = 0x002
POLLOUT: Final = 0x004
POLLERR: Final = 0x008
POLLHUP: Final = 0x010
POLLNVAL: Final = 0x020  # the fd is not open; never reported, the record goes stale
POLLRDHUP: Final = 0x2000  # Linux only: the peer shut down its write side

ERRHUP: Final = POLLERR | POLLHUP
# Conditions that are news even while the direction they concern is still
# ready, so the probe reports their appearance on a disarmed EDGE source.
CONDITIONS: Final = POLLERR | POLLHUP | POLLRDHUP

# Armed directions (Interest bits) -> the native bits an event may carry.
# Error and hang-up come whatever was asked for, but only while something is
# armed: a fully disarmed fd is out of the kernel set.
ALLOWED: Final = tuple(
    ((POLLIN | POLLRDHUP) if d & INTEREST_READABLE else 0)
    | (POLLOUT if d & INTEREST_WRITABLE else 0)
    | (POLLPRI if d & INTEREST_PRIORITY else 0)
    | (ERRHUP if d else 0)
    for d in range(8)
)

# (IN, PRI, OUT) bits -> the directions (Interest bits) they report ready.
# Indexed by ``(mask | mask >> RDHUP_SHIFT) & DIRECTION_BITS``: POLLRDHUP
# shifted down is POLLIN, because the read side closing is news for the read
# direction.
RDHUP_SHIFT: Final = 13
DIRECTION_BITS: Final = POLLIN | POLLPRI | POLLOUT
assert POLLRDHUP >> RDHUP_SHIFT == POLLIN
DIRECTIONS: Final = tuple(
    (INTEREST_READABLE if m & POLLIN else 0)
    | (INTEREST_WRITABLE if m & POLLOUT else 0)
    | (INTEREST_PRIORITY if m & POLLPRI else 0)
    for m in range(DIRECTION_BITS + 1)
)


def conditions(mask: int) -> int:
    """The conditions in *mask*; a full hang-up implies the read side closed."""
    cond = mask & CONDITIONS
    return cond | POLLRDHUP if cond & POLLHUP else cond


# -- what a mask means (one predicate per readiness, as in epoll.py) -----------
#
# poll(2) on Linux asks the same per-file poll method as epoll, so the
# kernel situations are the ones epoll.py lists, in these bits.  select(2)
# only ever fills in IN, OUT and PRI (and ERR on Windows, for a failed
# connect in the exceptional set).


def is_readable(mask: int) -> bool:
    """Data (or EOF) can be read; a listening socket has a connection."""
    return mask & POLLIN != 0


def is_writable(mask: int) -> bool:
    """The send buffer has room; a non-blocking connect has finished (or failed)."""
    return mask & POLLOUT != 0


def is_priority(mask: int) -> bool:
    """TCP urgent data (select: the exceptional set)."""
    return mask & POLLPRI != 0


def is_error(mask: int) -> bool:
    """A socket error is pending, or a pipe writer lost its reader.

    On Windows the select backend sets ``POLLERR`` for a failed connect, which
    it finds in the exceptional set.
    """
    return mask & POLLERR != 0


def is_read_closed(mask: int) -> bool:
    """No more data will arrive (what is queued may still be read)."""
    # POLLRDHUP: the peer sent FIN, or we shut down reading.  POLLHUP: both
    # directions are finished; a pipe's read end gets it alone when its last
    # writer closes.
    return mask & (POLLHUP | POLLRDHUP) != 0


def is_write_closed(mask: int) -> bool:
    """Nothing more can be sent: both directions are finished (``POLLHUP``).

    Unlike the epoll translation, ``POLLERR`` without ``POLLHUP`` (a pipe
    writer whose reader closed) is an error here, not a closed write side.
    """
    return mask & POLLHUP != 0


def readiness(native_mask: int, interest: int) -> int:
    """Translate a native mask into ``Ready`` bits for a registration with *interest*.

    A read or write that will fail or see EOF at once is "ready": error and
    hang-up are folded into READABLE/WRITABLE within what was asked for, so a
    program that only checks ``readable`` acts on them instead of spinning.
    ``POLLNVAL`` contributes nothing: such an event is never reported.
    """
    ready = 0
    if is_readable(native_mask):
        ready |= READABLE
    if is_writable(native_mask):
        ready |= WRITABLE
    if is_priority(native_mask):
        ready |= PRIORITY
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
