"""A model of "bytes in the kernel buffer + an event owed" against the real thing.

A ``UnixStream`` pair; the first end registered ``EDGE`` with a real Poll of
each backend.  Random peer writes of random sizes, a peer shutdown, reads
of random sizes with and without a poll before them, and polls.  The model
knows what the kernel holds and whether the program was told about it.
What must always hold, with readiness tracking on or off:

* a poll after new data (or the end of stream) reports the source, unless
  everything was already read;
* an EDGE drain-to-``None`` loop after an event reads every byte in order,
  and the end of stream once the peer shut down;
* a ``None`` while data is in the kernel is allowed (that is the tracking),
  but then the next poll must report the source: nothing is ever stranded;
* a poll with nothing new does not report the source again (no spin).
"""

from __future__ import annotations

import socket

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from conftest import BACKENDS, open_poll
from metalio import Events, Interest, PollOpt
from metalio.net import UnixStream

TOKEN = 5


class ReadinessMachine(RuleBasedStateMachine):
    backend = "epoll"

    def __init__(self) -> None:
        super().__init__()
        self.poll = open_poll(self.backend)
        self.a, self.b = UnixStream.pair()
        self.poll.registry.register(self.a, TOKEN, Interest.READABLE, PollOpt.EDGE)
        self.events = Events(16)
        self.kernel = bytearray()  # written by the peer, not yet read
        self.sent = bytearray()
        self.received = bytearray()
        self.shut = False  # the peer shut down its writing side
        self.eof_read = False
        self.told = True  # the program has been told about everything in the kernel
        self.owed = False  # a None was answered while data waited: an event is owed

    def teardown(self) -> None:
        self.a.close()
        self.b.close()
        self.poll.close()

    def _polled(self, timeout: float) -> bool:
        self.poll.poll(self.events, timeout)
        return any(e.token == TOKEN for e in self.events)

    def _read(self, size: int) -> bytes | None:
        data = self.a.try_read(size)
        if data is None:
            if self.kernel or (self.shut and not self.eof_read):
                self.owed = True
            return None
        if data:
            assert bytes(self.kernel[: len(data)]) == data
            del self.kernel[: len(data)]
            self.received += data
        else:
            assert self.shut and not self.kernel
            self.eof_read = True
        return data

    @precondition(lambda self: not self.shut)
    @rule(size=st.integers(1, 6000), fill=st.integers(0, 255))
    def peer_writes(self, size: int, fill: int) -> None:
        data = bytes([fill]) * size
        n = self.b.try_write(data)
        assert n == size  # the socket buffer holds far more than the model ever queues
        self.kernel += data
        self.sent += data
        self.told = False

    @precondition(lambda self: not self.shut)
    @rule()
    def peer_shuts_down(self) -> None:
        self.b.shutdown(socket.SHUT_WR)
        self.shut = True
        self.told = False

    @rule(size=st.integers(1, 9000))
    def read_without_polling(self, size: int) -> None:
        if not self.eof_read:
            self._read(size)

    @rule(sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=5))
    def poll_and_drain(self, sizes: list[int]) -> None:
        news = not self.told or self.owed
        pending = bool(self.kernel) or (self.shut and not self.eof_read)
        reported = self._polled(2.0 if news and pending else 0.0)
        if news and pending:
            assert reported, "new data (or the end of stream) was never reported"
        self.told = True
        self.owed = False
        if not reported:
            return
        i = 0
        while not self.eof_read:
            if self._read(sizes[i % len(sizes)]) is None:
                break
            i += 1
        assert not self.kernel, "an EDGE drain to None left data behind"
        if self.shut:
            assert self.eof_read, "the end of stream was not reached"
        self.owed = False

    @precondition(lambda self: self.told and not self.owed and not self.kernel)
    @rule()
    def quiet_poll(self) -> None:
        if self.shut and not self.eof_read:
            return
        assert not self._polled(0.0), "reported again with nothing new (a spin)"

    @invariant()
    def bytes_in_order(self) -> None:
        assert bytes(self.received) == bytes(self.sent[: len(self.received)])


for _name in BACKENDS:
    _cls = type(
        f"ReadinessMachine_{_name.replace('-', '_')}", (ReadinessMachine,), {"backend": _name}
    )
    _case = _cls.TestCase
    _case.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
    globals()[f"TestReadiness_{_name.replace('-', '_')}"] = _case
del _case, _cls
