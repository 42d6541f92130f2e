"""Shared fixtures: every Poll test runs once per backend this machine can run.

The kqueue backend cannot run on Linux; it is exercised through a fake
``select`` module built on a real epoll (``tests/fake_kqueue.py``), so the
same contract tests drive its translation logic against real sockets.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from collections.abc import Callable, Iterator

import pytest

import metalio
import metalio._wakefd
import metalio.channel
import metalio.waker
from metalio._backends import Backend, available_backends, open_backend
from metalio._wakefd import WakeFd


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


def open_backend_object(name: str) -> Backend:
    """A backend object by name, the fake kqueue included (``Poll.over_backend`` takes it)."""
    if name == "kqueue-fake":
        spec = importlib.util.spec_from_file_location(
            "fake_kqueue", os.path.join(os.path.dirname(__file__), "fake_kqueue.py")
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from metalio._backends.kqueue import KqueueBackend

        return KqueueBackend(select_module=module)
    return open_backend(name)


# The backend object under each Poll that open_poll made, by id(poll), for
# tests that compare the registry with the kernel's (the backend's) view.
_backend_of: dict[int, Backend] = {}


def open_poll(name: str) -> metalio.Poll:
    backend = open_backend_object(name)
    poll = metalio.Poll.over_backend(backend)
    _backend_of[id(poll)] = backend
    return poll


def backend_of(poll: metalio.Poll) -> Backend:
    """The backend object under a Poll made by :func:`open_poll`."""
    return _backend_of[id(poll)]


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


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """The interpreter switches threads every microsecond (under the GIL): races show."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


# -- wake-up descriptors ---------------------------------------------------------------


class WakeFds(list):  # type: ignore[type-arg]
    """Every ``WakeFd`` the Waker and the notify channel create while the fixture is active."""

    def no_eventfd(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make new WakeFds socket pairs, as on a system without eventfd (the BSDs)."""
        monkeypatch.setattr(metalio._wakefd, "_HAS_EVENTFD", False)


def fill_wakefd(wakefd: WakeFd) -> None:
    """Fill *wakefd* to the brim: a socket pair until EAGAIN, an eventfd to its maximum."""
    if wakefd.is_eventfd:
        os.eventfd_write(wakefd.writer_fileno(), (1 << 64) - 2)
        return
    filled = 0
    try:
        while True:
            filled += os.write(wakefd.writer_fileno(), b"\0" * 65536)
    except BlockingIOError:
        pass
    assert filled > 0


@pytest.fixture
def wakefds(monkeypatch: pytest.MonkeyPatch) -> WakeFds:
    made = WakeFds()

    class Recorded(WakeFd):
        __slots__ = ()

        def __init__(self, **kwargs: bool) -> None:
            super().__init__(**kwargs)
            made.append(self)

    for module in (metalio.waker, metalio.channel):
        monkeypatch.setattr(module, "WakeFd", Recorded)
    return made
