"""``Event`` and ``Events``: what ``Poll.poll`` hands back.

An ``Event`` is a ``NamedTuple`` of ``(token, readiness)``: creating one is a
single C-level tuple allocation, its fields are read by C accessors, and it
compares and unpacks like the pair it is.  ``Events`` is a reusable buffer
with a fixed capacity; ``Poll.poll`` clears it and refills it in place so a
program polling in a loop allocates no container per call.
"""

from __future__ import annotations

from collections.abc import Iterator
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple

from ._flags import Ready

__all__ = ["MAX_CAPACITY", "Event", "Events"]


class _EventFields(NamedTuple):
    token: int
    readiness: Ready


def _readiness_test(name: str) -> property:
    """``event.readiness.<name>`` read by C code: the field is a C accessor and
    Ready's properties have C getters, so no Python frame runs."""
    return property(attrgetter(f"readiness.{name}"), doc=getattr(Ready, name).__doc__)


class Event(_EventFields):
    """One readiness report: the registration's token and what happened."""

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def readable(self) -> bool: ...
        @property
        def writable(self) -> bool: ...
        @property
        def priority(self) -> bool: ...
        @property
        def error(self) -> bool: ...
        @property
        def read_closed(self) -> bool: ...
        @property
        def write_closed(self) -> bool: ...
        @property
        def hup(self) -> bool:
            """The peer will send no more data (the same as :attr:`read_closed`)."""

    else:
        readable = _readiness_test("readable")
        writable = _readiness_test("writable")
        priority = _readiness_test("priority")
        error = _readiness_test("error")
        read_closed = _readiness_test("read_closed")
        write_closed = _readiness_test("write_closed")
        hup = _readiness_test("hup")

    def __repr__(self) -> str:
        names = [m.name for m in Ready if m & self[1] and m.name] or ["(none)"]
        return f"Event(token={self[0]}, readiness={'|'.join(names)})"


MAX_CAPACITY = 1 << 20
"""The largest ``Events`` capacity.  Every ``poll()`` hands the kernel a buffer
of that many entries (CPython allocates it per call, 12 bytes an entry on
epoll, and ``epoll_wait`` refuses more than about 178 million), so a larger
capacity could only fail later, or waste memory on every call."""


class Events:
    """A reusable buffer of at most *capacity* events.

    :raises TypeError: *capacity* is not an ``int``.
    :raises ValueError: *capacity* < 1 or > ``MAX_CAPACITY`` (2**20).
    """

    __slots__ = ("_capacity", "_items")

    def __init__(self, capacity: int = 1024) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"capacity must be an int, not {type(capacity).__name__}")
        if not 1 <= capacity <= MAX_CAPACITY:
            raise ValueError(f"capacity must be in 1 ..= {MAX_CAPACITY}, got {capacity}")
        self._capacity = int(capacity)
        self._items: list[Event] = []

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Event]:
        return iter(self._items)

    def __getitem__(self, index: int) -> Event:
        return self._items[index]

    def __bool__(self) -> bool:
        return bool(self._items)

    def is_empty(self) -> bool:
        return not self._items

    def clear(self) -> None:
        self._items.clear()

    def __repr__(self) -> str:
        return f"Events(capacity={self._capacity}, len={len(self._items)})"
