"""Shared fixtures: every Poll test runs once per backend this machine can run.

The kqueue backend cannot run on Linux; it is exercised through a fake
``select`` module built on a real epoll (``tests/fake_kqueue.py``), so the
same contract tests drive its translation logic against real sockets.
"""

from __future__ import annotations

import importlib.util
import os
import socket
from collections.abc import Callable, Iterator

import pytest

import metalio
from metalio._backends import available_backends


def _backend_names() -> list[str]:
    names = []
    for name in available_backends():
        try:
            metalio.Poll(backend=name).close()
        except (ImportError, ValueError):  # not built on this checkout yet
            continue
        names.append(name)
    fake = os.path.join(os.path.dirname(__file__), "fake_kqueue.py")
    if "kqueue" not in names and os.path.exists(fake):
        names.append("kqueue-fake")
    return names


BACKENDS = _backend_names()


def open_poll(name: str) -> metalio.Poll:
    if name == "kqueue-fake":
        spec = importlib.util.spec_from_file_location(
            "fake_kqueue", os.path.join(os.path.dirname(__file__), "fake_kqueue.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from metalio._backends.kqueue import KqueueBackend

        return metalio.Poll._from_backend(KqueueBackend(select_module=module))
    return metalio.Poll(backend=name)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_poll(backend: str) -> Iterator[Callable[[], metalio.Poll]]:
    polls: list[metalio.Poll] = []

    def factory() -> metalio.Poll:
        p = open_poll(backend)
        polls.append(p)
        return p

    yield factory
    for p in polls:
        p.close()


@pytest.fixture
def poll(make_poll: Callable[[], metalio.Poll]) -> metalio.Poll:
    return make_poll()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected, non-blocking socketpair, closed afterwards."""
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def drain(sock: socket.socket) -> int:
    """Read until the socket would block; return the byte count."""
    total = 0
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return total
        if not data:
            return total
        total += len(data)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
