"""Readiness tracking under real threads: several pollers on one Poll, ONESHOT hand-off.

The seed's multi-threaded model (``examples/threaded_oneshot.py``): streams
registered ``EDGE | ONESHOT`` with one epoll ``Poll``, four threads polling
it, each draining the stream it was handed until ``None`` and re-arming it
with ``reregister``, while a writer thread feeds every stream.  The
interpreter switches threads every microsecond on the GIL build; on a
free-threaded build the threads run in parallel.  Every byte must arrive,
in order, on every stream: a stale "drained" mark that hid newer readiness
would strand a stream (its data written, never read) and fail the test.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from metalio import Events, Interest, Poll, PollOpt
from metalio.net import UnixStream

STREAMS = 8
POLLERS = 4
MESSAGES = 300  # per stream
R_ONESHOT = PollOpt.EDGE | PollOpt.ONESHOT


@pytest.mark.parametrize("oneshot", [True, False], ids=["oneshot-handoff", "edge-shared"])
def test_pollers_never_lose_tracked_data(fast_switching: None, oneshot: bool) -> None:
    """ONESHOT: one owner per event, re-armed after the drain.  EDGE alone:
    every poller may get a stream's event, and reads of one stream are
    serialised by a lock, so a drain can race another thread's poll (the
    generation guard's case)."""
    opts = R_ONESHOT if oneshot else PollOpt.EDGE
    locks = [threading.Lock() for _ in range(STREAMS)]
    pairs = [UnixStream.pair() for _ in range(STREAMS)]
    received = [bytearray() for _ in range(STREAMS)]
    expected = [bytearray() for _ in range(STREAMS)]
    done = threading.Event()
    errors: list[BaseException] = []
    with Poll("epoll") as poll:
        for token, (mine, _) in enumerate(pairs):
            poll.registry.register(mine, token, Interest.READABLE, opts)

        def poller() -> None:
            events = Events(1)
            buf = bytearray(3000)  # smaller than some messages: short and full reads both
            try:
                while not done.is_set():
                    poll.poll(events, 0.05)
                    for event in events:
                        mine = pairs[event.token][0]
                        with locks[event.token]:
                            while True:
                                n = mine.try_read_into(buf)
                                if not n:  # None: drained for now (0 never comes here)
                                    break
                                received[event.token] += buf[:n]
                        if oneshot:
                            poll.registry.reregister(mine, event.token, Interest.READABLE, opts)
            except BaseException as exc:
                errors.append(exc)

        def writer() -> None:
            rng = random.Random(7)
            try:
                for i in range(MESSAGES):
                    for token, (_, peer) in enumerate(pairs):
                        data = bytes([i % 251]) * rng.randint(1, 5000)
                        view = memoryview(data)
                        while view:
                            n = peer.try_write(view)  # the peers are not registered
                            if n is None:
                                time.sleep(0.0005)
                                continue
                            view = view[n:]
                        expected[token] += data
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=poller) for _ in range(POLLERS)]
        for t in threads:
            t.start()
        w = threading.Thread(target=writer)
        w.start()
        w.join(60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            len(r) < len(e) for r, e in zip(received, expected, strict=True)
        ):
            time.sleep(0.05)
        done.set()
        for t in threads:
            t.join(10)
    for a, b in pairs:
        a.close()
        b.close()
    assert errors == []
    assert not w.is_alive() and not any(t.is_alive() for t in threads)
    for token in range(STREAMS):
        assert len(received[token]) == len(expected[token]), f"stream {token} stranded"
        assert received[token] == expected[token], f"stream {token} out of order"
