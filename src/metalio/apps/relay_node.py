"""A broadcast node on a Redis relay: the glue between the broadcast server and the relay.

This module owns how one broadcast server becomes a node of a relayed
broadcast (``metalio broadcast --relay``): what it publishes, how relayed
chunks reach its clients, when it stops reading the relay, what it does
when relayed data was lost (``--relay-loss``), and starting one node on a
listener that may share its port with other workers (``SO_REUSEPORT``),
or N of them (:func:`serve_workers`).
The broadcast rules are :mod:`metalio.apps.broadcast`'s and
:mod:`metalio.apps.pacing`'s, the Redis side :mod:`metalio.apps.relay`'s;
running several workers is :mod:`metalio.apps.workers`'s.

Theory of operation
-------------------
*Out.*  Every chunk read from a local client is handed to
``relay.publish`` from the server's ``on_read`` hook, after the chunk's
local fan-out: local delivery never waits for Redis, and a chunk the relay
cannot take (down, buffer full) is lost for the other nodes only.

*In.*  A chunk of another node goes through ``server.deliver()``: it is
queued, charged and paced exactly like a local chunk (soft and hard limits
included).  After each one the node asks ``flow.blocked``; when it is set
the relay stops reading (``pause_reading``) and waits for its turn like a
paced sender (``flow.wait``), which resumes it with ``resume_reading``.

*Out, paced.*  The relay's unsent ``PUBLISH`` bytes (``relay.pending``)
are charged to the flow control like one more receiver's queue (a
:class:`~metalio.apps.server.Conn` record with no socket, the *gauge*):
over the high-water mark the local senders stop being read until Redis has
taken the backlog, so a fast local sender is paced to the link to Redis
instead of overflowing the relay's buffer.  Like a receiver, a link that
holds the senders for the pacing patience without draining (Redis stuck,
or gone unnoticed) stops counting: from then on chunks that do not fit
are dropped for the relay, and it counts again once it has drained.

*Loss.*  The relay calls ``on_loss`` when this node may have missed
relayed chunks (the relay was lost, or another node's sequence jumped).
With ``keep`` (the default) clients stay connected and the log says so;
with ``close`` every local client connected at that moment is
disconnected, the reason in the log, so no client sees a silent hole.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from metalio.apps.broadcast import BroadcastServer
from metalio.apps.relay import Relay
from metalio.apps.server import Conn
from metalio.apps.startup import format_addr, resolve_address, run_server

if TYPE_CHECKING:
    from metalio import EventLoop, Ready
    from metalio.net import TcpListener

__all__ = ["RELAY_LOSS", "RelayedBroadcastServer", "check_relay", "serve_node", "serve_workers"]

RELAY_LOSS: Final = ("keep", "close")
"""What a node does about its clients when relayed data was lost."""


def _gauge() -> Conn:
    """A receiver record for the relay's outgoing buffer: only the pacing fields are used."""
    gauge = Conn.__new__(Conn)  # no stream: it is never read, written or dropped
    gauge.addr, gauge.token, gauge.queued = "the relay's link to Redis", 0, 0
    gauge.closed = gauge.eof = gauge.writing = False
    gauge.queue = None
    gauge.level, gauge.mark = 0, sys.maxsize
    return gauge


def check_relay(url: str) -> None:
    """Check, before anything starts, that a relay on *url* can be made.

    :raises RelayUnavailable: hiredis is missing (the message names the extra).
    :raises ValueError: a bad URL (the message says what is wrong).
    """
    from metalio.apps import resp

    resp.reader_factory()
    resp.parse_url(url)


class RelayedBroadcastServer(BroadcastServer):
    """A :class:`~metalio.apps.broadcast.BroadcastServer` that is a node of a relay.

    :param relay: the relay URL, ``redis://[[USER]:PASSWORD@]HOST[:PORT][/CHANNEL]``.
    :param relay_loss: ``"keep"`` or ``"close"`` (see the module docstring).
    :param node_id: this node's name on the channel (default: host, pid, random).
    :param relay_options: passed on to :class:`~metalio.apps.relay.Relay`.
    :param options: passed on to :class:`~metalio.apps.broadcast.BroadcastServer`.
    :raises RelayUnavailable: hiredis is missing.
    :raises ValueError: a bad URL, *relay_loss* or limit.
    :raises OSError: the listener or a relay socket cannot be registered.
    """

    def __init__(
        self,
        loop: EventLoop,
        listener: TcpListener,
        *,
        relay: str,
        relay_loss: str = "keep",
        node_id: str | None = None,
        relay_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if relay_loss not in RELAY_LOSS:
            raise ValueError(f"relay_loss must be one of {RELAY_LOSS}, got {relay_loss!r}")
        super().__init__(loop, listener, **options)
        self.relay_loss = relay_loss
        try:
            self.relay = Relay(
                loop,
                relay,
                on_message=self._relayed,
                on_loss=self._lost,
                node_id=node_id,
                logger=self.log.getChild("relay"),
                **(relay_options or {}),
            )
        except BaseException:
            super().close()
            raise
        self._waiting = False
        self._gauge = _gauge()
        self.flow.admit(self._gauge)
        self.on_read = self._publish

    # -- out and in ------------------------------------------------------------

    def _publish(self, conn: Conn, chunk: memoryview) -> None:
        self.relay.publish(conn.token, chunk)
        self._charge()

    def _charge(self) -> None:
        """Charge the relay's unsent bytes to the flow control (see *Out, paced*)."""
        gauge = self._gauge
        pending = gauge.queued = self.relay.pending
        if pending > gauge.mark:
            self.flow.grew(gauge)  # over the hard limit too: the relay drops, not us
        elif gauge.level and pending <= self.flow.low:
            self.flow.drained(gauge)

    def _disconnect_slow(self, conn: Conn, why: str) -> None:
        if conn is not self._gauge:
            super()._disconnect_slow(conn, why)
            return
        # The link to Redis did not catch up: it is not a client to disconnect.
        # The relay drops what does not fit; count the link again from scratch.
        self.log.warning("relay: the link to Redis is behind (%s); chunks may be dropped", why)
        self.flow.forget(conn)
        self.flow.admit(conn)

    def _relayed(self, node_id: str, client_id: int, data: memoryview) -> None:
        self.deliver(data)
        if self.flow.blocked and not self._waiting:
            # Local receivers are full: stop after this message, resume in turn.
            self._waiting = True
            self.relay.pause_reading()
            self.flow.wait(self.relay, self._resume_relay)

    def _resume_relay(self) -> None:
        self._waiting = False
        self.relay.resume_reading()

    def _lost(self, reason: str) -> None:
        clients = list(self.connections())
        if self.relay_loss == "close":
            self.log.warning(
                "relay loss (%s): closing %d local client%s (--relay-loss close)",
                reason,
                len(clients),
                "" if len(clients) == 1 else "s",
            )
            for conn in clients:
                self.drop(conn, f"relay loss: {reason}", logging.INFO)
        else:
            self.log.warning(
                "relay loss (%s): %d local client%s kept; they may miss relayed data "
                "(--relay-loss keep)",
                reason,
                len(clients),
                "" if len(clients) == 1 else "s",
            )

    # -- events ----------------------------------------------------------------

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        relay = self.relay
        if relay.owns_token(token):
            relay.ready(token, ready)
            self._charge()
        else:
            super().ready(loop, token, ready)

    def timeout(self, loop: EventLoop, payload: object) -> None:
        relay = self.relay
        if relay.owns_payload(payload):
            relay.timeout(payload)
            self._charge()
        else:
            super().timeout(loop, payload)

    def close(self) -> None:
        if not self._closed:
            self.relay.close()
        super().close()


def serve_node(
    host: str,
    port: int,
    *,
    relay: str | None = None,
    reuse_port: bool = False,
    backend: str | None = None,
    backlog: int = 1024,
    on_listening: Callable[[BroadcastServer], None] | None = None,
    handle_signals: bool = True,
    **options: Any,
) -> None:
    """Run one broadcast node (relayed if *relay* is given) until a signal or ``stop()``.

    Like :func:`metalio.apps.broadcast.serve`, with the listener bound with
    ``SO_REUSEPORT`` when *reuse_port* is set (the workers of one port).
    Everything is closed on return.

    :raises OSError: the address does not resolve or cannot be bound.
    :raises ValueError: an unknown backend, a bad option or relay URL.
    :raises RelayUnavailable: *relay* is given and hiredis is missing.
    """
    server_type: Callable[..., BroadcastServer] = BroadcastServer
    if relay is not None:
        server_type = partial(RelayedBroadcastServer, relay=relay)
    run_server(
        server_type,
        host,
        port,
        backend=backend,
        backlog=backlog,
        reuse_port=reuse_port,
        on_listening=on_listening,  # type: ignore[arg-type]
        handle_signals=handle_signals,
        **options,
    )


def serve_workers(
    count: int, host: str, port: int, *, logger: logging.Logger, **options: Any
) -> int:
    """Run *count* nodes as worker processes on one port; return the exit status.

    The port is held in this process first (so port 0 is one port for all);
    ``listening on HOST:PORT`` is printed once every worker listens; each
    worker logs ``worker I (pid P) listening on HOST:PORT``.  See
    :mod:`metalio.apps.workers` for signals and dying workers.

    :raises OSError: the address does not resolve or cannot be bound.
    :raises ValueError: no ``SO_REUSEPORT`` on this platform, *count* < 1.
    """
    from metalio.apps.workers import hold_port, supervise

    with hold_port(resolve_address(host, port)) as held:
        addr = held.getsockname()
        host, port = str(addr[0]), int(addr[1])

        def worker(index: int, ready: Callable[[], None]) -> int:
            def listening(server: BroadcastServer) -> None:
                where = format_addr(server.address)
                logger.info("worker %d (pid %d) listening on %s", index, os.getpid(), where)
                ready()

            try:
                serve_node(
                    host, port, reuse_port=True, on_listening=listening, logger=logger, **options
                )
            except OSError as exc:
                where = format_addr((host, port))
                print(f"metalio broadcast: worker {index}: cannot serve on {where}: {exc}",
                      file=sys.stderr)  # fmt: skip
                return 1
            return 0

        def announce() -> None:
            print(f"listening on {format_addr((host, port))}", flush=True)

        return supervise(count, worker, on_listening=announce, log=logger)
