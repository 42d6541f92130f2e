"""Accepting connections: the budget, ``--max-clients``, and running out of descriptors.

:class:`Acceptor` owns a server's listening side: the listener's
edge-triggered readiness, the per-turn accept budget, admission against
``--max-clients``, the spare descriptor kept for descriptor exhaustion, and
the back-off timer of a paused accept.  It hands every admitted stream to
a callback and knows nothing about what the server does with it.

Theory of operation
-------------------
*Draining.*  The listener is edge-triggered, so its readiness is drained:
``try_accept`` until it returns ``None``, at most :data:`ACCEPT_BUDGET`
connections per turn.  When the budget is spent :meth:`Acceptor.accept`
returns ``True`` and the server continues later in the same iteration (the
edge will not come again for the connections still pending).

*Admission.*  ``--max-clients`` is enforced by accepting the surplus
connection and closing it at once, so the client learns immediately (a
connection left in the kernel's backlog would hang instead) and the others
never notice.

*Running out of descriptors (EMFILE/ENFILE).*  ``accept`` fails while the
pending connection stays in the backlog, so a level-triggered server would
spin on it and an edge-triggered one would forget it.  The acceptor keeps
one *spare descriptor* (``/dev/null``) open for this moment: it closes the
spare, accepts the pending connection into the freed slot, closes that
connection (the client sees an orderly close and may retry), reopens the
spare and goes on until the backlog is empty.  Existing clients are served
throughout, nothing spins, and as soon as descriptors free up new clients
are accepted normally again.  The shortage is logged once when it starts
and once when it ends (with the number of refused connections).  If even
that fails (no spare, or ENFILE while another process grabbed the freed
slot), or accept fails for another resource reason (``ENOBUFS``,
``ENOMEM``), accepting pauses and is retried on a timer with exponential
back-off (50 ms to 1 s) and at once whenever a client disconnects
(:meth:`Acceptor.descriptor_freed`).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING, Any, Final

from metalio.apps.startup import describe_error, format_addr

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable

    from metalio import EventLoop
    from metalio.net import TcpListener, TcpStream

__all__ = ["ACCEPT_BUDGET", "RETRY_ACCEPT", "Acceptor"]

ACCEPT_BUDGET: Final = 256
"""Connections accepted per turn: a connect flood cannot starve the clients."""

RETRY_ACCEPT: Final = "metalio.apps:retry-accept"
"""The payload of the back-off timer; the server passes it to :meth:`Acceptor.retry`."""

_RETRY_MIN: Final = 0.05
_RETRY_MAX: Final = 1.0

# accept(2) on Linux passes on errors of the pending connection itself;
# they concern that one connection, so the next one is tried at once.
_ACCEPT_SKIP: Final = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "EPERM",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EINTR",
    )
    if hasattr(errno, name)
)
_OUT_OF_FDS: Final = frozenset({errno.EMFILE, errno.ENFILE})


class Acceptor:
    """The listening side of one server.

    :param loop: the loop whose timer paces retries.
    :param listener: the bound, listening socket (registered by the caller).
    :param admit: called with ``(stream, peer)`` for each admitted connection.
    :param count: the number of clients now connected.
    :param max_clients: surplus connections are accepted and closed at once.
    :param log: where shortages and refusals are logged.
    """

    def __init__(
        self,
        loop: EventLoop,
        listener: TcpListener,
        *,
        admit: Callable[[TcpStream, Any], None],
        count: Callable[[], int],
        max_clients: int | None,
        log: logging.Logger,
    ) -> None:
        self.loop = loop
        self.listener = listener
        self.max_clients = max_clients
        self.log = log
        self._admit = admit
        self._count = count
        self._spare = self._open_spare()
        self._paused = False
        self._retry_timer: Any = None
        self._retry_delay = _RETRY_MIN
        self._shortage = False
        self._refused = 0
        self._closed = False

    def accept(self) -> bool:
        """Accept pending connections; ``True`` if the budget ran out with more maybe pending."""
        if self._paused or self._closed:
            return False
        listener = self.listener
        for _ in range(ACCEPT_BUDGET):
            try:
                accepted = listener.try_accept()
            except OSError as exc:
                code = exc.errno
                if code in _ACCEPT_SKIP:
                    continue
                if code in _OUT_OF_FDS:
                    shed = self._shed_pending(exc)
                    if shed is None:  # backlog empty: done until the next edge
                        return False
                    if shed:
                        continue
                self._pause(exc)
                return False
            if accepted is None:
                return False
            stream, peer = accepted
            if self._shortage:
                self._end_shortage()
            count = self._count()
            if self.max_clients is not None and count >= self.max_clients:
                self.log.info(
                    "refused %s: already %d clients (--max-clients)", format_addr(peer), count
                )
                stream.close()
                continue
            self._admit(stream, peer)
        return True

    def retry(self) -> None:
        """The back-off timer fired: accept again."""
        self._retry_timer = None
        self._paused = False

    def descriptor_freed(self) -> None:
        """A connection closed: if accepting is paused, try the backlog now, not at the timer."""
        if self._paused and not self._closed:
            self._retry_delay = _RETRY_MIN
            self._schedule_retry(0.0)

    def close(self) -> None:
        """Close the listener and the spare descriptor; cancel the retry.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._retry_timer is not None:
            self.loop.clear_timeout(self._retry_timer)
            self._retry_timer = None
        try:
            self.loop.deregister(self.listener)
        except (OSError, ValueError):
            pass
        self.listener.close()
        if self._spare >= 0:
            os.close(self._spare)
            self._spare = -1

    # -- descriptor exhaustion -------------------------------------------------

    @staticmethod
    def _open_spare() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return -1

    def _shed_pending(self, exc: OSError) -> bool | None:
        """Out of descriptors: accept-and-close one pending connection through the spare.

        Returns ``True`` when one was shed (try the next), ``None`` when the
        backlog turned out empty, ``False`` when shedding is impossible.
        """
        if not self._shortage:
            self._shortage = True
            self._refused = 0
            self.log.warning(
                "accept: %s: refusing new connections until descriptors free up "
                "(%d clients connected)",
                describe_error(exc),
                self._count(),
            )
        if self._spare < 0:
            self._spare = self._open_spare()
            return False
        os.close(self._spare)
        self._spare = -1
        try:
            accepted = self.listener.try_accept()
        except OSError:
            accepted = None
            result: bool | None = False
        else:
            result = None
        if accepted is not None:
            accepted[0].close()
            self._refused += 1
            result = True
        self._spare = self._open_spare()
        return result

    def _end_shortage(self) -> None:
        self._shortage = False
        self._retry_delay = _RETRY_MIN
        self.log.warning(
            "descriptors available again: accepting new clients "
            "(%d connection%s refused during the shortage)",
            self._refused,
            "" if self._refused == 1 else "s",
        )

    def _pause(self, exc: OSError) -> None:
        if not self._shortage:
            self._shortage = True
            self._refused = 0
            self.log.warning(
                "accept: %s: pausing accepts, retrying in %.2f s",
                describe_error(exc),
                self._retry_delay,
            )
        self._paused = True
        self._schedule_retry(self._retry_delay)
        self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    def _schedule_retry(self, delay: float) -> None:
        if self._retry_timer is not None:
            self.loop.clear_timeout(self._retry_timer)
        self._retry_timer = self.loop.timeout(RETRY_ACCEPT, delay)
