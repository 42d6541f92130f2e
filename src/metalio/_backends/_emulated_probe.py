"""The EDGE probe of the poll/select emulation: re-arm what was drained, report late conditions.

An EDGE event disarms the directions it reported.  Sources that are not
metalio types never say when they were drained, so at the start of each
``poll()`` with disarmed directions one zero-timeout kernel call over just
those directions decides: a direction that is no longer ready was drained
and is re-armed; one that is still ready stays silent (no busy loop for an
undrained source).  epoll also reports a hang-up, an error or a half-close
that happens while a direction is left undrained (a new wake-up of the
file); the probe does the same, once per condition.

This module owns the disarmed EDGE records, the second kernel set they are
probed in, and that set's pending changes.  It does not know the main
kernel set, the lock (held by its caller, ``_emulated``) or how a stale
record is retired (it hands those back).
"""

from __future__ import annotations

from ._bits import INTEREST_READABLE
from ._emulated_records import Entry, KernelSet, alive
from ._pollmask import (
    ALLOWED,
    CONDITIONS,
    DIRECTION_BITS,
    DIRECTIONS,
    ERRHUP,
    POLLNVAL,
    RDHUP_SHIFT,
    conditions,
)

__all__ = ["EdgeProbe"]


class EdgeProbe:
    """The disarmed EDGE records and the kernel set that probes them.

    *main_dirty* is the caller's set of fds whose main kernel-set membership
    may have changed: the probe adds to it whatever it re-arms or disarms.
    The probe's own kernel set is handed over by :meth:`attach`, once.

    The contract with the caller: when an event disarms an EDGE record, it
    puts the record in :attr:`disarmed` and the fd in :attr:`dirty` (the hot
    path does this inline); when a record is re-armed, replaced or removed
    it calls :meth:`rearmed` or :meth:`drop`.
    """

    __slots__ = ("_kset", "_main_dirty", "dirty", "disarmed")

    def __init__(self, main_dirty: set[int]) -> None:
        self._kset: KernelSet | None = None
        self._main_dirty = main_dirty
        self.disarmed: dict[int, Entry] = {}  # fd -> EDGE record with a disarmed direction
        self.dirty: set[int] = set()  # fds whose probe-set membership may differ

    def attach(self, kset: KernelSet) -> None:
        self._kset = kset

    def drop(self, fd: int) -> None:
        """*fd*'s record was removed, replaced or went stale: stop probing it."""
        if self.disarmed.pop(fd, None) is not None:
            self.dirty.add(fd)

    def rearmed(self, fd: int, entry: Entry) -> None:
        """Some direction of *entry* was re-armed from outside (``rearm``)."""
        if entry.armed == entry.interest:
            self.disarmed.pop(fd, None)
        self.dirty.add(fd)

    def run(self) -> tuple[list[tuple[int, int]], list[tuple[int, Entry]]]:
        """Probe once; return the events to report and the records found stale.

        The events are conditions that appeared on a disarmed source since its
        last event (hang-up, error, read side closed): a source with nothing
        armed would never hear of them otherwise (a pipe writer whose reader
        went away).
        """
        disarmed = self.disarmed
        pdirty = self.dirty
        kset = self._kset
        assert kset is not None  # attached before any record exists
        if pdirty:
            update = kset.update
            for fd in pdirty:
                entry = disarmed.get(fd)
                update(fd, entry.interest & ~entry.armed if entry is not None else 0)
            pdirty.clear()
        results = kset.wait(0)
        dirty = self._main_dirty
        ready = dict(results)
        # Drained since the event: whatever comes next is new readiness.
        # (The set difference runs in C; Python work is per ready fd.)
        idle = disarmed.keys() - ready.keys() if ready else list(disarmed)
        for fd in idle:
            entry = disarmed.pop(fd)
            entry.armed = entry.interest
            entry.seen = 0
            dirty.add(fd)
            pdirty.add(fd)
        events: list[tuple[int, int]] = []
        stale: list[tuple[int, Entry]] = []
        get = disarmed.get
        directions = DIRECTIONS
        for fd, rev in ready.items():
            entry = get(fd)
            if entry is None:
                continue
            # Rare: closed, hung up, failing or half-closed.
            if (rev & (CONDITIONS | POLLNVAL) or entry.seen) and self._news(
                fd, entry, rev, events, stale
            ):
                continue
            # Directions still ready stay silent; the others were drained.
            still = directions[(rev | rev >> RDHUP_SHIFT) & DIRECTION_BITS]
            new = entry.interest & ~entry.armed & ~still
            if new:
                entry.armed |= new
                if entry.armed == entry.interest:
                    del disarmed[fd]
                dirty.add(fd)
                pdirty.add(fd)
        return events, stale

    def _news(
        self,
        fd: int,
        entry: Entry,
        rev: int,
        events: list[tuple[int, int]],
        stale: list[tuple[int, Entry]],
    ) -> bool:
        """The probe's slow path; True when *fd* is settled (nothing to re-arm)."""
        if rev & POLLNVAL or not alive(fd, entry):
            stale.append((fd, entry))
            return True
        cond = conditions(rev)
        fresh = cond & ~entry.seen
        # Forget what cleared (it may be news again later), but only what this
        # probe could see: POLLRDHUP needs the read direction asked for.
        probed = entry.interest & ~entry.armed
        seeable = CONDITIONS if probed & INTEREST_READABLE else ERRHUP
        entry.seen = (entry.seen & ~seeable) | cond
        if fresh:
            events.append((fd, rev & ALLOWED[entry.interest]))
            if fresh & ERRHUP:
                entry.armed = 0
                self._main_dirty.add(fd)
                self.dirty.add(fd)
                return True
        # Still hung up or failing: stays silent.
        return bool(cond & ERRHUP)

    def clear(self) -> None:
        """Forget every record and close the probe's kernel set."""
        self.disarmed.clear()
        self.dirty.clear()
        kset, self._kset = self._kset, None
        if kset is not None:
            kset.close()
