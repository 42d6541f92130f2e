"""What the poll/select emulation remembers between kernel calls: records and surplus events.

Owns the record of one registration (:class:`Entry`: interest, trigger
mode, armed directions, file identity), the test "does this fd still name
the file it was registered for", the shape of a backend's kernel set
(:class:`KernelSet`) and the queue of events that were found but did not fit
into ``maxevents`` (:class:`PendingEvents`).  It does not know when records
change or who holds the lock: ``_emulated`` calls everything here with its
lock held.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import Final, Protocol

from ._bits import OPT_EDGE, OPT_ONESHOT

__all__ = [
    "EDGE",
    "LEVEL",
    "ONESHOT",
    "Entry",
    "KernelSet",
    "PendingEvents",
    "alive",
    "identity",
    "stale_reason",
]

# Trigger modes of a record (``Entry.mode``); LEVEL is 0 so "not LEVEL" is a
# plain truth test on the hot path.
LEVEL: Final = 0
EDGE: Final = 1
ONESHOT: Final = 2

# Without identities (Windows) a record cannot be proven stale by os.fstat.
_HAVE_IDENTITY: Final = sys.platform != "win32"


def identity(fd: int) -> tuple[int, int] | None:
    """The file identity of *fd*, or ``None`` where the platform cannot tell.

    :raises OSError: *fd* is not open (``EBADF``), on platforms with identities.
    """
    if not _HAVE_IDENTITY:
        return None
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


class KernelSet(Protocol):
    """One level-triggered kernel watch set, as a backend provides it."""

    def update(self, fd: int, directions: int) -> None:
        """Watch *fd* for *directions* (Interest bits); ``0`` removes it."""

    def wait(self, timeout: float | None) -> list[tuple[int, int]]:
        """Wait (``None``: forever) and return ``(fd, native_mask)`` for ready fds.

        Descriptors found closed come back as ``(fd, POLLNVAL)``.
        """
        ...

    def close(self) -> None: ...


class Entry:
    """One registration.  Replaced as a whole by ``register``/``reregister``."""

    __slots__ = ("armed", "ident", "interest", "mode", "seen", "stale")

    def __init__(self, interest: int, opts: int, ident: tuple[int, int] | None) -> None:
        self.interest = interest
        self.mode = ONESHOT if opts & OPT_ONESHOT else (EDGE if opts & OPT_EDGE else LEVEL)
        self.armed = interest
        self.ident = ident
        self.stale = False
        self.seen = 0  # EDGE: conditions (_pollmask.CONDITIONS) already reported


def alive(fd: int, entry: Entry) -> bool:
    """Whether *fd* still names the file *entry* was registered for."""
    ident = entry.ident
    if ident is None:
        return True
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return st.st_ino == ident[1] and st.st_dev == ident[0]


def stale_reason(fd: int, entry: Entry) -> str:
    """Why *entry* no longer describes the open *fd* (``""``: it still does).

    :raises OSError: *fd* is not open (``EBADF``), on platforms with identities.
    """
    if entry.stale:
        return "closed"
    if entry.ident is None or identity(fd) == entry.ident:
        return ""
    return "it now names another file"


class PendingEvents:
    """Events one kernel call found beyond ``maxevents``, returned before the kernel is asked again.

    Delivering the whole queue first is what keeps descriptors late in the
    set from starving.  Each event remembers the record it was found for:
    one whose record was removed or replaced meanwhile is dropped.
    """

    __slots__ = ("_queue",)

    def __init__(self) -> None:
        self._queue: deque[tuple[int, int, Entry]] = deque()

    def __bool__(self) -> bool:
        return bool(self._queue)

    def defer(self, events: list[tuple[int, int]], entries: dict[int, Entry]) -> None:
        """Queue *events* for the records they were found for."""
        get = entries.get
        append = self._queue.append
        for fd, rev in events:
            entry = get(fd)
            # None: a probe event whose fd was removed while the kernel waited.
            if entry is not None:
                append((fd, rev, entry))

    def take(
        self, maxevents: int, entries: dict[int, Entry]
    ) -> tuple[list[tuple[int, int]], list[tuple[int, Entry]]]:
        """At most *maxevents* queued events still valid, and the records found stale."""
        queue = self._queue
        out: list[tuple[int, int]] = []
        stale: list[tuple[int, Entry]] = []
        while queue and len(out) < maxevents:
            fd, rev, entry = queue.popleft()
            if entries.get(fd) is entry and not entry.stale:
                if alive(fd, entry):
                    out.append((fd, rev))
                else:
                    stale.append((fd, entry))
        return out, stale

    def clear(self) -> None:
        self._queue.clear()
