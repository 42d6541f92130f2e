"""A slab: small integer keys for values, reused as values come and go.

Theory of operation
===================

An event loop hands the kernel an integer token per registration and gets
the token back with every event; the program then needs the connection
state that token stands for, fast, for every event.  A slab is the usual
answer (mio's "connection slab"): it stores values in a flat array and uses
each value's index, offset by ``start``, as its key and token.

Layout
------
Two plain lists and one counter, nothing per entry:

* ``_values``: the array.  A vacant slot holds ``_VACANT``, a private marker
  object, so ``None`` (or anything else) is an ordinary value;
* ``_free``: the indices of the vacant slots, used as a stack;
* ``_len``: the number of occupied slots.

A slot costs one list pointer (8 bytes on a 64-bit build, plus the list's
usual over-allocation); no entry object, no dict.  Lookup is one subtraction
and one list index; insert and remove are O(1), never scan, and never
allocate beyond the list growing by one.

Key reuse and the token hazard
------------------------------
``insert`` first reuses the most recently freed key (LIFO, like mio's slab
and the ``slab`` crate), and only appends when no key is free.  LIFO keeps
the array dense and the hot slots in cache, but it means a freed key comes
back *immediately*.  Used as poll tokens, that is a hazard: if connection A
(key 5) is removed while the current batch of events still holds events for
token 5, and connection B is inserted during the same batch, it gets key 5
and receives A's stale events (mio issues #172 and #219).  Deregister a
source before closing it and removing its entry, and remove entries only
after the whole batch of events has been handled (or tag tokens with a
generation number).  :meth:`vacant_key` tells in advance which key the next
:meth:`insert` returns, so a value can be built knowing its own token.

Memory over time
----------------
The array never shrinks while it is in use: after a burst to 100 000
entries, the slab keeps a 100 000-slot list (about 0.8 MB) and up to as many
free indices, and reuses them.  :meth:`clear` releases everything.

Iteration
---------
:meth:`items`, :meth:`keys`, :meth:`values` and ``iter(slab)`` (keys) walk
the array in key order and skip vacant slots.  Removing entries while
iterating is allowed and well defined (an entry removed before the walk
reaches it is not produced; the walk never fails); an entry inserted during
the walk is produced only if its slot lies ahead of the walk.  Broadcasting
to every connection and dropping the dead ones in the same loop is fine.

Threads
-------
Not thread-safe: the free list and the array form one invariant that a
single lock would have to protect.  Keep a slab on the event-loop thread.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Generic, TypeVar, overload

from metalio._errors import SlabFull

__all__ = ["Slab"]

T = TypeVar("T")
D = TypeVar("D")


class _Vacant:
    """The marker of an empty slot; one instance, never handed out."""

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

    Freed keys are reused most recently freed first; see the module
    documentation for the token-reuse hazard.  Not thread-safe.
    """

    __slots__ = ("_capacity", "_free", "_len", "_limit", "_start", "_values")

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
        self._values: list[T | _Vacant] = []
        self._free: list[int] = []
        self._len: int = 0

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
        return self._len

    def is_full(self) -> bool:
        """Whether the next :meth:`insert` would raise :class:`metalio.SlabFull`."""
        return self._len >= self._limit

    def __repr__(self) -> str:
        return f"<Slab len={self._len} capacity={self._capacity} start={self._start}>"

    # ------------------------------------------------------------ mutation

    def insert(self, value: T) -> int:
        """Store *value* and return its key: the last freed key, else a new one.

        :raises metalio.SlabFull: the slab already holds ``capacity`` values.
        """
        free = self._free
        if free:
            i = free.pop()
            self._values[i] = value
        else:
            values = self._values
            i = len(values)
            if i >= self._limit:
                raise SlabFull(f"slab is full (capacity {self._capacity})")
            values.append(value)
        self._len += 1
        return i + self._start

    def vacant_key(self) -> int:
        """The key the next :meth:`insert` will return.

        :raises metalio.SlabFull: the slab is full, so there is no such key.
        """
        free = self._free
        if free:
            return free[-1] + self._start
        i = len(self._values)
        if i >= self._limit:
            raise SlabFull(f"slab is full (capacity {self._capacity})")
        return i + self._start

    def remove(self, key: int) -> T:
        """Remove the value stored under *key* and return it; *key* becomes free.

        :raises KeyError: nothing is stored under *key*.
        :raises TypeError: *key* is not an ``int``.
        """
        if key.__class__ is not int:
            key = _key(key)
        i = key - self._start
        values = self._values
        if 0 <= i < len(values):
            value = values[i]
            if value is not _VACANT:
                values[i] = _VACANT
                self._free.append(i)
                self._len -= 1
                return value  # type: ignore[return-value]
        raise KeyError(key)

    def __setitem__(self, key: int, value: T) -> None:
        """Replace the value stored under *key* (the key stays the same).

        :raises KeyError: nothing is stored under *key* (use :meth:`insert`:
            a slab chooses its keys).
        :raises TypeError: *key* is not an ``int``.
        """
        if key.__class__ is not int:
            key = _key(key)
        i = key - self._start
        values = self._values
        if 0 <= i < len(values) and values[i] is not _VACANT:
            values[i] = value
            return
        raise KeyError(key)

    def clear(self) -> None:
        """Remove every value and release the memory; keys start again from ``start``."""
        # In place, so that an iteration in progress stops instead of
        # producing values that are no longer in the slab.
        self._values.clear()
        self._free.clear()
        self._len = 0

    # -------------------------------------------------------------- lookup

    def __getitem__(self, key: int) -> T:
        """The value stored under *key*.

        :raises KeyError: nothing is stored under *key*.
        :raises TypeError: *key* is not an ``int``.
        """
        if key.__class__ is not int:
            key = _key(key)
        i = key - self._start
        if i >= 0:
            try:
                value = self._values[i]
            except IndexError:
                pass
            else:
                if value is not _VACANT:
                    return value  # type: ignore[return-value]
        raise KeyError(key)

    @overload
    def get(self, key: int) -> T | None: ...

    @overload
    def get(self, key: int, default: D) -> T | D: ...

    def get(self, key: int, default: object = None) -> object:
        """The value stored under *key*, or *default* if there is none.

        :raises TypeError: *key* is not an ``int``.
        """
        if key.__class__ is not int:
            key = _key(key)
        i = key - self._start
        if i >= 0:
            try:
                value = self._values[i]
            except IndexError:
                return default
            if value is not _VACANT:
                return value
        return default

    def __contains__(self, key: object) -> bool:
        """``key in slab``: whether a value is stored under *key*.

        Anything that is not an ``int`` (a ``bool`` included) is never a key,
        so the answer for it is ``False``.
        """
        if key.__class__ is not int:
            if isinstance(key, bool) or not isinstance(key, int):
                return False
            key = int(key)
        i: int = key - self._start
        values = self._values
        return 0 <= i < len(values) and values[i] is not _VACANT

    # ----------------------------------------------------------- iteration

    def items(self) -> Iterator[tuple[int, T]]:
        """Iterate over the ``(key, value)`` pairs in key order.

        Removing entries while iterating is safe; see the module documentation.
        """
        start = self._start
        for i, value in enumerate(self._values):
            if value is not _VACANT:
                yield i + start, value  # type: ignore[misc]

    def keys(self) -> Iterator[int]:
        """Iterate over the occupied keys in order."""
        start = self._start
        for i, value in enumerate(self._values):
            if value is not _VACANT:
                yield i + start

    def values(self) -> Iterator[T]:
        """Iterate over the stored values in key order."""
        for value in self._values:
            if value is not _VACANT:
                yield value  # type: ignore[misc]

    def __iter__(self) -> Iterator[int]:
        """``iter(slab)`` walks the occupied keys, like a ``dict``."""
        return self.keys()
