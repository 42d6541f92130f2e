"""``Waker``: make a blocked ``poll()`` return, from any thread.

Three shapes, chosen by what the backend can do:

* epoll (Linux): an ``eventfd`` registered edge-triggered.  ``wake()`` is one
  ``write(2)`` of 1.  Every write wakes the eventfd's wait queue, which queues
  an edge; writes before the next ``poll()`` find the entry already on the
  ready list and coalesce into one event.  The counter is never read: it
  cannot realistically overflow (2**64 - 2 wakes), and if it ever refused a
  write it is read once to reset it.
* kqueue: a socketpair, read end registered edge-triggered (EV_CLEAR).  Each
  byte is a new edge; when the buffer is full, ``wake()`` drains it and
  writes again, so the pair never needs attention from the polling thread.
* poll / select (edge triggering is emulated there and needs to see a drain):
  a socketpair registered ONESHOT.  ``wake()`` drains the read end, re-arms
  the registration and writes one byte, under a lock.  The oneshot
  registration delivers at most one event per arming, which is the
  contract's coalescing; the emulating backend wakes its own blocked poller
  when a registration changes.
"""

from __future__ import annotations

import os
import socket
import threading

from ._flags import Interest, PollOpt, check_token
from .poll import Registry

__all__ = ["Waker"]


class Waker:
    """Wakes the ``Poll`` behind *registry* with a readable event for *token*.

    :raises TypeError: *registry* is not a ``Registry``; bad token type.
    :raises ValueError: token out of range; the Poll is closed.
    :raises OSError: no descriptor could be created or registered.
    """

    __slots__ = (
        "_closed",
        "_eventfd",
        "_lock",
        "_oneshot",
        "_registry",
        "_rsock",
        "_token",
        "_wsock",
    )

    def __init__(self, registry: Registry, token: int) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"registry must be a Registry, not {type(registry).__name__}")
        self._token = check_token(token)
        self._registry = registry
        self._lock = threading.Lock()
        self._closed = False
        self._eventfd = -1
        self._rsock: socket.socket | None = None
        self._wsock: socket.socket | None = None
        backend = registry._backend
        self._oneshot = backend.emulates_edge
        if not self._oneshot and hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                registry.register(fd, self._token, Interest.READABLE, PollOpt.EDGE)
            except BaseException:
                os.close(fd)
                raise
            self._eventfd = fd
            return
        rsock, wsock = socket.socketpair()
        try:
            rsock.setblocking(False)
            wsock.setblocking(False)
            opts = PollOpt.ONESHOT if self._oneshot else PollOpt.EDGE
            registry.register(rsock, self._token, Interest.READABLE, opts)
        except BaseException:
            rsock.close()
            wsock.close()
            raise
        self._rsock = rsock
        self._wsock = wsock

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
        fd = self._eventfd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except BlockingIOError:
                # The counter is at its maximum: reset it, the edge is pending anyway.
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
                os.eventfd_write(fd, 1)
            return
        if self._closed:
            raise ValueError("wake() on a closed Waker")
        rsock = self._rsock
        wsock = self._wsock
        assert rsock is not None and wsock is not None
        if self._oneshot:
            with self._lock:
                if self._closed:
                    raise ValueError("wake() on a closed Waker")
                self._drain(rsock)
                self._registry.reregister(rsock, self._token, Interest.READABLE, PollOpt.ONESHOT)
                try:
                    wsock.send(b"\0")
                except BlockingIOError:
                    pass
            return
        try:
            wsock.send(b"\0")
        except BlockingIOError:
            with self._lock:
                self._drain(rsock)
                try:
                    wsock.send(b"\0")
                except BlockingIOError:
                    pass

    @staticmethod
    def _drain(rsock: socket.socket) -> None:
        try:
            while rsock.recv(4096):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        """Deregister and close the descriptors.  Harmless to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fd = self._eventfd
            self._eventfd = -1
        if fd >= 0:
            try:
                self._registry.deregister(fd)
            except (ValueError, OSError):
                pass  # the Poll is closed or forgot it: closing the fd is what matters
            os.close(fd)
        for sock in (self._rsock, self._wsock):
            if sock is not None:
                if sock is self._rsock:
                    try:
                        self._registry.deregister(sock)
                    except (ValueError, OSError):
                        pass
                sock.close()

    def __enter__(self) -> Waker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Waker token={self._token}{' closed' if self._closed else ''}>"
