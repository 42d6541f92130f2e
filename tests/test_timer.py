"""Tests of ``metalio.timer``: the hashed timing wheel.

Every test drives the timer with a manual clock, so nothing sleeps and
nothing depends on the machine's speed.  The first group ports mio 0.5's
``timer.rs`` unit tests (tick 100 ms, 16 slots, capacity 32, start 0; times
here are in seconds); the last group checks the wheel against a heap model
with hypothesis.
"""

from __future__ import annotations

import gc
import heapq
import math
import time
import weakref
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)

from metalio._errors import TimerError
from metalio.timer import Timeout, Timer


class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Payload:
    """An object whose lifetime can be watched with a weak reference."""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def mio_timer(clock: ManualClock) -> Timer:
    """The helper of mio 0.5's timer tests: 100 ms ticks, 16 slots, capacity 32."""
    return Timer(tick=0.1, wheel_size=16, capacity=32, clock=clock)


# --------------------------------------------------------- mio 0.5 ports


def test_timeout_next_tick(clock: ManualClock) -> None:
    t = mio_timer(clock)
    t.set_timeout(0.1, "a")
    assert t.expired(0.05) == []
    assert t.expired(0.1) == ["a"]
    assert t.expired(0.1) == []
    assert t.expired(0.15) == []
    assert t.expired(0.2) == []
    assert len(t) == 0


def test_clearing_timeout(clock: ManualClock) -> None:
    t = mio_timer(clock)
    handle = t.set_timeout(0.1, "a")
    assert t.cancel(handle) is True
    for now in (0.1, 0.2, 0.3, 1.7, 3.3):
        assert t.expired(now) == []
    assert len(t) == 0


def test_multiple_timeouts_same_tick(clock: ManualClock) -> None:
    t = mio_timer(clock)
    t.set_timeout(0.1, "a")
    t.set_timeout(0.1, "b")
    assert len(t) == 2
    # mio allowed either order; equal deadlines here keep the order of setting.
    assert t.expired(0.1) == ["a", "b"]
    assert t.expired(0.1) == []
    assert len(t) == 0


def test_multiple_timeouts_diff_tick(clock: ManualClock) -> None:
    t = mio_timer(clock)
    t.set_timeout(0.11, "a")
    t.set_timeout(0.22, "b")
    t.set_timeout(0.23, "c")
    t.set_timeout(0.44, "d")
    assert t.expired(0.1) == []
    assert t.expired(0.2) == ["a"]
    # mio returned c, b (LIFO within a slot); the contract wants earlier
    # deadlines first.
    assert t.expired(0.3) == ["b", "c"]
    assert t.expired(0.4) == []
    assert t.expired(0.5) == ["d"]
    assert t.expired(0.6) == []
    assert len(t) == 0


def test_catching_up(clock: ManualClock) -> None:
    t = mio_timer(clock)
    for delay, payload in ((0.11, "a"), (0.22, "b"), (0.23, "c"), (0.44, "d")):
        t.set_timeout(delay, payload)
    assert t.expired(0.6) == ["a", "b", "c", "d"]
    assert t.expired(0.6) == []
    assert len(t) == 0


def test_timeout_hash_collision(clock: ManualClock) -> None:
    t = mio_timer(clock)
    t.set_timeout(0.1, "a")
    # Same slot one rotation (16 ticks) later.
    far = t.set_timeout(0.1 + 0.1 * 16, "b")
    far_deadline = t.deadline_of(far)
    assert far_deadline is not None
    assert t.tick_of(far) % t.wheel_size == 1 == (t.tick_of(far) - 16)
    assert t.expired(0.1) == ["a"]
    assert len(t) == 1
    assert t.expired(0.2) == []
    # Passing the slot again one rotation on, just before b is due.
    assert t.expired(1.65) == []
    assert len(t) == 1
    # 0.1 + 1.6 is 1.7000000000000002 in floats: 1.7 itself is still early.
    assert t.expired(1.7) == []
    assert t.expired(far_deadline) == ["b"]
    assert len(t) == 0


def test_clearing_timeout_between_triggers(clock: ManualClock) -> None:
    # mio's tick_to returned one timeout per call; here one expired() call
    # returns the whole tick, so "between triggers" becomes "before the call".
    t = mio_timer(clock)
    a = t.set_timeout(0.1, "a")
    t.set_timeout(0.1, "b")
    t.set_timeout(0.2, "c")
    assert t.cancel(a) is True
    assert t.expired(0.1) == ["b"]
    assert t.cancel(a) is False
    assert t.expired(0.1) == []
    assert t.expired(0.2) == ["c"]
    assert len(t) == 0


def test_clearing_after_trigger_returns_false(clock: ManualClock) -> None:
    t = mio_timer(clock)
    a = t.set_timeout(0.1, "a")
    b = t.set_timeout(0.1, "b")
    assert t.expired(0.1) == ["a", "b"]
    assert t.cancel(a) is False
    assert t.cancel(b) is False


# ------------------------------------------------------------- precision


DELAYS = [0.0, 0.001, 0.0015, 0.005, 0.1234567, 0.999, 1.0, 1.0245, 7.3, 1234.5678]


@pytest.mark.parametrize("origin", [0.0, 12.3456, 98765.4321])
@pytest.mark.parametrize("delay", DELAYS)
def test_fires_exactly_at_its_deadline(origin: float, delay: float) -> None:
    clock = ManualClock(origin)
    t = Timer(tick=0.001, wheel_size=64, clock=clock)
    clock.now = origin + 0.0004  # set off a tick boundary
    handle = t.set_timeout(delay, "x")
    deadline = clock.now + delay
    assert t.deadline_of(handle) == deadline
    before = math.nextafter(deadline, -math.inf)
    assert t.expired(before) == []
    assert t.next_deadline() == deadline
    assert t.expired(deadline) == ["x"]


@settings(max_examples=300, deadline=None)
@given(
    origin=st.floats(-1e6, 1e7, allow_nan=False),
    tick=st.floats(1e-6, 10.0),
    wheel_size=st.sampled_from([1, 8, 1024]),
    lead=st.floats(0.0, 100.0),
    delay=st.one_of(st.floats(0.0, 1e4), st.integers(0, 10**6).map(lambda i: i * 1e-3)),
)
def test_exact_at_deadline_whatever_the_rounding(
    origin: float, tick: float, wheel_size: int, lead: float, delay: float
) -> None:
    clock = ManualClock(origin)
    t = Timer(tick=tick, wheel_size=wheel_size, clock=clock)
    clock.now = origin + lead
    handle = t.set_timeout(delay, "x")
    deadline = clock.now + delay
    assert t.next_deadline() == deadline
    assert t.expired(math.nextafter(deadline, -math.inf)) == []
    assert t.expired(deadline) == ["x"]
    assert handle not in t


@pytest.mark.parametrize("delay", DELAYS)
def test_expired_at_next_deadline_fires(delay: float) -> None:
    clock = ManualClock(5.0)
    t = Timer(tick=0.001, wheel_size=16, clock=clock)
    clock.now = 5.00071
    handle = t.set_timeout(delay, "x")
    nd = t.next_deadline()
    assert nd is not None
    assert nd == t.deadline_of(handle)
    assert t.expired(math.nextafter(nd, -math.inf)) == []
    assert t.expired(nd) == ["x"]
    assert t.next_deadline() is None


def test_boundary_deadline_fires_exactly_at_boundary(clock: ManualClock) -> None:
    t = Timer(tick=0.25, wheel_size=4, clock=clock)
    t.set_timeout(0.5, "x")
    assert t.next_deadline() == 0.5
    assert t.expired(math.nextafter(0.5, 0.0)) == []
    assert t.expired(0.5) == ["x"]


def test_current_tick_keeps_what_is_not_due(clock: ManualClock) -> None:
    t = Timer(tick=1.0, wheel_size=8, clock=clock)
    c = t.set_timeout(2.5, "mid")
    b = t.set_timeout(2.8, "late")
    a = t.set_timeout(2.2, "early")
    # All three live in tick 3; at 2.6 only two of them are due.
    assert {Timer.tick_of(h) for h in (a, b, c)} == {3}
    assert t.expired(2.6) == ["early", "mid"]
    assert len(t) == 1
    assert t.next_deadline() == 2.8
    assert t.expired(2.7) == []
    assert t.expired(2.8) == ["late"]
    assert len(t) == 0


@pytest.mark.parametrize("hair", [2.0**-22, 2.0**-40, 1e-12])
def test_deadline_a_hair_past_the_end_of_a_far_rotation(clock: ManualClock, hair: float) -> None:
    # Filed in tick 7 (the slack), the last tick of rotation 1, which waits
    # on the far level; at now = 7.0 that rotation is reached but this one
    # deadline is still in the future.
    t = Timer(tick=1.0, wheel_size=4, clock=clock)
    h = t.set_timeout(7.0 + hair, "hair")
    t.set_timeout(6.5, "before")
    assert t.tick_of(h) == 7
    assert t.expired(7.0) == ["before"]
    deadline = t.deadline_of(h)
    assert deadline == 7.0 + hair
    assert t.expired(math.nextafter(deadline, 0.0)) == []
    assert t.expired(deadline) == ["hair"]
    assert t.deadline_of(h) is None


def test_zero_delay_is_due_at_once(clock: ManualClock) -> None:
    t = Timer(clock=clock)
    clock.now = 3.21
    t.set_timeout(0, "now")
    assert t.next_deadline() is not None
    assert t.expired() == ["now"]


def test_default_clock_needs_no_sleep() -> None:
    t = Timer()
    assert t.clock is time.monotonic
    t.set_timeout(0.0, "x")
    assert t.expired() == ["x"]
    t.set_timeout(3600.0, "y")
    assert t.expired() == []
    assert len(t) == 1


def test_ordering_by_deadline_within_and_across_ticks(clock: ManualClock) -> None:
    t = Timer(tick=1.0, wheel_size=4, clock=clock)
    for delay in (5.9, 5.1, 5.5, 1.2, 9.0, 5.5, 0.3, 13.7):
        t.set_timeout(delay, delay)
    assert t.expired(20.0) == [0.3, 1.2, 5.1, 5.5, 5.5, 5.9, 9.0, 13.7]


def test_equal_deadlines_keep_setting_order(clock: ManualClock) -> None:
    t = Timer(tick=0.5, wheel_size=2, clock=clock)
    for i in range(20):
        t.set_timeout(3.25, i)
    assert t.expired(10.0) == list(range(20))


def _tied_timer(clock: ManualClock) -> Timer:
    """Ties whose payloads must not be compared: ints that sort the other way
    round, and objects with no order at all (comparing them raises)."""
    t = Timer(tick=0.5, wheel_size=2, clock=clock)  # one rotation = 1 s
    for payload in (3, "s", Payload, 2, 1, None):
        t.set_timeout(3.25, payload)  # tick 7, rotation 3: far when set
    t.set_timeout(3.4, "later")  # the same tick, not due at 3.25
    return t


TIED = [3, "s", Payload, 2, 1, None]


def test_ties_never_compare_payloads_straddling_now(clock: ManualClock) -> None:
    t = _tied_timer(clock)
    assert t.expired(3.25) == TIED  # the bucket straddles now: partial
    assert t.expired(3.4) == ["later"]


def test_ties_never_compare_payloads_in_a_whole_bucket(clock: ManualClock) -> None:
    t = _tied_timer(clock)
    assert t.next_deadline() == 3.25  # the rotation comes down to the near level
    assert t.expired(5.0) == [*TIED, "later"]


def test_ties_never_compare_payloads_in_a_whole_far_rotation(clock: ManualClock) -> None:
    t = _tied_timer(clock)
    assert t.expired(100.0) == [*TIED, "later"]


def test_many_rotations_away_never_fire_early(clock: ManualClock) -> None:
    t = Timer(tick=0.01, wheel_size=4, clock=clock)  # one rotation = 40 ms
    t.set_timeout(40.0, "far")  # a thousand rotations away
    t.set_timeout(0.02, "near")
    step = 0.0
    fired: list[Any] = []
    while step < 2.0:  # walk 50 rotations one tick at a time
        step = round(step + 0.01, 10)
        clock.now = step
        fired += t.expired()
    assert fired == ["near"]
    for now in (10.0, 39.99, math.nextafter(40.0, 0.0)):
        assert t.expired(now) == []
    assert t.expired(40.0) == ["far"]


def test_falling_behind_catches_up_in_one_call(clock: ManualClock) -> None:
    t = Timer(tick=0.001, wheel_size=8, clock=clock)
    delays = [i * 0.0137 % 50 for i in range(1, 2000)]
    for d in delays:
        t.set_timeout(d, d)
    assert t.expired(100.0) == sorted(delays)
    assert len(t) == 0
    assert t.next_deadline() is None


def test_time_going_backwards_fires_nothing_early(clock: ManualClock) -> None:
    t = Timer(tick=0.1, wheel_size=4, clock=clock)
    t.set_timeout(1.0, "a")
    assert t.expired(0.5) == []
    assert t.expired(0.2) == []
    assert t.expired(1.0) == ["a"]
    # expired() was told about a time ahead of the clock; a timeout set now
    # may fire late but never early.
    assert t.expired(5.0) == []
    clock.now = 2.0
    t.set_timeout(1.0, "b")
    assert t.expired(2.9) == []
    assert t.expired(5.1) == ["b"]


@pytest.mark.parametrize("wheel_size", [1, 4, 1024])
def test_clock_stepping_back_before_the_origin(wheel_size: int) -> None:
    # Deadlines before the origin give negative ticks and rotations.
    clock = ManualClock(100.0)
    t = Timer(tick=0.5, wheel_size=wheel_size, clock=clock)
    clock.now = 40.0
    handles = [t.set_timeout(d, d) for d in (7.3, 0.0, 61.2, 2.25, 59.0)]
    assert min(map(Timer.tick_of, handles)) < 0
    assert t.next_deadline() == 40.0
    assert t.expired(39.0) == []
    assert t.expired(42.25) == [0.0, 2.25]
    assert t.next_deadline() == 47.3
    assert t.expired(math.nextafter(47.3, 0.0)) == []
    assert t.expired(99.0) == [7.3, 59.0]
    assert t.expired(101.2) == [61.2]
    assert len(t) == 0


def test_wheel_size_one_and_rounding(clock: ManualClock) -> None:
    assert Timer(wheel_size=1000).wheel_size == 1024
    assert Timer(wheel_size=1024).wheel_size == 1024
    t = Timer(tick=0.5, wheel_size=1, clock=clock)
    assert t.wheel_size == 1
    for d in (3.0, 0.5, 1.7, 0.2):
        t.set_timeout(d, d)
    assert t.expired(1.0) == [0.2, 0.5]
    assert t.next_deadline() == 1.7
    assert t.expired(3.0) == [1.7, 3.0]


# ------------------------------------------------------------ next_deadline


def test_next_deadline_tracks_set_cancel_and_expire(clock: ManualClock) -> None:
    t = Timer(tick=0.5, wheel_size=4, clock=clock)
    assert t.next_deadline() is None
    c = t.set_timeout(7.0, "c")
    assert t.next_deadline() == 7.0
    a = t.set_timeout(1.25, "a")
    assert t.next_deadline() == 1.25  # exact, not rounded to its tick (1.5)
    b = t.set_timeout(3.0, "b")
    assert t.next_deadline() == 1.25
    assert t.cancel(a)
    assert t.next_deadline() == 3.0
    assert t.cancel(b)
    assert t.next_deadline() == 7.0
    t.set_timeout(2.0, "d")
    assert t.next_deadline() == 2.0
    assert t.expired(2.0) == ["d"]
    assert t.next_deadline() == 7.0
    assert t.cancel(c)
    assert t.next_deadline() is None


def test_next_deadline_after_only_far_rotations_remain(clock: ManualClock) -> None:
    t = Timer(tick=1.0, wheel_size=4, clock=clock)
    near = t.set_timeout(1.0, "near")
    t.set_timeout(401.0, "far")
    t.set_timeout(397.5, "farther-ish")
    assert t.next_deadline() == 1.0
    assert t.cancel(near)
    assert t.next_deadline() == 397.5
    assert t.expired(397.5) == ["farther-ish"]
    assert t.next_deadline() == 401.0


def test_next_deadline_is_cached_until_something_changes(clock: ManualClock) -> None:
    t = Timer(tick=0.01, wheel_size=16, clock=clock)
    t.set_timeout(5.0, "x")
    first = t.next_deadline()
    t.set_timeout(9.0, "later")  # later than the cached one: cache kept
    assert t.next_deadline() is first
    assert t.expired(1.0) == []  # nothing due: cache kept
    assert t.next_deadline() is first


# ---------------------------------------------------------------- cancel


def test_cancel_semantics(clock: ManualClock) -> None:
    t = Timer(tick=0.1, clock=clock)
    h = t.set_timeout(1.0, "x")
    assert h in t
    assert t.cancel(h) is True
    assert h not in t
    assert t.cancel(h) is False
    assert t.expired(10.0) == []
    fired = t.set_timeout(1.0, "y")
    assert t.expired(20.0) == ["y"]
    assert t.cancel(fired) is False


def test_cancel_a_timeout_from_another_timer_is_false(clock: ManualClock) -> None:
    mine = Timer(tick=0.1, clock=clock)
    other = Timer(tick=0.1, clock=clock)
    ours = mine.set_timeout(1.0, "mine")
    theirs = other.set_timeout(1.0, "theirs")
    # Same tick, so the same bucket if the handles were not unique.
    assert Timer.tick_of(ours) == Timer.tick_of(theirs)
    assert ours != theirs
    assert mine.cancel(theirs) is False
    assert theirs not in mine
    assert mine.deadline_of(theirs) is None
    assert len(mine) == 1 and len(other) == 1
    assert mine.expired(1.0) == ["mine"]
    assert other.expired(1.0) == ["theirs"]


def test_cancel_rejects_non_timeouts(clock: ManualClock) -> None:
    t = Timer(clock=clock)
    h = t.set_timeout(1.0, "x")
    bads: tuple[object, ...] = (None, 3.0, float(h), "timeout", object(), True, False, [h])
    for bad in bads:
        with pytest.raises(TypeError, match="expected a Timeout"):
            t.cancel(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="expected a Timeout"):
            t.deadline_of(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="expected a Timeout"):
            Timer.tick_of(bad)  # type: ignore[arg-type]
        assert bad not in t
    assert h in t and len(t) == 1


def test_cancel_of_an_int_that_is_no_pending_handle(clock: ManualClock) -> None:
    t = Timer(tick=0.1, clock=clock)
    first = t.set_timeout(1.0, "a")
    h = t.set_timeout(1.0, "b")
    assert isinstance(h, Timeout) and type(h) is int
    # Serial 0 in h's own bucket, ints nowhere near a handle, and Timeout()
    # (0), which no set_timeout returns: none is pending.
    same_bucket = Timer.tick_of(h) << 64
    for unknown in (Timeout(), 0, 1, -1, 2**200, -(2**200), same_bucket, h + 2**64):
        assert unknown not in t
        assert t.deadline_of(unknown) is None
        assert t.cancel(unknown) is False
    assert len(t) == 2 and first in t and h in t
    assert t.expired(1.0) == ["a", "b"]


def test_handles_are_plain_ints_the_gc_does_not_track(clock: ManualClock) -> None:
    t = Timer(tick=0.01, wheel_size=4, clock=clock)
    handles = [t.set_timeout(d, Payload()) for d in (0.0, 0.015, 7.5, 1e6)]
    assert len(set(handles)) == len(handles)
    for h in handles:
        assert type(h) is int
        assert not gc.is_tracked(h)
    assert not gc.is_tracked(Timer.tick_of(handles[-1]))


def test_handles_are_unique_across_timers_and_threads(clock: ManualClock) -> None:
    import threading

    timers = [Timer(tick=1.0, clock=clock) for _ in range(4)]
    got: list[list[int]] = [[] for _ in timers]

    def fill(i: int) -> None:
        for _ in range(2000):
            got[i].append(timers[i].set_timeout(0.5, i))

    threads = [threading.Thread(target=fill, args=(i,)) for i in range(len(timers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [h for hs in got for h in hs]
    # One tick for all of them: only the serials tell them apart.
    assert {Timer.tick_of(h) for h in every} == {1}
    assert len(set(every)) == len(every) == 8000
    for i, timer in enumerate(timers):
        other = got[(i + 1) % len(timers)]
        assert not any(h in timer for h in other[:50])
        assert timer.cancel(other[0]) is False
        assert len(timer) == 2000


def test_cancel_and_expiry_release_the_payload(clock: ManualClock) -> None:
    t = Timer(tick=0.1, clock=clock)
    p1, p2 = Payload(), Payload()
    r1, r2 = weakref.ref(p1), weakref.ref(p2)
    h1 = t.set_timeout(1.0, p1)
    h2 = t.set_timeout(1.0, p2)
    del p1, p2
    assert t.cancel(h1)
    gc.collect()
    assert r1() is None  # cancelled: gone although the handle is alive
    assert r2() is not None
    assert t.deadline_of(h1) is None
    assert t.deadline_of(h2) == 1.0
    assert len(t.expired(1.0)) == 1
    gc.collect()
    assert r2() is None
    assert Timer.tick_of(h1) == Timer.tick_of(h2) == 10


def test_cancelled_entries_leave_nothing_behind(clock: ManualClock) -> None:
    t = Timer(tick=0.001, wheel_size=8, clock=clock)
    handles = [t.set_timeout(i * 0.0123, i) for i in range(5000)]
    clock.now = 0.5
    assert t.next_deadline() == 0.0  # brings a far rotation to the near level
    handles += [t.set_timeout(i * 0.0007, i) for i in range(5000)]
    for h in handles:
        assert t.cancel(h)
    # White-box: every bucket, occupancy word and far rotation is gone (no
    # tombstones), on both levels of the wheel.
    assert t._buckets == {}
    assert t._occ == {}
    assert t._far == {}
    assert len(t) == 0
    assert t.next_deadline() is None
    assert t.expired(1e6) == []


def test_clear(clock: ManualClock) -> None:
    t = Timer(tick=0.1, capacity=2, clock=clock)
    a = t.set_timeout(1.0, "a")
    t.set_timeout(2.0, "b")
    t.clear()
    assert len(t) == 0
    assert t.next_deadline() is None
    assert t.cancel(a) is False
    assert t.expired(10.0) == []
    t.set_timeout(1.0, "c")
    t.set_timeout(1.0, "d")  # capacity is free again
    assert t.expired(20.0) == ["c", "d"]


# -------------------------------------------------------------- capacity


def test_capacity(clock: ManualClock) -> None:
    t = Timer(tick=0.1, capacity=3, clock=clock)
    handles = [t.set_timeout(1.0, i) for i in range(3)]
    with pytest.raises(TimerError, match=r"capacity 3"):
        t.set_timeout(1.0, "one too many")
    assert len(t) == 3
    assert t.cancel(handles[0])
    t.set_timeout(0.5, "fits again")
    with pytest.raises(TimerError):
        t.set_timeout(0.5, "full again")
    assert t.expired(0.5) == ["fits again"]
    t.set_timeout(2.0, "and again")
    assert len(t) == 3


def test_capacity_exact_not_rounded(clock: ManualClock) -> None:
    t = Timer(capacity=5, clock=clock)
    for i in range(5):
        t.set_timeout(1.0, i)
    with pytest.raises(TimerError):
        t.set_timeout(1.0, 5)
    assert t.capacity == 5


# ------------------------------------------------------ argument checking


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"tick": 0}, ValueError, "tick must be a positive"),
        ({"tick": -0.5}, ValueError, "tick must be a positive"),
        ({"tick": math.nan}, ValueError, "tick must be a positive"),
        ({"tick": math.inf}, ValueError, "tick must be a positive"),
        ({"tick": "1"}, TypeError, "tick must be a real number"),
        ({"tick": True}, TypeError, "tick must be a real number"),
        ({"wheel_size": 0}, ValueError, "wheel_size must be >= 1"),
        ({"wheel_size": -3}, ValueError, "wheel_size must be >= 1"),
        ({"wheel_size": 16.0}, TypeError, "wheel_size must be an int"),
        ({"wheel_size": True}, TypeError, "wheel_size must be an int"),
        ({"capacity": 0}, ValueError, "capacity must be >= 1"),
        ({"capacity": None}, TypeError, "capacity must be an int"),
        ({"clock": 1.5}, TypeError, "clock must be callable"),
        ({"clock": lambda: math.nan}, ValueError, "clock.. must return a finite"),
        ({"clock": lambda: "noon"}, TypeError, r"clock\(\) must be a real number"),
    ],
)
def test_constructor_rejects(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Timer(**kwargs)


def test_constructor_accepts_int_and_real_numbers() -> None:
    from fractions import Fraction

    assert Timer(tick=1).tick == 1.0
    assert Timer(tick=Fraction(1, 4)).tick == 0.25  # type: ignore[arg-type]
    assert isinstance(Timer(tick=1).tick, float)


@pytest.mark.parametrize(
    ("delay", "exc", "match"),
    [
        (-1, ValueError, "delay must be >= 0"),
        (-1e-9, ValueError, "delay must be >= 0"),
        (math.nan, ValueError, "delay must not be NaN"),
        (math.inf, ValueError, "delay must be finite"),
        ("1", TypeError, "delay must be a real number"),
        (None, TypeError, "delay must be a real number"),
        (1j, TypeError, "delay must be a real number"),
    ],
)
def test_set_timeout_rejects(
    clock: ManualClock, delay: Any, exc: type[Exception], match: str
) -> None:
    t = Timer(clock=clock)
    with pytest.raises(exc, match=match):
        t.set_timeout(delay, "x")
    assert len(t) == 0


def test_set_timeout_accepts_ints_and_fractions(clock: ManualClock) -> None:
    from fractions import Fraction

    t = Timer(tick=0.25, clock=clock)
    t.set_timeout(1, "int")
    t.set_timeout(Fraction(1, 2), "fraction")  # type: ignore[arg-type]
    assert t.expired(1.0) == ["fraction", "int"]


@pytest.mark.parametrize(
    ("now", "exc", "match"),
    [
        ("later", TypeError, "now must be a real number"),
        (math.nan, ValueError, "now must be a finite time"),
        (math.inf, ValueError, "now must be a finite time"),
    ],
)
def test_expired_rejects(clock: ManualClock, now: Any, exc: type[Exception], match: str) -> None:
    t = Timer(clock=clock)
    t.set_timeout(1.0, "x")
    with pytest.raises(exc, match=match):
        t.expired(now)
    with pytest.raises(exc, match=match):
        t.expired_into(now, [])
    assert len(t) == 1


# ------------------------------------------------------------ extras


def test_expired_into_appends_and_counts(clock: ManualClock) -> None:
    t = Timer(tick=0.1, clock=clock)
    t.set_timeout(0.3, "b")
    t.set_timeout(0.1, "a")
    t.set_timeout(5.0, "c")
    out: list[Any] = ["kept"]
    assert t.expired_into(0.05, out) == 0
    assert t.expired_into(1.0, out) == 2
    assert out == ["kept", "a", "b"]
    clock.now = 5.0
    assert t.expired_into(None, out) == 1
    assert out == ["kept", "a", "b", "c"]


def test_reprs_and_properties(clock: ManualClock) -> None:
    t = Timer(tick=0.5, wheel_size=3, capacity=7, clock=clock)
    h = t.set_timeout(1.25, "x")
    assert (t.tick, t.wheel_size, t.capacity, t.clock) == (0.5, 4, 7, clock)
    assert t.deadline_of(h) == 1.25 and t.tick_of(h) == 3 == Timer.tick_of(h)
    assert repr(t) == "<Timer pending=1 tick=0.5 wheel_size=4 capacity=7>"
    assert len(t) == 1 and bool(t)
    t.clear()
    assert not t


# ------------------------------------------------------- model checking


@settings(
    max_examples=120,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class TimerMachine(RuleBasedStateMachine):
    """The wheel against a dict + heap model under random set/cancel/advance.

    The model knows each timeout's exact deadline.  After every ``expired``
    call it checks that the result is exactly the pending timeouts whose
    deadline is ``<= now``, earlier deadlines first and equal deadlines in
    setting order.  That is stricter than the contract (which lets a timeout
    fire up to a tick late): each payload once, never early, never late.
    """

    pending = Bundle("pending")

    @initialize(
        tick=st.sampled_from([0.001, 0.1, 0.25, 1.0, 0.37]),
        wheel_size=st.sampled_from([1, 2, 4, 16, 1024]),
        capacity=st.sampled_from([3, 20, 1000]),
        origin=st.sampled_from([0.0, 0.125, 1000.5, 123456.789]),
    )
    def setup(self, tick: float, wheel_size: int, capacity: int, origin: float) -> None:
        self.clock = ManualClock(origin)
        self.timer: Timer = Timer(
            tick=tick, wheel_size=wheel_size, capacity=capacity, clock=self.clock
        )
        self.tick = tick
        self.capacity = capacity
        self.model: dict[int, tuple[float, Timeout]] = {}  # seq -> (deadline, handle)
        self.heap: list[tuple[float, int]] = []
        self.seq = 0
        self.fired: set[int] = set()

    @rule(
        target=pending,
        delay=st.one_of(
            st.floats(0.0, 3.0, allow_nan=False),
            st.integers(0, 40).map(lambda i: i * 0.25),
            st.integers(0, 5000).map(lambda i: i * 0.001),
            st.floats(0.0, 400.0, allow_nan=False),
        ),
    )
    def set_timeout(self, delay: float) -> Any:
        if len(self.model) >= self.capacity:
            with pytest.raises(TimerError):
                self.timer.set_timeout(delay, "overflow")
            return None
        self.seq += 1
        handle = self.timer.set_timeout(delay, self.seq)
        deadline = self.clock.now + delay
        assert self.timer.deadline_of(handle) == deadline
        # EventLoop reads soonest to know how long it may sleep: a lower
        # bound on every pending deadline, so at most this one's.
        assert self.timer.soonest <= deadline
        self.model[self.seq] = (deadline, handle)
        heapq.heappush(self.heap, (deadline, self.seq))
        return (self.seq, handle)

    @rule(entry=consumes(pending))
    def cancel(self, entry: Any) -> None:
        if entry is None:
            return
        seq, handle = entry
        was_pending = seq in self.model
        assert self.timer.cancel(handle) is was_pending
        assert self.timer.cancel(handle) is False
        assert self.timer.deadline_of(handle) is None
        self.model.pop(seq, None)

    @rule(
        dt=st.one_of(
            st.floats(0.0, 2.0, allow_nan=False),
            st.integers(0, 20).map(lambda i: i * 0.25),
            st.integers(1, 3).map(lambda i: i * 1e-9),
            st.floats(0.0, 600.0, allow_nan=False),
        )
    )
    def advance(self, dt: float) -> None:
        self.clock.now += dt

    def _check_expired(self, now: float, got: list[Any]) -> None:
        for seq in got:
            assert seq in self.model, f"{seq} fired twice or after cancel"
            deadline = self.model[seq][0]
            assert deadline <= now, f"{seq} fired early: deadline {deadline} > now {now}"
        # Exactly the pending timeouts due at now, earlier deadlines first,
        # equal deadlines in setting order: nothing late, nothing twice.
        expected = sorted((d, seq) for seq, (d, _) in self.model.items() if d <= now)
        assert got == [seq for _, seq in expected]
        for seq in got:
            del self.model[seq]

    @rule(to_next_deadline=st.booleans(), into=st.booleans())
    def expire(self, to_next_deadline: bool, into: bool) -> None:
        nd = self.timer.next_deadline()
        if to_next_deadline and nd is not None and nd > self.clock.now:
            self.clock.now = nd
        now = self.clock.now
        if into:
            got: list[Any] = ["sentinel"]
            count = self.timer.expired_into(None, got)
            assert got[0] == "sentinel" and count == len(got) - 1
            got = got[1:]
        else:
            got = self.timer.expired()
        self._check_expired(now, got)
        if to_next_deadline and nd is not None and nd <= now:
            assert got, "nothing fired at next_deadline()"

    @rule(offset=st.floats(-50.0, 50.0, allow_nan=False))
    def expire_at_explicit_time(self, offset: float) -> None:
        # Behind the clock, or ahead of it (timeouts set later then have
        # deadlines before this time): the answer is still exact.
        now = self.clock.now + offset
        self._check_expired(now, self.timer.expired(now))

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def cancel_everything_pending_in_one_tick(self) -> None:
        # Empty the earliest bucket completely through cancel.
        earliest = min(self.model.values(), key=lambda v: v[0])[1]
        tick = Timer.tick_of(earliest)
        same = [s for s, (_, h) in self.model.items() if Timer.tick_of(h) == tick]
        for s in same:
            assert self.timer.cancel(self.model.pop(s)[1])

    @rule()
    def clear_sometimes(self) -> None:
        if self.seq % 7 == 3:
            self.timer.clear()
            self.model.clear()

    @invariant()
    def lengths_agree(self) -> None:
        if not hasattr(self, "timer"):
            return
        assert len(self.timer) == len(self.model)

    @invariant()
    def membership_agrees(self) -> None:
        if not hasattr(self, "timer"):
            return
        for deadline, handle in self.model.values():
            assert handle in self.timer
            assert self.timer.deadline_of(handle) == deadline

    @invariant()
    def next_deadline_agrees(self) -> None:
        if not hasattr(self, "timer"):
            return
        # Before next_deadline() refreshes it: soonest may be early (after
        # fires and cancels), never late.
        if self.model:
            assert self.timer.soonest <= min(d for d, _ in self.model.values())
        nd = self.timer.next_deadline()
        if not self.model:
            assert nd is None
            assert self.timer.soonest == math.inf
            return
        # Exactly the earliest deadline (the contract would allow rounding
        # it up to the tick; this wheel does not need to).
        assert nd == min(d for d, _ in self.model.values())
        assert self.timer.soonest == nd


TestTimerMachine = TimerMachine.TestCase
