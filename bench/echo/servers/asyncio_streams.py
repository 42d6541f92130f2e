"""Echo server on asyncio streams (``asyncio.start_server``).

One coroutine per connection: ``await reader.read(65536)``, ``writer.write``,
``await writer.drain()`` -- the pattern of the asyncio documentation.

Usage: python asyncio_streams.py PORT   (binds 127.0.0.1:PORT, prints "ready",
echoes until SIGTERM/SIGINT, exits 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

BUF = 65536


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(BUF)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    print("ready", flush=True)
    await stop
    server.close()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    asyncio.run(serve(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
