"""Edge and oneshot triggering built in user space over a level-triggered kernel call.

poll(2) and select(2) say only which descriptors are ready *now*; everything
else the contract wants is built here, once, for both backends, and each
supplies a kernel set (``_emulated_records.KernelSet``) that speaks its
system call.  The long form, with the documented differences, is
docs/backends.md ("poll and select").

What this module owns: the records and their armed directions (only armed
directions are in the kernel set; a fully disarmed fd is removed, because
poll(2) reports hang-up even for an empty request), the rules per trigger
mode (LEVEL stays armed; ONESHOT's first event disarms all until
``reregister``; an EDGE event disarms what it reported, and ``rearm``, the
probe or ``reregister`` arm it again), the lazy rebuild of the kernel set,
the poll loop, ``interrupt``/``close``, and the stale-descriptor rules (every
event is checked against the file identity taken at registration; a
mismatch or ``POLLNVAL`` retires the record without an event).

What it leaves to others: the EDGE probe (``_emulated_probe``), the records
and surplus queue (``_emulated_records``), the wake-up of a blocked poller
(``_emulated_wake``), the meaning of the bits (``_pollmask``), the system
call (``poll.py``, ``select.py``), and tokens.  Registration calls and
``rearm`` may come from any thread; one thread polls at a time.
"""

from __future__ import annotations

import errno
import io
import os
import threading
import time
from typing import ClassVar

from ._bits import INTEREST_READABLE
from ._emulated_probe import EdgeProbe
from ._emulated_records import (
    EDGE,
    ONESHOT,
    Entry,
    KernelSet,
    PendingEvents,
    identity,
    stale_reason,
)
from ._emulated_wake import PollerWake
from ._pollmask import (
    ALLOWED,
    DIRECTION_BITS,
    DIRECTIONS,
    ERRHUP,
    POLLERR,
    POLLHUP,
    POLLNVAL,
    POLLRDHUP,
    RDHUP_SHIFT,
    conditions,
    readiness,
)

__all__ = ["EmulatedBackend"]


class EmulatedBackend:
    """The shared core of the poll and select backends.

    Subclasses set ``name`` and implement ``_new_set()``; they may override
    ``_check_new(fd, count)`` to refuse descriptors their system call cannot
    take, and ``_check_internal(fd)`` to refuse the internal wake-up one.
    """

    name: ClassVar[str] = "emulated"
    emulates_edge: ClassVar[bool] = True
    concurrent_poll: ClassVar[bool] = False
    unique_fds: ClassVar[bool] = True
    # Edges are rebuilt from levels here: a short read says nothing to the probe.
    exact_edges: ClassVar[bool] = False
    closing_mask: ClassVar[int] = POLLERR | POLLHUP | POLLRDHUP | POLLNVAL
    native_masks: ClassVar[tuple[int, ...] | None] = None

    __slots__ = (
        "_closed",
        "_dirty",
        "_edges",
        "_entries",
        "_guard",
        "_lock",
        "_main",
        "_pending",
        "_polling",
        "_retry",
        "_wakeup",
    )

    def __init__(self) -> None:
        # Re-entrant: a signal handler running on the polling thread while it
        # holds the lock may still register or deregister.
        self._lock = threading.RLock()
        self._guard = threading.Lock()  # held by the one thread inside poll()
        self._entries: dict[int, Entry] = {}
        self._dirty: set[int] = set()  # fds whose kernel-set membership may differ
        self._pending = PendingEvents()
        self._closed = False
        self._polling = False
        self._retry = False
        self._main: KernelSet | None = None
        self._edges = EdgeProbe(self._dirty)
        self._wakeup = PollerWake()
        try:
            self._check_internal(self._wakeup.fd)
            self._main = self._new_set()
            self._edges.attach(self._new_set())
            self._main.update(self._wakeup.fd, INTEREST_READABLE)
        except BaseException:
            self._release()
            raise

    # -- what subclasses provide ---------------------------------------------

    def _new_set(self) -> KernelSet:
        raise NotImplementedError

    def _check_new(self, fd: int, count: int) -> None:
        """Refuse *fd* before it is recorded; *count* records exist already."""

    def _check_internal(self, fd: int) -> None:
        """Refuse an internal descriptor the system call could not watch."""

    # -- registration --------------------------------------------------------

    def register(self, fd: int, interest: int, opts: int) -> None:
        """Start watching *fd*.

        :raises FileExistsError: *fd* is recorded for a file that is still open.
        :raises OSError: *fd* is not open (``EBADF`` from ``os.fstat``).
        :raises ValueError: the backend is closed, or its system call cannot
            watch *fd* (select: ``FD_SETSIZE``).
        """
        ident = identity(fd)
        with self._lock:
            self._check_open()
            entries = self._entries
            old = entries.get(fd)
            if old is not None:
                if not old.stale and (old.ident is None or ident is None or old.ident == ident):
                    raise FileExistsError(errno.EEXIST, f"fd {fd} is already registered")
                # The number now names another file: the old record is stale.
                self._remove(fd)
            self._check_new(fd, len(entries))
            entries[fd] = Entry(interest, opts, ident)
            self._changed(fd)

    def reregister(self, fd: int, interest: int, opts: int) -> None:
        """Replace the interest and options of *fd* and re-arm it.

        :raises FileNotFoundError: *fd* is not recorded, or its record is stale
            (the record is dropped).
        :raises OSError: *fd* is closed (``EBADF``); the record is dropped.
        :raises ValueError: the backend is closed.
        """
        with self._lock:
            self._check_open()
            old = self._entries.get(fd)
            if old is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            self._check_live(fd, old)
            self._edges.drop(fd)
            self._entries[fd] = Entry(interest, opts, old.ident)
            self._changed(fd)

    def deregister(self, fd: int) -> None:
        """Stop watching *fd*; a closed *fd* is simply forgotten.

        :raises FileNotFoundError: *fd* is not recorded, or its record is stale
            (the record is dropped).
        :raises ValueError: the backend is closed.
        """
        with self._lock:
            self._check_open()
            old = self._entries.get(fd)
            if old is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            try:
                self._check_live(fd, old)
            except FileNotFoundError:
                raise
            except OSError:
                return  # closed behind our back: _check_live dropped the record
            self._remove(fd)

    def forget(self, fd: int) -> None:
        """Drop every record of *fd*; never fails."""
        with self._lock:
            if not self._closed:
                self._remove(fd)

    def rearm(self, fd: int, direction: int) -> None:
        """Re-arm *direction* (an Interest bit) of an EDGE registration.

        Called through a source's ``_rearm`` hook when a ``try_*`` call would
        block, from any thread; a poller blocked in another thread is woken
        so that it watches the direction again.  Cheap when already armed.
        """
        entry = self._entries.get(fd)
        # Unlocked fast path: the would-block path of every metalio I/O call
        # lands here, and the direction is usually armed already.
        if entry is None or entry.mode != EDGE or not direction & entry.interest & ~entry.armed:
            return
        with self._lock:
            if self._closed or self._entries.get(fd) is not entry or entry.stale:
                return
            new = direction & entry.interest & ~entry.armed
            if not new:
                return
            entry.armed |= new
            self._edges.rearmed(fd, entry)
            self._changed(fd)

    # -- polling ---------------------------------------------------------------

    def poll(self, timeout: float | None, maxevents: int) -> list[tuple[int, int]]:
        """Wait at most *timeout* seconds and return at most *maxevents* events.

        :raises RuntimeError: another thread is polling this backend.
        :raises ValueError: the backend is closed, also by another thread
            while this one waited.
        :raises Exception: whatever a signal handler raised while waiting.
        """
        if not self._guard.acquire(False):
            raise RuntimeError(
                f"another thread is already polling; the {self.name} backend allows one "
                "polling thread (use epoll or kqueue to poll from several threads)"
            )
        lock = self._lock
        wakeup = self._wakeup
        try:
            with lock:
                if self._closed:
                    raise ValueError("I/O operation on a closed Poll")
                self._polling = True
                if self._pending:
                    out, stale = self._pending.take(maxevents, self._entries)
                    self._retire(stale)
                    if out:
                        return out
                early: list[tuple[int, int]] | None = None
                if self._edges.disarmed:
                    early, stale = self._edges.run()
                    self._retire(stale)
                self._sync()
                wakeup.enter_wait()
            main = self._main
            assert main is not None
            wait = main.wait
            # With events from the probe in hand, only look, do not wait.
            t = 0.0 if early else timeout
            deadline = time.monotonic() + t if t else 0.0
            while True:
                results = wait(t)
                with lock:
                    wakeup.in_wait = False
                    if self._closed:
                        raise ValueError("the Poll was closed while polling")
                    self._retry = False
                    out = self._process(results) if results else []
                    if early:
                        out[:0] = early
                        early = None
                    if out:
                        if len(out) > maxevents:
                            self._pending.defer(out[maxevents:], self._entries)
                            del out[maxevents:]
                        return out
                    if wakeup.take_interrupt():
                        return out  # interrupt(): leave now
                    # Nothing for the caller.  A real timeout returns; an
                    # internal wake or a dropped stale fd waits again for the
                    # time that is left (a last look without blocking if none).
                    if not self._retry and (not results or t == 0):
                        return out
                    if t:
                        t = max(0.0, deadline - time.monotonic())
                    self._sync()
                    wakeup.enter_wait()
        finally:
            with lock:
                wakeup.in_wait = False
                self._polling = False
                if self._closed:
                    self._release()
            self._guard.release()

    def _process(self, results: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Turn kernel results into events and disarm what fired.  Lock held."""
        entries = self._entries
        allowed = ALLOWED
        dirty = self._dirty
        fstat = os.fstat
        directions = DIRECTIONS
        edges = self._edges
        disarmed = edges.disarmed
        probe_dirty = edges.dirty
        out: list[tuple[int, int]] = []
        append = out.append
        for fd, rev in results:
            entry = entries.get(fd)
            if entry is None:
                if fd == self._wakeup.fd:
                    self._wakeup.drained()
                continue  # removed while the kernel waited
            armed = entry.armed
            if not armed:
                continue
            if rev & POLLNVAL:
                self._mark_stale(fd, entry)
                continue
            rev &= allowed[armed]
            if not rev:
                continue
            ident = entry.ident
            if ident is not None:
                # Closed and the number reused by a file nobody registered:
                # the kernel watched the wrong file.  One fstat per event is
                # the price of never reporting it under the old token.
                try:
                    st = fstat(fd)
                except OSError:
                    self._mark_stale(fd, entry)
                    continue
                if st.st_ino != ident[1] or st.st_dev != ident[0]:
                    self._mark_stale(fd, entry)
                    continue
            mode = entry.mode
            if mode:
                if mode == ONESHOT or rev & ERRHUP:
                    entry.armed = 0
                else:
                    entry.armed = armed & ~directions[(rev | rev >> RDHUP_SHIFT) & DIRECTION_BITS]
                if mode == EDGE:
                    entry.seen |= conditions(rev)
                    disarmed[fd] = entry
                    probe_dirty.add(fd)
                dirty.add(fd)
            append((fd, rev))
        return out

    def _sync(self) -> None:
        """Bring the kernel set in line with the records.  Lock held."""
        dirty = self._dirty
        if dirty:
            main = self._main
            assert main is not None
            update = main.update
            entries = self._entries
            for fd in dirty:
                entry = entries.get(fd)
                update(fd, entry.armed if entry is not None else 0)
            dirty.clear()

    # -- record keeping (lock held) -------------------------------------------

    def _changed(self, fd: int) -> None:
        self._dirty.add(fd)
        self._wakeup.changed()

    def _remove(self, fd: int) -> None:
        entry = self._entries.pop(fd, None)
        if entry is not None:
            entry.armed = 0
            self._edges.drop(fd)
            self._changed(fd)

    def _mark_stale(self, fd: int, entry: Entry) -> None:
        entry.stale = True
        entry.armed = 0
        self._edges.drop(fd)
        self._dirty.add(fd)
        self._retry = True

    def _retire(self, stale: list[tuple[int, Entry]]) -> None:
        for fd, entry in stale:  # found by the probe or the surplus queue
            self._mark_stale(fd, entry)

    def _check_live(self, fd: int, entry: Entry) -> None:
        """Drop a record that no longer describes the open *fd*.

        :raises FileNotFoundError: the record is stale.
        :raises OSError: *fd* is closed.
        """
        try:
            problem = stale_reason(fd, entry)
        except OSError:
            self._remove(fd)
            raise
        if problem:
            self._remove(fd)
            raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered ({problem})")

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed Poll")

    # -- the rest of the interface ---------------------------------------------

    def readiness(self, native_mask: int, interest: int) -> int:
        return readiness(native_mask, interest)

    def fileno(self) -> int:
        raise io.UnsupportedOperation(f"the {self.name} backend has no pollable descriptor")

    def interrupt(self) -> None:
        """Make a thread blocked in ``poll`` return soon; release nothing.

        ``Poll.close`` calls it while a thread polls.  The flag persists until
        a ``poll`` returns because of it: an interrupt that races with the
        start of a poll is not lost.
        """
        with self._lock:
            if not self._closed:
                self._wakeup.interrupt()

    def close(self) -> None:
        """Release everything.

        Normally called when no thread polls (``Poll`` arranges that).  If one
        does, it is woken, gets ``ValueError``, and releases on its way out.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._polling:
                # The poller releases on its way out: closing the wake-up fd
                # under it could leave select(2) waiting on nothing.
                self._wakeup.wake()
                return
            self._release()

    def _release(self) -> None:
        self._wakeup.close()
        if self._main is not None:
            self._main.close()
        self._main = None
        self._edges.clear()
        self._entries.clear()
        self._dirty.clear()
        self._pending.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} registered"
        return f"<{type(self).__name__} {state}>"
