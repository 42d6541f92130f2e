"""The event loop's dispatch index: fd-indexed tokens and readiness tables, token counts.

What it owns
------------
Two lists indexed by descriptor number, ``tokens[fd]`` and ``tables[fd]``
(the registration's token and its native mask -> ``Ready`` table), and the
number of registrations per token, with ``shared``, the set of tokens used
by more than one of them.  An ``EventLoop`` dispatches from the lists
instead of from the registry's rows: two list indexings, where a row lookup
costs a hashed lookup and a visit to the row object, which the kernel's work
between events has usually pushed out of the CPU caches.  It merges
readiness per token only while ``shared`` is not empty.

How it stays right
------------------
It attaches to a ``Registry`` as an observer (``Registry.observe``) and is
told every change of a row, under the registry's lock.  A dispatching thread
reads the lists and ``shared`` without that lock, so the order of the stores
is the whole argument:

* a new row's token is counted (and, if it is now shared, put in
  ``shared``) before the lists show it, and an old row's token is uncounted
  after the lists stopped showing it, so a dispatcher never misses a shared
  token (it may briefly see one too many, which only costs the merging path);
* a readiness table is stored before its token, and a removal leaves the old
  table where it is (only the token says ``UNREGISTERED``), so a token the
  dispatcher read always comes with a table (at worst that of the next
  registration at this fd).

``UNREGISTERED`` is negative like every reserved token, so the loop's
``token >= 0`` test sends it down the internal path, which ignores it.  The
lists reach the highest fd ever registered and never shrink: 16 bytes per
descriptor number, nothing per registration.

What it must not know: how events are waited for, or what tokens mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._flags import UNREGISTERED

if TYPE_CHECKING:
    from .registry import Registration, Registry

__all__ = ["DispatchIndex"]


class DispatchIndex:
    """The fd-indexed view of one registry that an ``EventLoop`` dispatches from."""

    __slots__ = ("counts", "shared", "tables", "tokens")

    def __init__(self, registry: Registry) -> None:
        self.tokens: list[int] = []
        # Readiness tables by fd; None where nothing was ever registered.
        self.tables: list[Mapping[int, Any] | None] = []
        self.counts: dict[int, int] = {}
        self.shared: set[int] = set()
        registry.observe(self._changed)

    def _changed(self, fd: int, old: Registration | None, new: Registration | None) -> None:
        """The registry's observer (its lock is held): mirror the row at *fd*."""
        if new is not None:
            self._count(new.token)
        tokens = self.tokens
        if fd >= len(tokens):
            grow = fd + 1 - len(tokens)
            tokens.extend([UNREGISTERED] * grow)
            self.tables.extend([None] * grow)
        if new is None:
            tokens[fd] = UNREGISTERED
        else:
            self.tables[fd] = new.table
            tokens[fd] = new.token
        if old is not None:
            self._uncount(old.token)

    def _count(self, token: int) -> None:
        count = self.counts.get(token, 0) + 1
        self.counts[token] = count
        if count == 2:
            self.shared.add(token)

    def _uncount(self, token: int) -> None:
        count = self.counts.get(token, 1) - 1
        if count > 0:
            self.counts[token] = count
        else:
            self.counts.pop(token, None)
        if count <= 1:
            self.shared.discard(token)
