"""Signal delivery for ``EventLoop``: ``signal.set_wakeup_fd`` on a socket pair.

Theory of operation
===================

CPython runs Python-level signal handlers on the main thread, between
bytecodes, and nowhere else.  What it does at C level, inside the real
signal handler, is write the signal number as one byte to the *wakeup fd*
(``signal.set_wakeup_fd``), for every signal that has a Python-level handler.
That byte is what an event loop can poll.

``SignalSet`` owns a ``WakeFd`` in its socket-pair form (the bytes matter
here, so never an eventfd).  Its read end is registered
with the loop's Poll under an internal, negative token (level-triggered: the
loop drains it whenever it reports), its write end becomes the process's
wakeup fd while at least one signal is added.  ``add(signum)`` installs
``_ignore`` as the Python-level handler: it does nothing, which is the point,
the default action (terminate, for SIGTERM) must not happen, and the byte the
C handler wrote is the delivery.  The loop reads the bytes and calls
``Handler.signal(loop, signum)`` on its own thread for each byte naming an
added signal, in arrival order.

A signal arriving while the loop is blocked interrupts the wait (EINTR).
PEP 475 makes ``epoll_wait``/``poll``/``select`` run the Python handler and
retry; the retry returns at once because the socket is readable.  If a Python
handler raises (SIGINT's default handler raises ``KeyboardInterrupt``), the
retry does not happen and the exception propagates out of the wait.

Restoring: ``remove(signum)`` puts back the handler that was installed
before ``add`` (``SIG_DFL`` if that one was not set from Python, which
``signal.signal`` reports as ``None``).  When the last signal is removed, or
the set is closed, the previous wakeup fd is restored.  While any signal is
added the loop owns the wakeup fd: another user of it (another event loop)
does not get the bytes.

Everything here must run on the main thread (CPython's rule for
``signal.signal`` and ``set_wakeup_fd``); other threads get ``ValueError``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, TypeAlias

from ._flags import SIGNAL_TOKEN, Interest, PollOpt
from ._wakefd import WakeFd

if TYPE_CHECKING:
    from .registry import Registry

__all__ = ["SignalSet", "check_main_thread"]

_PrevHandler: TypeAlias = "Callable[[int, FrameType | None], object] | int | signal.Handlers | None"


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler of added signals: the byte is the delivery."""


def check_main_thread(what: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(f"{what} only works in the main thread")


def _check_signum(signum: object) -> int:
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"signum must be an int, not {type(signum).__name__}")
    signum = int(signum)
    if signum not in signal.valid_signals():
        raise ValueError(f"invalid signal number {signum}")
    if signum in (getattr(signal, "SIGKILL", -1), getattr(signal, "SIGSTOP", -1)):
        raise ValueError(f"signal {signum} cannot be caught")
    return signum


class SignalSet:
    """The added signals of one loop and the socket pair that carries them.

    :raises ValueError: not on the main thread.
    :raises OSError: the socket pair could not be created or registered.
    """

    __slots__ = ("_added", "_old_wakeup", "_registry", "_wakefd", "closed")

    def __init__(self, registry: Registry) -> None:
        check_main_thread("signal handling")
        wakefd = WakeFd(carries_bytes=True)
        try:
            registry.register_reserved(wakefd, SIGNAL_TOKEN, Interest.READABLE, PollOpt.LEVEL)
        except BaseException:
            wakefd.close()
            raise
        self._registry = registry
        self._wakefd = wakefd
        self._added: dict[int, _PrevHandler] = {}
        self._old_wakeup: int | None = None
        self.closed = False

    def __contains__(self, signum: object) -> bool:
        return signum in self._added

    def __bool__(self) -> bool:
        return bool(self._added)

    def add(self, signum: int) -> None:
        """Deliver *signum* through the socket pair.  Adding it twice is harmless.

        :raises ValueError: not on the main thread; invalid or uncatchable
            signal; the set is closed.
        :raises TypeError: *signum* is not an ``int``.
        """
        check_main_thread("add_signal")
        signum = _check_signum(signum)
        if self.closed:
            raise ValueError("the event loop is closed")
        if signum in self._added:
            return
        if self._old_wakeup is None:
            self._old_wakeup = signal.set_wakeup_fd(
                self._wakefd.writer_fileno(), warn_on_full_buffer=False
            )
        try:
            self._added[signum] = signal.signal(signum, _ignore)
        except BaseException:
            if not self._added:
                self._restore_wakeup()
            raise

    def remove(self, signum: int) -> bool:
        """Restore the previous handler of *signum*; ``False`` if it was not added.

        :raises ValueError: not on the main thread.
        :raises TypeError: *signum* is not an ``int``.
        """
        check_main_thread("remove_signal")
        if isinstance(signum, bool) or not isinstance(signum, int):
            raise TypeError(f"signum must be an int, not {type(signum).__name__}")
        if signum not in self._added:
            return False
        prev = self._added.pop(signum)
        try:
            signal.signal(signum, signal.SIG_DFL if prev is None else prev)
        finally:
            if not self._added:
                self._restore_wakeup()
        return True

    def _restore_wakeup(self) -> None:
        old = self._old_wakeup
        if old is not None:
            self._old_wakeup = None
            signal.set_wakeup_fd(old)

    def read(self) -> list[int]:
        """Drain the socket; return the added signals among the bytes, in order."""
        added = self._added
        return [b for b in self._wakefd.drain() if b in added]

    def close(self) -> None:
        """Restore every handler and the wakeup fd, then close the socket pair.

        :raises ValueError: signals are added and this is not the main thread
            (nothing is changed then).
        """
        if self.closed:
            return
        if self._added:
            check_main_thread("closing a loop with signals added")
        errors: list[BaseException] = []
        for signum in list(self._added):
            try:
                self.remove(signum)
            except Exception as exc:  # keep restoring the others
                errors.append(exc)
        self._restore_wakeup()
        self.closed = True
        try:
            self._registry.deregister(self._wakefd)
        except (ValueError, OSError):
            pass
        self._wakefd.close()
        if errors:
            raise errors[0]
