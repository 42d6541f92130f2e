"""The ``metalio`` command line (also ``python -m metalio``).

Commands::

    metalio broadcast [--host H] [--port P] [--max-clients N] [--max-buffer BYTES]
                      [--soft-buffer BYTES] [--slow-timeout SECONDS]
                      [--relay redis://[:PASSWORD@]HOST:PORT[/CHANNEL]]
                      [--relay-loss keep|close] [--workers N]
                      [--backend NAME] [--log-level LEVEL]
    metalio echo      [--host H] [--port P] [--max-clients N] [--backend NAME]
                      [--threads N] [--log-level LEVEL]
    metalio client    HOST PORT
    metalio bench     [ARGS...]          (the echo benchmark of a source checkout)
    metalio --version

The servers listen on 127.0.0.1 by default, ``broadcast`` on port 7000 and
``echo`` on port 7007; ``--port 0`` takes any free port.  Once a server
accepts connections it prints exactly one line, ``listening on HOST:PORT``
(the real port; IPv6 hosts in brackets), to standard output and flushes it,
so scripts can wait for it.  Connects, disconnects and their reasons are
logged to standard error.  ``SIGINT`` (Ctrl-C) and ``SIGTERM`` close every
connection and exit with status 0.

With ``--workers N`` the parent prints the ``listening`` line once every
worker listens, forwards ``SIGINT``/``SIGTERM`` to them and exits 0 when
they are gone; a worker that dies on its own stops the others (status 1).

Exit statuses: 0 success, 1 a runtime failure (e.g. the address is in
use, a worker died), 2 bad arguments (a bad ``--relay`` URL, ``--relay``
without the ``metalio[relay]`` extra, ``--workers`` > 1 without
``--relay``) or ``metalio bench`` without a source checkout.
"""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from metalio.apps import TcpServer

__all__ = ["build_parser", "find_bench", "main", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_LEVELS = ("debug", "info", "warning", "error")


def parse_size(text: str) -> int:
    """``"1048576"``, ``"64K"``, ``"1MiB"``, ``"2m"`` -> bytes (binary units).

    :raises argparse.ArgumentTypeError: not a positive size.
    """
    match = _SIZE.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or a K/M/G suffix (e.g. 1048576, 512K, 1M)"
        )
    value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be at least 1 byte, got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: not a number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(
            f"duration must be a positive number of seconds, got {text!r}"
        )
    return value


def _version() -> str:
    # Which descriptor-call implementation is in use: "c" or "python".
    from metalio import __version__, speedups

    return f"{__version__} (speedups: {speedups})"


def _backends() -> tuple[str, ...]:
    from metalio._backends import available_backends

    return available_backends()


def _server_options(parser: argparse.ArgumentParser, default_port: int, *, broadcast: bool) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on: an IP, a name, or '' for every IPv4 interface "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=default_port,
        help="TCP port; 0 takes any free port (default: %(default)s)",
    )
    parser.add_argument(
        "--max-clients",
        type=_positive,
        default=None,
        metavar="N",
        help="accept and at once close connections beyond N simultaneous clients "
        "(default: no limit but open files)",
    )
    if broadcast:
        parser.add_argument(
            "--max-buffer",
            type=parse_size,
            default=1 << 20,
            metavar="BYTES",
            help="hard per-client limit on queued outgoing bytes: a client over it is "
            "disconnected at once as a slow reader (default: 1M; K/M/G suffixes allowed)",
        )
        parser.add_argument(
            "--soft-buffer",
            type=parse_size,
            default=256 << 10,
            metavar="BYTES",
            help="soft per-client limit (at most --max-buffer): a client over it no "
            "longer paces the senders and is disconnected unless it catches up within "
            "--slow-timeout; senders stop being read while a client that keeps up holds "
            "more than half of it, and resume below an eighth (default: 256K)",
        )
        parser.add_argument(
            "--slow-timeout",
            type=_seconds,
            default=10.0,
            metavar="SECONDS",
            help="how long a client over --soft-buffer (or one that stopped reading) "
            "has to catch up before it is disconnected (default: %(default)g)",
        )
        parser.add_argument(
            "--relay",
            default=None,
            metavar="URL",
            help="join the nodes on a Redis pub/sub channel, "
            "redis://[[USER]:PASSWORD@]HOST[:PORT][/CHANNEL] (default port 6379, channel "
            "metalio:broadcast): every chunk read here is published after its local "
            "fan-out, and every other node's chunk is delivered to the clients here, "
            "paced like a local one; at-most-once across nodes, per-sender order while "
            "the relay is up; an unreachable Redis is retried with back-off while local "
            "clients are served (needs pip install 'metalio[relay]')",
        )
        parser.add_argument(
            "--relay-loss",
            choices=("keep", "close"),
            default="keep",
            help="when relayed data was lost (Redis gone, or chunks of another node "
            "missed): keep the local clients connected, or close them so no client sees "
            "a silent hole (default: %(default)s)",
        )
        parser.add_argument(
            "--workers",
            type=_positive,
            default=1,
            metavar="N",
            help="run N processes sharing the port (SO_REUSEPORT), each a node on the "
            "same --relay (required when N > 1); SIGINT/SIGTERM stops them all "
            "(default: 1)",
        )
    parser.add_argument(
        "--backend",
        choices=_backends(),
        default=None,
        help=f"readiness backend (default: the best available, {_backends()[0]})",
    )
    parser.add_argument(
        "--log-level",
        choices=_LEVELS,
        default="info",
        type=str.lower,
        help="stderr logging threshold (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``metalio`` command."""
    parser = argparse.ArgumentParser(
        prog="metalio",
        description="metalio: event-driven I/O for Python in the model of Rust's mio. "
        "Ready-made servers and tools.",
    )
    parser.add_argument("--version", action="version", version=f"metalio {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    broadcast = sub.add_parser(
        "broadcast",
        help="broadcast server: every client's bytes go to every client",
        description="Broadcast ('multi-echo') server: every chunk any client sends is "
        "written to every connected client, the sender included, in order. Senders are "
        "paced to the clients that keep up (not read while those are behind); a client "
        "over --soft-buffer is disconnected if it has not caught up after --slow-timeout, "
        "one over --max-buffer at once. With --relay, servers on one Redis pub/sub "
        "channel (on any machines, or --workers N processes on one port) form one "
        "broadcast. Prints "
        "'listening on HOST:PORT' when ready; Ctrl-C or SIGTERM stops it (status 0).",
    )
    _server_options(broadcast, 7000, broadcast=True)

    echo = sub.add_parser(
        "echo",
        help="echo server: every client gets its own bytes back",
        description="Echo server: every client gets back exactly the bytes it sent. "
        "Prints 'listening on HOST:PORT' when ready; Ctrl-C or SIGTERM stops it (status 0).",
    )
    _server_options(echo, 7007, broadcast=False)
    echo.add_argument(
        "--threads",
        type=_positive,
        default=1,
        metavar="N",
        help="N threads, each with its own event loop and listener on the port "
        "(SO_REUSEPORT); they run in parallel on free-threaded Python (default: 1)",
    )

    client = sub.add_parser(
        "client",
        help="tiny client: stdin to the server, the server to stdout",
        description="Connect to HOST:PORT, send standard input and print what the "
        "server sends until it closes the connection (like nc). At the end of input "
        "(Ctrl-D) the client stops sending but keeps printing; Ctrl-C quits.",
    )
    client.add_argument("host", metavar="HOST")
    client.add_argument("port", metavar="PORT", type=_port)

    sub.add_parser(
        "bench",
        add_help=False,
        help="echo benchmark against the standard library, asyncio and uvloop "
        "(source checkout only; 'metalio bench --help' for its options)",
        description="Runs bench/echo/run.py of a metalio source checkout as a script with "
        "this interpreter; every argument is passed on to it and its exit status is "
        "metalio's.  Without --full it runs the short version (--quick, about a minute).",
    )
    return parser


def find_bench() -> Path | None:
    """``bench/echo/run.py`` of the source checkout this package was imported from, if any."""
    package = Path(__file__).resolve().parent  # .../src/metalio
    for root in (package.parent.parent, package.parent):  # src layout, then flat
        candidate = root / "bench" / "echo" / "run.py"
        if candidate.is_file():
            return candidate
    return None


def _run_bench(args: list[str]) -> int:
    """Run the checkout's ``bench/echo/run.py`` as a script; return its exit status.

    It runs in a child process with this interpreter (``sys.executable``), so
    the package never imports a tree it does not own; every argument is
    passed on, and its exit status is returned (a child killed by signal N
    gives ``128 + N``, as a shell reports it).  Without a checkout: a message
    and status 2.

    :raises OSError: the interpreter could not be started.
    """
    script = find_bench()
    if script is None:
        print(
            "metalio bench: the benchmark ships with the source checkout only "
            "(bench/echo/run.py next to src/); clone the repository and install it "
            "with 'pip install -e .' to run it",
            file=sys.stderr,
        )
        return 2
    # `metalio bench` alone is the short (about a minute) run; `--full` is the matrix.
    if not {"--full", "--quick", "-h", "--help", "--list"} & set(args):
        args = ["--quick", *args]
    child = subprocess.Popen([sys.executable, str(script), *args])
    while True:
        try:
            status = child.wait()
            break
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group): let it finish
            # its clean-up and report its own status.
            continue
    return 128 - status if status < 0 else status


def _setup_logging(level: str, workers: int = 1, threads: int = 1) -> None:
    # With workers, each line names its process (the parent's or a worker's
    # pid); with threads, its thread.
    where = "[%(process)d]" if workers > 1 else "[%(threadName)s]" if threads > 1 else ""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s",
    )


def _announce(server: TcpServer) -> None:
    from metalio.apps import format_addr

    print(f"listening on {format_addr(server.address)}", flush=True)


def _serve(ns: argparse.Namespace) -> int:
    _setup_logging(ns.log_level, getattr(ns, "workers", 1), getattr(ns, "threads", 1))
    from metalio.apps import format_addr, raise_nofile_limit

    logger = logging.getLogger(f"metalio.{ns.command}")
    raise_nofile_limit(logger)
    try:
        if ns.command == "broadcast":
            if ns.relay is not None or ns.workers > 1:
                return _serve_nodes(ns, logger)
            from metalio.apps import broadcast

            broadcast.serve(
                ns.host,
                ns.port,
                max_clients=ns.max_clients,
                max_buffer=ns.max_buffer,
                soft_buffer=ns.soft_buffer,
                slow_timeout=ns.slow_timeout,
                backend=ns.backend,
                on_listening=_announce,
                logger=logger,
            )
        elif ns.threads > 1:
            from metalio.apps.echo import EchoServer
            from metalio.apps.threads import serve_threads

            serve_threads(
                EchoServer,
                ns.threads,
                ns.host,
                ns.port,
                max_clients=ns.max_clients,
                backend=ns.backend,
                on_listening=_announce,
                logger=logger,
            )
        else:
            from metalio.apps import echo

            echo.serve(
                ns.host,
                ns.port,
                max_clients=ns.max_clients,
                backend=ns.backend,
                on_listening=_announce,
                logger=logger,
            )
    except OSError as exc:
        where = format_addr((ns.host, ns.port))
        print(f"metalio {ns.command}: cannot serve on {where}: {exc}", file=sys.stderr)
        return 1
    return 0


def _serve_nodes(ns: argparse.Namespace, logger: logging.Logger) -> int:
    """``broadcast`` with ``--relay`` and/or ``--workers``: check, then one node or N.

    :raises OSError: the address cannot be resolved or bound.
    """
    from metalio.apps.relay_node import check_relay, serve_node, serve_workers
    from metalio.apps.resp import RelayUnavailable

    if ns.workers > 1 and ns.relay is None:
        print(
            f"metalio broadcast: --workers {ns.workers} needs --relay redis://HOST:PORT: "
            "workers are separate processes and only a relay joins their clients",
            file=sys.stderr,
        )
        return 2
    try:
        check_relay(ns.relay)
    except RelayUnavailable as exc:
        print(f"metalio broadcast: --relay: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"metalio broadcast: bad --relay URL: {exc}", file=sys.stderr)
        return 2
    options = {
        "relay": ns.relay,
        "relay_loss": ns.relay_loss,
        "max_clients": ns.max_clients,
        "max_buffer": ns.max_buffer,
        "soft_buffer": ns.soft_buffer,
        "slow_timeout": ns.slow_timeout,
        "backend": ns.backend,
        "logger": logger,
    }
    if ns.workers == 1:
        serve_node(ns.host, ns.port, on_listening=_announce, **options)
        return 0
    try:
        return serve_workers(ns.workers, ns.host, ns.port, **options)
    except ValueError as exc:  # no SO_REUSEPORT here
        print(f"metalio broadcast: {exc}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Bad arguments exit through ``SystemExit(2)`` with a message on standard
    error, as ``argparse`` does; ``--help`` and ``--version`` through
    ``SystemExit(0)``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "bench":
        return _run_bench(args[1:])
    ns = build_parser().parse_args(args)
    try:
        if ns.command == "client":
            from metalio.apps.client import run_client

            return run_client(ns.host, ns.port)
        return _serve(ns)
    except KeyboardInterrupt:
        # Ctrl-C before the loop caught SIGINT (or in the client): a clean exit.
        return 0
