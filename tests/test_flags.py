"""Tokens, Interest, PollOpt, Ready, Event and Events (API.md section 1 and 2)."""

from __future__ import annotations

import enum

import pytest

import metalio
from metalio import Event, Events, Interest, PollOpt, Ready
from metalio._flags import check_interest, check_opts, check_token


def test_flag_types_and_values() -> None:
    assert issubclass(Interest, enum.IntFlag)
    assert issubclass(PollOpt, enum.IntFlag)
    assert issubclass(Ready, enum.IntFlag)
    assert (Interest.READABLE, Interest.WRITABLE, Interest.PRIORITY) == (1, 2, 4)
    assert len({PollOpt.LEVEL, PollOpt.EDGE, PollOpt.ONESHOT}) == 3


@pytest.mark.parametrize(
    "flag", ["readable", "writable", "priority", "error", "read_closed", "write_closed"]
)
def test_ready_properties(flag: str) -> None:
    member = Ready[flag.upper()]
    assert getattr(member, flag) is True
    others = [
        f
        for f in ("readable", "writable", "priority", "error", "read_closed", "write_closed")
        if f != flag
    ]
    for other in others:
        assert getattr(member, other) is False
    ev = Event(7, member)
    assert getattr(ev, flag) is True
    assert ev.token == 7 and ev.readiness is member


_BITS = {
    "readable": 1,
    "writable": 2,
    "priority": 4,
    "error": 8,
    "read_closed": 16,
    "write_closed": 32,
    "hup": 16,
}


@pytest.mark.parametrize("value", [*range(64), 64, 65, 127, 2**40 + 3])
def test_every_property_of_every_value(value: int) -> None:
    # Every combination a backend can report (0..63), and values beyond
    # them, which the fast getters compute instead of looking up.
    ready = Ready(value)
    ev = Event(1, ready)
    for name, bit in _BITS.items():
        assert getattr(ready, name) is bool(value & bit), (value, name)
        assert getattr(ev, name) is bool(value & bit), (value, name)


def test_properties_are_c_getters() -> None:
    # The per-event tests run no Python frame (a property written in Python
    # costs three times as much); see metalio._flags._BitTest.
    import types

    for name in _BITS:
        assert not isinstance(getattr(Ready, name).fget, types.FunctionType), name
        assert not isinstance(getattr(Event, name).fget, types.FunctionType), name


def test_hup_is_read_closed() -> None:
    assert Ready.READ_CLOSED.hup and not Ready.WRITE_CLOSED.hup
    assert Event(1, Ready.READ_CLOSED | Ready.READABLE).hup
    assert not Event(1, Ready.READABLE).hup


def test_event_repr_shows_token_and_flags() -> None:
    text = repr(Event(42, Ready.READABLE | Ready.WRITABLE))
    assert "42" in text and "READABLE" in text and "WRITABLE" in text
    assert "(none)" in repr(Event(1, Ready(0)))


@pytest.mark.parametrize("bad", [1.0, True, False, "1", None, b"1"])
def test_token_type(bad: object) -> None:
    with pytest.raises(TypeError):
        check_token(bad)


@pytest.mark.parametrize("bad", [-1, 2**63, -(2**63)])
def test_token_range(bad: int) -> None:
    with pytest.raises(ValueError):
        check_token(bad)


def test_token_bounds_and_int_subclasses() -> None:
    assert check_token(0) == 0
    assert check_token(2**63 - 1) == 2**63 - 1

    class Tok(enum.IntEnum):
        A = 5

    assert check_token(Tok.A) == 5 and type(check_token(Tok.A)) is int


def test_opts_validation() -> None:
    assert check_opts(PollOpt.LEVEL) == PollOpt.LEVEL
    assert check_opts(PollOpt.EDGE) == PollOpt.EDGE
    assert check_opts(PollOpt.ONESHOT) == PollOpt.LEVEL | PollOpt.ONESHOT
    assert check_opts(PollOpt.EDGE | PollOpt.ONESHOT) == PollOpt.EDGE | PollOpt.ONESHOT
    for bad in (PollOpt.LEVEL | PollOpt.EDGE, 0, 8, PollOpt.LEVEL | PollOpt.EDGE | PollOpt.ONESHOT):
        with pytest.raises(ValueError):
            check_opts(bad)
    with pytest.raises(TypeError):
        check_opts("level")


def test_interest_validation() -> None:
    assert check_interest(Interest.READABLE | Interest.PRIORITY) == 5
    with pytest.raises(ValueError, match="empty"):
        check_interest(Interest(0))
    with pytest.raises(ValueError):
        check_interest(16)
    with pytest.raises(TypeError):
        check_interest(True)


def test_events_buffer() -> None:
    with pytest.raises(ValueError):
        Events(0)
    with pytest.raises(ValueError):
        Events(-5)
    with pytest.raises(TypeError):
        Events(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Events(2**20 + 1)
    assert Events(2**20).capacity == 2**20
    ev = Events()
    assert ev.capacity == 1024
    assert len(ev) == 0 and not ev and ev.is_empty()
    assert list(ev) == []
    ev._items.append(Event(1, Ready.READABLE))
    assert len(ev) == 1 and ev and not ev.is_empty()
    assert ev[0].token == 1
    ev.clear()
    assert ev.is_empty()


def test_public_surface() -> None:
    for name in metalio.__all__:
        assert hasattr(metalio, name), name
    assert metalio.Token(5) == 5
    assert issubclass(metalio.NotifyFull, metalio.NotifyError)
    assert issubclass(metalio.NotifyClosed, metalio.NotifyError)
    err = metalio.NotifyFull("m")
    assert err.msg == "m"
