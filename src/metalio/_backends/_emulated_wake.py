"""The poll/select emulation's internal wake-up: make the one blocked poller come back.

poll(2) and select(2) wait on the set they were given.  When a registration
changes, or ``interrupt()``/``close()`` is called, while a thread is blocked,
that thread must return, look again and (unless interrupted) wait for the
time that is left.  This module owns the ``WakeFd`` that sits in the kernel
set for that purpose and the handshake around it: at most one wake-up per
wait, and an interrupt that arrives before a wait begins still ends it.

It does not know the records, the kernel set or the lock: ``_emulated``
holds its lock around every call here.
"""

from __future__ import annotations

from .._wakefd import WakeFd

__all__ = ["PollerWake"]


class PollerWake:
    """One poller's wake-up descriptor and the flags of the handshake.

    :raises OSError: no descriptor could be created.
    """

    __slots__ = ("_wake", "fd", "in_wait", "interrupted", "woken")

    def __init__(self) -> None:
        # Close-on-exec (eventfd: EFD_CLOEXEC; sockets since Python 3.4).
        self._wake: WakeFd | None = WakeFd()
        self.fd = self._wake.fileno()
        self.in_wait = False  # the poller is in (or about to enter) the kernel call
        self.woken = False  # a wake-up is written and not yet drained
        self.interrupted = False  # interrupt() not yet answered by a return

    def enter_wait(self) -> None:
        """The poller is about to wait."""
        self.in_wait = True
        if self.interrupted and not self.woken:
            # interrupt() came before this wait began: make it return at once.
            self.wake()

    def changed(self) -> None:
        """The set changed: a poller waiting on the old one must come back and rebuild."""
        if self.in_wait and not self.woken:
            self.wake()

    def interrupt(self) -> None:
        """Make the poller return; the flag stays until :meth:`take_interrupt`."""
        self.interrupted = True
        self.changed()

    def take_interrupt(self) -> bool:
        """Whether an interrupt is pending; answering it clears it."""
        if self.interrupted:
            self.interrupted = False
            return True
        return False

    def wake(self) -> None:
        """Write a wake-up now (``close`` under a poller uses this directly)."""
        self.woken = True
        wake = self._wake
        if wake is not None:
            try:
                wake.wake()
            except (OSError, ValueError):
                pass  # nothing to fix here: the poller returns at its timeout

    def drained(self) -> None:
        """The poller saw the descriptor ready: consume the wake-up."""
        wake = self._wake
        if wake is not None:
            wake.drain()
        self.woken = False

    def close(self) -> None:
        """Release the descriptor.  Harmless twice."""
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.close()
