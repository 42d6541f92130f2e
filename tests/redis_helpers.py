"""Helpers of the relay tests: a real ``redis-server`` per test, relay nodes on
their own loops and threads, a raw RESP client, fake non-Redis servers.

Every process and thread started here is stopped by the helper that started
it (processes by PID); every wait is bounded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metalio import EventLoop, EventLoopConfig, Handler

IN_CI = os.environ.get("CI") == "true"
HAVE_HIREDIS = importlib.util.find_spec("hiredis") is not None
REDIS_SERVER = shutil.which("redis-server")


def require(available: bool, reason: str) -> None:
    """Skip when *available* is false; in CI (``CI=true``) fail instead."""
    if not available:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: the CI must provide it)")
        pytest.skip(reason)


def require_hiredis() -> None:
    require(HAVE_HIREDIS, "hiredis is not installed: pip install 'metalio[relay]'")


def require_redis() -> None:
    require_hiredis()
    require(
        REDIS_SERVER is not None, "redis-server is not installed (apt-get install redis-server)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(0.01)


def cpu_over(seconds: float) -> float:
    """This process's CPU time (all threads) over a window of *seconds*."""
    start = time.process_time()
    time.sleep(seconds)
    return time.process_time() - start


# -- raw RESP -------------------------------------------------------------------


def raw_command(port: int, *args: bytes | str, password: str | None = None) -> Any:
    """Send one command on a fresh blocking connection; the reply (hiredis-parsed)."""
    import hiredis

    from metalio.apps.resp import command

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        reader = hiredis.Reader()
        wanted = 1
        if password is not None:
            s.sendall(command("AUTH", password))
            wanted = 2
        s.sendall(command(*args))
        replies: list[Any] = []
        while len(replies) < wanted:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("closed by redis")
            reader.feed(data)
            while (reply := reader.gets()) is not False:
                replies.append(reply)
        return replies[-1]


# -- redis-server ---------------------------------------------------------------


class RedisServer:
    """One ``redis-server`` on 127.0.0.1, started and stopped (by PID) by the test."""

    def __init__(self, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.password: str | None = None
        if "--requirepass" in extra:
            self.password = extra[extra.index("--requirepass") + 1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert REDIS_SERVER is not None and self.proc is None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", *self.extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                if raw_command(self.port, "PING", password=self.password) == b"PONG":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: Redis vanishes mid-stream."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def redis_server(*extra: str) -> Iterator[RedisServer]:
    require_redis()
    server = RedisServer(*extra)
    for _ in range(3):  # the free port may be taken between the probe and the bind
        try:
            server.start()
            break
        except RuntimeError:
            server.port = free_port()
    else:
        raise RuntimeError("could not start redis-server")
    try:
        yield server
    finally:
        server.stop()


# -- relay nodes ----------------------------------------------------------------


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _NodeHandler(Handler):
    def __init__(self, node: Node) -> None:
        self.node = node

    def ready(self, loop: EventLoop, token: int, ready: Any) -> None:
        relay = self.node.relay
        assert relay.owns_token(token), token
        relay.ready(token, ready)

    def timeout(self, loop: EventLoop, payload: object) -> None:
        relay = self.node.relay
        assert relay.owns_payload(payload), payload
        relay.timeout(payload)

    def notify(self, loop: EventLoop, msg: Any) -> None:
        fn, answer = msg
        try:
            answer.put((True, fn(self.node.relay)))
        except BaseException as exc:
            answer.put((False, exc))


class Node:
    """A Relay on its own EventLoop and thread; collects what it receives and logs."""

    def __init__(self, url: str, name: str, backend: str | None = None, **kwargs: Any) -> None:
        self.name = name
        self.received: list[tuple[str, int, bytes]] = []
        self.losses: list[str] = []
        self.log = ListHandler()
        self.logger = logging.getLogger(f"test.relay.{name}.{id(self)}")
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self.log)
        self.loop = EventLoop(EventLoopConfig(backend=backend))
        from metalio.apps.relay import Relay

        try:
            self.relay = Relay(
                self.loop, url, node_id=name, logger=self.logger,
                on_message=lambda node, client, data: self.received.append((node, client, bytes(data))),
                on_loss=self.losses.append, **kwargs,
            )  # fmt: skip
        except BaseException:
            self.loop.close()
            self.logger.removeHandler(self.log)
            raise
        self.sender = self.loop.channel()
        self.thread = threading.Thread(target=self.loop.run, args=(_NodeHandler(self),))
        self.thread.start()

    def call(self, fn: Callable[[Any], Any]) -> Any:
        answer: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.sender.send((fn, answer))
        ok, value = answer.get(timeout=15)
        if not ok:
            raise value
        return value

    def publish(self, items: list[tuple[int, bytes]]) -> list[bool]:
        return self.call(lambda relay: [relay.publish(c, d) for c, d in items])  # type: ignore[no-any-return]

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in list(self.log.records) if r.levelno >= level]

    def close(self) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self.call(lambda relay: relay.close())
            self.loop.shutdown()
            self.thread.join(15)
        if not self.thread.is_alive():
            self.relay.close()  # idempotent; needed when the loop thread died of an error
        self.loop.close()
        self.logger.removeHandler(self.log)


@contextlib.contextmanager
def nodes(url: str, names: str, **kwargs: Any) -> Iterator[list[Node]]:
    require_hiredis()
    made: list[Node] = []
    try:
        for name in names:
            made.append(Node(url, name, **kwargs))
        yield made
    finally:
        for node in made:
            node.close()


# -- servers that are not Redis -------------------------------------------------


class FakeServer:
    """A TCP server on 127.0.0.1 that is not Redis, in one of several behaviours."""

    MODES = ("garbage", "echo", "silent", "close")

    def __init__(self, mode: str) -> None:
        assert mode in self.MODES
        self.mode = mode
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        conns: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(0.05):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    if sock is self.listener:
                        conn, _ = sock.accept()
                        self.accepted += 1
                        if self.mode == "close":
                            conn.close()
                            continue
                        if self.mode == "garbage":
                            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                        conn.setblocking(False)
                        conns.append(conn)
                        sel.register(conn, selectors.EVENT_READ)
                        continue
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        sel.unregister(sock)
                        sock.close()
                        conns.remove(sock)
                    elif self.mode == "echo":
                        sock.sendall(data)
        finally:
            for conn in conns:
                conn.close()
            sel.close()
            self.listener.close()
