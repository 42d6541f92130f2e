"""metalio: "metal IO" for Python, an event-driven I/O library in the model of Rust's mio.

The public surface, re-exported from the modules that define it.  See
``docs/`` for the design and ``../shared/spec/API.md`` for the contract.
"""

from __future__ import annotations

from ._errors import NotifyClosed, NotifyError, NotifyFull, SlabFull, TimerError
from ._events import Event, Events
from ._flags import Interest, PollOpt, Ready, Token
from .poll import Poll, Registry
from .waker import Waker

__all__ = [
    "Event",
    "Events",
    "Interest",
    "NotifyClosed",
    "NotifyError",
    "NotifyFull",
    "Poll",
    "PollOpt",
    "Ready",
    "Registry",
    "SlabFull",
    "TimerError",
    "Token",
    "Waker",
]

__version__ = "0.1.0"
