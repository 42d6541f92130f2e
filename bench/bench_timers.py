"""Timer micro-benchmark: metalio's timing wheel against asyncio, uvloop and a bare heapq.

Usage::

    python bench/bench_timers.py [--n 200000] [--max-delay 10] [--repeat 5]
                                 [--mode schedule|expire|all] [--seed 1] [--json]

``schedule`` (the anchor workload): schedule ``n`` timeouts with random
delays in ``[0, max_delay)`` seconds and cancel every other one.  The figure
is combined operations per second, ``(n + n/2) / time``:

* metalio: ``Timer.set_timeout`` / ``Timer.cancel`` (real removal);
* asyncio: ``loop.call_later`` / ``TimerHandle.cancel`` on a fresh
  default event loop (a heap of handles with lazy deletion);
* uvloop: the same calls on a uvloop loop (libuv's C timer heap), if importable;
* heapq: a bare inline baseline, ``heappush`` of ``[when, seq, payload,
  cancelled]`` lists and a cancelled flag; no handle object, no method call,
  and cancelled entries stay in the heap.

``expire``: ``n`` timeouts (no cancels) whose deadlines have all passed are
fired and each payload is handed to a no-op callback:

* metalio, one ``expired()`` call (a caller catching up ``max_delay`` seconds);
* metalio, a manual clock walking forward 1 ms at a time and, as the
  EventLoop does, ``expired_into()`` whenever ``next_deadline()`` has come;
* heapq: pop while due, skip cancelled, dispatch;
* asyncio / uvloop: one loop iteration running ``n`` timers whose time is
  already past (their own dispatch path).

Times are per-thread CPU time (``time.thread_time``), best of ``--repeat``
interleaved rounds, so that other processes on a small machine disturb the
ratios as little as possible; the garbage collector stays enabled, as in a
real program.  Take ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import heapq
import itertools
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from metalio.timer import Timer

__all__ = ["main"]

try:
    import uvloop
except ImportError:  # pragma: no cover - optional
    uvloop = None  # type: ignore[assignment]


Runner = Callable[[], float]


def _noop(*_args: object) -> None:
    pass


class _ManualClock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------- schedule


def schedule_metalio(delays: list[float]) -> float:
    timer: Timer = Timer(capacity=len(delays))
    set_timeout = timer.set_timeout
    cancel = timer.cancel
    gc.collect()
    t0 = time.thread_time()
    handles: list[Any] = []
    append = handles.append
    for d in delays:
        append(set_timeout(d, None))
    for h in handles[::2]:
        cancel(h)
    elapsed = time.thread_time() - t0
    assert len(timer) == len(delays) - (len(delays) + 1) // 2
    return elapsed


def _schedule_loop(loop: asyncio.AbstractEventLoop, delays: list[float]) -> float:
    call_later = loop.call_later
    gc.collect()
    t0 = time.thread_time()
    handles: list[asyncio.TimerHandle] = []
    append = handles.append
    for d in delays:
        append(call_later(d, _noop))
    for h in handles[::2]:
        h.cancel()
    elapsed = time.thread_time() - t0
    loop.close()
    return elapsed


def schedule_asyncio(delays: list[float]) -> float:
    return _schedule_loop(asyncio.new_event_loop(), delays)


def schedule_uvloop(delays: list[float]) -> float:
    assert uvloop is not None
    return _schedule_loop(uvloop.new_event_loop(), delays)


def schedule_heapq(delays: list[float]) -> float:
    heap: list[list[Any]] = []
    push = heapq.heappush
    clock = time.monotonic
    seq = itertools.count()
    gc.collect()
    t0 = time.thread_time()
    entries: list[list[Any]] = []
    append = entries.append
    for d in delays:
        entry = [clock() + d, next(seq), None, False]
        push(heap, entry)
        append(entry)
    for entry in entries[::2]:
        entry[3] = True
    return time.thread_time() - t0


# ------------------------------------------------------------------- expire


def expire_metalio_once(delays: list[float]) -> float:
    clock = _ManualClock()
    timer: Timer = Timer(capacity=len(delays), clock=clock)
    for i, d in enumerate(delays):
        timer.set_timeout(d, i)
    now = max(delays) + 2 * timer.tick
    count = 0

    def dispatch(_payload: object) -> None:
        nonlocal count
        count += 1

    gc.collect()
    t0 = time.thread_time()
    for payload in timer.expired(now):
        dispatch(payload)
    elapsed = time.thread_time() - t0
    assert count == len(delays) and not timer, (count, len(timer))
    return elapsed


def expire_metalio_stepwise(delays: list[float]) -> float:
    clock = _ManualClock()
    timer: Timer = Timer(capacity=len(delays), clock=clock)
    for i, d in enumerate(delays):
        timer.set_timeout(d, i)
    tick = timer.tick
    steps = int(max(delays) / tick) + 3
    count = 0

    def dispatch(_payload: object) -> None:
        nonlocal count
        count += 1

    out: list[Any] = []
    expired_into = timer.expired_into
    next_deadline = timer.next_deadline
    gc.collect()
    t0 = time.thread_time()
    # As metalio's EventLoop does: look at the wheel only once the cached
    # next deadline has come.
    nd = next_deadline()
    for step in range(1, steps + 1):
        now = step * tick
        if nd is not None and now >= nd:
            expired_into(now, out)
            for payload in out:
                dispatch(payload)
            out.clear()
            nd = next_deadline()
    elapsed = time.thread_time() - t0
    assert count == len(delays) and not timer, (count, len(timer))
    return elapsed


def expire_heapq(delays: list[float]) -> float:
    heap: list[list[Any]] = []
    seq = itertools.count()
    for i, d in enumerate(delays):
        heapq.heappush(heap, [d, next(seq), i, False])
    now = max(delays) + 1.0
    pop = heapq.heappop
    count = 0

    def dispatch(_payload: object) -> None:
        nonlocal count
        count += 1

    gc.collect()
    t0 = time.thread_time()
    while heap and heap[0][0] <= now:
        entry = pop(heap)
        if not entry[3]:
            dispatch(entry[2])
    elapsed = time.thread_time() - t0
    assert count == len(delays)
    return elapsed


def _expire_loop(loop: asyncio.AbstractEventLoop, delays: list[float]) -> float:
    count = 0

    def dispatch(_payload: object) -> None:
        nonlocal count
        count += 1

    base = loop.time() - max(delays) - 1.0
    for i, d in enumerate(delays):
        loop.call_at(base + d, dispatch, i)
    loop.call_soon(loop.stop)
    gc.collect()
    t0 = time.thread_time()
    loop.run_forever()
    elapsed = time.thread_time() - t0
    loop.close()
    assert count == len(delays), count
    return elapsed


def expire_asyncio(delays: list[float]) -> float:
    return _expire_loop(asyncio.new_event_loop(), delays)


def expire_uvloop(delays: list[float]) -> float:
    assert uvloop is not None
    return _expire_loop(uvloop.new_event_loop(), delays)


# ------------------------------------------------------------------ driver


def _best(runners: dict[str, Runner], repeat: int) -> dict[str, float]:
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(repeat):
        for name, run in runners.items():
            best[name] = min(best[name], run())
    return best


def _table(title: str, ops: int, best: dict[str, float], ref: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name, seconds in best.items():
        rows.append(
            {
                "impl": name,
                "seconds": seconds,
                "ops_per_s": ops / seconds,
                "metalio_speedup": best[ref] and seconds / best[ref],
            }
        )
    print(f"\n{title}")
    print(f"{'implementation':<28} {'ops/s':>14} {'CPU ms':>9} {'metalio is':>11}")
    for row in rows:
        print(
            f"{row['impl']:<28} {row['ops_per_s']:>14,.0f} {row['seconds'] * 1e3:>9.1f} "
            f"{row['metalio_speedup']:>10.2f}x"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="timeouts per run")
    parser.add_argument("--max-delay", type=float, default=10.0, help="largest delay, seconds")
    parser.add_argument("--repeat", type=int, default=5, help="interleaved rounds; best kept")
    parser.add_argument("--mode", choices=("schedule", "expire", "all"), default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)
    if args.n < 2 or args.repeat < 1 or not args.max_delay > 0:
        parser.error("need --n >= 2, --repeat >= 1 and --max-delay > 0")

    rng = random.Random(args.seed)
    delays = [rng.uniform(0.0, args.max_delay) for _ in range(args.n)]
    uv = uvloop is not None
    print(
        f"n={args.n} delays in [0, {args.max_delay}) s, best of {args.repeat}, "
        f"CPython {platform.python_version()}, uvloop {'yes' if uv else 'not installed'}"
    )
    report: dict[str, Any] = {
        "n": args.n,
        "max_delay": args.max_delay,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "uvloop": getattr(uvloop, "__version__", None),
    }
    if args.mode in ("schedule", "all"):
        runners: dict[str, Runner] = {
            "metalio Timer": lambda: schedule_metalio(delays),
            "asyncio call_later": lambda: schedule_asyncio(delays),
        }
        if uv:
            runners["uvloop call_later"] = lambda: schedule_uvloop(delays)
        runners["bare heapq (lazy cancel)"] = lambda: schedule_heapq(delays)
        ops = args.n + (args.n + 1) // 2
        best = _best(runners, args.repeat)
        report["schedule"] = _table(
            f"schedule {args.n:,} + cancel {(args.n + 1) // 2:,}: combined ops/s",
            ops,
            best,
            "metalio Timer",
        )
    if args.mode in ("expire", "all"):
        runners = {
            "metalio expired() once": lambda: expire_metalio_once(delays),
            "metalio per tick (loop-like)": lambda: expire_metalio_stepwise(delays),
            "asyncio loop iteration": lambda: expire_asyncio(delays),
        }
        if uv:
            runners["uvloop loop iteration"] = lambda: expire_uvloop(delays)
        runners["bare heapq pop"] = lambda: expire_heapq(delays)
        best = _best(runners, args.repeat)
        report["expire"] = _table(
            f"fire {args.n:,} due timeouts with dispatch: timeouts/s",
            args.n,
            best,
            "metalio expired() once",
        )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
