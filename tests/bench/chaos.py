"""Chaos benchmark: failover, nginx and HAProxy in front of a faulting primary, side by side.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/chaos.py                  # 4 s warm-up, 6 s fault, <= 16 s recovery
    python tests/bench/chaos.py --quick          # 2 s warm-up, 3 s fault, <= 10 s recovery
    python tests/bench/chaos.py --scenario flap --proxy failover nginx   # a subset

The full run takes about 8 minutes, --quick about 4. Needs /usr/sbin/nginx and
/usr/sbin/haproxy. It is never run by CI, and pytest does not collect it (its name does not
start with `test_`).

For every proxy and scenario it starts, on free ports on 127.0.0.1:

  origins    a child process (this script with --serve-origins) running two FaultyOrigin
             servers, primary and secondary; the parent switches the primary's mode over the
             child's stdin, so that the switch also works while the primary refuses
             connections
  the proxy  failover (`python -m failover run` with a generated YAML config), nginx 1.22
             (`backup` server, `max_fails=1 fail_timeout=5s`, `proxy_next_upstream`) or
             HAProxy 2.6 (`backup` server, `check inter 1s fall 2 rise 2`, `observe layer7`,
             `retry-on all-retryable-errors`, `option redispatch 1`), configs generated in a
             temporary directory; all three wait at most 1 s to connect and 2 s for an answer

then runs a closed-loop load of CONCURRENCY aiohttp clients (GET, keep-alive) through the proxy:
a warm-up on the healthy primary, the fault (the primary switched to the scenario's mode), and
the recovery (back to `ok`) until traffic has been back on the primary for a moment, or the
recovery limit. The origin that served a response is read from the origins' own `X-Origin`
header, which every proxy passes through. Every process is stopped at the end of its run, also
on Ctrl-C or an error.

Scenarios (FaultyOrigin modes): refuse (port closed), reset (TCP RST on every request),
blackhole (accepts, never answers), http5xx (503 to everything, health checks included),
partial (30% of requests answer 500, health checks pass), flap (200 and 503 alternating every
1.5 s), slow (every answer 0.5 s late, health checks fast).

Columns of the table printed per proxy:

  requests     requests completed over the whole run
  failures     client-visible failures (status other than 200, connection error, truncated
               body) over the whole run, and "fault": of requests that overlapped the fault
  failover     time from the fault's start to the first 500 ms window (starting at a response,
               by completion time, at least 5 responses) in which >= 99% of the responses
               came from the secondary; "-" if traffic never moved
  failback     time from the recovery to the first such window served >= 99% by the primary;
               "-" if traffic never moved, "> N s" if it had not come back by the limit
  switches     how many times the origin serving the majority of 100 ms buckets changed over
               the run (2 is one failover and one failback)
  p99 fault    99th percentile latency of the requests that overlapped the fault, and "max"
               the longest of them

Targets (for failover; printed with met/MISSED at the end): zero client-visible failures in
every scenario; failover within 1 s for refuse, reset and http5xx, and within the first-byte
timeout plus 1 s for blackhole; during flap no switch beyond the first failover and the final
failback (at most 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[2]
NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"

SCENARIOS = ("refuse", "reset", "blackhole", "http5xx", "partial", "flap", "slow")
PROXIES = ("failover", "nginx", "haproxy")

CONCURRENCY = 16
CONNECT_TIMEOUT = 1.0
FIRST_BYTE_TIMEOUT = 2.0
HOLD_DOWN = 5.0
SLOW_DELAY = 0.5
LATENCY_THRESHOLD = 0.25
FLAP_PERIOD = 1.5

WINDOW = 0.5  # seconds, for failover and failback
SHARE = 0.99  # of a window's responses from the origin traffic moved to
MIN_IN_WINDOW = 5
BUCKET = 0.1  # seconds, for counting switches
PATH = "/chaos"

# The targets this benchmark reports on.
MAX_FAILOVER = 1.0  # refuse, reset, http5xx
MAX_BLACKHOLE_FAILOVER = FIRST_BYTE_TIMEOUT + 1.0
MAX_FLAP_SWITCHES = 2


@dataclass(frozen=True)
class Phases:
    warm_up: float
    fault: float
    recovery: float  # at most
    settle: float  # traffic back on the primary for this long ends the recovery early


FULL = Phases(warm_up=4.0, fault=6.0, recovery=16.0, settle=2.0)
QUICK = Phases(warm_up=2.0, fault=3.0, recovery=10.0, settle=1.0)


# -- the origins' child process -------------------------------------------------------------


async def serve_origins() -> None:
    """Run primary and secondary; print their ports; apply `<mode>` lines read from stdin to
    the primary, answering `ok <mode>` for each; stop at end of input."""
    sys.path.insert(0, str(REPO))
    from failover.faulty import FaultyOrigin

    primary = FaultyOrigin("primary", flap_period=FLAP_PERIOD, slow_delay=SLOW_DELAY)
    secondary = FaultyOrigin("secondary")
    await primary.start()
    await secondary.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(f"ready {primary.port} {secondary.port}", flush=True)
    try:
        while line := (await reader.readline()).decode().strip():
            await primary.set_mode(line)  # type: ignore[arg-type]
            print(f"ok {line}", flush=True)
    finally:
        await primary.stop()
        await secondary.stop()


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Child:
    """A process of ours: started in a session of its own, always stopped and waited for."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @classmethod
    async def start(
        cls, name: str, argv: Sequence[str], log: Path, piped: bool = False, **kwargs: Any
    ) -> Child:
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if piped else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if piped else out,
                stderr=out,
                start_new_session=True,
                **kwargs,
            )
        return cls(name, process, log)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    async def stop(self) -> None:
        process = self.process
        if process.returncode is None:
            if process.stdin is not None:
                process.stdin.close()
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()


class Origins:
    """The origins' child process and its control channel."""

    def __init__(self, child: Child, primary_port: int, secondary_port: int) -> None:
        self.child = child
        self.primary_port = primary_port
        self.secondary_port = secondary_port

    @classmethod
    async def start(cls, workdir: Path) -> Origins:
        argv = [sys.executable, str(SCRIPT), "--serve-origins"]
        child = await Child.start("origins", argv, workdir / "origins.log", piped=True)
        assert child.process.stdout is not None
        try:
            line = await asyncio.wait_for(child.process.stdout.readline(), 20)
        except TimeoutError:
            line = b""
        words = line.decode().split()
        if len(words) != 3 or words[0] != "ready":
            await child.stop()
            raise RuntimeError(f"the origins did not start; their log:\n{child.tail()}")
        return cls(child, int(words[1]), int(words[2]))

    async def set_mode(self, mode: str) -> None:
        process = self.child.process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{mode}\n".encode())
        await process.stdin.drain()
        answer = await asyncio.wait_for(process.stdout.readline(), 10)
        if answer.decode().strip() != f"ok {mode}":
            raise RuntimeError(f"the origins did not switch to {mode}: {answer!r}")


# -- proxy configs --------------------------------------------------------------------------


def failover_config(port: int, primary: int, secondary: int) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
origins:
  - {{name: primary, url: "http://127.0.0.1:{primary}", priority: 0}}
  - {{name: secondary, url: "http://127.0.0.1:{secondary}", priority: 1}}
health: {{path: /health, interval: 1s, timeout: 1s}}
passive:
  enabled: true
  latency_threshold: {LATENCY_THRESHOLD}
  window: 2s
  ejection_time: 2s
failback: {{hold_down: {HOLD_DOWN}s}}
retry:
  on: [connect-failure, reset, timeout, 500, 502, 503, 504]
  # nginx and HAProxy have no retry budget. The default (20% of requests in flight) would,
  # by design, leave some 500s of a partially failing primary unretried.
  budget: 1.0
timeouts: {{connect: {CONNECT_TIMEOUT}s, first_byte: {FIRST_BYTE_TIMEOUT}s}}
shutdown_timeout: 2
"""


def nginx_config(prefix: Path, port: int, primary: int, secondary: int) -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    keepalive_requests 1000000;
    upstream origins {{
        server 127.0.0.1:{primary} max_fails=1 fail_timeout=5s;
        server 127.0.0.1:{secondary} backup;
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origins;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout http_500 http_502 http_503 http_504;
            proxy_connect_timeout {CONNECT_TIMEOUT:g}s;
            proxy_read_timeout {FIRST_BYTE_TIMEOUT:g}s;
            proxy_send_timeout {FIRST_BYTE_TIMEOUT:g}s;
        }}
    }}
}}
"""


def haproxy_config(port: int, primary: int, secondary: int) -> str:
    checks = "check inter 1s fall 2 rise 2"
    observe = "observe layer7 error-limit 3 on-error mark-down"
    return f"""
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect {CONNECT_TIMEOUT:g}s
    timeout client 30s
    timeout server {FIRST_BYTE_TIMEOUT:g}s
    timeout check 1s
    retries 2
    option redispatch 1
    retry-on all-retryable-errors

frontend chaos
    bind 127.0.0.1:{port}
    default_backend origins

backend origins
    option httpchk GET /health
    server primary 127.0.0.1:{primary} {checks} {observe}
    server secondary 127.0.0.1:{secondary} backup {checks}
"""


def proxy_command(
    name: str, workdir: Path, port: int, primary: int, secondary: int
) -> tuple[list[str], dict[str, Any]]:
    """Write the proxy's config into `workdir`; return its command line and Popen options."""
    if name == "failover":
        config = workdir / "failover.yaml"
        config.write_text(failover_config(port, primary, secondary))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FAILOVER_")}
        env["PYTHONPATH"] = str(REPO)
        argv = [sys.executable, "-m", "failover", "run", "--config", str(config)]
        return [*argv, "--log-level", "warning"], {"cwd": REPO, "env": env}
    if name == "nginx":
        prefix = workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        (prefix / "nginx.conf").write_text(nginx_config(prefix, port, primary, secondary))
        return [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], {}
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(port, primary, secondary))
    return [HAPROXY, "-db", "-f", str(config)], {}


async def start_proxy(name: str, workdir: Path, origins: Origins) -> tuple[Child, str]:
    port = free_port()
    argv, options = proxy_command(name, workdir, port, origins.primary_port, origins.secondary_port)
    child = await Child.start(name, argv, workdir / f"{name}.log", **options)
    url = f"http://127.0.0.1:{port}"
    await wait_served_by_primary(child, url)
    return child, url


async def wait_served_by_primary(child: Child, url: str, timeout: float = 30.0) -> None:
    """Wait until the proxy answers 200 from the primary a few times in a row."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    in_a_row = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline and child.process.returncode is None:
            try:
                async with session.get(url + PATH) as response:
                    await response.read()
                    origin = response.headers.get("X-Origin")
                    last = f"status {response.status} from {origin}"
                    good = response.status == 200 and origin == "primary"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last, good = repr(exc), False
            in_a_row = in_a_row + 1 if good else 0
            if in_a_row >= 5:
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{child.name} did not become ready ({last}); its log:\n{child.tail()}")


# -- load -----------------------------------------------------------------------------------


Sample = tuple[float, float, str, bool]  # started, ended, origin ("" if failed), ok


class LoadGenerator:
    """CONCURRENCY clients sending GET back to back until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url + PATH
        self.samples: list[Sample] = []
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        )
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(CONCURRENCY)]

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _worker(self) -> None:
        session = self.session
        assert session is not None
        clock = time.monotonic
        samples = self.samples
        while not self.stopping:
            started = clock()
            try:
                async with session.get(self.url) as response:
                    await response.read()
                    ok = response.status == 200
                    origin = response.headers.get("X-Origin", "") if ok else ""
            except (aiohttp.ClientError, TimeoutError):
                ok, origin = False, ""
            samples.append((started, clock(), origin, ok))


# -- measures -------------------------------------------------------------------------------


@dataclass
class Result:
    proxy: str
    scenario: str
    requests: int
    failures: int
    fault_failures: int
    failover: float | None
    failback: float | None
    recovery_limit: float
    switches: int
    p99_fault: float
    max_fault: float


def first_window(by_end: list[Sample], since: float, until: float, origin: str) -> float | None:
    """Seconds from `since` to the first WINDOW (starting at a response completed in
    [since, until), by completion time) in which >= SHARE of the responses came from
    `origin`; None if there is none."""
    ends = [sample[1] for sample in by_end]
    served = [0]
    for sample in by_end:
        served.append(served[-1] + (sample[2] == origin))
    first = bisect_left(ends, since)
    for i in range(first, len(by_end)):
        start = ends[i]
        if start >= until:
            break
        j = bisect_left(ends, start + WINDOW, lo=i)
        count = j - i
        if count >= MIN_IN_WINDOW and served[j] - served[i] >= SHARE * count:
            return start - since
    return None


def count_switches(by_end: list[Sample]) -> int:
    """Changes of the origin serving the majority of BUCKET-long spans."""
    if not by_end:
        return 0
    origin0 = by_end[0][1]
    counts: dict[int, list[int]] = {}
    for _, ended, origin, _ in by_end:
        tally = counts.setdefault(int((ended - origin0) / BUCKET), [0, 0])
        if origin == "primary":
            tally[0] += 1
        elif origin == "secondary":
            tally[1] += 1
    switches = 0
    label = ""
    for index in sorted(counts):
        primary, secondary = counts[index]
        if primary == secondary:
            continue
        now = "primary" if primary > secondary else "secondary"
        if label and now != label:
            switches += 1
        label = now
    return switches


def p99(values: list[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def measure(
    proxy: str,
    scenario: str,
    samples: list[Sample],
    fault_at: float,
    recovered_at: float,
    recovery_limit: float,
) -> Result:
    by_end = sorted(samples, key=lambda sample: sample[1])
    failover = first_window(by_end, fault_at, recovered_at, "secondary")
    failback = None
    if failover is not None:
        failback = first_window(by_end, recovered_at, math.inf, "primary")
    overlapping = [s for s in samples if s[1] >= fault_at and s[0] < recovered_at]
    return Result(
        proxy=proxy,
        scenario=scenario,
        requests=len(samples),
        failures=sum(not s[3] for s in samples),
        fault_failures=sum(not s[3] for s in overlapping),
        failover=failover,
        failback=failback,
        recovery_limit=recovery_limit,
        switches=count_switches(by_end),
        p99_fault=p99([s[1] - s[0] for s in overlapping]),
        max_fault=max((s[1] - s[0] for s in overlapping), default=math.nan),
    )


# -- one run --------------------------------------------------------------------------------


def make_dir(path: Path) -> Path:
    """Create `path` (if need be) readable by all: nginx workers run unprivileged under root."""
    path.mkdir(exist_ok=True)
    path.chmod(0o755)
    return path


async def run_one(proxy: str, scenario: str, phases: Phases, workdir: Path) -> Result:
    """One proxy, one scenario: fresh origins, a fresh proxy, warm-up, fault, recovery."""
    rundir = make_dir(workdir / f"{proxy}-{scenario}")
    origins = await Origins.start(rundir)
    child: Child | None = None
    load: LoadGenerator | None = None
    try:
        child, url = await start_proxy(proxy, rundir, origins)
        load = LoadGenerator(url)
        await load.start()
        await asyncio.sleep(phases.warm_up)
        fault_at = time.monotonic()
        await origins.set_mode(scenario)
        await asyncio.sleep(phases.fault)
        recovered_at = time.monotonic()
        await origins.set_mode("ok")
        limit = recovered_at + phases.recovery
        while time.monotonic() < limit:
            await asyncio.sleep(0.5)
            # Traffic back on the primary for `settle` seconds ends the recovery early.
            recent = [s for s in load.samples if s[1] >= recovered_at]
            recent.sort(key=lambda sample: sample[1])
            back = first_window(recent, recovered_at, math.inf, "primary")
            if back is not None and time.monotonic() >= recovered_at + back + phases.settle:
                break
        await load.stop()
        samples = load.samples
        load = None
        if child.process.returncode is not None:
            raise RuntimeError(f"{proxy} exited during the run; its log:\n{child.tail()}")
        return measure(proxy, scenario, samples, fault_at, recovered_at, phases.recovery)
    finally:
        if load is not None:
            await load.stop()
        if child is not None:
            await child.stop()
        await origins.child.stop()


# -- report ---------------------------------------------------------------------------------


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def print_table(proxy: str, results: list[Result]) -> None:
    header = (
        f"{'scenario':<10} {'requests':>9} {'failures':>9} {'fault':>7} {'failover':>9} "
        f"{'failback':>9} {'switches':>9} {'p99 fault':>10} {'max':>8}"
    )
    print(f"\n{proxy}")
    print(header)
    print("-" * len(header))
    for r in results:
        failback = seconds(r.failback)
        if r.failover is not None and r.failback is None:
            failback = f"> {r.recovery_limit:g} s"
        print(
            f"{r.scenario:<10} {r.requests:>9,} {r.failures:>9,} {r.fault_failures:>7,} "
            f"{seconds(r.failover):>9} {failback:>9} {r.switches:>9} "
            f"{r.p99_fault * 1000:>7.0f} ms {r.max_fault * 1000:>5.0f} ms"
        )


def print_targets(results: list[Result]) -> None:
    ours = [r for r in results if r.proxy == "failover"]
    if not ours:
        return
    print("\ntargets (failover):")
    for r in ours:
        checks = [(f"{r.scenario}: zero client-visible failures", f"{r.failures}", r.failures == 0)]
        if r.scenario in ("refuse", "reset", "http5xx"):
            checks.append(
                (
                    f"{r.scenario}: failover <= {MAX_FAILOVER:g} s",
                    seconds(r.failover),
                    r.failover is not None and r.failover <= MAX_FAILOVER,
                )
            )
        if r.scenario == "blackhole":
            checks.append(
                (
                    f"blackhole: failover <= first byte {FIRST_BYTE_TIMEOUT:g} s + 1 s",
                    seconds(r.failover),
                    r.failover is not None and r.failover <= MAX_BLACKHOLE_FAILOVER,
                )
            )
        if r.scenario == "flap":
            checks.append(
                (
                    f"flap: at most {MAX_FLAP_SWITCHES} switches",
                    str(r.switches),
                    r.switches <= MAX_FLAP_SWITCHES,
                )
            )
        for name, value, ok in checks:
            print(f"  {'met' if ok else 'MISSED':<7} {name}: {value}")


async def benchmark(args: argparse.Namespace) -> None:
    phases = QUICK if args.quick else FULL
    proxies: list[str] = args.proxy or list(PROXIES)
    scenarios: list[str] = args.scenario or list(SCENARIOS)
    for proxy, tool in (("nginx", NGINX), ("haproxy", HAPROXY)):
        if proxy in proxies and not os.access(tool, os.X_OK):
            raise RuntimeError(f"{tool} is missing; run with --proxy to leave {proxy} out")
    print(
        f"failover chaos: {', '.join(proxies)} x {', '.join(scenarios)}; {CONCURRENCY} clients; "
        f"warm-up {phases.warm_up:g} s, fault {phases.fault:g} s, recovery <= "
        f"{phases.recovery:g} s; {os.cpu_count()} cores; load average "
        f"{os.getloadavg()[0]:.2f} at the start",
        flush=True,
    )
    workdir = make_dir(Path(tempfile.mkdtemp(prefix="failover-chaos-")))
    results: list[Result] = []
    try:
        for proxy in proxies:
            for scenario in scenarios:
                result = await run_one(proxy, scenario, phases, workdir)
                results.append(result)
                print(
                    f"  {proxy:<9} {scenario:<10} {result.requests:>7,} requests, "
                    f"{result.failures} failures, failover {seconds(result.failover)}, "
                    f"{result.switches} switches",
                    flush=True,
                )
        for proxy in proxies:
            print_table(proxy, [r for r in results if r.proxy == proxy])
        print_targets(results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="failover, nginx and HAProxy under origin faults (see the docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="shorter phases (about 4 minutes)")
    parser.add_argument("--proxy", nargs="+", choices=PROXIES, help="only these proxies")
    parser.add_argument("--scenario", nargs="+", choices=SCENARIOS, help="only these scenarios")
    parser.add_argument("--serve-origins", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_origins:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_origins())
        return 0

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        asyncio.run(benchmark(args))
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
