"""One iteration of an ``EventLoop``: the hot loop and its cold phases.

``metalio.loop.EventLoop`` is built from two halves that share one set of
slots (:class:`LoopState`): ``loop.py`` has the public surface (building,
registering, channels, timers, signals, running, closing), this module the
iteration itself (``_iterate``) and the phases it calls out of line (reserved
tokens, signals, timers).  The phases follow ``docs/loop.md``; each is a call
into the collaborator that owns its state, except the wait, which is
written out here because it runs on every iteration and a frame there is a
large part of the loop's own cost (``bench/instructions.py`` counts it).

What it must not know: how the backends wait, how the channel, the timer or
the dispatch index keep their state beyond their named contracts.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from ._backends import MAX_TIMEOUT
from ._flags import NOTIFY_TOKEN, SIGNAL_TOKEN
from .handler import Calls, Handler, bind, override

if TYPE_CHECKING:
    from ._io_dispatch import IoDispatcher
    from ._signals import SignalSet
    from .channel import _Notify
    from .loop_config import EventLoopConfig
    from .poll import Poll
    from .registry import Registry
    from .timer import Timeout, Timer

__all__ = ["LoopState"]

_INF: Final = float("inf")


class LoopState:
    """The state of an ``EventLoop`` and its iteration (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_active",
        "_channel",
        "_clock",
        "_closed",
        "_config",
        "_due",
        "_io",
        "_loop_thread",
        "_poll",
        "_registry",
        "_running",
        "_set_timeout",
        "_signals",
        "_sigq",
        "_timer",
        "_wait_native",
    )

    _active: bool
    _channel: _Notify
    _clock: Callable[[], float]
    _closed: bool
    _config: EventLoopConfig
    _due: list[Any]
    _io: IoDispatcher
    _loop_thread: int
    _poll: Poll
    _registry: Registry
    _running: bool
    _set_timeout: Callable[[float, Any], Timeout]
    _signals: SignalSet | None
    _sigq: deque[int]
    _timer: Timer
    _wait_native: Callable[[float | None, int], list[tuple[int, int]]]

    def _iterate(
        self, handler: Handler, once: bool, limit: float | None, calls: Calls | None = None
    ) -> None:
        """The loop itself: the phases of the module docstring, in order.

        The wait is written out here rather than behind a call of its own:
        it is the one phase that runs on every iteration, and a frame there
        is a large part of the loop's own cost per iteration
        (``bench/instructions.py`` counts it).
        """
        # *calls*: the handler's methods, bound already by a caller that runs
        # many single iterations (run_async); binding costs about as much as
        # a whole iteration's own work.
        ready, notify, on_timeout, tick = bind(handler) if calls is None else calls
        loop: Any = self  # what the handler's methods receive: the EventLoop
        channel = self._channel
        inbox = channel.queue
        locked = channel.locked
        timer = self._timer
        clock = self._clock
        sigq = self._sigq
        due = self._due
        mpt = self._config.messages_per_tick
        capacity = self._config.events_capacity
        io = self._io
        shared = io.index.shared
        fast = io.unique_fds
        dispatch_unique = io.dispatch_unique
        wait = self._wait_native
        t: float | None
        while True:
            # 1. Wait, no longer than the work pending allows.
            raw = io.leftover
            if raw is None:
                if inbox or sigq or due or not (once or self._running):
                    t = 0.0  # work pending, or a shutdown() already asked for
                else:
                    soonest = timer.soonest
                    if soonest == _INF:
                        t = limit
                    else:
                        t = soonest - clock()
                        if t <= 0.0:
                            t = 0.0
                        elif limit is not None and limit < t:
                            t = limit
                        elif t > MAX_TIMEOUT:
                            t = MAX_TIMEOUT
                if t != 0.0 and channel.has_senders:
                    # The channel's sleep handshake (metalio.channel): announce,
                    # then re-check the queue (under the GIL written out).
                    if locked:
                        if not channel.before_sleep():
                            t = 0.0
                    else:
                        channel.sleeping = True
                        if inbox:
                            t = 0.0
                    try:
                        raw = wait(t, capacity)
                    finally:
                        channel.sleeping = False
                else:
                    raw = wait(t, capacity)
            else:
                io.leftover = None
            if raw:
                # 2. I/O: one call per event while fds are unique and no token
                # is shared, else merged per token (metalio._io_dispatch, which
                # also advances the readiness epoch for the batch).
                if fast and not shared:
                    dispatch_unique(loop, raw, ready)
                else:
                    io.dispatch_merged(self, raw, ready)
            if sigq:
                self._deliver_signals(handler)  # 3. signals
            if inbox:
                channel.deliver(self, notify, mpt)  # 4. messages
            soonest = timer.soonest
            if (soonest < _INF and soonest <= clock()) or due:
                self._fire(on_timeout)  # 5. timers
            if tick is not None:
                tick(loop)  # 6.
            if once or not self._running:
                return

    # -- cold paths of the iteration -----------------------------------------------

    def _internal(self, token: int) -> None:
        """A reserved token reported readiness (``UNREGISTERED``: ignored)."""
        if token == NOTIFY_TOKEN:
            self._channel.awakened()
            return
        signals = self._signals
        if token == SIGNAL_TOKEN and signals is not None:
            got = signals.read()
            # Any byte means a wait was (or would have been) interrupted.
            self._sigq.append(0)
            self._sigq.extend(got)

    def _deliver_signals(self, handler: Handler) -> None:
        """Phase 3: ``interrupted`` and ``signal`` calls, in arrival order."""
        sigq = self._sigq
        on_signal = override(handler, "signal")
        on_interrupted = override(handler, "interrupted")
        while sigq:
            signum = sigq.popleft()
            if signum == 0:
                if on_interrupted is not None:
                    on_interrupted(self)
            elif on_signal is not None:
                on_signal(self, signum)

    def _fire(self, on_timeout: Callable[[Any, Any], None]) -> None:
        """Phase 5: deliver the due timeouts (leftovers of an exception first)."""
        due = self._due
        timer = self._timer
        i = 0
        try:
            timer.expired_into(self._clock(), due)
            for payload in due:
                i += 1
                on_timeout(self, payload)
        finally:
            del due[:i]
            timer.next_deadline()  # makes timer.soonest exact again
