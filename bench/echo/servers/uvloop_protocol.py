"""Echo server on uvloop protocol: ``asyncio_protocol.py`` unchanged, run on uvloop.

See ``_on_uvloop.py``.  Usage: python uvloop_protocol.py PORT   (binds
127.0.0.1:PORT, prints "ready", echoes until SIGTERM/SIGINT, exits 0; exits 3
when uvloop is not importable)
"""

from __future__ import annotations

import sys

from _on_uvloop import run_on_uvloop
from asyncio_protocol import serve

if __name__ == "__main__":
    sys.exit(run_on_uvloop(serve, sys.argv))
