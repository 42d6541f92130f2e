"""The Redis pub/sub relay: broadcast chunks between nodes on one ``EventLoop``.

This module owns the relay's policy: two connections to Redis and their life
cycle, publishing through a bounded buffer, reading the subscription,
pausing it, losing Redis and reconnecting.  The wire formats and the single
connection are :mod:`metalio.apps.resp`'s and :mod:`metalio.apps.redis_conn`'s;
what arrives on the subscription (other nodes' chunks, their sequence gaps)
is :mod:`metalio.apps.relay_inbound`'s.  It knows nothing of the
broadcast server's clients: a server hands two tokens and the relay's timers
to a :class:`Relay` and gets other nodes' chunks back through a callback.
``docs/relay.md`` has the guarantees and the envelope.

Theory of operation
-------------------
*Two connections*, because a subscribed connection takes no ``PUBLISH``.
Both are ``EDGE``-registered ``TcpStream``\\ s drained with ``try_*``; the
relay is *up* when both finished their handshake, and any failure closes
both, since a half relay would hide its loss.

*Publishing never waits.*  :meth:`Relay.publish` appends one ``PUBLISH`` to
a bounded buffer (``max_pending``) and writes at once; the rest goes on the
next writable edge.  A chunk that does not fit, or comes while the relay is
down, is dropped and counted, so delivery across nodes is at-most-once; its
sequence number is used all the same, so receivers see the gap.

*No re-entry.*  Reads are budgeted per edge (``read_budget``); leftovers,
a resumed subscription and failures found inside ``publish`` continue from a
zero-delay timer of the relay's.  ``on_message`` and ``on_loss`` are called
only from :meth:`Relay.ready` and :meth:`Relay.timeout`.

*Pausing* the subscription leaves Redis buffering for this node; past its
``client-output-buffer-limit pubsub`` (32 MB, or 8 MB for 60 s, by
default) Redis closes the connection, which is seen as a loss on resuming.

*Loss.*  Logged once, ``on_loss`` called, then retries after a jittered
exponential back-off (0.1 s doubling to 5 s), each attempt bounded by
``connect_timeout``; each distinct failure is logged once per outage, the
repeats at DEBUG; once back, the log says how long it was cut off.  A
failed attempt always waits for a timer: nothing spins.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from . import resp
from .redis_conn import Connection
from .relay_inbound import Inbound
from .resp import UP, ConnectionLost, ReplyError, short

if TYPE_CHECKING:
    from collections.abc import Callable

    from metalio import EventLoop, Ready, Timeout

__all__ = ["DEFAULT_MAX_PENDING", "RELAY_TOKENS", "Relay", "RelayStats"]

RELAY_TOKENS: Final = (1 << 62, (1 << 62) + 1)
"""Default tokens (publishing, subscribed): far above any Slab key a server hands out."""
DEFAULT_MAX_PENDING: Final = 4 << 20
"""Bytes of unsent ``PUBLISH`` commands held before chunks are dropped (4 MiB)."""

_READ_SIZE: Final = 1 << 16
_REASONS: Final = 8  # distinct failure reasons logged loudly per outage; the rest at DEBUG
_WRITABLE: Final = 2
_READ_ANY: Final = 1 | 8 | 16  # READABLE | ERROR | READ_CLOSED


@dataclass
class RelayStats:
    """Counters of a :class:`Relay` (exact on the loop's thread)."""

    published: int = 0  # chunks accepted into the outgoing buffer
    dropped: int = 0  # chunks not relayed: the relay was down or the buffer full
    dropped_bytes: int = 0
    received: int = 0  # chunks of other nodes handed to on_message
    own: int = 0  # this node's own messages seen on the channel (skipped)
    foreign: int = 0  # messages on the channel that are not relay envelopes (ignored)
    missed: int = 0  # chunks of other nodes known to be missing (sequence gaps)
    losses: int = 0  # times the relay went from up to down
    attempts: int = 0  # connection attempts (each opens both connections)
    publish_errors: int = 0  # error replies to PUBLISH


class _Timer(NamedTuple):
    """A relay timer payload; identity tells a live timer from a cancelled one."""

    relay: Relay
    kind: str


class Relay:
    """A Redis pub/sub relay for one node.  See the module docstring.

    Made on the loop's thread (or before the loop runs), it starts
    connecting at once.  The owning ``Handler`` forwards ``ready`` for the
    tokens :meth:`owns_token` claims and ``timeout`` for the payloads
    :meth:`owns_payload` claims, and calls :meth:`close` at the end.

    :param loop: the loop both connections and the timers live on.
    :param url: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/CHANNEL]``.
    :param on_message: ``on_message(node_id, client_id, data)`` for each chunk
        of another node, in that node's order; *data* is a read-only
        ``memoryview`` over an immutable ``bytes`` (it may be kept).
    :param node_id: this node's name, 1..255 UTF-8 bytes, unique among the
        nodes (default: host name, pid and random bits).
    :param on_loss: ``on_loss(reason)`` when relayed data may have been
        missed: the relay was lost, or another node's sequence has a gap.
    :param logger: where the relay logs (default ``metalio.relay``).
    :param tokens: the (publishing, subscribed) tokens, distinct.
    :param max_pending: bytes of unsent commands held before dropping chunks.
    :param backoff: the first and the longest delay between attempts, seconds.
    :param connect_timeout: seconds an attempt may take to be up.
    :param read_budget: reads per readable edge before yielding to others.
    :raises RelayUnavailable: hiredis is missing (an ``ImportError``).
    :raises TypeError, ValueError: a bad URL, node id or setting.
    :raises OSError: a socket could not be registered with the loop.
    """

    def __init__(
        self,
        loop: EventLoop,
        url: str,
        *,
        on_message: Callable[[str, int, memoryview], object],
        node_id: str | None = None,
        on_loss: Callable[[str], object] | None = None,
        logger: logging.Logger | None = None,
        tokens: tuple[int, int] = RELAY_TOKENS,
        max_pending: int = DEFAULT_MAX_PENDING,
        backoff: tuple[float, float] = (0.1, 5.0),
        connect_timeout: float = 5.0,
        read_budget: int = 16,
    ) -> None:
        self._make_reader = resp.reader_factory()  # first: a missing extra is the clearest error
        self.url = resp.parse_url(url)
        if node_id is None:
            node_id = f"{socket.gethostname()[:200]}-{os.getpid()}-{os.urandom(4).hex()}"
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a str, not {type(node_id).__name__}")
        self._node = node_id.encode()
        self._header = resp.envelope_header(self._node)
        if len(tokens) != 2 or tokens[0] == tokens[1]:
            raise ValueError(f"tokens must be two distinct tokens, got {tokens!r}")
        if not 0 < backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be 0 < first <= longest, got {backoff!r}")
        if max_pending < 1 or read_budget < 1 or not connect_timeout > 0:
            raise ValueError("max_pending and read_budget must be >= 1, connect_timeout > 0")
        self.node_id = node_id
        self.stats = RelayStats()
        self._loop = loop
        self._on_loss = on_loss
        self._log = logger or logging.getLogger("metalio.relay")
        self._pub = Connection("publish", tokens[0])
        self._sub = Connection("subscribe", tokens[1])
        self._more: set[Connection] = set()  # reads left over from a spent budget
        self._max_pending = max_pending
        self._backoff = (float(backoff[0]), float(backoff[1]))
        self._delay = self._backoff[0]
        self._connect_timeout = float(connect_timeout)
        self._read_budget = read_budget
        self._buf = bytearray(_READ_SIZE)
        self._channel = self.url.channel.encode()
        self._prefix = resp.publish_prefix(self._channel)
        self._subscribe = resp.command("SUBSCRIBE", self._channel)
        self._overhead = len(self._prefix) + len(self._header) + 16 + 16
        self._seq = 0
        self._inbound = Inbound(self._node, self.stats, self._log, on_message, on_loss)
        self._random = random.Random()
        self._up = self._closed = self._paused = self._ever_up = False
        self._overflowing = self._publish_error_logged = False
        self._down_since: float | None = None
        self._dropped_at_loss = 0
        self._reasons: set[str] = set()  # logged loudly during this outage
        self._timers: dict[str, tuple[_Timer, Timeout]] = {}
        self._failure: str | None = None  # found where failing at once would re-enter
        self._where = self.url.redacted()
        self._log.info("relay: node %s joining %s", node_id, self._where)
        self._connect()

    # -- the server's side ------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether both connections are up (chunks are being relayed)."""
        return self._up

    @property
    def pending(self) -> int:
        """Bytes of ``PUBLISH`` commands not yet written (at most ``max_pending``)."""
        return len(self._pub.out)

    @property
    def paused(self) -> bool:
        """Whether reading the subscription is paused."""
        return self._paused

    def owns_token(self, token: int) -> bool:
        """Whether *token* is one of the relay's two."""
        return token == self._pub.token or token == self._sub.token

    def owns_payload(self, payload: object) -> bool:
        """Whether a timer *payload* is this relay's."""
        return type(payload) is _Timer and payload.relay is self

    def publish(self, client_id: int, data: bytes | bytearray | memoryview) -> bool:
        """Relay one chunk of *client_id* (copied); never blocks, never fails the caller.

        ``False`` means it was dropped (relay down, buffer full, or closed)
        and counted in ``stats.dropped``.

        :raises TypeError: *client_id* is not an ``int`` or *data* not
            bytes-like (nothing is queued).
        """
        seq = self._seq
        size = len(data)
        out = self._pub.out
        if not self._up or self._failure or len(out) + size + self._overhead > self._max_pending:
            self._seq = seq + 1  # a dropped chunk uses its number too: receivers see the gap
            self.stats.dropped += 1
            self.stats.dropped_bytes += size
            if self._up and not self._failure and not self._overflowing:
                self._overflowing = True
                self._log.warning("relay: outgoing buffer full: dropping chunks for the relay")
            return False
        mark = len(out)
        try:
            out += self._prefix
            out += b"$%d\r\n" % (len(self._header) + 16 + size)
            out += self._header
            out += resp.pack_ids(client_id, seq)
            out += data
            out += b"\r\n"
        except BaseException:
            del out[mark:]  # a bad argument queues nothing
            raise
        self._seq = seq + 1
        self.stats.published += 1
        if not mark:
            try:
                self._pub.write()
            except ConnectionLost as exc:
                # Not now: failing calls on_loss, and the caller is mid-broadcast.
                self._failure = str(exc)
                self._set_timer("fail", 0)
        return True

    def pause_reading(self) -> None:
        """Stop reading the subscription (see *Pausing* in the module docstring)."""
        self._paused = True

    def resume_reading(self) -> None:
        """Read the subscription again; what waited is delivered from a timer, in order."""
        if self._paused:
            self._paused = False
            if self._sub.stream is not None:
                self._more.add(self._sub)
                self._set_timer("continue", 0)

    def ready(self, token: int, ready: Ready) -> None:
        """Handle readiness of one of the relay's tokens (from ``Handler.ready``)."""
        link = self._pub if token == self._pub.token else self._sub
        if link.stream is None or self._failure is not None:
            return  # a stale event of a closed connection, or a failure is due
        r = int(ready)
        try:
            if link.connecting:
                if not link.connected():
                    return
            elif r & _WRITABLE and link.out:
                link.write()
                if self._overflowing and link is self._pub and not link.out:
                    self._overflowing = False
                    self._log.info("relay: outgoing buffer drained; relaying again")
        except ConnectionLost as exc:
            self._fail(str(exc), exc.level)
            return
        if r & _READ_ANY:
            self._read(link)

    def timeout(self, payload: object) -> None:
        """Handle one of the relay's timers (from ``Handler.timeout``)."""
        if type(payload) is not _Timer or payload.relay is not self or self._closed:
            return
        kind = payload.kind
        live = self._timers.get(kind)
        if live is None or live[0] is not payload:
            return  # cancelled after it was already due
        del self._timers[kind]
        if kind == "reconnect":
            self._connect()
        elif kind == "deadline":
            self._fail(f"not up within {self._connect_timeout:g} s (no answer from Redis)")
        elif kind == "fail":
            if self._failure is not None:
                self._fail(self._failure)
        else:  # continue
            more, self._more = self._more, set()
            for link in (self._pub, self._sub):
                if link in more:
                    self._read(link)

    def close(self) -> None:
        """Close both connections and cancel the timers.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._up = False
        self._pub.close(self._loop)
        self._sub.close(self._loop)
        for _, timeout in self._timers.values():
            self._loop.clear_timeout(timeout)
        self._timers.clear()
        self._log.info("relay: closed (%s)", self.stats)

    # -- connecting and failing -------------------------------------------------

    def _connect(self) -> None:
        self.stats.attempts += 1
        self._failure = None
        self._more.clear()
        auth: list[tuple[str, bytes]] = []
        url = self.url
        if url.password is not None:
            args = (url.username, url.password) if url.username else (url.password,)
            auth.append(("auth", resp.command("AUTH", *args)))
        try:
            pub, sub = ("ping", resp.command("PING")), ("subscribe", self._subscribe)
            self._pub.open(self._loop, url.address, self._make_reader(), [*auth, pub])
            self._sub.open(self._loop, url.address, self._make_reader(), [*auth, sub])
        except ConnectionLost as exc:
            self._fail(str(exc), exc.level)
            return
        except BaseException:
            self._pub.close(self._loop)
            raise
        self._set_timer("deadline", self._connect_timeout)

    def _became_up(self) -> None:
        self._up = True
        self._delay = self._backoff[0]
        self._reasons.clear()
        self._cancel_timer("deadline")
        self._inbound.forget_sequences()  # a gap across our own outage was reported as the loss
        if not self._ever_up:
            self._ever_up = True
            self._log.info("relay: up on %s (attempt %d)", self._where, self.stats.attempts)
        elif self._down_since is not None:
            cut = time.monotonic() - self._down_since
            dropped = self.stats.dropped - self._dropped_at_loss
            msg = "relay: back on %s after %.2f s cut off (%d chunks not relayed)"
            self._log.warning(msg, self._where, cut, dropped)
        self._down_since = None

    def _fail(self, reason: str, level: int = logging.WARNING) -> None:
        """Close both connections and retry after the back-off."""
        self._pub.close(self._loop)
        self._sub.close(self._loop)
        self._more.clear()
        self._failure = None
        self._overflowing = False
        self._cancel_timer("deadline")
        self._cancel_timer("fail")
        self._cancel_timer("continue")
        delay = self._random.uniform(self._delay / 2, self._delay)
        self._delay = min(self._delay * 2, self._backoff[1])
        self._set_timer("reconnect", delay)
        if self._up:
            self._up = False
            self.stats.losses += 1
            self._down_since = time.monotonic()
            self._dropped_at_loss = self.stats.dropped
            self._reasons.add(reason)
            self._log.warning(
                "relay: lost %s: %s; serving local clients only, reconnecting", self._where, reason
            )
            if self._on_loss is not None:
                self._on_loss(f"relay lost: {reason}")
        elif reason not in self._reasons and len(self._reasons) < _REASONS:
            self._reasons.add(reason)
            self._log.log(level, "relay: %s: %s; retrying in %.2f s", self._where, reason, delay)
        else:
            self._log.debug("relay: %s again; retrying in %.2f s", reason, delay)

    # -- reading ----------------------------------------------------------------

    def _read(self, link: Connection) -> None:
        """Handle what *link* has, within the budget; leftovers continue from a timer."""
        budget = self._read_budget
        sub = link is self._sub
        try:
            while link.stream is not None:
                if sub and self._paused and link.up:  # a handshake is finished even so
                    return
                reply = link.get()
                if reply is False:
                    if budget == 0:
                        self._more.add(link)
                        self._set_timer("continue", 0)
                        return
                    budget -= 1
                    if not link.fill(self._buf):
                        return
                elif reply is UP:
                    if self._pub.up and self._sub.up:
                        self._became_up()
                elif sub:
                    self._inbound.push(reply)
                elif isinstance(reply, ReplyError):
                    self.stats.publish_errors += 1
                    if not self._publish_error_logged:
                        self._publish_error_logged = True
                        self._log.warning("relay: Redis refused a PUBLISH: %s (logged once)", reply)
                elif not isinstance(reply, int):
                    raise ConnectionLost(f"unexpected answer to PUBLISH: {short(reply)}")
        except ConnectionLost as exc:
            self._fail(str(exc), exc.level)
        except BaseException:
            # on_message raised: what is still buffered must not wait for an edge.
            if link.stream is not None:
                self._more.add(link)
                self._set_timer("continue", 0)
            raise

    # -- timers -----------------------------------------------------------------

    def _set_timer(self, kind: str, delay: float) -> None:
        if kind in self._timers:
            if delay == 0:
                return  # an immediate one is already due
            self._cancel_timer(kind)
        payload = _Timer(self, kind)
        self._timers[kind] = (payload, self._loop.timeout(payload, delay))

    def _cancel_timer(self, kind: str) -> None:
        live = self._timers.pop(kind, None)
        if live is not None:
            self._loop.clear_timeout(live[1])
