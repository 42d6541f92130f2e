"""What arrives on the relay's subscription: other nodes' chunks, in order, and their gaps.

Owns: telling a relay envelope from the rest of the channel's traffic
(pub/sub bookkeeping pushes, this node's own messages, foreign messages),
the last sequence number seen per remote node and the gaps between them,
and handing each chunk to ``on_message``.  Must not know: the connections,
publishing, or reconnecting (:mod:`metalio.apps.relay`).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Final

from . import resp
from .resp import ConnectionLost, short

if TYPE_CHECKING:
    from collections.abc import Callable

    from .relay import RelayStats

__all__ = ["Inbound"]

_SEEN_NODES: Final = 4096  # remote nodes whose sequence numbers are tracked
_GAP_LOG_EVERY: Final = 10.0  # seconds between WARNING lines about gaps


class Inbound:
    """The subscribed connection's pushes, for one node (see the module docstring).

    :param node: this node's id, whose own messages are skipped.
    :param stats: the relay's counters (``received``, ``own``, ``foreign``, ``missed``).
    :param on_message: ``on_message(node_name, client_id, data)`` per chunk.
    :param on_loss: ``on_loss(reason)`` when a node's sequence has a gap.
    """

    def __init__(
        self,
        node: bytes,
        stats: RelayStats,
        log: logging.Logger,
        on_message: Callable[[str, int, memoryview], object],
        on_loss: Callable[[str], object] | None,
    ) -> None:
        self._node = node
        self.stats = stats
        self._log = log
        self._on_message = on_message
        self._on_loss = on_loss
        self._seen: dict[bytes, int] = {}
        self._names: dict[bytes, str] = {}
        self._foreign_logged = False
        self._gap_logged_at = -_GAP_LOG_EVERY

    def forget_sequences(self) -> None:
        """The relay was lost: whatever was missed meanwhile was reported as the loss."""
        self._seen.clear()

    def push(self, reply: Any) -> None:
        """One push on the subscribed connection.

        :raises ConnectionLost: it is not a pub/sub push.
        """
        if not (isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message"):
            if isinstance(reply, list) and reply[:1] in ([b"subscribe"], [b"pong"]):
                return
            raise ConnectionLost(f"unexpected push on the subscribed connection: {short(reply)}")
        payload = reply[2]
        parsed = resp.decode_envelope(payload) if isinstance(payload, bytes) else None
        if parsed is None:
            self.stats.foreign += 1
            if not self._foreign_logged:
                self._foreign_logged = True
                self._log.warning(
                    "relay: ignoring a message that is not a metalio relay message (%s); "
                    "further ones are counted, not logged",
                    short(payload),
                )
            return
        node, client_id, seq, data = parsed
        if node == self._node:
            self.stats.own += 1
            return
        name = self._names.get(node)
        if name is None:
            if len(self._names) >= _SEEN_NODES:  # many nodes came and went: start afresh
                self._names.clear()
                self._seen.clear()
            name = self._names[node] = node.decode(errors="replace")
        last = self._seen.get(node)
        self._seen[node] = seq
        if last is not None and seq > last + 1:
            self._gap(name, seq - last - 1)
        self.stats.received += 1
        self._on_message(name, client_id, data)

    def _gap(self, name: str, missed: int) -> None:
        self.stats.missed += missed
        now = time.monotonic()
        level = logging.DEBUG
        if now - self._gap_logged_at >= _GAP_LOG_EVERY:
            self._gap_logged_at = now
            level = logging.WARNING
        self._log.log(level, "relay: %d chunks of node %s missed on the way", missed, name)
        if self._on_loss is not None:
            self._on_loss(f"{missed} chunks of node {name} missed")
