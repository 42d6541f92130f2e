"""The event loop's I/O phase: raw ``(fd, native_mask)`` pairs become ``ready`` calls.

What it owns
------------
The dispatch index (``metalio._dispatch_index``: fd -> token, fd ->
readiness table, token counts), and the events of a batch that a handler
exception left undelivered (*leftovers*), which the loop hands out again
before it waits.

The rules
---------
* ``ready(loop, token, ready)`` at most once per token per batch.  While no
  token is shared and the backend names each fd once per batch
  (``unique_fds``), every event is its own call, looked up in the index's
  two lists (:meth:`IoDispatcher.dispatch_unique`).  It stays Python with
  the C core too: a C version counted fewer instructions but cost more user
  CPU at small batches, where calling the handler from C is dearer than the
  interpreter's own call (``bench/README.md``).  Otherwise
  :meth:`IoDispatcher.dispatch_merged` merges flags per token first.
* Every batch first advances the readiness-tracking epoch, when there is
  one (``metalio._readiness``): a wait returned with events.  A wait that
  reported nothing leaves the marks standing, since nothing new was
  reported to anyone; a leftover batch advances it again, which only costs
  a system call.
* Reserved (negative) tokens go to the loop's ``internal(token)`` callback,
  never to the handler; ``UNREGISTERED`` (deregistered since the wait) is
  one of them, and the loop ignores it.
* When ``ready`` raises, the event being handled counts as delivered and the
  rest of the batch is kept; registrations changed in between are looked up
  again when the leftovers are dispatched, deregistered ones are dropped.

What it must not know: how the batch was waited for, or what happens in the
other phases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._dispatch_index import DispatchIndex
from ._flags import READY_VALUES, Ready
from ._readiness import switch_off

if TYPE_CHECKING:
    from ._readiness import Epoch
    from .registry import Registry

__all__ = ["IoDispatcher"]

Ready_ = Callable[[Any, int, Ready], None]


class IoDispatcher:
    """Dispatches the I/O events of one loop (see the module docstring)."""

    __slots__ = (
        "_epoch",
        "_internal",
        "_row",
        "closing_above",
        "index",
        "leftover",
        "unique_fds",
    )

    def __init__(
        self, registry: Registry, internal: Callable[[int], None], epoch: Epoch | None
    ) -> None:
        """*epoch*: the Poll's readiness-tracking epoch, ``None`` while tracking is off."""
        self._epoch = epoch
        self.index = DispatchIndex(registry)
        """The fd-indexed lists this dispatcher reads (read-only for others)."""
        self._row = registry.row
        self._internal = internal
        self.unique_fds = registry.facts.unique_fds
        """Each fd at most once per batch: the fast path needs no merging."""
        # With readiness tracking on, an event carrying a closing bit turns
        # tracking off for its source (metalio._readiness); without it no mask
        # is that large.
        self.closing_above = registry.facts.closing_above if epoch is not None else 1 << 62
        """A native mask above this carries a closing bit: call :meth:`closing_event`."""
        self.leftover: list[tuple[int, int]] | None = None
        """Events a handler exception left undelivered; dispatched before the next wait."""

    def closing_event(self, fd: int) -> None:
        """An event for *fd* carried a closing bit: readiness tracking off for its source."""
        reg = self._row(fd)
        if reg is not None:
            switch_off(reg.source)

    def keep_after(self, raw: list[tuple[int, int]], fd: int) -> None:
        """A handler raised while handling *fd*: keep the events after it.

        Each fd appears once in *raw* (the fast path's condition); ``-1``
        (nothing started) keeps them all.
        """
        for i, pair in enumerate(raw):
            if pair[0] == fd:
                raw = raw[i + 1 :]
                break
        if raw:
            self.leftover = raw

    def dispatch_unique(self, loop: Any, raw: list[tuple[int, int]], ready: Ready_) -> None:
        """The I/O phase while ``unique_fds`` and no token is shared: one call
        per event, straight from the index's lists."""
        epoch = self._epoch
        if epoch is not None:
            epoch.advance()
        index = self.index
        tokens = index.tokens
        tables = index.tables
        closing_above = self.closing_above
        fd = -1  # no event started yet (an asynchronous exception)
        try:
            for fd, mask in raw:
                try:
                    token = tokens[fd]
                except IndexError:  # never registered (a fake backend)
                    continue
                if mask > closing_above:
                    self.closing_event(fd)
                if token >= 0:
                    ready(loop, token, tables[fd][mask])  # type: ignore[index]
                else:
                    self._internal(token)
        except BaseException:
            self.keep_after(raw, fd)
            raise

    def dispatch_merged(self, loop: Any, raw: list[tuple[int, int]], ready: Ready_) -> None:
        """The merging path: flags merged per token, then one call per token.

        For batches where a token may repeat (some token is shared, or the
        backend may name an fd twice).
        """
        epoch = self._epoch
        if epoch is not None:
            epoch.advance()
        row = self._row
        merged: dict[int, int] = {}
        closing_above = self.closing_above
        for fd, mask in raw:
            reg = row(fd)
            if reg is None:
                continue
            if mask > closing_above:
                switch_off(reg.source)
            token = reg.token
            bits = int(reg.table[mask])
            old = merged.get(token)
            merged[token] = bits if old is None else old | bits
        items = list(merged.items())
        for i, (token, bits) in enumerate(items):
            try:
                if token >= 0:
                    ready(loop, token, READY_VALUES[bits])
                else:
                    self._internal(token)
            except BaseException:
                rest = {tok for tok, _ in items[i + 1 :]}
                if rest:
                    kept = []
                    for pair in raw:
                        reg = row(pair[0])
                        if reg is not None and reg.token in rest:
                            kept.append(pair)
                    self.leftover = kept or None
                raise
