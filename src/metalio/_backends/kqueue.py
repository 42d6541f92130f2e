"""The kqueue backend: the BSDs' and macOS's readiness API.

**This backend is untested on a real kernel.**  It was written on Linux and
runs there only against ``tests/fake_kqueue.py``, a model of ``select.kqueue``
built on epoll.  The facts below come from the FreeBSD, OpenBSD and NetBSD
sources and man pages and from CPython's ``selectmodule.c``; where a fact was
not checked it says so.  Run the test suite on macOS and FreeBSD before
trusting it.

Facts about kqueue that shape this module:

* **A registration is a knote, keyed by (ident, filter).**  For descriptors
  the ident is the fd *number*.  Readable and writable are two filters,
  ``EVFILT_READ`` and ``EVFILT_WRITE``, so one source is up to two knotes,
  changed with one ``kevent()`` call, and one readiness may come back as two
  kevents.  ``poll()`` merges the kevents of one fd from one call into one
  ``(fd, mask)`` pair.  The filter numbers differ between systems (NetBSD's
  ``EVFILT_READ`` is 0, the others' -1), so they are read from the module.

* **close(2) removes the knotes of that fd number**, from every kqueue of the
  process, even when other descriptors (``dup()``, ``dup2()``, inherited) still
  refer to the same open file: the kernel walks the kqueue's list for that
  number (``knote_fdclose``).  A ``dup()`` is a new number with no knotes.  So
  there is none of epoll's dup hazard: a closed source stops reporting at
  once.  The price is that nothing in the kernel remembers a registration
  whose fd was closed behind our back, and ``EV_ADD`` on an existing knote
  silently modifies it: kqueue cannot answer "is this fd registered?".  The
  backend keeps its own table, fd -> record, and decides staleness itself: a
  record is stale when the file identity ``(st_dev, st_ino)`` from ``fstat``
  changed, or when the kernel answers ``ENOENT`` for a knote the record says
  exists (a "probe": a change without ``EV_ADD``/``EV_DELETE`` fails with
  ``ENOENT`` for a missing knote and does nothing to an existing one).  The
  probe matters: FreeBSD's ``fstat`` on a socket zeroes the buffer and fills
  in neither ``st_dev`` nor ``st_ino`` (``soo_stat``), so every socket has the
  same identity.
  kqueues are not inherited across ``fork()``.

* **EV_ADD on an existing knote updates udata and filter data, not the
  trigger flags.**  FreeBSD's ``kqueue_register`` keeps ``EV_CLEAR``,
  ``EV_ONESHOT`` and ``EV_DISPATCH`` from the first ``EV_ADD``, and does not
  enable a disabled knote unless ``EV_ENABLE`` is given.  Changing the options
  of a filter is therefore ``EV_DELETE`` + ``EV_ADD``; a change with the same
  options is done in place with ``EV_ADD | EV_ENABLE``.  Either way the
  filter is evaluated again, so a condition that holds is reported.

* **Level vs EV_CLEAR.**  A plain knote is re-checked on every scan and
  stays queued while its condition holds: LEVEL.  ``EV_CLEAR`` resets the
  knote's state after delivery; it fires again when the filter is triggered
  again (new data, freed buffer space): EDGE.

* **EV_ONESHOT deletes, EV_DISPATCH disables.**  The contract's ONESHOT keeps
  the registration (``register`` again is ``FileExistsError``, ``deregister``
  works), which is ``EV_DISPATCH``: after one delivery the kernel disables the
  knote and it stays in the kqueue; ``EV_ADD | EV_ENABLE`` re-arms it.  CPython
  exports neither ``KQ_EV_DISPATCH`` nor ``KQ_EV_RECEIPT``; both are hard-coded
  below with the value every ``<sys/event.h>`` read for this module has
  (FreeBSD, macOS, OpenBSD, NetBSD 10, DragonFly).  A kernel that ignored
  ``EV_DISPATCH`` would turn ONESHOT into LEVEL/EDGE; the backend then disables
  the knote itself on the second delivery.  Dispatch disables only the filter
  that fired, so for READABLE | WRITABLE the backend disables the other one
  and drops its event if it raced in.  Each registration carries a
  generation in ``udata``; a oneshot event whose generation is not the
  current one (it was delivered before a ``reregister``) is dropped.

* **EV_RECEIPT** makes ``kevent()`` report one result per change (``EV_ERROR``
  set, ``data`` = errno or 0) without draining pending events, so a
  registration with two filters is one call and a refusal of the second
  change is detected and rolled back.  The event list must have room for
  every change: FreeBSD silently stops applying changes when it is full.
  A kernel without ``EV_RECEIPT`` still reports failed changes that way (that
  part is ancient BSD behaviour) and would return pending events instead of
  receipts; those are kept and handed out by the next ``poll()``.

* **EV_EOF.**  On ``EVFILT_READ`` it means the peer shut down its write side
  (socket) or the writer went away (pipe, fifo); data may still be queued.
  On ``EVFILT_WRITE`` it means nothing more can be sent.  With ``EV_EOF`` a
  socket's pending error (``so_error``) is in ``fflags``: a refused
  non-blocking connect is ``EVFILT_WRITE`` + ``EV_EOF`` + ``ECONNREFUSED``.
  ``EV_ERROR`` only appears in results of changes.

* **What kqueue does differently from epoll.**  Regular files are accepted
  (``EVFILT_READ`` reports the bytes left, ``EVFILT_WRITE`` is always ready)
  where epoll refuses them with ``EPERM``.  ``EVFILT_WRITE`` on a pipe whose
  reader is gone is refused with ``EPIPE`` (FreeBSD's ``pipe_kqfilter``; mio
  works around the same on macOS, tokio-rs/mio#582; neither checked here):
  ``register`` raises ``BrokenPipeError`` and leaves nothing registered.  A peer's FIN alone is ``read_closed``; ``write_closed``
  needs the send side closed too (epoll's ``EPOLLHUP`` reports both at once).
  Older macOS releases refuse ttys and ptys in kqueue as in ``poll(2)``
  (Twisted's reason to default to select there; not checked on current
  releases); the refusal reaches the caller.

* **PRIORITY is never reported.**  No urgent-data filter is common to the
  kqueue systems (OpenBSD has ``EVFILT_EXCEPT``/``NOTE_OOB``, macOS an
  incompatible ``EVFILT_EXCEPT``, FreeBSD nothing) and CPython exports none of
  it.  The bit is accepted so portable programs run, and adds no knote: a
  registration for PRIORITY alone is recorded (register/reregister/deregister
  behave) but watches nothing, not even hang-up.  macOS does flag urgent data
  on ``EVFILT_READ`` (``EV_OOBAND``, the same bit as ``EV_FLAG1``, which other
  systems use for other things), so there a READABLE registration gets
  events for an urgent byte that ``recv()`` without ``MSG_OOB`` cannot read
  (read from the xnu source, not run).

* **Closing a kqueue does not wake a thread blocked in kevent() on it**: the
  blocked call holds a reference to the file and FreeBSD's ``kqueue_close``
  waits for it.  ``interrupt()`` registers a socketpair with ``udata`` 0 and
  makes it readable; events with ``udata`` 0 are never returned, and the
  Poll calls ``close()`` once the last poller has left.

* A kqueue descriptor is itself readable while events are pending, so
  ``fileno()`` nests a Poll in another loop.  Several threads may wait in
  ``kevent()`` on one kqueue.
"""

from __future__ import annotations

import errno
import itertools
import os
import select
import socket
import sys
import threading
import time
from typing import Any, ClassVar, Final

__all__ = ["KqueueBackend"]

# Not exported by CPython's select module; the same value in the <sys/event.h>
# of FreeBSD, macOS, OpenBSD, NetBSD >= 10 and DragonFly.
_EV_RECEIPT: Final = 0x0040
_EV_DISPATCH: Final = 0x0080

# The native mask this backend hands to Poll: its own encoding, because kqueue
# returns one kevent per filter and poll() merges them per fd.
_N_READ: Final = 0x01  # EVFILT_READ fired
_N_WRITE: Final = 0x02  # EVFILT_WRITE fired
_N_READ_EOF: Final = 0x04  # EV_EOF on EVFILT_READ: no more data will arrive
_N_WRITE_EOF: Final = 0x08  # EV_EOF on EVFILT_WRITE: nothing more can be sent
_N_ERROR: Final = 0x10  # EV_ERROR, or EV_EOF with a socket error in fflags

# udata 0 marks the backend's own knote (the close() wake-up); registrations
# use (generation << 1) | oneshot, so they are never 0.
_INTERNAL_UDATA: Final = 0
_GENERATIONS: Final = sys.maxsize >> 1


class _Record:
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


def _identity(fd: int) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of *fd*.

    :raises OSError: ``EBADF`` when *fd* is not open.
    """
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino)


def _os_error(code: int, fd: int) -> OSError:
    # OSError(errno, ...) picks the subclass (BrokenPipeError, PermissionError...).
    return OSError(code, f"{os.strerror(code)} (kqueue, fd {fd})")


class KqueueBackend:
    """``select.kqueue`` with a table of registrations and merged results.

    *select_module* is the module providing ``kqueue``, ``kevent`` and the
    ``KQ_*`` constants: the real ``select`` by default, a fake in tests.

    :raises OSError: the module has no kqueue (``ENOSYS``), or the kernel
        refused to create one.
    """

    name: ClassVar[str] = "kqueue"
    emulates_edge: ClassVar[bool] = False
    concurrent_poll: ClassVar[bool] = True
    # Merged per fd within one call, but receipts kept from a registration
    # call come back in a later poll on their own: stay on the merging path.
    unique_fds: ClassVar[bool] = False
    exact_edges: ClassVar[bool] = True
    closing_mask: ClassVar[int] = _N_READ_EOF | _N_WRITE_EOF | _N_ERROR
    native_masks: ClassVar[tuple[int, ...] | None] = None

    __slots__ = (
        "_ADD",
        "_DELETE",
        "_DISABLE",
        "_ENABLE",
        "_EOF",
        "_ERROR",
        "_FILTERS",
        "_READ",
        "_RECEIPT",
        "_TRIGGER",
        "_WRITE",
        "_closed",
        "_control",
        "_generation",
        "_interrupted",
        "_kevent",
        "_kq",
        "_lock",
        "_stolen",
        "_table",
        "_wake",
    )

    def __init__(self, select_module: Any = None) -> None:
        mod: Any = select if select_module is None else select_module
        if not hasattr(mod, "kqueue"):
            raise OSError(errno.ENOSYS, "kqueue is not available on this platform")
        self._READ: int = mod.KQ_FILTER_READ
        self._WRITE: int = mod.KQ_FILTER_WRITE
        self._ADD: int = mod.KQ_EV_ADD
        self._DELETE: int = mod.KQ_EV_DELETE
        self._ENABLE: int = mod.KQ_EV_ENABLE
        self._DISABLE: int = mod.KQ_EV_DISABLE
        self._EOF: int = mod.KQ_EV_EOF
        self._ERROR: int = mod.KQ_EV_ERROR
        # Prefer the module's value should a future CPython export them.
        self._RECEIPT: int = getattr(mod, "KQ_EV_RECEIPT", _EV_RECEIPT)
        dispatch: int = getattr(mod, "KQ_EV_DISPATCH", _EV_DISPATCH)
        clear: int = mod.KQ_EV_CLEAR
        # Interest bits (READABLE=1, WRITABLE=2, PRIORITY=4) -> filters.
        # PRIORITY adds none: see the module docstring.
        self._FILTERS: tuple[tuple[int, ...], ...] = tuple(
            ((self._READ,) if i & 1 else ()) + ((self._WRITE,) if i & 2 else ()) for i in range(8)
        )
        # PollOpt bits (LEVEL=1, EDGE=2, ONESHOT=4) -> trigger flags.
        self._TRIGGER: tuple[int, ...] = tuple(
            (clear if o & 2 else 0) | (dispatch if o & 4 else 0) for o in range(8)
        )
        self._kevent: Any = mod.kevent
        self._kq: Any = mod.kqueue()  # close-on-exec: CPython makes it non-inheritable
        self._control: Any = self._kq.control
        self._lock = threading.Lock()
        self._table: dict[int, _Record] = {}
        self._generation = itertools.count(1)
        self._stolen: list[Any] = []
        self._closed = False
        self._interrupted = False
        self._wake: tuple[socket.socket, socket.socket] | None = None

    # -- registration ------------------------------------------------------

    def register(self, fd: int, interest: int, opts: int) -> None:
        """Add the knotes for *interest* (one ``kevent()`` call).

        :raises FileExistsError: *fd* is registered and its knotes still exist.
        :raises OSError: the kernel refused a knote (``EBADF``, ``EPIPE`` for
            the write side of a widowed pipe, ``EINVAL`` ...); nothing is left
            registered.
        """
        with self._lock:
            ident = _identity(fd)
            old = self._table.get(fd)
            if old is not None:
                if old.ident == ident and self._knotes_exist(fd, old):
                    raise FileExistsError(errno.EEXIST, f"fd {fd} is already registered")
                # Stale: fd was closed (which removed its knotes) and reused.
                del self._table[fd]
            rec = self._new_record(interest, opts, ident)
            flags = self._ADD | self._RECEIPT | self._TRIGGER[opts]
            changes = [self._kevent(fd, f, flags, 0, 0, rec.udata) for f in rec.filters]
            if changes:
                errs = self._submit(changes)
                failed = next((e for e in errs if e), 0)
                if failed:
                    self._undo(fd, [c for c, e in zip(changes, errs, strict=True) if not e])
                    raise _os_error(failed, fd)
            self._table[fd] = rec

    def reregister(self, fd: int, interest: int, opts: int) -> None:
        """Replace interest and options of *fd* and re-arm it.

        A filter kept with the same options is modified in place (new udata,
        ``EV_ENABLE``); a dropped filter is deleted; a filter whose options
        change is deleted and added again.

        :raises FileNotFoundError: *fd* is not registered, or its record was
            stale (the record is dropped).
        :raises OSError: the kernel refused a change (the old registration is
            restored), or *fd* is not open (``EBADF``).
        """
        with self._lock:
            old = self._table.get(fd)
            if old is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            ident = _identity(fd)
            if ident != old.ident:
                del self._table[fd]
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            new = self._new_record(interest, opts, ident)
            trigger = self._TRIGGER[opts]
            same_opts = old.opts == opts
            # Deletes first: the kernel does not mind the order, but no moment
            # then has a dropped filter next to a new one with other flags.
            deletes: list[Any] = []
            adds: list[Any] = []
            for f in (self._READ, self._WRITE):
                was, wanted = f in old.filters, f in new.filters
                if was and wanted and same_opts:
                    # Modify in place: new udata, re-enabled if dispatched.
                    flags = self._ADD | self._ENABLE | self._RECEIPT | trigger
                    adds.append(self._kevent(fd, f, flags, 0, 0, new.udata))
                    continue
                if was:
                    deletes.append(self._kevent(fd, f, self._DELETE | self._RECEIPT, 0, 0, 0))
                if wanted:
                    flags = self._ADD | self._RECEIPT | trigger
                    adds.append(self._kevent(fd, f, flags, 0, 0, new.udata))
            changes: list[Any] = deletes + adds
            # Change kinds, parallel to changes: "probe", "delete", "add".
            kinds = ["delete"] * len(deletes) + ["add"] * len(adds)
            if old.filters and not deletes:
                # Nothing above fails for a knote that close(2) removed (EV_ADD
                # recreates it), so ask the kernel first, in the same call.
                probe = self._kevent(fd, old.filters[0], self._RECEIPT, 0, 0, old.udata)
                changes.insert(0, probe)
                kinds.insert(0, "probe")
            if changes:
                errs = self._submit(changes)
                # ENOENT for a knote the record says exists: close(2) removed it.
                stale = any(
                    e == errno.ENOENT and k != "add" for k, e in zip(kinds, errs, strict=True)
                )
                failed = next((e for e in errs if e and e != errno.ENOENT), 0)
                if stale or failed:
                    applied = [
                        c
                        for c, k, e in zip(changes, kinds, errs, strict=True)
                        if not e and k != "probe"
                    ]
                    if stale:
                        # The knotes we just added watch a file nobody registered.
                        self._undo(fd, [c for c in applied if c.flags & self._ADD])
                        del self._table[fd]
                        raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
                    self._restore(fd, old, applied)
                    raise _os_error(failed, fd)
            self._table[fd] = new

    def deregister(self, fd: int) -> None:
        """Delete the knotes of *fd* and forget it.

        :raises FileNotFoundError: *fd* is not registered, or the record was
            stale (identity changed, or close(2) already removed the knotes).
        :raises OSError: ``EBADF`` if *fd* is closed (the record is dropped).
        """
        with self._lock:
            rec = self._table.get(fd)
            if rec is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            del self._table[fd]
            ident = _identity(fd)  # EBADF: closed behind our back; Registry accepts it
            if ident != rec.ident:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            if not rec.filters:
                return
            changes = [
                self._kevent(fd, f, self._DELETE | self._RECEIPT, 0, 0, 0) for f in rec.filters
            ]
            errs = self._submit(changes)
            if all(e == errno.ENOENT for e in errs):
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            failed = next((e for e in errs if e and e != errno.ENOENT), 0)
            if failed:
                raise _os_error(failed, fd)

    def forget(self, fd: int) -> None:
        """Drop the record of *fd*; delete its knotes if the fd is still that file."""
        with self._lock:
            rec = self._table.pop(fd, None)
            if rec is None or not rec.filters:
                return
            try:
                if _identity(fd) != rec.ident:
                    return  # closed and reused: close(2) already removed our knotes
                self._submit(
                    [
                        self._kevent(fd, f, self._DELETE | self._RECEIPT, 0, 0, 0)
                        for f in rec.filters
                    ]
                )
            except (OSError, ValueError):
                pass  # EBADF, or the kqueue is closed: nothing left to remove

    def rearm(self, fd: int, direction: int) -> None:
        """Native edge triggering needs no help from the sources."""

    # -- waiting ------------------------------------------------------------

    def poll(self, timeout: float | None, maxevents: int) -> list[tuple[int, int]]:
        """Wait for kevents and return them merged per fd.

        :raises OSError: from ``kevent()``.
        :raises ValueError: the kqueue was closed.
        """
        deadline: float | None = None
        while True:
            if self._stolen:
                with self._lock:
                    kevs = self._stolen[:maxevents]
                    del self._stolen[:maxevents]
            else:
                kevs = self._control(None, maxevents, timeout)
                if not kevs:
                    return []
            merged = self._merge(kevs)
            if merged or self._interrupted or timeout == 0.0:
                return list(merged.items())
            # Every kevent was internal or a oneshot that another thread
            # already delivered: nothing happened for the caller, keep waiting.
            # The deadline starts here, so this rare path may wait up to twice
            # the timeout, never less than it.
            if timeout is not None:
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                timeout = max(0.0, deadline - now)

    def _merge(self, kevs: list[Any]) -> dict[int, int]:
        read_f = self._READ
        write_f = self._WRITE
        eof = self._EOF
        error = self._ERROR
        merged: dict[int, int] = {}
        oneshot: list[Any] | None = None
        for kev in kevs:
            udata = kev.udata
            if udata & 1 or udata == _INTERNAL_UDATA:
                if udata:
                    if oneshot is None:
                        oneshot = []
                    oneshot.append(kev)
                continue
            flags = kev.flags
            flt = kev.filter
            if flt == read_f:
                bits = _N_READ | _N_READ_EOF if flags & eof else _N_READ
            elif flt == write_f:
                bits = _N_WRITE | _N_WRITE_EOF if flags & eof else _N_WRITE
            else:
                continue
            if flags & error or (flags & eof and kev.fflags):
                bits |= _N_ERROR
            fd = kev.ident
            merged[fd] = merged.get(fd, 0) | bits
        if oneshot is not None:
            self._settle_oneshot(oneshot, merged)
        return merged

    def _settle_oneshot(self, kevs: list[Any], merged: dict[int, int]) -> None:
        """Deliver at most one event per arming of a ONESHOT registration."""
        read_f = self._READ
        disable = self._DISABLE | self._RECEIPT
        changes: list[Any] = []
        with self._lock:
            fired: dict[int, list[int]] = {}  # fd -> filters delivered by this call
            for kev in kevs:
                fd = kev.ident
                rec = self._table.get(fd)
                if rec is None or rec.udata != kev.udata:
                    continue  # an arming that reregister/deregister replaced
                flt = kev.filter
                if rec.armed:
                    rec.armed = False
                    fired[fd] = [flt]
                elif fd in fired:
                    fired[fd].append(flt)
                else:
                    # The sibling filter raced in from another thread's call, or
                    # the kernel ignored EV_DISPATCH: keep the knote off.
                    changes.append(self._kevent(fd, flt, disable, 0, 0, rec.udata))
                    continue
                flags = kev.flags
                if flt == read_f:
                    bits = _N_READ | (_N_READ_EOF if flags & self._EOF else 0)
                else:
                    bits = _N_WRITE | (_N_WRITE_EOF if flags & self._EOF else 0)
                if flags & self._ERROR or (flags & self._EOF and kev.fflags):
                    bits |= _N_ERROR
                merged[fd] = merged.get(fd, 0) | bits
            for fd, delivered in fired.items():
                rec = self._table[fd]
                # EV_DISPATCH disabled the filters that fired; "one event" means
                # the whole registration, so disable the others too.
                changes.extend(
                    self._kevent(fd, f, disable, 0, 0, rec.udata)
                    for f in rec.filters
                    if f not in delivered
                )
            if changes:
                try:
                    self._submit(changes)
                except (OSError, ValueError):
                    pass  # closed fd (no knotes left) or closed kqueue

    def readiness(self, native_mask: int, interest: int) -> int:
        ready = 0
        if native_mask & _N_READ and interest & 1:
            ready |= 1
        if native_mask & _N_WRITE and interest & 2:
            ready |= 2
        if native_mask & _N_ERROR:
            ready |= 8
        if native_mask & _N_READ_EOF:
            ready |= 16
        if native_mask & _N_WRITE_EOF:
            ready |= 32
        # A read or write that will fail or see EOF at once is "ready": report
        # it as such, within what the registration asked for.
        if ready & (8 | 16) and interest & 1:
            ready |= 1
        if ready & (8 | 32) and interest & 2:
            ready |= 2
        return ready

    def fileno(self) -> int:
        return int(self._kq.fileno())

    def interrupt(self) -> None:
        """Make every thread blocked in ``poll`` return, releasing nothing.

        kevent() blocked in another thread does not return when the kqueue is
        closed, so a socketpair is registered (udata 0: never reported) and
        made readable.  It stays until ``close``: a woken poller must still
        find it.
        """
        with self._lock:
            if self._wake is not None or self._closed:
                return
            try:
                pair = socket.socketpair()
            except OSError:
                return  # no descriptors left: a blocked poller stays blocked
            self._wake = pair
            self._interrupted = True
        try:
            wake = self._kevent(pair[0].fileno(), self._READ, self._ADD, 0, 0, _INTERNAL_UDATA)
            self._control([wake], 0, 0)
            pair[1].send(b"\0")
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """Release the kqueue and the wake-up socketpair.  Harmless twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._table.clear()
            pair, self._wake = self._wake, None
        try:
            self._kq.close()
        finally:
            if pair is not None:
                pair[0].close()
                pair[1].close()

    # -- internals ----------------------------------------------------------

    def _new_record(self, interest: int, opts: int, ident: tuple[int, int]) -> _Record:
        oneshot = 1 if opts & 4 else 0
        udata = ((next(self._generation) % _GENERATIONS + 1) << 1) | oneshot
        return _Record(interest, opts, ident, self._FILTERS[interest], udata)

    def _knotes_exist(self, fd: int, rec: _Record) -> bool:
        """Whether the kernel still has the knotes of *rec* (close(2) removes them)."""
        if not rec.filters:
            return True  # PRIORITY alone: nothing to ask, trust the identity
        probe = self._kevent(fd, rec.filters[0], self._RECEIPT, 0, 0, rec.udata)
        (err,) = self._submit([probe])
        if err == errno.ENOENT:
            return False
        if err:
            raise _os_error(err, fd)
        return True

    def _submit(self, changes: list[Any]) -> list[int]:
        """Apply *changes* in one ``kevent()`` call; one errno (0: done) per change.

        :raises OSError: the call itself failed.
        :raises ValueError: the kqueue is closed.
        """
        results = self._control(changes, len(changes), 0)
        errs = [0] * len(changes)
        cursor = 0
        error = self._ERROR
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

    def _undo(self, fd: int, added: list[Any]) -> None:
        """Delete the knotes of *added*, ignoring every error."""
        if not added:
            return
        try:
            self._submit(
                [self._kevent(fd, c.filter, self._DELETE | self._RECEIPT, 0, 0, 0) for c in added]
            )
        except (OSError, ValueError):
            pass

    def _restore(self, fd: int, old: _Record, applied: list[Any]) -> None:
        """Put back the knotes of *old* after a reregister failed half-way."""
        touched = {c.filter for c in applied}
        if not touched:
            return
        flags = self._ADD | self._RECEIPT | self._TRIGGER[old.opts]
        if old.opts & 4 and not old.armed:
            flags |= self._DISABLE
        # Delete and add: EV_ADD alone would not restore the trigger flags.
        order = [f for f in (self._READ, self._WRITE) if f in touched]
        changes = [self._kevent(fd, f, self._DELETE | self._RECEIPT, 0, 0, 0) for f in order]
        changes += [self._kevent(fd, f, flags, 0, 0, old.udata) for f in order if f in old.filters]
        try:
            self._submit(changes)
        except (OSError, ValueError):
            pass
