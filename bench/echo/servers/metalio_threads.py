"""``metalio echo --threads 2`` as a benchmark server: two EventLoops on one port.

The echo server of ``metalio.apps.echo`` run by ``metalio.apps.threads``:
one loop per thread, each with its own ``SO_REUSEPORT`` listener.  Under the
GIL the two threads take turns; on free-threaded CPython they can run in
parallel (``bench/echo/run.py --python`` with such an interpreter).  Note
that ``run.py`` pins the server to one CPU and the load generator to the
other, so on two cores this measures two loops sharing one core; and its
system-time split reads the main thread's accounting only.

Usage: python metalio_threads.py PORT   (binds 127.0.0.1:PORT, prints "ready",
echoes until SIGTERM/SIGINT, exits 0)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# METALIO_SRC: another tree's src/ (run.py --baseline measures two trees at once).
_SRC = Path(os.environ.get("METALIO_SRC") or Path(__file__).resolve().parents[3] / "src")
if (_SRC / "metalio").is_dir():
    sys.path.insert(0, str(_SRC))

from metalio.apps.echo import EchoServer  # noqa: E402
from metalio.apps.threads import serve_threads  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: {argv[0]} PORT", file=sys.stderr)
        return 2
    serve_threads(
        EchoServer,
        2,
        "127.0.0.1",
        int(argv[1]),
        on_listening=lambda server: print("ready", flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
