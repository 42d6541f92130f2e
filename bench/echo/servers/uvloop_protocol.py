"""Echo server on a uvloop ``Protocol``: ``asyncio_protocol.py`` run on uvloop.

The same code as ``asyncio_protocol.py`` (a ``Protocol`` whose ``data_received``
writes the bytes back; library defaults), on uvloop's event loop. Exits with
status 3 before printing "ready" when uvloop is not importable, so the runner
reports it as skipped.

Usage: python uvloop_protocol.py PORT   (binds 127.0.0.1:PORT, prints
"ready", echoes until SIGTERM/SIGINT, exits 0)
"""

from __future__ import annotations

import asyncio
import signal
import sys


class EchoProtocol(asyncio.Protocol):
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await loop.create_server(EchoProtocol, "127.0.0.1", port)
    print("ready", flush=True)
    await stop
    server.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError as exc:
        print(f"uvloop is not importable: {exc}", file=sys.stderr)
        return 3
    if hasattr(uvloop, "run"):  # uvloop >= 0.18
        uvloop.run(serve(int(argv[1])))
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(serve(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
