"""``EventLoop``, ``EventLoopConfig`` and ``Handler``: mio 0.5's programming model.

Theory of operation
===================

An ``EventLoop`` owns a ``Poll``, a ``Timer`` (the hashed wheel), a notify
channel (``metalio.channel``) and, once a signal is added, a signal socket
(``metalio._signals``).  ``run(handler)`` repeats one *iteration* until
``shutdown()``; ``run_once(handler, timeout)`` does one.

One iteration
-------------
1. **Wait.**  Ask the backend for readiness.  The wait is bounded by the
   next timer deadline and by ``run_once``'s *timeout*; it does not block at
   all when messages, signals or due timeouts are already pending.  Before
   it blocks, the loop announces it on the channel (``sleeping``) and
   re-checks the queue: see ``metalio.channel`` for why no message can be
   stranded.
2. **I/O.**  ``handler.ready(loop, token, ready)`` once per token, with the
   flags of every descriptor registered under that token merged.  The loop
   reads the backend's raw ``(fd, native_mask)`` pairs and the registry's
   token table directly: per event one dict lookup for the registration and
   one for its ``Ready`` value, no ``Event`` object.  Merging is needed only
   when two descriptors share a token; the loop has its registry count the
   registrations per token (``Registry._count_tokens``) and takes the merging path only while
   some token is shared (or on a backend that may report one descriptor
   twice).  Internal descriptors (the awakener, the signal socket) carry
   negative tokens and never reach the handler.
3. **Signals.**  If the signal socket was readable: ``handler.interrupted
   (loop)`` once, then ``handler.signal(loop, signum)`` for each added signal
   that arrived, in arrival order.
4. **Messages.**  Up to ``messages_per_tick`` ``handler.notify(loop, msg)``
   calls, oldest first.  The number is fixed when the phase starts, so
   messages sent from ``notify`` itself wait for the next iteration.
5. **Timers.**  ``handler.timeout(loop, payload)`` for every due timeout,
   earlier deadlines first.  The wheel keeps a lower bound on its pending
   deadlines (``set_timeout`` lowers it, ``next_deadline()`` makes it exact
   again after each firing), so an iteration with nothing due costs one
   comparison (and no clock read when nothing is pending), and
   ``loop.timeout`` is a single call into the wheel.
6. ``handler.tick(loop)``.

``run`` looks the handler's methods up once, when it starts; a method a
handler does not override (``Handler``'s no-op) is not called at all.

When is ``interrupted`` called?
-------------------------------
Only while at least one signal is added (``add_signal``): then the loop owns
the process's ``set_wakeup_fd``, and ``interrupted(loop)`` runs once in every
iteration whose wait found bytes on the signal socket, i.e. when one or more
signals that have a Python-level handler arrived since the previous
iteration: the added ones, and any other signal handled at Python level
(SIGINT, for instance).  It runs in phase 3, before that iteration's
``signal`` calls.  Without added signals nothing tells the loop about an
interrupted wait: CPython retries the system call itself (PEP 475).

Exceptions
----------
An exception raised by a handler method propagates out of ``run`` /
``run_once`` and nothing is lost or duplicated:

* the event, message, signal or timeout being handled counts as delivered;
* I/O events of that iteration not yet delivered are kept, and the next
  iteration delivers them *instead of* waiting (the fresh readiness comes
  with the iteration after; registrations changed in between are looked up
  again, deregistered ones are dropped);
* undelivered messages stay queued, undelivered signals and due timeouts
  stay pending, and all are delivered first, in their order, by the next
  iteration;
* ``is_running()`` is false once it has propagated, and ``run`` may be
  called again.

An exception raised by a Python signal handler during the wait (for example
``KeyboardInterrupt``) propagates the same way.

Threads
-------
``Sender.send``, ``shutdown`` and ``register``/``reregister``/``deregister``
may be called from any thread.  Everything else belongs to the thread that
runs the loop: ``timeout``/``clear_timeout`` (the wheel is not thread-safe),
``run``/``run_once``, ``close``.  ``add_signal``/``remove_signal`` and a
``close`` that has signals to restore need the main thread.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, Final

from ._backends import MAX_TIMEOUT
from ._events import MAX_CAPACITY as MAX_EVENTS_CAPACITY
from ._flags import READY_VALUES, PollOpt, Ready
from ._signals import SIGNAL_TOKEN
from .channel import NOTIFY_TOKEN, Sender, _new_sender, _Notify
from .poll import Poll, Registry
from .timer import Timeout, Timer

if TYPE_CHECKING:
    from ._signals import _SignalSet
    from ._source import Source

__all__ = ["EventLoop", "EventLoopConfig", "Handler"]

# Backends that report each descriptor at most once per poll: with them and no
# shared token, every event of a batch has its own token.
_UNIQUE_FD_BACKENDS: Final = frozenset({"epoll", "poll", "select"})


def _epoll_masks() -> tuple[int, ...]:
    """Every mask epoll can report to a metalio registration.

    The kernel ANDs each event with the registration's requested bits, which
    metalio builds from EPOLLIN, EPOLLRDHUP, EPOLLOUT and EPOLLPRI, plus the
    EPOLLERR and EPOLLHUP that ``epoll_ctl`` always adds.
    """
    import select

    bits = [
        select.EPOLLIN,
        select.EPOLLPRI,
        select.EPOLLOUT,
        select.EPOLLERR,
        select.EPOLLHUP,
        getattr(select, "EPOLLRDHUP", 0x2000),
    ]
    masks = [0]
    for bit in bits:
        masks += [m | bit for m in masks]
    return tuple(masks)


def _complete_tables(registry: Registry) -> None:
    """Give an epoll registry complete, exact-``dict`` readiness tables.

    A registration's ``xlate`` (native mask -> ``Ready``) is a ``dict``
    subclass filled on first sight of a mask; CPython specialises ``d[k]``
    for exact dicts only, so the dispatch's ``xlates[fd][mask]`` took the
    generic path (about 14 ns per event).  With epoll every mask that can
    ever arrive is known (``_epoll_masks``), so the tables are filled up front
    and copied into plain dicts: 8 interests x 64 masks, about 18 KB per
    loop.  Other backends keep the lazy tables.
    """
    if registry._backend.name != "epoll":
        return
    masks = _epoll_masks()
    tables = []
    for table in registry._xlate:
        for mask in masks:
            table[mask]  # fills the entry
        tables.append(dict(table))
    # Plain dicts where _ReadyTable is declared: only lookups of complete
    # tables happen, so no caller misses __missing__.
    registry._xlate = tuple(tables)  # type: ignore[arg-type]


_INF: Final = math.inf


# ---------------------------------------------------------------------------
# Handler


class Handler:
    """Base class for event-loop handlers; every method does nothing.

    Override what you need.  All methods run on the loop's thread and receive
    the loop as their first argument.
    """

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        """*token*'s sources became ready; called at most once per token per iteration."""

    def notify(self, loop: EventLoop, msg: Any) -> None:
        """A message sent with ``Sender.send`` arrived."""

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        """A timeout set with ``loop.timeout(payload, delay)`` is due."""

    def signal(self, loop: EventLoop, signum: int) -> None:
        """A signal added with ``loop.add_signal(signum)`` arrived."""

    def interrupted(self, loop: EventLoop) -> None:
        """Signals arrived since the previous iteration (see the module docstring)."""

    def tick(self, loop: EventLoop) -> None:
        """The end of an iteration."""


def _override(handler: object, name: str) -> Any:
    """*handler*'s bound method *name*, or ``None`` when it is ``Handler``'s no-op."""
    method = getattr(handler, name, None)
    if method is None:
        return None
    if getattr(method, "__func__", None) is getattr(Handler, name):
        return None
    return method


def _bind(handler: object) -> tuple[Any, Any, Any, Any]:
    """``ready``, ``notify``, ``timeout``, ``tick`` of *handler*; ``None`` for no-ops.

    Unrolled attribute access: ``run_once`` pays this on every call.
    """
    try:
        ready = handler.ready  # type: ignore[attr-defined]
        notify = handler.notify  # type: ignore[attr-defined]
        timeout = handler.timeout  # type: ignore[attr-defined]
        tick = handler.tick  # type: ignore[attr-defined]
    except AttributeError:  # not a Handler subclass: look each one up
        return (
            _override(handler, "ready"),
            _override(handler, "notify"),
            _override(handler, "timeout"),
            _override(handler, "tick"),
        )
    if getattr(ready, "__func__", None) is _BASE_READY:
        ready = None
    if getattr(notify, "__func__", None) is _BASE_NOTIFY:
        notify = None
    if getattr(timeout, "__func__", None) is _BASE_TIMEOUT:
        timeout = None
    if getattr(tick, "__func__", None) is _BASE_TICK:
        tick = None
    return ready, notify, timeout, tick


_BASE_READY: Final = Handler.ready
_BASE_NOTIFY: Final = Handler.notify
_BASE_TIMEOUT: Final = Handler.timeout
_BASE_TICK: Final = Handler.tick


def _ignore_ready(loop: EventLoop, token: int, ready: Ready) -> None:
    pass


def _ignore_timeout(loop: EventLoop, payload: Any) -> None:
    pass


# ---------------------------------------------------------------------------
# Config


# Upper bounds for the counts that size memory up front: the channel holds one
# credit per slot, and every wait hands the kernel an events_capacity buffer.
_COUNT_LIMITS: Final = {"notify_capacity": 1 << 22, "events_capacity": MAX_EVENTS_CAPACITY}


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    limit = _COUNT_LIMITS.get(name)
    if limit is not None and value > limit:
        raise ValueError(f"{name} must be <= {limit}, got {value}")


@dataclass
class EventLoopConfig:
    """How an ``EventLoop`` is built.  Validated on creation and by ``EventLoop``.

    :param notify_capacity: most undelivered messages on the channel.
    :param messages_per_tick: most ``notify`` calls per iteration.
    :param timer_tick: the timer wheel's resolution in seconds.
    :param timer_wheel_size: slots of the wheel (rounded up to a power of two).
    :param timer_capacity: most pending timeouts.
    :param events_capacity: most readiness events taken per wait.
    :param clock: the time source of the timer, in seconds.
    :param backend: the ``Poll`` backend name; ``None`` picks the best.
    :raises TypeError: a value has the wrong type (``bool`` is not a count;
        *clock* not callable; *backend* not a ``str`` or ``None``).
    :raises ValueError: a count ``< 1``; ``notify_capacity > 2**22`` or
        ``events_capacity > 2**20`` (both size memory up front); a tick that
        is not a positive finite number.  (An unknown backend name is
        reported by ``EventLoop``.)
    """

    notify_capacity: int = 4096
    messages_per_tick: int = 256
    timer_tick: float = 0.001
    timer_wheel_size: int = 1024
    timer_capacity: int = 65536
    events_capacity: int = 1024
    clock: Callable[[], float] = time.monotonic
    backend: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (again: the dataclass is mutable).

        :raises TypeError: see the class docstring.
        :raises ValueError: see the class docstring.
        """
        for name in (
            "notify_capacity",
            "messages_per_tick",
            "timer_wheel_size",
            "timer_capacity",
            "events_capacity",
        ):
            _check_count(name, getattr(self, name))
        tick = self.timer_tick
        if isinstance(tick, bool) or not isinstance(tick, (int, float)):
            raise TypeError(f"timer_tick must be a number of seconds, not {type(tick).__name__}")
        if not 0 < tick < math.inf:
            raise ValueError(f"timer_tick must be a positive finite number, got {tick!r}")
        if not callable(self.clock):
            raise TypeError(f"clock must be callable, not {type(self.clock).__name__}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise TypeError(f"backend must be a str or None, not {type(self.backend).__name__}")


# ---------------------------------------------------------------------------
# EventLoop


def _normalize_limit(timeout: object) -> float | None:
    """``run_once``'s timeout as the backends want it (``None``, 0 or positive).

    :raises TypeError: not a real number or ``None``.
    :raises ValueError: NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    value = float(timeout)
    if value != value:
        raise ValueError("timeout must not be NaN")
    if value <= 0.0:
        return 0.0
    return min(value, MAX_TIMEOUT)


def _closed_timeout(delay: object, payload: object) -> Timeout:
    """``EventLoop.timeout`` once the loop is closed."""
    raise ValueError("the event loop is closed")


class EventLoop:
    """A Handler-driven event loop: I/O readiness, messages, timeouts, signals.

    ``EventLoop(config=None)`` uses ``EventLoopConfig()`` when *config* is
    ``None``.

    :raises TypeError: *config* is not an ``EventLoopConfig``; a field has
        the wrong type.
    :raises ValueError: a field is invalid; unknown or unavailable backend.
    :raises OSError: the kernel refused a descriptor.
    """

    # No __slots__: ``clear_timeout`` and ``register``/``reregister``/
    # ``deregister`` are instance attributes bound straight to the wheel's and
    # the registry's methods (no extra frame per call); they shadow the
    # documented methods below, which behave the same.

    def __init__(self, config: EventLoopConfig | None = None) -> None:
        if config is None:
            config = EventLoopConfig()
        elif not isinstance(config, EventLoopConfig):
            raise TypeError(f"config must be an EventLoopConfig, not {type(config).__name__}")
        config.validate()
        self._config = config
        self._closed = True  # until construction succeeds: close() is then a no-op
        self._timer = Timer(
            tick=config.timer_tick,
            wheel_size=config.timer_wheel_size,
            capacity=config.timer_capacity,
            clock=config.clock,
        )
        poll = Poll(config.backend)
        try:
            registry = poll.registry
            # Per-token counts let the dispatch merge readiness per token only
            # while some token is actually shared (see Registry._write).
            tracker = registry._count_tokens()
            _complete_tables(registry)
            # After the tables are complete: the lists hold the rows' tables.
            dispatch_lists = registry._dispatch_lists()
            self._notify = _Notify(registry, config.notify_capacity)
        except BaseException:
            poll.close()
            raise
        self._poll = poll
        self._registry = registry
        self._tracker = tracker
        self._table = poll._table
        self._tokens, self._xlates = dispatch_lists
        self._backend_poll = poll._backend_poll
        self._unique_fds = poll.backend in _UNIQUE_FD_BACKENDS
        self._events_capacity = config.events_capacity
        self._mpt = config.messages_per_tick
        self._clock = config.clock
        # The loop's wake-up time is the wheel's _soonest, a lower bound on
        # the pending deadlines that set_timeout keeps (may be early, never
        # late), so timeout() below is one call and nothing else.
        self._set_timeout = self._timer.set_timeout
        # Hot paths (timer benchmark, accept/close): no wrapper frame; the
        # instance attributes shadow the documented methods of the class.
        self.clear_timeout = self._timer.cancel  # type: ignore[method-assign]
        self.register = registry.register  # type: ignore[method-assign]
        self.reregister = registry.reregister  # type: ignore[method-assign]
        self.deregister = registry.deregister  # type: ignore[method-assign]
        self._due: list[Any] = []  # timeout payloads taken from the wheel, not delivered
        self._sigq: deque[int] = deque()  # 0 = "interrupted", else a signal number
        self._signals: _SignalSet | None = None
        self._leftover: list[tuple[int, int]] | None = None
        # What _iterate binds to locals, in one tuple: run_once pays the setup
        # on every call.
        core = self._notify
        self._hot = (
            self._backend_poll,
            self._tokens,
            self._xlates,
            self._events_capacity,
            core,
            core.queue,
            core.queue.popleft,
            core.credits.extend,
            core.credits.append,
            self._mpt,
            self._clock,
            self._tracker.shared,
            self._unique_fds,
            self._sigq,
            self._due,
            self._timer,
        )
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
        return _new_sender(self._notify)

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
        # A now-too-early cached deadline only costs one empty iteration.
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
        from ._signals import _check_main_thread, _SignalSet

        if self._closed:
            raise ValueError("the event loop is closed")
        _check_main_thread("add_signal")
        if self._signals is None:
            self._signals = _SignalSet(self._registry)
        self._signals.add(signum)

    def remove_signal(self, signum: int) -> bool:
        """Restore the disposition *signum* had before ``add_signal``.

        When the last added signal is removed the previous wakeup fd is
        restored too.

        :returns: ``True`` if *signum* was added, else ``False``.
        :raises ValueError: not on the main thread.
        :raises TypeError: *signum* is not an ``int``.
        """
        from ._signals import _check_main_thread

        _check_main_thread("remove_signal")
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
        self._enter()
        self._running = True
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
        if timeout is None:
            limit = None
        elif type(timeout) is float and 0.0 < timeout <= MAX_TIMEOUT:
            limit = timeout
        else:
            limit = _normalize_limit(timeout)
        self._enter()
        try:
            self._iterate(handler, True, limit)
        finally:
            self._active = False

    def _enter(self) -> None:
        if self._closed:
            raise ValueError("the event loop is closed")
        if self._active:
            raise RuntimeError("the event loop is already running")
        self._active = True
        self._loop_thread = threading.get_ident()

    def shutdown(self) -> None:
        """Make ``run()`` return after the current iteration.  Any thread.

        Called from another thread while the loop waits, it wakes the loop.
        """
        self._running = False
        if self._active and threading.get_ident() != self._loop_thread:
            self._notify.wake()

    def is_running(self) -> bool:
        """Whether ``run()`` is iterating and ``shutdown()`` was not called since."""
        return self._running

    def _iterate(self, handler: Handler, once: bool, limit: float | None) -> None:
        """The loop itself; see the module docstring.  Hot path: keep it flat."""
        ready, notify, on_timeout, tick = _bind(handler)
        if ready is None:
            ready = _ignore_ready
        if on_timeout is None:
            on_timeout = _ignore_timeout
        (
            backend_poll,
            tokens,
            xlates,
            capacity,
            core,
            queue,
            popleft,
            give_back,
            give_credit,
            mpt,
            clock,
            shared,
            fast,  # the backend never reports one fd twice per poll
            sigq,
            due,
            timer,
        ) = self._hot
        inf = _INF
        t: float | None
        while True:
            # 1. Wait.
            raw = self._leftover
            if raw is None:
                if queue or sigq or due:
                    t = 0.0
                else:
                    nd = timer._soonest
                    if nd == inf:
                        t = limit
                    else:
                        t = nd - clock()
                        if t <= 0.0:
                            t = 0.0
                        elif limit is not None and limit < t:
                            t = limit
                        elif t > MAX_TIMEOUT:
                            t = MAX_TIMEOUT
                if core.has_senders and t != 0.0:
                    if core.locked:
                        if not core.announce_sleep():
                            t = 0.0
                    else:
                        core.sleeping = True
                        if queue:  # re-check after announcing: see metalio.channel
                            t = 0.0
                    try:
                        raw = backend_poll(t, capacity)
                    finally:
                        core.sleeping = False
                else:
                    raw = backend_poll(t, capacity)
            else:
                self._leftover = None

            # 2. I/O.
            if raw:
                if fast and not shared:
                    fd = -1  # no event started yet (an asynchronous exception)
                    try:
                        for fd, mask in raw:
                            # UNREGISTERED (deregistered since the wait) is
                            # negative: _internal ignores it.
                            try:
                                token = tokens[fd]
                            except IndexError:  # never registered (a fake backend)
                                continue
                            if token >= 0:
                                ready(self, token, xlates[fd][mask])
                            else:
                                self._internal(token)
                    except BaseException:
                        self._keep_after(raw, fd)
                        raise
                else:
                    self._dispatch_merged(raw, ready)

            # 3. Signals.
            if sigq:
                self._deliver_signals(handler)

            # 4. Messages.
            if queue:
                k = len(queue)
                if k > mpt:
                    k = mpt
                if notify is None:
                    for _ in range(k):
                        popleft()
                    give_back(repeat(None, k))
                else:
                    # A message stops counting against notify_capacity when
                    # its notify call starts: the credit goes back first.  A
                    # plain pop per step: iter(popleft, sentinel) would
                    # compare every message with the sentinel through the
                    # message's own __eq__ (which may raise, or say "equal"
                    # and end the batch with the message lost).
                    for _ in repeat(None, k):
                        msg = popleft()
                        give_credit(None)
                        notify(self, msg)

            # 5. Timers.
            nd = timer._soonest
            if (nd < inf and nd <= clock()) or due:
                self._fire(on_timeout)

            # 6. Tick.
            if tick is not None:
                tick(self)
            if once or not self._running:
                return

    # -- cold paths of the iteration -----------------------------------------------

    def _internal(self, token: int) -> None:
        """An internal descriptor reported readiness, or one deregistered since
        the wait did (``UNREGISTERED``: ignored)."""
        if token == NOTIFY_TOKEN:
            awakener = self._notify.awakener
            if awakener.drain_needed:
                awakener.drain()
            return
        signals = self._signals
        if token == SIGNAL_TOKEN and signals is not None:
            got = signals.read()
            # Any byte means a wait was (or would have been) interrupted.
            self._sigq.append(0)
            self._sigq.extend(got)

    def _keep_after(self, raw: list[tuple[int, int]], fd: int) -> None:
        """A handler raised while handling *fd*: keep the events after it.

        Each fd appears once in *raw* (the fast path's condition); ``-1``
        (nothing started) keeps them all.
        """
        for i, pair in enumerate(raw):
            if pair[0] == fd:
                raw = raw[i + 1 :]
                break
        if raw:
            self._leftover = raw

    def _dispatch_merged(
        self, raw: list[tuple[int, int]], ready: Callable[[EventLoop, int, Ready], None]
    ) -> None:
        """Step 2 when a token may repeat: merge flags, one call per token."""
        get = self._table.get
        merged: dict[int, int] = {}
        for fd, mask in raw:
            reg = get(fd)
            if reg is None:
                continue
            token = reg.token
            bits = int(reg.xlate[mask])
            old = merged.get(token)
            merged[token] = bits if old is None else old | bits
        items = list(merged.items())
        for i, (token, bits) in enumerate(items):
            try:
                if token >= 0:
                    ready(self, token, READY_VALUES[bits])
                else:
                    self._internal(token)
            except BaseException:
                rest = {tok for tok, _ in items[i + 1 :]}
                if rest:
                    kept = []
                    for pair in raw:
                        reg = get(pair[0])
                        if reg is not None and reg.token in rest:
                            kept.append(pair)
                    self._leftover = kept or None
                raise

    def _deliver_signals(self, handler: Handler) -> None:
        sigq = self._sigq
        on_signal = _override(handler, "signal")
        on_interrupted = _override(handler, "interrupted")
        while sigq:
            signum = sigq.popleft()
            if signum == 0:
                if on_interrupted is not None:
                    on_interrupted(self)
            elif on_signal is not None:
                on_signal(self, signum)

    def _fire(self, on_timeout: Callable[[EventLoop, Any], None]) -> None:
        """Step 5: deliver the due timeouts (leftovers of an exception first)."""
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
            timer.next_deadline()  # makes timer._soonest exact again

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
        self._notify.close()
        self._timer.clear()
        self._set_timeout = _closed_timeout
        self._due.clear()
        self._sigq.clear()
        self._leftover = None
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
