"""Hello over the notify channel: the smallest EventLoop program.

A thread sends one message through ``loop.channel()``; the loop, blocked in
its wait, wakes up, hands the message to ``Handler.notify``, which prints it
and shuts the loop down.  ``run()`` returns and the program exits.

Run: ``python examples/hello_notify.py``  ->  ``Hello, world!``
"""

from __future__ import annotations

import threading
from typing import Any

from metalio import EventLoop, Handler


class Hello(Handler):
    def notify(self, loop: EventLoop, msg: Any) -> None:
        print(msg, flush=True)
        loop.shutdown()


def main() -> None:
    with EventLoop() as loop:
        sender = loop.channel()
        # Sent from another thread: Sender.send is thread-safe and wakes the loop.
        threading.Thread(target=sender.send, args=("Hello, world!",)).start()
        loop.run(Hello())


if __name__ == "__main__":
    main()
