"""``EventLoopConfig``: how an ``EventLoop`` is built, validated in one place.

What it must not know: anything about running; it only checks values with
the shared validators (``metalio._validate``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from . import _validate
from ._events import MAX_CAPACITY as MAX_EVENTS_CAPACITY

__all__ = ["EventLoopConfig"]

# Upper bounds for the counts that size memory up front: the channel holds one
# credit per slot, and every wait hands the kernel an events_capacity buffer.
_COUNT_LIMITS: Final = {"notify_capacity": 1 << 22, "events_capacity": MAX_EVENTS_CAPACITY}
_COUNTS: Final = (
    "notify_capacity",
    "messages_per_tick",
    "timer_wheel_size",
    "timer_capacity",
    "events_capacity",
)


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
        for name in _COUNTS:
            _validate.count(getattr(self, name), name, maximum=_COUNT_LIMITS.get(name))
        _validate.resolution(self.timer_tick, "timer_tick")
        if not callable(self.clock):
            raise TypeError(f"clock must be callable, not {type(self.clock).__name__}")
        if self.backend is not None and not isinstance(self.backend, str):
            raise TypeError(f"backend must be a str or None, not {type(self.backend).__name__}")
