"""Talking to Redis: the relay URL, RESP, the relay's envelope and one connection.

This module owns what :mod:`metalio.apps.relay` puts on the wire and how
one connection to Redis gets there:

* the URL, ``redis://[[USER]:PASSWORD@]HOST[:PORT][/CHANNEL]`` (:func:`parse_url`);
* RESP commands, written here as arrays of bulk strings (:func:`command`);
* the envelope of a relayed chunk (:func:`envelope_header`, :func:`decode_envelope`);
* the reply parser, ``hiredis.Reader`` (sans-I/O ``feed``/``gets``), imported
  only when a relay is made (:func:`reader_factory`), so neither ``import
  metalio`` nor importing this module needs the optional extra.  Replies are
  never parsed by hand;
* the handshake replies' check (:func:`check_handshake`) and short reasons
  for the log (:func:`describe`, :func:`short`).

One connection (a ``TcpStream`` to Redis, its buffers and handshake) is
:mod:`metalio.apps.redis_conn`.  It knows nothing of publishing policy,
reconnecting or the broadcast server.

The envelope
------------
Every chunk is one Redis message whose payload is ``b"MIOR"``, version ``1``,
``L`` (1 byte), the node id (``L`` bytes, UTF-8), the client id and the
sequence number (8 bytes each, big-endian), then the chunk (the rest, any
bytes: RESP bulk strings are length-prefixed).  The node id lets a node skip
its own messages, the client id names the sender on that node, the sequence
number counts every chunk the node tried to relay, dropped ones included, so
receivers see gaps.  A payload that does not parse is not ours.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    pass

__all__ = [
    "DEFAULT_CHANNEL",
    "DEFAULT_PORT",
    "ENVELOPE_MAGIC",
    "EXTRA_HINT",
    "UP",
    "ConnectionLost",
    "ProtocolError",
    "RedisURL",
    "RelayUnavailable",
    "ReplyError",
    "check_handshake",
    "command",
    "decode_envelope",
    "describe",
    "envelope_header",
    "parse_url",
    "publish_prefix",
    "reader_factory",
    "short",
]

DEFAULT_CHANNEL: Final = "metalio:broadcast"
DEFAULT_PORT: Final = 6379
ENVELOPE_MAGIC: Final = b"MIOR\x01"
"""Magic and version byte opening every relay message."""
EXTRA_HINT: Final = "pip install 'metalio[relay]'"

_IDS: Final = struct.Struct(">QQ")  # client id, sequence number
_U64: Final = 1 << 64


# -- failures -------------------------------------------------------------------


class ConnectionLost(Exception):
    """A connection failed; ``str()`` is the reason, ``level`` how loudly to log it."""

    def __init__(self, reason: str, level: int = logging.WARNING) -> None:
        super().__init__(reason)
        self.level = level


UP: Final = object()
"""What :meth:`Connection.get` returns once, when the handshake's last reply came."""


# -- the reply parser -----------------------------------------------------------


class RelayUnavailable(ImportError):
    """The optional extra the relay needs (``hiredis``) is not installed."""


class ReplyError(Exception):
    """An error reply from Redis (``-ERR ...``), returned (not raised) by the reader."""


class ProtocolError(Exception):
    """The peer's bytes are not RESP: raised by the reader's ``gets``."""


class Reader(Protocol):
    """What the relay uses of ``hiredis.Reader``."""

    def feed(self, buf: Any, off: int = ..., length: int = ..., /) -> None: ...
    def gets(self) -> Any: ...


def reader_factory() -> Callable[[], Reader]:
    """A function making a fresh RESP reader (a configured ``hiredis.Reader``).

    Error replies come back as :class:`ReplyError` instances; bytes that are
    not RESP make ``gets()`` raise :class:`ProtocolError`.  Replies are
    ``bytes``, ``int``, ``None`` and lists of them.

    :raises RelayUnavailable: hiredis is not installed (the message names
        the extra to install).
    """
    try:
        hiredis = importlib.import_module("hiredis")
    except ImportError as exc:
        raise RelayUnavailable(
            f"the Redis relay needs the 'hiredis' package: {EXTRA_HINT}"
        ) from exc

    def make() -> Reader:
        reader: Reader = hiredis.Reader(protocolError=ProtocolError, replyError=ReplyError)
        return reader

    return make


# -- commands -------------------------------------------------------------------


def command(*args: bytes | str | int) -> bytes:
    """One RESP command: an array of bulk strings (``str`` as UTF-8, ``int`` in decimal).

    :raises TypeError: an argument of another type.
    """
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            arg = b"%d" % arg
        elif not isinstance(arg, bytes):
            raise TypeError(f"RESP arguments are bytes, str or int, not {type(arg).__name__}")
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def publish_prefix(channel: bytes) -> bytes:
    """``PUBLISH channel`` up to the message's own ``$LEN`` line, for :func:`command`-equal output."""
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(channel), channel)


# -- the envelope ---------------------------------------------------------------


def envelope_header(node_id: bytes) -> bytes:
    """The constant start of every envelope this node sends (magic, length, node id).

    :raises ValueError: *node_id* is empty or longer than 255 bytes.
    """
    if not 0 < len(node_id) < 256:
        raise ValueError(f"node id must be 1..255 bytes, got {len(node_id)}")
    return ENVELOPE_MAGIC + bytes((len(node_id),)) + node_id


def pack_ids(client_id: int, seq: int) -> bytes:
    """The client id and sequence number fields (each modulo 2**64).

    :raises TypeError: *client_id* is not an ``int``.
    """
    if not isinstance(client_id, int):
        raise TypeError(f"client id must be an int, not {type(client_id).__name__}")
    return _IDS.pack(client_id % _U64, seq % _U64)


def decode_envelope(payload: bytes) -> tuple[bytes, int, int, memoryview] | None:
    """``(node id, client id, seq, data)`` of a relay message, ``None`` if it is not one.

    *data* is a read-only view of *payload* (no copy).
    """
    magic = len(ENVELOPE_MAGIC)
    if len(payload) < magic + 1 + _IDS.size or not payload.startswith(ENVELOPE_MAGIC):
        return None
    n = payload[magic]
    start = magic + 1 + n
    if n == 0 or len(payload) < start + _IDS.size:
        return None
    client_id, seq = _IDS.unpack_from(payload, start)
    return payload[magic + 1 : start], client_id, seq, memoryview(payload)[start + _IDS.size :]


# -- the URL --------------------------------------------------------------------


@dataclass(frozen=True)
class RedisURL:
    """A parsed relay URL.  ``address`` is an IP literal and port, ready for connect."""

    host: str
    port: int
    channel: str
    address: tuple[str, int]
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def redacted(self) -> str:
        """The URL for logs: the password replaced by ``***``."""
        cred = ""
        if self.password is not None:
            cred = f"{self.username or ''}:***@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{cred}{host}:{self.port}/{self.channel}"


def parse_url(url: str) -> RedisURL:
    """Parse and check a relay URL.

    ``redis://[[USER]:PASSWORD@]HOST[:PORT][/CHANNEL]``: the port defaults
    to 6379, the channel to ``metalio:broadcast``; the user name, password
    and channel may be percent-encoded.  HOST is an IP literal (``[::1]``
    for IPv6) or a name, which is resolved here, once, because resolving
    blocks and the relay never does it again on reconnect.

    :raises TypeError: *url* is not a ``str``.
    :raises ValueError: anything else wrong, with what and why.
    """
    if not isinstance(url, str):
        raise TypeError(f"relay URL must be a str, not {type(url).__name__}")
    shown = url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad relay URL {shown!r}: {exc}") from None
    if parts.password:
        shown = url.replace(parts.password, "***", 1)
    if parts.scheme != "redis":
        hint = " (TLS is not supported)" if parts.scheme == "rediss" else ""
        raise ValueError(
            f"bad relay URL {shown!r}: the scheme must be redis://{hint}, "
            "as in redis://[:PASSWORD@]HOST:PORT[/CHANNEL]"
        )
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"bad relay URL {shown!r}: no query or fragment allowed")
    host = parts.hostname
    if not host:
        raise ValueError(f"bad relay URL {shown!r}: no host")
    if port == 0:
        raise ValueError(f"bad relay URL {shown!r}: port 0")
    port = DEFAULT_PORT if port is None else port
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        raise ValueError(f"bad relay URL {shown!r}: a user name needs a password (USER:PASSWORD@)")
    if password == "":
        raise ValueError(f"bad relay URL {shown!r}: empty password")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    channel = unquote(path) if path else DEFAULT_CHANNEL
    if "/" in path:
        raise ValueError(f"bad relay URL {shown!r}: the path is one channel name, without '/'")
    return RedisURL(host, port, channel, (_resolve(host, port, shown), port), username, password)


def _resolve(host: str, port: int, shown: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"bad relay URL {shown!r}: cannot resolve {host!r}: {exc}") from None
    # IPv4 first: "localhost" often resolves to ::1 too, and Redis binds 127.0.0.1.
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def check_handshake(step: str, reply: Any) -> None:
    """Whether *reply* is the right answer to handshake *step* (auth, ping, subscribe).

    :raises ConnectionLost: it is not, with what that means for the operator.
    """
    if isinstance(reply, ReplyError):
        message = str(reply)
        if message.startswith("NOAUTH"):
            reason = (
                f"Redis requires a password ({message}): "
                "give it in the relay URL, redis://:PASSWORD@HOST:PORT"
            )
        elif step != "auth":
            reason = f"Redis answered {step.upper()} with an error: {message}"
        elif message.startswith("WRONGPASS") or "invalid password" in message:
            reason = f"Redis refused the password ({message}): check the relay URL"
        elif "without any password configured" in message:
            reason = f"the relay URL has a password but Redis needs none ({message})"
        else:
            reason = f"AUTH failed: {message}"
        raise ConnectionLost(reason, logging.ERROR)
    if step == "auth":
        ok = reply == b"OK"
    elif step == "ping":
        ok = reply == b"PONG"
    else:
        ok = isinstance(reply, list) and reply[:1] == [b"subscribe"]
    if not ok:
        raise ConnectionLost(f"not a Redis server? answer to {step.upper()}: {short(reply)}")


def describe(exc: BaseException) -> str:
    """An exception as the log shows it."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def short(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to *limit* characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
