"""A fake of the kqueue half of the ``select`` module, built on a real epoll.

``KqueueBackend(select_module=fake_kqueue)`` runs on Linux against real
sockets and pipes: each fake ``kqueue`` owns an ``epoll``, each knote
(ident, filter) is part of that epoll's registration for the fd, and the
readiness that comes back is the kernel's.  What the fake adds on top is the
kqueue *bookkeeping*, modelled on FreeBSD's ``kern_event.c``:

* knotes keyed by (ident, filter); ``EV_ADD`` creates or modifies (a modify
  updates udata and re-evaluates, but keeps the trigger flags of the first
  ``EV_ADD``), ``EV_DELETE`` of a missing knote is ``ENOENT``, a change with
  neither ``EV_ADD`` nor ``EV_DELETE`` touches an existing knote (applying
  ``EV_ENABLE``/``EV_DISABLE``) or is ``ENOENT``; a bad fd is ``EBADF``;
* ``EV_CLEAR`` is ``EPOLLET``; ``EV_ONESHOT`` deletes the knote after delivery,
  ``EV_DISPATCH`` (0x80) disables it; a disabled knote is left out of the epoll
  mask;
* changelist results as in ``kern_kevent_fp``: a failed change, or any change
  with ``EV_RECEIPT`` (0x40), is copied out with ``flags = EV_ERROR`` and
  ``data = errno`` while there is room; a failure with no room raises
  ``OSError``; a successful change whose receipt finds no room is kept and
  the rest of the changelist is dropped silently; if anything was copied out
  the call returns without waiting for events;
* close(2) removes knotes: the fake notices a closed or reused fd by its
  ``(st_dev, st_ino)`` at the next change that names it;
* results: ``EPOLLIN``/``EPOLLOUT`` fire the read/write knote, ``EPOLLRDHUP`` and
  ``EPOLLHUP`` set ``EV_EOF`` on the read knote, ``EPOLLHUP`` on the write knote;
  ``EPOLLERR`` fires both and is ``EV_EOF`` for non-sockets (a pipe whose other
  end is gone) and, with ``EV_EOF``, ``fflags = FAKE_SOCKET_ERRNO`` for sockets;
* ``EPOLLPRI`` (TCP urgent data) fires the read knote with ``EV_FLAG1``, as
  macOS does (``EV_OOBAND``); FreeBSD reports nothing for urgent data;
* fds epoll refuses (``EPERM``: regular files, directories) are accepted as
  BSD does: the read knote fires while the file offset is before the end,
  the write knote always.

Like CPython, the module exports no ``KQ_EV_RECEIPT`` or ``KQ_EV_DISPATCH``;
``EV_RECEIPT`` and ``EV_DISPATCH`` below are for tests.

Test hooks on a fake ``kqueue``: ``changelists`` (every non-empty changelist
received, as copies), ``calls`` (``(nchanges, max_events, timeout)`` per call),
``refuse_next_add(fd, filter, err)`` (the next ``EV_ADD`` of that knote fails
with *err*), ``receipts_supported = False`` (behave like a kernel that ignores
``EV_RECEIPT``), ``knote(fd, filter)`` (a snapshot of one knote or ``None``).

Limitations (this is a model, not a kernel):

* The two knotes of one fd share one epoll registration, and ``EPOLLET`` is per
  registration: both enabled knotes of an fd must agree on ``EV_CLEAR``
  (``NotImplementedError`` otherwise).  With ``EV_CLEAR`` a wake-up of either
  direction reports both filters that are ready, and adding or modifying one
  knote re-reports the other if it is ready: extra events a real kqueue
  would not give (spurious events are allowed by the contract).
* ``fflags`` of a socket error is a placeholder (``FAKE_SOCKET_ERRNO``): reading
  the real one (``SO_ERROR``) would clear it.  ``data`` is always 0.
* A knote whose fd was closed while a ``dup()`` of it stays open lingers in
  epoll (epoll's dup hazard) and keeps reporting under the old number until a
  change names that fd again; a real kqueue drops it at close(2).
* Write-side ``EV_EOF`` follows Linux ``EPOLLHUP`` (both directions shut), not
  BSD's "send side shut"; an unconnected socket looks hung up.
* ``EV_CLEAR`` on an epoll-refused file fires once per add or modify.
* An fd closed and reopened on the same file (same ``st_dev``/``st_ino``, e.g. a
  regular file) keeps its knotes in the fake; a real kqueue removed them.
* Only ``KQ_FILTER_READ`` and ``KQ_FILTER_WRITE`` work; other filters are
  ``EINVAL``.
"""

from __future__ import annotations

import errno
import math
import os
import select
import stat
import threading
import time
from collections.abc import Iterable
from typing import Any

# The values of FreeBSD and macOS <sys/event.h> (NetBSD numbers filters 0, 1, ...).
KQ_FILTER_READ = -1
KQ_FILTER_WRITE = -2
KQ_FILTER_AIO = -3
KQ_FILTER_VNODE = -4
KQ_FILTER_PROC = -5
KQ_FILTER_SIGNAL = -6
KQ_FILTER_TIMER = -7

KQ_EV_ADD = 0x0001
KQ_EV_DELETE = 0x0002
KQ_EV_ENABLE = 0x0004
KQ_EV_DISABLE = 0x0008
KQ_EV_ONESHOT = 0x0010
KQ_EV_CLEAR = 0x0020
KQ_EV_SYSFLAGS = 0xF000
KQ_EV_FLAG1 = 0x2000
KQ_EV_EOF = 0x8000
KQ_EV_ERROR = 0x4000

KQ_NOTE_LOWAT = 0x0001

# Understood by the fake "kernel", deliberately not exported as KQ_* (CPython
# does not export them either).
EV_RECEIPT = 0x0040
EV_DISPATCH = 0x0080

FAKE_SOCKET_ERRNO = errno.ECONNRESET

_ACTIONS = KQ_EV_ADD | KQ_EV_DELETE | KQ_EV_ENABLE | KQ_EV_DISABLE
_KNOWN_FLAGS = _ACTIONS | KQ_EV_ONESHOT | KQ_EV_CLEAR | EV_RECEIPT | EV_DISPATCH
_FILTERS = (KQ_FILTER_READ, KQ_FILTER_WRITE)

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR
_HUP = select.EPOLLHUP
_RDHUP = select.EPOLLRDHUP
_PRI = select.EPOLLPRI
_ET = select.EPOLLET


class kevent:
    """``select.kevent``: a plain record; *ident* may be an object with ``fileno()``."""

    __slots__ = ("data", "fflags", "filter", "flags", "ident", "udata")

    def __init__(
        self,
        ident: Any,
        filter: int = KQ_FILTER_READ,
        flags: int = KQ_EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: int = 0,
    ) -> None:
        if isinstance(ident, bool) or not isinstance(ident, int):
            fileno = getattr(ident, "fileno", None)
            if fileno is None:
                raise TypeError("argument must be an int, or have a fileno() method.")
            ident = fileno()
        if ident < 0:
            raise OverflowError("can't convert negative int to unsigned")
        self.ident = int(ident)
        self.filter = int(filter)
        self.flags = int(flags) & 0xFFFF
        self.fflags = int(fflags)
        self.data = int(data)
        self.udata = int(udata)

    def _key(self) -> tuple[int, int, int, int, int, int]:
        return (self.ident, self.filter, self.flags, self.fflags, self.data, self.udata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return self._key() == other._key()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the real one

    def __repr__(self) -> str:
        return (
            f"<fake kevent ident={self.ident} filter={self.filter} flags={self.flags:#x} "
            f"fflags={self.fflags:#x} data={self.data:#x} udata={self.udata:#x}>"
        )


class _Knote:
    __slots__ = (
        "disabled",
        "fflags_socket",
        "filter",
        "flags",
        "ident",
        "identity",
        "udata",
        "vnode",
        "vnode_fired",
    )

    def __init__(self, ident: int, flt: int, flags: int, udata: int, st: os.stat_result) -> None:
        self.ident = ident
        self.filter = flt
        # What the knote keeps of the first EV_ADD (FreeBSD strips the actions).
        self.flags = flags & ~_ACTIONS
        self.udata = udata
        self.disabled = bool(flags & KQ_EV_DISABLE)
        self.identity = (st.st_dev, st.st_ino)
        self.fflags_socket = stat.S_ISSOCK(st.st_mode)
        self.vnode = False  # epoll refused the fd: readiness is computed here
        self.vnode_fired = False


class kqueue:
    """A fake ``select.kqueue``.  Thread-safe like the real one."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._lock = threading.RLock()
        self._knotes: dict[tuple[int, int], _Knote] = {}
        self._ep_masks: dict[int, int] = {}
        # Activations of EV_CLEAR knotes that did not fit into max_events:
        # a real kqueue keeps them queued, so must we (epoll will not repeat).
        self._pending: dict[tuple[int, int], tuple[int, int]] = {}
        self._refuse: dict[tuple[int, int], int] = {}
        self.changelists: list[list[kevent]] = []
        self.calls: list[tuple[int, int, float | None]] = []
        self.receipts_supported = True

    # -- the real API --------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._ep.closed

    def fileno(self) -> int:
        if self._ep.closed:
            raise ValueError("I/O operation on closed kqueue object")
        return self._ep.fileno()

    def close(self) -> None:
        with self._lock:
            self._ep.close()

    def control(
        self, changelist: Iterable[kevent] | None, max_events: int, timeout: float | None = None
    ) -> list[kevent]:
        if self._ep.closed:
            raise ValueError("I/O operation on closed kqueue object")
        if not isinstance(max_events, int) or isinstance(max_events, bool):
            raise TypeError("max_events must be an int")
        if max_events < 0:
            raise ValueError(f"Length of eventlist must be 0 or positive, got {max_events}")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(
                    f"timeout argument must be a number or None, got {type(timeout).__name__}"
                )
            if math.isnan(timeout):
                raise ValueError("Invalid value NaN (not a number)")
            if timeout < 0:
                raise ValueError("timeout must be positive or None")
        changes = [] if changelist is None else list(changelist)
        for change in changes:
            if not isinstance(change, kevent):
                raise TypeError("changelist must be an iterable of select.kevent objects")
        with self._lock:
            self.calls.append((len(changes), max_events, timeout))
            if changes:
                self.changelists.append([kevent(*c._key()) for c in changes])
            out: list[kevent] = []
            for change in changes:
                err = self._register(change)
                receipt = self.receipts_supported and change.flags & EV_RECEIPT
                if err or receipt:
                    if len(out) < max_events:
                        out.append(
                            kevent(change.ident, change.filter, KQ_EV_ERROR, 0, err, change.udata)
                        )
                    elif err:
                        raise OSError(err, os.strerror(err))
                    else:
                        return out  # FreeBSD: applied, but no room: stop here
            if out or max_events == 0:
                return out
        return self._scan(max_events, timeout)

    # -- test hooks -----------------------------------------------------------

    def refuse_next_add(self, fd: int, flt: int, err: int) -> None:
        """Make the next ``EV_ADD`` of knote (*fd*, *flt*) fail with *err*."""
        with self._lock:
            self._refuse[(fd, flt)] = err

    def knote(self, fd: int, flt: int) -> dict[str, Any] | None:
        """A snapshot of knote (*fd*, *flt*): flags, udata, disabled; ``None`` if absent."""
        with self._lock:
            kn = self._knotes.get((fd, flt))
            if kn is None:
                return None
            return {"flags": kn.flags, "udata": kn.udata, "disabled": kn.disabled}

    # -- changes -------------------------------------------------------------

    def _register(self, change: kevent) -> int:
        """Apply one change; return an errno or 0."""
        ident, flt, flags = change.ident, change.filter, change.flags
        if flt not in _FILTERS or flags & ~_KNOWN_FLAGS:
            return errno.EINVAL
        try:
            st = os.fstat(ident)
        except OSError as exc:
            self._purge(ident)
            return exc.errno or errno.EBADF
        if ident == self._ep.fileno():
            return errno.EINVAL  # a kqueue cannot watch itself
        self._purge_if_reused(ident, (st.st_dev, st.st_ino))
        key = (ident, flt)
        kn = self._knotes.get(key)
        if flags & KQ_EV_ADD and key in self._refuse:
            return self._refuse.pop(key)
        if kn is None:
            if not flags & KQ_EV_ADD:
                return errno.ENOENT
            kn = _Knote(ident, flt, flags, change.udata, st)
            self._knotes[key] = kn
            try:
                self._sync(ident, force=True)
            except PermissionError:
                # epoll refuses regular files; kqueue does not.
                kn.vnode = True
                self._sync(ident)
            except OSError as exc:
                del self._knotes[key]
                self._sync(ident)
                return exc.errno or errno.EINVAL
            return 0
        if flags & KQ_EV_DELETE:
            del self._knotes[key]
            self._pending.pop(key, None)
            self._sync(ident)
            return 0
        # Modify: udata changes, the trigger flags stay; the filter is re-evaluated.
        kn.udata = change.udata
        kn.vnode_fired = False
        if flags & KQ_EV_DISABLE:
            kn.disabled = True
        if flags & KQ_EV_ENABLE:
            kn.disabled = False
        self._sync(ident, force=True)
        return 0

    def _purge(self, ident: int) -> None:
        for flt in _FILTERS:
            self._knotes.pop((ident, flt), None)
            self._pending.pop((ident, flt), None)
        if self._ep_masks.pop(ident, None) is not None:
            try:
                self._ep.unregister(ident)
            except OSError:
                pass  # closed (the kernel dropped it) or now another file

    def _purge_if_reused(self, ident: int, identity: tuple[int, int]) -> None:
        """close(2) removed the knotes of *ident*: forget them if the file changed."""
        for flt in _FILTERS:
            kn = self._knotes.get((ident, flt))
            if kn is not None and kn.identity != identity:
                # The epoll entry went away with the old file (unless a dup of
                # it is still open: see the limitations); do not touch the new one.
                for f in _FILTERS:
                    self._knotes.pop((ident, f), None)
                    self._pending.pop((ident, f), None)
                self._ep_masks.pop(ident, None)
                return

    def _sync(self, ident: int, *, force: bool = False) -> None:
        """Make the epoll registration of *ident* match its enabled knotes.

        :raises OSError: epoll refused a new registration.
        """
        mask = 0
        clear: set[bool] = set()
        for flt in _FILTERS:
            kn = self._knotes.get((ident, flt))
            if kn is None or kn.disabled or kn.vnode:
                continue
            mask |= (_IN | _RDHUP | _PRI) if flt == KQ_FILTER_READ else _OUT
            clear.add(bool(kn.flags & KQ_EV_CLEAR))
        if len(clear) > 1:
            raise NotImplementedError(
                "fake kqueue: the two filters of one fd must agree on EV_CLEAR"
            )
        if clear == {True}:
            mask |= _ET
        old = self._ep_masks.get(ident)
        if not mask:
            if old is not None:
                del self._ep_masks[ident]
                try:
                    self._ep.unregister(ident)
                except OSError:
                    pass
            return
        if old is None:
            self._ep.register(ident, mask)
        elif old != mask or force:
            try:
                self._ep.modify(ident, mask)  # also re-evaluates, as f_event does
            except FileNotFoundError:
                self._ep.register(ident, mask)
        self._ep_masks[ident] = mask

    # -- waiting ---------------------------------------------------------------

    def _scan(self, max_events: int, timeout: float | None) -> list[kevent]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._ep.closed:
                    raise ValueError("I/O operation on closed kqueue object")
                out: list[kevent] = []
                self._deliver_pending(out, max_events)
                self._deliver_vnodes(out, max_events)
            if out:
                wait: float = 0.0
            elif deadline is None:
                wait = -1.0
            else:
                wait = max(0.0, deadline - time.monotonic())
            try:
                ready = self._ep.poll(wait, max_events)
            except ValueError:
                ready = []  # closed by another thread while we waited
            with self._lock:
                for fd, events in ready:
                    self._activate(fd, events, out, max_events)
            if out:
                return out
            if deadline is not None and time.monotonic() >= deadline:
                return []
            if self._ep.closed:
                raise ValueError("I/O operation on closed kqueue object")

    def _activate(self, fd: int, events: int, out: list[kevent], max_events: int) -> None:
        for flt in _FILTERS:
            kn = self._knotes.get((fd, flt))
            if kn is None or kn.disabled or kn.vnode:
                continue
            sock = kn.fflags_socket
            if flt == KQ_FILTER_READ:
                fired = events & (_IN | _RDHUP | _HUP | _ERR | _PRI)
                eof = events & (_RDHUP | _HUP) or (events & _ERR and not sock)
                # macOS flags urgent data on the read filter: EV_OOBAND (= EV_FLAG1).
                oob = KQ_EV_FLAG1 if events & _PRI else 0
            else:
                fired = events & (_OUT | _HUP | _ERR)
                eof = events & _HUP or (events & _ERR and not sock)
                oob = 0
            if not fired:
                continue
            extra = (KQ_EV_EOF if eof else 0) | oob
            fflags = FAKE_SOCKET_ERRNO if eof and sock and events & _ERR else 0
            if any(k.ident == fd and k.filter == flt for k in out):
                continue  # already reported by this call (from the pending queue)
            if len(out) < max_events:
                self._emit(kn, extra, fflags, out)
            elif kn.flags & KQ_EV_CLEAR:
                self._pending[(fd, flt)] = (extra, fflags)
            # A level knote that did not fit is reported again by the next scan.

    def _deliver_pending(self, out: list[kevent], max_events: int) -> None:
        for key in list(self._pending):
            if len(out) >= max_events:
                return
            extra, fflags = self._pending.pop(key)
            kn = self._knotes.get(key)
            if kn is not None and not kn.disabled:
                self._emit(kn, extra, fflags, out)

    def _deliver_vnodes(self, out: list[kevent], max_events: int) -> None:
        for kn in list(self._knotes.values()):
            if len(out) >= max_events:
                return
            if not kn.vnode or kn.disabled:
                continue
            if kn.flags & KQ_EV_CLEAR and kn.vnode_fired:
                continue
            if kn.filter == KQ_FILTER_READ:
                try:
                    st = os.fstat(kn.ident)
                    ready = not stat.S_ISREG(st.st_mode) or (
                        os.lseek(kn.ident, 0, os.SEEK_CUR) < st.st_size
                    )
                except OSError:
                    continue
            else:
                ready = True
            if ready:
                kn.vnode_fired = True
                self._emit(kn, 0, 0, out)

    def _emit(self, kn: _Knote, extra: int, fflags: int, out: list[kevent]) -> None:
        self._pending.pop((kn.ident, kn.filter), None)
        out.append(kevent(kn.ident, kn.filter, kn.flags | extra, fflags, 0, kn.udata))
        if kn.flags & KQ_EV_ONESHOT:
            del self._knotes[(kn.ident, kn.filter)]
            self._sync(kn.ident)
        elif kn.flags & EV_DISPATCH:
            kn.disabled = True
            self._sync(kn.ident)
