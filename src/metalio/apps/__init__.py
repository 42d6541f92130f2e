"""Ready-made servers on metalio's ``EventLoop``, and the plumbing they share.

The servers are :mod:`metalio.apps.broadcast` (every chunk any client sends
goes to every client) and :mod:`metalio.apps.echo`; :mod:`metalio.apps.client`
is a tiny ``nc``.  The ``metalio`` command line (:mod:`metalio.cli`) runs
them.  What the servers share lives in modules of its own:

* :mod:`metalio.apps.server`: the connection record :class:`Conn` and the
  ``Handler`` base :class:`TcpServer` (interest changes, fairness between
  busy connections, closing, stopping);
* :mod:`metalio.apps.accept`: accepting, ``--max-clients`` and running out
  of descriptors;
* :mod:`metalio.apps.startup`: binding and running a server
  (:func:`run_server`) and the small helpers around it.

This package only re-exports those names; it holds no code of its own.
The apps use the public API of the core (``metalio``, ``metalio.net``) and
nothing else of it.
"""

from __future__ import annotations

from metalio.apps.accept import ACCEPT_BUDGET
from metalio.apps.server import CHUNK_SIZE, LISTENER, READ_BUDGET, Buffer, Conn, TcpServer
from metalio.apps.startup import (
    aligned_buffer,
    describe_error,
    format_addr,
    raise_nofile_limit,
    resolve_address,
    run_server,
)

__all__ = [
    "ACCEPT_BUDGET",
    "CHUNK_SIZE",
    "LISTENER",
    "READ_BUDGET",
    "Buffer",
    "Conn",
    "TcpServer",
    "aligned_buffer",
    "describe_error",
    "format_addr",
    "raise_nofile_limit",
    "resolve_address",
    "run_server",
]
