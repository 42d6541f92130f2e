"""A hashed timing wheel: O(1) set and cancel, exact expiry in proportion to what fires.

Theory of operation
===================

Time is cut into *ticks* of ``tick`` seconds counted from ``origin``, the
clock reading when the :class:`Timer` was built, and every timeout is filed
under one integer tick, its deadline rounded up::

    tick(deadline) = ceil((deadline - origin) / tick)

Everything the wheel does afterwards (hashing, grouping, walking forward,
finding the next occupied slot) is arithmetic on small ints: there is no
float comparison, no ``__lt__`` method and no heap on the hot paths, and an
injected clock makes every run bit-for-bit reproducible.

The wheel
---------
As in Varghese & Lauck, the wheel has ``wheel_size`` slots (a power of two,
*W*); tick *k* hashes to slot ``k & (W - 1)`` of rotation ``k >> log2(W)``.
Their basic hashed wheel keeps one unsorted list per slot shared by all
rotations, so every visit to a slot steps over the timeouts waiting there for
a later turn.  This one has two levels instead (their scheme 7, with a hash
table as the upper level), so that a timeout many rotations away is not
touched before its rotation comes:

* the **near level** holds the rotations up to ``_rc``, the rotation being
  worked through.  ``_buckets`` maps an absolute tick to its bucket, an
  insertion-ordered ``dict`` ``Timeout -> (deadline, payload)``; ``_occ``
  maps each such rotation to its occupancy word, a *W*-bit ``int`` whose
  bit *s* is set when slot *s* has a bucket.  The next occupied slot is
  ``w & -w``, computed in C, so no Python loop ever walks empty slots;
* the **far level**, ``_far``, maps every later rotation to one
  insertion-ordered ``dict`` of its timeouts.  Timeouts there wait,
  untouched, until their rotation is reached; then the rotation *cascades*:
  each survivor is filed into its tick's bucket, once.

Setting a timeout is one dict insertion, into a bucket or, for a later
rotation, into that rotation's dict (one big dict that fills in order, which
keeps the CPU caches warm however random the delays are).  Cancelling is one
dict deletion, plus two bit operations when a bucket empties.  The entry,
its reference to the payload and any emptied bucket or dict disappear at
once: there are no tombstones and nothing for a later sweep.  (asyncio
leaves cancelled handles in its heap until they reach the top, which is why
programs that keep re-arming idle timers see it grow.)  A timeout cancelled
before its rotation comes, such as a re-armed idle timer, never reaches the
near level at all.

Expiry
------
Rounding a deadline up can move it only into a later tick, so a timeout due
at *now* is in a tick no later than ``m = floor((now - origin) / tick) + 1``.
``expired(now)`` walks the occupied near-level slots from the earliest
pending tick up to *m*, rotation by rotation.  Every bucket before tick
``m - 1`` is wholly due and is taken as it is; the buckets of ticks ``m - 1``
and ``m`` straddle *now*, so their entries are compared with *now* one by
one and those not yet due stay.  Far rotations that *m* reaches fire
straight from their dict when they lie wholly before tick ``m - 1`` (a
caller that fell far behind), and cascade first otherwise.  The result is
**exact**: precisely the timeouts whose deadline is ``<= now``, so a timeout
never fires early and is not held back to the next tick boundary either.
Payloads come out in deadline order (buckets in tick order, and a stable
sort on the deadline within a bucket, so equal deadlines keep the order they
were set in).  The cost is proportional to what fires plus the two boundary
buckets; a caller a thousand rotations behind catches up in one call without
visiting the ticks it missed.

Exactness with floats
---------------------
Deadlines and *now* are floats.  Filing rounds up with a slack of ``2**-20``
tick, so that a deadline that is a tick boundary in decimal but lands a hair
above it in binary (0.3 s with 0.1 s ticks is 3.0000000000000004 ticks)
keeps the tick number one expects.  Beyond that, the argument above only
needs float rounding to be monotonic, which it is: a later time never maps
to an earlier tick, so a timeout due at *now* is always inside the walk, and
a bucket the walk takes whole ends at least ``1 - 2**-20`` tick before
*now*, a margin the rounding of one subtraction and one division cannot eat
while fewer than about ``2**50`` ticks have passed since ``origin``.

``next_deadline()``
-------------------
The earliest pending deadline is cached.  ``set_timeout`` invalidates the
cache only when it files something at or before the earliest pending tick,
``cancel`` only when it removes from that tick, and ``expired`` only when it
did some work.  ``_lo``, a lower bound on the earliest pending tick, keeps
the recomputation short: one dict probe when the bound is exact (the usual
case), else one shift and ``w & -w`` on the bound's rotation word, else a
``min()`` over the near rotations; when only far rotations are pending, the
earliest one cascades first (once per rotation).  Then it is the minimum
deadline of that one bucket.  With a valid cache, ``expired(now)`` for a
*now* before the next deadline is a single comparison, so an event loop can
call both on every iteration.

An event loop needs less: a time it may sleep until without missing
anything.  ``soonest`` is that, a lower bound on every pending deadline
(``inf`` when none is pending): ``set_timeout`` lowers it with one
comparison, ``next_deadline()`` and ``clear()`` make it exact, and fires and
cancels leave it where it was, early, which costs a loop at most one
wake-up with nothing due.  :class:`metalio.EventLoop` reads it on every
iteration and calls ``next_deadline()`` after each firing, so its
``timeout()`` does nothing but call ``set_timeout``.

Handles
-------
A :data:`Timeout` handle is a plain ``int``, ``tick * 2**64 + serial``: the
tick the timeout is filed under (``handle >> 64`` recovers it, by floor
division, also for the negative ticks of a clock that went back before the
origin) and a serial number from one process-wide counter.  Handles are
therefore unique in the process: a handle issued by another timer is never
pending in this one, and cancelling it here changes nothing.  ``cancel``
finds the bucket from the handle alone, with two shifts.

Why an ``int`` and not a small class: the cyclic garbage collector does not
track ints, but it tracks every instance of a class, ``__slots__`` or not,
and every instance of an ``int`` *subclass* too.  With a few hundred
thousand timeouts pending, the collections that tracked handles trigger, and
then traverse, cost a quarter to a third of ``set_timeout``: on CPython 3.11
with 200,000 pending, about 260 ns of a 780 ns call with the former
two-slot handle class, against about 30 ns now.

Memory
------
A pending timeout costs its handle (an ``int`` of a few digits), one dict
entry and a ``(deadline, payload)`` pair: a tuple, which the garbage
collector stops tracking as soon as it finds that the payload cannot be part
of a cycle (a number, a string, ``None``).  Buckets, occupancy words and far
rotations are deleted the moment they empty, so an idle timer holds three
empty dicts whatever ``wheel_size`` is.  A handle does not reference its
payload: a fired or cancelled payload is released at once even while the
program keeps the handle.

Threads
-------
A :class:`Timer` is not thread-safe.  It belongs to the thread that runs the
event loop; other threads should send that loop a message instead.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Final, TypeAlias

from . import _validate
from ._errors import TimerError

__all__ = ["Timeout", "Timer"]

# Filing rounds a deadline up to its tick, unless it lies less than 2**-20
# tick past a boundary (see "Exactness with floats" above).
_CEIL: Final = 1.0 - 2.0**-20
_INF: Final = math.inf
# Larger than any tick a finite float deadline can produce (< 2**1024).
_NO_TICK: Final = 1 << 1100

Timeout: TypeAlias = int
"""The handle :meth:`Timer.set_timeout` returns; pass it to :meth:`Timer.cancel`.

An opaque ``int``, unique in the process: compare handles by value (``==``,
or as dict keys and set members), never by identity.  Like mio's
``Timeout`` value it only names a timeout: it holds neither the payload
(which it therefore does not keep alive) nor whether the timeout is still
pending; ask the timer, with ``timeout in timer`` or
:meth:`Timer.deadline_of`.  ``Timeout()``, that is ``0``, is never a handle.

It is a plain ``int``, not a class of its own, because the garbage collector
does not track ints (see "Handles" above).
"""

# The serial numbers in the handles of every timer in the process.  next()
# on a count is one C call, atomic under the GIL, so timers in different
# threads never share one.  Serials start at 1: no handle is 0.  A handle is
# tick * 2**64 + serial (the 64 is written out where it is used): 2**64
# serials last 58,000 years at ten million timeouts a second.
_serials: Final = itertools.count(1)

# The value a bucket maps a Timeout to.
_Entry: TypeAlias = tuple[float, Any]

# Keys for a bucket's (deadline, payload) values: sorts use the deadline
# alone, so payloads are never compared (they may have no order at all).
_by_deadline = itemgetter(0)
_payload_of = itemgetter(1)


def _not_a_timeout(value: object) -> TypeError:
    return TypeError(f"expected a Timeout (an int from set_timeout), not {type(value).__name__}")


class Timer:
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

    __slots__ = (
        "_bget",
        "_buckets",
        "_capacity",
        "_clock",
        "_far",
        "_lo",
        "_mask",
        "_nd",
        "_occ",
        "_origin",
        "_rc",
        "_room",
        "_shift",
        "_tick",
        "soonest",
    )

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

    def _cascade(self, r: int) -> None:
        """Move far rotation *r*, the earliest one, down to the near level."""
        held = self._far.pop(r)
        buckets = self._buckets
        bget = buckets.get
        mask = self._mask
        word = 0
        # Dict order is setting order, so ties keep it in their buckets.
        for timeout, entry in held.items():
            k = timeout >> 64
            bucket = bget(k)
            if bucket is None:
                buckets[k] = {timeout: entry}
                word |= 1 << (k & mask)
            else:
                bucket[timeout] = entry
        self._occ[r] = word
        self._rc = r

    # ----------------------------------------------------------------- expiry

    def _reach(self, now: float) -> int:
        """The last tick that can hold a timeout due at *now*: ``floor(...) + 1``.

        :raises TypeError: *now* is not a real number.
        :raises ValueError: *now* is NaN or infinite.
        """
        try:
            return int((now - self._origin) / self._tick + 1.0)
        except (ValueError, OverflowError):
            raise ValueError(f"now must be a finite time, got {now!r}") from None

    def expired(self, now: float | None = None) -> list[Any]:
        """Remove and return the payloads of the timeouts due at *now*.

        *now* defaults to ``clock()``.  The result is exactly the pending
        timeouts whose deadline is ``<= now``, each returned once, earlier
        deadlines first (equal deadlines in the order they were set), however
        far behind the caller has fallen.  When nothing is due this costs
        one comparison; otherwise time proportional to what fires.

        :raises TypeError: *now* is not a real number.
        :raises ValueError: *now* is NaN or infinite.
        """
        if now is None:
            now = self._clock()
        if now.__class__ is not float:
            now = _validate.seconds(now, "now")
        nd = self._nd
        if nd is not None and now < nd:
            return []
        m = self._reach(now)
        if m < self._lo:
            return []
        out: list[Any] = []
        self._collect(m, now, out)
        return out

    def expired_into(self, now: float | None, out: list[Any]) -> int:
        """Like :meth:`expired`, but append the payloads to *out*.

        The event loop's path: it can reuse one list for every iteration.

        :returns: how many payloads were appended.
        :raises TypeError: *now* is not a real number.
        :raises ValueError: *now* is NaN or infinite.
        """
        if now is None:
            now = self._clock()
        if now.__class__ is not float:
            now = _validate.seconds(now, "now")
        nd = self._nd
        if nd is not None and now < nd:
            return 0
        m = self._reach(now)
        if m < self._lo:
            return 0
        return self._collect(m, now, out)

    def _collect(self, m: int, now: float, out: list[Any]) -> int:
        """Move every timeout due at *now* into *out*; *m* is ``_reach(now) >= _lo``."""
        if self._room == self._capacity:
            self._lo = _NO_TICK
            return 0
        shift = self._shift
        last_rot = m >> shift
        rc = self._rc
        fired = 0
        lo = m + 1
        if self._occ and self._lo >> shift <= rc:
            fired, lo = self._walk(self._lo >> shift, min(last_rot, rc), m, now, out)
        if last_rot > rc:
            # Rotations this call reaches beyond the near level, in order.
            # Those wholly before tick m - 1 fire straight from their dict;
            # the (at most two) that straddle now come down first.
            far = self._far
            whole = (m - 1) >> shift
            extend = out.extend
            for r in sorted([r for r in far if r <= last_rot]):
                if r < whole:
                    # A stable sort on the deadline alone: payloads are
                    # never compared, and equal deadlines keep setting order.
                    held = far.pop(r)
                    extend(map(_payload_of, sorted(held.values(), key=_by_deadline)))
                    fired += len(held)
                else:
                    self._cascade(r)
                    n, left = self._walk(r, r, m, now, out)
                    fired += n
                    if left < lo:
                        lo = left
            # Timeouts set for the current rotation from now on go straight
            # to the near level.
            self._rc = last_rot
        self._room += fired
        self._lo = lo if self._room != self._capacity else _NO_TICK
        self._nd = None
        return fired

    def _walk(
        self, first_rot: int, last_rot: int, m: int, now: float, out: list[Any]
    ) -> tuple[int, int]:
        """Fire the near-level buckets of rotations ``first_rot..last_rot`` up to tick *m*.

        :returns: how many fired, and the earliest tick left behind (the
            buckets of ticks ``m - 1`` and ``m`` keep what is not due at
            *now*), or ``m + 1``.
        """
        buckets = self._buckets
        occ = self._occ
        shift = self._shift
        extend = out.extend
        by_deadline = _by_deadline
        payload_of = _payload_of
        exact = m - 1
        top = m >> shift
        top_slot = m & self._mask
        rotations: range | list[int]
        if last_rot - first_rot <= len(occ):
            rotations = range(first_rot, last_rot + 1)
        else:
            # Fell far behind: visit only the rotations that have buckets.
            rotations = sorted([r for r in occ if first_rot <= r <= last_rot])
        fired = 0
        lo = m + 1
        for r in rotations:
            word = occ.get(r)
            if word is None:
                continue
            todo = word & ((2 << top_slot) - 1) if r == top else word
            keep = word ^ todo
            base = r << shift
            while todo:
                low = todo & -todo
                todo ^= low
                k = base | (low.bit_length() - 1)
                bucket = buckets.pop(k)
                if k >= exact:
                    # Ticks m - 1 and m straddle now: compare one by one.
                    due = [t for t, entry in bucket.items() if entry[0] <= now]
                    if len(due) < len(bucket):
                        if due:
                            entries = [bucket.pop(t) for t in due]
                            if len(entries) > 1:
                                entries.sort(key=by_deadline)
                            extend(map(payload_of, entries))
                            fired += len(entries)
                        buckets[k] = bucket
                        keep |= low
                        if k < lo:
                            lo = k
                        continue
                if len(bucket) == 1:
                    extend(map(payload_of, bucket.values()))
                    fired += 1
                else:
                    extend(map(payload_of, sorted(bucket.values(), key=by_deadline)))
                    fired += len(bucket)
            if keep:
                occ[r] = keep
            else:
                del occ[r]
        return fired, lo

    # ----------------------------------------------------------- next deadline

    def next_deadline(self) -> float | None:
        """The earliest deadline among the pending timeouts, ``None`` if none.

        ``expired(next_deadline())`` returns at least that timeout, and
        ``expired(now)`` returns nothing for any ``now`` before it.  Cached,
        so O(1) amortised: cheap enough to call on every event-loop
        iteration.
        """
        nd = self._nd
        if nd is not None:
            self.soonest = nd
            return nd
        if self._room == self._capacity:
            self.soonest = _INF
            return None
        occ = self._occ
        if not occ:
            # Only far rotations are pending: the earliest comes down.
            self._cascade(min(self._far))
        shift = self._shift
        k = self._lo
        bucket = self._buckets.get(k) if k >> shift <= self._rc else None
        if bucket is None:
            word = occ.get(k >> shift)
            if word is not None:
                word >>= k & self._mask
            if word:
                k += (word & -word).bit_length() - 1
            else:
                # The earliest near rotation holds it in its lowest bit.
                r = min(occ)
                word = occ[r]
                k = (r << shift) | ((word & -word).bit_length() - 1)
            bucket = self._buckets[k]
            self._lo = k
        earliest: float = min(map(_by_deadline, bucket.values()))
        self._nd = self.soonest = earliest
        return earliest
