"""``Poll`` and ``Registry``: tokens over a kernel readiness backend.

Theory of operation
-------------------
A ``Poll`` owns one backend (``metalio._backends``: epoll, kqueue, poll or
select) and one ``Registry``.  The registry validates every argument, keeps
the *token table* (fd -> ``_Registration``) and serialises changes with a
lock, so registrations may come from any thread, including while another
thread is blocked in ``poll()``.  The backend only ever sees descriptors and
plain ints.

``poll()`` asks the backend for ``(fd, native_mask)`` pairs and turns each
into an ``Event`` with two dictionary lookups: the fd finds the registration
(its token), and the native mask finds the ``Ready`` value in a table shared
by all registrations with the same interest.  Nothing else runs per event,
no enum arithmetic and no Python-level constructor, and usually no
allocation either: each registration keeps the last ``Event`` it produced
and hands it out again while its readiness stays the same (an ``Event`` is
an immutable tuple; ``Ready`` values are shared, so one identity test
decides).  An fd that is no longer
in the table (deregistered by another thread, or an internal descriptor of
the backend) is skipped, which is what makes "after ``deregister`` returns
no later poll reports the source" hold on every backend.

Registrations are immutable records replaced as a whole, so the polling
thread, which reads the table without the lock, never sees a token from one
registration paired with the interest of another.

Tolerant teardown.  A source closed without ``deregister`` leaves a stale
record behind.  Whether a record is stale is decided by the one party that
knows: the kernel for epoll (``EPOLL_CTL_ADD`` fails only for a live entry),
the backend's own file identity check for the others.  So a new source that
gets the same fd number registers at once, and ``deregister`` of a closed
object finds its record by identity and succeeds.
"""

from __future__ import annotations

import errno
import math
import threading
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from ._backends import MAX_TIMEOUT, Backend, open_backend
from ._events import Event, Events
from ._flags import READY_VALUES, PollOpt, Ready, check_interest, check_opts, check_token
from ._source import fd_of as _fd_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._source import Source

__all__ = ["Poll", "Registry"]

_new_event: Final = tuple.__new__

# Descriptors are C ints in every kernel call CPython makes: a larger number
# can name nothing (and CPython would raise OverflowError for it).
_FD_MAX: Final = 2**31 - 1
# The token of a descriptor number with no registration, in the dispatch
# lists (Registry._dispatch_lists): negative, like the internal tokens, so a
# dispatcher's "token >= 0" test sends it down the internal path, which
# ignores it.
UNREGISTERED: Final = -3


class _Registration:
    """One row of the token table; replaced, never mutated (but for its cache).

    ``event`` caches the last :class:`Event` that ``Poll.poll`` built for the
    row: a source that keeps reporting the same readiness (the usual case)
    gets the same immutable ``Event`` again instead of two new tuples per
    event.  It is one slot, so concurrent pollers that overwrite it leave a
    consistent ``(token, readiness)`` pair whichever store lands last.
    """

    __slots__ = ("event", "interest", "opts", "source", "token", "xlate")

    def __init__(
        self, source: object, token: int, interest: int, opts: int, xlate: _ReadyTable
    ) -> None:
        self.source = source
        self.token = token
        self.interest = interest
        self.opts = opts
        self.xlate = xlate
        self.event: Event | None = None


class _TokenCounts:
    """How many registrations use each token; ``shared`` holds those used twice or more.

    Kept by a Registry that was asked to (``Registry._count_tokens``: the
    EventLoop does, to merge readiness per token only while some token is
    shared).  Updated under the registry's lock at its one table-writing
    point, ``_write``: a new row's token is counted before the row appears and
    the old row's after it is gone, so a polling thread that reads ``shared``
    without the lock never misses a shared token (it may briefly see one too
    many, which only costs the merging path).
    """

    __slots__ = ("counts", "shared")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.shared: set[int] = set()

    def inc(self, token: int) -> None:
        count = self.counts.get(token, 0) + 1
        self.counts[token] = count
        if count == 2:
            self.shared.add(token)

    def dec(self, token: int) -> None:
        count = self.counts.get(token, 1) - 1
        if count > 0:
            self.counts[token] = count
        else:
            self.counts.pop(token, None)
        if count <= 1:
            self.shared.discard(token)

    def reset(self) -> None:
        self.counts.clear()
        self.shared.clear()


class _ReadyTable(dict[int, Ready]):
    """native mask -> ``Ready`` for one interest; filled on first sight of a mask."""

    __slots__ = ("_interest", "_translate")

    def __init__(self, interest: int, translate: Callable[[int, int], int]) -> None:
        super().__init__()
        self._interest = interest
        self._translate = translate

    def __missing__(self, mask: int) -> Ready:
        ready = READY_VALUES[self._translate(mask, self._interest)]
        self[mask] = ready
        return ready


def _fd_or_closed(source: object) -> int:
    """Like ``_fd_of`` but never raises: ``-1`` for anything without a usable fd."""
    try:
        return _fd_of(source)
    except Exception:
        return -1


def _set_hook(source: object, hook: Callable[[int], None] | None) -> None:
    if hasattr(source, "_rearm"):
        try:
            source._rearm = hook
        except AttributeError:
            pass


class Registry:
    """Registers sources with a ``Poll``.  Every method is thread-safe.

    Obtain it as ``poll.registry``; it cannot be created on its own.
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_closed",
        "_counts",
        "_lock",
        "_table",
        "_tokens",
        "_xlate",
        "_xlates",
    )

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._table: dict[int, _Registration] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._counts: _TokenCounts | None = None
        self._xlate = tuple(_ReadyTable(i, backend.readiness) for i in range(8))
        # The dispatch lists, when an EventLoop asked for them: see
        # _dispatch_lists.
        self._tokens: list[int] | None = None
        # Readiness tables by fd (dict-like; see _dispatch_lists).
        self._xlates: list[Any] | None = None

    # -- the three public operations ---------------------------------------

    def register(
        self, source: Source, token: int, interest: int, opts: int = PollOpt.LEVEL
    ) -> None:
        """Start reporting readiness of *source* under *token*.

        :raises TypeError: *source* has no usable ``fileno()``; *token*,
            *interest* or *opts* of the wrong type.
        :raises ValueError: negative fd or closed source, or an fd beyond
            ``2**31 - 1``; token out of range; empty interest; invalid
            ``PollOpt`` combination; the Poll is closed.
        :raises FileExistsError: *source* is already registered with this Poll.
        :raises OSError: the kernel refused the descriptor (e.g.
            ``PermissionError`` for a regular file on epoll); nothing is left
            registered.
        """
        self._register(source, check_token(token), interest, opts)

    def _register(self, source: Source, token: int, interest: int, opts: int) -> None:
        """``register`` without the token check: for internal descriptors whose
        token lies outside the user range (``token < 0``), so it never collides."""
        interest = check_interest(interest)
        opts = check_opts(opts)
        fd = _fd_of(source)
        if fd < 0:
            raise ValueError(f"cannot register a closed source or negative fd ({fd})")
        if fd > _FD_MAX:
            raise ValueError(f"fd {fd} is out of range")
        with self._lock:
            self._check_open()
            table = self._table
            old = table.get(fd)
            if old is not None and old.source is source and type(source) is not int:
                raise FileExistsError(errno.EEXIST, f"fd {fd} is already registered")
            row = _Registration(source, token, interest, opts, self._xlate[interest])
            # Normally the row goes in before the kernel call: a thread blocked
            # in poll() may receive the first event before register() returns,
            # and an EDGE or ONESHOT event dropped for want of a row is lost.
            # But when the fd already has a row whose source still owns that
            # number, the kernel will most likely refuse (the fd is live), and
            # a row put in first would lend the new token to the live
            # registration's events until the refusal: ask the kernel first.
            row_first = old is None or _fd_or_closed(old.source) != fd
            if row_first:
                self._write(fd, row)
            try:
                self._backend.register(fd, interest, opts)
            except BaseException as exc:
                if row_first:
                    if old is None:
                        self._write(fd, None)
                    else:
                        self._write(fd, old)
                if isinstance(exc, FileExistsError):
                    raise FileExistsError(errno.EEXIST, f"fd {fd} is already registered") from None
                raise
            if not row_first:
                self._write(fd, row)
            # Success with a record present means the record was stale.
            if old is not None:
                _set_hook(old.source, None)
            self._hook(source, fd, opts)

    def reregister(
        self, source: Source, token: int, interest: int, opts: int = PollOpt.LEVEL
    ) -> None:
        """Replace the token, interest and options of *source* and re-arm it.

        :raises TypeError: as for :meth:`register`.
        :raises ValueError: as for :meth:`register`.
        :raises FileNotFoundError: *source* is not registered with this Poll.
        :raises OSError: the kernel refused the change; the old registration
            is unchanged.
        """
        token = check_token(token)
        interest = check_interest(interest)
        opts = check_opts(opts)
        fd = _fd_of(source)
        if fd < 0:
            raise ValueError(f"cannot reregister a closed source or negative fd ({fd})")
        if fd > _FD_MAX:
            raise ValueError(f"fd {fd} is out of range")
        with self._lock:
            self._check_open()
            old = self._table.get(fd)
            if old is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            # New row first, as in register(): the re-armed event may reach a
            # polling thread before the kernel call returns.
            self._write(fd, _Registration(old.source, token, interest, opts, self._xlate[interest]))
            try:
                self._backend.reregister(fd, interest, opts)
            except FileNotFoundError:
                # The backend no longer knows fd: our record is stale.
                self._write(fd, old)
                self._drop(fd, old)
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered") from None
            except BaseException:
                self._write(fd, old)
                raise
            self._hook(old.source, fd, opts)

    def deregister(self, source: Source) -> None:
        """Stop reporting *source*.  No ``poll()`` that starts later reports it.

        A source that was closed after it was registered is found by identity
        and removed; a closed source that is not registered is ignored.

        :raises TypeError: *source* has no usable ``fileno()``.
        :raises ValueError: the Poll is closed.
        :raises FileNotFoundError: *source* (open) is not registered.
        """
        fd = _fd_of(source)
        with self._lock:
            self._check_open()
            if fd < 0:
                for stale_fd, stale in self._table.items():
                    if stale.source is source:
                        self._backend.forget(stale_fd)
                        self._drop(stale_fd, stale)
                        return
                return
            reg = self._table.get(fd)
            if reg is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            try:
                self._backend.deregister(fd)
            except FileNotFoundError:
                self._drop(fd, reg)
                if reg.source is source:
                    # Ours, but the kernel already forgot it (closed behind our
                    # back with os.close): the goal is reached.
                    return
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered") from None
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
                # EBADF: the fd was closed behind our back; nothing to remove.
            self._drop(fd, reg)

    # -- internals ---------------------------------------------------------

    def _write(self, fd: int, row: _Registration | None) -> None:
        """Put *row* (``None``: nothing) at *fd*: every table change goes here.

        Called with the lock held.  With token counting on, the new token is
        counted before its row appears and the old one after it is gone.
        """
        table = self._table
        old = table.get(fd)
        counts = self._counts
        if counts is not None and row is not None:
            counts.inc(row.token)
        if row is None:
            table.pop(fd, None)
        else:
            table[fd] = row
        tokens = self._tokens
        if tokens is not None:
            self._list_row(tokens, fd, row)
        if counts is not None and old is not None:
            counts.dec(old.token)

    def _list_row(self, tokens: list[int], fd: int, row: _Registration | None) -> None:
        """Mirror *row* at *fd* in the dispatch lists (lock held)."""
        xlates = self._xlates
        assert xlates is not None
        if fd >= len(tokens):
            grow = fd + 1 - len(tokens)
            tokens.extend([UNREGISTERED] * grow)
            xlates.extend([None] * grow)
        # A dispatcher in another thread reads tokens[fd] and then
        # xlates[fd], with no lock.  So a table is written before its token,
        # and a removal leaves the old table where it is: whatever the
        # interleaving, a token the dispatcher read comes with a readiness
        # table (at worst that of the next registration at this fd).
        if row is None:
            tokens[fd] = UNREGISTERED
        else:
            xlates[fd] = row.xlate
            tokens[fd] = row.token

    def _dispatch_lists(self) -> tuple[list[int], list[Any]]:
        """Turn on the dispatch lists (idempotent) and return them.

        ``tokens[fd]`` and ``xlates[fd]`` are the token and readiness table
        of the registration at *fd*; where there is none the token is
        ``UNREGISTERED`` and the table that of an earlier registration there
        (or ``None``), never to be used.  Both lists reach the highest fd
        ever registered and never shrink.  An EventLoop dispatches from them instead of from the
        table: two list indexings, where ``table[fd].token`` and
        ``.xlate`` cost a hashed lookup and a visit to the registration
        object, which the kernel's work between events has usually pushed
        out of the CPU caches (about 40 ns per event, measured).  16 bytes
        per descriptor number, nothing per registration.
        """
        with self._lock:
            if self._tokens is None:
                self._tokens = []
                self._xlates = []
                for fd, row in self._table.items():
                    self._list_row(self._tokens, fd, row)
            assert self._xlates is not None
            return self._tokens, self._xlates

    def _count_tokens(self) -> _TokenCounts:
        """Turn on per-token counting (idempotent) and return the counts."""
        with self._lock:
            if self._counts is None:
                counts = _TokenCounts()
                for row in self._table.values():
                    counts.inc(row.token)
                self._counts = counts
            return self._counts

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed Poll")

    def _drop(self, fd: int, reg: _Registration) -> None:
        if self._table.get(fd) is reg:
            self._write(fd, None)
        _set_hook(reg.source, None)

    def _hook(self, source: object, fd: int, opts: int) -> None:
        if self._backend.emulates_edge:
            _set_hook(source, partial(self._backend.rearm, fd) if opts & 2 else None)

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for reg in self._table.values():
                _set_hook(reg.source, None)
            self._table.clear()
            if self._counts is not None:
                self._counts.reset()
            if self._tokens is not None:
                self._tokens[:] = [UNREGISTERED] * len(self._tokens)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._table)} registered"
        return f"<Registry {self._backend.name} {state}>"


def _normalize_timeout(timeout: object) -> float | None:
    """Seconds as the backends want them.

    :raises TypeError: not a real number or ``None``.
    :raises ValueError: NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not hasattr(type(timeout), "__float__"):
        raise TypeError(
            f"timeout must be a number of seconds or None, not {type(timeout).__name__}"
        )
    value = float(timeout)  # type: ignore[arg-type]
    if math.isnan(value):
        raise ValueError("timeout must not be NaN")
    if value <= 0.0:
        return 0.0
    if value > MAX_TIMEOUT:
        return None
    return value


class Poll:
    """Waits for readiness of registered sources and reports it by token.

    ``Poll(backend=None)`` picks the best backend of the platform; pass
    ``"epoll"``, ``"kqueue"``, ``"poll"`` or ``"select"`` to choose.

    :raises ValueError: unknown or unavailable backend name.
    :raises OSError: the kernel refused to create the polling object.
    """

    __slots__ = (
        "_backend",
        "_backend_poll",
        "_closed",
        "_inflight",
        "_registry",
        "_release_lock",
        "_released",
        "_table",
    )

    def __init__(self, backend: str | None = None) -> None:
        self._backend: Backend = open_backend(backend)
        self._registry = Registry(self._backend)
        self._table = self._registry._table
        self._backend_poll = self._backend.poll
        self._closed = False
        self._inflight: list[None] = []
        self._release_lock = threading.Lock()
        self._released = False

    @classmethod
    def _from_backend(cls, backend: Backend) -> Poll:
        """A Poll over an already created backend object (tests use fakes)."""
        self = cls.__new__(cls)
        self._backend = backend
        self._registry = Registry(backend)
        self._table = self._registry._table
        self._backend_poll = backend.poll
        self._closed = False
        self._inflight = []
        self._release_lock = threading.Lock()
        self._released = False
        return self

    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def registry(self) -> Registry:
        return self._registry

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
            if kind is float or kind is int:
                # NaN passes both tests and the backend raises ValueError for it.
                if timeout <= 0:
                    timeout = 0
                elif timeout > MAX_TIMEOUT:
                    timeout = None
            else:
                timeout = _normalize_timeout(timeout)
        if type(events) is not Events and not isinstance(events, Events):
            raise TypeError(f"events must be an Events, not {type(events).__name__}")
        items = events._items
        items.clear()
        # list.append/pop are atomic: a count of threads inside the backend
        # that close() can read without a lock (see close()).
        inflight = self._inflight
        inflight.append(None)
        try:
            raw = self._backend_poll(timeout, events._capacity)
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
        get = self._table.get
        append = items.append
        new = _new_event
        for fd, mask in raw:
            reg = get(fd)
            if reg is not None:
                ready = reg.xlate[mask]
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
        self._registry._close()
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
        state = "closed" if self._closed else f"{len(self._table)} registered"
        return f"<Poll {self._backend.name} {state}>"
