"""The epoll backend: Linux's readiness API, used as directly as Python allows.

Facts about epoll that shape this module (the long form is docs/epoll.md):

* **epoll watches file descriptions, reached through descriptors.**  The
  interest list is keyed by the pair (fd number, open file description).
  Closing an fd removes its entry only when the *last* descriptor for that
  description goes away.  If the program ``dup()``-ed the fd (or a child
  inherited it), closing the original leaves the entry alive: events keep
  arriving under the old fd number, and ``EPOLL_CTL_DEL`` cannot reach the
  entry any more because the number now names nothing, or something else.
  CPython's ``select.epoll`` always stores the fd number as the event's data,
  so we cannot tag entries with a generation either.  metalio therefore asks
  for ``deregister`` before ``close`` and survives the cases where it did not
  happen: a closed source simply stops producing events (the kernel dropped
  the entry), and a new source that received the same number registers at
  once because the kernel, not our table, decides whether the number is
  still registered (``EPOLL_CTL_ADD`` gives ``EEXIST`` only for a live entry).
  The dup hazard remains and is documented; it is the same in C.

* **EPOLLONESHOT disarms, it does not remove.**  After one event the entry
  stays in the interest list with an empty mask; ``EPOLL_CTL_MOD`` re-arms
  it, ``EPOLL_CTL_ADD`` fails with ``EEXIST`` and ``EPOLL_CTL_DEL`` works.
  That is exactly the contract's ONESHOT, so it maps one to one.  With
  ONESHOT, several threads may wait on one epoll: each readiness wakes one.

* **EPOLLET reports transitions.**  An edge is queued when the file's wait
  queue is woken (new data, freed buffer space), not when the level is high,
  so an undrained source stays silent and costs nothing.  A woken entry that
  did not fit into ``maxevents`` stays on the ready list for the next call.

* **EPOLLRDHUP** is the only way to learn that the peer shut down its write
  side while our read side still has data queued; without it a half-closed
  peer looks like any readable socket.  It is requested with READABLE so
  ``read_closed`` can be reported.  **EPOLLPRI** carries TCP urgent data and
  sysfs/GPIO notifications; it is the PRIORITY interest.

* **EPOLLERR and EPOLLHUP are always reported**, whatever was asked for,
  which is what the contract wants for error and hang-up.  They are also
  folded into READABLE/WRITABLE (for the interests the registration has):
  the next read or write will not block, it will return EOF or raise, and a
  program that only checks ``readable`` must not spin on an event it never
  acts on.

* **Regular files are refused** (``EPERM``): they are always ready, so
  readiness means nothing.  The ``PermissionError`` reaches the caller.

* Closing an epoll fd does not wake a thread blocked in ``epoll_wait`` on it.
  ``interrupt()`` therefore adds a ready eventfd, and the Poll releases the
  epoll only when the last polling thread has left.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TYPE_CHECKING, ClassVar, Final

assert not TYPE_CHECKING or sys.platform == "linux"

__all__ = ["EpollBackend"]

_IN: Final = select.EPOLLIN
_OUT: Final = select.EPOLLOUT
_PRI: Final = select.EPOLLPRI
_ERR: Final = select.EPOLLERR
_HUP: Final = select.EPOLLHUP
_RDHUP: Final = getattr(select, "EPOLLRDHUP", 0x2000)
_ET: Final = select.EPOLLET
_ONESHOT: Final = select.EPOLLONESHOT

# Interest bits (READABLE=1, WRITABLE=2, PRIORITY=4) -> epoll request bits.
_REQUEST: Final = tuple(
    ((_IN | _RDHUP) if i & 1 else 0) | (_OUT if i & 2 else 0) | (_PRI if i & 4 else 0)
    for i in range(8)
)
# The kernel ANDs every event with the entry's requested bits, which are built
# from IN, RDHUP, OUT and PRI, plus the ERR and HUP that epoll_ctl always adds:
# every subset of those six is a mask poll() may return, and nothing else is.
_NATIVE_MASKS: Final = tuple(
    sum(bit for k, bit in enumerate((_IN, _PRI, _OUT, _ERR, _HUP, _RDHUP)) if m >> k & 1)
    for m in range(64)
)
# PollOpt bits (LEVEL=1, EDGE=2, ONESHOT=4) -> epoll trigger bits.
_TRIGGER: Final = tuple((_ET if o & 2 else 0) | (_ONESHOT if o & 4 else 0) for o in range(8))


class EpollBackend:
    """``select.epoll`` with the kernel deciding every registration question."""

    name: ClassVar[str] = "epoll"
    emulates_edge: ClassVar[bool] = False
    concurrent_poll: ClassVar[bool] = True
    unique_fds: ClassVar[bool] = True
    exact_edges: ClassVar[bool] = True
    closing_mask: ClassVar[int] = _ERR | _HUP | _RDHUP
    native_masks: ClassVar[tuple[int, ...] | None] = _NATIVE_MASKS

    __slots__ = ("_ctl_modify", "_ctl_register", "_ctl_unregister", "_epoll", "_wake_fd", "poll")

    def __init__(self) -> None:
        self._epoll = select.epoll()  # close-on-exec since Python 3.4
        self._wake_fd = -1
        ep = self._epoll
        self._ctl_register = ep.register
        self._ctl_modify = ep.modify
        self._ctl_unregister = ep.unregister
        # epoll.poll already has the signature and return shape the interface
        # wants; binding it skips one Python frame per poll.
        self.poll = ep.poll

    def register(self, fd: int, interest: int, opts: int) -> None:
        # EEXIST -> FileExistsError, EPERM -> PermissionError, EBADF -> OSError:
        # the kernel's answers are the contract's answers.
        self._ctl_register(fd, _REQUEST[interest] | _TRIGGER[opts])

    def reregister(self, fd: int, interest: int, opts: int) -> None:
        self._ctl_modify(fd, _REQUEST[interest] | _TRIGGER[opts])

    def deregister(self, fd: int) -> None:
        self._ctl_unregister(fd)

    def forget(self, fd: int) -> None:
        try:
            self._ctl_unregister(fd)
        except (OSError, ValueError):
            # EBADF: closed; ENOENT: closed and the number reused by a file we
            # do not watch.  Either way there is nothing left to remove.
            pass

    def rearm(self, fd: int, direction: int) -> None:
        """Native edge triggering needs no help from the sources."""

    def readiness(self, native_mask: int, interest: int) -> int:
        ready = 0
        if native_mask & _IN:
            ready |= 1
        if native_mask & _OUT:
            ready |= 2
        if native_mask & _PRI:
            ready |= 4
        if native_mask & _ERR:
            ready |= 8
        if native_mask & (_HUP | _RDHUP):
            ready |= 16
        if native_mask & _HUP or native_mask == _ERR or native_mask & (_OUT | _ERR) == _OUT | _ERR:
            ready |= 32
        # A read or write that will fail or see EOF at once is "ready": report
        # it as such, within what the registration asked for.
        if ready & (8 | 16) and interest & 1:
            ready |= 1
        if ready & (8 | 32) and interest & 2:
            ready |= 2
        return ready

    def fileno(self) -> int:
        return self._epoll.fileno()

    def interrupt(self) -> None:
        """Make every thread blocked in ``poll`` return, releasing nothing.

        close(2) on an epoll fd does not wake its waiters, so a ready eventfd
        is added instead.  It must stay open until those waiters have
        collected it (a woken ``epoll_wait`` that finds the ready list empty
        goes back to sleep): ``close`` releases it.
        """
        if self._wake_fd >= 0 or self._epoll.closed:
            return
        try:
            fd = os.eventfd(1, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            return
        self._wake_fd = fd
        try:
            self._epoll.register(fd, _IN)
        except OSError:
            pass

    def close(self) -> None:
        self._epoll.close()
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1
