"""Echo server on an asyncio ``Protocol`` with the library's defaults.

``loop.create_server`` with a ``Protocol`` whose ``data_received`` writes the
bytes straight back to the transport; the transport buffers partial writes.
Nothing tuned: asyncio chooses the read size (256 KiB in CPython 3.11) and sets
``TCP_NODELAY`` itself.

Usage: python asyncio_protocol.py PORT   (binds 127.0.0.1:PORT, prints
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
    asyncio.run(serve(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
