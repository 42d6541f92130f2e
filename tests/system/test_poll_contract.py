"""The guarantees of API.md section 2, run against every backend.

Each test names the guarantee it checks.  Readiness is merged per token
(a backend may split readable and writable into two events), and spurious
events are tolerated wherever the contract tolerates them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

from conftest import drain, open_fds
from metalio import Event, Events, Interest, Poll, PollOpt, Ready

R = Interest.READABLE
W = Interest.WRITABLE


def collect(poll: Poll, timeout: float | None = 0, capacity: int = 64) -> dict[int, int]:
    events = Events(capacity)
    poll.poll(events, timeout)
    merged: dict[int, int] = {}
    for ev in events:
        merged[ev.token] = merged.get(ev.token, 0) | int(ev.readiness)
    return merged


def wait_for(poll: Poll, token: int, limit: float = 5.0) -> int:
    """Poll until *token* shows up (bounded); return its merged readiness."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = collect(poll, 0.2)
        if token in got:
            return got[token]
    raise AssertionError(f"token {token} not reported within {limit} s")


# -- construction, closing ------------------------------------------------------


def test_backend_name_and_registry_identity(poll: Poll, backend: str) -> None:
    assert poll.backend == backend.replace("-fake", "")
    assert poll.registry is poll.registry
    assert not poll.closed


def test_unknown_backend_is_value_error() -> None:
    with pytest.raises(ValueError, match="not available"):
        Poll(backend="iocp")
    with pytest.raises(TypeError):
        Poll(backend=3)  # type: ignore[arg-type]


def test_default_backend_is_epoll_on_linux() -> None:
    with Poll() as p:
        assert p.backend == "epoll"


def test_close_twice_and_calls_after_close(make_poll: Callable[[], Poll], pair) -> None:
    a, _ = pair
    p = make_poll()
    p.registry.register(a, 1, R)
    p.close()
    p.close()
    assert p.closed
    with pytest.raises(ValueError, match="closed"):
        p.poll(Events(), 0)
    with pytest.raises(ValueError, match="closed"):
        p.registry.register(a, 1, R)
    with pytest.raises(ValueError, match="closed"):
        p.registry.reregister(a, 1, R)
    with pytest.raises(ValueError, match="closed"):
        p.registry.deregister(a)
    with pytest.raises(ValueError, match="closed"):
        p.fileno()


def test_context_manager_closes(backend: str) -> None:
    from conftest import open_poll

    with open_poll(backend) as p:
        assert not p.closed
    assert p.closed


def test_fileno_nesting_or_unsupported(poll: Poll, pair) -> None:
    import io
    import select

    a, b = pair
    if poll.backend in ("poll", "select"):
        with pytest.raises(io.UnsupportedOperation):
            poll.fileno()
        return
    fd = poll.fileno()
    assert isinstance(fd, int) and fd >= 0
    poll.registry.register(a, 5, R)
    assert select.select([fd], [], [], 0)[0] == []
    b.send(b"x")
    assert select.select([fd], [], [], 5)[0] == [fd]
    assert collect(poll) == {5: Ready.READABLE}


# -- level, edge, oneshot ---------------------------------------------------------


def test_level_reports_while_condition_holds(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R, PollOpt.LEVEL)
    assert collect(poll) == {}
    b.send(b"hello")
    for _ in range(3):
        assert collect(poll, 1) == {1: Ready.READABLE}
    drain(a)
    assert collect(poll) == {}


def test_level_is_the_default(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R)
    b.send(b"x")
    assert collect(poll, 1) == {1: Ready.READABLE}
    assert collect(poll, 1) == {1: Ready.READABLE}


def test_edge_rearms_after_drain(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R, PollOpt.EDGE)
    b.send(b"hello")
    assert collect(poll, 1) == {1: Ready.READABLE}
    assert collect(poll, 0.05) == {}  # undrained: no second event
    assert drain(a) == 5
    assert collect(poll, 0.05) == {}  # drained, nothing new
    b.send(b"again")
    assert collect(poll, 1) == {1: Ready.READABLE}


def test_edge_undrained_does_not_spin(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R | W, PollOpt.EDGE)
    b.send(b"x" * 1000)
    assert collect(poll, 1).get(1, 0) & Ready.READABLE
    wall0, cpu0 = time.monotonic(), time.process_time()
    reports = 0
    for _ in range(10):
        reports += 1 in collect(poll, 0.05)
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    assert reports == 0
    # Ten 50 ms waits: a busy loop would burn about as much CPU as wall time.
    assert wall >= 0.4
    assert cpu < wall / 2


def test_edge_writable_reported_once(poll: Poll, pair) -> None:
    a, _ = pair
    poll.registry.register(a, 3, W, PollOpt.EDGE)
    assert collect(poll, 1) == {3: Ready.WRITABLE}
    assert collect(poll, 0.05) == {}


def test_oneshot_silent_until_reregister(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R, PollOpt.ONESHOT)
    b.send(b"x")
    assert collect(poll, 1) == {1: Ready.READABLE}
    b.send(b"y")
    assert collect(poll, 0.05) == {}
    assert collect(poll, 0.05) == {}
    # still registered: register again is refused, reregister re-arms at once
    with pytest.raises(FileExistsError):
        poll.registry.register(a, 1, R)
    for _ in range(3):
        poll.registry.reregister(a, 1, R, PollOpt.ONESHOT)
        assert collect(poll, 1) == {1: Ready.READABLE}
        assert collect(poll, 0.05) == {}
    poll.registry.deregister(a)


def test_edge_oneshot(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 4, R, PollOpt.EDGE | PollOpt.ONESHOT)
    b.send(b"foo")
    assert collect(poll, 1) == {4: Ready.READABLE}
    assert a.recv(1) == b"f"
    assert collect(poll, 0.05) == {}
    # reregister while data is still pending: reported again (mio's test_tcp_edge_oneshot)
    poll.registry.reregister(a, 4, R, PollOpt.EDGE | PollOpt.ONESHOT)
    assert collect(poll, 1) == {4: Ready.READABLE}
    assert a.recv(1) == b"o"


def test_oneshot_alone_means_level_oneshot(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R, PollOpt.LEVEL | PollOpt.ONESHOT)
    b.send(b"x")
    assert collect(poll, 1) == {1: Ready.READABLE}
    assert collect(poll, 0.05) == {}


# -- reregister / deregister ------------------------------------------------------


def test_reregister_replaces_token_and_interest(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R)
    b.send(b"data")
    assert collect(poll, 1) == {1: Ready.READABLE}
    poll.registry.reregister(a, 2, W)
    got = collect(poll, 1)
    assert got == {2: Ready.WRITABLE}  # no merge: readable is no longer asked for
    poll.registry.reregister(a, 3, R | W)
    assert collect(poll, 1) == {3: Ready.READABLE | Ready.WRITABLE}


def test_reregister_writable_listener_drops_old_readiness(poll: Poll) -> None:
    # mio's test_reregister_without_poll: a listener is never writable.
    lst = socket.create_server(("127.0.0.1", 0))
    lst.setblocking(False)
    cli = socket.create_connection(lst.getsockname())
    try:
        poll.registry.register(lst, 1, R, PollOpt.EDGE | PollOpt.ONESHOT)
        time.sleep(0.05)
        poll.registry.reregister(lst, 1, W, PollOpt.EDGE | PollOpt.ONESHOT)
        assert collect(poll, 0.1) == {}
    finally:
        cli.close()
        lst.close()


def test_deregister_stops_events_socket_still_works(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R | W)
    assert 1 in collect(poll, 1)
    poll.registry.deregister(a)
    b.send(b"after")
    assert collect(poll, 0.1) == {}
    assert a.recv(10) == b"after"
    a.send(b"back")
    assert b.recv(10) == b"back"
    # register -> deregister -> register works (mio registering_after_deregistering)
    poll.registry.register(a, 9, R)
    assert collect(poll, 0.05) == {}
    b.send(b"z")
    assert collect(poll, 1) == {9: Ready.READABLE}


def test_sources_by_int_fd_and_file_object(poll: Poll) -> None:
    r, w = os.pipe()
    try:
        poll.registry.register(r, 1, R)
        os.write(w, b"x")
        assert collect(poll, 1) == {1: Ready.READABLE}
        poll.registry.deregister(r)
        with os.fdopen(os.dup(r), "rb", buffering=0) as f:
            poll.registry.register(f, 2, R)
            assert collect(poll, 1) == {2: Ready.READABLE}
            poll.registry.deregister(f)
    finally:
        os.close(r)
        os.close(w)


# -- capacity and timeouts --------------------------------------------------------


@pytest.mark.parametrize("opts", [PollOpt.LEVEL, PollOpt.EDGE, PollOpt.ONESHOT])
def test_capacity_limited_events_deliver_the_rest_next_call(poll: Poll, opts: PollOpt) -> None:
    pairs = [socket.socketpair() for _ in range(5)]
    try:
        for i, (a, b) in enumerate(pairs):
            a.setblocking(False)
            poll.registry.register(a, i, R, opts)
            b.send(b"x")
        events = Events(capacity=2)
        seen: set[int] = set()
        for _ in range(3):
            n = poll.poll(events, 1)
            assert n == len(events) <= 2
            seen |= {ev.token for ev in events}
        assert seen == {0, 1, 2, 3, 4}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_zero_and_negative_timeouts_return_at_once(poll: Poll) -> None:
    events = Events()
    for timeout in (0, 0.0, -1, -0.5):
        t0 = time.monotonic()
        assert poll.poll(events, timeout) == 0
        assert time.monotonic() - t0 < 1.0


def test_zero_timeout_still_reports(poll: Poll, pair) -> None:
    a, _ = pair
    poll.registry.register(a, 1, W)
    assert collect(poll, 0) == {1: Ready.WRITABLE}


def test_positive_timeout_waits_at_least_about_that_long(poll: Poll) -> None:
    events = Events()
    t0 = time.monotonic()
    assert poll.poll(events, 0.15) == 0
    assert time.monotonic() - t0 >= 0.14


def test_none_timeout_blocks_until_an_event(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R)
    timer = threading.Timer(0.2, b.send, args=(b"x",))
    timer.start()
    try:
        t0 = time.monotonic()
        events = Events()
        assert poll.poll(events, None) == 1
        assert time.monotonic() - t0 >= 0.15
        assert events[0] == Event(1, Ready.READABLE)
    finally:
        timer.join()


def test_bad_timeouts(poll: Poll) -> None:
    with pytest.raises(TypeError):
        poll.poll(Events(), "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        poll.poll(Events(), float("nan"))
    with pytest.raises(TypeError):
        poll.poll([], 0)  # type: ignore[arg-type]


# -- threads -----------------------------------------------------------------------


def test_registration_during_blocking_poll_is_seen(poll: Poll, pair) -> None:
    a, _ = pair
    result: dict[int, int] = {}

    def poller() -> None:
        result.update(collect(poll, 5))

    t = threading.Thread(target=poller)
    t0 = time.monotonic()
    t.start()
    time.sleep(0.2)
    poll.registry.register(a, 7, W)
    t.join(10)
    assert not t.is_alive()
    assert result == {7: Ready.WRITABLE}
    assert time.monotonic() - t0 < 4


def test_registry_is_thread_safe(poll: Poll) -> None:
    pairs = [socket.socketpair() for _ in range(8)]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        a = pairs[i][0]
        try:
            for _ in range(50):
                poll.registry.register(a, i, R)
                poll.registry.reregister(a, i, W)
                poll.registry.deregister(a)
            poll.registry.register(a, i, W)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    try:
        assert not errors
        assert wait_all(poll, set(range(8)))
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def wait_all(poll: Poll, tokens: set[int]) -> bool:
    seen: set[int] = set()
    for _ in range(10):
        seen |= set(collect(poll, 0.2))
        if tokens <= seen:
            return True
    return False


def test_concurrent_polling(poll: Poll, pair) -> None:
    a, b = pair
    if poll.backend in ("poll", "select"):
        poll.registry.register(a, 1, R)
        started = threading.Event()

        def blocker() -> None:
            started.set()
            collect(poll, 1)

        t = threading.Thread(target=blocker)
        t.start()
        started.wait()
        time.sleep(0.1)
        with pytest.raises(RuntimeError):
            collect(poll, 0)
        t.join()
        return
    # epoll/kqueue with ONESHOT: one readiness goes to one thread only.
    poll.registry.register(a, 1, R, PollOpt.ONESHOT)
    hits: list[int] = []
    barrier = threading.Barrier(5)

    def poller() -> None:
        barrier.wait()
        got = collect(poll, 0.5)
        if 1 in got:
            hits.append(1)

    threads = [threading.Thread(target=poller) for _ in range(4)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(0.1)
    b.send(b"x")
    for t in threads:
        t.join(5)
    assert hits == [1]


def test_close_wakes_a_blocked_poller(make_poll: Callable[[], Poll]) -> None:
    p = make_poll()
    outcome: list[BaseException | int] = []

    def poller() -> None:
        try:
            outcome.append(p.poll(Events(), 30))
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=poller)
    t.start()
    time.sleep(0.2)
    p.close()
    t.join(5)
    assert not t.is_alive(), "close() must wake the blocked poller"
    # acceptable: ValueError (closed while polling); unacceptable: a hang, a
    # crash, or any other exception type.
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError)


# -- the error table ---------------------------------------------------------------


class NoFileno:
    pass


class StrFileno:
    def fileno(self) -> str:
        return "3"


@pytest.mark.parametrize("method", ["register", "reregister", "deregister"])
def test_error_source_without_int_fileno_is_type_error(poll: Poll, method: str) -> None:
    call = getattr(poll.registry, method)
    args = () if method == "deregister" else (1, R)
    with pytest.raises(TypeError):
        call(NoFileno(), *args)
    with pytest.raises(TypeError):
        call(StrFileno(), *args)
    with pytest.raises(TypeError):
        call(3.0, *args)
    with pytest.raises(TypeError):
        call(True, *args)


@pytest.mark.parametrize("method", ["register", "reregister"])
def test_error_negative_fd_or_closed_source_is_value_error(poll: Poll, method: str) -> None:
    call = getattr(poll.registry, method)
    with pytest.raises(ValueError):
        call(-1, 1, R)
    s = socket.socket()
    s.close()
    with pytest.raises(ValueError):
        call(s, 1, R)


@pytest.mark.parametrize("token", [1.0, True, "1", None])
def test_error_token_type(poll: Poll, pair, token: object) -> None:
    with pytest.raises(TypeError):
        poll.registry.register(pair[0], token, R)  # type: ignore[arg-type]


@pytest.mark.parametrize("token", [-1, 2**63, 2**70])
def test_error_token_range(poll: Poll, pair, token: int) -> None:
    with pytest.raises(ValueError):
        poll.registry.register(pair[0], token, R)


def test_token_bounds_accepted(poll: Poll, pair) -> None:
    a, _b = pair
    poll.registry.register(a, 2**63 - 1, W)
    assert collect(poll, 1) == {2**63 - 1: Ready.WRITABLE}
    poll.registry.reregister(a, 0, W)
    assert collect(poll, 1) == {0: Ready.WRITABLE}


def test_error_interest_and_opts(poll: Poll, pair) -> None:
    a, _ = pair
    reg = poll.registry
    with pytest.raises(ValueError, match="empty"):
        reg.register(a, 1, Interest(0))
    with pytest.raises(ValueError):
        reg.register(a, 1, 8)
    with pytest.raises(TypeError):
        reg.register(a, 1, "r")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        reg.register(a, 1, R, PollOpt.LEVEL | PollOpt.EDGE)
    with pytest.raises(ValueError):
        reg.register(a, 1, R, PollOpt(0))
    with pytest.raises(ValueError):
        reg.register(a, 1, R, 64)
    with pytest.raises(TypeError):
        reg.register(a, 1, R, "edge")  # type: ignore[arg-type]
    # none of these left anything behind
    reg.register(a, 1, W)
    assert collect(poll, 1) == {1: Ready.WRITABLE}
    with pytest.raises(ValueError):
        reg.reregister(a, 1, Interest(0))
    with pytest.raises(ValueError):
        reg.reregister(a, 1, R, PollOpt.LEVEL | PollOpt.EDGE)
    assert collect(poll, 1) == {1: Ready.WRITABLE}  # unchanged


def test_error_register_twice_is_file_exists(poll: Poll, pair) -> None:
    a, _ = pair
    poll.registry.register(a, 1, R)
    with pytest.raises(FileExistsError):
        poll.registry.register(a, 2, W)
    with pytest.raises(FileExistsError):
        poll.registry.register(a.fileno(), 2, W)
    poll.registry.reregister(a, 2, W)
    assert collect(poll, 1) == {2: Ready.WRITABLE}


def test_error_not_registered_is_file_not_found(poll: Poll, pair) -> None:
    a, _ = pair
    with pytest.raises(FileNotFoundError):
        poll.registry.reregister(a, 1, R)
    with pytest.raises(FileNotFoundError):
        poll.registry.deregister(a)
    poll.registry.register(a, 1, R)
    poll.registry.deregister(a)
    with pytest.raises(FileNotFoundError):
        poll.registry.deregister(a)


def test_error_os_refuses_descriptor(poll: Poll, pair, tmp_path) -> None:
    # A descriptor number that names nothing: every backend asks the kernel.
    fd = os.open(tmp_path / "f", os.O_CREAT | os.O_RDWR)
    os.close(fd)
    with pytest.raises(OSError) as info:
        poll.registry.register(fd, 1, R)
    assert not isinstance(info.value, (FileExistsError, FileNotFoundError))
    # nothing is left registered: the next register of a live source works
    a, _ = pair
    poll.registry.register(a, 2, W)
    assert collect(poll, 1) == {2: Ready.WRITABLE}


def test_error_regular_file_on_epoll(poll: Poll, tmp_path) -> None:
    with open(tmp_path / "f", "wb") as f:
        if poll.backend != "epoll":
            pytest.skip("only epoll refuses regular files (documented)")
        with pytest.raises(PermissionError):
            poll.registry.register(f, 1, R)
        with pytest.raises(FileNotFoundError):
            poll.registry.deregister(f)


# -- tolerant teardown -----------------------------------------------------------


def test_deregister_after_close_succeeds(poll: Poll) -> None:
    a, b = socket.socketpair()
    poll.registry.register(a, 1, R)
    a.close()
    poll.registry.deregister(a)
    b.close()
    # deregister of a closed object that was never registered is tolerated too
    poll.registry.deregister(a)


def test_closed_without_deregister_never_crashes_or_spins(poll: Poll) -> None:
    a, b = socket.socketpair()
    poll.registry.register(a, 1, R | W)
    b.send(b"x")
    a.close()
    wall0, cpu0 = time.monotonic(), time.process_time()
    for _ in range(5):
        assert 1 not in collect(poll, 0.05)
    assert time.process_time() - cpu0 < (time.monotonic() - wall0) / 2
    b.close()


def test_new_source_reusing_fd_registers_at_once(poll: Poll) -> None:
    a, b = socket.socketpair()
    old_fd = a.fileno()
    poll.registry.register(a, 1, R)
    a.close()
    b.close()
    c, d = socket.socketpair()
    try:
        if old_fd not in (c.fileno(), d.fileno()):
            pytest.skip("the kernel did not reuse the fd number")
        new = c if c.fileno() == old_fd else d
        peer = d if new is c else c
        poll.registry.register(new, 2, R)  # no FileExistsError from the stale entry
        peer.send(b"x")
        assert collect(poll, 1) == {2: Ready.READABLE}
        poll.registry.deregister(new)
        # the old, closed object is no longer registered anywhere: tolerated
        poll.registry.deregister(a)
    finally:
        c.close()
        d.close()


def test_int_fd_reused_after_close_registers_at_once(poll: Poll) -> None:
    r, w = os.pipe()
    poll.registry.register(r, 1, R)
    os.close(r)
    os.close(w)
    r2, w2 = os.pipe()
    try:
        if r2 != r:
            pytest.skip("the kernel did not reuse the fd number")
        poll.registry.register(r2, 2, R)
        os.write(w2, b"x")
        assert collect(poll, 1) == {2: Ready.READABLE}
    finally:
        os.close(r2)
        os.close(w2)


def test_no_fd_leak_over_1000_polls(backend: str) -> None:
    from conftest import open_poll

    before = open_fds()
    for _ in range(1000):
        p = open_poll(backend)
        p.poll(Events(), 0)
        p.close()
    assert open_fds() == before


# -- flags reported --------------------------------------------------------------


def closed_flags_visible(poll: Poll) -> bool:
    """select(2) cannot tell a hang-up from readability (docs/backends.md):
    there the event is a plain READABLE and the read returns EOF."""
    return poll.backend != "select"


def test_peer_close_reports_read_closed(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, R, PollOpt.EDGE)
    b.close()
    ready = Ready(wait_for(poll, 1))
    assert ready.readable
    if closed_flags_visible(poll):
        assert ready.read_closed and ready.hup
    assert a.recv(10) == b""


def test_peer_shutdown_write_reports_read_closed(poll: Poll) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(lst.getsockname())
    srv, _ = lst.accept()
    try:
        cli.setblocking(False)
        poll.registry.register(cli, 1, R)
        srv.shutdown(socket.SHUT_WR)
        ready = Ready(wait_for(poll, 1))
        assert ready.readable
        if closed_flags_visible(poll):
            assert ready.read_closed
        assert cli.recv(10) == b""
    finally:
        for s in (cli, srv, lst):
            s.close()


def test_pipe_close_events_both_ways(poll: Poll) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    try:
        poll.registry.register(r, 1, R)
        os.close(w)
        w = -1
        ready = Ready(wait_for(poll, 1))
        assert ready.readable
        if closed_flags_visible(poll):
            assert ready.read_closed
        assert os.read(r, 10) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    r, w = os.pipe()
    try:
        poll.registry.register(w, 2, W)
        assert collect(poll, 1) == {2: Ready.WRITABLE}
        os.close(r)
        r = -1
        ready = Ready(wait_for(poll, 2))
        if closed_flags_visible(poll):
            assert ready.write_closed or ready.error
        with pytest.raises(BrokenPipeError):
            os.write(w, b"x")
    finally:
        os.close(w)
        if r >= 0:
            os.close(r)


def test_priority_from_tcp_urgent_data(poll: Poll) -> None:
    lst = socket.create_server(("127.0.0.1", 0))
    cli = socket.create_connection(lst.getsockname())
    srv, _ = lst.accept()
    try:
        if poll.backend == "kqueue":
            pytest.skip("kqueue has no priority filter for sockets (documented)")
        poll.registry.register(srv, 1, R | Interest.PRIORITY)
        cli.send(b"!", socket.MSG_OOB)
        ready = Ready(wait_for(poll, 1))
        assert ready.priority
    finally:
        for s in (cli, srv, lst):
            s.close()


def test_readiness_only_within_interest(poll: Poll, pair) -> None:
    a, b = pair
    poll.registry.register(a, 1, W)
    b.send(b"x")
    for _ in range(3):
        assert collect(poll, 0.05) == {1: Ready.WRITABLE}


def test_many_idle_sources_one_ready(poll: Poll) -> None:
    pairs = [socket.socketpair() for _ in range(200)]
    try:
        for i, (a, _) in enumerate(pairs):
            poll.registry.register(a, i, R, PollOpt.EDGE)
        pairs[137][1].send(b"x")
        assert collect(poll, 1) == {137: Ready.READABLE}
    finally:
        for a, b in pairs:
            a.close()
            b.close()


# -- event objects ----------------------------------------------------------------


def test_the_same_readiness_reuses_one_event(poll: Poll, pair) -> None:
    # No object per event where a cached one will do: a registration that
    # keeps reporting the same readiness gets the same immutable Event back.
    a, b = pair
    poll.registry.register(a, 7, R)
    b.send(b"x")
    wait_for(poll, 7)
    first, second = Events(), Events()
    assert poll.poll(first, 0) == 1 and poll.poll(second, 0) == 1
    assert first[0] == second[0] == Event(7, Ready.READABLE)
    assert second[0] is first[0]


def test_cached_events_follow_readiness_and_reregister(poll: Poll, pair) -> None:
    a, b = pair
    both = int(Ready.READABLE | Ready.WRITABLE)

    def until(token: int, want: int) -> None:
        deadline = time.monotonic() + 5
        got: dict[int, int] = {}
        while time.monotonic() < deadline and got.get(token) != want:
            got = collect(poll, 0.2)
            assert set(got) <= {token}  # never a stale token
        assert got.get(token) == want

    poll.registry.register(a, 7, R | W)
    until(7, int(Ready.WRITABLE))  # the row's cached event says writable ...
    b.send(b"x")
    until(7, both)  # ... and must not be handed out once readable too
    poll.registry.reregister(a, 9, R | W)
    until(9, both)
