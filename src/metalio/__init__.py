"""metalio: "metal IO" for Python, an event-driven I/O library in the model of Rust's mio.

The public surface, re-exported from the modules that define it.  The
contract is ``docs/api.md`` (a copy of the shared spec); the user guide and design notes are in ``docs/``.
Sockets live in ``metalio.net``; ``metalio.pipe()`` makes a non-blocking pipe.
"""

from __future__ import annotations

import sys

from . import net
from ._errors import NotifyClosed, NotifyError, NotifyFull, SlabFull, TimerError
from ._events import Event, Events
from ._flags import Interest, PollOpt, Ready, Token
from ._speedups_loader import SPEEDUPS as speedups
from .channel import Sender
from .loop import EventLoop, EventLoopConfig, Handler
from .poll import Poll, Registry
from .slab import Slab
from .timer import Timeout, Timer
from .waker import Waker

if sys.platform != "win32":
    # Imported last so the function, not the submodule, is ``metalio.pipe``.
    from .pipe import PipeReader, PipeWriter, pipe

__all__ = [
    "Event",
    "EventLoop",
    "EventLoopConfig",
    "Events",
    "Handler",
    "Interest",
    "NotifyClosed",
    "NotifyError",
    "NotifyFull",
    "PipeReader",
    "PipeWriter",
    "Poll",
    "PollOpt",
    "Ready",
    "Registry",
    "Sender",
    "Slab",
    "SlabFull",
    "Timeout",
    "Timer",
    "TimerError",
    "Token",
    "Waker",
    "net",
    "pipe",
    "speedups",
]

__version__ = "0.1.0"
