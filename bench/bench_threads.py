"""Does a second thread double a CPU-heavy server?  GIL build against free-threaded build.

The servers are the two example programs, run as they are:

* ``oneshot``   -- ``examples/threaded_oneshot.py``: N threads polling one
  shared ``Poll``, every connection ``EDGE | ONESHOT``, re-armed after each
  event (model a);
* ``reuseport`` -- ``examples/reuseport_loops.py``: one ``EventLoop`` per
  thread, each with its own ``SO_REUSEPORT`` listener on the port (model b).

Each is started with ``--threads 1`` and ``--threads 2`` and ``--work N``:
every request read costs N iterations of a pure-Python loop
(``x = (x * 31 + i) & 0xFFFFFFFF``) before it is echoed.  A pure-Python burn
and not hashlib: hashlib releases the GIL for inputs above 2 KiB, which
would let the GIL build scale too and hide what the GIL does.

Both interpreters run in one invocation: the GIL build (the Python running
this script, or ``--gil-python``) and the free-threaded build
(``--ft-python``, by default the one ``.ci/freethreaded-python.sh``
installs), started with ``PYTHON_GIL=0``.  The servers import metalio from
this checkout's ``src/``; each server's banner must report the GIL state
expected of it, or the run stops.

The client is ``bench/echo/loadgen.c`` (built with ``cc`` on first use;
``bench/echo/loadgen.py`` when there is no compiler): C connections over
127.0.0.1, each with one 64-byte request outstanding, a warm-up, then a
measured window.  Throughput is its round trips per second.  The client
shares the machine's cores with the server; its CPU share is printed, and
the work per request is chosen large (about 0.5-1 ms) so that the client
costs a few percent of a core.  The cells run in an interleaved order,
``--reps`` times; the table shows medians and the 1 -> 2 thread ratio.

    python bench/bench_threads.py                       # ~2 minutes
    python bench/bench_threads.py --reps 1 --duration 2 # ~40 s
    python bench/bench_threads.py --work 20000 --conns 32 --json out.json

Target (issue 15): >= 1.7x from 1 to 2 threads on the free-threaded build;
the GIL build shows about 1.0x.  Nothing is asserted; figures are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODELS = {"oneshot": "threaded_oneshot.py", "reuseport": "reuseport_loops.py"}
DEFAULT_FT = "/opt/metalio-python3.13t/bin/python3.13t"
START_TIMEOUT = 20.0

sys.path.insert(0, str(ROOT))
from bench.echo.run import prepare_loadgen  # noqa: E402


@dataclass
class Cell:
    build: str  # "gil" or "free-threaded"
    model: str
    threads: int
    rep: int
    rt_per_s: float = 0.0
    client_cpu: float = 0.0  # share of one CPU the client used in the window
    per_thread: str = ""  # how the server spread its work (from its exit line)
    error: str = ""


def start_server(
    python: str, model: str, threads: int, work: int, nogil: bool
) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    if nogil:
        env["PYTHON_GIL"] = "0"
    else:
        env.pop("PYTHON_GIL", None)
    argv = [python, str(EXAMPLES / MODELS[model]), "--port", "0", "--threads", str(threads),
            "--work", str(work)]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()  # printed at once, or EOF if it failed
    match = re.match(r"listening on [\d.]+:(\d+) .*GIL (on|off)\)", banner)
    if not match:
        proc.kill()
        _out, err = proc.communicate(timeout=START_TIMEOUT)
        raise RuntimeError(f"{model} on {python} did not start: {banner!r} {err.strip()[-300:]}")
    if (match.group(2) == "off") != nogil:
        proc.kill()
        proc.communicate(timeout=START_TIMEOUT)
        raise RuntimeError(f"{python}: GIL {match.group(2)}, expected {'off' if nogil else 'on'}")
    return proc, int(match.group(1))


def stop_server(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the server's last line (its per-thread figures)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _err = proc.communicate(timeout=START_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=START_TIMEOUT)
        return "(killed)"
    match = re.search(r"(chunks echoed per (?:thread|loop): \[.*?\])", out)
    conns = re.search(r"(connections per loop: \[.*?\])", out)
    parts = [m.group(1) for m in (conns, match) if m]
    return "; ".join(parts)


def run_cell(cell: Cell, python: str, args: argparse.Namespace, loadgen: tuple[str, ...]) -> None:
    try:
        proc, port = start_server(python, cell.model, cell.threads, args.work, cell.build != "gil")
    except (RuntimeError, OSError) as exc:
        cell.error = str(exc)
        return
    try:
        argv = [*loadgen, "-p", str(port), "-c", str(args.conns), "-s", "64",
                "-d", str(args.duration), "-w", str(args.warmup)]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, check=False,
            timeout=args.duration + args.warmup + 60,
        )  # fmt: skip
        line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
        try:
            result = json.loads(line)
        except ValueError:
            cell.error = f"loadgen: {line or done.stderr.strip()[-300:]}"
            return
        if "error" in result:
            cell.error = f"loadgen: {result['error']}"
            return
        cell.rt_per_s = float(result["rt_per_s"])
        seconds = float(result.get("seconds") or args.duration)
        cpu = float(result.get("client_user_s", 0.0)) + float(result.get("client_sys_s", 0.0))
        cell.client_cpu = cpu / seconds
    finally:
        cell.per_thread = stop_server(proc)


def median_rate(cells: list[Cell], build: str, model: str, threads: int) -> float | None:
    rates = [
        c.rt_per_s
        for c in cells
        if (c.build, c.model, c.threads) == (build, model, threads) and not c.error
    ]
    return statistics.median(rates) if rates else None


def format_table(cells: list[Cell], builds: list[str], models: list[str]) -> str:
    lines = [
        "| build | model | 1 thread (req/s) | 2 threads (req/s) | 2 / 1 |",
        "|---|---|---:|---:|---:|",
    ]
    for build in builds:
        for model in models:
            one = median_rate(cells, build, model, 1)
            two = median_rate(cells, build, model, 2)
            ratio = f"{two / one:.2f}x" if one and two else "-"
            lines.append(f"| {build} | {model} | {one or 0:,.0f} | {two or 0:,.0f} | **{ratio}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gil-python", default=sys.executable)
    parser.add_argument("--ft-python", default=DEFAULT_FT)
    parser.add_argument("--models", default="oneshot,reuseport")
    parser.add_argument(
        "--work", type=int, default=5000, help="pure-Python loop iterations per request"
    )
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--loadgen", choices=("auto", "c", "python"), default="auto")
    parser.add_argument("--json", help="write every cell here")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if unknown := [m for m in models if m not in MODELS]:
        parser.error(f"unknown models: {unknown} (known: {sorted(MODELS)})")

    interpreters = {"gil": args.gil_python}
    if Path(args.ft_python).exists():
        interpreters["free-threaded"] = args.ft_python
    else:
        print(f"no free-threaded interpreter at {args.ft_python}: run .ci/freethreaded-python.sh")
    loadgen = prepare_loadgen(args.loadgen)
    print(f"# bench_threads: --work {args.work}, {args.conns} connections x 64 B, "
          f"{args.warmup:g} s warm-up + {args.duration:g} s, {args.reps} reps; "
          f"client {loadgen.note}")  # fmt: skip
    for build, python in interpreters.items():
        version = subprocess.run(
            [python, "-c", "import sys; print(sys.version.splitlines()[0])"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        print(f"# {build}: {python} ({version})")
    print(f"# cpus {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}", flush=True)

    cells: list[Cell] = []
    for rep in range(args.reps):
        for threads in (1, 2):
            for model in models:
                for build, python in interpreters.items():
                    cell = Cell(build, model, threads, rep)
                    run_cell(cell, python, args, loadgen.argv)
                    cells.append(cell)
                    status = cell.error or (
                        f"{cell.rt_per_s:,.0f} req/s, client {cell.client_cpu:.0%} CPU; "
                        f"{cell.per_thread}"
                    )
                    print(f"  rep {rep} {build:13} {model:9} {threads} thr: {status}", flush=True)
    print(f"# load average after: {os.getloadavg()[0]:.2f}")
    print()
    print(format_table(cells, list(interpreters), models))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(c) for c in cells], indent=1))
    return 0 if all(not c.error for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
