"""``Registry``: validated, thread-safe registrations, and the token table they live in.

What it owns
------------
The *token table*, fd -> :class:`Registration`, and the lock that
serialises every change to it, so registrations may come from any thread,
including while another thread is blocked in ``poll()``.  It validates every
argument before the backend sees anything; the backend only ever sees
descriptors and plain ints.  It also owns the readiness tables (native
mask -> ``Ready``, one per interest) that its rows point at.

What it tells others
--------------------
Every change of a row goes through one method, ``_write``, and is then told
to the *observers*: ``observer(fd, old, new)`` under the lock, after the
table changed (``old``/``new`` are rows or ``None``).  The parties that keep
per-source state in step with the table attach there and nowhere else: the
edge emulation's re-arm hooks (below), readiness tracking
(``metalio._readiness``) and the event loop's dispatch index
(``metalio._dispatch_index``).  The registry does not know what they do.

Registrations are immutable records replaced as a whole (but for the event
cache ``Poll.poll`` keeps in them), so a polling thread that reads the table
without the lock never sees a token from one registration paired with the
interest of another.

Tolerant teardown.  A source closed without ``deregister`` leaves a stale
row behind.  Whether a row is stale is decided by the one party that knows:
the kernel for epoll (``EPOLL_CTL_ADD`` fails only for a live entry), the
backend's own file identity check for the others.  So a new source that
gets the same fd number registers at once, and ``deregister`` of a closed
object finds its row by identity and succeeds.

What it must not know: how events are waited for or delivered (``Poll``,
``EventLoop``), and what any token means.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Final, TypeAlias

from ._backends import Backend, Facts, facts_of
from ._flags import (
    READY_VALUES,
    RESERVED_TOKENS,
    PollOpt,
    Ready,
    check_interest,
    check_opts,
    check_token,
)
from ._source import fd_of

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._events import Event
    from ._source import Source

__all__ = ["Observer", "Registration", "Registry"]

# Descriptors are C ints in every kernel call CPython makes: a larger number
# can name nothing (and CPython would raise OverflowError for it).
_FD_MAX: Final = 2**31 - 1
_EDGE: Final = int(PollOpt.EDGE)


class _LazyTable(dict[int, Ready]):
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


def readiness_tables(backend: Backend) -> tuple[Mapping[int, Ready], ...]:
    """One native mask -> ``Ready`` table per interest value (index 0..7).

    When the backend can list every mask it reports (``native_masks``), the
    tables are complete plain dicts, which CPython's ``d[k]`` handles on its
    fastest path (a dict subclass takes the generic one); otherwise they fill
    as masks are seen.
    """
    masks = backend.native_masks
    if masks is None:
        return tuple(_LazyTable(i, backend.readiness) for i in range(8))
    return tuple(
        {mask: READY_VALUES[backend.readiness(mask, i)] for mask in masks} for i in range(8)
    )


class Registration:
    """One row of the token table: who is registered at an fd, and how.

    Replaced, never mutated, except for ``event``: the last ``Event`` that
    ``Poll.poll`` built for the row, handed out again while the readiness
    stays the same.  One slot, so concurrent pollers that overwrite it leave
    a consistent ``(token, readiness)`` pair whichever store lands last.
    """

    __slots__ = ("event", "interest", "opts", "source", "table", "token")

    def __init__(
        self, source: object, token: int, interest: int, opts: int, table: Mapping[int, Ready]
    ) -> None:
        self.source = source
        self.token = token
        self.interest = interest
        self.opts = opts
        self.table = table  # native mask -> Ready for this interest
        self.event: Event | None = None


Observer: TypeAlias = Callable[[int, "Registration | None", "Registration | None"], None]
"""``observer(fd, old_row, new_row)``: told every change of the row at *fd*."""


def _fd_or_closed(source: object) -> int:
    """Like ``fd_of`` but never raises: ``-1`` for anything without a usable fd."""
    try:
        return fd_of(source)
    except Exception:
        return -1


def _checked_fd(source: Source, what: str) -> int:
    fd = fd_of(source)
    if fd < 0:
        raise ValueError(f"cannot {what} a closed source or negative fd ({fd})")
    if fd > _FD_MAX:
        raise ValueError(f"fd {fd} is out of range")
    return fd


def _set_rearm(source: object, hook: Callable[[int], None] | None) -> None:
    """Store *hook* in a metalio source's ``_rearm`` slot (other objects have none)."""
    if hasattr(source, "_rearm"):
        try:
            source._rearm = hook
        except AttributeError:
            pass


class Registry:
    """Registers sources with a ``Poll``.  Every method is thread-safe.

    Obtain it as ``poll.registry``; it cannot usefully be created on its own.
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_closed",
        "_facts",
        "_lock",
        "_observers",
        "_table",
        "_tables",
        "row",
    )

    row: Callable[[int], Registration | None]
    """``row(fd)``: the row at *fd*, read without the lock (rows are replaced
    whole).  The table's own ``dict.get``, so a lookup per event runs no
    Python frame."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._facts = facts_of(backend)
        self._table: dict[int, Registration] = {}
        self.row = self._table.get
        self._tables = readiness_tables(backend)
        self._lock = threading.Lock()
        self._closed = False
        self._observers: list[Observer] = []
        if self._facts.emulates_edge:
            self._observers.append(self._rearm_hooks)

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
        self._add(source, check_token(token), interest, opts)

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
        fd = _checked_fd(source, "reregister")
        with self._lock:
            self._check_open()
            old = self._table.get(fd)
            if old is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            # New row first, as in _add(): the re-armed event may reach a
            # polling thread before the kernel call returns.
            self._write(fd, Registration(old.source, token, interest, opts, self._tables[interest]))
            try:
                self._backend.reregister(fd, interest, opts)
            except FileNotFoundError:
                # The backend no longer knows fd: our row is stale.
                self._write(fd, None)
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered") from None
            except BaseException:
                self._write(fd, old)
                raise

    def deregister(self, source: Source) -> None:
        """Stop reporting *source*.  No ``poll()`` that starts later reports it.

        A source that was closed after it was registered is found by identity
        and removed; a closed source that is not registered is ignored.

        :raises TypeError: *source* has no usable ``fileno()``.
        :raises ValueError: the Poll is closed.
        :raises FileNotFoundError: *source* (open) is not registered.
        """
        fd = fd_of(source)
        with self._lock:
            self._check_open()
            if fd < 0:
                for stale_fd, stale in self._table.items():
                    if stale.source is source:
                        self._backend.forget(stale_fd)
                        self._write(stale_fd, None)
                        return
                return
            row = self._table.get(fd)
            if row is None:
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered")
            try:
                self._backend.deregister(fd)
            except FileNotFoundError:
                self._write(fd, None)
                if row.source is source:
                    # Ours, but the kernel already forgot it (closed behind our
                    # back with os.close): the goal is reached.
                    return
                raise FileNotFoundError(errno.ENOENT, f"fd {fd} is not registered") from None
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
                # EBADF: the fd was closed behind our back; nothing to remove.
            self._write(fd, None)

    # -- the internal contract (for metalio's own layers) ------------------

    @property
    def facts(self) -> Facts:
        """What the backend can do (``metalio._backends.Facts``)."""
        return self._facts

    def register_reserved(
        self, source: Source, token: int, interest: int, opts: int = PollOpt.LEVEL
    ) -> None:
        """``register`` for metalio's own descriptors, under a reserved token.

        Reserved tokens (``metalio._flags.RESERVED_TOKENS``) are negative, so
        they never collide with a user's.

        :raises ValueError: *token* is not a reserved token; as for :meth:`register`.
        """
        if token not in RESERVED_TOKENS:
            raise ValueError(f"{token!r} is not a reserved token")
        self._add(source, token, interest, opts)

    def observe(self, observer: Observer) -> None:
        """Call ``observer(fd, old, new)`` for every later change of a row.

        Under the lock, after the table changed.  The rows already present are
        replayed first, as ``(fd, None, row)``, so the observer starts in step.
        """
        with self._lock:
            for fd, row in self._table.items():
                observer(fd, None, row)
            self._observers.append(observer)

    def rows(self) -> dict[int, Registration]:
        """A snapshot of the table."""
        with self._lock:
            return dict(self._table)

    def detach_all(self) -> None:
        """Drop every row and refuse later calls: the first step of ``Poll.close``.

        The backend is left to the Poll, which releases it once no thread
        waits in it.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for fd in list(self._table):
                self._write(fd, None)

    # -- internals ---------------------------------------------------------

    def _add(self, source: Source, token: int, interest: int, opts: int) -> None:
        interest = check_interest(interest)
        opts = check_opts(opts)
        fd = _checked_fd(source, "register")
        with self._lock:
            self._check_open()
            old = self._table.get(fd)
            if old is not None and old.source is source and type(source) is not int:
                raise FileExistsError(errno.EEXIST, f"fd {fd} is already registered")
            row = Registration(source, token, interest, opts, self._tables[interest])
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
                    self._write(fd, old)
                if isinstance(exc, FileExistsError):
                    raise FileExistsError(errno.EEXIST, f"fd {fd} is already registered") from None
                raise
            if not row_first:
                # Success with a row present means the row was stale.
                self._write(fd, row)

    def _write(self, fd: int, row: Registration | None) -> None:
        """Put *row* (``None``: nothing) at *fd* and tell the observers.  Lock held."""
        table = self._table
        old = table.get(fd)
        if row is None:
            if old is None:
                return
            del table[fd]
        else:
            table[fd] = row
        for observer in self._observers:
            observer(fd, old, row)

    def _rearm_hooks(self, fd: int, old: Registration | None, new: Registration | None) -> None:
        """Observer of an edge-emulating backend: the sources' ``_rearm`` hooks.

        A metalio source registered EDGE tells the backend when a ``try_*``
        call would block (``metalio._source``); any other row gets no hook.
        """
        if old is not None and (new is None or new.source is not old.source):
            _set_rearm(old.source, None)
        if new is not None:
            hook = partial(self._backend.rearm, fd) if new.opts & _EDGE else None
            _set_rearm(new.source, hook)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on a closed Poll")

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._table)} registered"
        return f"<Registry {self._facts.name} {state}>"
