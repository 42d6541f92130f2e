"""Readiness tracking: a stream that knows it is drained answers ``None`` without a system call.

The kernel's facts
------------------
* With native edge triggering (epoll's ``EPOLLET``, kqueue's ``EV_CLEAR``),
  a stream read that returns fewer bytes than asked for emptied the receive
  buffer at that instant, and a write that took fewer bytes than offered
  filled the send buffer; a would-block says the same.  Whatever arrives
  (or frees up) afterwards wakes the file's wait queue, which queues a new
  event, and only a later ``poll()`` can report it.
* So the read that a program following the contract makes last, the one
  that returns ``None``, is known in advance to be useless, and in CPython
  it is the most expensive call of a round trip (the kernel's ``EAGAIN``
  becomes a raised and caught ``BlockingIOError``).
* End of stream and errors are different: a FIN or an RST that arrived
  with the last data is not consumed by the read that took the data, and
  no new event will announce it.

The design
----------
Each tracking ``Poll`` has an *epoch*: a number that changes every time a
wait returns (``Poll.poll``; the event loop's dispatcher, once per batch of
events: a wait that reported nothing leaves every mark true).  A stream
source registered with it records, per direction, the epoch it read before
a system call that proved the direction drained (a short transfer or a
would-block).  Its next ``try_*`` call in that direction compares: while
the epoch is still the one recorded, nothing new can have been reported,
and the call returns ``None`` at once; once any wait has returned since,
the system call is made.  That is coarser than clearing a mark per event
(a wait that reported other sources also re-enables the call), and it
costs the event path nothing but one ``advance()`` per batch.

The rules that keep it from ever losing a wake-up:

* **the epoch is read before the system call**, so a wait that returned
  while the call was in flight leaves a mark that no longer matches;
* **epochs are never reused**: they come from one counter, taken after the
  kernel returned, so a mark can match only while no wait has returned
  since it was read (concurrent pollers may store their values out of
  order; a mark made at a value that is overwritten never matches again);
* **closing is sticky**: an event that carries a closing bit
  (``Facts.closing_mask``: hang-up, read-closed, error) switches tracking off
  for its source until it is deregistered, so ``b""`` or the error is always
  read;
* **only what can be trusted is tracked**: metalio's stream sources
  (``TcpStream``, ``UnixStream``, ``PipeReader``, ``PipeWriter``) registered
  as objects with exactly one Poll whose backend has exact edges.  Raw
  ``int`` descriptors, datagram sockets (a short datagram says nothing about
  the queue), sources registered with two Polls, and the poll/select
  backends (whose edges are rebuilt from levels by re-arming on ``None``)
  always make the system call;
* ``register``, ``reregister`` and ``deregister`` reset the marks; ``close``
  switches tracking off, so every call after it fails as before.

What this module owns: the epoch, and the tracking state it stores in the
sources' slots (``_epoch``, ``_rmark``, ``_wmark``, ``_polls``).  What it
must not know: how a source reads or writes (``metalio._fdio`` does that,
and reads the state), or how events are delivered.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from ._speedups_loader import CORE

if TYPE_CHECKING:
    from .registry import Registration, Registry

__all__ = ["NEVER", "Epoch", "Tracking", "reset"]

_NAN: Final = float("nan")
_is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
_FREE_THREADED: Final = _is_gil_enabled is not None and not _is_gil_enabled()


class _LockedCount:
    """``itertools.count`` whose ``next()`` is atomic without the GIL too."""

    __slots__ = ("_count", "_lock")

    def __init__(self) -> None:
        self._count = itertools.count(1)
        self._lock = threading.Lock()

    def __iter__(self) -> _LockedCount:
        return self

    def __next__(self) -> int:
        with self._lock:
            return next(self._count)


class _EpochReference:
    """:class:`Epoch` in Python: the reference, and the one in use without the C core."""

    __slots__ = ("counter", "now")

    def __init__(self) -> None:
        self.now: float = 0
        self.counter: Iterator[int] = _LockedCount() if _FREE_THREADED else itertools.count(1)

    def advance(self) -> None:
        """A wait returned: no mark made before now can match any more."""
        self.now = next(self.counter)


if TYPE_CHECKING:
    _EpochBase = _EpochReference  # the type checker reads the reference
else:
    # The C core's EpochCore: the same two members' behaviour, and the
    # stream calls read ``now`` straight from its layout.
    _EpochBase = _EpochReference if CORE is None else CORE.EpochCore


class Epoch(_EpochBase):
    """The number a tracking Poll changes whenever a wait returns.

    ``now`` is read by the sources.  Whoever waited calls :meth:`advance`
    right after the kernel returned, which stores a fresh value.  Two
    pollers must never take the same value: ``next()`` on an
    ``itertools.count`` is one atomic C call under the GIL, free-threaded
    builds use a locked counter, and the C core's ``advance`` is one atomic
    add.
    """

    __slots__ = ()


class _Never(Epoch):
    """The epoch of a source that must not be tracked: no mark ever equals NaN."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        self.now = _NAN


NEVER: Final = _Never()
"""Stands in a source's ``_epoch`` while tracking is switched off for it
(closing seen, or registered with two Polls): marks are still written, and
never match."""


def reset(source: object, epoch: Epoch | None) -> None:
    """Give a tracked source a new epoch (``None``: untracked) and clear its marks."""
    source._epoch = epoch  # type: ignore[attr-defined]
    source._rmark = source._wmark = -1  # type: ignore[attr-defined]


def switch_off(source: object) -> None:
    """A closing event for *source*: make every later call a system call."""
    if getattr(source, "_epoch", None) is not None:
        source._epoch = NEVER  # type: ignore[attr-defined]


class Tracking:
    """Keeps the tracking state of the sources registered with one registry.

    Attached as the registry's observer.  *enabled* is the backend's
    ``exact_edges``: without it sources are counted (for the two-Polls rule)
    but never tracked.
    """

    __slots__ = ("enabled", "epoch")

    def __init__(self, registry: Registry) -> None:
        self.enabled = registry.facts.exact_edges
        self.epoch = Epoch()
        registry.observe(self._changed)

    def _changed(self, fd: int, old: Registration | None, new: Registration | None) -> None:
        """The registry's observer (its lock is held)."""
        old_source: Any = None if old is None else old.source
        new_source: Any = None if new is None else new.source
        if old_source is not None and old_source is new_source:
            # reregister: same source, new interest or options.
            if hasattr(new_source, "_polls"):
                keep = new_source._epoch
                if new_source._polls == 1 and keep is not NEVER:
                    keep = self.epoch if self.enabled else None
                reset(new_source, keep)
            return
        if hasattr(old_source, "_polls"):
            polls = old_source._polls - 1
            old_source._polls = polls
            reset(old_source, None if polls == 0 else NEVER)
        if hasattr(new_source, "_polls"):
            polls = new_source._polls + 1
            new_source._polls = polls
            if polls == 1:
                reset(new_source, self.epoch if self.enabled else None)
            else:
                reset(new_source, NEVER)
