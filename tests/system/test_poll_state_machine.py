"""A hypothesis state machine for the Registry, on every backend.

Three slots each hold a socketpair; the machine registers, reregisters,
deregisters, closes and replaces the watched end, writes from and drains the
peer, and polls.  A small model says, for every poll, which tokens MUST be
reported and which MUST NOT; everything else may or may not appear, because
the contract allows spurious events.

What the model demands:
* a token is reported only while its registration is current (not after
  deregister, not for a closed source, never an old token after reregister);
* reported readiness stays within the interest;
* LEVEL reports on every poll while the condition holds;
* after register/reregister the first poll reports a condition that holds,
  whatever the trigger;
* EDGE: a write that arrives after the source was seen empty by a poll is
  reported; an EDGE source that was just reported and then left alone is not
  reported again (no busy loop);
* ONESHOT: after one report, nothing until reregister.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from conftest import BACKENDS, drain, open_poll
from metalio import Events, Interest, Poll, PollOpt
from metalio._backends import open_backend
from metalio._dispatch_index import DispatchIndex
from metalio._flags import UNREGISTERED

INTERESTS = [Interest.READABLE, Interest.WRITABLE, Interest.READABLE | Interest.WRITABLE]
OPTS = [
    PollOpt.LEVEL,
    PollOpt.EDGE,
    PollOpt.ONESHOT,
    PollOpt.EDGE | PollOpt.ONESHOT,
]


@dataclass
class Slot:
    mine: socket.socket
    peer: socket.socket
    token: int | None = None  # current registration, None when not registered
    interest: int = 0
    opts: int = 0
    disarmed: bool = False  # ONESHOT fired
    pending: bool = False  # unread data in `mine`
    fresh: bool = False  # must be reported by the next poll if its condition holds
    quiet: bool = False  # EDGE: just reported and untouched since
    seen_empty: bool = False  # a poll happened while registered EDGE and empty
    # EDGE: data arrived after a poll saw the source empty.  It must be
    # reported while it is still there; data drained before any poll may go
    # unreported (the emulated backends see only what is ready at the poll).
    read_news: bool = False
    retired: list[int] = field(default_factory=list)  # tokens that must never reappear

    def condition(self) -> bool:
        return bool((self.interest & 1 and self.pending) or self.interest & 2)


class RegistryMachine(RuleBasedStateMachine):
    backend = "epoll"

    def __init__(self) -> None:
        super().__init__()
        self.poll = self.open_poll()
        self.events = Events(64)
        self.slots: list[Slot] = []
        self.next_token = 100
        self.closed_sources: list[socket.socket] = []
        # The EventLoop's dispatch lists: they must mirror the table through
        # every rule, including refused and rolled-back registrations.
        self.index = DispatchIndex(self.poll.registry)

    def open_poll(self) -> Poll:
        return open_poll(self.backend)

    def new_pair(self) -> Slot:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        return Slot(a, b)

    @initialize()
    def setup(self) -> None:
        self.slots = [self.new_pair() for _ in range(3)]

    def teardown(self) -> None:
        self.poll.close()
        for s in self.slots:
            s.mine.close()
            s.peer.close()

    def fresh_token(self) -> int:
        self.next_token += 1
        return self.next_token

    def touch(self, s: Slot) -> None:
        s.quiet = False

    # -- registration rules ---------------------------------------------------

    @rule(i=st.integers(0, 2), interest=st.sampled_from(INTERESTS), opts=st.sampled_from(OPTS))
    def register(self, i: int, interest: Interest, opts: PollOpt) -> None:
        s = self.slots[i]
        token = self.fresh_token()
        try:
            self.poll.registry.register(s.mine, token, interest, opts)
        except FileExistsError:
            assert s.token is not None, "FileExistsError for an unregistered source"
            return
        assert s.token is None, "register of a registered source succeeded"
        s.token, s.interest, s.opts = token, int(interest), int(opts)
        s.disarmed, s.fresh, s.seen_empty, s.read_news = False, True, False, False
        self.touch(s)

    @rule(i=st.integers(0, 2), interest=st.sampled_from(INTERESTS), opts=st.sampled_from(OPTS))
    def reregister(self, i: int, interest: Interest, opts: PollOpt) -> None:
        s = self.slots[i]
        token = self.fresh_token()
        try:
            self.poll.registry.reregister(s.mine, token, interest, opts)
        except FileNotFoundError:
            assert s.token is None, "FileNotFoundError for a registered source"
            return
        assert s.token is not None, "reregister of an unregistered source succeeded"
        s.retired.append(s.token)
        s.token, s.interest, s.opts = token, int(interest), int(opts)
        s.disarmed, s.fresh, s.seen_empty, s.read_news = False, True, False, False
        self.touch(s)

    @rule(i=st.integers(0, 2))
    def deregister(self, i: int) -> None:
        s = self.slots[i]
        try:
            self.poll.registry.deregister(s.mine)
        except FileNotFoundError:
            assert s.token is None, "FileNotFoundError for a registered source"
            return
        assert s.token is not None, "deregister of an unregistered source succeeded"
        s.retired.append(s.token)
        s.token = None

    @rule(i=st.integers(0, 2), deregister_after=st.booleans())
    def close_and_replace(self, i: int, deregister_after: bool) -> None:
        """Close the watched end without deregistering; a new pair takes the slot
        (and usually the same fd numbers)."""
        s = self.slots[i]
        s.mine.close()
        s.peer.close()
        if deregister_after:
            self.poll.registry.deregister(s.mine)  # tolerated: closed after register
        new = self.new_pair()
        new.retired = s.retired + ([s.token] if s.token is not None else [])
        self.slots[i] = new

    # -- data rules -----------------------------------------------------------

    @rule(i=st.integers(0, 2), n=st.integers(1, 3000))
    def write(self, i: int, n: int) -> None:
        s = self.slots[i]
        s.peer.send(b"x" * n)
        if s.token is not None and s.interest & 1 and s.opts & 2 and not s.pending and s.seen_empty:
            s.read_news = True
        s.pending = True
        self.touch(s)

    @rule(i=st.integers(0, 2))
    def drain_it(self, i: int) -> None:
        s = self.slots[i]
        drain(s.mine)
        s.pending = False
        self.touch(s)

    # -- the check ------------------------------------------------------------

    @rule()
    def poll_now(self) -> None:
        self.poll.poll(self.events, 0)
        got: dict[int, int] = {}
        for ev in self.events:
            got[ev.token] = got.get(ev.token, 0) | int(ev.readiness)
        current = {s.token: s for s in self.slots if s.token is not None}
        for token, ready in got.items():
            assert token in current, f"token {token} reported but not registered"
            s = current[token]
            assert not s.disarmed, f"disarmed ONESHOT token {token} reported"
            assert not (ready & 1 and not s.interest & 1), "readable outside interest"
            assert not (ready & 2 and not s.interest & 2), "writable outside interest"
            assert not (s.opts & 2 and s.quiet), f"EDGE token {token} reported again untouched"
        for s in current.values():
            reported = s.token in got
            if not s.disarmed and s.condition():
                level = not s.opts & 2
                if level or s.fresh or (s.read_news and s.pending):
                    assert reported, f"token {s.token} (opts {s.opts}) not reported"
            if reported:
                s.fresh = s.read_news = False
                if s.opts & 4:
                    s.disarmed = True
                if s.opts & 2:
                    s.quiet = True
                    s.seen_empty = False
            elif s.opts & 2 and not s.pending:
                s.seen_empty = True

    @invariant()
    def dispatch_lists_mirror_the_table(self) -> None:
        table = self.poll.registry.rows()
        tokens, tables = self.index.tokens, self.index.tables
        assert len(tokens) == len(tables)
        assert all(fd < len(tokens) for fd in table)
        for fd, (token, readiness) in enumerate(zip(tokens, tables, strict=True)):
            row = table.get(fd)
            if row is None:
                assert token == UNREGISTERED, fd  # the table may be a stale one
            else:
                assert token == row.token and readiness is row.table, fd

    @invariant()
    def retired_tokens_never_reused(self) -> None:
        for s in self.slots:
            assert s.token not in s.retired


def _machine_for(name: str) -> type[RegistryMachine]:
    cls = type(f"RegistryMachine_{name.replace('-', '_')}", (RegistryMachine,), {"backend": name})
    return cls


for _name in BACKENDS:
    _case = _machine_for(_name).TestCase
    _case.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
    globals()[f"TestRegistry_{_name.replace('-', '_')}"] = _case
del _case


def test_model_catches_a_broken_backend() -> None:
    """The machine must be able to fail: a backend that forgets LEVEL is caught."""
    import pytest

    class Broken(RegistryMachine):
        backend = "epoll"

        def open_poll(self) -> Poll:
            real = open_backend(self.backend)
            seen: set[int] = set()

            class Forgetful:
                """Reports each fd only once ever, as if LEVEL were EDGE|ONESHOT."""

                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

                def poll(self, timeout: float | None, maxevents: int) -> list[tuple[int, int]]:
                    out = [(fd, m) for fd, m in real.poll(timeout, maxevents) if fd not in seen]
                    seen.update(fd for fd, _ in out)
                    return out

            fake: Any = Forgetful()
            return Poll.over_backend(fake)

    # derandomize: a fixed search, so whether it finds the defect does not vary by run.
    Broken.TestCase.settings = settings(
        max_examples=200, stateful_step_count=30, deadline=None, derandomize=True
    )
    with pytest.raises(AssertionError):
        Broken.TestCase().runTest()
