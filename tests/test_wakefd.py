"""``WakeFd``: the wake-up descriptor every waking party shares (``metalio._wakefd``)."""

from __future__ import annotations

import select
import threading

import pytest

import metalio._wakefd
from conftest import fill_wakefd
from metalio._wakefd import WakeFd


def readable(w: WakeFd, timeout: float = 0.0) -> bool:
    r, _, _ = select.select([w.fileno()], [], [], timeout)
    return bool(r)


@pytest.fixture(params=["eventfd", "socketpair"])
def wakefd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> WakeFd:
    if request.param == "socketpair":
        monkeypatch.setattr(metalio._wakefd, "_HAS_EVENTFD", False)
    w = WakeFd()
    request.addfinalizer(w.close)
    assert w.is_eventfd == (request.param == "eventfd")
    return w


def test_wake_drain_cycle(wakefd: WakeFd) -> None:
    assert not readable(wakefd)
    wakefd.wake()
    wakefd.wake()
    assert readable(wakefd)
    wakefd.drain()
    assert not readable(wakefd)


def test_full_descriptor_still_wakes(wakefd: WakeFd) -> None:
    """A counter at its maximum, or a socket buffer with no room: wake() never raises."""
    fill_wakefd(wakefd)
    threads = [
        threading.Thread(target=lambda: [wakefd.wake() for _ in range(200)]) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert readable(wakefd)
    wakefd.drain()
    assert not readable(wakefd)


def test_woken_from_birth() -> None:
    with_eventfd = WakeFd(woken=True)
    bytes_kind = WakeFd(carries_bytes=True, woken=True)
    try:
        assert readable(with_eventfd) and readable(bytes_kind)
        assert not bytes_kind.is_eventfd
        assert bytes_kind.drain() == b"\0"
    finally:
        with_eventfd.close()
        bytes_kind.close()


def test_carries_bytes() -> None:
    w = WakeFd(carries_bytes=True)
    try:
        import os

        os.write(w.writer_fileno(), bytes([2, 15]))
        assert w.drain() == bytes([2, 15])
        assert w.drain() == b""
    finally:
        w.close()


def test_close_is_idempotent_and_final(wakefd: WakeFd) -> None:
    wakefd.close()
    wakefd.close()
    assert wakefd.closed and wakefd.fileno() == -1
    with pytest.raises(ValueError):
        wakefd.wake()
    assert wakefd.drain() == b""
