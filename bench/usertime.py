"""A process's user-mode CPU time over a window, to 50 µs, by sampling with perf.

Why not ``/proc/PID/stat``
--------------------------
``utime`` and ``stime`` there are not measured: at every timer tick
(``CLK_TCK`` = 100 Hz here) the kernel charges the whole tick to whichever
mode the task happened to be in.  An echo server that spends one sixth of
its time in user mode collects about fifty user ticks in a 3 s window, so
the user figure of one run is good to about ±15 % and a ratio of two of them
to ±20 %: more than the differences the dispatch benchmark looks for.  (The
*total*, from ``/proc/PID/schedstat``, is exact; only the split is sampled.)

What this does instead
----------------------
``perf record -e cpu-clock:u -c 50000 -p PID`` samples the task every 50 µs
of its CPU time and keeps only the samples that interrupt user mode, which
an unprivileged user may do (``perf_event_paranoid`` <= 2) for their own
processes.  Samples × 50 µs is the user time, with 400 times the resolution
of the ticks.  perf is attached while the server is idle (the load
generators stop with every connection quiet at both ends of a measured
window) and detached once it is idle again, so every user sample falls
inside the window.  The sampling interrupts cost the server about 1 µs each,
2 % of its time, in kernel mode: the same for every server measured.

Without perf (or when perf is refused) :func:`sampler` yields ``None`` and
the benchmarks fall back on ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["PERIOD_NS", "UserSampler", "available", "run_ns", "sampler"]

PERIOD_NS = 50_000
# perf reports nothing when it has attached: give it this long, while the
# measured process is idle.
_ATTACH_S = 0.4


class UserSampler:
    """perf sampling one process's user-mode CPU; :meth:`stop` returns the nanoseconds."""

    def __init__(self, pid: int, directory: Path) -> None:
        self._data = directory / f"perf-{pid}.data"
        self._proc = subprocess.Popen(
            [
                "perf",
                "record",
                "-q",
                "-e",
                "cpu-clock:u",
                "-c",
                str(PERIOD_NS),
                "-p",
                str(pid),
                "-o",
                str(self._data),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(_ATTACH_S)
        if self._proc.poll() is not None:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
            raise OSError(f"perf record exited at once: {err.strip()[:200]}")

    def stop(self) -> int:
        """Detach and return the user-mode nanoseconds sampled."""
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
            raise OSError("perf record did not stop") from None
        out = subprocess.run(
            ["perf", "script", "-i", str(self._data), "-F", "period"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        with contextlib.suppress(OSError):
            self._data.unlink()
        return sum(int(line) for line in out.split() if line.isdigit())

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)


def run_ns(pid: int) -> int | None:
    """*pid*'s total CPU time in nanoseconds, exact (``/proc/PID/schedstat``)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def available() -> bool:
    """Whether ``perf`` exists and may sample this user's processes in user mode."""
    if shutil.which("perf") is None:
        return False
    try:
        level = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        return False
    return level <= 2


@contextlib.contextmanager
def sampler(pid: int, enabled: bool = True) -> Iterator[UserSampler | None]:
    """A :class:`UserSampler` attached to *pid*, or ``None`` without perf.

    Attach while *pid* is idle; call ``stop()`` once it is idle again.  The
    sampler is killed on the way out if ``stop()`` was not reached.
    """
    if not enabled or not available():
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="usertime-") as tmp:
        try:
            sampler_ = UserSampler(pid, Path(tmp))
        except OSError:
            yield None
            return
        try:
            yield sampler_
        finally:
            sampler_.kill()


def self_test(seconds: float = 0.3) -> float:
    """Sample a child that spins *seconds* in user mode; return what was measured."""
    code = (
        "import sys, time\nsys.stdin.readline()\nt = time.monotonic()\n"
        f"while time.monotonic() - t < {seconds!r}: pass\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        with sampler(child.pid) as s:
            assert child.stdin is not None
            child.stdin.write(b"\n")
            child.stdin.flush()
            child.wait(30)
            return -1.0 if s is None else s.stop() / 1e9
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


if __name__ == "__main__":
    print(f"perf available: {available()}; a 0.3 s user-mode spin measured {self_test():.3f} s")
