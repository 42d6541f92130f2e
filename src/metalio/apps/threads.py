"""One server, N threads: an ``EventLoop`` per thread on one port with ``SO_REUSEPORT``.

What it owns: starting N copies of a server (``metalio echo --threads N``),
each on its own thread with its own ``EventLoop``, ``TcpListener`` and
connections, and stopping them all.  Nothing is shared between the threads
but the port: the kernel spreads new connections over the listeners (on
Linux by a hash of the addresses) and a connection stays on one loop for
its life, so every loop-thread-only part (the timer, the slab, the handler)
stays on one thread.  On free-threaded CPython the threads run in parallel;
under the GIL they take turns (``docs/threads.md`` has the figures).

The main thread keeps the signals: ``SIGINT``/``SIGTERM`` reach a small
loop of its own, which asks every server to stop (``TcpServer.stop``, a
message through its loop's channel: thread-safe, and never lost even if the
loop has not started yet) and waits for the threads.

This fits servers whose clients never need each other, like echo.  The
broadcast server does not run this way: every chunk must reach every
client, and clients on other loops would need a cross-thread fan-out; its
way to more cores is ``--workers`` with a relay (``metalio.apps.workers``).

What it must not know: what the servers do.
"""

from __future__ import annotations

import logging
import signal as signal_module
import threading
from collections.abc import Callable
from typing import Any

from metalio.apps.server import TcpServer
from metalio.apps.startup import resolve_address
from metalio.handler import Handler
from metalio.loop import EventLoop, EventLoopConfig
from metalio.net import TcpListener

__all__ = ["serve_threads"]


class _Stopper(Handler):
    """The main thread's loop: a signal stops every server, then this loop."""

    def __init__(self, servers: list[TcpServer], logger: logging.Logger) -> None:
        self.servers = servers
        self.log = logger

    def signal(self, loop: EventLoop, signum: int) -> None:
        self.log.info(
            "received %s: stopping %d threads",
            signal_module.Signals(signum).name,
            len(self.servers),
        )
        stop_all(self.servers)
        loop.shutdown()

    def notify(self, loop: EventLoop, msg: object) -> None:
        loop.shutdown()  # a thread ended on its own


def stop_all(servers: list[TcpServer]) -> None:
    for server in servers:
        try:
            server.stop()
        except Exception:
            pass  # its loop is closed already: it has stopped


def serve_threads(
    server_type: Callable[..., TcpServer],
    threads: int,
    host: str,
    port: int,
    *,
    backend: str | None = None,
    backlog: int = 1024,
    on_listening: Callable[[TcpServer], None] | None = None,
    logger: logging.Logger | None = None,
    **options: Any,
) -> None:
    """Run *threads* copies of *server_type* on one port until ``SIGINT``/``SIGTERM``.

    Main thread only (it takes the signals).  *on_listening* is called once,
    with the first server, when every thread accepts connections.

    :raises ValueError: *threads* < 1; not on the main thread; a bad option.
    :raises OSError: the address cannot be resolved or bound.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    log = logger or logging.getLogger("metalio.threads")
    addr = resolve_address(host, port)
    loops: list[EventLoop] = []
    servers: list[TcpServer] = []
    try:
        for _ in range(threads):
            # The first bind settles port 0; the others join it.
            listener = TcpListener.bind(addr, backlog=backlog, reuse_port=True)
            addr = (addr[0], int(listener.local_addr()[1]))
            loop = EventLoop(EventLoopConfig(backend=backend))
            loops.append(loop)
            servers.append(server_type(loop, listener, logger=log, **options))
    except BaseException:
        for server in servers:
            server.close()
        for loop in loops:
            loop.close()
        raise
    with EventLoop() as main_loop:
        stopper = _Stopper(servers, log)
        ended = main_loop.channel()
        errors: list[BaseException] = []

        def run(loop: EventLoop, server: TcpServer) -> None:
            try:
                loop.run(server)
            except BaseException as exc:
                errors.append(exc)
            finally:
                try:
                    ended.send(None)
                except Exception:
                    pass

        workers = [
            threading.Thread(target=run, args=(loop, server), name=f"loop-{i}", daemon=True)
            for i, (loop, server) in enumerate(zip(loops, servers, strict=True))
        ]
        for signum in (signal_module.SIGINT, signal_module.SIGTERM):
            main_loop.add_signal(signum)
        try:
            for worker in workers:
                worker.start()
            if on_listening is not None:
                on_listening(servers[0])
            main_loop.run(stopper)
        finally:
            stop_all(servers)
            for worker in workers:
                worker.join(10)
            for server in servers:
                server.close()
            for loop in loops:
                loop.close()
    if errors:
        raise errors[0]
