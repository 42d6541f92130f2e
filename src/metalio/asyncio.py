"""metalio inside asyncio: a raw ``Poll`` watched by the running asyncio loop.

What this module owns: two small bridges for programs that drive a
``metalio.Poll`` themselves (tokens, edge/oneshot triggers) but live in an
asyncio program: an async iterator, :func:`poll_events`, and a callback
registration, :func:`watch`.  It knows only the public ``Poll`` API
(``fileno()``, ``poll(events, 0)``) and asyncio's ``add_reader``.  It must
not know the backends or the ``EventLoop``; a whole ``EventLoop`` with its
``Handler`` runs under asyncio with ``await loop.run_async(handler)``
(``metalio._asyncio_loop``).

How it works.  ``poll.fileno()`` (epoll and kqueue) is readable while the
Poll has events.  asyncio watches it with ``add_reader``; when it is
readable the bridge calls ``poll.poll(events, 0)``, which never blocks, and
hands over what it got.  The poll and select backends have no such
descriptor: both bridges raise ``io.UnsupportedOperation`` when created.

An async iterator::

    import asyncio
    import metalio
    import metalio.asyncio

    async def serve(poll: metalio.Poll) -> None:
        events = metalio.Events(256)
        async with metalio.asyncio.poll_events(poll, events) as stream:
            async for n in stream:          # n > 0 events are in `events`
                for event in events:
                    handle(event.token, event.readiness)

A callback::

    watcher = metalio.asyncio.watch(poll, events, on_events)  # on_events(events)
    ...
    watcher.cancel()

*Readable, but nothing to report.*  On epoll the descriptor is readable
exactly when an entry on the ready list still reports its condition, the
check ``epoll_wait`` itself makes (and kqueue's when an event is pending),
so a zero-timeout poll that finds nothing means the readiness went away in
between (another thread polled the Poll or drained a level-triggered
source); then the descriptor is no longer readable either, and asyncio stops
calling.  A persistent "readable but empty" cannot happen on these
backends, but a bridge that saw it would spin; so both bridges count
consecutive empty wake-ups and, from the second one on, stop watching for a
back-off (1 ms doubling to 100 ms) before looking again.

One Poll, one bridge, per asyncio loop: ``add_reader`` keeps one callback
per descriptor, so a second bridge on the same Poll (or ``run_async`` of the
``EventLoop`` that owns it) would replace the first.  Close or cancel the
bridge before closing the Poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from types import TracebackType

    from ._events import Events
    from .poll import Poll

__all__ = ["PollEvents", "Watch", "poll_events", "watch"]

# Back-off after repeated empty wake-ups (module docstring): first pause, cap.
_BACKOFF_MIN: Final = 0.001
_BACKOFF_MAX: Final = 0.1


def _backoff(empty: int) -> float:
    """The pause after *empty* (>= 2) consecutive wake-ups that found nothing."""
    return min(_BACKOFF_MIN * 2.0 ** min(empty - 2, 16), _BACKOFF_MAX)


class PollEvents:
    """An async iterator of ``poll.poll(events, 0)`` results: see :func:`poll_events`."""

    __slots__ = ("_aloop", "_closed", "_empty", "_events", "_fd", "_poll", "_reading", "_waiter")

    def __init__(self, poll: Poll, events: Events) -> None:
        self._fd = poll.fileno()
        self._poll = poll
        self._events = events
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._closed = False
        self._empty = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> PollEvents:
        return self

    async def __anext__(self) -> int:
        """Wait until the Poll has events, fill ``events``, return their number (> 0).

        :raises StopAsyncIteration: the iterator is closed.
        :raises RuntimeError: another task is already waiting on this
            iterator, or it is used from a second asyncio loop.
        :raises ValueError: the Poll was closed.
        :raises OSError: as ``Poll.poll``.
        """
        aloop = asyncio.get_running_loop()
        if self._aloop is None:
            self._aloop = aloop
        elif self._aloop is not aloop:
            raise RuntimeError("this PollEvents belongs to another asyncio loop")
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._waiter is not None:
                raise RuntimeError("another task is already waiting on this PollEvents")
            waiter = aloop.create_future()
            self._waiter = waiter
            try:
                if not self._reading:
                    aloop.add_reader(self._fd, self._on_readable)
                    self._reading = True
                await waiter
            except BaseException:
                self._pause()  # cancelled: watch nothing for a task that left
                raise
            finally:
                self._waiter = None
            if self._closed:
                raise StopAsyncIteration
            n = self._poll.poll(self._events, 0)
            if n:
                self._empty = 0
                return n
            self._empty += 1
            if self._empty >= 2:
                self._pause()
                await asyncio.sleep(_backoff(self._empty))

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Nobody waits (the consumer is busy elsewhere): stop watching
            # rather than be called on every asyncio iteration; the next
            # __anext__ watches again.
            self._pause()
        else:
            waiter.set_result(None)

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            assert self._aloop is not None
            self._aloop.remove_reader(self._fd)

    def close(self) -> None:
        """Stop watching; a task waiting in ``__anext__`` gets ``StopAsyncIteration``.

        Harmless to call twice.  Call it from the asyncio loop's thread.
        """
        if self._closed:
            return
        self._closed = True
        self._pause()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def aclose(self) -> None:
        """:meth:`close`, awaitable (the async-iterator convention)."""
        self.close()

    async def __aenter__(self) -> PollEvents:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def poll_events(poll: Poll, events: Events) -> PollEvents:
    """An async iterator: ``async for n in poll_events(poll, events)``.

    Each step waits (in asyncio, never blocking it) until ``poll.fileno()``
    is readable, then calls ``poll.poll(events, 0)`` and yields the number of
    events, which are in *events*; empty results are not yielded.  Use it
    as an async context manager (or call ``close()``) so that the descriptor
    is not left in asyncio's selector.  One consumer task at a time.

    :raises io.UnsupportedOperation: the Poll's backend has no ``fileno()``.
    :raises ValueError: the Poll is closed.
    """
    return PollEvents(poll, events)


class Watch:
    """A :func:`watch` registration: ``cancel()`` ends it."""

    __slots__ = (
        "_aloop",
        "_callback",
        "_cancelled",
        "_empty",
        "_events",
        "_fd",
        "_poll",
        "_resume",
    )

    def __init__(
        self,
        poll: Poll,
        events: Events,
        callback: Callable[[Events], object],
        aloop: asyncio.AbstractEventLoop,
    ) -> None:
        self._fd = poll.fileno()
        self._poll = poll
        self._events = events
        self._callback = callback
        self._aloop = aloop
        self._cancelled = False
        self._empty = 0
        self._resume: asyncio.TimerHandle | None = None
        aloop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        n = self._poll.poll(self._events, 0)
        if n:
            self._empty = 0
            self._callback(self._events)
            return
        self._empty += 1
        if self._empty >= 2:
            self._aloop.remove_reader(self._fd)
            self._resume = self._aloop.call_later(_backoff(self._empty), self._on_resume)

    def _on_resume(self) -> None:
        self._resume = None
        if not self._cancelled:
            self._aloop.add_reader(self._fd, self._on_readable)

    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop watching.  Harmless to call twice; call it on the asyncio loop's thread."""
        if self._cancelled:
            return
        self._cancelled = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        else:
            self._aloop.remove_reader(self._fd)

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()


def watch(poll: Poll, events: Events, callback: Callable[[Events], object]) -> Watch:
    """Call ``callback(events)`` on the running asyncio loop whenever *poll* has events.

    Each time ``poll.fileno()`` is readable, ``poll.poll(events, 0)`` runs;
    when it returned events, *callback* gets the filled *events* (valid
    until the next call).  An exception from *callback* goes to the asyncio
    loop's exception handler, as for any ``add_reader`` callback, and the
    watch goes on.  Call from a coroutine or callback of the running loop.

    :raises RuntimeError: no asyncio loop is running in this thread.
    :raises io.UnsupportedOperation: the Poll's backend has no ``fileno()``.
    :raises ValueError: the Poll is closed.
    """
    return Watch(poll, events, callback, asyncio.get_running_loop())
