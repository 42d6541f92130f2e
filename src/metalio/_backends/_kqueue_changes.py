"""Knote changes applied to one kqueue: one ``kevent()`` call each, one result per change.

This module owns how the kqueue backend talks to the kernel about
registrations: the ``KQ_*`` values of the ``select`` module in use, the
record of what was registered for one fd, and :class:`Changelist`, which
submits a batch of changes with ``EV_RECEIPT``, pairs each change with its
errno, and rolls a batch back.  It does not decide anything: whether a
record is stale, what to do with a refusal, and every lock are the
backend's (``kqueue.py``); the translation of results is ``_kqueue_mask``.

Kernel facts behind it (docs/backends.md has the full list; none was run on
a real kernel):

* ``EV_RECEIPT`` makes ``kevent()`` report one result per change
  (``EV_ERROR`` set, ``data`` = errno or 0) without draining pending events.
  The event list must have room for every change: FreeBSD silently stops
  applying changes when it is full.  A kernel without ``EV_RECEIPT`` still
  reports failed changes that way and returns pending events instead of
  receipts: those are kept for the next ``poll()`` (``stolen``).
* A change with neither ``EV_ADD`` nor ``EV_DELETE`` fails with ``ENOENT`` for
  a missing knote and does nothing to an existing one: a *probe*.
* ``EV_ADD`` on an existing knote keeps the trigger flags of the first
  ``EV_ADD``, so restoring old options is ``EV_DELETE`` + ``EV_ADD``.
* CPython exports neither ``KQ_EV_RECEIPT`` nor ``KQ_EV_DISPATCH``; the values
  below are those of every ``<sys/event.h>`` read (FreeBSD, macOS, OpenBSD,
  NetBSD 10, DragonFly).
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
from typing import Any, Final

from ._bits import INTEREST_READABLE, INTEREST_WRITABLE, OPT_EDGE, OPT_ONESHOT

__all__ = ["INTERNAL_UDATA", "ONESHOT_UDATA", "Changelist", "Record", "identity", "os_error"]

_EV_RECEIPT: Final = 0x0040
_EV_DISPATCH: Final = 0x0080

# udata 0 marks the backend's own knote (the interrupt() wake-up);
# registrations use (generation << 1) | oneshot, so they are never 0.
INTERNAL_UDATA: Final = 0
ONESHOT_UDATA: Final = 1
_GENERATIONS: Final = sys.maxsize >> 1


class Record:
    """What the backend registered for one fd.  Guarded by the backend lock."""

    __slots__ = ("armed", "filters", "ident", "interest", "opts", "udata")

    def __init__(
        self,
        interest: int,
        opts: int,
        ident: tuple[int, int],
        filters: tuple[int, ...],
        udata: int,
    ) -> None:
        self.interest = interest
        self.opts = opts
        self.ident = ident
        self.filters = filters
        self.udata = udata
        # ONESHOT only: True until the first event of this arming is delivered.
        self.armed = True


def identity(fd: int) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of *fd*.

    :raises OSError: ``EBADF`` when *fd* is not open.
    """
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def os_error(code: int, fd: int) -> OSError:
    # OSError(errno, ...) picks the subclass (BrokenPipeError, PermissionError...).
    return OSError(code, f"{os.strerror(code)} (kqueue, fd {fd})")


class Changelist:
    """Builds and submits knote changes for one kqueue.

    *mod* is the module providing ``kevent`` and the ``KQ_*`` constants,
    *control* the kqueue's bound ``control``, *stolen* the list where pending
    events returned instead of receipts are kept (the backend's).  The flag
    attributes (``ADD``, ``DELETE``, ...) are that module's values.
    """

    __slots__ = (
        "ADD",
        "DELETE",
        "DISABLE",
        "ENABLE",
        "ERROR",
        "FILTERS",
        "READ",
        "RECEIPT",
        "TRIGGER",
        "WRITE",
        "_control",
        "_generation",
        "_stolen",
        "kevent",
    )

    def __init__(self, mod: Any, control: Any, stolen: list[Any]) -> None:
        self.READ: int = mod.KQ_FILTER_READ
        self.WRITE: int = mod.KQ_FILTER_WRITE
        self.ADD: int = mod.KQ_EV_ADD
        self.DELETE: int = mod.KQ_EV_DELETE
        self.ENABLE: int = mod.KQ_EV_ENABLE
        self.DISABLE: int = mod.KQ_EV_DISABLE
        self.ERROR: int = mod.KQ_EV_ERROR
        # Prefer the module's value should a future CPython export them.
        self.RECEIPT: int = getattr(mod, "KQ_EV_RECEIPT", _EV_RECEIPT)
        dispatch: int = getattr(mod, "KQ_EV_DISPATCH", _EV_DISPATCH)
        clear: int = mod.KQ_EV_CLEAR
        # Interest bits -> filters.  PRIORITY adds none: kqueue has no
        # urgent-data filter common to its systems (docs/backends.md).
        self.FILTERS: tuple[tuple[int, ...], ...] = tuple(
            ((self.READ,) if i & INTEREST_READABLE else ())
            + ((self.WRITE,) if i & INTEREST_WRITABLE else ())
            for i in range(8)
        )
        # PollOpt bits -> trigger flags: EDGE is EV_CLEAR, ONESHOT is
        # EV_DISPATCH (disable after one event, keep the knote), LEVEL none.
        self.TRIGGER: tuple[int, ...] = tuple(
            (clear if o & OPT_EDGE else 0) | (dispatch if o & OPT_ONESHOT else 0) for o in range(8)
        )
        self.kevent: Any = mod.kevent
        self._control = control
        self._stolen = stolen
        self._generation = itertools.count(1)

    def new_record(self, interest: int, opts: int, ident: tuple[int, int]) -> Record:
        """A record with a fresh ``udata`` generation: older events will not match it."""
        oneshot = ONESHOT_UDATA if opts & OPT_ONESHOT else 0
        udata = ((next(self._generation) % _GENERATIONS + 1) << 1) | oneshot
        return Record(interest, opts, ident, self.FILTERS[interest], udata)

    def change(self, fd: int, flt: int, flags: int, udata: int = 0) -> Any:
        return self.kevent(fd, flt, flags, 0, 0, udata)

    def deletes(self, fd: int, filters: tuple[int, ...] | list[int]) -> list[Any]:
        return [self.kevent(fd, f, self.DELETE | self.RECEIPT, 0, 0, 0) for f in filters]

    def probe(self, fd: int, rec: Record) -> Any:
        """A change that fails with ``ENOENT`` iff the first knote of *rec* is gone."""
        return self.kevent(fd, rec.filters[0], self.RECEIPT, 0, 0, rec.udata)

    def submit(self, changes: list[Any]) -> list[int]:
        """Apply *changes* in one ``kevent()`` call; one errno (0: done) per change.

        :raises OSError: the call itself failed.
        :raises ValueError: the kqueue is closed.
        """
        results = self._control(changes, len(changes), 0)
        errs = [0] * len(changes)
        cursor = 0
        error = self.ERROR
        for kev in results:
            if not kev.flags & error:
                # A pending event: this kernel ignored EV_RECEIPT and scanned.
                self._stolen.append(kev)
                continue
            # Receipts come back in changelist order.
            for i in range(cursor, len(changes)):
                change = changes[i]
                if change.ident == kev.ident and change.filter == kev.filter:
                    errs[i] = int(kev.data)
                    cursor = i + 1
                    break
        return errs

    def knotes_exist(self, fd: int, rec: Record) -> bool:
        """Whether the kernel still has the knotes of *rec* (close(2) removes them).

        :raises OSError: the probe failed for another reason than ``ENOENT``.
        """
        if not rec.filters:
            return True  # PRIORITY alone: nothing to ask, trust the identity
        (err,) = self.submit([self.probe(fd, rec)])
        if err == errno.ENOENT:
            return False
        if err:
            raise os_error(err, fd)
        return True

    def undo(self, fd: int, added: list[Any]) -> None:
        """Delete the knotes of *added*, ignoring every error."""
        if not added:
            return
        try:
            self.submit(self.deletes(fd, [c.filter for c in added]))
        except (OSError, ValueError):
            pass

    def restore(self, fd: int, old: Record, applied: list[Any]) -> None:
        """Put back the knotes of *old* after a reregister failed half-way; never raises."""
        touched = {c.filter for c in applied}
        if not touched:
            return
        flags = self.ADD | self.RECEIPT | self.TRIGGER[old.opts]
        if old.opts & OPT_ONESHOT and not old.armed:
            flags |= self.DISABLE
        # Delete and add: EV_ADD alone would not restore the trigger flags.
        order = [f for f in (self.READ, self.WRITE) if f in touched]
        changes = self.deletes(fd, order)
        changes += [self.change(fd, f, flags, old.udata) for f in order if f in old.filters]
        try:
            self.submit(changes)
        except (OSError, ValueError):
            pass
