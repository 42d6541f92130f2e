"""``WakeFd``: the one descriptor type metalio uses to wake a wait from outside.

Five parties need "make that blocked wait return": the public ``Waker``, the
notify channel's awakener, the signal socket that ``signal.set_wakeup_fd``
writes to, and the ``interrupt()`` of the epoll, kqueue and emulated
backends.  They all use this type, so the kernel facts below are handled
once:

* **eventfd** (Linux) is one descriptor holding a 64-bit counter.  A write
  adds to it and makes it readable; a read returns it and resets it to zero.
  Registered edge-triggered it never needs reading: every write wakes its
  wait queue, which queues a new edge.  A write that would push the counter
  past ``2**64 - 2`` fails with ``EAGAIN``; then the counter is read (reset)
  and written again, so ``wake()`` never fails for being woken too often.
* **a socket pair** is the portable fallback, and the only choice when the
  bytes themselves carry information: CPython's C signal handler writes the
  signal number as one byte to the wakeup fd.  A full buffer refuses the
  write (``EAGAIN``); the pair is then drained and written again, so a
  reader that needs a *new* edge (kqueue's ``EV_CLEAR``) still gets one.

What this module does not know: which Poll the descriptor is registered
with, under which token, or in which trigger mode.  Its users decide that.
"""

from __future__ import annotations

import os
import socket
import weakref
from typing import Final

__all__ = ["WakeFd"]

_HAS_EVENTFD: Final = hasattr(os, "eventfd")


def _close_sockets(*socks: socket.socket) -> None:
    for sock in socks:
        sock.close()


class WakeFd:
    """A descriptor that becomes readable when :meth:`wake` is called, from any thread.

    :param carries_bytes: the bytes written must be readable by :meth:`drain`
        (the signal wakeup fd): always a socket pair.
    :param woken: start readable (a backend's ``interrupt`` descriptor).
    :raises OSError: no descriptor could be created.
    """

    __slots__ = ("__weakref__", "_closer", "_eventfd", "_rsock", "_wsock")

    _closer: weakref.finalize[..., WakeFd]

    def __init__(self, *, carries_bytes: bool = False, woken: bool = False) -> None:
        self._eventfd = -1
        self._rsock: socket.socket | None = None
        self._wsock: socket.socket | None = None
        if _HAS_EVENTFD and not carries_bytes:
            fd = os.eventfd(1 if woken else 0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._eventfd = fd
            # Dropped without close() (a loop never closed): the finalizer
            # still releases the descriptor, and runs at most once.
            self._closer = weakref.finalize(self, os.close, fd)
            return
        rsock, wsock = socket.socketpair()  # close-on-exec since Python 3.4
        self._closer = weakref.finalize(self, _close_sockets, rsock, wsock)
        try:
            rsock.setblocking(False)
            wsock.setblocking(False)
            if woken:
                wsock.send(b"\0")
        except BaseException:
            self._closer()
            raise
        self._rsock = rsock
        self._wsock = wsock

    @property
    def is_eventfd(self) -> bool:
        """Whether this is an eventfd (no bytes to drain when registered edge-triggered)."""
        return self._eventfd >= 0

    def fileno(self) -> int:
        """The descriptor to register for ``READABLE``; ``-1`` once closed."""
        if self._eventfd >= 0:
            return self._eventfd
        rsock = self._rsock
        return -1 if rsock is None else rsock.fileno()

    def writer_fileno(self) -> int:
        """The descriptor writers use (``signal.set_wakeup_fd`` takes it); ``-1`` once closed."""
        if self._eventfd >= 0:
            return self._eventfd
        wsock = self._wsock
        return -1 if wsock is None else wsock.fileno()

    def wake(self) -> None:
        """Make the descriptor readable (again).  Never blocks.

        Callers that race with :meth:`close` must serialise the two
        themselves: a descriptor number, once closed, may name another file.

        :raises ValueError: the WakeFd is closed.
        :raises OSError: the kernel refused the write for another reason.
        """
        fd = self._eventfd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except BlockingIOError:
                self.drain()
                os.eventfd_write(fd, 1)
            return
        wsock = self._wsock
        if wsock is None:
            raise ValueError("wake() on a closed WakeFd")
        try:
            wsock.send(b"\0")
        except BlockingIOError:
            self.drain()
            try:
                wsock.send(b"\0")
            except BlockingIOError:
                pass  # refilled by another thread meanwhile: readable anyway

    def drain(self) -> bytes:
        """Consume what makes the descriptor readable; return the bytes read.

        An eventfd returns ``b""`` (its counter carries no information).
        Never blocks and never raises: a closed or empty descriptor gives ``b""``.
        """
        fd = self._eventfd
        if fd >= 0:
            try:
                os.eventfd_read(fd)
            except OSError:
                pass  # BlockingIOError: already zero
            return b""
        rsock = self._rsock
        if rsock is None:
            return b""
        chunks = []
        try:
            while True:
                data = rsock.recv(4096)
                if not data:
                    break
                chunks.append(data)
        except OSError:
            pass  # BlockingIOError: drained; InterruptedError: the rest next time
        return b"".join(chunks)

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def close(self) -> None:
        """Release the descriptor(s).  Harmless to call twice.

        Deregister the descriptor from its Poll first.
        """
        self._eventfd = -1
        self._rsock = self._wsock = None
        self._closer()

    def __repr__(self) -> str:
        kind = "eventfd" if self._eventfd >= 0 else "socketpair"
        return f"<WakeFd {kind} fd={self.fileno()}>"
