"""The loop's I/O phase for unique fds: ``IoDispatcher.dispatch_unique``.

Each test builds an ``IoDispatcher`` over a real registry and drives its
``dispatch_unique`` with hand-made batches: the calls made, reserved tokens,
unregistered fds, closing bits, the readiness epoch, odd batch types, and
what a raising handler leaves for the next batch (API section 5: nothing
lost, nothing twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from metalio import Interest, Poll, PollOpt, Ready
from metalio._io_dispatch import IoDispatcher
from metalio.net import UnixStream

R = Interest.READABLE


class Setup:
    def __init__(self, poll: Poll) -> None:
        self.internal_calls: list[int] = []
        self.io = IoDispatcher(poll.registry, self.internal_calls.append, poll.tracking.epoch)
        self.dispatch: Callable[[Any, Any, Any], None] = self.io.dispatch_unique
        self.calls: list[tuple[Any, int, Ready]] = []

    def ready(self, loop: Any, token: int, ready: Ready) -> None:
        self.calls.append((loop, token, ready))


@pytest.fixture
def streams() -> Iterator[list[UnixStream]]:
    pairs = [UnixStream.pair() for _ in range(3)]
    yield [a for a, _ in pairs]
    for a, b in pairs:
        a.close()
        b.close()


@pytest.fixture
def poll() -> Iterator[Poll]:
    with Poll(backend="epoll") as p:
        yield p


def register_all(poll: Poll, streams: list[UnixStream]) -> list[int]:
    for i, s in enumerate(streams):
        poll.registry.register(s, 10 + i, R, PollOpt.EDGE)
    return [s.fileno() for s in streams]


def test_one_call_per_event_in_order(poll: Poll, streams: list[UnixStream]) -> None:
    setup = Setup(poll)  # before the registrations: the index observes them
    fds = register_all(poll, streams)
    loop = object()
    setup.dispatch(loop, [(fds[2], 1), (fds[0], 1), (fds[1], 1)], setup.ready)
    assert setup.calls == [
        (loop, 12, Ready.READABLE),
        (loop, 10, Ready.READABLE),
        (loop, 11, Ready.READABLE),
    ]
    assert setup.internal_calls == []


def test_unregistered_and_unknown_fds(poll: Poll, streams: list[UnixStream]) -> None:
    setup = Setup(poll)
    fds = register_all(poll, streams)
    poll.registry.deregister(streams[1])  # its fd now holds UNREGISTERED
    setup.dispatch(None, [(fds[1], 1), (10**6, 1), (fds[0], 1)], setup.ready)
    assert [token for _, token, _ in setup.calls] == [10]
    assert len(setup.internal_calls) == 1 and setup.internal_calls[0] < 0  # UNREGISTERED


def test_a_closing_bit_switches_tracking_off_first(poll: Poll, streams: list[UnixStream]) -> None:
    setup = Setup(poll)  # before the registrations: the index observes them
    fds = register_all(poll, streams)
    closing = setup.io.closing_above + 1
    assert streams[0]._epoch is not None
    seen: list[object] = []

    def ready(loop: Any, token: int, ready: Ready) -> None:
        seen.append(streams[0]._epoch)

    setup.dispatch(None, [(fds[0], closing)], ready)
    from metalio._readiness import NEVER

    assert seen == [NEVER]


def test_every_batch_advances_the_epoch(poll: Poll, streams: list[UnixStream]) -> None:
    setup = Setup(poll)
    fds = register_all(poll, streams)
    epoch = poll.tracking.epoch
    before = epoch.now
    setup.dispatch(None, [(fds[0], 1)], setup.ready)
    assert epoch.now != before
    streams[0]._rmark = epoch.now  # drained at this epoch
    setup.dispatch(None, [(fds[1], 1)], setup.ready)
    assert streams[0]._rmark != epoch.now  # any batch makes every mark stale
    untracked = IoDispatcher(poll.registry, setup.internal_calls.append, None)
    now = epoch.now
    untracked.dispatch_unique(None, [(fds[0], 1)], setup.ready)
    assert epoch.now == now


def test_batches_that_are_not_lists_of_tuples(poll: Poll, streams: list[UnixStream]) -> None:
    setup = Setup(poll)  # before the registrations: the index observes them
    fds = register_all(poll, streams)
    setup.dispatch(None, ((fds[0], 1), [fds[1], 1]), setup.ready)
    assert [token for _, token, _ in setup.calls] == [10, 11]
    with pytest.raises(ValueError):
        setup.dispatch(None, [(fds[0], 1, 2)], setup.ready)
    with pytest.raises(TypeError):
        setup.dispatch(None, [(fds[0], "mask")], setup.ready)


@pytest.mark.parametrize("failing", [0, 1, 2])
def test_a_raising_handler_keeps_the_rest(
    poll: Poll, streams: list[UnixStream], failing: int
) -> None:
    setup = Setup(poll)  # before the registrations: the index observes them
    fds = register_all(poll, streams)
    raw = [(fds[0], 1), (fds[1], 1), (fds[2], 1)]

    def ready(loop: Any, token: int, ready: Ready) -> None:
        setup.calls.append((loop, token, ready))
        if token == 10 + failing:
            raise KeyError(token)

    with pytest.raises(KeyError):
        setup.dispatch(None, raw, ready)
    assert [t for _, t, _ in setup.calls] == [10 + i for i in range(failing + 1)]
    assert setup.io.leftover == (raw[failing + 1 :] or None)


def test_an_exception_of_keep_after_replaces_the_handlers(
    poll: Poll, streams: list[UnixStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_keep_after(self: IoDispatcher, raw: Any, fd: int) -> None:
        raise LookupError("keep_after")

    monkeypatch.setattr(IoDispatcher, "keep_after", broken_keep_after)
    setup = Setup(poll)
    fds = register_all(poll, streams)

    def ready(loop: Any, token: int, ready: Ready) -> None:
        raise KeyError(token)

    with pytest.raises(LookupError):
        setup.dispatch(None, [(fds[0], 1)], ready)
