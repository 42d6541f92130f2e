"""``Handler``: what an ``EventLoop`` calls, and how the loop finds the calls a handler makes.

A handler is an object with up to six methods (``ready``, ``notify``,
``timeout``, ``signal``, ``interrupted``, ``tick``).  ``Handler`` is the base
class whose methods do nothing.  The loop looks a handler's methods up once
per ``run`` (:func:`bind`) and skips the ones it does not override, so a
handler that only handles I/O pays nothing for the phases it ignores.

What it must not know: how the loop waits or dispatches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._flags import Ready
    from .loop import EventLoop

__all__ = ["Calls", "Handler", "bind", "override"]


class Handler:
    """Base class for event-loop handlers; every method does nothing.

    Override what you need.  All methods run on the loop's thread and receive
    the loop as their first argument.
    """

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        """*token*'s sources became ready; called at most once per token per iteration."""

    def notify(self, loop: EventLoop, msg: Any) -> None:
        """A message sent with ``Sender.send`` arrived."""

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        """A timeout set with ``loop.timeout(payload, delay)`` is due."""

    def signal(self, loop: EventLoop, signum: int) -> None:
        """A signal added with ``loop.add_signal(signum)`` arrived."""

    def interrupted(self, loop: EventLoop) -> None:
        """Signals arrived since the previous iteration (see ``metalio.loop``)."""

    def tick(self, loop: EventLoop) -> None:
        """The end of an iteration."""


def _ignore_ready(loop: EventLoop, token: int, ready: Ready) -> None:
    pass


def _ignore_timeout(loop: EventLoop, payload: Any) -> None:
    pass


class Calls(NamedTuple):
    """A handler's bound methods for the hot phases; ``None`` where there is nothing to call.

    ``ready`` and ``timeout`` are never ``None``: a do-nothing function stands
    in, because their events must be consumed whether or not anyone listens.
    """

    ready: Callable[[EventLoop, int, Ready], None]
    notify: Callable[[EventLoop, Any], None] | None
    timeout: Callable[[EventLoop, Any], None]
    tick: Callable[[EventLoop], None] | None


# A NamedTuple's own constructor is a Python function; run_once binds on
# every call, so the tuple is built directly.
_new_calls: Final = tuple.__new__


def override(handler: object, name: str) -> Any:
    """*handler*'s bound method *name*, or ``None`` when it is ``Handler``'s no-op or absent."""
    method = getattr(handler, name, None)
    if method is None:
        return None
    if getattr(method, "__func__", None) is getattr(Handler, name):
        return None
    return method


def bind(handler: object) -> Calls:
    """The calls the loop makes into *handler* in its hot phases.

    Works for any object with some of the methods, not only ``Handler``
    subclasses.  Unrolled attribute access: ``run_once`` pays this on every
    call.
    """
    try:
        ready = handler.ready  # type: ignore[attr-defined]
        notify = handler.notify  # type: ignore[attr-defined]
        timeout = handler.timeout  # type: ignore[attr-defined]
        tick = handler.tick  # type: ignore[attr-defined]
    except AttributeError:  # not a Handler subclass: look each one up
        return Calls(
            override(handler, "ready") or _ignore_ready,
            override(handler, "notify"),
            override(handler, "timeout") or _ignore_timeout,
            override(handler, "tick"),
        )
    if getattr(ready, "__func__", None) is _BASE_READY:
        ready = _ignore_ready
    if getattr(notify, "__func__", None) is _BASE_NOTIFY:
        notify = None
    if getattr(timeout, "__func__", None) is _BASE_TIMEOUT:
        timeout = _ignore_timeout
    if getattr(tick, "__func__", None) is _BASE_TICK:
        tick = None
    return _new_calls(Calls, (ready, notify, timeout, tick))


_BASE_READY: Final = Handler.ready
_BASE_NOTIFY: Final = Handler.notify
_BASE_TIMEOUT: Final = Handler.timeout
_BASE_TICK: Final = Handler.tick
