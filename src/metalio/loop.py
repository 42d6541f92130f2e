"""``EventLoop``: mio 0.5's programming model, one iteration at a time.

An ``EventLoop`` owns a ``Poll``, a ``Timer`` (the hashed wheel), a notify
channel (``metalio.channel``), an I/O dispatcher (``metalio._io_dispatch``,
with the dispatch index that mirrors the registry) and, once a signal is
added, a signal set (``metalio._signals``).  ``run(handler)`` repeats one
iteration until ``shutdown()``; ``run_once(handler, timeout)`` does one.
Each phase is a call into the collaborator that owns its state (the
iteration itself is ``metalio._iteration``, the other half of the class):

1. **wait**: for readiness, bounded by ``Timer.soonest`` and
   *timeout*, not at all when messages, signals or due timeouts are
   pending; the channel's sleep handshake around a wait that may block;
   readiness tracking's epoch advanced when it returns;
2. **I/O** (``IoDispatcher.dispatch``): ``handler.ready(loop, token,
   ready)`` at most once per token;
3. **signals**: ``interrupted`` once, then ``signal`` per arrived signal;
4. **messages** (``channel.deliver``): up to ``messages_per_tick``
   ``notify`` calls;
5. **timers** (``_fire``): ``timeout`` per due timeout, earlier first;
6. ``tick``.

An exception raised by a handler propagates out of ``run``/``run_once`` and
nothing is lost or duplicated: what was being handled counts as delivered,
the rest stays pending and is delivered first by the next iteration.
``Sender.send``, ``shutdown`` and registration may be called from any
thread; everything else belongs to the loop's thread.  ``docs/loop.md`` has
the whole theory: the phases in detail, when ``interrupted`` runs, the
exception rules and threads.

What it must not know: how the backends wait, how the channel, the timer or
the dispatch index keep their state.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from . import _validate
from ._backends import MAX_TIMEOUT
from ._flags import PollOpt
from ._io_dispatch import IoDispatcher
from ._iteration import LoopState
from ._signals import SignalSet, check_main_thread
from .channel import Sender, _Notify
from .handler import Handler
from .loop_config import EventLoopConfig
from .poll import Poll, Registry
from .timer import Timeout, Timer

if TYPE_CHECKING:
    from ._source import Source

__all__ = ["EventLoop", "EventLoopConfig", "Handler"]

_INF: Final = float("inf")


def _closed_timeout(delay: object, payload: object) -> Timeout:
    """``EventLoop.timeout`` once the loop is closed."""
    raise ValueError("the event loop is closed")


class EventLoop(LoopState):
    """A Handler-driven event loop: I/O readiness, messages, timeouts, signals.

    ``EventLoop(config=None)`` uses ``EventLoopConfig()`` when *config* is
    ``None``.  *poll*, when given, is the ``Poll`` to run on instead of a new
    one made from ``config.backend`` (a Poll over a fake or fault-injecting
    backend, ``Poll.over_backend``); the loop owns and closes it.

    :raises TypeError: *config* is not an ``EventLoopConfig``; a field has
        the wrong type; *poll* is not a ``Poll``.
    :raises ValueError: a field is invalid; unknown or unavailable backend;
        *poll* is closed.
    :raises OSError: the kernel refused a descriptor.
    """

    __slots__ = ()  # the state is LoopState's (metalio._iteration)

    def __init__(self, config: EventLoopConfig | None = None, *, poll: Poll | None = None) -> None:
        if config is None:
            config = EventLoopConfig()
        elif not isinstance(config, EventLoopConfig):
            raise TypeError(f"config must be an EventLoopConfig, not {type(config).__name__}")
        config.validate()
        if poll is not None and not isinstance(poll, Poll):
            raise TypeError(f"poll must be a Poll, not {type(poll).__name__}")
        self._config = config
        self._closed = True  # until construction succeeds: close() is then a no-op
        self._timer = Timer(
            tick=config.timer_tick,
            wheel_size=config.timer_wheel_size,
            capacity=config.timer_capacity,
            clock=config.clock,
        )
        if poll is None:
            poll = Poll(config.backend)
        elif poll.closed:
            raise ValueError("the Poll is closed")
        try:
            registry = poll.registry
            tracking = poll.tracking
            epoch = tracking.epoch if tracking.enabled else None
            self._io = IoDispatcher(registry, self._internal, epoch)
            self._channel = _Notify(registry, config.notify_capacity)
        except BaseException:
            poll.close()
            raise
        self._poll = poll
        self._registry = registry
        self._wait_native = poll.raw_poll
        self._clock = config.clock
        # The loop's wake-up time is the wheel's ``soonest``, a lower bound on
        # the pending deadlines that set_timeout keeps (may be early, never
        # late), so timeout() below is one call and nothing else.
        self._set_timeout = self._timer.set_timeout
        self._due: list[Any] = []  # timeout payloads taken from the wheel, not delivered
        self._sigq: deque[int] = deque()  # 0 = "interrupted", else a signal number
        self._signals: SignalSet | None = None
        self._running = False
        self._active = False
        self._loop_thread = 0
        self._closed = False

    # -- attributes ---------------------------------------------------------

    @property
    def poll(self) -> Poll:
        """The loop's ``Poll``."""
        return self._poll

    @property
    def registry(self) -> Registry:
        """The loop's ``Registry`` (``loop.poll.registry``)."""
        return self._registry

    @property
    def config(self) -> EventLoopConfig:
        return self._config

    @property
    def closed(self) -> bool:
        return self._closed

    # -- registration -------------------------------------------------------

    def register(
        self, source: Source, token: int, interest: int, opts: int = PollOpt.LEVEL
    ) -> None:
        """``Registry.register``: report readiness of *source* as *token*.

        :raises TypeError: bad source, token, interest or opts type.
        :raises ValueError: bad values; the loop is closed.
        :raises FileExistsError: *source* is already registered.
        :raises OSError: the kernel refused the descriptor.
        """
        self._registry.register(source, token, interest, opts)

    def reregister(
        self, source: Source, token: int, interest: int, opts: int = PollOpt.LEVEL
    ) -> None:
        """``Registry.reregister``: replace token, interest and options; re-arm.

        :raises TypeError: bad argument types.
        :raises ValueError: bad values; the loop is closed.
        :raises FileNotFoundError: *source* is not registered.
        :raises OSError: the kernel refused the change.
        """
        self._registry.reregister(source, token, interest, opts)

    def deregister(self, source: Source) -> None:
        """``Registry.deregister``: stop reporting *source*.

        :raises TypeError: *source* has no usable ``fileno()``.
        :raises ValueError: the loop is closed.
        :raises FileNotFoundError: *source* is not registered.
        """
        self._registry.deregister(source)

    # -- channel, timers, signals -----------------------------------------------

    def channel(self) -> Sender[Any]:
        """A ``Sender`` to this loop's ``Handler.notify``; usable from any thread.

        On a closed loop the sender exists but every ``send`` raises
        ``NotifyClosed``.
        """
        channel = self._channel
        if not channel.has_senders:
            channel.has_senders = True
            if self._active and threading.get_ident() != self._loop_thread:
                # The loop may be blocked in a wait it did not announce (it
                # had no senders then): wake it once, so that its next wait
                # takes part in the sleep handshake.
                channel.wake()
        return Sender(channel)

    def timeout(self, payload: Any, delay: float) -> Timeout:
        """Call ``Handler.timeout(loop, payload)`` once, *delay* seconds from now.

        Loop thread only.  The timeout never fires early; it fires about one
        ``timer_tick`` plus the loop's latency after its deadline at the latest.

        :raises TypeError: *delay* is not a real number.
        :raises ValueError: *delay* is negative, NaN or infinite; the loop is
            closed.
        :raises metalio.TimerError: ``timer_capacity`` timeouts are pending.
        """
        # close() replaces _set_timeout with _closed_timeout (ValueError).
        return self._set_timeout(delay, payload)

    def clear_timeout(self, timeout: Timeout) -> bool:
        """Cancel *timeout*.

        :returns: ``True`` if it was pending and will now never fire;
            ``False`` if it already fired or was already cancelled.  (A
            timeout already taken from the wheel when a handler exception
            interrupted the timeout phase counts as fired: it is delivered by
            the next iteration.)
        :raises TypeError: *timeout* is not a ``Timeout``.
        """
        # A now-too-early wake-up bound only costs one empty iteration.
        return self._timer.cancel(timeout)

    def add_signal(self, signum: int) -> None:
        """Deliver *signum* to ``Handler.signal`` on the loop's thread.

        Installs a Python-level handler that does nothing (so the default
        action, e.g. termination, does not happen) and makes the loop's
        signal socket the process's ``set_wakeup_fd``.  Adding a signal twice
        is harmless.

        :raises ValueError: not on the main thread; an invalid or uncatchable
            signal; the loop is closed.
        :raises TypeError: *signum* is not an ``int``.
        """
        if self._closed:
            raise ValueError("the event loop is closed")
        check_main_thread("add_signal")
        if self._signals is None:
            self._signals = SignalSet(self._registry)
        self._signals.add(signum)

    def remove_signal(self, signum: int) -> bool:
        """Restore the disposition *signum* had before ``add_signal``.

        When the last added signal is removed the previous wakeup fd is
        restored too.

        :returns: ``True`` if *signum* was added, else ``False``.
        :raises ValueError: not on the main thread.
        :raises TypeError: *signum* is not an ``int``.
        """
        check_main_thread("remove_signal")
        if self._signals is None:
            return False
        return self._signals.remove(signum)

    # -- running ------------------------------------------------------------

    def run(self, handler: Handler) -> None:
        """Iterate until ``shutdown()``; then return after the current iteration.

        A ``shutdown()`` made before ``run`` starts is forgotten (as in mio).

        :raises RuntimeError: the loop is already running (e.g. ``run`` called
            from a handler).
        :raises ValueError: the loop is closed.
        :raises BaseException: whatever a handler method or a Python signal
            handler raised (see "Exceptions" in the module docstring).
        """
        # Running before active: a shutdown() from another thread that sees the
        # loop inactive (and so sends no wake) has cleared the flag by then,
        # and the first wait does not block (see _iterate).
        was_running = self._running
        self._running = True
        try:
            self._enter()
        except BaseException:
            self._running = was_running  # refused: the loop's state is as it was
            raise
        try:
            self._iterate(handler, False, None)
        finally:
            self._running = False
            self._active = False

    def run_once(self, handler: Handler, timeout: float | None = None) -> None:
        """One iteration; its wait lasts at most *timeout* seconds (``None``: no bound).

        :raises TypeError: *timeout* is not a number or ``None``.
        :raises ValueError: NaN timeout; the loop is closed.
        :raises RuntimeError: the loop is already running.
        :raises BaseException: whatever a handler method or a Python signal
            handler raised.
        """
        if timeout is not None and not (type(timeout) is float and 0.0 < timeout <= MAX_TIMEOUT):
            timeout = _validate.wait(timeout)
        self._enter()
        try:
            self._iterate(handler, True, timeout)
        finally:
            self._active = False

    async def run_async(self, handler: Handler) -> None:
        """``run(handler)`` inside the running asyncio loop, until ``shutdown()``.

        Iterations run as callbacks on the asyncio loop's thread, woken by the
        Poll's descriptor, the next timer deadline and pending work, and never
        block it.  Same phases and exception guarantees as ``run()``.
        Cancelling the awaiting task stops the run; registrations, timeouts
        and queued messages are kept.  See ``metalio._asyncio_loop``.

        :raises ValueError: the loop is closed.
        :raises io.UnsupportedOperation: the backend has no ``fileno()``
            (poll, select).
        :raises RuntimeError: the loop is already running (``run``,
            ``run_once`` or another ``run_async``).
        :raises OSError: asyncio refused the Poll's descriptor.
        :raises BaseException: whatever a handler method raised (also
            ``KeyboardInterrupt``/``SystemExit``, which asyncio sees too).
        :raises asyncio.CancelledError: the awaiting task was cancelled.
        """
        from ._asyncio_loop import run_async

        await run_async(self, handler)

    def _enter(self) -> None:
        if self._closed:
            raise ValueError("the event loop is closed")
        if self._active:
            raise RuntimeError("the event loop is already running")
        # The thread first: shutdown() from another thread compares with it
        # once it sees the loop active.
        self._loop_thread = threading.get_ident()
        self._active = True

    def shutdown(self) -> None:
        """Make ``run()`` return after the current iteration.  Any thread.

        Called from another thread while the loop waits, it wakes the loop.
        """
        self._running = False
        if self._active and threading.get_ident() != self._loop_thread:
            self._channel.wake()

    def is_running(self) -> bool:
        """Whether ``run()`` is iterating and ``shutdown()`` was not called since."""
        return self._running

    # -- one iteration ------------------------------------------------------------

    # -- closing ------------------------------------------------------------

    def close(self) -> None:
        """Restore signals, close the channel (queued messages are dropped),
        drop pending timeouts and close the Poll.  Harmless to call twice.

        :raises RuntimeError: the loop is running (call ``shutdown()`` and
            let ``run`` return first).
        :raises ValueError: signals are added and this is not the main thread
            (nothing is closed then).
        """
        if self._closed:
            return
        if self._active:
            raise RuntimeError("cannot close a running event loop; shutdown() first")
        if self._signals is not None:
            self._signals.close()
        self._closed = True
        self._channel.close()
        self._timer.clear()
        self._set_timeout = _closed_timeout
        self._due.clear()
        self._sigq.clear()
        self._io.leftover = None
        self._poll.close()

    def __enter__(self) -> EventLoop:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._running:
            state = "running"
        else:
            state = "idle"
        return f"<EventLoop {self._poll.backend} {state}>"
