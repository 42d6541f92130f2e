"""The notify channel of an ``EventLoop``: ``Sender`` and the queue behind it.

Theory of operation
===================

One ``EventLoop`` owns one ``_Notify``: a ``collections.deque`` of messages,
a deque of *credits*, a ``sleeping`` flag and an *awakener* (a descriptor the
loop polls under an internal, negative token).  ``loop.channel()`` hands out
``Sender`` objects that share it.

Sending
-------
``Sender.send(msg)`` takes one credit (``credits.pop()``), appends the
message (``queue.append``) and reads ``sleeping``.  Both deque operations are
atomic C calls, so the common path is three cheap operations and no lock:
a burst of sends while the loop is busy costs no system call at all.

Credits make the bound exact.  The credit deque starts with
``notify_capacity`` entries; a sender that finds it empty is refused with
``NotifyFull(msg)``, and the loop gives one credit back for every message it
removes.  A "``len(queue) < capacity``, then append" check would let several
threads pass the test together and overfill the queue; popping a credit is a
single atomic step.  (The credits cost one pointer per slot, like mio's
preallocated ring buffer.)

Sleeping and waking
-------------------
The loop may only block when no message is pending, and a sender must wake
it when it blocks with a message pending.  The protocol (a Dekker-style
handshake; mio 0.5 did the same with a CAS on its state word):

* the loop, about to wait with a timeout other than zero, stores
  ``sleeping = True`` and **then** checks the queue again; if a message is
  there it does not wait (timeout 0).  After the wait returns it stores
  ``sleeping = False``;
* a sender appends **then** reads ``sleeping``; if it is set, it takes the
  wake lock, and if the flag is still set clears it and writes the
  awakener, once.

Why no message is stranded: take a sender whose read of ``sleeping`` gave
``False``.  Under the GIL every bytecode is sequentially consistent, so that
read came before the loop's ``sleeping = True`` store, and the append came
before that read; so the append came before the loop's re-check, which sees
the message and does not block.  Otherwise the sender saw ``True`` and the
awakener gets written (by it or by a sender that cleared the flag first);
the awakener keeps its readiness until polled, so a write that lands before
the loop actually enters the kernel still ends the wait.  A wake that
arrives after the loop has woken for another reason costs one spurious,
empty iteration, never a lost message.  Clearing the flag under the wake lock
makes a burst of sends to a sleeping loop cost one system call, not one per
sender.

Without a GIL (free-threaded CPython) plain attribute stores and loads are
not ordered against each other the way the argument needs, so there both
halves of the handshake run under the channel's lock (the loop's "announce
and re-check" and the sender's "append and read the flag"): the lock orders
them.  The choice is made once, when the loop is built (``_FREE_THREADED``).

The awakener is an ``eventfd`` registered edge-triggered where the backend
has native edges (a write queues a new edge, the counter never needs
reading), else a non-blocking socket pair whose read end is registered
level-triggered and drained by the loop when it reports.

Closing
-------
``close()`` marks the channel closed and empties the credits and the queue,
so later sends fail with ``NotifyClosed(msg)`` and messages still queued are
dropped.  The awakener is written only under the wake lock after checking the
closed flag, so no sender ever writes to a descriptor number that was closed
(and perhaps reused).  A send racing with ``close()`` may return normally and
have its message dropped, as if it had been queued just before the close.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from ._errors import NotifyClosed, NotifyError, NotifyFull
from ._flags import Interest, PollOpt

if TYPE_CHECKING:
    from collections.abc import Callable

    from .poll import Registry

__all__ = ["Sender"]

M = TypeVar("M")

# The internal token of the awakener.  User tokens are >= 0, so it can never
# collide with one.
NOTIFY_TOKEN: Final = -1

_is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
_FREE_THREADED: bool = _is_gil_enabled is not None and not _is_gil_enabled()


class _Awakener:
    """The descriptor a ``_Notify`` writes to end the loop's wait.

    :raises OSError: no descriptor could be created or registered.
    """

    __slots__ = (
        "__weakref__",
        "_close_fd",
        "_eventfd",
        "_registry",
        "_rsock",
        "_wsock",
        "drain_needed",
    )

    def __init__(self, registry: Registry, token: int) -> None:
        self._registry = registry
        self._eventfd = -1
        self._close_fd: weakref.finalize[[int], _Awakener] | None = None
        self._rsock: socket.socket | None = None
        self._wsock: socket.socket | None = None
        self.drain_needed = False
        backend = registry._backend
        if not backend.emulates_edge and hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                registry._register(fd, token, Interest.READABLE, PollOpt.EDGE)
            except BaseException:
                os.close(fd)
                raise
            self._eventfd = fd
            # A loop dropped without close() must not leak the descriptor; the
            # finalizer runs at most once, so close() uses it too.
            self._close_fd = weakref.finalize(self, os.close, fd)
            return
        rsock, wsock = socket.socketpair()
        try:
            rsock.setblocking(False)
            wsock.setblocking(False)
            # Level-triggered and drained by the loop: exact on every backend,
            # and the drain costs a system call only after a real wake.
            registry._register(rsock, token, Interest.READABLE, PollOpt.LEVEL)
        except BaseException:
            rsock.close()
            wsock.close()
            raise
        self._rsock = rsock
        self._wsock = wsock
        self.drain_needed = True

    def wake(self) -> None:
        """Give the awakener readiness.  Callers serialise this with ``close``."""
        fd = self._eventfd
        if fd >= 0:
            try:
                os.eventfd_write(fd, 1)
            except BlockingIOError:
                # Counter at its maximum (never in practice): reset it; an
                # edge is pending anyway.
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    pass
                os.eventfd_write(fd, 1)
            return
        wsock = self._wsock
        if wsock is not None:
            try:
                wsock.send(b"\0")
            except BlockingIOError:
                pass  # the buffer is full: the read end is readable already

    def drain(self) -> None:
        """Empty the socket pair (loop thread, after it reported readable)."""
        rsock = self._rsock
        if rsock is None:
            return
        try:
            while rsock.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        fd = self._eventfd
        self._eventfd = -1
        if fd >= 0:
            try:
                self._registry.deregister(fd)
            except (ValueError, OSError):
                pass  # the Poll is closed already: closing the fd is what matters
            if self._close_fd is not None:
                self._close_fd()
        rsock, wsock = self._rsock, self._wsock
        self._rsock = self._wsock = None
        if rsock is not None:
            try:
                self._registry.deregister(rsock)
            except (ValueError, OSError):
                pass
            rsock.close()
        if wsock is not None:
            wsock.close()


class _Notify:
    """The state one loop shares with all its senders (see the module docstring)."""

    __slots__ = (
        "awakener",
        "capacity",
        "closed",
        "credits",
        "has_senders",
        "lock",
        "locked",
        "queue",
        "sleeping",
        "wakes",
    )

    def __init__(self, registry: Registry, capacity: int) -> None:
        self.queue: deque[object] = deque()
        self.credits: deque[None] = deque([None]) * capacity
        self.capacity = capacity
        self.sleeping = False
        self.closed = False
        # Whether channel() was ever called: until then the loop skips the
        # sleep announcement entirely.
        self.has_senders = False
        self.locked = _FREE_THREADED
        self.lock = threading.Lock()
        self.wakes = 0  # awakener writes made for sleeping loops (for benchmarks)
        self.awakener = _Awakener(registry, NOTIFY_TOKEN)

    def refusal(self, msg: object) -> NotifyError:
        if self.closed:
            return NotifyClosed(msg, "the event loop is closed")
        return NotifyFull(msg, f"the channel holds {self.capacity} undelivered messages")

    def wake_sleeper(self) -> None:
        """A sender saw ``sleeping``: wake the loop once per sleep."""
        with self.lock:
            if not self.sleeping or self.closed:
                return
            self.sleeping = False
            self.wakes += 1
            self.awakener.wake()

    def wake(self) -> None:
        """Wake the loop whether or not it sleeps (``shutdown`` from any thread)."""
        with self.lock:
            if not self.closed:
                self.awakener.wake()

    def announce_sleep(self) -> bool:
        """Free-threaded form of the loop's half: set ``sleeping``, report an empty queue."""
        with self.lock:
            self.sleeping = True
            return not self.queue

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.sleeping = False
            self.credits.clear()
            self.queue.clear()
            self.awakener.close()


def _gil_send(core: _Notify) -> Callable[[object], None]:
    """``Sender.send`` under the GIL: the lock-free handshake (module docstring)."""
    take = core.credits.pop
    put = core.queue.append
    refusal = core.refusal

    def send(msg: object) -> None:
        try:
            take()
        except IndexError:
            raise refusal(msg) from None
        put(msg)
        if core.sleeping:
            core.wake_sleeper()

    return send


def _locked_send(core: _Notify) -> Callable[[object], None]:
    """``Sender.send`` for free-threaded builds: the handshake runs under the lock."""
    take = core.credits.pop
    put = core.queue.append
    refusal = core.refusal
    lock = core.lock

    def send(msg: object) -> None:
        try:
            take()
        except IndexError:
            raise refusal(msg) from None
        with lock:
            put(msg)
            if core.sleeping and not core.closed:
                core.sleeping = False
                core.wakes += 1
                core.awakener.wake()

    return send


class Sender(Generic[M]):
    """Sends messages to an ``EventLoop``'s ``Handler.notify`` from any thread.

    Obtained from ``loop.channel()``; every sender of one loop feeds the same
    FIFO queue.  Senders may be shared between threads and called from
    handlers of their own loop.

    ``send(msg)`` queues *msg* for ``Handler.notify`` and wakes the loop if it
    is waiting.  Thread-safe; messages from one thread arrive in the order
    sent, each exactly once.  It raises :class:`metalio.NotifyFull` when
    ``notify_capacity`` messages are already waiting and
    :class:`metalio.NotifyClosed` once the loop is closed; the refused
    message is the exception's ``.msg``.

    ``send`` is a function stored in the sender (a slot), not a method: it
    reaches the queue, the credits and the flag through its closure, so a
    call costs about 20 ns less than a bound method reading them from
    ``self`` (a quarter of the sending side).  A subclass may still override
    it with an ordinary method.
    """

    __slots__ = ("_core", "send")

    def __init__(self, core: _Notify) -> None:
        self._core = core
        # Through the slot itself, so that a subclass's own send method wins.
        _SEND_SLOT.__set__(self, _locked_send(core) if core.locked else _gil_send(core))

    if TYPE_CHECKING:  # the runtime ``send`` is the closure stored in __init__

        def send(self, msg: M) -> None: ...

    @property
    def closed(self) -> bool:
        """Whether the loop behind this sender is closed."""
        return self._core.closed

    def __repr__(self) -> str:
        core = self._core
        state = "closed" if core.closed else f"{len(core.queue)} queued"
        return f"<Sender {state}>"


# The member descriptor of the ``send`` slot (see Sender.__init__).
_SEND_SLOT: Any = Sender.__dict__["send"]


def _new_sender(core: _Notify) -> Sender[object]:
    core.has_senders = True
    return Sender(core)
