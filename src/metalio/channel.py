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

The awakener is a ``WakeFd`` (``metalio._wakefd``): an ``eventfd``
registered edge-triggered where the backend has native edges (a write queues
a new edge, the counter never needs reading), else registered
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

import sys
import threading
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._errors import NotifyClosed, NotifyError, NotifyFull
from ._flags import NOTIFY_TOKEN, Interest, PollOpt
from ._wakefd import WakeFd

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["Sender"]

M = TypeVar("M")

_is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
_FREE_THREADED: bool = _is_gil_enabled is not None and not _is_gil_enabled()


class _Notify:
    """The state one loop shares with all its senders (see the module docstring).

    The loop's side of it, the internal contract ``EventLoop`` uses:

    * ``queue``: the FIFO of undelivered messages; the loop tests it for
      emptiness to decide whether it may block;
    * ``has_senders``: ``channel()`` was called; until then the loop skips
      the sleep handshake (``EventLoop.channel`` wakes a loop that may be
      waiting unannounced when the first sender appears);
    * :meth:`before_sleep` / ``sleeping = False``: the loop's half of the
      handshake around a wait that may block;
    * :meth:`deliver`: the message phase of one iteration;
    * :meth:`awakened`: the awakener was reported readable;
    * :meth:`wake`, :meth:`close`.
    """

    __slots__ = (
        "_registry",
        "_wakefd",
        "_wakefd_needs_drain",
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
        self.has_senders = False
        self.locked = _FREE_THREADED
        self.lock = threading.Lock()
        self.wakes = 0  # awakener writes made for sleeping loops (for benchmarks)
        self._registry = registry
        wakefd = WakeFd()
        # An eventfd on a backend with native edges needs no reading: every
        # write queues a new edge.  Anything else is level-triggered and
        # drained when reported: exact on every backend, and the drain costs
        # a system call only after a real wake.
        edge = wakefd.is_eventfd and not registry.facts.emulates_edge
        try:
            registry.register_reserved(
                wakefd, NOTIFY_TOKEN, Interest.READABLE, PollOpt.EDGE if edge else PollOpt.LEVEL
            )
        except BaseException:
            wakefd.close()
            raise
        self._wakefd = wakefd
        self._wakefd_needs_drain = not edge

    def refusal(self, msg: object) -> NotifyError:
        if self.closed:
            return NotifyClosed(msg, "the event loop is closed")
        return NotifyFull(msg, f"the channel holds {self.capacity} undelivered messages")

    # -- the senders' side ---------------------------------------------------

    def wake_sleeper(self) -> None:
        """A sender saw ``sleeping``: wake the loop once per sleep."""
        with self.lock:
            if not self.sleeping or self.closed:
                return
            self.sleeping = False
            self.wakes += 1
            self._wakefd.wake()

    # -- the loop's side -------------------------------------------------------

    def before_sleep(self) -> bool:
        """Announce that the loop is about to wait; ``False`` if it must not block.

        Under the GIL the flag store and the re-check of the queue are
        ordered by the interpreter; without it both run under the lock.
        """
        if self.locked:
            with self.lock:
                self.sleeping = True
                return not self.queue
        self.sleeping = True
        return not self.queue  # re-check after announcing: see the module docstring

    def deliver(self, loop: Any, notify: Callable[[Any, Any], None] | None, limit: int) -> None:
        """Hand up to *limit* queued messages to ``notify(loop, msg)``, oldest first.

        The number is fixed when the phase starts, so messages sent from
        ``notify`` itself wait for the next iteration.  A message stops
        counting against the capacity when its ``notify`` call starts: its
        credit goes back first, so a handler that raises loses nothing and
        leaks no credit.  A plain pop per step: ``iter(popleft, sentinel)``
        would compare every message with the sentinel through the message's
        own ``__eq__`` (which may raise, or say "equal" and end the batch
        with the message lost).
        """
        queue = self.queue
        k = min(len(queue), limit)
        popleft = queue.popleft
        if notify is None:
            for _ in repeat(None, k):
                popleft()
            self.credits.extend(repeat(None, k))
            return
        give_credit = self.credits.append
        for _ in repeat(None, k):
            msg = popleft()
            give_credit(None)
            notify(loop, msg)

    def awakened(self) -> None:
        """The awakener was reported readable (loop thread)."""
        if self._wakefd_needs_drain:
            self._wakefd.drain()

    def wake(self) -> None:
        """Wake the loop whether or not it sleeps (``shutdown`` from any thread)."""
        with self.lock:
            if not self.closed:
                self._wakefd.wake()

    def close(self) -> None:
        """Refuse later sends, drop queued messages, release the awakener."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.sleeping = False
            self.credits.clear()
            self.queue.clear()
            wakefd = self._wakefd
            try:
                self._registry.deregister(wakefd)
            except (ValueError, OSError):
                pass  # the Poll is closed already: closing the fd is what matters
            wakefd.close()


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
                core._wakefd.wake()

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
    reaches the queue, the credits and the flag through its closure, which is
    cheaper than a bound method reading them from ``self``.  A subclass may still override
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
