"""``metalio.asyncio``: a raw ``Poll`` watched by asyncio (``poll_events``, ``watch``).

Real sockets, the default asyncio loop and uvloop when installed; every
asyncio part is bounded by ``asyncio.wait_for``.  The back-off test drives
the bridges with a stand-in "Poll" whose descriptor stays readable while
its ``poll`` finds nothing, the case that must not spin.
"""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import metalio.asyncio
from metalio import Events, Interest, Poll, PollOpt
from metalio._backends import available_backends

T = TypeVar("T")
LIMIT = 20.0


def _factories() -> list[Any]:
    params: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        params.append(
            pytest.param(None, id="uvloop", marks=pytest.mark.skip("uvloop not installed"))
        )
    else:
        params.append(pytest.param(uvloop.new_event_loop, id="uvloop"))
    return params


@pytest.fixture(params=_factories())
def arun(request: pytest.FixtureRequest) -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    factory = request.param

    def run(coro: Coroutine[Any, Any, T]) -> T:
        aloop = factory()
        try:
            return aloop.run_until_complete(asyncio.wait_for(coro, LIMIT))  # type: ignore[no-any-return]
        finally:
            aloop.close()

    yield run


@pytest.fixture
def poll() -> Iterator[Poll]:
    with Poll() as p:
        yield p


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(3)]
    for a, _ in made:
        a.setblocking(False)
    try:
        yield made
    finally:
        for a, b in made:
            a.close()
            b.close()


def test_poll_events_yields_the_events(arun: Any, poll: Poll, pairs: Any) -> None:
    for token, (a, _) in enumerate(pairs):
        poll.registry.register(a, token, Interest.READABLE, PollOpt.EDGE)
    events = Events(16)

    async def main() -> list[tuple[int, bytes]]:
        got: list[tuple[int, bytes]] = []

        async def writer() -> None:
            for round_ in range(5):
                for token, (_, b) in enumerate(pairs):
                    b.send(f"{token}.{round_}".encode())
                    await asyncio.sleep(0.005)

        task = asyncio.ensure_future(writer())
        async with metalio.asyncio.poll_events(poll, events) as stream:
            async for n in stream:
                assert n == len(events) > 0
                for event in events:
                    got.append((event.token, pairs[event.token][0].recv(100)))
                if len(got) == 15:
                    break
        assert stream.closed
        await task
        return got

    got = arun(main())
    assert sorted(got) == sorted((t, f"{t}.{r}".encode()) for t in range(3) for r in range(5))


def test_poll_events_close_ends_a_waiting_consumer(arun: Any, poll: Poll) -> None:
    async def main() -> list[int]:
        stream = metalio.asyncio.poll_events(poll, Events())
        seen: list[int] = []

        async def consume() -> None:
            async for n in stream:
                seen.append(n)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.02)
        stream.close()
        await task  # StopAsyncIteration ended the loop
        assert not asyncio.get_running_loop().remove_reader(poll.fileno())
        return seen

    assert arun(main()) == []


def test_poll_events_cancelled_consumer_leaves_no_reader(arun: Any, poll: Poll) -> None:
    async def main() -> None:
        stream = metalio.asyncio.poll_events(poll, Events())
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not asyncio.get_running_loop().remove_reader(poll.fileno())
        await stream.aclose()

    arun(main())


def test_poll_events_one_waiter_at_a_time(arun: Any, poll: Poll) -> None:
    async def main() -> None:
        async with metalio.asyncio.poll_events(poll, Events()) as stream:
            first = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError):
                await stream.__anext__()
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first

    arun(main())


def test_poll_events_abandoned_between_steps_does_not_spin(
    arun: Any, poll: Poll, pairs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = pairs[0]
    poll.registry.register(a, 1, Interest.READABLE)  # LEVEL: readable until read
    b.send(b"never read")
    calls = 0
    on_readable = metalio.asyncio.PollEvents._on_readable

    def counting(self: metalio.asyncio.PollEvents) -> None:
        nonlocal calls
        calls += 1
        on_readable(self)

    monkeypatch.setattr(metalio.asyncio.PollEvents, "_on_readable", counting)

    async def main() -> None:
        stream = metalio.asyncio.poll_events(poll, Events())
        assert await stream.__anext__() == 1
        # The consumer stops asking (no close) while the Poll stays readable.
        await asyncio.sleep(0.3)
        stream.close()

    arun(main())
    # Spinning is one call per asyncio iteration (tens of thousands); the
    # bridge stops watching at the first call that finds nobody waiting.
    assert calls <= 3, calls


def test_watch_calls_back_until_cancelled(arun: Any, poll: Poll, pairs: Any) -> None:
    a, b = pairs[0]
    poll.registry.register(a, 9, Interest.READABLE, PollOpt.EDGE)
    events = Events()
    got: list[tuple[int, bytes]] = []

    def on_events(evs: Events) -> None:
        for event in evs:
            got.append((event.token, a.recv(100)))

    async def main() -> None:
        with metalio.asyncio.watch(poll, events, on_events) as watcher:
            b.send(b"one")
            while not got:
                await asyncio.sleep(0.001)
            watcher.cancel()
            assert watcher.cancelled()
            b.send(b"two")
            await asyncio.sleep(0.1)
        assert not asyncio.get_running_loop().remove_reader(poll.fileno())

    arun(main())
    assert got == [(9, b"one")]


@pytest.mark.parametrize("backend", ["poll", "select"])
def test_bridges_refuse_backends_without_fileno(arun: Any, backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} not available")
    with Poll(backend=backend) as p:
        with pytest.raises(io.UnsupportedOperation):
            metalio.asyncio.poll_events(p, Events())

        async def main() -> None:
            metalio.asyncio.watch(p, Events(), lambda evs: None)

        with pytest.raises(io.UnsupportedOperation):
            arun(main())


class StuckPoll:
    """A descriptor that stays readable and a poll() that never finds anything."""

    def __init__(self) -> None:
        self.r, self.w = socket.socketpair()
        self.w.send(b"x")  # never read: readable for good
        self.calls = 0

    def fileno(self) -> int:
        return self.r.fileno()

    def poll(self, events: Events, timeout: float | None = None) -> int:
        assert timeout == 0
        self.calls += 1
        return 0

    def close(self) -> None:
        self.r.close()
        self.w.close()


def test_readable_but_empty_does_not_spin(arun: Any) -> None:
    stuck_iter, stuck_watch = StuckPoll(), StuckPoll()

    async def main() -> None:
        stream = metalio.asyncio.poll_events(stuck_iter, Events())  # type: ignore[arg-type]
        task = asyncio.ensure_future(stream.__anext__())
        watcher = metalio.asyncio.watch(stuck_watch, Events(), lambda evs: None)  # type: ignore[arg-type]
        await asyncio.sleep(0.5)
        watcher.cancel()
        stream.close()
        with pytest.raises(StopAsyncIteration):
            await task

    try:
        arun(main())
    finally:
        stuck_iter.close()
        stuck_watch.close()
    # Spinning would be tens of thousands of polls in half a second; the
    # back-off (1 ms doubling to 100 ms) allows about a dozen.
    assert 1 <= stuck_iter.calls < 50
    assert 1 <= stuck_watch.calls < 50
