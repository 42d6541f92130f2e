"""The two validators every public entry point shares: durations and counts.

One rule for each, so that ``Poll.poll``, ``EventLoop.run_once``,
``EventLoop.timeout``, ``Timer`` and the configuration objects agree on what a
number of seconds or a count is, and fail the same way.

Seconds
    Any real number: ``int``, ``float``, ``fractions.Fraction``,
    ``decimal.Decimal`` or another ``numbers.Real``, converted to ``float``
    once, at the door.  ``bool`` is not a duration (``TypeError``), nor is
    anything else that is not real (``TypeError``).  NaN is refused with
    ``ValueError`` everywhere.  What counts as out of range depends on the
    use, and there are three uses:

    * a **wait** (``Poll.poll``, ``run_once``): ``None`` or a number; at most
      zero does not block; more than :data:`MAX_WAIT` (about 23 days, which
      is past what ``epoll_wait`` and ``poll`` accept) waits without a
      bound, as ``None`` does: the kernel cannot be asked for more, and "at
      least about *timeout*" still holds;
    * a **delay** (``Timer.set_timeout``, ``EventLoop.timeout``): zero or
      more and finite, else ``ValueError``;
    * a **resolution** (a timer tick): more than zero and finite, else
      ``ValueError``.

Counts
    An ``int`` that is not a ``bool`` (``TypeError`` otherwise), at least a
    minimum and at most a maximum where one exists (``ValueError``).

The hot paths test ``type(x) is float`` themselves and call in here only for
other types; nothing here is on a per-event path.
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Final

__all__ = ["MAX_WAIT", "count", "delay", "real", "resolution", "seconds", "wait"]

MAX_WAIT: Final = 2_000_000.0
"""The longest wait handed to the kernel: ``epoll_wait`` and ``poll`` take an
``int`` of milliseconds.  Longer waits are waits without a bound."""


def _is_decimal(value: object) -> bool:
    """``decimal.Decimal`` is a real number that ``numbers.Real`` does not admit.

    A program that never imported ``decimal`` has no Decimal to pass, so the
    module is not imported here just to ask.
    """
    decimal = sys.modules.get("decimal")
    return decimal is not None and isinstance(value, decimal.Decimal)


def real(value: object, what: str) -> float:
    """*value* as a ``float`` (NaN passes); numbers beyond the float range become infinities.

    :raises TypeError: *value* is a ``bool`` or not a real number.
    """
    kind = type(value)
    if (kind is not float and kind is not int) and (
        isinstance(value, bool) or not (isinstance(value, numbers.Real) or _is_decimal(value))
    ):
        raise TypeError(f"{what} must be a real number of seconds, not {kind.__name__}")
    try:
        result = float(value)  # type: ignore[arg-type]
    except OverflowError:
        # An int or Fraction beyond every float: as far away as infinity.
        result = math.inf if value > 0 else -math.inf  # type: ignore[operator]
    return result


def seconds(value: object, what: str) -> float:
    """*value* as a ``float`` number of seconds (see :func:`real`).

    :raises TypeError: *value* is a ``bool`` or not a real number.
    :raises ValueError: *value* is NaN.
    """
    result = real(value, what)
    if result != result:
        raise ValueError(f"{what} must not be NaN")
    return result


def wait(value: object, what: str = "timeout") -> float | None:
    """A wait as the backends want it: ``None`` (no bound), ``0.0`` or a positive float.

    :raises TypeError: *value* is not ``None`` and not a real number.
    :raises ValueError: *value* is NaN.
    """
    if value is None:
        return None
    result = seconds(value, what)
    if result <= 0.0:
        return 0.0
    if result > MAX_WAIT:
        return None
    return result


def delay(value: object, what: str = "delay") -> float:
    """A delay: a finite float ``>= 0``.

    :raises TypeError: not a real number.
    :raises ValueError: NaN, negative or infinite.
    """
    result = seconds(value, what)
    if result < 0.0:
        raise ValueError(f"{what} must be >= 0, got {value!r}")
    if result == math.inf:
        raise ValueError(f"{what} must be finite, got {value!r}")
    return result


def resolution(value: object, what: str) -> float:
    """A positive, finite float (a timer tick).

    :raises TypeError: not a real number.
    :raises ValueError: NaN, zero, negative or infinite.
    """
    result = real(value, what)
    if not 0.0 < result < math.inf:
        raise ValueError(f"{what} must be a positive finite number of seconds, got {value!r}")
    return result


def count(value: object, what: str, minimum: int = 1, maximum: int | None = None) -> int:
    """*value* as a plain ``int`` in ``minimum ..= maximum``.

    :raises TypeError: *value* is a ``bool`` or not an ``int``.
    :raises ValueError: *value* is out of range.
    """
    if type(value) is not int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{what} must be an int, not {type(value).__name__}")
        value = int(value)
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what} must be <= {maximum}, got {value}")
    return value
