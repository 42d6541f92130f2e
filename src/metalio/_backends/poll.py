"""The poll backend: poll(2), for Unix systems without epoll or kqueue.

What poll(2) can tell
---------------------
For each descriptor in the array it returns ``revents``: ``POLLIN``,
``POLLOUT`` and ``POLLPRI`` for what was asked, and ``POLLERR``, ``POLLHUP``
and ``POLLNVAL`` whatever was asked, *even when the requested events are 0*.
On Linux ``POLLRDHUP`` (requested together with READABLE here) also reports a
peer that shut down its write side while data is still queued, so
``read_closed`` is available as on epoll.  A descriptor number has no upper
limit (unlike select), and a closed one does not fail the call: it comes back
as ``POLLNVAL``.

What it cannot tell
-------------------
poll(2) is level-triggered and stateless: it says what is ready now, not what
changed, and it cannot switch a descriptor off after an event.  Edge and
oneshot triggering are therefore emulated in ``._emulated`` (read its
docstring for how, and for the documented difference of EDGE with raw
descriptors).  Because ``POLLHUP``/``POLLERR`` arrive even for an empty
request, a fully disarmed descriptor is removed from the set rather than
given a zero mask.  Every call costs the kernel time proportional to the
number of watched descriptors; CPython's ``select.poll`` object rebuilds its
``pollfd`` array only after a change, and the emulation changes it only for
descriptors whose armed directions changed.

Details
-------
* ``POLLNVAL`` (closed without ``deregister``) drops the descriptor from the
  set without an event; the record remains until ``register`` replaces it or
  ``deregister``/``forget`` removes it.  A closed descriptor whose number was
  already reused by another file is caught by the identity check every event
  gets (one ``os.fstat``).
* The timeout is in milliseconds: a positive timeout is rounded *up*, so the
  call waits at least as long as asked.
* One thread polls at a time (``RuntimeError`` otherwise); ``fileno()`` is
  unsupported (there is no kernel object to nest).
* Not offered on macOS, whose poll(2) cannot watch ttys and some devices.
"""

from __future__ import annotations

import math
import select
import sys
from typing import TYPE_CHECKING, ClassVar, Final

from ._bits import INTEREST_PRIORITY, INTEREST_READABLE, INTEREST_WRITABLE
from ._emulated import EmulatedBackend
from ._emulated_records import KernelSet
from ._pollmask import POLLERR, POLLHUP, POLLIN, POLLNVAL, POLLOUT, POLLPRI, POLLRDHUP

assert not TYPE_CHECKING or sys.platform != "win32"

__all__ = ["PollBackend"]

_K_IN: Final = select.POLLIN
_K_PRI: Final = select.POLLPRI
_K_OUT: Final = select.POLLOUT
_K_ERR: Final = select.POLLERR
_K_HUP: Final = select.POLLHUP
_K_NVAL: Final = select.POLLNVAL
_K_RDHUP: Final[int] = getattr(select, "POLLRDHUP", 0)

# Directions (Interest bits) -> the events to request.
_REQUEST: Final = tuple(
    ((_K_IN | _K_RDHUP) if d & INTEREST_READABLE else 0)
    | (_K_OUT if d & INTEREST_WRITABLE else 0)
    | (_K_PRI if d & INTEREST_PRIORITY else 0)
    for d in range(8)
)

# Linux and the BSDs use the canonical values; translate only where not.
_CANONICAL: Final = (_K_IN, _K_PRI, _K_OUT, _K_ERR, _K_HUP, _K_NVAL) == (
    POLLIN,
    POLLPRI,
    POLLOUT,
    POLLERR,
    POLLHUP,
    POLLNVAL,
) and _K_RDHUP in (0, POLLRDHUP)
_PAIRS: Final = (
    (_K_IN, POLLIN),
    (_K_PRI, POLLPRI),
    (_K_OUT, POLLOUT),
    (_K_ERR, POLLERR),
    (_K_HUP, POLLHUP),
    (_K_NVAL, POLLNVAL),
    (_K_RDHUP, POLLRDHUP),
)


def _to_canonical(mask: int) -> int:
    out = 0
    for native, canonical in _PAIRS:
        if mask & native:
            out |= canonical
    return out


class _PollSet:
    """A ``select.poll`` object speaking directions and canonical masks."""

    __slots__ = ("_poll", "_register", "_unregister")

    def __init__(self) -> None:
        poller = select.poll()
        self._register = poller.register
        self._unregister = poller.unregister
        self._poll = poller.poll

    def update(self, fd: int, directions: int) -> None:
        if directions:
            self._register(fd, _REQUEST[directions])  # also modifies
        else:
            try:
                self._unregister(fd)
            except KeyError:
                pass

    def wait(self, timeout: float | None) -> list[tuple[int, int]]:
        if timeout is None:
            results = self._poll()
        elif timeout <= 0.0:
            results = self._poll(0)
        else:
            # Milliseconds, rounded up: wait at least as long as asked.
            results = self._poll(math.ceil(timeout * 1000.0))
        if _CANONICAL:
            return results
        return [(fd, _to_canonical(mask)) for fd, mask in results]

    def close(self) -> None:
        """Nothing to release: a poll object holds no descriptor."""


class PollBackend(EmulatedBackend):
    """poll(2) with edge and oneshot triggering emulated in user space."""

    name: ClassVar[str] = "poll"
    emulates_edge: ClassVar[bool] = True
    concurrent_poll: ClassVar[bool] = False

    __slots__ = ()

    def _new_set(self) -> KernelSet:
        return _PollSet()
