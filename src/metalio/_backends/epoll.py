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
  ``interrupt()`` therefore adds a ready ``WakeFd`` (an eventfd), and the Poll
  releases the epoll only when the last polling thread has left.
"""

from __future__ import annotations

import select
import sys
from typing import TYPE_CHECKING, ClassVar, Final

from .._wakefd import WakeFd
from ._bits import (
    ERROR,
    INTEREST_PRIORITY,
    INTEREST_READABLE,
    INTEREST_WRITABLE,
    OPT_EDGE,
    OPT_ONESHOT,
    PRIORITY,
    READ_CLOSED,
    READABLE,
    WRITABLE,
    WRITE_CLOSED,
)

assert not TYPE_CHECKING or sys.platform == "linux"

__all__ = [
    "EpollBackend",
    "is_error",
    "is_priority",
    "is_read_closed",
    "is_readable",
    "is_writable",
    "is_write_closed",
    "readiness",
]

_IN: Final = select.EPOLLIN
_OUT: Final = select.EPOLLOUT
_PRI: Final = select.EPOLLPRI
_ERR: Final = select.EPOLLERR
_HUP: Final = select.EPOLLHUP
_RDHUP: Final = getattr(select, "EPOLLRDHUP", 0x2000)
_ET: Final = select.EPOLLET
_ONESHOT: Final = select.EPOLLONESHOT

# Interest bits -> epoll request bits.  RDHUP rides with READABLE: it is the
# only way to see a half-closed peer (see the module docstring).
_REQUEST: Final = tuple(
    ((_IN | _RDHUP) if i & INTEREST_READABLE else 0)
    | (_OUT if i & INTEREST_WRITABLE else 0)
    | (_PRI if i & INTEREST_PRIORITY else 0)
    for i in range(8)
)
# The kernel ANDs every event with the entry's requested bits, which are built
# from IN, RDHUP, OUT and PRI, plus the ERR and HUP that epoll_ctl always adds:
# every subset of those six is a mask poll() may return, and nothing else is.
_NATIVE_MASKS: Final = tuple(
    sum(bit for k, bit in enumerate((_IN, _PRI, _OUT, _ERR, _HUP, _RDHUP)) if m >> k & 1)
    for m in range(64)
)
# PollOpt bits -> epoll trigger bits (LEVEL is epoll's default: no bit).
_TRIGGER: Final = tuple(
    (_ET if o & OPT_EDGE else 0) | (_ONESHOT if o & OPT_ONESHOT else 0) for o in range(8)
)


# -- what a native mask means ---------------------------------------------------
#
# One predicate per readiness, after mio's ``sys/unix/selector/epoll.rs``
# (``event``).  The kernel situations behind each mask, as Linux reports them
# to a registration that asked for everything (IN|OUT|PRI|RDHUP; epoll drops
# the requested bits a registration did not ask for, never ERR or HUP):
#
#   data queued; a connection to accept                      IN
#   room in the send buffer; a non-blocking connect done     OUT
#   a TCP urgent byte; a sysfs/GPIO notification             PRI
#   the peer sent FIN, or we shut down reading               IN|RDHUP (|OUT)
#   the peer closed after we shut down writing               IN|OUT|HUP|RDHUP
#   a TCP socket never connected                             OUT|HUP
#   a reset connection; a refused connect                    IN|OUT|ERR|HUP|RDHUP
#   a pipe's read end after its last writer closed           HUP (IN while data is left)
#   a pipe's write end after its reader closed               OUT|ERR (ERR alone if full)
#   a connected UDP socket holding an ICMP error             OUT|ERR


def is_readable(mask: int) -> bool:
    """Data (or EOF) can be read; a listening socket has a connection."""
    return mask & _IN != 0


def is_writable(mask: int) -> bool:
    """The send buffer has room; a non-blocking connect has finished (or failed)."""
    return mask & _OUT != 0


def is_priority(mask: int) -> bool:
    """TCP urgent data, or a sysfs/GPIO attribute changed."""
    return mask & _PRI != 0


def is_error(mask: int) -> bool:
    """A socket error is pending (``SO_ERROR``), or a pipe writer lost its reader."""
    return mask & _ERR != 0


def is_read_closed(mask: int) -> bool:
    """No more data will arrive (what is queued may still be read)."""
    # RDHUP: the peer shut down its sending side (FIN), or we shut down
    # reading.  HUP: both directions are finished; it is also all a pipe's
    # read end gets when its last writer closes (no RDHUP for pipes).
    return mask & (_HUP | _RDHUP) != 0


def is_write_closed(mask: int) -> bool:
    """Nothing more can be sent."""
    # Both directions are finished (a closed or reset connection, a refused
    # connect, a socket never connected).
    if mask & _HUP:
        return True
    # ERR alone: a pipe's write end whose reader closed, when the pipe is full
    # or WRITABLE was not asked for (epoll then drops OUT).  A socket with a
    # pending error registered without WRITABLE looks the same.
    if mask == _ERR:
        return True
    # OUT|ERR: that pipe with room left.  A connected UDP socket holding an
    # ICMP error looks the same; its next send raises the error, after which
    # it can send again.
    return mask & (_OUT | _ERR) == _OUT | _ERR


def readiness(native_mask: int, interest: int) -> int:
    """Translate an epoll mask into ``Ready`` bits for a registration with *interest*.

    A read or write that will fail or see EOF at once is "ready": error and
    hang-up are folded into READABLE/WRITABLE within what was asked for, so a
    program that only checks ``readable`` acts on them instead of spinning.
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


class EpollBackend:
    """``select.epoll`` with the kernel deciding every registration question."""

    name: ClassVar[str] = "epoll"
    emulates_edge: ClassVar[bool] = False
    concurrent_poll: ClassVar[bool] = True
    unique_fds: ClassVar[bool] = True
    exact_edges: ClassVar[bool] = True
    closing_mask: ClassVar[int] = _ERR | _HUP | _RDHUP
    native_masks: ClassVar[tuple[int, ...] | None] = _NATIVE_MASKS

    __slots__ = ("_ctl_modify", "_ctl_register", "_ctl_unregister", "_epoll", "_wake", "poll")

    def __init__(self) -> None:
        self._epoll = select.epoll()  # close-on-exec since Python 3.4
        self._wake: WakeFd | None = None
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
        return readiness(native_mask, interest)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def interrupt(self) -> None:
        """Make every thread blocked in ``poll`` return, releasing nothing.

        close(2) on an epoll fd does not wake its waiters, so a wake-up
        descriptor that starts readable is added instead.  It must stay open
        until those waiters have collected it (a woken ``epoll_wait`` that
        finds the ready list empty goes back to sleep): ``close`` releases it.
        """
        if self._wake is not None or self._epoll.closed:
            return
        try:
            wake = WakeFd(woken=True)
        except OSError:
            return  # no descriptors left: a blocked poller stays blocked
        self._wake = wake
        try:
            self._epoll.register(wake.fileno(), _IN)
        except OSError:
            pass

    def close(self) -> None:
        self._epoll.close()
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.close()
