"""A stream's slots under threads: its calls racing registrations that rewrite its tracking state.

One thread reads a tracked stream to the end while another registers,
re-registers and deregisters it over and over (each change replaces the
stream's ``_epoch`` and clears its marks, ``metalio._readiness``) and a
third keeps polling.  On the C core the reads take ``_epoch`` under the
source's critical section (free-threaded builds) while the registry's
observer replaces it; on the Python reference they are plain slot loads.
Under the GIL the interpreter switches threads every microsecond
(``fast_switching``); on a free-threaded build the threads run in parallel.
Whatever interleaving happens, every byte arrives once, in order, and the
end of stream is read.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from metalio import Events, Interest, Poll, PollOpt
from metalio.net import UnixStream

CHUNK = 512
CHUNKS = 400


@pytest.mark.timeout(120)
def test_reads_race_registration_changes(fast_switching: None) -> None:
    a, b = UnixStream.pair()
    payload = os.urandom(CHUNK * CHUNKS)
    received = bytearray()
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:  # pragma: no cover - the failure being tested
                errors.append(exc)

        return run

    with a, b, Poll(backend="epoll") as poll:
        registry = poll.registry
        registry.register(a, 1, Interest.READABLE, PollOpt.EDGE)

        def reader() -> None:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                data = a.try_read(CHUNK * 3)
                if data is None:
                    time.sleep(0)  # a drained mark may answer at once: let the others run
                elif not data:
                    return
                else:
                    received.extend(data)

        def churner() -> None:
            token = 2
            while not stop.is_set():
                registry.reregister(a, token, Interest.READABLE, PollOpt.EDGE)
                registry.deregister(a)
                registry.register(a, token, Interest.READABLE, PollOpt.EDGE)
                token += 1

        def poller() -> None:
            events = Events(16)
            while not stop.is_set():
                poll.poll(events, 0.001)

        helpers = [threading.Thread(target=guarded(f)) for f in (churner, poller)]
        read_thread = threading.Thread(target=guarded(reader))
        for t in (*helpers, read_thread):
            t.start()
        view = memoryview(payload)
        while view:
            n = b.try_write(view[:CHUNK])
            if n is None:
                time.sleep(0)
            else:
                view = view[n:]
        b.shutdown(socket.SHUT_WR)  # the end of stream must reach the reader too
        read_thread.join(60)
        stop.set()
        for t in helpers:
            t.join(30)
    assert not read_thread.is_alive()
    assert errors == []
    assert bytes(received) == payload
