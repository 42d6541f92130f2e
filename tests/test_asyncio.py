"""``EventLoop.run_async`` under real asyncio loops (the default one, and uvloop when installed).

Every test runs once per asyncio loop implementation; each is bounded by
``asyncio.wait_for`` (``LIMIT``) and uses 127.0.0.1 only.  Timing assertions
are one-sided: "never early" is exact, "not too late" allows seconds.  The
idle test compares process CPU time over a one-second idle window with a
generous bound (a spinning loop burns the whole second).
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from metalio import EventLoop, EventLoopConfig, Handler, Interest, PollOpt, Ready
from metalio._backends import available_backends
from metalio.net import TcpListener, TcpStream

T = TypeVar("T")
LIMIT = 20.0  # seconds: the bound of every test's asyncio part


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
    """Run a coroutine to completion on a fresh asyncio loop of the parametrized kind."""
    factory = request.param

    def run(coro: Coroutine[Any, Any, T]) -> T:
        aloop = factory()
        try:
            return aloop.run_until_complete(asyncio.wait_for(coro, LIMIT))  # type: ignore[no-any-return]
        finally:
            aloop.run_until_complete(aloop.shutdown_asyncgens())
            aloop.close()

    yield run


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    with EventLoop() as ev:
        yield ev


class Recorder(Handler):
    """Records messages and timeouts; ``stop_on`` ends the run."""

    def __init__(self, stop_on: object = "stop") -> None:
        self.msgs: list[object] = []
        self.fired: list[tuple[object, float]] = []
        self.ticks = 0
        self.stop_on = stop_on

    def notify(self, loop: EventLoop, msg: object) -> None:
        self.msgs.append(msg)
        if msg == self.stop_on:
            loop.shutdown()

    def timeout(self, loop: EventLoop, payload: object) -> None:
        self.fired.append((payload, time.monotonic()))
        if payload == self.stop_on:
            loop.shutdown()

    def tick(self, loop: EventLoop) -> None:
        self.ticks += 1


async def until(cond: Callable[[], bool], what: str = "condition") -> None:
    while not cond():
        await asyncio.sleep(0.001)


# -- echo through a handler while asyncio tasks run ----------------------------


class Echo(Handler):
    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.conns: dict[int, TcpStream] = {}

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        if token == 0:
            while (accepted := self.listener.try_accept()) is not None:
                stream = accepted[0]
                tok = len(self.conns) + 1
                self.conns[tok] = stream
                loop.register(stream, tok, Interest.READABLE, PollOpt.EDGE)
            return
        stream = self.conns[token]
        while (data := stream.try_read()) is not None:
            if not data:
                loop.deregister(stream)
                stream.close()
                return
            stream.socket.setblocking(True)  # small writes: keep the test simple
            stream.socket.sendall(data)
            stream.socket.setblocking(False)


def test_echo_while_asyncio_tasks_run(arun: Any, loop: EventLoop) -> None:
    async def main() -> tuple[list[bytes], int]:
        with TcpListener.bind(("127.0.0.1", 0)) as listener:
            loop.register(listener, 0, Interest.READABLE, PollOpt.EDGE)
            handler = Echo(listener)
            run = asyncio.ensure_future(loop.run_async(handler))
            beats = 0

            async def heartbeat() -> None:
                nonlocal beats
                while True:
                    await asyncio.sleep(0.001)
                    beats += 1

            hb = asyncio.ensure_future(heartbeat())
            port = listener.local_addr()[1]
            got: list[bytes] = []
            clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            for i in range(50):
                for k, (reader, writer) in enumerate(clients):
                    msg = f"{k}:{i};".encode()
                    writer.write(msg)
                    got.append(await reader.readexactly(len(msg)))
            for _, writer in clients:
                writer.close()
                await writer.wait_closed()
            assert loop.is_running()
            loop.shutdown()  # from a coroutine on the loop's own thread
            await run
            hb.cancel()
            for stream in handler.conns.values():
                stream.close()
            return got, beats

    got, beats = arun(main())
    assert got == [f"{k}:{i};".encode() for i in range(50) for k in range(3)]
    assert beats > 0
    assert not loop.is_running()


# -- timers --------------------------------------------------------------------


def test_timers_fire_in_order_and_never_early(arun: Any, loop: EventLoop) -> None:
    h = Recorder()
    delays = {"a": 0.03, "b": 0.01, "c": 0.06, "stop": 0.1}

    async def main() -> dict[str, float]:
        set_at = {}
        for payload, delay in delays.items():
            set_at[payload] = time.monotonic()
            loop.timeout(payload, delay)
        await loop.run_async(h)
        return set_at

    set_at = arun(main())
    assert [p for p, _ in h.fired] == ["b", "a", "c", "stop"]
    for payload, when in h.fired:
        assert isinstance(payload, str)
        assert when >= set_at[payload] + delays[payload]  # never early
        assert when < set_at[payload] + delays[payload] + 5.0  # generous late bound


def test_timer_wakeups_are_not_repeated_before_the_deadline(arun: Any, loop: EventLoop) -> None:
    # uvloop rounds call_later delays to milliseconds and may call back early;
    # an early call must re-arm, not spin through iterations until the deadline.
    n = 20

    class H(Recorder):
        def timeout(self, loop: EventLoop, payload: object) -> None:
            super().timeout(loop, payload)
            if len(self.fired) == n:
                loop.shutdown()
            else:
                loop.timeout(payload, 0.0073)

    h = H()

    async def main() -> None:
        loop.timeout("again", 0.0073)
        await loop.run_async(h)

    arun(main())
    assert len(h.fired) == n
    # Two iterations per timeout: the wheel's lower bound, then its tick.
    assert h.ticks <= 3 * n + 5, h.ticks


def test_timeout_set_by_a_coroutine_wakes_the_sleeping_loop(arun: Any, loop: EventLoop) -> None:
    h = Recorder()

    async def main() -> float:
        run = asyncio.ensure_future(loop.run_async(h))
        await asyncio.sleep(0.05)  # the loop sleeps with nothing armed
        t0 = time.monotonic()
        loop.timeout("stop", 0.02)
        await run
        return t0

    t0 = arun(main())
    assert [p for p, _ in h.fired] == ["stop"]
    assert h.fired[0][1] >= t0 + 0.02


def test_timeout_set_by_a_handler(arun: Any, loop: EventLoop) -> None:
    class H(Recorder):
        def notify(self, loop: EventLoop, msg: object) -> None:
            loop.timeout("stop", 0.02)

    h = H()

    async def main() -> None:
        loop.channel().send("go")
        await loop.run_async(h)

    arun(main())
    assert [p for p, _ in h.fired] == ["stop"]


# -- cancellation --------------------------------------------------------------


def test_cancel_stops_cleanly_and_keeps_everything(arun: Any, loop: EventLoop) -> None:
    a, b = socket.socketpair()
    h = Recorder()
    sender = loop.channel()

    class H(Recorder):
        def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
            self.msgs.append(("ready", token))
            a.recv(100)

    h = H()

    async def main() -> None:
        aloop = asyncio.get_running_loop()
        fd = loop.poll.fileno()
        a.setblocking(False)
        loop.register(a, 7, Interest.READABLE)
        loop.timeout("t", 0.15)
        run = asyncio.ensure_future(loop.run_async(h))
        await until(lambda: h.ticks > 0)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert not loop.is_running()
        assert not aloop.remove_reader(fd)  # the reader is gone
        ticks = h.ticks
        # Everything that would wake a running loop: none of it may run one.
        b.send(b"x")
        sender.send("m")
        threading.Thread(target=sender.send, args=("from a thread",)).start()
        await asyncio.sleep(0.3)  # past the timeout's deadline
        assert h.ticks == ticks
        assert h.fired == [] and h.msgs == []
        with pytest.raises(FileExistsError):
            loop.register(a, 8, Interest.READABLE)  # still registered
        # A new run delivers everything, once.
        sender.send("stop")
        await loop.run_async(h)

    try:
        arun(main())
    finally:
        a.close()
        b.close()
    assert h.msgs.count(("ready", 7)) == 1
    assert [m for m in h.msgs if m != ("ready", 7)] == ["m", "from a thread", "stop"]
    assert [p for p, _ in h.fired] == ["t"]


def test_cancel_leaves_no_callbacks_on_the_asyncio_loop(loop: EventLoop) -> None:
    # asyncio's own loop only: its ready queue and timer heap are inspectable.
    async def main() -> None:
        aloop = asyncio.get_running_loop()
        loop.timeout("t", 30)
        run = asyncio.ensure_future(loop.run_async(Recorder()))
        await asyncio.sleep(0.05)

        def ours() -> list[asyncio.Handle]:
            handles = [*aloop._scheduled, *aloop._ready]  # type: ignore[attr-defined]
            return [h for h in handles if not h.cancelled() and "_AsyncRun" in repr(h)]

        assert len(ours()) == 1  # the call_later for the 30 s timeout
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert ours() == []

    aloop = asyncio.new_event_loop()
    try:
        aloop.run_until_complete(asyncio.wait_for(main(), LIMIT))
    finally:
        aloop.close()


# -- exceptions ----------------------------------------------------------------


class Boom(Exception):
    pass


def test_handler_exception_propagates_and_run_async_can_be_awaited_again(
    arun: Any, loop: EventLoop
) -> None:
    class H(Recorder):
        def notify(self, loop: EventLoop, msg: object) -> None:
            super().notify(loop, msg)
            if msg == "boom":
                raise Boom(msg)

        def timeout(self, loop: EventLoop, payload: object) -> None:
            super().timeout(loop, payload)
            if payload == "tboom":
                raise Boom(payload)

    h = H()
    sender = loop.channel()

    async def main() -> None:
        for msg in (1, "boom", 2, 3):
            sender.send(msg)
        with pytest.raises(Boom, match="boom"):
            await loop.run_async(h)
        assert not loop.is_running()
        assert h.msgs == [1, "boom"]
        loop.timeout("tboom", 0.01)
        loop.timeout("after", 0.02)
        with pytest.raises(Boom, match="tboom"):
            await loop.run_async(h)
        assert h.msgs == [1, "boom", 2, 3]
        h.stop_on = "after"
        await loop.run_async(h)

    arun(main())
    assert h.msgs == [1, "boom", 2, 3]
    assert [p for p, _ in h.fired] == ["tboom", "after"]


def test_stop_iteration_from_a_handler_arrives_as_runtime_error(arun: Any, loop: EventLoop) -> None:
    class H(Handler):
        def notify(self, loop: EventLoop, msg: object) -> None:
            raise StopIteration

    async def main() -> None:
        loop.channel().send(1)
        with pytest.raises(RuntimeError) as info:
            await loop.run_async(H())
        assert isinstance(info.value.__cause__, StopIteration)

    arun(main())


def test_running_loop_refuses_run_run_once_close_and_a_second_run_async(
    arun: Any, loop: EventLoop
) -> None:
    h = Recorder()

    async def main() -> None:
        run = asyncio.ensure_future(loop.run_async(h))
        await until(lambda: h.ticks > 0)
        with pytest.raises(RuntimeError):
            loop.run_once(h, 0)
        with pytest.raises(RuntimeError):
            loop.run(h)
        with pytest.raises(RuntimeError):
            await loop.run_async(h)
        with pytest.raises(RuntimeError):
            loop.close()
        assert loop.is_running()  # the refusals changed nothing
        loop.channel().send("stop")
        await run

    arun(main())
    assert h.msgs == ["stop"]


def test_run_async_on_a_closed_loop(arun: Any) -> None:
    ev = EventLoop()
    ev.close()
    with pytest.raises(ValueError):
        arun(ev.run_async(Handler()))


@pytest.mark.parametrize("backend", ["poll", "select"])
def test_backend_without_fileno_is_unsupported(arun: Any, backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} not available")
    with EventLoop(EventLoopConfig(backend=backend)) as ev:
        with pytest.raises(io.UnsupportedOperation):
            arun(ev.run_async(Handler()))
        assert not ev.is_running()
        ev.run_once(Handler(), 0)  # nothing was left claimed


# -- waking from elsewhere -----------------------------------------------------


def test_shutdown_from_another_thread(arun: Any, loop: EventLoop) -> None:
    h = Recorder()

    async def main() -> float:
        run = asyncio.ensure_future(loop.run_async(h))
        await until(lambda: h.ticks > 0)
        t0 = time.monotonic()
        threading.Thread(target=loop.shutdown).start()
        await run
        return time.monotonic() - t0

    elapsed = arun(main())
    assert elapsed < 10.0
    assert not loop.is_running()


def test_shutdown_from_a_coroutine_wakes_the_sleeping_loop(arun: Any, loop: EventLoop) -> None:
    h = Recorder()

    async def main() -> None:
        run = asyncio.ensure_future(loop.run_async(h))
        await asyncio.sleep(0.05)  # asleep: nothing armed, nothing readable
        loop.shutdown()  # same thread, outside any iteration
        await run

    arun(main())
    assert not loop.is_running()
    assert h.ticks >= 2  # the first iteration and the one that saw the shutdown


def test_send_from_threads_and_coroutines_wakes_it(arun: Any, loop: EventLoop) -> None:
    n = 200
    h = Recorder(stop_on=None)
    done = {"t": 0, "c": 0}

    class H(Recorder):
        def notify(self, loop: EventLoop, msg: object) -> None:
            self.msgs.append(msg)
            assert isinstance(msg, tuple)
            done[msg[0]] += 1
            if done["t"] == n and done["c"] == n:
                loop.shutdown()

    h = H()
    sender = loop.channel()

    def thread_sends() -> None:
        for i in range(n):
            sender.send(("t", i))
            if i % 20 == 0:
                time.sleep(0.002)  # let the loop fall asleep in between

    async def main() -> None:
        run = asyncio.ensure_future(loop.run_async(h))
        await until(lambda: h.ticks > 0)
        worker = threading.Thread(target=thread_sends)
        worker.start()
        for i in range(n):
            sender.send(("c", i))
            if i % 20 == 0:
                await asyncio.sleep(0.002)
        await run
        worker.join(10)

    arun(main())
    assert [m for m in h.msgs if m[0] == "t"] == [("t", i) for i in range(n)]  # type: ignore[index]
    assert [m for m in h.msgs if m[0] == "c"] == [("c", i) for i in range(n)]  # type: ignore[index]


def test_a_lone_send_from_a_coroutine_wakes_the_sleeping_loop(arun: Any, loop: EventLoop) -> None:
    h = Recorder()
    sender = loop.channel()

    async def main() -> None:
        run = asyncio.ensure_future(loop.run_async(h))
        await asyncio.sleep(0.05)  # asleep: nothing armed, nothing readable
        sender.send("stop")
        await run

    arun(main())
    assert h.msgs == ["stop"]


def test_a_handler_creates_an_asyncio_task(arun: Any, loop: EventLoop) -> None:
    sender = loop.channel()

    class H(Recorder):
        def notify(self, loop: EventLoop, msg: object) -> None:
            super().notify(loop, msg)
            if msg == "spawn":

                async def later() -> None:
                    await asyncio.sleep(0.01)
                    sender.send("stop")

                self.task = asyncio.get_running_loop().create_task(later())

    h = H()

    async def main() -> None:
        sender.send("spawn")
        await loop.run_async(h)

    arun(main())
    assert h.msgs == ["spawn", "stop"]


def test_a_coroutine_registers_a_source(arun: Any, loop: EventLoop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)

    class H(Recorder):
        def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
            self.msgs.append((token, a.recv(100)))
            loop.shutdown()

    h = H()

    async def main() -> None:
        run = asyncio.ensure_future(loop.run_async(h))
        await asyncio.sleep(0.02)
        loop.register(a, 5, Interest.READABLE, PollOpt.EDGE)
        await asyncio.sleep(0.02)
        b.send(b"hi")
        await run

    try:
        arun(main())
    finally:
        a.close()
        b.close()
    assert h.msgs == [(5, b"hi")]


# -- idle ----------------------------------------------------------------------


def test_no_busy_loop_when_idle(arun: Any, loop: EventLoop) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    h = Recorder()

    async def main() -> tuple[float, int]:
        loop.register(a, 1, Interest.READABLE)
        sender = loop.channel()
        loop.timeout("far", 60)
        run = asyncio.ensure_future(loop.run_async(h))
        await asyncio.sleep(0.1)
        ticks = h.ticks
        cpu0 = time.process_time()
        await asyncio.sleep(1.0)
        cpu = time.process_time() - cpu0
        idle_ticks = h.ticks - ticks
        sender.send("stop")
        await run
        return cpu, idle_ticks

    try:
        cpu, idle_ticks = arun(main())
    finally:
        a.close()
        b.close()
    assert cpu < 0.2, f"{cpu:.3f} s of CPU in a 1 s idle window ({idle_ticks} iterations)"
    assert idle_ticks <= 2


# -- signals -------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
def test_add_signal_under_run_async(arun: Any, loop: EventLoop) -> None:
    class H(Recorder):
        def signal(self, loop: EventLoop, signum: int) -> None:
            self.msgs.append(("signal", signum))
            loop.shutdown()

    h = H()

    async def main() -> None:
        # Inside the running asyncio loop: uvloop claims the wakeup fd when
        # it starts running (docs/asyncio.md).
        loop.add_signal(signal.SIGUSR1)
        try:
            run = asyncio.ensure_future(loop.run_async(h))
            await asyncio.sleep(0.05)  # asleep in asyncio's wait
            threading.Timer(0.01, os.kill, args=(os.getpid(), signal.SIGUSR1)).start()
            await run
        finally:
            loop.remove_signal(signal.SIGUSR1)

    arun(main())
    assert h.msgs == [("signal", signal.SIGUSR1)]
