"""Echo benchmark runner: servers x message sizes x connection counts, side by side.

Each server in ``servers/`` is a standalone script that binds 127.0.0.1:PORT,
prints ``ready`` and echoes until SIGTERM.  A load generator (``loadgen.c``,
compiled here with ``cc -O2`` into ``.build/``; ``loadgen.py`` when there is no
compiler) drives N connections with exactly one outstanding message each.

What is measured, per cell (server, size, connections) and repetition:

* round trips per second and p50/p99 latency, from the load generator;
* the server's **user CPU per round trip**: the ``utime`` delta of
  ``/proc/PID/stat`` over the measured window divided by the round trips.
  The load generator stops at the end of its warm-up and of its window with
  every connection idle and waits for the runner (a stdin/stdout handshake),
  so the two samples bracket exactly the measured round trips; warm-up,
  connection set-up and teardown are outside.  On loopback the kernel's part
  of a round trip is the same whatever the server, so user CPU is what tells
  the libraries apart; system CPU is reported too;
* the load generator's own CPU (to see whether it, not the server, was the
  bottleneck) and the CPU that other processes took on the two benchmark CPUs
  (noise).

The server runs on one CPU and the load generator on another when the machine
has two or more.  Every server is started once and stays up (idle servers cost
nothing); repetitions are interleaved: each repetition runs every cell against
every server in turn, the server order rotating by one per repetition.  The
table shows medians over repetitions; ratios are medians of per-repetition
ratios against ``uvloop_protocol`` and ``epoll_floor`` measured in the same
repetition and cell.

Run ``python bench/echo/run.py --help``; importable as ``bench.echo.run``
(``main(argv) -> int``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for usertime
import usertime

HERE = Path(__file__).resolve().parent
SERVERS_DIR = HERE / "servers"
BUILD_DIR = HERE / ".build"
LOADGEN_C = HERE / "loadgen.c"
LOADGEN_PY = HERE / "loadgen.py"

#: Known servers in display order; other ``servers/*.py`` files are appended.
SERVER_ORDER: tuple[str, ...] = (
    "epoll_floor",
    "selectors_default",
    "asyncio_protocol",
    "asyncio_streams",
    "uvloop_protocol",
    "uvloop_streams",
    "metalio_loop",
    "metalio_user",
    "metalio_poll",
)
REF_UVLOOP = "uvloop_protocol"
REF_FLOOR = "epoll_floor"
ALL_SIZES: tuple[int, ...] = (64, 1024, 16384, 102400)
ALL_CONNS: tuple[int, ...] = (1, 10, 100)

READY_TIMEOUT = 20.0  # seconds for a server to print "ready"
STALL_TIMEOUT = 5.0  # seconds without a response before the load generator gives up
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
CLIENT_BOUND = 0.95  # client CPU share above which a cell is flagged ...
SERVER_NOT_BOUND = 0.90  # ... if the server's share is below this


@dataclass(frozen=True)
class Preset:
    sizes: tuple[int, ...]
    conns: tuple[int, ...]
    reps: int
    duration: float
    warmup: float


PRESETS: dict[str, Preset] = {
    "quick": Preset((1024,), (10, 100), 3, 1.2, 0.2),
    "default": Preset((1024,), ALL_CONNS, 3, 2.0, 0.5),
    "full": Preset(ALL_SIZES, ALL_CONNS, 3, 2.0, 0.5),
}


# --------------------------------------------------------------------------
# machine facts and CPU placement


def machine_facts() -> dict[str, Any]:
    """nproc, CPU model, kernel, Python and friends, for the report header."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    uvloop_version = None
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        uvloop_version = version("uvloop")
    hz, sampled = tick_accounting()
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": model,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "uvloop": uvloop_version,
        "clk_tck": _clk_tck(),
        "config_hz": hz,
        "tick_sampled_cpu_accounting": sampled,
        "loadavg": _loadavg(),
    }


def _clk_tck() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100


def tick_accounting() -> tuple[int | None, bool]:
    """``(CONFIG_HZ or None, whether the kernel splits user/system CPU by tick sampling)``.

    With ``CONFIG_TICK_CPU_ACCOUNTING`` (the common case) the kernel charges
    each scheduler tick to user or system time by looking at where the task
    was, so a window's user time is a sample of ``HZ x seconds`` ticks: its
    relative error is about ``1/sqrt(user ticks)``.  Read from
    ``/proc/config.gz`` when it exists; otherwise assume tick sampling.
    """
    hz: int | None = None
    native = gen = False
    with contextlib.suppress(OSError, EOFError, ValueError):
        import gzip

        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith("CONFIG_HZ="):
                    hz = int(line.split("=", 1)[1])
                elif line.startswith("CONFIG_VIRT_CPU_ACCOUNTING_NATIVE=y"):
                    native = True
                elif line.startswith("CONFIG_VIRT_CPU_ACCOUNTING_GEN=y"):
                    gen = True
    nohz_full = ""
    with contextlib.suppress(OSError):
        nohz_full = Path("/sys/devices/system/cpu/nohz_full").read_text().strip()
    return hz, not (native or (gen and nohz_full not in ("", "(null)")))


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


@dataclass(frozen=True)
class Placement:
    """CPUs for the server and the load generator; ``None`` means not pinned."""

    server: frozenset[int] | None
    client: frozenset[int] | None

    def describe(self) -> str:
        if self.server is None or self.client is None:
            return "not pinned (fewer than 2 usable CPUs, or no sched_setaffinity)"
        return (
            f"server on CPU {_cpulist(self.server)}, load generator on CPU {_cpulist(self.client)}"
        )


def _cpulist(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def plan_placement(client_threads: int = 1) -> Placement:
    """Server on the first usable CPU, the client on the next ``client_threads``."""
    if not hasattr(os, "sched_getaffinity"):
        return Placement(None, None)
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Placement(None, None)
    return Placement(frozenset(cpus[:1]), frozenset(cpus[1 : 1 + max(1, client_threads)]))


@contextlib.contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block with this thread's affinity set to *cpus* (children inherit it)."""
    if cpus is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


# --------------------------------------------------------------------------
# CPU accounting


@dataclass(frozen=True)
class ProcCpu:
    """A process's accumulated CPU time in clock ticks (``/proc/PID/stat``)."""

    utime: int
    stime: int


def process_cpu(pid: int) -> ProcCpu | None:
    """utime/stime of *pid* from ``/proc/PID/stat`` (all its threads), or ``None``."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()  # the name may hold spaces
    return ProcCpu(int(fields[11]), int(fields[12]))


def cpus_busy(cpus: frozenset[int] | None) -> int | None:
    """Busy (non-idle, non-iowait) ticks summed over *cpus* from ``/proc/stat``."""
    if cpus is None:
        return None
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in rest.split()]
            # user nice system idle iowait irq softirq steal ...
            total += v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)
    return total


# --------------------------------------------------------------------------
# processes


class LineReader:
    """Lines from an unbuffered pipe, with a timeout (``select`` + ``os.read``)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.fd = stream.fileno()
        self.buf = b""

    def readline(self, timeout: float) -> str | None:
        """The next line without its newline; ``None`` at EOF; ``TimeoutError`` if none came."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk:
                if not self.buf:
                    return None
                self.buf += b"\n"
                break
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace").strip()


def stop_process(
    proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT, group: bool = False
) -> int | None:
    """Stop *proc* by PID: SIGTERM, then SIGKILL after *timeout*; reap it.

    With ``group=True`` (the process leads a session this module created), any
    of its children still alive in that process group get SIGKILL too.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return proc.returncode


def _tail(f: IO[bytes], lines: int = 1) -> str:
    f.seek(0)
    text = f.read().decode(errors="replace").strip().splitlines()
    return " / ".join(line.strip() for line in text[-lines:]) if text else ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerSkipped(Exception):
    """A server that could not be started; ``str()`` is the reason."""


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    stderr: IO[bytes]
    reader: LineReader

    @property
    def pid(self) -> int:
        return self.proc.pid

    def failure(self) -> str | None:
        """Why the server is no longer usable, or ``None`` while it runs."""
        rc = self.proc.poll()
        if rc is None:
            return None
        tail = _tail(self.stderr)
        return f"server exited with status {rc}" + (f": {tail}" if tail else "")

    def stop(self) -> None:
        stop_process(self.proc)
        self.stderr.close()


def list_servers() -> list[str]:
    """Names of the server scripts in ``servers/``, known ones first."""
    found = {p.stem for p in SERVERS_DIR.glob("*.py") if not p.stem.startswith("_")}
    known = [n for n in SERVER_ORDER if n in found]
    return known + sorted(found - set(known))


#: ``--baseline DIR``: servers named ``NAME@base`` run ``servers/NAME.py`` on DIR's src/.
BASELINE: dict[str, str] = {}


def launch_server(name: str, cpus: frozenset[int] | None, python: str = sys.executable) -> Server:
    """Start ``servers/<name>.py PORT`` pinned to *cpus*; does not wait for ``ready``.

    ``NAME@base`` runs the same script with ``METALIO_SRC`` pointing at the
    ``--baseline`` tree, so two versions of metalio are measured in one run;
    ``NAME@pure`` runs it with ``METALIO_PURE_PYTHON=1`` (no C core).
    """
    port = free_port()
    err = tempfile.TemporaryFile()  # noqa: SIM115 -- owned by the Server, closed by stop()
    script, _, variant = name.partition("@")
    env = dict(os.environ)
    if variant == "pure":
        env["METALIO_PURE_PYTHON"] = "1"
    elif variant:
        env["METALIO_SRC"] = str(Path(BASELINE["dir"]) / "src")
    with pinned(cpus):
        proc = subprocess.Popen(
            [python, str(SERVERS_DIR / f"{script}.py"), str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            bufsize=0,
            cwd=HERE,
            start_new_session=True,  # a Ctrl-C in the terminal reaches only the runner
        )
    assert proc.stdout is not None
    return Server(name, port, proc, err, LineReader(proc.stdout))


def wait_ready(server: Server, timeout: float = READY_TIMEOUT) -> None:
    """Wait for ``ready`` on the server's stdout; stop it and raise ServerSkipped if not."""
    try:
        while True:
            line = server.reader.readline(timeout)
            if line is None or line == "ready":
                break
    except TimeoutError:
        server.stop()
        raise ServerSkipped(f"no 'ready' within {timeout:.0f} s") from None
    if line is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(STOP_TIMEOUT)
        reason = server.failure() or "closed stdout before 'ready'"
        server.stop()
        raise ServerSkipped(reason)


# --------------------------------------------------------------------------
# the load generator


@dataclass(frozen=True)
class Loadgen:
    kind: str  # "c" or "python"
    argv: tuple[str, ...]
    note: str


def build_loadgen(cc: str) -> Path:
    """Compile ``loadgen.c`` with ``cc -O2`` into ``.build/`` (cached by source hash)."""
    src = LOADGEN_C.read_bytes()
    key = hashlib.sha256(src + cc.encode() + platform.machine().encode()).hexdigest()[:16]
    out = BUILD_DIR / f"loadgen-{key}"
    if out.is_file() and os.access(out, os.X_OK):
        return out
    BUILD_DIR.mkdir(exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    r = subprocess.run(
        [cc, "-O2", "-pthread", "-o", str(tmp), str(LOADGEN_C)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(r.stderr.decode(errors="replace").strip() or f"{cc} failed")
    os.replace(tmp, out)
    return out


def prepare_loadgen(which: str = "auto", python: str = sys.executable) -> Loadgen:
    """The C load generator when it can be built (Linux + ``cc``), else the Python one."""
    why = ""
    if which in ("auto", "c"):
        cc = shutil.which(os.environ.get("CC", "cc"))
        if not sys.platform.startswith("linux"):
            why = "loadgen.c needs Linux (epoll)"
        elif cc is None:
            why = "no C compiler (cc) found"
        else:
            try:
                exe = build_loadgen(cc)
                return Loadgen("c", (str(exe),), f"loadgen.c built with {cc} -O2")
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
                why = f"building loadgen.c failed: {exc}"
        if which == "c":
            raise RuntimeError(why)
    note = "loadgen.py (Python client: likely the bottleneck; read the client CPU column)"
    return Loadgen("python", (python, str(LOADGEN_PY)), note + (f"; {why}" if why else ""))


# --------------------------------------------------------------------------
# one measurement


@dataclass
class Measurement:
    server: str
    size: int
    conns: int
    rep: int
    error: str | None = None
    round_trips: int = 0
    seconds: float = 0.0
    rt_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    user_us_rt: float | None = None
    sys_us_rt: float | None = None
    user_ticks: int | None = None
    user_perf_samples: int | None = None  # perf's 50 µs samples behind user_us_rt
    server_cpu: float | None = None  # share of one CPU over the window
    client_cpu: float | None = None  # share of the client's CPUs over the window
    others_cpu: float | None = None  # share of the two benchmark CPUs used by anything else
    loadgen: dict[str, Any] = field(default_factory=dict)


def measure(
    server: Server,
    loadgen: Loadgen,
    *,
    size: int,
    conns: int,
    duration: float,
    warmup: float,
    placement: Placement,
    threads: int,
    rep: int,
    perf: bool = False,
) -> Measurement:
    """Run the load generator once against *server* and account the server's CPU.

    With *perf* (and perf available) the user time is sampled by perf every
    50 µs of CPU and the total comes from ``/proc/PID/schedstat`` (exact);
    otherwise both come from ``/proc/PID/stat``'s ticks.
    """
    m = Measurement(server.name, size, conns, rep)
    failure = server.failure()
    if failure:
        m.error = failure
        return m
    argv = [
        *loadgen.argv,
        *("-p", str(server.port), "-c", str(conns), "-s", str(size)),
        *("-d", f"{duration:g}", "-w", f"{warmup:g}", "-t", str(threads)),
        *("-T", f"{STALL_TIMEOUT:g}", "-S"),
    ]
    both = (
        placement.server | placement.client
        if placement.server is not None and placement.client is not None
        else None
    )
    with tempfile.TemporaryFile() as err:
        with pinned(placement.client):
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
                start_new_session=True,
            )
        assert proc.stdin is not None and proc.stdout is not None
        reader = LineReader(proc.stdout)
        try:
            line = reader.readline(warmup + STALL_TIMEOUT + 30)
            if line != "warm":
                m.error = _loadgen_error(line, err)
                return m
            # warm-up done and drained: the server is idle, sample it
            with usertime.sampler(server.pid, perf) as sampler:
                before = process_cpu(server.pid)
                run_before = usertime.run_ns(server.pid)
                busy_before = cpus_busy(both)
                proc.stdin.write(b"go\n")
                line = reader.readline(duration + STALL_TIMEOUT + 30)
                # window done and drained, connections still open: idle again
                after = process_cpu(server.pid)
                run_after = usertime.run_ns(server.pid)
                busy_after = cpus_busy(both)
                user_ns = None if sampler is None else sampler.stop()
            with contextlib.suppress(OSError):
                proc.stdin.write(b"quit\n")
                proc.stdin.close()
            try:
                result = json.loads(line or "")
            except ValueError:
                result = None
            if not isinstance(result, dict) or "error" in result:
                m.error = _loadgen_error(line, err)
                return m
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT)
        except TimeoutError:
            m.error = "load generator timed out"
            return m
        except OSError as exc:
            m.error = f"load generator: {exc}"
            return m
        finally:
            stop_process(proc, group=True)

    m.loadgen = result
    m.round_trips = rts = int(result["round_trips"])
    m.seconds = secs = float(result["seconds"])
    if rts <= 0 or secs <= 0:
        m.error = "no round trips completed"
        return m
    m.rt_per_s = rts / secs
    m.p50_us = float(result["p50_us"])
    m.p99_us = float(result["p99_us"])
    client_s = float(result["client_user_s"]) + float(result["client_sys_s"])
    m.client_cpu = client_s / secs / (len(placement.client) if placement.client else threads)
    if before is not None and after is not None:
        tck = _clk_tck()
        du, ds = after.utime - before.utime, after.stime - before.stime
        m.user_ticks = du
        m.user_us_rt = du / tck / rts * 1e6
        m.sys_us_rt = ds / tck / rts * 1e6
        m.server_cpu = (du + ds) / tck / secs
        if user_ns is not None and run_before is not None and run_after is not None:
            total_ns = run_after - run_before
            m.user_perf_samples = user_ns // usertime.PERIOD_NS
            m.user_us_rt = user_ns / 1e3 / rts
            m.sys_us_rt = max(0, total_ns - user_ns) / 1e3 / rts
            m.server_cpu = total_ns / 1e9 / secs
        if busy_before is not None and busy_after is not None and both:
            others = (busy_after - busy_before) / tck - (du + ds) / tck - client_s
            m.others_cpu = max(0.0, others) / secs / len(both)
    if server.failure():
        m.error = server.failure()
    return m


def _loadgen_error(line: str | None, err: IO[bytes]) -> str:
    if line:
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and "error" in obj:
                return f"load generator: {obj['error']}"
        return f"load generator said {line[:200]!r}"
    tail = _tail(err)
    return "load generator exited" + (f": {tail}" if tail else "")


# --------------------------------------------------------------------------
# the matrix


@dataclass
class RunConfig:
    servers: list[str]
    sizes: tuple[int, ...]
    conns: tuple[int, ...]
    reps: int
    duration: float
    warmup: float
    client_threads: int = 1
    python: str = sys.executable
    fresh: bool = False  # a new, unprimed server process for every measurement
    perf: bool = True  # user time sampled by perf where it may run (bench/usertime.py)


Log = Callable[[str], None]


def _stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prime(server: Server, sizes: Sequence[int], timeout: float = 5.0) -> None:
    """Bring *server* to its steady state: one connection that echoes one message
    of every size, then closes (raises ``ServerSkipped`` if that fails).

    Why: a fresh CPython process pays glibc ``mmap`` + ``mremap`` + ``munmap``
    for every large read buffer (asyncio reads 256 KiB at a time) until it
    frees such a buffer whole -- which first happens when a connection reaches
    EOF -- and then glibc raises its mmap threshold for good.  A long-running
    server is past that point; priming puts every server there the same way,
    so the first cell does not measure a start-up state the later ones do not.
    """
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for size in sizes:
                s.sendall(b"p" * size)
                got = 0
                while got < size:
                    chunk = s.recv(min(65536, size - got))
                    if not chunk:
                        raise ConnectionError("the server closed the connection")
                    got += len(chunk)
    except OSError as exc:
        raise ServerSkipped(f"priming failed: {exc}") from None


def start_servers(
    names: Sequence[str],
    config: RunConfig,
    placement: Placement,
    stack: contextlib.ExitStack,
    skipped: dict[str, str],
    log: Log,
) -> list[Server]:
    """Launch *names* in parallel, wait for each ``ready``, prime them unless ``fresh``.

    Each server's ``stop`` goes on *stack* as soon as it is launched; the ones
    that fail are stopped at once and recorded in *skipped*.
    """
    launched: list[Server] = []
    for name in names:
        server = launch_server(name, placement.server, config.python)
        stack.callback(server.stop)  # registered before anything can fail
        launched.append(server)
    running: list[Server] = []
    for server in launched:
        try:
            wait_ready(server)
            if not config.fresh:
                prime(server, config.sizes)
            running.append(server)
        except ServerSkipped as exc:
            server.stop()
            skipped[server.name] = str(exc)
            log(f"skipped {server.name}: {exc}")
    if running and not config.fresh:
        time.sleep(0.05)  # let the servers handle the priming connections' EOF
    return running


def run_matrix(
    config: RunConfig, loadgen: Loadgen, placement: Placement, log: Log = _stderr_log
) -> tuple[list[Measurement], dict[str, str]]:
    """Run the interleaved repetitions; every server started here is stopped here.

    By default every server is started (and primed) once and stays up; with
    ``config.fresh`` each measurement gets a newly started, unprimed server.
    Returns the measurements and ``{server: reason}`` for the skipped ones.
    """
    skipped: dict[str, str] = {}
    results: list[Measurement] = []
    cells = [(s, c) for s in config.sizes for c in config.conns]
    with contextlib.ExitStack() as stack:
        if config.fresh:
            names = list(config.servers)
            servers: dict[str, Server] = {}
        else:
            running = start_servers(config.servers, config, placement, stack, skipped, log)
            servers = {s.name: s for s in running}
            names = [s.name for s in running]
        if not names:
            return results, skipped
        per_run = config.warmup + config.duration + (0.5 if config.fresh else 0.15)
        total = config.reps * len(cells) * len(names)
        log(
            f"{len(names)} servers, {len(cells)} cells, {config.reps} reps: {total} runs, "
            f"~{total * per_run:.0f} s"
        )
        done = 0
        for rep in range(config.reps):
            k = rep % len(names)
            order = names[k:] + names[:k]
            for size, conns in cells:
                for name in order:
                    done += 1
                    if name in skipped:
                        continue
                    with contextlib.ExitStack() as run_stack:
                        if config.fresh:
                            started = start_servers(
                                [name], config, placement, run_stack, skipped, log
                            )
                            if not started:
                                continue
                            server = started[0]
                        else:
                            server = servers[name]
                        m = measure(
                            server,
                            loadgen,
                            size=size,
                            conns=conns,
                            duration=config.duration,
                            warmup=config.warmup,
                            placement=placement,
                            threads=min(config.client_threads, conns),
                            rep=rep,
                            perf=config.perf,
                        )
                    results.append(m)
                    log(
                        f"[{done:>3}/{total}] rep {rep + 1} {fmt_size(size)} x{conns} {name}: "
                        + _brief(m)
                    )
    return results, skipped


def _brief(m: Measurement) -> str:
    if m.error:
        return f"ERROR {m.error}"
    return (
        f"{fmt_rate(m.rt_per_s)} rt/s, user {fmt_num(m.user_us_rt)} µs/rt, "
        f"p99 {fmt_num(m.p99_us)} µs, server {fmt_pct(m.server_cpu)}, client {fmt_pct(m.client_cpu)}"
    )


# --------------------------------------------------------------------------
# summary


@dataclass
class CellSummary:
    server: str
    size: int
    conns: int
    ok: int
    runs: int
    rt_per_s: float | None = None
    p50_us: float | None = None
    p99_us: float | None = None
    user_us_rt: float | None = None
    sys_us_rt: float | None = None
    user_vs_uvloop: float | None = None
    user_vs_floor: float | None = None
    rt_vs_uvloop: float | None = None
    rt_vs_floor: float | None = None
    server_cpu: float | None = None
    client_cpu: float | None = None
    others_cpu: float | None = None
    user_samples: float | None = None  # kernel ticks behind the user figures, all reps
    errors: list[str] = field(default_factory=list)

    @property
    def user_error(self) -> float | None:
        """Relative statistical error of the user figure (about ``1/sqrt(samples)``)."""
        if not self.user_samples:
            return None
        return 1.0 / math.sqrt(self.user_samples)

    @property
    def client_bound(self) -> bool:
        return (
            self.client_cpu is not None
            and self.client_cpu >= CLIENT_BOUND
            and (self.server_cpu is None or self.server_cpu < SERVER_NOT_BOUND)
        )


def median(values: Sequence[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return float(statistics.median(vs)) if vs else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _paired(
    good: Sequence[Measurement],
    ref: dict[tuple[str, int, int, int], Measurement],
    refname: str,
    attr: str,
) -> float | None:
    """Median over reps of ``m.attr / r.attr``, r the reference run of the same rep and cell."""
    ratios = []
    for m in good:
        r = ref.get((refname, m.size, m.conns, m.rep))
        if r is not None:
            ratios.append(_ratio(getattr(m, attr), getattr(r, attr)))
    return median(ratios)


def summarize(results: Sequence[Measurement], servers: Sequence[str]) -> list[CellSummary]:
    """Medians per (server, size, conns), and paired ratios to the reference servers."""
    hz, sampled = tick_accounting()
    samples_per_tick = (hz or _clk_tck()) / _clk_tck() if sampled else 1.0
    ok = [m for m in results if m.error is None]
    ref: dict[tuple[str, int, int, int], Measurement] = {
        (m.server, m.size, m.conns, m.rep): m for m in ok if m.server in (REF_UVLOOP, REF_FLOOR)
    }
    cells = sorted({(m.size, m.conns) for m in results})
    order = {name: i for i, name in enumerate(servers)}
    out: list[CellSummary] = []
    for size, conns in cells:
        names = sorted(
            {m.server for m in results if (m.size, m.conns) == (size, conns)},
            key=lambda n: order.get(n, len(order)),
        )
        for name in names:
            runs = [m for m in results if (m.server, m.size, m.conns) == (name, size, conns)]
            good = [m for m in runs if m.error is None]
            s = CellSummary(name, size, conns, len(good), len(runs))
            s.errors = sorted({m.error for m in runs if m.error})
            if good:
                s.rt_per_s = median([m.rt_per_s for m in good])
                s.p50_us = median([m.p50_us for m in good])
                s.p99_us = median([m.p99_us for m in good])
                s.user_us_rt = median([m.user_us_rt for m in good])
                s.sys_us_rt = median([m.sys_us_rt for m in good])
                s.server_cpu = median([m.server_cpu for m in good])
                s.client_cpu = median([m.client_cpu for m in good])
                s.others_cpu = median([m.others_cpu for m in good])
                perf = [m.user_perf_samples for m in good]
                ticks = [m.user_ticks for m in good if m.user_ticks is not None]
                if all(n is not None for n in perf):
                    s.user_samples = float(sum(n for n in perf if n is not None))
                elif ticks:
                    s.user_samples = sum(ticks) * samples_per_tick

                s.user_vs_uvloop = _paired(good, ref, REF_UVLOOP, "user_us_rt")
                s.user_vs_floor = _paired(good, ref, REF_FLOOR, "user_us_rt")
                s.rt_vs_uvloop = _paired(good, ref, REF_UVLOOP, "rt_per_s")
                s.rt_vs_floor = _paired(good, ref, REF_FLOOR, "rt_per_s")
            out.append(s)
    return out


# --------------------------------------------------------------------------
# formatting


def fmt_size(n: int) -> str:
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def fmt_rate(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def fmt_num(v: float | None) -> str:
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def fmt_pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f}%"


def _fmt_user(s: CellSummary) -> str:
    if s.user_us_rt is None:
        return "—"
    if s.user_samples == 0:
        return "0 ticks"  # window too short for the kernel's tick sampling
    err = s.user_error
    return fmt_num(s.user_us_rt) + (f" ±{100 * err:.0f}%" if err is not None else "")


TABLE_HEADER = (
    "| server | rt/s | p50 µs | p99 µs | user µs/rt | sys µs/rt "
    "| user ÷ uvloop | user ÷ floor | rt/s ÷ uvloop | server CPU | client CPU | others |"
)


def format_table(summaries: Sequence[CellSummary]) -> str:
    """Markdown: one table per (size, connections) cell, one row per server."""
    out: list[str] = []
    cells = sorted({(s.size, s.conns) for s in summaries})
    for size, conns in cells:
        out.append(f"#### {fmt_size(size)} × {conns} connection{'s' if conns != 1 else ''}")
        out.append("")
        out.append(TABLE_HEADER)
        out.append("|---" + "|---:" * 11 + "|")
        for s in summaries:
            if (s.size, s.conns) != (size, conns):
                continue
            name = s.server if s.ok == s.runs else f"{s.server} ({s.ok}/{s.runs} ok)"
            client = fmt_pct(s.client_cpu) + (" ‡" if s.client_bound else "")
            row = [
                name,
                fmt_rate(s.rt_per_s),
                fmt_num(s.p50_us),
                fmt_num(s.p99_us),
                _fmt_user(s),
                fmt_num(s.sys_us_rt),
                fmt_ratio(s.user_vs_uvloop),
                fmt_ratio(s.user_vs_floor),
                fmt_ratio(s.rt_vs_uvloop),
                fmt_pct(s.server_cpu),
                client,
                fmt_pct(s.others_cpu),
            ]
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def format_report(
    summaries: Sequence[CellSummary],
    skipped: dict[str, str],
    facts: dict[str, Any],
    config: RunConfig,
    loadgen: Loadgen,
    placement: Placement,
) -> str:
    """The whole markdown report: header, tables, skipped servers, notes."""
    lines = [
        "### Echo benchmark",
        "",
        f"- machine: {facts['nproc']} CPUs ({facts['usable_cpus']} usable), {facts['cpu_model']}, "
        f"{facts['kernel']}, {facts['python']}, uvloop {facts['uvloop'] or 'not installed'}",
        f"- placement: {placement.describe()}; load generator: {loadgen.note}",
        f"- {config.reps} interleaved reps × {config.duration:g} s (after {config.warmup:g} s warm-up); "
        + ("a fresh server process per run; " if config.fresh else "long-running primed servers; ")
        + "medians; ratios are medians of per-rep ratios against the same rep and cell "
        "(user: lower is better, rt/s: higher)",
        "",
        format_table(summaries),
    ]
    if skipped:
        lines.append("Skipped:")
        lines.extend(f"- `{name}`: {reason}" for name, reason in skipped.items())
        lines.append("")
    errors = [(s, e) for s in summaries for e in s.errors]
    if errors:
        lines.append("Errors:")
        lines.extend(f"- `{s.server}` {fmt_size(s.size)} × {s.conns}: {e}" for s, e in errors)
        lines.append("")
    notes = []
    if any(s.client_bound for s in summaries):
        notes.append(
            "‡ client-bound: the load generator used ≥ 95% of its CPU while the server had "
            "spare time; that cell's rt/s understates the server"
        )
    if config.perf:
        notes.append(
            "user CPU is sampled by perf every 50 µs of the server's CPU (bench/usertime.py), "
            "system CPU is the exact total (/proc/PID/schedstat) minus it: ± is the "
            "statistical error of user µs/rt (1/√samples over all reps)"
        )
    elif facts.get("tick_sampled_cpu_accounting"):
        notes.append(
            "the kernel splits CPU time into user and system by sampling at each tick "
            f"(HZ={facts.get('config_hz') or '?'}): ± is the statistical error of user µs/rt "
            "(1/√ticks over all reps); more --reps or a longer --duration narrows it"
        )
    noisy = [s for s in summaries if s.others_cpu is not None and s.others_cpu > 0.05]
    if noisy:
        worst = max(s.others_cpu or 0.0 for s in noisy)
        notes.append(
            f"other processes used up to {fmt_pct(worst)} of the benchmark CPUs during some "
            "windows (column 'others'): throughput and latency are disturbed; user µs/rt less so"
        )
    if notes:
        lines.append("Notes:")
        lines.extend(f"- {n}" for n in notes)
        lines.append("")
    return "\n".join(lines)


def write_plot(summaries: Sequence[CellSummary], path: str) -> str | None:
    """Bar charts of user µs/rt per cell; returns an error message or ``None``."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return "matplotlib is not importable: no plot written"
    cells = sorted({(s.size, s.conns) for s in summaries})
    fig, axes = plt.subplots(
        len(cells), 1, figsize=(9, 2.6 * len(cells)), squeeze=False, constrained_layout=True
    )
    for ax, (size, conns) in zip(axes[:, 0], cells, strict=True):
        rows = [s for s in summaries if (s.size, s.conns) == (size, conns) and s.user_us_rt]
        ax.barh([s.server for s in rows], [s.user_us_rt or 0.0 for s in rows])
        ax.invert_yaxis()
        ax.set_title(f"{fmt_size(size)} × {conns} conns: server user CPU per round trip")
        ax.set_xlabel("µs (lower is better)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# --------------------------------------------------------------------------
# command line


def parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1024
    elif t.endswith("m"):
        t, mult = t[:-1], 1024 * 1024
    n = int(float(t) * mult)
    if n < 1:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return n


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _size_list(text: str) -> tuple[int, ...]:
    return tuple(parse_size(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bench/echo/run.py",
        description="Echo benchmark: servers x sizes x connections, server user CPU per round trip.",
    )
    preset = ap.add_mutually_exclusive_group()
    preset.add_argument(
        "--quick", action="store_true", help="about a minute: 1 KiB x {10,100} conns, 3 short reps"
    )
    preset.add_argument(
        "--full", action="store_true", help="the whole matrix: 64 B..100 KiB x {1,10,100} conns"
    )
    ap.add_argument("--servers", help="comma-separated server names (default: all in servers/)")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="another metalio tree (e.g. a git worktree of an older commit): servers named "
        "NAME@base run servers/NAME.py on DIR/src, in the same run",
    )
    ap.add_argument("--sizes", type=_size_list, help="message sizes, e.g. 64,1K,16K,100K")
    ap.add_argument("--conns", type=_int_list, help="connection counts, e.g. 1,10,100")
    ap.add_argument("--reps", type=int, help="interleaved repetitions (medians are taken)")
    ap.add_argument("--duration", type=float, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run")
    ap.add_argument(
        "--loadgen", choices=("auto", "c", "python"), default="auto", help="load generator"
    )
    ap.add_argument(
        "--client-threads", type=int, default=1, help="load generator threads/CPUs (default 1)"
    )
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="start a new server for every measurement, unprimed (default: one primed "
        "long-running server each)",
    )
    ap.add_argument("--python", default=sys.executable, help="interpreter for the servers")
    ap.add_argument(
        "--no-perf",
        action="store_true",
        help="user CPU from /proc ticks even where perf could sample it (bench/usertime.py)",
    )
    ap.add_argument("--json", metavar="FILE", help="write every measurement and the summary")
    ap.add_argument("--plot", metavar="FILE.png", help="bar charts (needs matplotlib)")
    ap.add_argument("--list", action="store_true", help="list the servers and exit")
    return ap


def make_config(args: argparse.Namespace) -> RunConfig:
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    if args.baseline:
        BASELINE["dir"] = args.baseline
    available = list_servers()
    if args.servers and args.servers != "all":
        servers = [s.strip() for s in args.servers.split(",") if s.strip()]
        unknown = [s for s in servers if s.partition("@")[0] not in available]
        if any(s.endswith("@base") for s in servers) and not args.baseline:
            raise SystemExit("NAME@base servers need --baseline DIR (another metalio tree)")
        if unknown:
            raise SystemExit(
                f"unknown server(s): {', '.join(unknown)}; have {', '.join(available)}"
            )
    else:
        servers = available
    cfg = RunConfig(
        servers=servers,
        sizes=args.sizes or preset.sizes,
        conns=args.conns or preset.conns,
        reps=args.reps or preset.reps,
        duration=args.duration or preset.duration,
        warmup=preset.warmup if args.warmup is None else args.warmup,
        client_threads=max(1, args.client_threads),
        python=args.python,
        fresh=args.fresh,
        perf=not args.no_perf and usertime.available(),
    )
    if cfg.reps < 1 or cfg.duration <= 0 or cfg.warmup < 0 or min(cfg.conns) < 1:
        raise SystemExit("--reps, --duration and --conns must be positive, --warmup >= 0")
    return cfg


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the markdown report on stdout. Returns an exit status."""
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(list_servers()))
        return 0
    try:
        config = make_config(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    facts = machine_facts()
    placement = plan_placement(config.client_threads)
    try:
        loadgen = prepare_loadgen(args.loadgen, config.python)
    except RuntimeError as exc:
        print(f"cannot use the C load generator: {exc}", file=sys.stderr)
        return 2
    _stderr_log(f"load generator: {loadgen.note}; {placement.describe()}")

    old_handler = None
    with contextlib.suppress(ValueError):  # not in the main thread: keep the default
        old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with pinned(placement.client):  # keep the runner off the server's CPU
            results, skipped = run_matrix(config, loadgen, placement)
    except (KeyboardInterrupt, _Terminated):
        print("interrupted: every server and load generator was stopped", file=sys.stderr)
        return 130
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)

    summaries = summarize(results, config.servers)
    print(format_report(summaries, skipped, facts, config, loadgen, placement))
    if args.json:
        doc = {
            "machine": facts,
            "config": dataclasses.asdict(config),
            "loadgen": dataclasses.asdict(loadgen),
            "placement": placement.describe(),
            "skipped": skipped,
            "measurements": [dataclasses.asdict(m) for m in results],
            "summary": [
                {**dataclasses.asdict(s), "client_bound": s.client_bound} for s in summaries
            ],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
        _stderr_log(f"wrote {args.json}")
    if args.plot:
        problem = write_plot(summaries, args.plot)
        _stderr_log(problem or f"wrote {args.plot}")
    return 0 if any(m.error is None for m in results) else 1


if __name__ == "__main__":
    sys.exit(main())
