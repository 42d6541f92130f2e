"""Tests of ``metalio.slab``: keys, LIFO reuse, capacity, iteration, and a dict model."""

from __future__ import annotations

import enum
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from metalio._errors import SlabFull
from metalio.slab import Slab

# ----------------------------------------------------------------- basics


def test_insert_get_remove() -> None:
    s: Slab[str] = Slab()
    assert len(s) == 0 and not s
    a, b, c = s.insert("a"), s.insert("b"), s.insert("c")
    assert (a, b, c) == (0, 1, 2)
    assert len(s) == 3
    assert (s[a], s[b], s[c]) == ("a", "b", "c")
    assert s.get(b) == "b"
    assert s.remove(b) == "b"
    assert b not in s and a in s
    assert len(s) == 2
    assert s.get(b) is None
    assert s.get(b, "missing") == "missing"


def test_none_is_a_value_not_a_vacancy() -> None:
    s: Slab[Any] = Slab()
    k = s.insert(None)
    assert k in s
    assert s[k] is None
    assert s.get(k, "default") is None
    assert list(s.items()) == [(k, None)]
    assert s.remove(k) is None
    assert k not in s
    assert s.get(k, "default") == "default"
    with pytest.raises(KeyError):
        s.remove(k)


def test_vacant_and_unknown_keys_raise_key_error() -> None:
    s: Slab[str] = Slab(start=5)
    k = s.insert("x")
    s.remove(k)
    for key in (k, 4, 0, -1, 6, 10**30):
        with pytest.raises(KeyError, match=str(key)):
            s[key]
        with pytest.raises(KeyError, match=str(key)):
            s.remove(key)
        with pytest.raises(KeyError):
            s[key] = "no"
        assert key not in s
        assert s.get(key, "d") == "d"


def test_negative_keys_do_not_wrap_around() -> None:
    s: Slab[str] = Slab()
    s.insert("first")
    s.insert("last")
    with pytest.raises(KeyError):
        s[-1]
    assert -1 not in s
    assert s.get(-1) is None
    with pytest.raises(KeyError):
        s.remove(-2)
    assert len(s) == 2


def test_freed_keys_are_reused_lifo() -> None:
    s: Slab[int] = Slab()
    keys = [s.insert(i) for i in range(5)]
    s.remove(keys[1])
    s.remove(keys[3])
    assert s.vacant_key() == 3
    assert s.insert(30) == 3  # most recently freed first
    assert s.vacant_key() == 1
    assert s.insert(10) == 1
    assert s.vacant_key() == 5
    assert s.insert(50) == 5  # then new keys
    assert [v for _, v in s.items()] == [0, 10, 2, 30, 4, 50]


def test_start_offsets_every_key() -> None:
    s: Slab[str] = Slab(capacity=3, start=1000)
    assert s.vacant_key() == 1000
    assert [s.insert(x) for x in "abc"] == [1000, 1001, 1002]
    assert s[1001] == "b"
    assert s.remove(1000) == "a"
    assert s.insert("d") == 1000
    assert list(s.keys()) == [1000, 1001, 1002]
    assert s.start == 1000


def test_setitem_replaces_in_place() -> None:
    s: Slab[str] = Slab()
    k = s.insert("old")
    s[k] = "new"
    assert s[k] == "new"
    assert len(s) == 1
    with pytest.raises(KeyError):
        s[k + 1] = "not inserted"
    assert len(s) == 1


# --------------------------------------------------------------- capacity


def test_full_slab_raises_slab_full() -> None:
    s: Slab[int] = Slab(capacity=3)
    keys = [s.insert(i) for i in range(3)]
    assert s.is_full()
    with pytest.raises(SlabFull, match=r"capacity 3"):
        s.insert(3)
    with pytest.raises(SlabFull):
        s.vacant_key()
    assert len(s) == 3
    s.remove(keys[0])
    assert not s.is_full()
    assert s.vacant_key() == keys[0]
    assert s.insert(99) == keys[0]
    with pytest.raises(SlabFull):
        s.insert(100)
    assert s.capacity == 3


def test_unbounded_by_default() -> None:
    s: Slab[int] = Slab()
    for i in range(10_000):
        assert s.insert(i) == i
    assert s.capacity is None
    assert not s.is_full()
    assert len(s) == 10_000


def test_capacity_one() -> None:
    s: Slab[str] = Slab(capacity=1, start=7)
    assert s.insert("only") == 7
    with pytest.raises(SlabFull):
        s.insert("more")
    assert s.remove(7) == "only"
    assert s.insert("again") == 7


# -------------------------------------------------------------- iteration


def test_items_keys_values_in_key_order_skipping_vacancies() -> None:
    s: Slab[str] = Slab(start=2)
    for ch in "abcdef":
        s.insert(ch)
    s.remove(3)
    s.remove(6)
    assert list(s.items()) == [(2, "a"), (4, "c"), (5, "d"), (7, "f")]
    assert list(s.keys()) == [2, 4, 5, 7]
    assert list(s) == [2, 4, 5, 7]
    assert list(s.values()) == ["a", "c", "d", "f"]


def test_removing_while_iterating_is_safe() -> None:
    s: Slab[int] = Slab()
    for i in range(10):
        s.insert(i)
    seen = []
    for key, value in s.items():
        seen.append(value)
        if value % 2 == 0:
            s.remove(key)  # the current entry
        if key + 3 in s:
            s.remove(key + 3)  # one ahead: never produced
    # 3, 4, 5 and 9 were removed before the walk reached them.
    assert seen == [0, 1, 2, 6, 7, 8]
    assert list(s.values()) == [1, 7]


def test_inserting_while_iterating_shows_entries_ahead_only() -> None:
    s: Slab[str] = Slab()
    for ch in "abcd":
        s.insert(ch)
    s.remove(0)
    seen = []
    for _key, value in s.items():
        seen.append(value)
        if value == "c":
            assert s.insert("x") == 0  # behind the walk: not produced
            assert s.insert("y") == 4  # ahead: produced
    assert seen == ["b", "c", "d", "y"]


def test_clear_releases_everything_and_stops_iterations() -> None:
    s: Slab[int] = Slab(capacity=4, start=3)
    for i in range(4):
        s.insert(i)
    s.remove(4)
    walk = s.items()
    assert next(walk) == (3, 0)
    s.clear()
    assert list(walk) == []
    assert len(s) == 0 and list(s.items()) == []
    assert s.vacant_key() == 3
    assert [s.insert(i) for i in range(4)] == [3, 4, 5, 6]


# ------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"capacity": 0}, ValueError, "capacity must be >= 1"),
        ({"capacity": -5}, ValueError, "capacity must be >= 1"),
        ({"capacity": 2.0}, TypeError, "capacity must be an int or None"),
        ({"capacity": True}, TypeError, "capacity must be an int or None"),
        ({"capacity": "8"}, TypeError, "capacity must be an int or None"),
        ({"start": -1}, ValueError, "start must be >= 0"),
        ({"start": 1.0}, TypeError, "start must be an int"),
        ({"start": False}, TypeError, "start must be an int"),
        ({"start": None}, TypeError, "start must be an int"),
    ],
)
def test_constructor_rejects(kwargs: dict[str, Any], exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Slab(**kwargs)


@pytest.mark.parametrize("key", ["0", 0.0, True, None, (0,)])
def test_non_int_keys_are_type_errors(key: Any) -> None:
    s: Slab[str] = Slab()
    s.insert("zero")
    s.insert("one")
    with pytest.raises(TypeError, match="slab keys are ints"):
        s[key]
    with pytest.raises(TypeError, match="slab keys are ints"):
        s.remove(key)
    with pytest.raises(TypeError, match="slab keys are ints"):
        s[key] = "x"
    assert key not in s  # membership: a non-int is simply never a key
    assert len(s) == 2


def test_get_is_the_dicts_own_get() -> None:
    # The per-event lookup runs in C: dict.get, with a dict's key equality.
    s: Slab[str] = Slab(start=1)
    s.insert("one")
    get: Any = s.get
    assert get.__self__ is s._map
    assert get(1) == "one" and get(2) is None and get(2, "dflt") == "dflt"
    assert get("1") is None and get(None) is None and get((1,)) is None
    assert get(True) == "one" and get(1.0) == "one"  # equal to the int 1
    with pytest.raises(TypeError, match="unhashable"):
        get([1])
    bound = s.get
    s.clear()
    assert bound(1) is None
    assert s.insert("again") == 1 and bound(1) == "again"  # still this slab's lookup


def test_subclasses_may_override_get() -> None:
    class Logged(Slab[str]):
        __slots__ = ("seen",)

        def __init__(self) -> None:
            super().__init__()
            self.seen: list[int] = []

        def get(self, key: int, default: Any = None) -> Any:
            self.seen.append(key)
            return super().get(key, default)

    class Plain(Slab[str]):  # has a __dict__
        def get(self, key: int, default: Any = None) -> Any:
            return "always"

    s = Logged()
    s.insert("zero")
    assert s.get(0) == "zero" and s.get(5, "dflt") == "dflt"
    assert s.seen == [0, 5]
    p = Plain()
    p.insert("zero")
    assert p.get(0) == "always" and p[0] == "zero"


def test_int_subclass_keys_work() -> None:
    class Tok(enum.IntEnum):
        LISTENER = 0
        WAKER = 1

    s: Slab[str] = Slab()
    s.insert("listener")
    s.insert("waker")
    assert s[Tok.WAKER] == "waker"
    assert Tok.LISTENER in s
    assert s.remove(Tok.LISTENER) == "listener"


def test_repr() -> None:
    s: Slab[int] = Slab(capacity=8, start=1)
    s.insert(5)
    assert repr(s) == "<Slab len=1 capacity=8 start=1>"


def test_memory_is_a_dict_entry_per_key() -> None:
    # 20 000 entries all holding one shared value: the slab itself must cost
    # about one dict entry each (~30 bytes with the table's slack, 44 allowed)
    # plus the key's int (shared with a registration's token in real use),
    # not an object per entry (a tuple or a one-slot wrapper adds 40-64 bytes).
    # The int's size is measured, not assumed: 28 bytes with the GIL, 44 on a
    # free-threaded build, whose object header also holds the owning thread's
    # id and a second (shared) reference count.
    per_entry = 44 + sys.getsizeof(19_999)
    value = object()
    s: Slab[object] = Slab()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            s.insert(value)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 20_000 * per_entry, (used, per_entry)
    # Removing and reinserting everything allocates no new slots.
    for key in range(20_000):
        s.remove(key)
    assert len(s) == 0
    for _ in range(20_000):
        s.insert(value)
    assert max(s.keys()) == 19_999


# ------------------------------------------------------- model checking


@settings(max_examples=150, stateful_step_count=50, deadline=None)
class SlabMachine(RuleBasedStateMachine):
    """The slab against a dict, with the LIFO free list modelled exactly."""

    @initialize(
        capacity=st.one_of(st.none(), st.integers(1, 12)),
        start=st.sampled_from([0, 1, 7, 2**40]),
    )
    def setup(self, capacity: int | None, start: int) -> None:
        self.slab: Slab[Any] = Slab(capacity=capacity, start=start)
        self.capacity = capacity
        self.start = start
        self.model: dict[int, Any] = {}
        self.free: list[int] = []  # freed keys, most recent last
        self.high = start  # the next never-used key

    def _predicted_key(self) -> int:
        return self.free[-1] if self.free else self.high

    values = st.one_of(st.none(), st.integers(), st.text(max_size=3), st.just(0))

    @rule(value=values)
    def insert(self, value: Any) -> None:
        if self.capacity is not None and len(self.model) >= self.capacity:
            with pytest.raises(SlabFull):
                self.slab.insert(value)
            return
        key = self.slab.insert(value)
        assert key == self._predicted_key()
        if self.free:
            self.free.pop()
        else:
            self.high += 1
        assert key not in self.model
        self.model[key] = value

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def remove_present(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        assert self.slab.remove(key) == self.model.pop(key)
        self.free.append(key)

    @rule(offset=st.integers(-3, 20))
    def probe(self, offset: int) -> None:
        key = self.start + offset
        marker = object()
        if key in self.model:
            assert key in self.slab
            assert self.slab[key] == self.model[key]
            assert self.slab.get(key, marker) == self.model[key]
        else:
            assert key not in self.slab
            assert self.slab.get(key, marker) is marker
            with pytest.raises(KeyError):
                self.slab[key]
            with pytest.raises(KeyError):
                self.slab.remove(key)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), value=values)
    def replace(self, data: st.DataObject, value: Any) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.slab[key] = value
        self.model[key] = value

    @rule()
    def clear_now_and_then(self) -> None:
        if len(self.model) % 5 == 4:
            self.slab.clear()
            self.model.clear()
            self.free.clear()
            self.high = self.start

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "slab"):
            return
        assert len(self.slab) == len(self.model)
        assert list(self.slab.items()) == sorted(self.model.items())
        full = self.capacity is not None and len(self.model) >= self.capacity
        assert self.slab.is_full() is full
        if full:
            with pytest.raises(SlabFull):
                self.slab.vacant_key()
        else:
            assert self.slab.vacant_key() == self._predicted_key()


TestSlabMachine = SlabMachine.TestCase
