"""Types of the C core ``metalio._speedups`` (see ``_speedups.c``; use ``_speedups_loader``)."""

from collections.abc import Iterator
from typing import Any, Final

IOV_MAX: Final[int]
READ_LIMIT: Final[int]

def read(fd: int, n: int, /) -> bytes | None: ...
def readinto(fd: int, buffer: Any, /) -> int | None: ...
def write(fd: int, data: Any, /) -> int | None: ...
def writev(fd: int, buffers: Any, /) -> int | None: ...

class StreamCore:
    _fd: int
    _polls: int
    _rearm: Any
    _epoch: Any
    _rmark: float
    _wmark: float

class EpochCore:
    now: float
    counter: Iterator[int]

# Method descriptors of StreamCore, bound by the stream classes.
try_read: Any
try_read_into: Any
try_write: Any
try_writev: Any
