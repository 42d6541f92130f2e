"""Tokens, interests, trigger options and readiness: the vocabulary of metalio.

``Interest`` is what a registration asks for, ``PollOpt`` how it wants to be
told, and ``Ready`` what the kernel said happened.  All three are
``enum.IntFlag`` so they combine with ``|`` and cost nothing to compare, but
the hot paths never *build* them: every ``Ready`` value a backend can report
is computed once and looked up afterwards (``enum`` arithmetic runs Python
code and would cost more than the system call that produced the event).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final, NewType

__all__ = [
    "MAX_TOKEN",
    "NOTIFY_TOKEN",
    "RESERVED_TOKENS",
    "SIGNAL_TOKEN",
    "UNREGISTERED",
    "Interest",
    "PollOpt",
    "Ready",
    "Token",
    "check_interest",
    "check_opts",
    "check_token",
]

# IntFlag's own ``&`` runs Python code; the int slot does the same
# arithmetic in C.  Every readiness property goes through it.
_int_and: Final = int.__and__


class _BitTest(dict[int, bool]):
    """``value -> bool(value & bit)``, prefilled for every readiness value (0..63).

    Its bound ``__getitem__`` is the getter of a ``Ready`` property: a C call
    with no Python frame for the values a backend reports (a property written
    in Python runs a frame per test), and still right for any other ``int``
    (computed by ``__missing__``, not stored).
    """

    __slots__ = ("_bit",)

    def __init__(self, bit: int) -> None:
        super().__init__((i, i & bit != 0) for i in range(64))
        self._bit = bit

    def __missing__(self, value: int) -> bool:
        return _int_and(value, self._bit) != 0


def _bit_property(bit: int, doc: str) -> property:
    return property(_BitTest(bit).__getitem__, doc=doc)


Token = NewType("Token", int)
"""A caller-chosen ``int`` in ``0 <= token < 2**63``; metalio only hands it back."""

MAX_TOKEN: Final = 2**63

# Reserved tokens.  Every one is negative, and that is the rule the hot paths
# rely on: check_token admits only 0 <= token < 2**63, so a dispatcher tells a
# user's registration from metalio's own with one "token >= 0" test.
NOTIFY_TOKEN: Final = -1
"""The notify channel's awakener (``metalio.channel``)."""
SIGNAL_TOKEN: Final = -2
"""The signal socket (``metalio._signals``)."""
UNREGISTERED: Final = -3
"""A descriptor number with no registration, in the loop's dispatch index."""
RESERVED_TOKENS: Final = frozenset({NOTIFY_TOKEN, SIGNAL_TOKEN, UNREGISTERED})


class Interest(enum.IntFlag):
    """The readiness a registration asks to be told about.

    Hang-up and error conditions are always reported and are not interests.
    """

    READABLE = 1
    WRITABLE = 2
    PRIORITY = 4


class PollOpt(enum.IntFlag):
    """How a registration is triggered.

    Valid values are ``LEVEL``, ``EDGE``, ``ONESHOT`` (which means
    ``LEVEL | ONESHOT``), ``LEVEL | ONESHOT`` and ``EDGE | ONESHOT``.
    """

    LEVEL = 1
    EDGE = 2
    ONESHOT = 4


class Ready(enum.IntFlag):
    """What happened to a source, as reported by ``Poll.poll``."""

    READABLE = 1
    WRITABLE = 2
    PRIORITY = 4
    ERROR = 8
    READ_CLOSED = 16
    WRITE_CLOSED = 32

    if TYPE_CHECKING:

        @property
        def readable(self) -> bool: ...
        @property
        def writable(self) -> bool: ...
        @property
        def priority(self) -> bool: ...
        @property
        def error(self) -> bool: ...
        @property
        def read_closed(self) -> bool: ...
        @property
        def write_closed(self) -> bool: ...
        @property
        def hup(self) -> bool:
            """The peer will send no more data (the same as :attr:`read_closed`)."""

    else:
        # C-level getters (see _BitTest): handlers test these on every event.
        readable = _bit_property(1, "The source can be read (or the read would fail at once).")
        writable = _bit_property(2, "The source can be written (or the write would fail at once).")
        priority = _bit_property(4, "Priority (out-of-band) data can be read.")
        error = _bit_property(8, "The source has an error pending.")
        read_closed = _bit_property(16, "The peer will send no more data.")
        write_closed = _bit_property(32, "Writing can no longer succeed.")
        hup = property(
            read_closed.fget, doc="The peer will send no more data (the same as read_closed)."
        )


_ALL_INTEREST: Final = 7
_VALID_OPTS: Final = frozenset({1, 2, 4, 1 | 4, 2 | 4})

# Every value of Ready, built once: readiness is looked up, never computed.
READY_VALUES: Final[tuple[Ready, ...]] = tuple(Ready(i) for i in range(64))
INTEREST_VALUES: Final[tuple[Interest, ...]] = tuple(Interest(i) for i in range(8))
OPT_VALUES: Final[tuple[PollOpt, ...]] = tuple(PollOpt(i) for i in range(8))


def check_token(token: object) -> int:
    """Return *token* as a plain ``int``.

    :raises TypeError: *token* is not an ``int`` (``bool`` is refused too).
    :raises ValueError: *token* is outside ``0 <= token < 2**63``.
    """
    if type(token) is not int:
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError(f"token must be an int, not {type(token).__name__}")
        token = int(token)
    if not 0 <= token < MAX_TOKEN:
        raise ValueError(f"token must be in 0 <= token < 2**63, got {token}")
    return token


def check_interest(interest: object) -> int:
    """Return *interest* as a plain ``int`` bit set.

    :raises TypeError: *interest* is not an ``int``/``Interest``.
    :raises ValueError: it is empty or has an unknown bit.
    """
    if isinstance(interest, bool) or not isinstance(interest, int):
        raise TypeError(f"interest must be an Interest, not {type(interest).__name__}")
    value = int(interest)
    if value == 0:
        raise ValueError("interest must not be empty")
    if value & ~_ALL_INTEREST:
        raise ValueError(f"unknown interest bits in {value:#x}")
    return value


def check_opts(opts: object) -> int:
    """Return *opts* as a plain ``int`` with ``ONESHOT`` alone normalised to ``LEVEL | ONESHOT``.

    :raises TypeError: *opts* is not an ``int``/``PollOpt``.
    :raises ValueError: ``LEVEL | EDGE``, an empty value or an unknown bit.
    """
    if isinstance(opts, bool) or not isinstance(opts, int):
        raise TypeError(f"opts must be a PollOpt, not {type(opts).__name__}")
    value = int(opts)
    if value not in _VALID_OPTS:
        raise ValueError(
            f"invalid PollOpt {value:#x}: use LEVEL, EDGE, ONESHOT, "
            "LEVEL | ONESHOT or EDGE | ONESHOT"
        )
    if value == 4:
        value = 5
    return value
