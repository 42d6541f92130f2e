"""The expiry half of the timing wheel: cascading, the walk to *now*, the next deadline.

:class:`metalio.timer.Timer` is built from two halves that share one set of
slots: ``timer.py`` files and cancels timeouts, this module finds the due
ones (``expired``, ``expired_into``) and the earliest pending deadline
(``next_deadline``), which also makes ``soonest`` exact again.  The walk
visits only occupied slots (``w & -w`` on a rotation's occupancy word) from
the earliest pending tick up to the last tick that can hold a timeout due at
*now*; the two boundary buckets are compared entry by entry, so expiry is
exact.  ``docs/timer.md`` has the full argument.

What it must not know: how timeouts are filed beyond the layout it reads.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Final, TypeAlias

from . import _validate

__all__ = ["NO_TICK", "Entry", "WheelExpiry", "by_deadline"]

# Larger than any tick a finite float deadline can produce (< 2**1024).
NO_TICK: Final = 1 << 1100
_NO_TICK: Final = NO_TICK
_INF: Final = math.inf

Entry: TypeAlias = tuple[float, Any]
"""What a bucket maps a handle to: ``(deadline, payload)``."""

# Keys for a bucket's (deadline, payload) values: sorts use the deadline
# alone, so payloads are never compared (they may have no order at all).
by_deadline: Final = itemgetter(0)
_by_deadline: Final = by_deadline
_payload_of: Final = itemgetter(1)


class WheelExpiry:
    """The wheel's layout and the expiry methods of ``Timer`` (see the module docstring).

    ``Timer.__init__`` fills the slots; both halves read and write them.
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

    _buckets: dict[int, dict[int, Entry]]
    _bget: Callable[[int], dict[int, Entry] | None]
    _occ: dict[int, int]
    _far: dict[int, dict[int, Entry]]
    _rc: int
    _room: int
    _capacity: int
    _lo: int
    _nd: float | None
    _shift: int
    _mask: int
    _origin: float
    _tick: float
    _clock: Callable[[], float]
    soonest: float

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
