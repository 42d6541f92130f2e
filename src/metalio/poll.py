"""``Poll``: waits for readiness and reports it by token.

A ``Poll`` owns one backend (``metalio._backends``: epoll, kqueue, poll or
select) and one :class:`~metalio.registry.Registry`, which keeps the token
table.  ``poll()`` asks the backend for ``(fd, native_mask)`` pairs and
turns each into an ``Event`` with two dictionary lookups: the fd finds the
registration (its token), and the native mask finds the ``Ready`` value in
a table shared by all registrations with the same interest.  Nothing else
runs per event, no enum arithmetic and no Python-level constructor, and
usually no allocation either: each registration keeps the last ``Event`` it
produced and hands it out again while its readiness stays the same (an
``Event`` is an immutable tuple; ``Ready`` values are shared, so one
identity test decides).  An fd that is no longer in the table (deregistered
by another thread, or an internal descriptor of the backend) is skipped,
which is what makes "after ``deregister`` returns no later poll reports the
source" hold on every backend.

Closing while other threads wait: ``close()`` marks the Poll closed, empties
the registry, and wakes the waiters through the backend's ``interrupt()``;
the last thread to leave the backend releases the kernel object, never one
that another thread is still blocked on.

What it must not know: what tokens mean, and how an event loop dispatches
(``EventLoop`` reads the backend's raw results through :attr:`Poll.raw_poll`
and the registry's observer contract).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

from . import _validate
from ._backends import MAX_TIMEOUT, Backend, Facts, open_backend
from ._events import Event, Events
from ._readiness import Tracking, switch_off
from .registry import Registry

__all__ = ["Poll", "Registry"]

_new_event: Final = tuple.__new__


class Poll:
    """Waits for readiness of registered sources and reports it by token.

    ``Poll(backend=None)`` picks the best backend of the platform; pass
    ``"epoll"``, ``"kqueue"``, ``"poll"`` or ``"select"`` to choose.

    :raises ValueError: unknown or unavailable backend name.
    :raises OSError: the kernel refused to create the polling object.
    """

    __slots__ = (
        "_backend",
        "_closed",
        "_closing_above",
        "_epoch",
        "_inflight",
        "_registry",
        "_release_lock",
        "_released",
        "_tracking",
    )

    def __init__(self, backend: str | None = None) -> None:
        self._setup(open_backend(backend))

    @classmethod
    def over_backend(cls, backend: Backend) -> Poll:
        """A Poll over a backend object made elsewhere (a fake, a fault injector).

        The Poll owns it from now on and closes it.
        """
        self = cls.__new__(cls)
        self._setup(backend)
        return self

    def _setup(self, backend: Backend) -> None:
        self._backend = backend
        self._registry = Registry(backend)
        self._tracking = tracking = Tracking(self._registry)
        # What poll() needs of it, at hand: the epoch to advance (None: off)
        # and the native bits that switch a source's tracking off.
        self._epoch = tracking.epoch if tracking.enabled else None
        self._closing_above = self._registry.facts.closing_above if tracking.enabled else 1 << 62
        self._closed = False
        # list.append/pop are atomic: a count of threads inside the backend
        # that close() can read without a lock (see close()).
        self._inflight: list[None] = []
        self._release_lock = threading.Lock()
        self._released = False

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def registry(self) -> Registry:
        return self._registry

    @property
    def facts(self) -> Facts:
        """What the backend can do (``metalio._backends.Facts``)."""
        return self._registry.facts

    @property
    def tracking(self) -> Tracking:
        """This Poll's readiness tracking (``metalio._readiness``).

        Whoever waits through :attr:`raw_poll` must call
        ``tracking.epoch.advance()`` once the wait returns, when
        ``tracking.enabled``, and ``metalio._readiness.switch_off(source)`` for
        a source whose event carries a bit of ``facts.closing_mask``.
        """
        return self._tracking

    @property
    def raw_poll(self) -> Callable[[float | None, int], list[tuple[int, int]]]:
        """The backend's own wait: ``(timeout, maxevents) -> [(fd, native_mask)]``.

        For event loops built on this Poll, which translate the pairs with the
        registry's rows themselves.  Nothing is validated: *timeout* must be
        ``None``, ``0`` or a positive float up to ``MAX_TIMEOUT``, and the
        caller must not use it concurrently with :meth:`close`.
        """
        return self._backend.poll

    @property
    def closed(self) -> bool:
        return self._closed

    def poll(self, events: Events, timeout: float | None = None) -> int:
        """Wait for readiness and fill *events*; return how many there are.

        *events* is cleared first and receives at most ``events.capacity``
        events; readiness that did not fit is reported by the next call.
        ``timeout=None`` blocks until an event, ``timeout <= 0`` does not
        block, otherwise it waits at least about *timeout* seconds.

        :raises TypeError: *events* is not an ``Events``; bad *timeout* type.
        :raises ValueError: the Poll is closed (also when closed by another
            thread while this one waited); NaN timeout.
        :raises RuntimeError: a second thread polls a backend that does not
            allow it (poll, select).
        :raises Exception: whatever a Python signal handler raised while
            waiting; interrupted system calls are otherwise retried.
        """
        if self._closed:
            raise ValueError("I/O operation on a closed Poll")
        if timeout is not None:
            kind = type(timeout)
            if (kind is float or kind is int) and timeout == timeout:  # not NaN
                if timeout <= 0:
                    timeout = 0.0
                elif timeout > MAX_TIMEOUT:
                    timeout = None  # longer than the kernel takes: no bound
            else:
                timeout = _validate.wait(timeout)
        if type(events) is not Events and not isinstance(events, Events):
            raise TypeError(f"events must be an Events, not {type(events).__name__}")
        items = events._items
        items.clear()
        inflight = self._inflight
        inflight.append(None)
        try:
            raw = self._backend.poll(timeout, events._capacity)
        except (ValueError, OSError):
            if self._closed:
                raise ValueError("the Poll was closed while polling") from None
            raise
        finally:
            inflight.pop()
            # Another thread may have closed the Poll while we waited; mypy
            # cannot know that and thinks _closed is still False here.
            if self._closed and not inflight:  # type: ignore[unreachable]
                self._release()  # type: ignore[unreachable]
        if self._closed:
            raise ValueError("the Poll was closed while polling")
        epoch = self._epoch
        if epoch is not None:
            epoch.advance()  # readiness tracking: a wait returned
        closing_above = self._closing_above
        row = self._registry.row
        append = items.append
        new = _new_event
        for fd, mask in raw:
            reg = row(fd)
            if reg is not None:
                if mask > closing_above:  # a closing bit (Facts.closing_above)
                    switch_off(reg.source)
                ready = reg.table[mask]
                event = reg.event
                # Ready values are shared singletons (one per bit pattern), so
                # identity tells whether the cached event says the same.
                if event is None or event[1] is not ready:
                    event = reg.event = new(Event, (reg.token, ready))
                append(event)
        return len(items)

    def fileno(self) -> int:
        """A descriptor that is readable while this Poll has events.

        Lets a Poll be nested in another loop (``asyncio``'s ``add_reader``).

        :raises io.UnsupportedOperation: the backend has no such descriptor
            (poll, select).
        :raises ValueError: the Poll is closed.
        """
        if self._closed:
            raise ValueError("I/O operation on a closed Poll")
        return self._backend.fileno()

    def close(self) -> None:
        """Release the kernel object.  Harmless to call twice.

        A thread blocked in :meth:`poll` wakes and gets ``ValueError``.
        """
        if self._closed:
            return
        self._closed = True  # set before reading _inflight: see poll()'s finally
        self._registry.detach_all()
        if self._inflight:
            # Threads are blocked in the backend: wake them; the last one to
            # leave releases the kernel object.
            self._backend.interrupt()
            if self._inflight:
                return
        self._release()

    def _release(self) -> None:
        with self._release_lock:
            if not self._released:
                self._released = True
                self._backend.close()

    def __enter__(self) -> Poll:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._registry.rows())} registered"
        return f"<Poll {self._backend.name} {state}>"
