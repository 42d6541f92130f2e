"""Echo server: ``metalio_loop.py``'s ``Handler`` run by ``loop.run_async`` under asyncio.

The same ``Echo`` handler, ``Slab`` and edge-triggered ``TcpStream``s as
``metalio_loop.py`` (imported from it, so the two cannot drift apart); only
the driver differs: ``asyncio.run`` with the default event loop, and the
``EventLoop`` iterating as asyncio callbacks woken by ``poll.fileno()``
(``await loop.run_async(handler)``).  Compared with ``metalio_loop`` it shows
what living inside asyncio costs; with ``asyncio_protocol`` what metalio's
model saves inside the same asyncio loop.  SIGTERM/SIGINT reach
``Handler.signal`` through ``loop.add_signal`` (added inside the running
asyncio loop) and shut the loop down.

Usage: python metalio_async.py PORT   (binds 127.0.0.1:PORT, prints "ready",
echoes until SIGTERM/SIGINT, exits 0)
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # metalio_loop (and its src/ path)

from metalio_loop import LISTENER, Echo

from metalio import EventLoop, Interest, PollOpt
from metalio.net import TcpListener


async def serve(port: int) -> None:
    with TcpListener.bind(("127.0.0.1", port)) as listener, EventLoop() as loop:
        loop.register(listener, LISTENER, Interest.READABLE, PollOpt.EDGE)
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal(signum)
        handler = Echo(listener)
        print("ready", flush=True)
        try:
            await loop.run_async(handler)
        finally:
            handler.close_all(loop)
            for signum in signals:
                loop.remove_signal(signum)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
