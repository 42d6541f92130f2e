"""``EventLoop.run_async``: an ``EventLoop``'s iterations as callbacks of a running asyncio loop.

What this module owns: driving one ``EventLoop`` from the asyncio loop of the
current thread (``_AsyncRun``) and the coroutine ``run_async(loop, handler)``
behind ``EventLoop.run_async``.  What it must not know: how an iteration
works inside (it asks the loop for one that does not block), the backends,
the channel's wake protocol beyond "announce, re-check, clear".  Every use of
the loop's private state is in the *adapter* section right below, so a
refactored loop needs new adapter bodies and nothing else.

Theory of operation
===================

``run()`` blocks in the backend's wait.  Under asyncio nothing may block, so
the wait is split in two: asyncio waits, metalio polls.

* **Waking.**  The loop's ``Poll`` has a descriptor that is readable while
  the Poll has events (``poll.fileno()``: the epoll or kqueue descriptor
  itself).  It is given to asyncio with ``add_reader``; the next timer
  deadline becomes one ``call_later``; work that needs no waiting at all
  (queued messages, undelivered signals or due timeouts, I/O events kept
  after a handler exception) becomes one ``call_soon``.  All three run the
  same step.
* **One step = one iteration with a zero timeout**, exactly ``run_once
  (handler, 0)``: the same phases, the same dispatch code, the same
  exception bookkeeping.  Afterwards the step decides what to wait for (the
  list above).  A step never runs a second iteration itself: asyncio's own
  callbacks and tasks get their turn between any two iterations, and a loop
  with work pending is rescheduled with ``call_soon``, which goes behind the
  callbacks already queued.
* **Sleeping.**  Between steps the loop is "asleep" in the channel's sense:
  the step ends with the channel's announcement (``sleeping = True``, then
  re-check the queue; see ``metalio.channel``) and the next step starts by
  clearing it.  So a ``Sender.send`` from another thread, or from a
  coroutine on this thread, finds ``sleeping`` set and writes the awakener,
  which is registered in the Poll, which makes ``poll.fileno()`` readable,
  which is the ``add_reader`` callback.  A message queued between the step's
  re-check and the announcement is seen by the re-check (the channel's
  argument, unchanged): ``call_soon``.
* **Timers set from coroutines.**  Under ``run()`` only handlers run on the
  loop's thread, and each iteration recomputes its wait.  Under asyncio a
  coroutine may call ``loop.timeout`` between steps, so while a run is active
  ``loop.timeout`` re-arms the ``call_later`` when the new deadline is the
  earliest.  The wheel's deadline is a lower bound (never late); a
  ``call_later`` that fires before it (uvloop rounds to milliseconds) is
  re-armed, at least a millisecond out, without an iteration.
* **shutdown.**  ``run()`` only needs a wake when ``shutdown()`` comes from
  another thread; here a coroutine on the loop's own thread may call it
  while the loop sleeps, so the run makes every ``shutdown()`` write the
  awakener (from a handler that costs one spurious event later, never a
  lost one).
* **Ending.**  ``shutdown()`` ends the run after the current step; a handler
  exception ends it with that exception; cancelling the awaiting task ends
  it at once.  In every case the reader is removed, the ``call_soon`` and
  ``call_later`` handles are cancelled, ``loop.timeout`` is restored and the
  loop is idle again (``is_running()`` false, ``run``/``run_async`` allowed),
  with its registrations, timeouts and queued messages kept.  A handler's
  exception is carried to the ``await`` through a future; like a task,
  ``KeyboardInterrupt`` and ``SystemExit`` are also re-raised into asyncio
  itself.  ``StopIteration`` cannot travel through a future, so it arrives
  as the ``__cause__`` of a ``RuntimeError`` (what a coroutine does with it).

Handlers run inside asyncio callbacks: ``asyncio.get_running_loop()`` works
(a handler may ``create_task``), ``asyncio.current_task()`` is ``None``, and
the context variables are those of the task that awaited ``run_async``, as
copied when the run started.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from .handler import bind

if TYPE_CHECKING:
    from .loop import EventLoop, Handler
    from .timer import Timeout

__all__ = ["run_async"]

_INF: Final = math.inf

# ---------------------------------------------------------------------------
# Adapter: everything this module needs from EventLoop, its channel and its
# timer that is not public API.  Nothing below this section touches a
# private attribute.

# A thread ident no thread has: EventLoop.shutdown() wakes the loop whenever
# the caller's ident differs from ``_loop_thread``.
_NO_THREAD: Final = -1


def _claim(loop: EventLoop) -> None:
    """Make *loop* running, as ``run()`` does when it starts.

    Needs ``_enter()`` (closed -> ``ValueError``, already active ->
    ``RuntimeError``, else marks it active so ``run``, ``run_once``,
    ``run_async`` and ``close`` refuse), ``_running`` (``is_running()``;
    ``shutdown()`` clears it) and ``_loop_thread`` (``shutdown()`` writes the
    awakener when called from a thread other than this one: set to no
    thread, so a coroutine on this thread wakes the sleeping loop too).

    :raises ValueError: the loop is closed.
    :raises RuntimeError: the loop is already running.
    """
    loop._enter()
    loop._running = True
    loop._loop_thread = _NO_THREAD


def _release(loop: EventLoop) -> None:
    """Undo ``_claim``: what ``run()``'s ``finally`` does.

    Needs ``_running`` and ``_active``.
    """
    loop._running = False
    loop._active = False


#: ``_iteration``'s result when ``shutdown()`` ended the run (any negative number).
_STOPPED: Final = -1.0


def _iteration(loop: EventLoop, handler: Handler) -> Callable[[], float]:
    """One iteration that does not block, then what ``run()`` would wait for.

    The returned function clears the channel's ``sleeping`` flag, runs
    ``run_once(handler, 0)`` without its "already running" check (the run
    holds the loop) and then answers:

    * ``_STOPPED`` (negative): ``shutdown()`` was called;
    * ``0.0``: do not wait (queued messages, undelivered signals, timeouts
      taken but not delivered, I/O events kept after a handler exception, a
      deadline already reached: the cases where ``run()`` waits 0);
    * otherwise the loop may sleep until the returned deadline in the loop's
      clock (``math.inf``: none), and it has announced the sleep on the
      channel (``before_sleep()``: ``sleeping`` set, then the queue
      re-checked; ``0.0`` if a message had arrived).

    One Python call per iteration: this is the hot path of every wake-up.
    Needs ``_iterate(handler, once, limit, calls)``, ``_running``, ``_channel``
    (``queue``, ``sleeping``, ``before_sleep()``), ``_sigq``, ``_due``,
    ``_io.leftover``, ``_timer`` (``Timer.soonest``) and ``_clock``.
    """
    iterate = loop._iterate
    calls = bind(handler)  # once per run: handlers' methods are looked up when it starts
    channel = loop._channel
    inbox = channel.queue
    before_sleep = channel.before_sleep
    sigq = loop._sigq
    due = loop._due
    io = loop._io
    timer = loop._timer
    clock = loop._clock

    def iteration() -> float:
        channel.sleeping = False
        iterate(handler, True, 0.0, calls)
        if not loop._running:
            return _STOPPED
        if inbox or sigq or due or io.leftover is not None:
            return 0.0
        soonest = timer.soonest
        if soonest != _INF and soonest <= clock():
            return 0.0
        if not before_sleep():
            return 0.0
        return soonest

    return iteration


def _deadline_probe(loop: EventLoop) -> Callable[[], float]:
    """The wheel's next deadline in the loop's clock (``math.inf``: none).

    ``Timer.soonest``: a lower bound, as in ``_iteration``.  Needs ``_timer``.
    """
    timer = loop._timer

    def soonest() -> float:
        return timer.soonest

    return soonest


def _clock(loop: EventLoop) -> Callable[[], float]:
    """The clock of the loop's timer.  Needs ``_clock``."""
    return loop._clock


def _stop_sleeping(loop: EventLoop) -> None:
    """Clear the channel's ``sleeping`` flag (the run is over).  Needs ``_channel.sleeping``."""
    loop._channel.sleeping = False


def _hook_timeout(loop: EventLoop, changed: Callable[[], None]) -> Callable[[], None]:
    """Make ``loop.timeout(...)`` call *changed()* after each timeout it sets.

    Returns the undo.  Needs ``_set_timeout`` (``timeout()`` is one call of
    it; ``close()`` replaces it, but a running loop cannot be closed).
    """
    original = loop._set_timeout

    def set_timeout(delay: float, payload: Any) -> Timeout:
        handle = original(delay, payload)
        changed()
        return handle

    loop._set_timeout = set_timeout

    def undo() -> None:
        loop._set_timeout = original

    return undo


# ---------------------------------------------------------------------------
# The run

# uvloop rounds call_later delays to milliseconds and may fire up to half of
# one early; a re-arm waits at least this long so that costs one callback.
_REARM_MIN: Final = 0.001


class _AsyncRun:
    """One ``run_async`` in progress: the asyncio handles and the step."""

    __slots__ = (
        "_aloop",
        "_armed",
        "_clock",
        "_fd",
        "_iteration",
        "_loop",
        "_soon",
        "_soonest",
        "_timer",
        "_undo_hook",
        "done",
        "finished",
    )

    def __init__(
        self, loop: EventLoop, handler: Handler, aloop: asyncio.AbstractEventLoop, fd: int
    ) -> None:
        self._loop = loop
        self._aloop = aloop
        self._fd = fd
        self._iteration = _iteration(loop, handler)
        self._soonest = _deadline_probe(loop)
        self._clock = _clock(loop)
        self._soon: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed = _INF  # the deadline (loop clock) _timer was armed for
        self._undo_hook: Callable[[], None] | None = None
        self.done: asyncio.Future[None] = aloop.create_future()
        self.finished = False

    def start(self) -> None:
        """Hook ``loop.timeout``, add the reader and schedule the first iteration.

        :raises OSError: asyncio refused the descriptor (nothing is left).
        """
        self._undo_hook = _hook_timeout(self._loop, self._timeout_set)
        try:
            self._aloop.add_reader(self._fd, self._step)
        except BaseException:
            self._undo_hook()
            self._undo_hook = None
            raise
        # The first iteration runs whatever is pending, as run() would.
        self._soon = self._aloop.call_soon(self._on_soon)

    # -- wake-ups --------------------------------------------------------------

    def _on_soon(self) -> None:
        self._soon = None
        self._step()

    def _on_timer(self) -> None:
        self._timer = None
        armed = self._armed
        self._armed = _INF
        if self.finished:
            return
        early = armed - self._clock()
        if early > 0.0:
            self._arm(armed, max(early, _REARM_MIN))
            return
        self._step()

    def _timeout_set(self) -> None:
        """``loop.timeout`` was called: arm for the new deadline if it is the earliest."""
        if self.finished:
            return
        soonest = self._soonest()
        if soonest < self._armed:
            self._arm(soonest, soonest - self._clock())

    def _arm(self, deadline: float, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._aloop.call_later(max(delay, 0.0), self._on_timer)
        self._armed = deadline

    # -- the step --------------------------------------------------------------

    def _step(self) -> None:
        """One iteration, then schedule what it asked for (module docstring)."""
        if self.finished:
            return
        try:
            deadline = self._iteration()
        except BaseException as exc:
            self.finish(exc)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: asyncio's business too
            return
        if deadline == _INF:  # asleep, no timer: the reader wakes it
            return
        if deadline <= 0.0:
            if deadline < 0.0:
                self.finish(None)
            elif self._soon is None:
                self._soon = self._aloop.call_soon(self._on_soon)
            return
        if deadline < self._armed:
            self._arm(deadline, deadline - self._clock())

    def finish(self, exc: BaseException | None) -> None:
        """End the run: remove every asyncio hook, release the loop, resolve ``done``.

        Harmless to call twice.
        """
        if self.finished:
            return
        self.finished = True
        try:
            self._aloop.remove_reader(self._fd)
        finally:
            if self._soon is not None:
                self._soon.cancel()
                self._soon = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._armed = _INF
            _stop_sleeping(self._loop)
            if self._undo_hook is not None:
                self._undo_hook()
                self._undo_hook = None
            _release(self._loop)
            done = self.done
            # A closed asyncio loop (a run abandoned with its loop) cannot
            # schedule the future's callbacks; nobody awaits it any more.
            if not done.done() and not self._aloop.is_closed():
                if exc is None:
                    done.set_result(None)
                elif isinstance(exc, StopIteration):
                    wrapped = RuntimeError("a handler raised StopIteration")
                    wrapped.__cause__ = exc
                    done.set_exception(wrapped)
                else:
                    done.set_exception(exc)


async def run_async(loop: EventLoop, handler: Handler) -> None:
    """``EventLoop.run_async``: see its docstring and the module docstring.

    :raises ValueError: the loop is closed.
    :raises io.UnsupportedOperation: the loop's backend has no ``fileno()``.
    :raises RuntimeError: the loop is already running.
    :raises OSError: asyncio refused the Poll's descriptor.
    :raises BaseException: whatever a handler method raised.
    :raises asyncio.CancelledError: the awaiting task was cancelled.
    """
    aloop = asyncio.get_running_loop()
    if loop.closed:
        raise ValueError("the event loop is closed")
    fd = loop.poll.fileno()  # io.UnsupportedOperation on poll/select
    _claim(loop)
    try:
        run = _AsyncRun(loop, handler, aloop, fd)
        run.start()
    except BaseException:
        _release(loop)
        raise
    try:
        await run.done
    finally:
        run.finish(None)  # cancelled: tear down; otherwise already done
