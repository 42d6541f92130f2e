"""The ``Ready``, ``Interest`` and ``PollOpt`` bits as plain ``int`` constants, for the backends.

A backend computes with plain ints: its answers are cached by the layer
above, and ``enum.IntFlag`` arithmetic would turn every ``|`` into a Python
call and every result into a ``Ready``.  The values are taken from the enums
in ``metalio._flags``, so a name here can never disagree with the public one.

What this module does not know: any kernel API.  Each backend names its own
native bits next to the code that reads them.
"""

from __future__ import annotations

from typing import Final

from .._flags import Interest, PollOpt, Ready

__all__ = [
    "ERROR",
    "INTEREST_PRIORITY",
    "INTEREST_READABLE",
    "INTEREST_WRITABLE",
    "OPT_EDGE",
    "OPT_LEVEL",
    "OPT_ONESHOT",
    "PRIORITY",
    "READABLE",
    "READ_CLOSED",
    "WRITABLE",
    "WRITE_CLOSED",
]

# What a backend reports (Ready).
READABLE: Final[int] = Ready.READABLE.value
WRITABLE: Final[int] = Ready.WRITABLE.value
PRIORITY: Final[int] = Ready.PRIORITY.value
ERROR: Final[int] = Ready.ERROR.value
READ_CLOSED: Final[int] = Ready.READ_CLOSED.value
WRITE_CLOSED: Final[int] = Ready.WRITE_CLOSED.value

# What a registration asks for (Interest).  The emulated backends also use
# these as "directions": which halves of a descriptor are armed.
INTEREST_READABLE: Final[int] = Interest.READABLE.value
INTEREST_WRITABLE: Final[int] = Interest.WRITABLE.value
INTEREST_PRIORITY: Final[int] = Interest.PRIORITY.value

# How it wants to be told (PollOpt).  ``Poll`` hands ``ONESHOT`` alone over
# as ``LEVEL | ONESHOT``, so testing ``OPT_EDGE`` and ``OPT_ONESHOT`` suffices.
OPT_LEVEL: Final[int] = PollOpt.LEVEL.value
OPT_EDGE: Final[int] = PollOpt.EDGE.value
OPT_ONESHOT: Final[int] = PollOpt.ONESHOT.value
