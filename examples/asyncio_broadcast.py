"""An asyncio program with a metalio broadcast server inside, on one thread.

asyncio serves HTTP-ish health checks (``asyncio.start_server``): ``GET
/health`` answers ``200`` with the number of connected broadcast clients as
JSON, anything else ``404``.  Next to it, in the same thread, a metalio
``EventLoop`` runs ``metalio.apps.broadcast.BroadcastServer`` (every chunk a
client sends goes to every client) with ``await loop.run_async(server)``:
its iterations are asyncio callbacks woken by the loop's ``Poll``
descriptor, so neither side ever blocks the other, and the health handler
reads the broadcast server's state directly, without locks.

SIGINT and SIGTERM go to metalio (``loop.add_signal``, added inside the
running asyncio loop): ``BroadcastServer.signal`` shuts the metalio loop
down, ``run_async`` returns, and the program closes the health server and
exits with status 0.

Run: ``python examples/asyncio_broadcast.py [--host 127.0.0.1] [--port 0]
[--health-port 0]``; it prints ``broadcast on HOST:PORT`` and ``health on
HOST:PORT`` (port 0 picks a free one).  Try ``nc HOST PORT`` in two
terminals and ``curl http://HOST:HEALTH_PORT/health``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from metalio import EventLoop
from metalio.apps.broadcast import BroadcastServer
from metalio.net import TcpListener

HEADER_LIMIT = 100  # header lines per request, then the client is dropped
READ_TIMEOUT = 10.0  # seconds a health client may take to send its request


def response(status: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def read_request(reader: asyncio.StreamReader) -> tuple[str, str] | None:
    """The method and path of one request (its headers are skipped), or ``None``."""
    line = await reader.readline()
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        return None
    for _ in range(HEADER_LIMIT):
        header = await reader.readline()
        if header in (b"\r\n", b"\n", b""):
            return parts[0], parts[1]
    return None


def health_handler(
    server: BroadcastServer,
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The ``asyncio.start_server`` callback: one request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(read_request(reader), READ_TIMEOUT)
            if request is not None and request[0] == "GET" and request[1] == "/health":
                body = json.dumps({"status": "ok", "clients": len(server.clients)})
                writer.write(response("200 OK", body.encode() + b"\n", "application/json"))
            else:
                writer.write(response("404 Not Found", b"not found\n", "text/plain"))
            await writer.drain()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass  # a client that went away or never asked: nothing to answer
        finally:
            writer.close()

    return handle


async def main(host: str, port: int, health_port: int) -> None:
    with EventLoop() as loop:
        server = BroadcastServer(loop, TcpListener.bind((host, port)))
        signals = (signal.SIGINT, signal.SIGTERM)
        health = await asyncio.start_server(health_handler(server), host, health_port)
        try:
            # Inside the running asyncio loop: some loops (uvloop) claim the
            # signal wakeup descriptor when they start running.
            for signum in signals:
                loop.add_signal(signum)
            health_addr = health.sockets[0].getsockname()
            print(f"broadcast on {server.address[0]}:{server.address[1]}", flush=True)
            print(f"health on {health_addr[0]}:{health_addr[1]}", flush=True)
            await loop.run_async(server)  # until SIGINT/SIGTERM
        finally:
            for signum in signals:
                loop.remove_signal(signum)
            health.close()
            await health.wait_closed()
            server.close()
    print("stopped", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="broadcast port (0: a free one)")
    ap.add_argument("--health-port", type=int, default=0, help="health port (0: a free one)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    asyncio.run(main(args.host, args.port, args.health_port))
    sys.exit(0)
