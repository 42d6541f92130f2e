"""The state mutation game: a channel, a 250 ms timer and two UDP sockets.

One piece of state, ``count``, is changed by all three kinds of event the
loop delivers, each on the loop's thread, so it needs no lock:

* **channel** -- a "commander" thread sends commands: ``("add", 3)`` and
  ``("add", 2)`` raise the count to 5, ``("start",)`` starts the game;
* **timer** -- every move waits 250 ms (``loop.timeout``), then player A
  serves the count to player B in a UDP datagram;
* **UDP** -- B takes one off and sends it back; A stores what comes back.

The game counts back down to 0, prints ``game over`` and shuts the loop down:
about 1.25 s.  A watchdog timeout ends it with an error if a datagram ever
went missing (it does not on loopback).

Run: ``python examples/state_game.py``
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from metalio import EventLoop, Handler, Interest, PollOpt, Ready
from metalio.net import UdpSocket

PLAYER_A = 0
PLAYER_B = 1
MOVE_DELAY = 0.25
WATCHDOG = 10.0


class Game(Handler):
    def __init__(self, a: UdpSocket, b: UdpSocket) -> None:
        self.a = a
        self.b = b
        self.count = 0
        self.failed = False

    # -- the channel: commands from another thread -----------------------------

    def notify(self, loop: EventLoop, msg: Any) -> None:
        if msg[0] == "add":
            self.count += msg[1]
            print(f"command: add {msg[1]} (count {self.count})", flush=True)
        elif msg[0] == "start":
            print(f"command: start, first serve in {int(MOVE_DELAY * 1000)} ms", flush=True)
            loop.timeout("serve", MOVE_DELAY)
            loop.timeout("watchdog", WATCHDOG)

    # -- the timer: pace the moves -------------------------------------------------

    def timeout(self, loop: EventLoop, payload: Any) -> None:
        if payload == "serve":
            print(f"serve: A sends {self.count}", flush=True)
            self.a.try_send_to(str(self.count).encode(), self.b.local_addr())
        else:
            print("watchdog: a datagram went missing", flush=True)
            self.failed = True
            loop.shutdown()

    # -- UDP: the ball -----------------------------------------------------------------

    def ready(self, loop: EventLoop, token: int, ready: Ready) -> None:
        sock = self.a if token == PLAYER_A else self.b
        # Edge-triggered: drain until try_recv_from says "not now" (None).
        while (got := sock.try_recv_from(64)) is not None:
            value = int(got[0])
            if token == PLAYER_B:
                print(f"B: got {value}, returns {value - 1}", flush=True)
                self.b.try_send_to(str(value - 1).encode(), got[1])
            else:
                self.count = value
                print(f"A: count is {value}", flush=True)
                if value == 0:
                    print("game over", flush=True)
                    loop.shutdown()
                else:
                    loop.timeout("serve", MOVE_DELAY)


def main() -> int:
    with (
        UdpSocket.bind(("127.0.0.1", 0)) as a,
        UdpSocket.bind(("127.0.0.1", 0)) as b,
        EventLoop() as loop,
    ):
        loop.register(a, PLAYER_A, Interest.READABLE, PollOpt.EDGE)
        loop.register(b, PLAYER_B, Interest.READABLE, PollOpt.EDGE)
        sender = loop.channel()

        def commander() -> None:
            sender.send(("add", 3))
            sender.send(("add", 2))
            sender.send(("start",))

        thread = threading.Thread(target=commander)
        thread.start()
        game = Game(a, b)
        loop.run(game)
        thread.join()
        return 1 if game.failed else 0


if __name__ == "__main__":
    sys.exit(main())
