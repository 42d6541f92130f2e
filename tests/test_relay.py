"""The Redis relay (metalio.apps.relay) against a real redis-server on 127.0.0.1.

Each test starts its own ``redis-server`` on a free port and stops it by PID.
Nodes are Relays on separate EventLoops, each on its own thread.  Without
redis-server or hiredis the tests skip, except in CI (``CI=true``), where
they fail.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest

from metalio import EventLoop
from metalio.apps import resp
from metalio.apps.resp import parse_url
from redis_helpers import (
    FakeServer,
    Node,
    cpu_over,
    free_port,
    nodes,
    raw_command,
    redis_server,
    require_hiredis,
    wait_until,
)

CHANNEL = "metalio:broadcast"
# A busy loop would burn about 1 s of CPU per second; an idle relay uses ~0.
CPU_BOUND = 0.3


def all_up(group: list[Node]) -> bool:
    return all(node.relay.up for node in group)


def payload(node: str, client: int, i: int) -> bytes:
    """Binary, RESP-looking, of varied sizes (an empty chunk and a 300 KiB one too)."""
    head = f"{node}|{client}|{i}|".encode()
    if i == 7:
        return head + os.urandom(300 * 1024)
    return head + b"\r\n$-1\r\n*3\r\n\x00\xff" * (i % 5) + os.urandom(i % 97)


def check_delivery(
    group: list[Node], sent: dict[tuple[str, int], list[bytes]], timeout: float = 20
) -> None:
    """Every node got every other node's chunks, whole and in order, and none of its own."""
    for node in group:
        want = sum(len(v) for (name, _), v in sent.items() if name != node.name)
        wait_until(lambda node=node, want=want: len(node.received) >= want, timeout, node.name)
        got: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        for name, client, data in node.received:
            got[name, client].append(data)
        assert node.name not in {name for name, _ in got}
        assert got == {k: v for k, v in sent.items() if k[0] != node.name}
        own = sum(len(v) for k, v in sent.items() if k[0] == node.name)
        wait_until(lambda node=node, own=own: node.relay.stats.own >= own, timeout, "own echoes")
        assert node.relay.stats.own == own


def publish_rounds(group: list[Node], rounds: int, clients: int = 2) -> dict:
    sent: dict[tuple[str, int], list[bytes]] = defaultdict(list)
    for i in range(rounds):
        for node in group:
            items = [(c, payload(node.name, c, i)) for c in range(clients)]
            assert node.publish(items) == [True] * clients
            for c, data in items:
                sent[node.name, c].append(data)
    return sent


# -- pure parts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "channel", "user", "password"),
    [
        ("redis://127.0.0.1:6380", "127.0.0.1", 6380, CHANNEL, None, None),
        ("redis://127.0.0.1", "127.0.0.1", 6379, CHANNEL, None, None),
        ("redis://127.0.0.1:1/", "127.0.0.1", 1, CHANNEL, None, None),
        ("redis://:s%40cret@127.0.0.1:7/room%201", "127.0.0.1", 7, "room 1", None, "s@cret"),
        ("redis://bob:pw@[::1]:7/c", "::1", 7, "c", "bob", "pw"),
        ("redis://localhost:7/c", "localhost", 7, "c", None, None),
    ],
)
def test_url_parses(url, host, port, channel, user, password) -> None:
    parsed = parse_url(url)
    assert (parsed.host, parsed.port, parsed.channel) == (host, port, channel)
    assert (parsed.username, parsed.password) == (user, password)
    assert parsed.address[1] == port
    if password:
        assert password not in parsed.redacted() and password not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:6379", "scheme"),
        ("rediss://127.0.0.1:6379", "TLS"),
        ("redis://", "no host"),
        ("redis://127.0.0.1:99999", "out of range"),
        ("redis://127.0.0.1:port", "Port could not be cast"),
        ("redis://127.0.0.1:0", "port 0"),
        ("redis://127.0.0.1:6379/a/b", "one channel"),
        ("redis://127.0.0.1:6379/c?db=1", "query"),
        ("redis://user@127.0.0.1:6379", "needs a password"),
        ("redis://:@127.0.0.1:6379", "empty password"),
        ("redis://no-such-host.invalid:6379", "cannot resolve"),
    ],
)
def test_bad_url_is_a_clear_value_error(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        parse_url(url)
    assert "redis://" in str(info.value)


def test_bad_url_error_hides_the_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_url("redis://:hunter2@127.0.0.1:6379/a/b")
    assert "hunter2" not in str(info.value)


def test_command_is_an_array_of_bulk_strings() -> None:
    assert (
        resp.command("PUBLISH", b"c\r\n", 12)
        == b"*3\r\n$7\r\nPUBLISH\r\n$3\r\nc\r\n\r\n$2\r\n12\r\n"
    )
    prefix = resp.publish_prefix(b"chan")
    assert resp.command("PUBLISH", b"chan", b"xy") == prefix + b"$2\r\nxy\r\n"
    with pytest.raises(TypeError):
        resp.command("SET", 1.5)  # type: ignore[arg-type]


def test_envelope_round_trip_and_foreign_payloads() -> None:
    header = resp.envelope_header("nödé".encode())
    body = header + resp.pack_ids(2**63 - 1, 5) + b"\x00\r\nbytes"
    node, client, seq, data = resp.decode_envelope(body)  # type: ignore[misc]
    assert (node.decode(), client, seq, bytes(data)) == ("nödé", 2**63 - 1, 5, b"\x00\r\nbytes")
    assert bytes(resp.decode_envelope(header + resp.pack_ids(1, 2))[3]) == b""  # type: ignore[index]
    for foreign in (
        b"",
        b"hello",
        b"MIOR\x01",
        b"MIOR\x02" + body[5:],
        body[:10],
        b"MIOR\x01\x00" + b"\0" * 16,
    ):
        assert resp.decode_envelope(foreign) is None
    with pytest.raises(ValueError):
        resp.envelope_header(b"")
    with pytest.raises(ValueError):
        resp.envelope_header(b"x" * 256)


def test_without_hiredis_the_relay_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from metalio.apps.relay import Relay

    monkeypatch.setitem(sys.modules, "hiredis", None)  # import hiredis -> ImportError
    with (
        EventLoop() as loop,
        pytest.raises(ImportError, match=r"pip install 'metalio\[relay\]'") as info,
    ):
        Relay(loop, "redis://127.0.0.1:6379", on_message=print)
    assert isinstance(info.value, resp.RelayUnavailable)


def test_importing_metalio_and_the_relay_does_not_import_hiredis() -> None:
    code = textwrap.dedent(
        """
        import sys
        import metalio, metalio.apps.relay, metalio.apps.broadcast
        assert "hiredis" not in sys.modules, "hiredis imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_bad_settings_are_refused() -> None:
    require_hiredis()
    from metalio.apps.relay import Relay

    url = f"redis://127.0.0.1:{free_port()}"
    with EventLoop() as loop:
        for kwargs in ({"tokens": (5, 5)}, {"backoff": (0, 1)}, {"backoff": (2, 1)},
                       {"max_pending": 0}, {"connect_timeout": 0}, {"node_id": ""}):  # fmt: skip
            with pytest.raises(ValueError):
                Relay(loop, url, on_message=print, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            Relay(loop, url, on_message=print, node_id=7)  # type: ignore[arg-type]


# -- with a real Redis ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["epoll", "poll", "select"])
def test_two_nodes_deliver_everything_in_order_not_to_themselves(backend: str) -> None:
    with redis_server() as server, nodes(server.url, "AB", backend=backend) as group:
        wait_until(lambda: all_up(group), what="relays up")
        sent = publish_rounds(group, 40)
        check_delivery(group, sent)
        assert all(n.relay.stats.dropped == 0 and n.relay.stats.missed == 0 for n in group)
        assert all(n.losses == [] for n in group)


def test_three_nodes_deliver_everything_in_order() -> None:
    with redis_server() as server, nodes(server.url + "/room:3", "ABC") as group:
        wait_until(lambda: all_up(group), what="relays up")
        sent = publish_rounds(group, 30, clients=3)
        check_delivery(group, sent)
        # The channel is the URL's: nothing went to the default one.
        assert raw_command(server.port, "PUBSUB", "NUMSUB", CHANNEL) == [CHANNEL.encode(), 0]
        assert raw_command(server.port, "PUBSUB", "NUMSUB", "room:3") == [b"room:3", 3]


def test_tokens_are_configurable_and_a_closed_relay_drops() -> None:
    # The node's handler asserts that every event and timer it gets is the relay's.
    with redis_server() as server, nodes(server.url, "AB", tokens=(10, 11)) as group:
        a, _ = group
        wait_until(lambda: all_up(group), what="relays up")
        assert a.call(
            lambda relay: (relay.owns_token(10), relay.owns_token(11), relay.owns_token(12))
        ) == (True, True, False)
        check_delivery(group, publish_rounds(group, 3))
        a.call(lambda relay: relay.close())
        assert a.publish([(1, b"late")]) == [False]
        assert not a.relay.up
        wait_until(
            lambda: raw_command(server.port, "PUBSUB", "NUMSUB", CHANNEL)[1] == 1, what="A gone"
        )


@pytest.mark.parametrize("user", ["", "default"])
def test_auth_with_the_password_in_the_url(user: str) -> None:
    with redis_server("--requirepass", "s3cr%t") as server:
        url = f"redis://{user}:s3cr%25t@127.0.0.1:{server.port}"
        with nodes(url, "AB") as group:
            wait_until(lambda: all_up(group), what="relays up")
            check_delivery(group, publish_rounds(group, 5))
            assert all("s3cr" not in m for n in group for m in n.messages())


def _never_up_without_spinning(node: Node, reason: str, level: int = logging.WARNING) -> None:
    """Failing attempts are logged once at *level*, retried with back-off, and cost no CPU."""
    wait_until(lambda: node.relay.stats.attempts >= 3, 10, "three attempts")
    assert cpu_over(1.0) < CPU_BOUND
    assert not node.relay.up
    attempts = node.relay.stats.attempts
    # backoff (0.05, 0.4): about 0.2-0.4 s between attempts by now; a busy loop is thousands.
    assert 3 <= attempts <= 25, attempts
    # Each attempt logs its failure once: loudly the first time a reason is seen,
    # at DEBUG after that.  (A peer that closes at once may give either of two reasons.)
    reasons = reason.split(" | ")
    messages = node.messages()
    failures = [m for m in messages if any(r in m for r in reasons)]
    # Read after the messages: one attempt may be under way, one more may have begun since.
    assert len(failures) <= node.relay.stats.attempts <= len(failures) + 2, messages
    loud = [m for m in messages if any(r in m for r in reasons) and "again" not in m]
    assert 1 <= len(loud) <= len(reasons), messages
    for r in reasons:
        assert len([m for m in node.messages(level) if r in m]) <= 1, messages


def test_wrong_password_is_logged_once_and_retried_without_a_busy_loop() -> None:
    with redis_server("--requirepass", "right") as server:
        url = f"redis://:wrong@127.0.0.1:{server.port}"
        with nodes(url, "A", backoff=(0.05, 0.4)) as (node,):
            _never_up_without_spinning(node, "refused the password", logging.ERROR)
            assert node.relay.stats.published == 0
            assert node.publish([(1, b"x")]) == [False]
            assert node.relay.stats.dropped == 1


def test_missing_password_says_noauth_and_how_to_give_it() -> None:
    with (
        redis_server("--requirepass", "right") as server,
        nodes(server.url, "A", backoff=(0.05, 0.4)) as (node,),
    ):
        _never_up_without_spinning(node, "requires a password", logging.ERROR)
        assert any("redis://:PASSWORD@" in m for m in node.messages())


def test_password_for_a_redis_without_one() -> None:
    with redis_server() as server:
        url = f"redis://:pw@127.0.0.1:{server.port}"
        with nodes(url, "A", backoff=(0.05, 0.4)) as (node,):
            _never_up_without_spinning(node, "needs none", logging.ERROR)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "not a Redis server? publish connection: Protocol error"),
        ("echo", "not a Redis server? answer to"),
        ("silent", "not up within 0.2 s"),
        (
            "close",
            "closed by the server during the handshake | Connection reset by peer | Broken pipe",
        ),
    ],
)
def test_a_server_that_is_not_redis(mode: str, reason: str) -> None:
    with (
        FakeServer(mode) as fake,
        nodes(f"redis://127.0.0.1:{fake.port}", "A", backoff=(0.05, 0.4), connect_timeout=0.2) as (
            node,
        ),
    ):
        _never_up_without_spinning(node, reason)
        assert fake.accepted >= 2 * 3  # both connections, every attempt


def test_an_unreachable_port() -> None:
    port = free_port()  # nothing listens there
    with nodes(f"redis://127.0.0.1:{port}", "A", backoff=(0.05, 0.4)) as (node,):
        _never_up_without_spinning(node, "ConnectionRefusedError")
        assert node.relay.stats.losses == 0


def test_redis_killed_and_restarted_mid_stream() -> None:
    with redis_server() as server, nodes(server.url, "AB", backoff=(0.05, 0.5)) as group:
        a, b = group
        wait_until(lambda: all_up(group), what="relays up")
        index = 0

        def send(count: int) -> list[bool]:
            nonlocal index
            items = [(1, b"%d|" % (index + i) + os.urandom(200)) for i in range(count)]
            index += count
            return a.publish(items)

        assert send(50) == [True] * 50
        wait_until(lambda: len(b.received) == 50)
        server.kill()
        for _ in range(20):  # mid-stream: A keeps publishing while Redis is gone
            send(5)
        wait_until(lambda: not a.relay.up and not b.relay.up, what="both lost")
        assert send(10) == [False] * 10
        for node in group:
            assert any(
                "lost" in m and "serving local clients only" in m
                for m in node.messages(logging.WARNING)
            )
            assert node.relay.stats.losses == 1 and len(node.losses) == 1
        server.start()
        wait_until(lambda: all_up(group), what="relays back")
        for node in group:
            cut = [m for m in node.messages(logging.WARNING) if "cut off" in m]
            assert len(cut) == 1, node.messages()
            seconds = float(re.search(r"after (\d+\.\d+) s cut off", cut[0]).group(1))  # type: ignore[union-attr]
            assert seconds > 0
        before = index
        assert send(50) == [True] * 50
        wait_until(lambda: any(d.startswith(b"%d|" % (index - 1)) for _, _, d in b.received))
        seen = [int(d.split(b"|")[0]) for _, _, d in b.received]
        assert seen == sorted(set(seen))  # at most once, in order
        assert seen[:50] == list(range(50))
        assert seen[-50:] == list(range(before, index))  # everything after the reconnect
        assert a.relay.stats.dropped >= 10
        assert b.relay.stats.missed == 0 and len(b.losses) == 1  # the outage is one loss, not a gap


def test_a_foreign_message_is_ignored_and_logged_once() -> None:
    with redis_server() as server, nodes(server.url, "AB") as group:
        a, b = group
        wait_until(lambda: all_up(group), what="relays up")
        for junk in (b"hello", b"MIOR\x01", b"MIOR\x09" + b"x" * 40):
            assert raw_command(server.port, "PUBLISH", CHANNEL, junk) == 2
        assert a.publish([(3, b"ours")]) == [True]
        wait_until(lambda: b.received == [("A", 3, b"ours")])
        wait_until(lambda: a.relay.stats.own == 1)
        for node in group:
            assert node.relay.stats.foreign == 3
            assert len([m for m in node.messages() if "not a metalio relay message" in m]) == 1
            assert node.relay.up


def _redis_holds_nothing_for_subscribers(port: int) -> bool:
    clients = raw_command(port, "CLIENT", "LIST").decode().splitlines()
    fields = [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in clients]
    return all(f["omem"] == "0" for f in fields if f.get("sub") != "0")


def test_paused_reading_delivers_nothing_and_resume_drains_without_a_new_edge() -> None:
    with redis_server() as server, nodes(server.url, "ABC", read_budget=1) as group:
        a, b, c = group
        wait_until(lambda: all_up(group), what="relays up")
        b.call(lambda relay: relay.pause_reading())
        # More than one 64 KiB read (read_budget=1 makes the rest a continuation),
        # little enough to sit whole in B's socket buffer: then no new edge comes.
        sent = [(1, b"%d|" % i + os.urandom(2000)) for i in range(40)]
        assert a.publish(sent) == [True] * 40
        wait_until(lambda: len(c.received) == 40)
        wait_until(lambda: _redis_holds_nothing_for_subscribers(server.port), 5, "all sent to B")
        assert b.received == []
        assert b.call(lambda relay: relay.paused)
        b.call(lambda relay: relay.resume_reading())
        wait_until(lambda: len(b.received) == 40, 5)
        assert b.received == [("A", cl, d) for cl, d in sent]


def test_a_subscriber_paused_past_redis_limits_is_dropped_by_redis_and_reconnects() -> None:
    limit = ("--client-output-buffer-limit", "pubsub 256kb 128kb 1")
    with redis_server(*limit) as server, nodes(server.url, "AB", backoff=(0.05, 0.5)) as group:
        a, b = group
        wait_until(lambda: all_up(group), what="relays up")
        b.call(lambda relay: relay.pause_reading())
        for _ in range(16):  # 8 MiB: past the kernel buffers and Redis's 256 KiB
            a.publish([(1, os.urandom(64 * 1024)) for _ in range(8)])
        wait_until(
            lambda: raw_command(server.port, "PUBSUB", "NUMSUB", CHANNEL)[1] == 1, what="B dropped"
        )
        b.call(lambda relay: relay.resume_reading())
        wait_until(lambda: b.relay.stats.losses == 1, what="B notices the loss")
        wait_until(lambda: b.relay.up, what="B back")
        assert len(b.received) < 128
        assert a.publish([(2, b"after")]) == [True]
        wait_until(lambda: b.received[-1:] == [("A", 2, b"after")])


def test_overflow_drops_for_the_relay_and_receivers_see_the_gap() -> None:
    with redis_server() as server, nodes(server.url, "AB", max_pending=256 * 1024) as group:
        a, b = group
        wait_until(lambda: all_up(group), what="relays up")
        server.signal(signal.SIGSTOP)  # Redis stops reading: the buffers fill
        try:
            results: list[bool] = []
            for r in range(64):  # 32 MiB offered
                results += a.publish(
                    [(1, b"%d|" % (r * 64 + i) + b"\xaa" * 8192) for i in range(64)]
                )
            assert 0 < a.call(lambda relay: relay.pending) <= 256 * 1024
        finally:
            server.signal(signal.SIGCONT)
        assert not all(results) and any(results)
        assert a.relay.stats.dropped == results.count(False)
        assert len([m for m in a.messages(logging.WARNING) if "outgoing buffer full" in m]) == 1
        wait_until(lambda: any("drained" in m for m in a.messages()), what="buffer drained")
        assert a.call(lambda relay: relay.pending) == 0
        assert a.publish([(1, b"last|")]) == [True]
        wait_until(lambda: b.received[-1:] == [("A", 1, b"last|")])
        seen = [int(d.split(b"|")[0]) for _, _, d in b.received[:-1]]
        assert seen == sorted(set(seen))
        assert seen == [i for i, ok in enumerate(results) if ok]
        assert b.relay.stats.missed == results.count(False)
        assert b.losses and "missed" in b.losses[0]


def test_a_paused_node_still_reconnects_and_gets_what_came_after() -> None:
    with redis_server() as server, nodes(server.url, "AB", backoff=(0.05, 0.5)) as group:
        a, b = group
        wait_until(lambda: all_up(group), what="relays up")
        b.call(lambda relay: relay.pause_reading())
        server.kill()
        wait_until(lambda: not b.relay.up, what="B lost")
        server.start()
        wait_until(lambda: all_up(group), what="both back, B still paused")
        assert b.call(lambda relay: relay.paused)
        assert a.publish([(1, b"one"), (1, b"two")]) == [True, True]
        b.call(lambda relay: relay.resume_reading())
        wait_until(lambda: len(b.received) == 2)
        assert b.received == [("A", 1, b"one"), ("A", 1, b"two")]


def test_publish_with_bad_arguments_queues_nothing() -> None:
    with redis_server() as server, nodes(server.url, "AB") as group:
        a, b = group
        wait_until(lambda: all_up(group), what="relays up")
        for client, data in (("x", b"data"), (1, [1, 2, 3]), (1.5, b"data")):
            with pytest.raises(TypeError):
                a.publish([(client, data)])  # type: ignore[list-item]
        assert a.call(lambda relay: relay.pending) == 0
        assert a.publish([(1, b"good")]) == [True]
        wait_until(lambda: b.received == [("A", 1, b"good")])
        assert b.relay.stats.missed == 0  # the refused calls used no sequence number
