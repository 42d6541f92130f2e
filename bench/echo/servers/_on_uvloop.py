"""Run one of the asyncio echo servers on uvloop's event loop.

``uvloop_protocol.py`` and ``uvloop_streams.py`` are ``asyncio_protocol.py``
and ``asyncio_streams.py`` unchanged, on uvloop: only the loop differs, so the
comparison measures the loop and nothing else.  Without uvloop the script
exits with status 3 before printing "ready", and the runner reports it as
skipped.  (Underscore files are helpers, not servers, for the runner.)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any


def run_on_uvloop(serve: Callable[[int], Coroutine[Any, Any, None]], argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError as exc:
        print(f"uvloop is not importable: {exc}", file=sys.stderr)
        return 3
    if hasattr(uvloop, "run"):  # uvloop >= 0.18
        uvloop.run(serve(int(argv[1])))
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(serve(int(argv[1])))
    return 0
