"""Shared helpers of the socket and pipe tests: the per-backend ``poll``
fixture (epoll, poll, select) and bounded waits for readiness.

Test modules import the fixture by name (``from net_helpers import net_poll``;
its fixture name is ``poll``), which takes precedence over conftest's ``poll``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from metalio import Events, Poll, Ready

BACKENDS = ("epoll", "poll", "select")


needs_procfs = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")


@pytest.fixture(params=BACKENDS, name="poll")
def net_poll(request: pytest.FixtureRequest) -> Iterator[Poll]:
    try:
        p = Poll(backend=request.param)
    except ValueError as exc:
        pytest.skip(f"backend {request.param!r} not available: {exc}")
    try:
        yield p
    finally:
        p.close()


def wait_for(poll: Poll, want: dict[int, int], timeout: float = 3.0) -> dict[int, Ready]:
    """Poll until each token in *want* has shown all its flags (ORed over events)."""
    events = Events(64)
    seen: dict[int, Ready] = {}
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        if all(seen.get(t, 0) & f == f for t, f in want.items()):
            return seen
        left = deadline - time.monotonic()
        if left <= 0:
            break
        poll.poll(events, min(left, 0.5))
        for ev in events:
            seen[ev.token] = seen.get(ev.token, Ready(0)) | ev.readiness
    raise AssertionError(f"wanted {want}, saw {seen}")


def no_events(poll: Poll, timeout: float = 0.05) -> None:
    events = Events(64)
    poll.poll(events, timeout)
    assert list(events) == []
