"""Worker processes sharing one listening port: ``metalio broadcast --workers N``.

This module owns the supervisor: forking N workers, holding the port for
them, announcing once all of them listen, forwarding ``SIGINT``/``SIGTERM``,
and what happens when a worker dies.  What a worker runs is a callable it is
given; it knows nothing of servers, relays or the command line.

Theory of operation
-------------------
*One port.*  Each worker binds its own listener with ``SO_REUSEPORT`` and
the kernel spreads new connections over them.  The parent binds the
address first (``SO_REUSEPORT``, never listening, so it is given no
connections): that resolves port 0 to one real port for every worker and
holds the port for the workers' lifetime.

*Forking.*  Workers are ``os.fork()`` children of a parent that has no
loop, no thread and no client yet; each runs the callable and leaves with
``os._exit`` (it never returns into the parent's code).  A worker reports
that it listens by writing one byte to a pipe; the parent prints its
``listening`` line once it has all N.

*Supervising without spinning.*  The parent sleeps in ``select`` on that
pipe and on the ``signal.set_wakeup_fd`` pipe (``SIGCHLD``, ``SIGINT``,
``SIGTERM``).  ``SIGINT``/``SIGTERM`` is forwarded to every worker, which
closes its clients and exits; the parent waits for them
(:data:`STOP_TIMEOUT`, then ``SIGKILL``) and returns 0.  A worker that
exits on its own is logged, the others are stopped, and the parent
returns 1.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["STOP_TIMEOUT", "hold_port", "supervise"]

STOP_TIMEOUT: Final = 10.0
"""Seconds the workers have to exit after a stop before they are killed."""
START_TIMEOUT: Final = 30.0
"""Seconds the workers have to listen before the parent gives up."""

_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD)


def hold_port(addr: tuple[str, int]) -> socket.socket:
    """Bind *addr* with ``SO_REUSEPORT`` without listening; the caller closes it.

    The returned socket's port is the one every worker binds.

    :raises OSError: the address cannot be bound (in use without
        ``SO_REUSEPORT``, not local...).
    :raises ValueError: the platform has no ``SO_REUSEPORT``.
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("--workers needs SO_REUSEPORT, which this platform lacks")
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


def _child(run: Callable[[int, Callable[[], None]], int], index: int, keep: list[int]) -> None:
    """The forked worker: run, then leave without returning into the parent's code."""
    status = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in _SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        # Ctrl-C reaches the workers from the terminal too: before (or after)
        # their loop catches it, it is a clean exit, not a death by signal.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ready_fd = keep[0]
        for fd in keep[1:]:
            os.close(fd)

        def ready() -> None:
            os.write(ready_fd, b"!")
            os.close(ready_fd)

        status = run(index, ready)
    except KeyboardInterrupt:
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def supervise(
    count: int,
    run: Callable[[int, Callable[[], None]], int],
    *,
    on_listening: Callable[[], None],
    log: logging.Logger,
) -> int:
    """Fork *count* workers running ``run(index, ready)``; return the exit status.

    Each worker calls ``ready()`` once it accepts connections and returns
    its exit status.  *on_listening* is called in the parent once every
    worker is ready.  Main thread only (it installs signal handlers, and
    restores them on return).

    :raises ValueError: *count* < 1.
    :raises OSError: a pipe or a fork failed (workers already forked are stopped).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    ready_r, ready_w = os.pipe()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    children: dict[int, int] = {}  # pid -> worker index
    old = {signum: signal.signal(signum, lambda *_: None) for signum in _SIGNALS}
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    status = 0
    try:
        for index in range(count):
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(run, index, [ready_w, ready_r, wake_r, wake_w])
            children[pid] = index
        os.close(ready_w)
        ready_w = -1
        status = _watch(children, ready_r, wake_r, count, on_listening, log)
    finally:
        if children:  # an exception on the way: no orphans
            _stop(children, signal.SIGTERM, log)
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in old.items():
            signal.signal(signum, handler)
        for fd in (ready_r, ready_w, wake_r, wake_w):
            if fd >= 0:
                os.close(fd)
    return status


def _watch(
    children: dict[int, int],
    ready_r: int,
    wake_r: int,
    count: int,
    on_listening: Callable[[], None],
    log: logging.Logger,
) -> int:
    ready = 0
    fds = [ready_r, wake_r]
    start_by: float | None = time.monotonic() + START_TIMEOUT
    while children:
        timeout = None if start_by is None else max(start_by - time.monotonic(), 0.0)
        readable, _, _ = select.select(fds, [], [], timeout)
        if not readable and start_by is not None and time.monotonic() >= start_by:
            log.error("workers: only %d of %d listening after %g s", ready, count, START_TIMEOUT)
            _stop(children, signal.SIGTERM, log)
            return 1
        if ready_r in readable:
            data = os.read(ready_r, 64)
            if not data:
                fds.remove(ready_r)
            ready += len(data)
            if ready >= count and start_by is not None:
                start_by = None
                on_listening()
        if wake_r in readable:
            try:
                signums = os.read(wake_r, 256)
            except BlockingIOError:
                signums = b""
            for signum in signums:
                if signum in (signal.SIGINT, signal.SIGTERM):
                    log.info(
                        "workers: received %s: stopping %d worker%s",
                        signal.Signals(signum).name,
                        len(children),
                        "" if len(children) == 1 else "s",
                    )
                    _stop(children, signal.SIGTERM, log)
                    return 0
            for pid, index, how in _reap(children):
                log.error("workers: worker %d (pid %d) %s; stopping the others", index, pid, how)
                _stop(children, signal.SIGTERM, log)
                return 1
    return 1  # pragma: no cover - the loop returns as soon as a worker is gone


def _reap(children: dict[int, int]) -> list[tuple[int, int, str]]:
    """Collect the workers that exited: (pid, index, how) for each."""
    gone = []
    for pid in list(children):
        try:
            done, wstatus = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, wstatus = pid, 0
        if done:
            index = children.pop(pid)
            if os.WIFSIGNALED(wstatus):
                how = f"was killed by {signal.Signals(os.WTERMSIG(wstatus)).name}"
            else:
                how = f"exited with status {os.waitstatus_to_exitcode(wstatus)}"
            gone.append((pid, index, how))
    return gone


def _stop(children: dict[int, int], signum: int, log: logging.Logger) -> None:
    """Signal every worker, wait up to :data:`STOP_TIMEOUT`, then ``SIGKILL`` the rest."""
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
    deadline = time.monotonic() + STOP_TIMEOUT
    delay = 0.005
    while children and time.monotonic() < deadline:
        for pid, index, how in _reap(children):
            log.info("workers: worker %d (pid %d) %s", index, pid, how)
        if children:
            time.sleep(delay)  # short and growing: workers usually exit at once
            delay = min(delay * 2, 0.1)
    for pid, index in list(children.items()):
        log.warning("workers: worker %d (pid %d) did not stop in time: killed", index, pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
        del children[pid]
