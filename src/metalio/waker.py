"""``Waker``: make a blocked ``poll()`` return, from any thread.

The descriptor is a ``WakeFd`` (``metalio._wakefd``); how it is registered
depends on what the backend can do:

* native edges (epoll, kqueue): registered edge-triggered.  Every
  ``wake()`` makes the descriptor readable anew, which queues an edge; wakes
  before the next ``poll()`` find the entry already on the ready list and
  coalesce into one event.  An eventfd is never read; a socket pair is
  drained by ``wake()`` itself when full, so it never needs the polling
  thread's attention.
* emulated edges (poll, select), which need to see a drain: registered
  ONESHOT.  ``wake()`` drains the descriptor, re-arms the registration and
  wakes it, under a lock.  The oneshot registration delivers at most one
  event per arming, which is the contract's coalescing; the emulating
  backend wakes its own blocked poller when a registration changes.
"""

from __future__ import annotations

import threading

from ._flags import Interest, PollOpt, check_token
from ._wakefd import WakeFd
from .registry import Registry

__all__ = ["Waker"]


class Waker:
    """Wakes the ``Poll`` behind *registry* with a readable event for *token*.

    :raises TypeError: *registry* is not a ``Registry``; bad token type.
    :raises ValueError: token out of range; the Poll is closed.
    :raises OSError: no descriptor could be created or registered.
    """

    __slots__ = ("_closed", "_lock", "_oneshot", "_registry", "_token", "_wakefd")

    def __init__(self, registry: Registry, token: int) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry, not {type(registry).__name__}")
        self._token = check_token(token)
        self._registry = registry
        self._lock = threading.Lock()
        self._closed = False
        self._oneshot = registry.facts.emulates_edge
        wakefd = WakeFd()
        try:
            opts = PollOpt.ONESHOT if self._oneshot else PollOpt.EDGE
            registry.register(wakefd, self._token, Interest.READABLE, opts)
        except BaseException:
            wakefd.close()
            raise
        self._wakefd = wakefd

    @property
    def token(self) -> int:
        return self._token

    def wake(self) -> None:
        """Make the Poll report a readable event for the token soon.

        Thread-safe; wakes before one ``poll()`` coalesce.

        :raises ValueError: the Waker (or its Poll) is closed.
        :raises OSError: the kernel refused the write for a reason other than
            a full buffer.
        """
        if not self._oneshot:
            if self._closed:
                raise ValueError("wake() on a closed Waker")
            self._wakefd.wake()
            return
        with self._lock:
            if self._closed:
                raise ValueError("wake() on a closed Waker")
            wakefd = self._wakefd
            wakefd.drain()
            self._registry.reregister(wakefd, self._token, Interest.READABLE, PollOpt.ONESHOT)
            wakefd.wake()

    def close(self) -> None:
        """Deregister and close the descriptor.  Harmless to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._registry.deregister(self._wakefd)
        except (ValueError, OSError):
            pass  # the Poll is closed or forgot it: closing the fd is what matters
        self._wakefd.close()

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Waker token={self._token}{' closed' if self._closed else ''}>"
