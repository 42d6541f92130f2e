"""A running total fed over the notify channel.

A producer thread sends the numbers 0..4; ``Handler.notify`` adds each one to
the handler's state and prints the running total (0, 1, 3, 6, 10).  After the
fifth message the handler shuts the loop down.  The messages arrive in the
order they were sent, each exactly once, however the two threads interleave.

Run: ``python examples/counter.py``
"""

from __future__ import annotations

import threading
from typing import Any

from metalio import EventLoop, Handler

COUNT = 5


class Counter(Handler):
    def __init__(self) -> None:
        self.total = 0
        self.received = 0

    def notify(self, loop: EventLoop, msg: Any) -> None:
        self.total += msg
        self.received += 1
        print(f"received {msg}, total {self.total}", flush=True)
        if self.received == COUNT:
            loop.shutdown()


def main() -> None:
    with EventLoop() as loop:
        sender = loop.channel()

        def produce() -> None:
            for n in range(COUNT):
                sender.send(n)

        producer = threading.Thread(target=produce)
        producer.start()
        counter = Counter()
        loop.run(counter)
        producer.join()
        print(f"final total {counter.total}", flush=True)


if __name__ == "__main__":
    main()
