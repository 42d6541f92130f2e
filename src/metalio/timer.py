"""A hashed timing wheel: O(1) set and cancel, exact expiry in proportion to what fires.

What it owns: the pending timeouts of one :class:`Timer`, filed under
integer ticks, ``tick(deadline) = ceil((deadline - origin) / tick)``, in two
levels: the *near level* (``_buckets``: tick -> bucket, and ``_occ``:
rotation -> occupancy word, for the rotations up to ``_rc``) and the *far
level* (``_far``: rotation -> its timeouts, untouched until the rotation
comes and *cascades*).  Setting is one dict insertion, cancelling one dict
deletion; nothing is left behind.  Expiry (``metalio.timer_expiry``, the
other half of the class) walks only occupied slots and is exact: precisely
the timeouts whose deadline is ``<= now``, earlier deadlines first.

``soonest`` is for event loops: a lower bound on every pending deadline
(``inf`` when none), lowered by ``set_timeout`` and made exact by
``next_deadline()`` and ``clear()``, so a loop knows how long it may sleep
with one attribute read.  A :data:`Timeout` handle is a plain ``int``,
``tick * 2**64 + serial``, which the garbage collector does not track.

The full theory (the wheel, expiry, exactness with floats, handles, memory)
is ``docs/timer.md``.  What it must not know: who calls it, or what a
payload is.  Not thread-safe: a timer belongs to one thread.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from . import _validate
from ._errors import TimerError
from .timer_expiry import NO_TICK as _NO_TICK
from .timer_expiry import Entry as _Entry
from .timer_expiry import WheelExpiry

__all__ = ["Timeout", "Timer"]

# Filing rounds a deadline up to its tick, unless it lies less than 2**-20
# tick past a boundary (see "Exactness with floats" in docs/timer.md).
_CEIL: Final = 1.0 - 2.0**-20
_INF: Final = math.inf

Timeout: TypeAlias = int
"""The handle :meth:`Timer.set_timeout` returns; pass it to :meth:`Timer.cancel`.

An opaque ``int``, unique in the process: compare handles by value (``==``,
or as dict keys and set members), never by identity.  Like mio's
``Timeout`` value it only names a timeout: it holds neither the payload
(which it therefore does not keep alive) nor whether the timeout is still
pending; ask the timer, with ``timeout in timer`` or
:meth:`Timer.deadline_of`.  ``Timeout()``, that is ``0``, is never a handle.

It is a plain ``int``, not a class of its own, because the garbage collector
does not track ints (see "Handles" in docs/timer.md).
"""

# The serial numbers in the handles of every timer in the process.  next()
# on a count is one C call, atomic under the GIL, so timers in different
# threads never share one.  Serials start at 1: no handle is 0.  A handle is
# tick * 2**64 + serial (the 64 is written out where it is used): 2**64
# serials last 58,000 years at ten million timeouts a second.
_serials: Final = itertools.count(1)


def _not_a_timeout(value: object) -> TypeError:
    return TypeError(f"expected a Timeout (an int from set_timeout), not {type(value).__name__}")


class Timer(WheelExpiry):
    """A hashed timing wheel of timeouts carrying arbitrary payloads.

    :param tick: the wheel's resolution in seconds (``> 0``): the width of a
        bucket.  Expiry is exact whatever the tick; the tick only trades
        bucket size against the number of buckets.
    :param wheel_size: slots per rotation; rounded up to a power of two.
    :param capacity: the most timeouts that may be pending at once.
    :param clock: a function returning the time in seconds as a ``float``;
        inject a manual clock to make every behaviour deterministic.  It is
        read once here (the wheel's origin), once per :meth:`set_timeout`
        and once per :meth:`expired` called without ``now``.
    :raises TypeError: an argument has the wrong type (``bool`` is not
        accepted for any of them; *clock* must be callable).
    :raises ValueError: ``tick`` is not a positive finite number,
        ``wheel_size < 1``, ``capacity < 1``, or ``clock()`` did not return a
        finite number.

    Not thread-safe: use a timer from one thread only.
    """

    __slots__ = ()  # the layout is WheelExpiry's

    def __init__(
        self,
        tick: float = 0.001,
        wheel_size: int = 1024,
        capacity: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        tick = _validate.resolution(tick, "tick")
        wheel_size = _validate.count(wheel_size, "wheel_size")
        capacity = _validate.count(capacity, "capacity")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        origin = clock()
        origin = _validate.real(origin, "clock()")
        if not -_INF < origin < _INF:
            raise ValueError(f"clock() must return a finite time, got {origin!r}")

        self._tick: float = float(tick)
        self._shift: int = (wheel_size - 1).bit_length()
        self._mask: int = (1 << self._shift) - 1
        self._capacity: int = capacity
        self._clock: Callable[[], float] = clock
        self._origin: float = origin
        # The near level, rotations <= _rc: tick -> bucket (Timeout ->
        # (deadline, payload), in setting order) and rotation -> occupancy
        # word.
        self._buckets: dict[int, dict[Timeout, _Entry]] = {}
        self._bget: Callable[[int], dict[Timeout, _Entry] | None] = self._buckets.get
        self._occ: dict[int, int] = {}
        # The far level, rotations > _rc: rotation -> (Timeout -> (deadline,
        # payload)).
        self._far: dict[int, dict[Timeout, _Entry]] = {}
        self._rc: int = 0
        # Free places, capacity - pending: one counter serves len() and the
        # capacity check.
        self._room: int = capacity
        # A lower bound on the earliest pending tick (_NO_TICK: none pending).
        self._lo: int = _NO_TICK
        # Cached next_deadline(), the earliest pending deadline.  While it is
        # not None, _lo is exactly its tick, which is on the near level.
        self._nd: float | None = None
        # A lower bound on every pending deadline (inf: none pending), kept
        # for the EventLoop, which reads it on every iteration to know how
        # long it may sleep: lowered by set_timeout, made exact again by
        # next_deadline() and clear(); fires and cancels may leave it early,
        # which costs the loop at most one wake-up with nothing due.
        self.soonest: float = _INF

    # ------------------------------------------------------------------ info

    @property
    def tick(self) -> float:
        """The wheel's resolution in seconds."""
        return self._tick

    @property
    def wheel_size(self) -> int:
        """Slots per rotation (the constructor's value rounded up to a power of two)."""
        return self._mask + 1

    @property
    def capacity(self) -> int:
        """The most timeouts that may be pending at once."""
        return self._capacity

    @property
    def clock(self) -> Callable[[], float]:
        """The clock the timer reads when no explicit time is given."""
        return self._clock

    def __len__(self) -> int:
        """The number of pending timeouts."""
        return self._capacity - self._room

    def __contains__(self, timeout: object) -> bool:
        """``timeout in timer``: whether *timeout* is pending in this timer.

        ``False`` for anything that is not a :data:`Timeout` (an ``int``).
        """
        if type(timeout) is not int:
            return False
        return self._entry(timeout) is not None

    def _entry(self, timeout: int) -> _Entry | None:
        """The ``(deadline, payload)`` of pending *timeout*, or ``None``."""
        k = timeout >> 64
        r = k >> self._shift
        holder = self._far.get(r) if r > self._rc else self._buckets.get(k)
        return None if holder is None else holder.get(timeout)

    def deadline_of(self, timeout: Timeout) -> float | None:
        """The deadline (``clock() + delay``) of *timeout*, if it is pending here.

        :returns: the exact clock time at which it becomes due, or ``None``
            if it is not pending in this timer (fired, cancelled, cleared,
            or issued by another timer).  O(1).
        :raises TypeError: *timeout* is not a :data:`Timeout`.
        """
        if type(timeout) is not int:
            raise _not_a_timeout(timeout)
        entry = self._entry(timeout)
        return None if entry is None else entry[0]

    @staticmethod
    def tick_of(timeout: Timeout) -> int:
        """The wheel tick *timeout* is filed under, counted from its timer's origin.

        ``ceil((deadline - origin) / tick)``, give or take the ``2**-20``
        tick of slack described under "Exactness with floats".  Read from
        the handle alone, so it is defined whether or not the timeout is
        still pending, and for any timer's handles.

        :raises TypeError: *timeout* is not a :data:`Timeout`.
        """
        if type(timeout) is not int:
            raise _not_a_timeout(timeout)
        return timeout >> 64

    def __repr__(self) -> str:
        return (
            f"<Timer pending={self._capacity - self._room} tick={self._tick!r} "
            f"wheel_size={self._mask + 1} capacity={self._capacity}>"
        )

    # ------------------------------------------------------------- set/cancel

    def set_timeout(self, delay: float, payload: Any) -> Timeout:
        """Arrange for *payload* to be returned by :meth:`expired` after *delay* seconds.

        The deadline is ``clock() + delay``.  O(1).

        :returns: a :data:`Timeout` handle (an ``int``, unique in the
            process) for :meth:`cancel`, :meth:`deadline_of` and ``in``.
        :raises TypeError: *delay* is not a real number.
        :raises ValueError: *delay* is negative, NaN or infinite.
        :raises metalio.TimerError: ``capacity`` timeouts are already pending.
        :raises ValueError: also when *delay* is finite but so large that its
            deadline or tick number is not a finite float (more than about
            ``1e308`` ticks), like an infinite one.
        """
        # The hot path: one comparison chain validates the delay (a
        # non-number fails it with TypeError, NaN fails it too), and every
        # step below is a slot load, a float or int operation, one next() on
        # the serial counter or a dict operation.  Nothing it creates is
        # tracked by the garbage collector for long: the handle is an int and
        # the (deadline, payload) tuple is untracked by the first collection
        # that finds a payload which cannot hold a cycle.
        if delay.__class__ is not float or not 0.0 <= delay < _INF:
            delay = _validate.delay(delay)
        room = self._room
        if not room:
            raise TimerError(f"too many pending timeouts (capacity {self._capacity})")
        now = self._clock()
        try:
            deadline = now + delay
            # A float (the tick is one), so float.__trunc__: int() without
            # the constructor's argument handling, which is most of its cost.
            k = ((deadline - self._origin) / self._tick + _CEIL).__trunc__()
        except OverflowError:
            raise ValueError(
                f"delay {delay!r} is too large: its deadline is not representable"
            ) from None
        if k <= self._lo:
            self._lo = k
            self._nd = None
        timeout = (k << 64) + next(_serials)
        r = k >> self._shift
        if r > self._rc:
            # A later rotation: one insertion into that rotation's dict
            # (a subscript, not .get: no method call on the common path).
            try:
                self._far[r][timeout] = (deadline, payload)
            except KeyError:
                self._far[r] = {timeout: (deadline, payload)}
        else:
            bucket = self._bget(k)
            if bucket is None:
                self._buckets[k] = {timeout: (deadline, payload)}
                occ = self._occ
                occ[r] = occ.get(r, 0) | (1 << (k & self._mask))
            else:
                bucket[timeout] = (deadline, payload)
        self._room = room - 1
        if deadline < self.soonest:
            self.soonest = deadline
        return timeout

    def cancel(self, timeout: Timeout) -> bool:
        """Cancel a pending timeout and release its payload at once.  O(1).

        :returns: ``True`` if *timeout* was pending in this timer and now
            never fires; ``False`` if it already fired, was already
            cancelled, was dropped by :meth:`clear`, was issued by another
            timer (handles are unique in the process, so such a handle is
            never pending here and this timer is left untouched), or is any
            other ``int``.
        :raises TypeError: *timeout* is not a :data:`Timeout`, an ``int``
            (a ``bool`` is not one either).
        """
        if type(timeout) is not int:
            raise _not_a_timeout(timeout)
        k = timeout >> 64
        r = k >> self._shift
        try:
            if r > self._rc:
                held = self._far[r]
                del held[timeout]
                if not held:
                    del self._far[r]
                # The cached next deadline is on the near level: still valid.
                self._room += 1
                return True
            bucket = self._buckets[k]
            del bucket[timeout]
        except KeyError:
            return False
        if not bucket:
            del self._buckets[k]
            occ = self._occ
            word = occ[r] ^ (1 << (k & self._mask))
            if word:
                occ[r] = word
            else:
                del occ[r]
        if k == self._lo:
            self._nd = None
        self._room += 1
        return True

    def clear(self) -> None:
        """Drop every pending timeout without firing it.

        :meth:`cancel` returns ``False`` for the handles issued before.
        """
        self._buckets.clear()
        self._occ.clear()
        self._far.clear()
        self._room = self._capacity
        self._lo = _NO_TICK
        self._nd = None
        self.soonest = _INF
