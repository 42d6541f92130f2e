"""Broadcast flow control: pace the sources to the receivers that keep up, cut off the stalled.

:class:`FlowControl` owns the pacing decision of a fan-out and the fate of
receivers that fall behind: which receivers hold the sources back, which
are lagging (no longer counted) and when a lagging one is disconnected, and
the queue of sources waiting for their turn to produce again.  It knows
receivers only as :class:`~metalio.apps.server.Conn` records (their
``queued`` byte count and the two pacing fields ``level`` and ``mark``) and
sources only as a key and a ``resume()`` callback: it never reads, writes,
or registers a socket.  :mod:`metalio.apps.broadcast` feeds it.

Theory of operation
-------------------
*Three limits per receiver*, all on the bytes queued for it (chunk lengths
plus per-chunk bookkeeping):

* the **high-water mark** (``soft_limit // 2``): a receiver above it
  *holds* the sources: while any receiver holds, no source is read (the
  fan-out is *paused*).  It stops holding at the **low-water mark**
  (``soft_limit // 8``), and when the last holder lets go the fan-out
  resumes.  Unread bytes stay in the senders' kernel buffers and TCP's
  window slows the senders down: a sender is paced to the receivers that
  keep up, and nothing is dropped.
* the **soft limit** (``--soft-buffer``): a receiver above it is *lagging*.
  It no longer counts for pacing, so it cannot hold everyone back, and it
  is disconnected if it has not caught up (to the low-water mark) within
  ``--slow-timeout`` seconds.  A receiver that holds the sources for
  *patience* seconds (``min(1 s, slow_timeout / 2)``) without draining to
  the low-water mark is stalled and becomes lagging as well, so a client
  that stops reading freezes the broadcast for at most that long.
* the **hard limit** (``--max-buffer``): a receiver above it is
  disconnected at once.

The crossings are cheap to detect: every receiver carries ``mark``, the
queue size whose crossing changes its state (the high-water mark while it
is normal, the soft limit while it holds, the hard limit while it lags),
so the fan-out's per-receiver cost is one comparison; the drain side
compares with the low-water mark only for receivers that hold or lag.

*Overshoot.*  A source stops between chunks, so a receiver that keeps up
holds at most ``high + chunk`` bytes; with the defaults (256 KiB soft
limit, 64 KiB reads) that stays under the soft limit, and a soft limit
below ``2 * chunk`` makes healthy receivers briefly lagging (harmless
unless it lasts ``--slow-timeout``).

*Sources and fairness.*  A source (a TCP sender, or a relay delivering
remote chunks through the same fan-out) asks :attr:`FlowControl.blocked`
before it reads; when it is set the source calls :meth:`FlowControl.wait`
with a ``resume`` callback and stops.  Waiting sources are resumed in the
order they stopped, one after the other, from the server's continuation
phase (after every I/O event of the iteration), until the fan-out pauses
again; a source stopped mid-turn goes to the back.  ``blocked`` stays set
while sources are waiting, so a newcomer queues behind them: one fast
sender cannot take every turn.  With edge triggers a source that stopped
has consumed its edge; it is resumed by this queue, never by a new edge.

*A second source: the relay.*  The relay of :mod:`metalio.apps.relay`
plugs in as one more source.  Its ``on_message`` hands each remote chunk
to the server's ``deliver(data)`` (queued and charged like a local chunk)
and then, if ``blocked`` is set, calls ``relay.pause_reading()`` and
``wait(relay, relay.resume_reading)``: the relay stops after that message
and is resumed in its turn like a TCP sender, so a node whose local
receivers are full stops reading the relay.  Redis then buffers for the
node, and past its ``client-output-buffer-limit pubsub`` it closes the
subscription, which the relay reports as a loss (``docs/relay.md``); with
the defaults a pause lasts only as long as the receivers that keep up
need to drain.  Outbound, ``relay.pending`` (bytes of ``PUBLISH`` not yet
written) may be charged like a receiver's queue (``queued``, ``level``,
``mark`` with :meth:`FlowControl.grew` and :meth:`FlowControl.drained`) so
that a slow link to Redis paces the local senders too.

*Memory.*  Receivers' queues hold shared chunks and each is a suffix of one
broadcast stream, so all queues together hold at most ``hard + chunk``
bytes of data however many receivers there are, plus per receiver at most
``hard / 64`` queue entries of bookkeeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Hashable

    from metalio import EventLoop
    from metalio.apps.server import Conn

__all__ = ["HOLDING", "LAGGING", "NORMAL", "PACE_PATIENCE", "FlowControl"]

NORMAL: Final = 0
"""Counted for pacing, under the high-water mark."""
HOLDING: Final = 1
"""Over the high-water mark: the sources wait for this receiver."""
LAGGING: Final = 2
"""Over the soft limit (or stalled): not counted, disconnected unless it catches up."""

PACE_PATIENCE: Final = 1.0
"""Longest a receiver may hold the sources before it counts as stalled (seconds)."""

_SLOW: Final = "metalio.apps.pacing:slow"
_WATCHDOG: Final = "metalio.apps.pacing:stalled?"


class FlowControl:
    """Pacing and slow-receiver policy of one fan-out.  See the module docstring.

    :param loop: the loop whose timer runs the slow timeouts.
    :param soft_limit: bytes over which a receiver lags (clamped to *hard_limit*).
    :param hard_limit: bytes over which a receiver is disconnected at once.
    :param slow_timeout: seconds a lagging receiver has to catch up.
    :param call_soon: runs a callback after this iteration's I/O events
        (:meth:`~metalio.apps.server.TcpServer.call_soon`).
    :param disconnect: closes a receiver, with a reason for the log.
    :param patience: seconds a receiver may hold the sources; default
        ``min(PACE_PATIENCE, slow_timeout / 2)``.
    :param log: where lagging and catching up are logged (debug level).
    :param clock: the clock of the holders' and laggers' deadlines; the
        loop's (``time.monotonic`` by default).
    :raises ValueError: a limit < 1, *slow_timeout* or *patience* not finite and > 0.
    """

    def __init__(
        self,
        loop: EventLoop,
        *,
        soft_limit: int,
        hard_limit: int,
        slow_timeout: float,
        call_soon: Callable[[Callable[[], None]], None],
        disconnect: Callable[[Conn, str], None],
        log: logging.Logger,
        patience: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if hard_limit < 1 or soft_limit < 1:
            raise ValueError(f"buffer limits must be >= 1, got {soft_limit} and {hard_limit}")
        if not 0 < slow_timeout < math.inf:
            raise ValueError(f"slow_timeout must be a finite number > 0, got {slow_timeout}")
        if patience is None:
            patience = min(PACE_PATIENCE, slow_timeout / 2)
        if not 0 < patience < math.inf:
            raise ValueError(f"patience must be a finite number > 0, got {patience}")
        self.loop = loop
        self.hard = hard_limit
        self.soft = min(soft_limit, hard_limit)
        self.high = max(self.soft // 2, 1)
        self.low = self.soft // 8
        self.slow_timeout = float(slow_timeout)
        self.patience = float(patience)
        self.log = log
        self._call_soon = call_soon
        self._disconnect = disconnect
        self._clock = clock
        self.paused = False
        """Some receiver holds the sources: none may read."""
        self.blocked = False
        """``paused``, or sources are waiting for their turn: a source must not read now."""
        self._holders: dict[Conn, float] = {}  # receiver -> when it started holding
        # Lagging receivers -> (generation, why); their deadlines in one queue,
        # oldest first (one slow timeout for all, so start order is deadline
        # order), served by one timer: no timer per receiver, nothing to cancel.
        self._laggers: dict[Conn, tuple[int, str]] = {}
        self._deadlines: deque[tuple[float, int, Conn]] = deque()
        self._generation = 0
        self._sweeper: Any = None
        self._waiting: deque[tuple[Hashable, Callable[[], None]]] = deque()
        self._waiting_keys: set[Hashable] = set()
        self._resume_scheduled = False
        self._watchdog: Any = None
        self.pauses = 0
        """How many times the fan-out paused."""
        self.resumes = 0
        """How many sources were resumed after waiting."""

    # -- receivers -------------------------------------------------------------

    def admit(self, conn: Conn) -> None:
        """A new receiver: normal, counted for pacing."""
        conn.level = NORMAL
        conn.mark = self.high

    def grew(self, conn: Conn) -> bool:
        """*conn*'s queue passed its ``mark``; ``True`` if it is over the hard limit."""
        queued = conn.queued
        if conn.level == NORMAL:
            if queued <= self.soft:
                self._hold(conn)
                return False
            self._lag(conn, f"over the {self.soft}-byte soft limit (--soft-buffer)")
        elif conn.level == HOLDING:
            self._release(conn)
            self._lag(conn, f"over the {self.soft}-byte soft limit (--soft-buffer)")
        return queued > self.hard

    def hard_limit_reason(self) -> str:
        """The log's reason for a disconnect at the hard limit."""
        return f"slow reader: send queue over the {self.hard}-byte hard limit (--max-buffer)"

    def drained(self, conn: Conn) -> None:
        """*conn* (holding or lagging) drained to the low-water mark: normal again."""
        if conn.level == HOLDING:
            self._release(conn)
        elif conn.level == LAGGING:
            del self._laggers[conn]
            self.log.debug(
                "client %d (%s) caught up: counted for pacing again", conn.token, conn.addr
            )
        conn.level = NORMAL
        conn.mark = self.high

    def forget(self, conn: Conn) -> None:
        """*conn* is closing."""
        if conn.level == HOLDING:
            self._release(conn)
        elif conn.level == LAGGING:
            del self._laggers[conn]
        conn.level = NORMAL
        self._waiting_keys.discard(conn)

    def lagging(self) -> int:
        """Receivers now lagging."""
        return len(self._laggers)

    def _hold(self, conn: Conn) -> None:
        conn.level = HOLDING
        conn.mark = self.soft
        self._holders[conn] = self._clock()
        if not self.paused:
            self.paused = self.blocked = True
            self.pauses += 1
            if self._watchdog is None:
                self._watchdog = self.loop.timeout(_WATCHDOG, self.patience)

    def _release(self, conn: Conn) -> None:
        del self._holders[conn]
        if not self._holders:
            self.paused = False
            self._schedule_resume()

    def _lag(self, conn: Conn, why: str) -> None:
        conn.level = LAGGING
        conn.mark = self.hard
        self._generation += 1
        self._laggers[conn] = (self._generation, why)
        self._deadlines.append((self._clock() + self.slow_timeout, self._generation, conn))
        if self._sweeper is None:
            self._sweeper = self.loop.timeout(_SLOW, self.slow_timeout)
        self.log.debug(
            "client %d (%s) lagging, %s: not counted for pacing; %g s to catch up",
            conn.token,
            conn.addr,
            why,
            self.slow_timeout,
        )

    # -- timers ----------------------------------------------------------------

    def on_timeout(self, payload: object) -> bool:
        """Handle a timeout of this object's; ``False`` if *payload* is not one."""
        if payload == _WATCHDOG:
            self._watchdog = None
            self._check_stalled()
            return True
        if payload == _SLOW:
            self._sweeper = None
            self._sweep()
            return True
        return False

    def _sweep(self) -> None:
        now = self._clock()
        deadlines = self._deadlines
        while deadlines:
            deadline, generation, conn = deadlines[0]
            entry = self._laggers.get(conn)
            if entry is None or entry[0] != generation:
                deadlines.popleft()  # caught up or closed since (or lagging anew)
                continue
            if deadline > now:
                break
            deadlines.popleft()
            self._disconnect(
                conn,
                f"slow reader: {entry[1]}, not caught up within {self.slow_timeout:g} s "
                "(--slow-timeout)",
            )
        if deadlines:
            self._sweeper = self.loop.timeout(_SLOW, max(deadlines[0][0] - now, 0.0))

    def _check_stalled(self) -> None:
        if not self._holders:
            return
        now = self._clock()
        # A holder that had `patience` seconds with nothing new queued for it and
        # did not drain to the low-water mark is not reading: let the others go on.
        stalled = [c for c, since in self._holders.items() if now - since >= self.patience]
        for conn in stalled:
            self._release(conn)
            self._lag(conn, f"held the senders back for {self.patience:g} s (stalled)")
        if self._holders:
            first = min(self._holders.values())
            self._watchdog = self.loop.timeout(_WATCHDOG, max(first + self.patience - now, 0.0))

    # -- sources ---------------------------------------------------------------

    def wait(self, key: Hashable, resume: Callable[[], None]) -> None:
        """Source *key* stopped because of :attr:`blocked`; call *resume* on its turn.

        A key already waiting keeps its place.  *resume* is called once, from
        the continuation phase, when the fan-out runs again and every source
        that stopped before it has had its turn; during the call
        :attr:`blocked` is clear until the fan-out pauses again, so the
        source reads until it sees :attr:`blocked` set (and then waits again).
        """
        if key in self._waiting_keys:
            return
        self._waiting_keys.add(key)
        self._waiting.append((key, resume))
        self.blocked = True
        if not self.paused:
            self._schedule_resume()

    def _schedule_resume(self) -> None:
        if not self._waiting:
            self.blocked = self.paused
        elif not self._resume_scheduled:
            self._resume_scheduled = True
            self._call_soon(self._resume_sources)

    def _resume_sources(self) -> None:
        # _resume_scheduled stays set meanwhile, so a source stopping during
        # its turn is queued at the back, not scheduled a second time.  One
        # pass serves the sources waiting when it started; more waiting and
        # the fan-out still running means another pass in the next iteration.
        waiting = self._waiting
        keys = self._waiting_keys
        for _ in range(len(waiting)):
            if self.paused:
                break
            key, resume = waiting.popleft()
            if key not in keys:  # forgotten (closed) while it waited
                continue
            keys.discard(key)
            self.resumes += 1
            self.blocked = False  # its turn: it reads until the fan-out pauses
            resume()
        self._resume_scheduled = False
        self.blocked = self.paused or bool(waiting)
        if waiting and not self.paused:
            self._schedule_resume()
