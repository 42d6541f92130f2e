"""Non-blocking pipes: ``pipe() -> (PipeReader, PipeWriter)``.

Theory of operation
-------------------
``pipe()`` is ``os.pipe()`` with both ends non-blocking and close-on-exec
from birth (one ``pipe2(O_NONBLOCK | O_CLOEXEC)`` call where it exists).
Each end owns a bare descriptor and does its I/O with ``os.read``/
``os.readv``/``os.write``/``os.writev``; there is no ``socket`` attribute.
The ``try_*`` rule is the sockets' one:

* ``None`` -- would block (an empty pipe, a full pipe); wait for readiness;
* ``b""``/``0`` from a read -- end of stream: every write end is closed;
* real failures raise the ``OSError`` Python gives: ``BrokenPipeError``
  when writing after every read end closed (Python ignores ``SIGPIPE``),
  ``OSError(EBADF)`` on a closed end.

Facts of the platforms that the API exposes rather than hides:

* Closing the writer gives the reader's registration a ``read_closed``
  readiness (``POLLHUP``/``EPOLLHUP``); closing the reader gives the
  writer's an ``error`` (``EPOLLERR``) or ``write_closed`` readiness,
  depending on what the backend maps it to.  Both are reported only once
  the *last* descriptor of that end is closed: a ``dup`` (say, a child
  process that inherited it) keeps the end open.
* A write of at most ``select.PIPE_BUF`` bytes (4096 on Linux) is atomic:
  all or ``None``.  A longer one may be partial.
* The ends close themselves when garbage collected, with a
  ``ResourceWarning`` as files do; call :meth:`close` (or use ``with``).
* ``O_NONBLOCK`` is a property of the open file description, which a child
  process given the other end (``Popen(stdin=reader.fileno())``) shares:
  switch that end back with ``os.set_blocking(fd, True)`` before the child
  starts, or most programs fail at once with ``EAGAIN``.
* ``PipeReader(fd)`` / ``PipeWriter(fd)`` adopt an existing descriptor (for
  example ``os.dup(proc.stdout.fileno())``): they make it non-blocking and
  non-inheritable and close it on ``close()``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TypeVar

from ._fdio import (
    FdSource,
    init_state,
    stream_try_read,
    stream_try_read_into,
    stream_try_write,
    stream_try_writev,
)

__all__ = ["PipeReader", "PipeWriter", "pipe"]

if sys.platform == "win32":  # pragma: no cover
    raise ImportError("metalio.pipe needs POSIX pipes (os.readv, os.writev, O_NONBLOCK)")

_E = TypeVar("_E", bound="_PipeEnd")


class _PipeEnd(FdSource):
    """One end of a pipe: a descriptor it owns, and the funnel state of ``metalio._fdio``."""

    __slots__ = ()

    def __init__(self, fd: int) -> None:
        """Adopt the open descriptor *fd*: make it non-blocking and non-inheritable.

        :raises TypeError: *fd* is not an ``int``.
        :raises ValueError: *fd* is negative.
        :raises OSError: *fd* is not open (``EBADF``).
        """
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"fd must be an int, not {type(fd).__name__}")
        if fd < 0:
            raise ValueError(f"fd must be >= 0, got {fd}")
        init_state(self, -1)  # so __del__ has nothing to close if the next lines fail
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self._fd = int(fd)

    def close(self) -> None:
        """Close this end.  Closing twice is harmless.

        :raises OSError: only if the OS reports an error closing (not ``EBADF``
            from a second close: that cannot happen).
        """
        fd = self._fd
        if fd >= 0:
            self._fd = -1
            self._epoch = None  # every later call reaches the kernel and fails
            os.close(fd)

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", -1)
        if fd >= 0:
            self._fd = -1
            try:
                warnings.warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)
            finally:
                os.close(fd)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} fd={self._fd}>"


class PipeReader(_PipeEnd):
    """The read end of a non-blocking pipe."""

    __slots__ = ()

    try_read = stream_try_read
    try_read_into = stream_try_read_into


class PipeWriter(_PipeEnd):
    """The write end of a non-blocking pipe."""

    __slots__ = ()

    try_write = stream_try_write
    try_writev = stream_try_writev


def _end(cls: type[_E], fd: int) -> _E:
    end = cls.__new__(cls)
    init_state(end, fd)
    return end


def pipe() -> tuple[PipeReader, PipeWriter]:
    """A new pipe whose ends are non-blocking and close-on-exec.

    :raises OSError: ``EMFILE``/``ENFILE`` when out of descriptors.
    """
    pipe2 = getattr(os, "pipe2", None)
    if pipe2 is not None:
        r, w = pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    else:  # pragma: no cover - macOS: os.pipe() is already non-inheritable
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
    return _end(PipeReader, r), _end(PipeWriter, w)
