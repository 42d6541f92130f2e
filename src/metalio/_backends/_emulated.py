"""Edge and oneshot triggering built in user space over a level-triggered kernel call.

poll(2) and select(2) answer one question: *which of these descriptors are
ready right now?*  They keep no state between calls, so they cannot say what
changed since the last call (edge), and they cannot switch a descriptor off
after it fired (oneshot).  They also know nothing about the descriptors they
are asked about: a closed one is reported as ``POLLNVAL`` by poll(2) and makes
select(2) fail as a whole with ``EBADF``.  Everything else the contract wants
is built here, once, for both backends.  Each backend only supplies a *kernel
set* (``update(fd, directions)``, ``wait(timeout)``, ``close()``) that speaks
its system call.

State per descriptor
--------------------
A record holds the interest, the trigger mode and the *armed* directions
(read = 1, write = 2, priority = 4: the ``Interest`` bits).  Only armed
directions are put in the kernel set; a descriptor with nothing armed is
*removed* from it, because poll(2) reports ``POLLHUP``/``POLLERR`` even for
an fd that asks for no events.  The kernel set is rebuilt lazily: changes
mark the fd dirty and the polling thread applies them before it waits.

LEVEL
    Every direction of the interest stays armed.  Exact.
ONESHOT (``LEVEL|ONESHOT`` and ``EDGE|ONESHOT``)
    The first event disarms everything until ``reregister``.  An event that
    was found but did not fit into ``maxevents`` already counts.  Exact.
EDGE
    An event disarms the directions it reported (all of them on hang-up or
    error).  A disarmed direction is re-armed

    1. by ``rearm(fd, direction)``, which metalio's own sources call through
       their ``_rearm`` hook whenever a ``try_*`` call returns ``None``.  At
       that instant the direction is known to be drained, so whatever arrives
       next is new readiness: this path is exact and race-free;
    2. by the *probe*: at the start of each ``poll()`` that has disarmed
       directions, one zero-timeout kernel call over just those directions.
       A direction that is no longer ready was drained, so it is re-armed; one
       that is still ready stays silent (no busy loop for an undrained
       source);
    3. by ``reregister``.

    epoll also reports a hang-up, an error or a half-close that happens
    while the program leaves a direction undrained (it is a new wake-up of
    the file).  The probe does the same: a condition (``POLLHUP``,
    ``POLLERR``, ``POLLRDHUP``) it sees on a disarmed source that was not
    part of the source's last event is reported once.  That is how a pipe
    writer registered EDGE WRITABLE, disarmed after its first event and
    writable ever since, still learns that the reader went away.

Documented difference (EDGE with raw descriptors)
    For raw sockets or fds that are not metalio types, nothing tells the
    backend when the program drained them, so the probe decides.  Data that
    arrives *between the program's drain and its next* ``poll()`` makes the
    probe find the source still ready, and it is not reported until the
    program drains the source again (and a later ``poll()`` finds it empty)
    or reregisters it.  The same holds while another thread is already
    blocked in ``poll()``.  With raw descriptors on the poll and select
    backends use LEVEL or ONESHOT, or wrap them in metalio's types, whose
    ``try_*`` calls re-arm exactly at the would-block.  A direction left
    undrained costs one extra zero-timeout system call per ``poll()``.

Capacity
    One kernel call may find more ready descriptors than ``maxevents``.  The
    surplus is queued and returned, before any new kernel call, by the next
    ``poll()``; queued events whose record was removed or replaced meanwhile
    are dropped.  Because the whole queue is delivered before the kernel is
    asked again, descriptors late in the set are never starved.

Threads
    Registration calls and ``rearm`` may come from any thread.  While a poll
    is blocked, a change writes one byte to an internal socketpair that sits
    in the kernel set (and is never reported); the poller drains it, applies
    the change and waits again for the time that is left, so an internal
    wake never ends a wait early with nothing.  Only one thread may poll at
    a time (``RuntimeError`` otherwise).  ``interrupt()`` (what ``Poll.close``
    uses) wakes a blocked poller the same way and makes it return; ``close()``
    releases everything, and if a poller is still inside it leaves the
    release to that poller, because closing the pair under a waiting
    select(2) could leave it waiting on nothing.

Stale descriptors
    A record keeps the file identity ``(st_dev, st_ino)`` taken at
    registration.  ``POLLNVAL``/``EBADF`` marks a record stale and drops the
    fd from the kernel set without an event; the record stays so that
    ``deregister``/``forget`` still work.  ``register`` replaces a stale
    record, or one whose identity no longer matches the open file: a new
    source that reuses a closed source's number registers at once.  A
    source can also be closed and its number reused by a file nobody
    registered, both between two polls; the kernel then watches the new
    file under the old record.  So every event is checked with one
    ``os.fstat`` before it is reported (about 0.4 microseconds) and a
    mismatch is treated like ``POLLNVAL``: a closed source is never reported,
    and never makes ``poll()`` spin.

    Documented difference (Windows): ``os.fstat`` cannot describe sockets,
    so there is no identity.  A record is then treated as live:
    registering a new socket that reuses the handle value of a closed,
    not-deregistered one raises ``FileExistsError`` until the old one is
    deregistered (which succeeds), and the reuse window above is open.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import sys
import threading
import time
from collections import deque
from typing import ClassVar, Final, Protocol

__all__ = [
    "POLLERR",
    "POLLHUP",
    "POLLIN",
    "POLLNVAL",
    "POLLOUT",
    "POLLPRI",
    "POLLRDHUP",
    "EmulatedBackend",
    "KernelSet",
    "readiness",
]

# The native mask both backends return: poll(2)'s bit values on Linux and the
# BSDs (the poll backend translates where a platform differs).
POLLIN: Final = 0x001
POLLPRI: Final = 0x002
POLLOUT: Final = 0x004
POLLERR: Final = 0x008
POLLHUP: Final = 0x010
POLLNVAL: Final = 0x020
POLLRDHUP: Final = 0x2000  # Linux only: the peer shut down its write side

_ERRHUP: Final = POLLERR | POLLHUP
# Conditions that are news even while the direction they concern is still
# ready, so the probe reports their appearance on a disarmed EDGE source.
_CONDITIONS: Final = POLLERR | POLLHUP | POLLRDHUP

# Trigger modes of a record.
_LEVEL: Final = 0
_EDGE: Final = 1
_ONESHOT: Final = 2

# Armed directions (Interest bits) -> the native bits an event may carry.
# Error and hang-up come whatever was asked for.
_ALLOWED: Final = tuple(
    ((POLLIN | POLLRDHUP) if d & 1 else 0)
    | (POLLOUT if d & 2 else 0)
    | (POLLPRI if d & 4 else 0)
    | (_ERRHUP if d else 0)
    for d in range(8)
)

# Without identities (Windows) a record cannot be proven stale by os.fstat.
_HAVE_IDENTITY: Final = sys.platform != "win32"


def _cond(mask: int) -> int:
    """The conditions in *mask*; a full hang-up implies the read side closed."""
    cond = mask & _CONDITIONS
    return cond | POLLRDHUP if cond & POLLHUP else cond


# (IN, PRI, OUT) bits -> the directions (Interest bits) they report ready.
# Indexed by ``(mask | mask >> 13) & 7``: POLLRDHUP >> 13 is POLLIN, because
# the read side closing is news for the read direction.
_DIRECTIONS: Final = tuple(
    (1 if m & POLLIN else 0) | (2 if m & POLLOUT else 0) | (4 if m & POLLPRI else 0)
    for m in range(8)
)


def readiness(native_mask: int, interest: int) -> int:
    """Translate a native mask into ``Ready`` bits for a registration with *interest*.

    A read or write that will fail or see EOF at once is "ready": error and
    hang-up are folded into READABLE/WRITABLE within what was asked for, so a
    program that only checks ``readable`` acts on them instead of spinning.
    """
    ready = 0
    if native_mask & POLLIN:
        ready |= 1
    if native_mask & POLLOUT:
        ready |= 2
    if native_mask & POLLPRI:
        ready |= 4
    if native_mask & POLLERR:
        ready |= 8
    if native_mask & POLLHUP:
        ready |= 16 | 32
    if native_mask & POLLRDHUP:
        ready |= 16
    if ready & (8 | 16) and interest & 1:
        ready |= 1
    if ready & (8 | 32) and interest & 2:
        ready |= 2
    return ready


def _identity(fd: int) -> tuple[int, int] | None:
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


class _Entry:
    """One registration.  Replaced as a whole by ``register``/``reregister``."""

    __slots__ = ("armed", "ident", "interest", "mode", "seen", "stale")

    def __init__(self, interest: int, opts: int, ident: tuple[int, int] | None) -> None:
        self.interest = interest
        self.mode = _ONESHOT if opts & 4 else (_EDGE if opts & 2 else _LEVEL)
        self.armed = interest
        self.ident = ident
        self.stale = False
        self.seen = 0  # EDGE: conditions (_CONDITIONS) already reported


class EmulatedBackend:
    """The shared core of the poll and select backends.

    Subclasses set ``name`` and implement ``_new_set()``; they may override
    ``_check_new(fd, count)`` to refuse descriptors their system call cannot
    take.
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
        "_disarmed",
        "_entries",
        "_guard",
        "_in_wait",
        "_interrupted",
        "_lock",
        "_main",
        "_pending",
        "_polling",
        "_probe_dirty",
        "_probe_set",
        "_retry",
        "_wake_fd",
        "_wake_r",
        "_wake_w",
        "_woken",
    )

    def __init__(self) -> None:
        # Re-entrant: a signal handler running on the polling thread while it
        # holds the lock may still register or deregister.
        self._lock = threading.RLock()
        self._guard = threading.Lock()  # held by the one thread inside poll()
        self._entries: dict[int, _Entry] = {}
        self._dirty: set[int] = set()  # fds whose kernel-set membership may differ
        self._disarmed: dict[int, _Entry] = {}  # EDGE records with a disarmed direction
        self._probe_dirty: set[int] = set()
        self._pending: deque[tuple[int, int, _Entry]] = deque()
        self._closed = False
        self._polling = False
        self._in_wait = False
        self._woken = False
        self._retry = False
        self._interrupted = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._wake_fd = -1
        self._main: KernelSet | None = None
        self._probe_set: KernelSet | None = None
        # Sockets are close-on-exec (non-inheritable) since Python 3.4.
        rsock, wsock = socket.socketpair()
        self._wake_r = rsock
        self._wake_w = wsock
        try:
            rsock.setblocking(False)
            wsock.setblocking(False)
            self._wake_fd = rsock.fileno()
            self._check_internal(self._wake_fd)
            self._main = self._new_set()
            self._probe_set = self._new_set()
            self._main.update(self._wake_fd, 1)
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
        ident = _identity(fd)
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
            entries[fd] = _Entry(interest, opts, ident)
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
            if self._disarmed.pop(fd, None) is not None:
                self._probe_dirty.add(fd)
            self._entries[fd] = _Entry(interest, opts, old.ident)
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
        """Re-arm *direction* (1 read, 2 write) of an EDGE registration.

        Called through a source's ``_rearm`` hook when a ``try_*`` call would
        block, from any thread; a poller blocked in another thread is woken
        so that it watches the direction again.  Cheap when already armed.
        """
        entry = self._entries.get(fd)
        # Unlocked fast path: the would-block path of every metalio I/O call
        # lands here, and the direction is usually armed already.
        if entry is None or entry.mode != _EDGE or not direction & entry.interest & ~entry.armed:
            return
        with self._lock:
            if self._closed or self._entries.get(fd) is not entry or entry.stale:
                return
            new = direction & entry.interest & ~entry.armed
            if not new:
                return
            entry.armed |= new
            if entry.armed == entry.interest:
                self._disarmed.pop(fd, None)
            self._probe_dirty.add(fd)
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
        try:
            with lock:
                if self._closed:
                    raise ValueError("I/O operation on a closed Poll")
                self._polling = True
                if self._pending:
                    out = self._take_pending(maxevents)
                    if out:
                        return out
                early = self._probe() if self._disarmed else None
                self._sync()
                self._enter_wait()
            main = self._main
            assert main is not None
            wait = main.wait
            # With events from the probe in hand, only look, do not wait.
            t = 0.0 if early else timeout
            deadline = time.monotonic() + t if t else 0.0
            while True:
                results = wait(t)
                with lock:
                    self._in_wait = False
                    if self._closed:
                        raise ValueError("the Poll was closed while polling")
                    self._retry = False
                    out = self._process(results) if results else []
                    if early:
                        out[:0] = early
                        early = None
                    if out:
                        if len(out) > maxevents:
                            self._defer(out, maxevents)
                            del out[maxevents:]
                        return out
                    if self._interrupted:
                        self._interrupted = False  # interrupt(): leave now
                        return out
                    # Nothing for the caller.  A real timeout returns; an
                    # internal wake or a dropped stale fd waits again for the
                    # time that is left (a last look without blocking if none).
                    if not self._retry and (not results or t == 0):
                        return out
                    if t:
                        t = max(0.0, deadline - time.monotonic())
                    self._sync()
                    self._enter_wait()
        finally:
            with lock:
                self._in_wait = False
                self._polling = False
                if self._closed:
                    self._release()
            self._guard.release()

    def _process(self, results: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Turn kernel results into events and disarm what fired.  Lock held."""
        entries = self._entries
        allowed = _ALLOWED
        dirty = self._dirty
        fstat = os.fstat
        directions = _DIRECTIONS
        out: list[tuple[int, int]] = []
        append = out.append
        for fd, rev in results:
            entry = entries.get(fd)
            if entry is None:
                if fd == self._wake_fd:
                    self._drain_wake()
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
                if mode == _ONESHOT or rev & _ERRHUP:
                    entry.armed = 0
                else:
                    entry.armed = armed & ~directions[(rev | rev >> 13) & 7]
                if mode == _EDGE:
                    entry.seen |= _cond(rev)
                    self._disarmed[fd] = entry
                    self._probe_dirty.add(fd)
                dirty.add(fd)
            append((fd, rev))
        return out

    def _probe(self) -> list[tuple[int, int]]:
        """Re-arm the disarmed EDGE directions that are no longer ready.  Lock held.

        Returns events for conditions that appeared on a disarmed source since
        its last event (hang-up, error, read side closed): epoll reports those
        as a new edge, and a source with nothing armed would never hear of
        them otherwise (a pipe writer whose reader went away).
        """
        disarmed = self._disarmed
        pdirty = self._probe_dirty
        probe = self._probe_set
        assert probe is not None
        if pdirty:
            update = probe.update
            for fd in pdirty:
                entry = disarmed.get(fd)
                update(fd, entry.interest & ~entry.armed if entry is not None else 0)
            pdirty.clear()
        results = probe.wait(0)
        dirty = self._dirty
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
        get = disarmed.get
        directions = _DIRECTIONS
        for fd, rev in ready.items():
            entry = get(fd)
            if entry is None:
                continue
            # Rare: closed, hung up, failing or half-closed.
            if (rev & (_CONDITIONS | POLLNVAL) or entry.seen) and self._probe_news(
                fd, entry, rev, events
            ):
                continue
            # Directions still ready stay silent; the others were drained.
            new = entry.interest & ~entry.armed & ~directions[(rev | rev >> 13) & 7]
            if new:
                entry.armed |= new
                if entry.armed == entry.interest:
                    del disarmed[fd]
                dirty.add(fd)
                pdirty.add(fd)
        return events

    def _probe_news(self, fd: int, entry: _Entry, rev: int, events: list[tuple[int, int]]) -> bool:
        """The probe's slow path; True when *fd* is settled (nothing to re-arm)."""
        if rev & POLLNVAL or not self._alive(fd, entry):
            self._mark_stale(fd, entry)
            return True
        cond = _cond(rev)
        fresh = cond & ~entry.seen
        # Forget what cleared (it may be news again later), but only what this
        # probe could see: POLLRDHUP needs the read direction asked for.
        seeable = _CONDITIONS if (entry.interest & ~entry.armed) & 1 else _ERRHUP
        entry.seen = (entry.seen & ~seeable) | cond
        if fresh:
            events.append((fd, rev & _ALLOWED[entry.interest]))
            if fresh & _ERRHUP:
                entry.armed = 0
                self._dirty.add(fd)
                self._probe_dirty.add(fd)
                return True
        # Still hung up or failing: stays silent.
        return bool(cond & _ERRHUP)

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

    def _take_pending(self, maxevents: int) -> list[tuple[int, int]]:
        """Events found earlier that did not fit, still valid.  Lock held."""
        pending = self._pending
        entries = self._entries
        out: list[tuple[int, int]] = []
        while pending and len(out) < maxevents:
            fd, rev, entry = pending.popleft()
            if entries.get(fd) is entry and not entry.stale:
                if self._alive(fd, entry):
                    out.append((fd, rev))
                else:
                    self._mark_stale(fd, entry)
        return out

    def _defer(self, out: list[tuple[int, int]], maxevents: int) -> None:
        get = self._entries.get
        append = self._pending.append
        for fd, rev in out[maxevents:]:
            entry = get(fd)
            # None: a probe event whose fd was removed while the kernel waited.
            if entry is not None:
                append((fd, rev, entry))

    # -- record keeping (lock held) -------------------------------------------

    def _enter_wait(self) -> None:
        self._in_wait = True
        if self._interrupted and not self._woken:
            # interrupt() came before this wait began: make it return at once.
            self._woken = True
            self._send_wake()

    def _changed(self, fd: int) -> None:
        self._dirty.add(fd)
        if self._in_wait and not self._woken:
            # The poller waits on the old set: make it come back and rebuild.
            self._woken = True
            self._send_wake()

    def _remove(self, fd: int) -> None:
        entry = self._entries.pop(fd, None)
        if entry is not None:
            entry.armed = 0
            if self._disarmed.pop(fd, None) is not None:
                self._probe_dirty.add(fd)
            self._changed(fd)

    def _mark_stale(self, fd: int, entry: _Entry) -> None:
        entry.stale = True
        entry.armed = 0
        if self._disarmed.pop(fd, None) is not None:
            self._probe_dirty.add(fd)
        self._dirty.add(fd)
        self._retry = True

    @staticmethod
    def _alive(fd: int, entry: _Entry) -> bool:
        """Whether *fd* still names the file *entry* was registered for."""
        ident = entry.ident
        if ident is None:
            return True
        try:
            st = os.fstat(fd)
        except OSError:
            return False
        return st.st_ino == ident[1] and st.st_dev == ident[0]

    def _check_live(self, fd: int, entry: _Entry) -> None:
        """Drop a record that no longer describes the open *fd*.

        :raises FileNotFoundError: the record is stale.
        :raises OSError: *fd* is closed.
        """
        if entry.stale:
            self._remove(fd)
            raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered (closed)")
        if entry.ident is None:
            return
        try:
            ident = _identity(fd)
        except OSError:
            self._remove(fd)
            raise
        if ident != entry.ident:
            self._remove(fd)
            raise FileNotFoundError(
                errno.ENOENT, f"fd {fd} is not registered (it now names another file)"
            )

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed Poll")

    def _send_wake(self) -> None:
        wsock = self._wake_w
        if wsock is not None:
            try:
                wsock.send(b"\0")
            except OSError:
                pass  # buffer full: a wake is pending anyway

    def _drain_wake(self) -> None:
        rsock = self._wake_r
        if rsock is not None:
            try:
                while rsock.recv(4096):
                    pass
            except OSError:
                pass  # BlockingIOError: drained
        self._woken = False

    # -- the rest of the interface ---------------------------------------------

    def readiness(self, native_mask: int, interest: int) -> int:
        return readiness(native_mask, interest)

    def fileno(self) -> int:
        raise io.UnsupportedOperation(f"the {self.name} backend has no pollable descriptor")

    def interrupt(self) -> None:
        """Make a thread blocked in ``poll`` return soon; release nothing.

        ``Poll.close`` calls it while a thread polls, and ``close`` once that
        thread has left.  The flag persists until a ``poll`` returns because
        of it, so an interrupt that races with the start of a poll is not
        lost.
        """
        with self._lock:
            if self._closed:
                return
            self._interrupted = True
            if self._in_wait and not self._woken:
                self._woken = True
                self._send_wake()

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
                # The poller releases on its way out; closing the pair under
                # its feet could leave select(2) waiting on nothing.
                self._woken = True
                self._send_wake()
                return
            self._release()

    def _release(self) -> None:
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._wake_r = self._wake_w = None
        for kset in (self._main, self._probe_set):
            if kset is not None:
                kset.close()
        self._main = self._probe_set = None
        self._entries.clear()
        self._disarmed.clear()
        self._dirty.clear()
        self._probe_dirty.clear()
        self._pending.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._entries)} registered"
        return f"<{type(self).__name__} {state}>"
