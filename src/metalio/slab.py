"""A slab: small integer keys for values, reused as values come and go.

Theory of operation
===================

An event loop hands the kernel an integer token per registration and gets
the token back with every event; the program then needs the connection
state that token stands for, fast, for every event.  A slab is the usual
answer (mio's "connection slab"): it hands out small integer keys, from
``start`` up, reuses the freed ones, and looks values up by key.

Layout
------
One dict, one list and one counter:

* ``_map``: key -> value for the occupied keys only.  A vacancy is simply
  an absent key, so ``None`` (or anything else) is an ordinary value;
* ``_free``: the freed keys, used as a stack;
* ``_next``: the lowest key never handed out; every key below it is either
  in ``_map`` or in ``_free``.

Why a dict and not a flat array: the lookup is the one operation a program
makes on every event, and a dict does it in C.  ``slab.get`` *is* the dict's
own ``get`` (bound per slab), so ``slab.get(token)`` costs one C call and no
Python frame; a list-backed slab needs a Python method for the offset, the
bounds and the vacancy check, a frame per event.  The price is memory: a
dict entry is several times a list slot (the key's ``int`` object is shared
with the registration that carries it as its token).  ``slab[key]``, ``in``,
``remove`` and the rest are Python methods that check their key strictly.

Key reuse and the token hazard
------------------------------
``insert`` first reuses the most recently freed key (LIFO, like mio's slab
and the ``slab`` crate), and only takes a new key when none is free.  LIFO
keeps the keys dense and the hot entries in cache, but it means a freed key
comes back *immediately*.  Used as poll tokens, that is a hazard: if
connection A (key 5) is removed while the current batch of events still
holds events for token 5, and connection B is inserted during the same
batch, it gets key 5 and receives A's stale events (mio issues #172 and
#219).  Deregister a source before closing it and removing its entry, and
remove entries only after the whole batch of events has been handled (or
tag tokens with a generation number).  :meth:`vacant_key` tells in advance
which key the next :meth:`insert` returns, so a value can be built knowing
its own token.

Memory over time
----------------
Like any dict, the table does not shrink when entries leave: after a burst
to 100 000 entries the slab keeps its large table (a few MB) and up to as
many free keys, and reuses them.  :meth:`clear` releases everything.

Iteration
---------
:meth:`items`, :meth:`keys`, :meth:`values` and ``iter(slab)`` (keys) walk
the keys in increasing order, from ``start`` to the highest key handed out,
and skip vacancies.  Removing entries while iterating is allowed and well
defined (an entry removed before the walk reaches it is not produced; the
walk never fails); an entry inserted during the walk is produced only if its
key lies ahead of the walk.  Broadcasting to every connection and dropping
the dead ones in the same loop is fine.

Threads
-------
Not thread-safe: the free list, the counter and the dict form one invariant
that a single lock would have to protect.  Keep a slab on the event-loop
thread.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from metalio._errors import SlabFull

__all__ = ["Slab"]

T = TypeVar("T")
D = TypeVar("D")


class _Vacant:
    """What a walk finds for a key that is not in the map; never handed out."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<vacant>"


_VACANT = _Vacant()


def _key(key: object) -> int:
    """Validate a key that is not an exact ``int``.

    :raises TypeError: *key* is a ``bool`` or not an ``int``.
    """
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"slab keys are ints, not {type(key).__name__}")
    return int(key)


class Slab(Generic[T]):
    """Values stored under small integer keys that are reused after removal.

    :param capacity: the most values the slab may hold; ``None`` (the
        default) means no limit.
    :param start: the first key; keys are ``start``, ``start + 1``, ...
        (useful to keep low tokens for listeners or wakers).
    :raises TypeError: *capacity* is not ``None`` or an ``int``, or *start*
        is not an ``int`` (``bool`` is refused for both).
    :raises ValueError: ``capacity < 1`` or ``start < 0``.

    ``get(key, default=None)`` returns the value stored under *key*, or
    *default*.  It is the underlying dict's ``get``, bound to the slab (the
    per-event lookup, so it runs in C): it never raises for a hashable key,
    and a key that equals an int (``True``, ``1.0``) finds that int's entry,
    as with any dict.  Every other method refuses non-``int`` keys with
    ``TypeError``.

    Freed keys are reused most recently freed first; see the module
    documentation for the token-reuse hazard.  Not thread-safe.
    """

    __slots__ = ("_capacity", "_free", "_limit", "_map", "_next", "_start", "get")

    def __init__(self, capacity: int | None = None, start: int = 0) -> None:
        if capacity is not None:
            if isinstance(capacity, bool) or not isinstance(capacity, int):
                raise TypeError(f"capacity must be an int or None, not {type(capacity).__name__}")
            if capacity < 1:
                raise ValueError(f"capacity must be >= 1, got {capacity}")
            capacity = int(capacity)
        if isinstance(start, bool) or not isinstance(start, int):
            raise TypeError(f"start must be an int, not {type(start).__name__}")
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self._capacity: int | None = capacity
        self._limit: int = sys.maxsize if capacity is None else capacity
        self._start: int = int(start)
        self._map: dict[int, T] = {}
        self._free: list[int] = []
        self._next: int = self._start
        # Through the slot itself, not ``self.get = ...``: a subclass that
        # overrides ``get`` keeps its override (and its ``super().get``
        # reaches this bound dict.get), with or without a ``__dict__``.
        _GET_SLOT.__set__(self, self._map.get)

    if TYPE_CHECKING:  # the runtime ``get`` is the bound dict.get set in __init__

        @overload
        def get(self, key: int) -> T | None: ...

        @overload
        def get(self, key: int, default: D) -> T | D: ...

        def get(self, key: int, default: object = None) -> object: ...

    # ------------------------------------------------------------------ info

    @property
    def capacity(self) -> int | None:
        """The most values the slab may hold (``None``: unlimited)."""
        return self._capacity

    @property
    def start(self) -> int:
        """The first key."""
        return self._start

    def __len__(self) -> int:
        """The number of values held."""
        return len(self._map)

    def is_full(self) -> bool:
        """Whether the next :meth:`insert` would raise :class:`metalio.SlabFull`."""
        return len(self._map) >= self._limit

    def __repr__(self) -> str:
        return f"<Slab len={len(self._map)} capacity={self._capacity} start={self._start}>"

    # ------------------------------------------------------------ mutation

    def insert(self, value: T) -> int:
        """Store *value* and return its key: the last freed key, else a new one.

        :raises metalio.SlabFull: the slab already holds ``capacity`` values.
        """
        free = self._free
        if free:
            key = free.pop()
        else:
            # No free key: every key below _next is occupied.
            key = self._next
            if key - self._start >= self._limit:
                raise SlabFull(f"slab is full (capacity {self._capacity})")
            self._next = key + 1
        self._map[key] = value
        return key

    def vacant_key(self) -> int:
        """The key the next :meth:`insert` will return.

        :raises metalio.SlabFull: the slab is full, so there is no such key.
        """
        free = self._free
        if free:
            return free[-1]
        key = self._next
        if key - self._start >= self._limit:
            raise SlabFull(f"slab is full (capacity {self._capacity})")
        return key

    def remove(self, key: int) -> T:
        """Remove the value stored under *key* and return it; *key* becomes free.

        :raises KeyError: nothing is stored under *key*.
        :raises TypeError: *key* is not an ``int``.
        """
        if key.__class__ is not int:
            key = _key(key)
        value = self._map.pop(key, _VACANT)
        if value is _VACANT:
            raise KeyError(key)
        self._free.append(key)
        return value  # type: ignore[return-value]

    def __setitem__(self, key: int, value: T) -> None:
        """Replace the value stored under *key* (the key stays the same).

        :raises KeyError: nothing is stored under *key* (use :meth:`insert`:
            a slab chooses its keys).
        :raises TypeError: *key* is not an ``int``.
        """
        if key.__class__ is not int:
            key = _key(key)
        values = self._map
        if key not in values:
            raise KeyError(key)
        values[key] = value

    def clear(self) -> None:
        """Remove every value and release the memory; keys start again from ``start``."""
        # In place: a ``get`` bound earlier stays this slab's lookup.  A walk
        # in progress stops: its next key is beyond _next now.
        self._map.clear()
        self._free.clear()
        self._next = self._start

    # -------------------------------------------------------------- lookup

    def __getitem__(self, key: int) -> T:
        """The value stored under *key*.

        :raises KeyError: nothing is stored under *key*.
        :raises TypeError: *key* is not an ``int``.
        """
        if key.__class__ is not int:
            key = _key(key)
        return self._map[key]

    def __contains__(self, key: object) -> bool:
        """``key in slab``: whether a value is stored under *key*.

        Anything that is not an ``int`` (a ``bool`` included) is never a key,
        so the answer for it is ``False``.
        """
        if key.__class__ is not int:
            if isinstance(key, bool) or not isinstance(key, int):
                return False
            key = int(key)
        return key in self._map

    # ----------------------------------------------------------- iteration

    def items(self) -> Iterator[tuple[int, T]]:
        """Iterate over the ``(key, value)`` pairs in key order.

        Removing entries while iterating is safe; see the module documentation.
        """
        key = self._start
        while key < self._next:
            value: Any = self._map.get(key, _VACANT)
            if value is not _VACANT:
                yield key, value
            key += 1

    def keys(self) -> Iterator[int]:
        """Iterate over the occupied keys in order."""
        for pair in self.items():
            yield pair[0]

    def values(self) -> Iterator[T]:
        """Iterate over the stored values in key order."""
        for pair in self.items():
            yield pair[1]

    def __iter__(self) -> Iterator[int]:
        """``iter(slab)`` walks the occupied keys, like a ``dict``."""
        return self.keys()


# The member descriptor of the ``get`` slot (see Slab.__init__).
_GET_SLOT: Any = Slab.__dict__["get"]
