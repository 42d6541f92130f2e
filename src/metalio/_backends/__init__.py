"""The one small interface every readiness backend implements, and the choice of default.

A backend is the only place that talks to the kernel's readiness API.  It
knows file descriptors, not sources or tokens: ``metalio.poll.Registry`` keeps
the token table, validates arguments, holds the lock and turns whatever the
backend returns into ``Event`` objects.  That split keeps each backend module
about one kernel API and lets one test suite run unchanged against all of them.

The contract between ``Poll`` and a backend:

``register(fd, interest, opts)``
    Start watching *fd*.  ``interest`` is a plain ``int`` of ``Interest`` bits
    (never empty), ``opts`` a plain ``int`` of ``PollOpt`` bits, already
    validated and normalised (``ONESHOT`` alone arrives as ``LEVEL|ONESHOT``).
    If the backend already watches *fd* for a source that is still open it
    raises ``FileExistsError``; if its record is stale (the descriptor was
    closed and its number reused) it replaces the record.  On any failure
    nothing is left registered.
``reregister(fd, interest, opts)``
    Replace everything about *fd* and re-arm it.  ``FileNotFoundError`` if it
    is not watched.
``deregister(fd)``
    Stop watching *fd*.  ``FileNotFoundError`` if it is not watched.
``forget(fd)``
    Drop every record of *fd* without failing: the source was closed behind
    our back.  Kernel errors (``EBADF``, ``ENOENT``) are swallowed.
``poll(timeout, maxevents) -> list[tuple[int, int]]``
    Wait at most *timeout* seconds (``None``: forever, ``0``: not at all; the
    caller has already clamped negatives to 0 and huge values to
    ``MAX_TIMEOUT``) and return at most *maxevents* ``(fd, native_mask)``
    pairs.  Descriptors the backend no longer watches may appear; the caller
    drops them.  Events that did not fit must come back from a later call.
``readiness(native_mask, interest) -> int``
    Translate one native mask into ``Ready`` bits (a plain ``int``) for a
    registration with *interest*.  Pure; the caller caches the answers.
    Each backend writes it as one named predicate per readiness
    (``is_readable`` ... ``is_write_closed``) over its native bits.
``rearm(fd, direction)``
    *direction* (one ``Interest`` bit) of *fd* was just drained: a ``try_*``
    call would block.  Only backends that emulate EDGE act on it; the others
    accept and ignore it.  Never raises.
``fileno() -> int``
    A descriptor that is readable while events are pending, or raise
    ``io.UnsupportedOperation``.
``interrupt()``
    Make every thread blocked in ``poll`` return soon, releasing nothing (a
    woken kernel wait that finds its wake-up source already gone may go back
    to sleep).  ``Poll.close`` calls it when threads are polling and calls
    ``close`` once the last of them has left.  Every backend wakes with a
    ``metalio._wakefd.WakeFd``; none raises from here.
``close()``
    Release the kernel object and every internal descriptor.  Never called
    while another thread is inside ``poll``.

The modules: ``epoll`` and ``kqueue`` (with ``_kqueue_changes`` and
``_kqueue_mask``) speak their kernel API; ``poll`` and ``select`` supply a
kernel set to ``_emulated``, which builds EDGE and ONESHOT in user space with
``_emulated_probe``, ``_emulated_records``, ``_emulated_wake`` and the bit
layout in ``_pollmask``.  ``_bits`` holds the ``Ready``/``Interest``/``PollOpt``
bits as plain ints for all of them.

Facts, as class attributes (the layers above read these, never the name):

``name``
    ``"epoll"``, ``"kqueue"``, ``"poll"`` or ``"select"``: for people, not for
    decisions.
``emulates_edge``
    EDGE is built in user space: the registry must install ``_rearm`` hooks
    on metalio sources registered EDGE, which call ``rearm(fd, direction)``
    when a ``try_*`` call would block.
``concurrent_poll``
    Several threads may be inside ``poll`` at once.
``unique_fds``
    One ``poll`` result names each descriptor at most once, so an event loop
    needs no per-token merging while no token is shared.
``exact_edges``
    Native edge triggering: after a read or write that left the kernel
    buffer empty (full), the next change queues a new event.  Readiness
    tracking relies on it (``metalio._readiness``).
``closing_mask``
    The native bits that report hang-up or an error; an event carrying any
    of them switches readiness tracking off for that source.
``native_masks``
    Every native mask ``poll`` can return for a metalio registration, when
    the backend can list them (readiness tables are then filled up front);
    ``None`` when masks are only known as they are seen.
"""

from __future__ import annotations

import select as _stdlib_select
import sys
from typing import TYPE_CHECKING, ClassVar, Final, NamedTuple, Protocol

from .._validate import MAX_WAIT

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "MAX_TIMEOUT",
    "Backend",
    "Facts",
    "available_backends",
    "default_backend_name",
    "facts_of",
    "open_backend",
]

# epoll_wait and poll take an int of milliseconds; the caller never asks for more.
MAX_TIMEOUT: Final = MAX_WAIT


class Backend(Protocol):
    name: ClassVar[str]
    emulates_edge: ClassVar[bool]
    concurrent_poll: ClassVar[bool]
    unique_fds: ClassVar[bool]
    exact_edges: ClassVar[bool]
    closing_mask: ClassVar[int]
    native_masks: ClassVar[tuple[int, ...] | None]

    def register(self, fd: int, interest: int, opts: int) -> None: ...
    def reregister(self, fd: int, interest: int, opts: int) -> None: ...
    def deregister(self, fd: int) -> None: ...
    def forget(self, fd: int) -> None: ...
    def poll(self, timeout: float | None, maxevents: int) -> list[tuple[int, int]]: ...
    def readiness(self, native_mask: int, interest: int) -> int: ...
    def rearm(self, fd: int, direction: int) -> None: ...
    def fileno(self) -> int: ...
    def interrupt(self) -> None: ...
    def close(self) -> None: ...


class Facts(NamedTuple):
    """A backend's facts (see the module docstring), as the layers above read them."""

    name: str
    emulates_edge: bool
    concurrent_poll: bool
    unique_fds: bool
    exact_edges: bool
    closing_mask: int
    native_masks: tuple[int, ...] | None
    closing_above: int
    """Every backend puts its closing bits above its data bits, so a native mask
    carries a closing bit exactly when it is greater than this (one int
    comparison per event, where ``&`` on ints runs the generic operator)."""


def facts_of(backend: Backend) -> Facts:
    """The facts *backend* states as class attributes."""
    return Facts(
        backend.name,
        backend.emulates_edge,
        backend.concurrent_poll,
        backend.unique_fds,
        backend.exact_edges,
        backend.closing_mask,
        backend.native_masks,
        (backend.closing_mask & -backend.closing_mask) - 1,
    )


def _load(name: str) -> Callable[[], Backend]:
    # Imported lazily so a platform only ever imports the modules it can run.
    if name == "epoll":
        from .epoll import EpollBackend

        return EpollBackend
    if name == "kqueue":
        from .kqueue import KqueueBackend

        return KqueueBackend
    if name == "poll":
        from .poll import PollBackend

        return PollBackend
    from .select import SelectBackend

    return SelectBackend


_PREFERENCE: Final = ("epoll", "kqueue", "poll", "select")


def available_backends() -> tuple[str, ...]:
    """The backend names this platform can run, best first."""
    return tuple(name for name in _PREFERENCE if name in _available_names())


def _available_names() -> set[str]:
    names = {"select"}
    if hasattr(_stdlib_select, "epoll"):
        names.add("epoll")
    if hasattr(_stdlib_select, "kqueue"):
        names.add("kqueue")
    if hasattr(_stdlib_select, "poll") and sys.platform != "darwin":
        # macOS poll(2) cannot watch ttys and some devices; select is the
        # dependable fallback there, and kqueue is the default anyway.
        names.add("poll")
    return names


def default_backend_name() -> str:
    return available_backends()[0]


def open_backend(name: str | None) -> Backend:
    """Create the backend *name* (``None``: the platform's best).

    :raises ValueError: unknown or unavailable name.
    :raises TypeError: *name* is not a string or ``None``.
    :raises OSError: the kernel refused to create the object (e.g. EMFILE).
    """
    if name is None:
        name = default_backend_name()
    elif not isinstance(name, str):
        raise TypeError(f"backend must be a str or None, not {type(name).__name__}")
    if name not in _available_names():
        known = ", ".join(repr(n) for n in _PREFERENCE)
        raise ValueError(
            f"backend {name!r} is not available here (known: {known}; "
            f"available: {', '.join(available_backends())})"
        )
    return _load(name)()
