"""A hashed timing wheel: O(1) set and cancel, expiry in proportion to what fires.

Theory of operation
===================

Time is cut into *ticks* of ``tick`` seconds counted from ``origin``, the
clock reading when the :class:`Timer` was built.  Every timeout is filed
under one integer tick, its deadline rounded up::

    tick(deadline) = ceil((deadline - origin) / tick)

Everything the wheel does afterwards (hashing, grouping, walking forward,
finding the next occupied slot) is arithmetic on small ints: no float
comparison, no ``__lt__`` method and no heap on the hot paths.  Integer
ticks are also what make the structure reproducible: all deadlines within
one tick share one key, and an injected clock gives bit-for-bit identical
runs.

The wheel
---------
As in Varghese & Lauck's hashed wheel, there are ``wheel_size`` slots (a
power of two, *W*); tick *k* hashes to slot ``k & (W - 1)``, and one turn of
the wheel is a *rotation*: tick *k* belongs to rotation ``k >> log2(W)``.
The textbook scheme keeps one unsorted list per slot shared by all
rotations, so every visit to a slot steps over the timeouts that wait there
for a later turn, O(n / W) work per tick whatever fires.  Here a slot holds
one *bucket per absolute tick* instead.  A timeout due many rotations from
now waits in its own bucket, keyed by its absolute tick, and the visits of
earlier rotations to its slot never touch it: a timeout set a thousand
rotations ahead is looked at exactly once, when it fires.

Two dicts hold the whole state:

* ``_buckets`` maps an absolute tick to its bucket, an insertion-ordered
  ``dict`` of ``Timeout -> payload``;
* ``_occ`` maps a rotation to its occupancy word, a *W*-bit ``int`` whose
  bit *s* is set when slot *s* of that rotation has a bucket.  Only
  rotations with pending timeouts have a word.  The next occupied slot is
  ``w & -w``, computed in C, not found by a Python loop over empty slots.

Setting a timeout is one dict insertion (plus two bit operations when it
opens a bucket).  Cancelling is one dict deletion, plus the same bit
operations when the bucket empties: the entry, its reference to the payload
and an emptied bucket disappear at once.  There are no tombstones and
nothing for a later sweep (asyncio leaves cancelled handles in its heap
until they reach the top, which is why programs that keep re-arming idle
timers see that heap grow).

Expiry
------
Rounding a deadline up can only move it into a later tick, so a timeout due
at *now* sits in a tick no later than ``m = floor((now - origin) / tick) +
1``.  ``expired(now)`` walks the occupied slots from the earliest pending
tick up to *m*, rotation by rotation, skipping empty slots with the
occupancy words.  Every bucket below tick ``m - 1`` is wholly due and is
taken as it is; the two buckets of ticks ``m - 1`` and ``m`` straddle *now*,
so their entries are compared with *now* one by one and the ones not yet due
stay.  The result is **exact**: precisely the timeouts whose deadline is
``<= now``, so a timeout never fires early and is never held back until the
next tick boundary.  Payloads come out in deadline order: buckets in tick
order and, within a bucket, a stable sort on the deadline (equal deadlines
keep the order they were set in).  The cost is proportional to the buckets
and timeouts that fire, plus the two boundary buckets; a caller that fell a
thousand rotations behind catches up in one call without visiting the ticks
it missed.

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
The earliest pending deadline is cached.  ``set_timeout`` only invalidates
the cache when it files something at or before the earliest pending tick,
``cancel`` only when it removes from that tick, and ``expired`` only when it
did some work.  ``_lo``, a lower bound on the earliest pending tick, makes
the recomputation short: one dict probe when the bound is exact (the usual
case), else one shift and ``w & -w`` on the bound's rotation word, else a
``min()`` over the rotations that have pending timeouts; then the minimum
deadline of that one bucket.  With a valid cache, ``expired(now)`` for a
*now* before the next deadline is a single comparison, so the event loop can
call both on every iteration.

Memory
------
A pending timeout costs its :class:`Timeout` handle (an object with two
slots, the tick and the deadline), those two numbers and one entry in its
bucket; a bucket (a small dict) is shared by all timeouts of its tick.
Empty buckets and all-zero occupancy words are deleted at once, so an idle
timer holds two empty dicts, whatever ``wheel_size`` is.  A handle does not
reference its payload: a fired or cancelled payload is released at once even
while the program keeps the handle.

Threads
-------
A :class:`Timer` is not thread-safe.  It belongs to the thread that runs the
event loop; other threads should send that loop a message instead.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final

from metalio._errors import TimerError

__all__ = ["Timeout", "Timer"]

# Filing rounds a deadline up to its tick, unless it lies less than 2**-20
# tick past a boundary (see "Exactness with floats" above).
_CEIL: Final = 1.0 - 2.0**-20
_INF: Final = math.inf
# Larger than any tick a finite float deadline can produce (< 2**1024).
_NO_TICK: Final = 1 << 1100

_by_deadline = attrgetter("_deadline")


class Timeout:
    """The handle :meth:`Timer.set_timeout` returns; pass it to :meth:`Timer.cancel`.

    A handle only names a timeout, like mio's ``Timeout`` value: it does not
    keep the payload alive and holds no state of its own.  Ask the timer
    whether it is still pending with ``timeout in timer``.  Handles compare
    and hash by identity.  Only :meth:`Timer.set_timeout` makes meaningful
    handles: a ``Timeout()`` built directly is never pending anywhere.
    """

    # No __init__ on purpose: Timer builds handles with a bare ``Timeout()``
    # and two slot stores, the cheapest way to make an object in CPython.
    __slots__ = ("_deadline", "_tick")

    _tick: int
    _deadline: float

    @property
    def deadline(self) -> float:
        """The clock time at which this timeout becomes due (``clock() + delay``).

        :raises AttributeError: the handle was not made by ``set_timeout``.
        """
        return self._deadline

    @property
    def tick(self) -> int:
        """The wheel tick, counted from the timer's origin, the timeout is filed under.

        :raises AttributeError: the handle was not made by ``set_timeout``.
        """
        return self._tick

    def __repr__(self) -> str:
        deadline = getattr(self, "_deadline", None)
        if deadline is None:
            return "<Timeout (unset)>"
        return f"<Timeout deadline={deadline!r} tick={self._tick}>"


def _real(value: object, what: str) -> float:
    """Return *value*, a real number that is not an exact ``int``/``float``, as one.

    :raises TypeError: *value* is a ``bool`` or not a real number.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a real number of seconds, not bool")
    if isinstance(value, int):
        return int(value)
    if not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number of seconds, not {type(value).__name__}")
    return float(value)


def _delay_error(delay: object) -> Exception:
    """The exception for a delay that failed ``0 <= delay < inf``."""
    if not isinstance(delay, numbers.Real):
        return TypeError(f"delay must be a real number of seconds, not {type(delay).__name__}")
    if delay != delay:
        return ValueError("delay must not be NaN")
    if delay < 0:
        return ValueError(f"delay must be >= 0, got {delay!r}")
    return ValueError(f"delay must be finite, got {delay!r}")


class Timer:
    """A hashed timing wheel of timeouts carrying arbitrary payloads.

    :param tick: the wheel's resolution in seconds (``> 0``).  A timeout
        never fires before its deadline and, when :meth:`expired` is called
        often enough, no later than one tick after it.
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
        "_lo",
        "_mask",
        "_nd",
        "_occ",
        "_origin",
        "_room",
        "_shift",
        "_tick",
    )

    def __init__(
        self,
        tick: float = 0.001,
        wheel_size: int = 1024,
        capacity: int = 65536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tick.__class__ is not float:
            tick = _real(tick, "tick")
        if not 0 < tick < _INF:
            raise ValueError(f"tick must be a positive finite number of seconds, got {tick!r}")
        wheel_size = _count(wheel_size, "wheel_size")
        capacity = _count(capacity, "capacity")
        if not callable(clock):
            raise TypeError(f"clock must be callable, not {type(clock).__name__}")
        origin = clock()
        if origin.__class__ is not float and origin.__class__ is not int:
            origin = _real(origin, "clock()")
        if not -_INF < origin < _INF:
            raise ValueError(f"clock() must return a finite time, got {origin!r}")

        self._tick: float = float(tick)
        self._shift: int = (wheel_size - 1).bit_length()
        self._mask: int = (1 << self._shift) - 1
        self._capacity: int = capacity
        self._clock: Callable[[], float] = clock
        self._origin: float = origin
        # tick -> bucket (Timeout -> payload, in the order they were set).
        self._buckets: dict[int, dict[Timeout, Any]] = {}
        self._bget: Callable[[int], dict[Timeout, Any] | None] = self._buckets.get
        # rotation -> occupancy word (bit s: slot s of that rotation has a bucket).
        self._occ: dict[int, int] = {}
        # Free places: capacity - pending.  One counter serves len() and the
        # capacity check, which saves an attribute access per set/cancel.
        self._room: int = capacity
        # A lower bound on the earliest pending tick (_NO_TICK: none pending).
        self._lo: int = _NO_TICK
        # Cached next_deadline(), the earliest pending deadline; while it is
        # not None, _lo is exactly its tick.
        self._nd: float | None = None

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
        """``timeout in timer``: whether *timeout* is pending in this timer."""
        if not isinstance(timeout, Timeout):
            return False
        bucket = self._buckets.get(getattr(timeout, "_tick", -1))
        return bucket is not None and timeout in bucket

    def __repr__(self) -> str:
        return (
            f"<Timer pending={self._capacity - self._room} tick={self._tick!r} "
            f"wheel_size={self._mask + 1} capacity={self._capacity}>"
        )

    # ------------------------------------------------------------- set/cancel

    def set_timeout(self, delay: float, payload: Any) -> Timeout:
        """Arrange for *payload* to be returned by :meth:`expired` after *delay* seconds.

        The deadline is ``clock() + delay``; the timeout never fires before
        it.  O(1).

        :returns: a :class:`Timeout` handle for :meth:`cancel`.
        :raises TypeError: *delay* is not a real number.
        :raises ValueError: *delay* is negative, NaN or infinite.
        :raises metalio.TimerError: ``capacity`` timeouts are already pending.
        :raises OverflowError: *delay* is so large that its tick number is
            not a finite float (more than about ``1e308`` ticks).
        """
        # The hot path: one comparison chain validates the delay (a
        # non-number fails it with TypeError, NaN fails it too), and every
        # step below is a plain slot load, float operation or dict operation.
        try:
            if not 0 <= delay < _INF:
                raise _delay_error(delay)
        except TypeError:
            raise _delay_error(delay) from None
        room = self._room
        if not room:
            raise TimerError(f"too many pending timeouts (capacity {self._capacity})")
        deadline = self._clock() + delay
        k = int((deadline - self._origin) / self._tick + _CEIL)
        if k <= self._lo:
            self._lo = k
            self._nd = None
        timeout = Timeout()
        timeout._tick = k
        timeout._deadline = deadline
        bucket = self._bget(k)
        if bucket is None:
            self._buckets[k] = {timeout: payload}
            occ = self._occ
            r = k >> self._shift
            occ[r] = occ.get(r, 0) | (1 << (k & self._mask))
        else:
            bucket[timeout] = payload
        self._room = room - 1
        return timeout

    def cancel(self, timeout: Timeout) -> bool:
        """Cancel a pending timeout and release its payload at once.  O(1).

        :returns: ``True`` if *timeout* was pending in this timer and now
            never fires; ``False`` if it already fired, was already
            cancelled, was dropped by :meth:`clear`, or was issued by another
            timer (such a handle is never pending here, so this timer is left
            untouched).
        :raises TypeError: *timeout* is not a :class:`Timeout`.
        """
        try:
            k = timeout._tick
            bucket = self._buckets[k]
            del bucket[timeout]
        except KeyError:
            return False
        except AttributeError:
            if isinstance(timeout, Timeout):
                return False  # an unset handle
            raise TypeError(f"expected a Timeout, not {type(timeout).__name__}") from None
        if not bucket:
            del self._buckets[k]
            occ = self._occ
            r = k >> self._shift
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

        Handles issued before stay valid objects; :meth:`cancel` returns
        ``False`` for them.
        """
        self._buckets.clear()
        self._occ.clear()
        self._room = self._capacity
        self._lo = _NO_TICK
        self._nd = None

    # ----------------------------------------------------------------- expiry

    def _reach(self, now: float) -> int:
        """The last tick that can hold a timeout due at *now*: ``floor(...) + 1``.

        :raises TypeError: *now* is not a real number.
        :raises ValueError: *now* is NaN or infinite.
        """
        try:
            return int((now - self._origin) / self._tick + 1.0)
        except TypeError:
            _real(now, "now")
            raise
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
        nd = self._nd
        if nd is not None:
            try:
                if now < nd:
                    return []
            except TypeError:
                pass  # _reach() explains
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
        nd = self._nd
        if nd is not None:
            try:
                if now < nd:
                    return 0
            except TypeError:
                pass  # _reach() explains
        m = self._reach(now)
        if m < self._lo:
            return 0
        return self._collect(m, now, out)

    def _collect(self, m: int, now: float, out: list[Any]) -> int:
        """Move every timeout due at *now* into *out*; *m* is ``_reach(now) >= _lo``."""
        if self._room == self._capacity:
            self._lo = _NO_TICK
            return 0
        buckets = self._buckets
        occ = self._occ
        shift = self._shift
        extend = out.extend
        by_deadline = _by_deadline
        # Ticks m - 1 and m straddle now: their deadlines are compared one by
        # one.  Every earlier tick is wholly due.
        exact = m - 1
        first_rot = self._lo >> shift
        last_rot = m >> shift
        last_slot = m & self._mask
        rotations: range | list[int]
        if last_rot - first_rot <= len(occ):
            rotations = range(first_rot, last_rot + 1)
        else:
            # Fell far behind: visit only the rotations that have timeouts.
            rotations = sorted([r for r in occ if r <= last_rot])
        fired = 0
        lo = m + 1
        for r in rotations:
            word = occ.get(r)
            if word is None:
                continue
            todo = word & ((2 << last_slot) - 1) if r == last_rot else word
            keep = word ^ todo
            base = r << shift
            while todo:
                low = todo & -todo
                todo ^= low
                k = base | (low.bit_length() - 1)
                bucket = buckets.pop(k)
                if k >= exact:
                    due = [t for t in bucket if t._deadline <= now]
                    if len(due) < len(bucket):
                        if due:
                            if len(due) > 1:
                                due.sort(key=by_deadline)
                            extend([bucket.pop(t) for t in due])
                            fired += len(due)
                        buckets[k] = bucket
                        keep |= low
                        if k < lo:
                            lo = k
                        continue
                if len(bucket) == 1:
                    extend(bucket.values())
                    fired += 1
                else:
                    extend(map(bucket.__getitem__, sorted(bucket, key=by_deadline)))
                    fired += len(bucket)
            if keep:
                occ[r] = keep
            else:
                del occ[r]
        self._room += fired
        self._lo = lo if self._room != self._capacity else _NO_TICK
        self._nd = None
        return fired

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
            return nd
        if self._room == self._capacity:
            return None
        buckets = self._buckets
        k = self._lo
        bucket = buckets.get(k)
        if bucket is None:
            occ = self._occ
            shift = self._shift
            word = occ.get(k >> shift)
            if word is not None:
                word >>= k & self._mask
            if word:
                k += (word & -word).bit_length() - 1
            else:
                # The bound's rotation is empty: the earliest rotation that
                # has timeouts holds the answer in its lowest bit.
                r = min(occ)
                word = occ[r]
                k = (r << shift) | ((word & -word).bit_length() - 1)
            bucket = buckets[k]
            self._lo = k
        earliest: float = min(map(_by_deadline, bucket))
        self._nd = earliest
        return earliest


def _count(value: object, what: str) -> int:
    """Validate a positive ``int`` constructor argument.

    :raises TypeError: *value* is not an ``int`` (or is a ``bool``).
    :raises ValueError: *value* is less than 1.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    return int(value)
