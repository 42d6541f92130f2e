"""The select backend: select(2), the last resort, and what Windows gets.

What select(2) can tell
-----------------------
Three descriptor sets go in (read, write, exceptional) and the ready subsets
come out.  Readable, writable and "exceptional condition" (TCP urgent data:
``PRIORITY``) are all it knows.  The native masks are built in the poll(2)
bit layout (read set -> ``POLLIN``, write set -> ``POLLOUT``, exceptional set
-> ``POLLPRI``) so both fallback backends share one translation.

What it cannot tell
-------------------
* **Hang-up and error.**  There are no ``POLLHUP``/``POLLERR`` bits: a peer
  that closed makes the socket readable (the read returns EOF), a pending
  socket error makes it readable and writable (the call raises).  So on
  Unix this backend never sets ``ERROR``, ``READ_CLOSED`` or
  ``WRITE_CLOSED``, and a registration whose interest is only ``PRIORITY``
  hears nothing of a hang-up.  On Windows a failed non-blocking connect is
  reported in the exceptional set only; for a registration with WRITABLE it
  is reported as ``POLLERR`` (``error`` and ``writable``).
* **Closed descriptors.**  One closed descriptor fails the whole call with
  ``EBADF`` (``WSAENOTSOCK`` on Windows).  The backend then tests each
  descriptor alone, drops the bad ones from the sets without an event (their
  records stay for ``deregister``/``forget``) and waits again.
* **Big descriptor numbers.**  An ``fd_set`` is a bitmap of ``FD_SETSIZE``
  (1024) bits on Unix: a descriptor >= 1024 is refused at ``register`` with
  ``ValueError``.  On Windows an ``fd_set`` is an array of at most 512
  sockets (CPython's build) and any handle value works, so the limit is on
  the number of registrations (511: one slot is the internal wake-up
  socket).  Windows select takes sockets only.
* **Edges and oneshots.**  Level-triggered and stateless, like poll(2);
  emulated in ``._emulated`` (see there for the documented difference of
  EDGE with raw descriptors).  Without hang-up bits the emulation's probe
  cannot notice a hang-up on an EDGE source whose directions are all
  disarmed and still ready: a pipe writer registered EDGE WRITABLE whose
  reader goes away is not reported again (its next write raises
  ``BrokenPipeError``); poll and epoll report it.

Cost
----
Every call hands the kernel three whole sets, so it costs time proportional
to the number of watched descriptors.  The sets are kept as Python sets and
changed only for descriptors whose armed directions changed; ``select``
copies them in C.  Building the masks from the result costs time
proportional to the ready descriptors.  Timeouts are passed in seconds, so
no rounding is needed.
"""

from __future__ import annotations

import select
import sys
from typing import ClassVar, Final

from ._bits import INTEREST_PRIORITY, INTEREST_READABLE, INTEREST_WRITABLE
from ._emulated import EmulatedBackend
from ._emulated_records import KernelSet
from ._pollmask import POLLERR, POLLIN, POLLNVAL, POLLOUT, POLLPRI

__all__ = ["FD_SETSIZE", "SelectBackend"]

_WINDOWS: Final = sys.platform == "win32"
FD_SETSIZE: Final = 512 if _WINDOWS else 1024
"""Unix: the first descriptor number select cannot watch.  Windows: sockets per set."""


class _SelectSet:
    """Three sets for ``select.select`` speaking directions and canonical masks."""

    __slots__ = ("_dirs", "_r", "_w", "_x")

    def __init__(self) -> None:
        self._r: set[int] = set()
        self._w: set[int] = set()
        self._x: set[int] = set()
        self._dirs: dict[int, int] = {}

    def update(self, fd: int, directions: int) -> None:
        if directions & INTEREST_READABLE:
            self._r.add(fd)
        else:
            self._r.discard(fd)
        if directions & INTEREST_WRITABLE:
            self._w.add(fd)
        else:
            self._w.discard(fd)
        # Windows reports a failed connect only in the exceptional set.
        if directions & INTEREST_PRIORITY or (_WINDOWS and directions & INTEREST_WRITABLE):
            self._x.add(fd)
        else:
            self._x.discard(fd)
        if directions:
            self._dirs[fd] = directions
        else:
            self._dirs.pop(fd, None)

    def wait(self, timeout: float | None) -> list[tuple[int, int]]:
        try:
            r, w, x = select.select(self._r, self._w, self._x, timeout)
        except OSError:
            # EBADF (Windows: WSAENOTSOCK) fails the whole call: find the
            # culprits and let the caller drop them.
            bad = self._find_bad()
            if not bad:
                raise
            return [(fd, POLLNVAL) for fd in bad]
        if not w and not x:
            return [(fd, POLLIN) for fd in r]
        masks = dict.fromkeys(r, POLLIN)
        get = masks.get
        for fd in w:
            masks[fd] = get(fd, 0) | POLLOUT
        for fd in x:
            if _WINDOWS:
                dirs = self._dirs.get(fd, 0)
                bits = (POLLPRI if dirs & INTEREST_PRIORITY else 0) | (
                    POLLERR if dirs & INTEREST_WRITABLE else 0
                )
            else:
                bits = POLLPRI
            masks[fd] = get(fd, 0) | bits
        return list(masks.items())

    def _find_bad(self) -> list[int]:
        bad = []
        for fd in self._dirs:
            try:
                select.select([fd], [], [], 0)
            except (OSError, ValueError):
                bad.append(fd)
        return bad

    def close(self) -> None:
        self._r.clear()
        self._w.clear()
        self._x.clear()
        self._dirs.clear()


class SelectBackend(EmulatedBackend):
    """select(2) with edge and oneshot triggering emulated in user space."""

    name: ClassVar[str] = "select"
    emulates_edge: ClassVar[bool] = True
    concurrent_poll: ClassVar[bool] = False

    __slots__ = ()

    def _new_set(self) -> KernelSet:
        return _SelectSet()

    def _check_new(self, fd: int, count: int) -> None:
        """:raises ValueError: select cannot watch *fd*.
        :raises OSError: Windows: *fd* is not an open socket.
        """
        if _WINDOWS:
            if count + 1 >= FD_SETSIZE:
                raise ValueError(
                    f"the select backend can watch at most {FD_SETSIZE - 1} sockets on "
                    "Windows; deregister some first"
                )
            # No os.fstat for sockets there: let select itself refuse a bad one.
            select.select([fd], [], [], 0)
        elif fd >= FD_SETSIZE:
            raise ValueError(
                f"fd {fd} is out of range for select() (FD_SETSIZE is {FD_SETSIZE}); "
                "use the poll or epoll backend for descriptors this high"
            )

    def _check_internal(self, fd: int) -> None:
        if not _WINDOWS and fd >= FD_SETSIZE:
            raise ValueError(
                f"the select backend cannot start: its internal descriptor {fd} is out "
                f"of range for select() (FD_SETSIZE is {FD_SETSIZE})"
            )
