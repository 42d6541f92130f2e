"""The kqueue backend: the BSDs' and macOS's readiness API.

**This backend is untested on a real kernel.**  It was written on Linux and
runs there only against ``tests/fake_kqueue.py``, a model of ``select.kqueue``
built on epoll.  The kernel facts it relies on, with their sources and what
was not checked, are in docs/backends.md ("kqueue"); run the test suite on
macOS and FreeBSD before trusting it.

What this module owns: the table fd -> record of what was registered (kqueue
cannot answer "is this fd registered?": ``EV_ADD`` on an existing knote
silently modifies it, and close(2) drops knotes without a trace), the
staleness decisions (the file identity ``(st_dev, st_ino)`` changed, or a
probe finds a knote gone), merging the per-filter kevents of one call into
one ``(fd, mask)`` pair, settling ONESHOT (``EV_DISPATCH`` disables only the
filter that fired: the other is disabled here, and a oneshot event of an
older ``udata`` generation is dropped), and the interrupt wake-up.

What it leaves to others: building and submitting changes with receipts
(``_kqueue_changes``), the mask encoding and its translation into ``Ready``
(``_kqueue_mask``), and tokens (``metalio.poll``).

Two kernel facts shape the code here.  Closing a kqueue does not wake a
thread blocked in ``kevent()`` on it (the blocked call holds a reference),
so ``interrupt()`` registers a ``WakeFd`` with ``udata`` 0, which is never
reported.  And a kqueue descriptor is itself readable while events are
pending, so ``fileno()`` nests a Poll in another loop.
"""

from __future__ import annotations

import errno
import select
import threading
import time
from typing import Any, ClassVar

from .._wakefd import WakeFd
from ._kqueue_changes import (
    INTERNAL_UDATA,
    ONESHOT_UDATA,
    Changelist,
    Record,
    identity,
    os_error,
)
from ._kqueue_mask import CLOSING_MASK, KeventBits, readiness

__all__ = ["KqueueBackend"]


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
    closing_mask: ClassVar[int] = CLOSING_MASK
    native_masks: ClassVar[tuple[int, ...] | None] = None

    __slots__ = (
        "_READ",
        "_WRITE",
        "_bits",
        "_changes",
        "_closed",
        "_control",
        "_interrupted",
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
        self._bits = KeventBits(mod)
        self._stolen: list[Any] = []
        kq: Any = mod.kqueue()  # close-on-exec: CPython makes it non-inheritable
        try:
            self._changes = Changelist(mod, kq.control, self._stolen)
        except BaseException:
            kq.close()  # a select module without some KQ_* value
            raise
        self._kq = kq
        self._control: Any = kq.control
        self._lock = threading.Lock()
        self._table: dict[int, Record] = {}
        # The filter numbers, for tests that look at the knotes of one fd.
        self._READ = self._changes.READ
        self._WRITE = self._changes.WRITE
        self._closed = False
        self._interrupted = False
        self._wake: WakeFd | None = None

    # -- registration ------------------------------------------------------

    def register(self, fd: int, interest: int, opts: int) -> None:
        """Add the knotes for *interest* (one ``kevent()`` call).

        :raises FileExistsError: *fd* is registered and its knotes still exist.
        :raises OSError: the kernel refused a knote (``EBADF``, ``EPIPE`` for
            the write side of a widowed pipe, ``EINVAL`` ...); nothing is left
            registered.
        """
        ch = self._changes
        with self._lock:
            ident = identity(fd)
            old = self._table.get(fd)
            if old is not None:
                if old.ident == ident and ch.knotes_exist(fd, old):
                    raise FileExistsError(errno.EEXIST, f"fd {fd} is already registered")
                # Stale: fd was closed (which removed its knotes) and reused.
                del self._table[fd]
            rec = ch.new_record(interest, opts, ident)
            flags = ch.ADD | ch.RECEIPT | ch.TRIGGER[opts]
            changes = [ch.change(fd, f, flags, rec.udata) for f in rec.filters]
            if changes:
                errs = ch.submit(changes)
                failed = next((e for e in errs if e), 0)
                if failed:
                    ch.undo(fd, [c for c, e in zip(changes, errs, strict=True) if not e])
                    raise os_error(failed, fd)
            self._table[fd] = rec

    def reregister(self, fd: int, interest: int, opts: int) -> None:
        """Replace interest and options of *fd* and re-arm it.

        A filter kept with the same options is modified in place (new udata,
        ``EV_ENABLE``); a dropped filter is deleted; a filter whose options
        change is deleted and added again (``EV_ADD`` on an existing knote
        keeps its first trigger flags).

        :raises FileNotFoundError: *fd* is not registered, or its record was
            stale (the record is dropped).
        :raises OSError: the kernel refused a change (the old registration is
            restored), or *fd* is not open (``EBADF``).
        """
        ch = self._changes
        with self._lock:
            old = self._table.get(fd)
            if old is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            ident = identity(fd)
            if ident != old.ident:
                del self._table[fd]
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            new = ch.new_record(interest, opts, ident)
            trigger = ch.TRIGGER[opts]
            same_opts = old.opts == opts
            # Deletes first: the kernel does not mind the order, but no moment
            # then has a dropped filter next to a new one with other flags.
            deletes: list[Any] = []
            adds: list[Any] = []
            for f in (ch.READ, ch.WRITE):
                was, wanted = f in old.filters, f in new.filters
                if was and wanted and same_opts:
                    # Modify in place: new udata, re-enabled if dispatched.
                    flags = ch.ADD | ch.ENABLE | ch.RECEIPT | trigger
                    adds.append(ch.change(fd, f, flags, new.udata))
                    continue
                if was:
                    deletes += ch.deletes(fd, (f,))
                if wanted:
                    adds.append(ch.change(fd, f, ch.ADD | ch.RECEIPT | trigger, new.udata))
            changes: list[Any] = deletes + adds
            # Change kinds, parallel to changes: "probe", "delete", "add".
            kinds = ["delete"] * len(deletes) + ["add"] * len(adds)
            if old.filters and not deletes:
                # Nothing above fails for a knote that close(2) removed (EV_ADD
                # recreates it), so ask the kernel first, in the same call.
                changes.insert(0, ch.probe(fd, old))
                kinds.insert(0, "probe")
            if changes:
                errs = ch.submit(changes)
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
                        ch.undo(fd, [c for c in applied if c.flags & ch.ADD])
                        del self._table[fd]
                        raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
                    ch.restore(fd, old, applied)
                    raise os_error(failed, fd)
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
            ident = identity(fd)  # EBADF: closed behind our back; Registry accepts it
            if ident != rec.ident:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            if not rec.filters:
                return
            errs = self._changes.submit(self._changes.deletes(fd, rec.filters))
            if all(e == errno.ENOENT for e in errs):
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            failed = next((e for e in errs if e and e != errno.ENOENT), 0)
            if failed:
                raise os_error(failed, fd)

    def forget(self, fd: int) -> None:
        """Drop the record of *fd*; delete its knotes if the fd is still that file."""
        with self._lock:
            rec = self._table.pop(fd, None)
            if rec is None or not rec.filters:
                return
            try:
                if identity(fd) != rec.ident:
                    return  # closed and reused: close(2) already removed our knotes
                self._changes.submit(self._changes.deletes(fd, rec.filters))
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
        bits_of = self._bits
        merged: dict[int, int] = {}
        oneshot: list[Any] | None = None
        for kev in kevs:
            udata = kev.udata
            if udata & ONESHOT_UDATA or udata == INTERNAL_UDATA:
                if udata:
                    if oneshot is None:
                        oneshot = []
                    oneshot.append(kev)
                continue
            bits = bits_of(kev)
            if bits:
                fd = kev.ident
                merged[fd] = merged.get(fd, 0) | bits
        if oneshot is not None:
            self._settle_oneshot(oneshot, merged)
        return merged

    def _settle_oneshot(self, kevs: list[Any], merged: dict[int, int]) -> None:
        """Deliver at most one event per arming of a ONESHOT registration."""
        ch = self._changes
        disable = ch.DISABLE | ch.RECEIPT
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
                    changes.append(ch.change(fd, flt, disable, rec.udata))
                    continue
                merged[fd] = merged.get(fd, 0) | self._bits(kev)
            for fd, delivered in fired.items():
                rec = self._table[fd]
                # EV_DISPATCH disabled the filters that fired; "one event" means
                # the whole registration, so disable the others too.
                changes.extend(
                    ch.change(fd, f, disable, rec.udata) for f in rec.filters if f not in delivered
                )
            if changes:
                try:
                    ch.submit(changes)
                except (OSError, ValueError):
                    pass  # closed fd (no knotes left) or closed kqueue

    def readiness(self, native_mask: int, interest: int) -> int:
        return readiness(native_mask, interest)

    def fileno(self) -> int:
        return int(self._kq.fileno())

    def interrupt(self) -> None:
        """Make every thread blocked in ``poll`` return, releasing nothing.

        kevent() blocked in another thread does not return when the kqueue is
        closed, so a wake-up descriptor that starts readable is registered
        (udata 0: never reported).  It stays until ``close``: a woken poller
        must still find it.
        """
        with self._lock:
            if self._wake is not None or self._closed:
                return
            try:
                wake = WakeFd(woken=True)
            except OSError:
                return  # no descriptors left: a blocked poller stays blocked
            self._wake = wake
            self._interrupted = True
        try:
            ch = self._changes
            self._control([ch.change(wake.fileno(), ch.READ, ch.ADD, INTERNAL_UDATA)], 0, 0)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        """Release the kqueue and the wake-up descriptor.  Harmless twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._table.clear()
            wake, self._wake = self._wake, None
        try:
            self._kq.close()
        finally:
            if wake is not None:
                wake.close()
