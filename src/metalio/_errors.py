"""The exception types metalio defines itself.

Misuse is reported with the builtin types (``TypeError``, ``ValueError``,
``FileExistsError`` ...) and operating-system failures keep their ``OSError``.
The classes here name the few conditions that are neither: a full or closed
notify channel, a full timer and a full slab.
"""

from __future__ import annotations

__all__ = ["NotifyClosed", "NotifyError", "NotifyFull", "SlabFull", "TimerError"]


class NotifyError(Exception):
    """A message could not be queued on an event loop's notify channel.

    The refused message is kept in :attr:`msg` so the sender can retry,
    reroute or drop it deliberately.
    """

    def __init__(self, msg: object, reason: str = "") -> None:
        super().__init__(reason or type(self).__name__)
        self.msg = msg


class NotifyFull(NotifyError):
    """The channel already holds ``notify_capacity`` undelivered messages."""


class NotifyClosed(NotifyError):
    """The event loop behind the channel has been closed."""


class TimerError(Exception):
    """The timer already holds ``capacity`` pending timeouts."""


class SlabFull(Exception):
    """The slab already holds ``capacity`` values."""
