"""Slow and hostile clients against the proxy, while a normal client keeps asking.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/slow_clients.py                 # every scenario at full scale (~1.5 min)
    python tests/bench/slow_clients.py --quick         # a tenth of the clients, 5 s each
    python tests/bench/slow_clients.py --only huge-header --duration 5

Never run by CI; pytest does not collect it (its name does not start with `test_`).

It starts, on free loopback ports: an origin (failover.faulty.FaultyOrigin, in a process of
its own) and `python -m failover run --config <tmp yaml>` in front of it, default limits.
Then, one scenario after another, each for --duration seconds (the trickle one for longer than
limits.header_timeout, so that its heads are cut):

  baseline        nobody else
  idle            300 connections that send nothing
  trickle         200 request heads sent 1 byte a second (cut by header_timeout, reopened)
  stalled-upload  1,000 POSTs with Content-Length 1000 that send one body byte, then nothing
  huge-header     requests with a 32 MiB header, 4 senders, back to back

During each, a normal client sends GET / every 20 ms (a new connection every 10 requests)
and counts a failure for anything but a 200 within timeouts.first_byte. It prints, per
scenario: the normal client's p50/p99/max latency and failures, whether the origin was ejected
(GET /_failover/status, polled every second), the proxy's VmRSS before and at its peak (the
peak from VmHWM, reset through /proc/PID/clear_refs; from samples where that is refused), what
the attackers saw, and the proxy's "Closed N client connections" log lines summed by reason.
Every process started here is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench.throughput import (  # a sibling script
    Processes,
    RssSampler,
    Service,
    free_port,
    rss_kib,
    start_failover,
    wait_ready,
)

FIRST_BYTE = 5.0  # timeouts.first_byte of the proxy, and the normal client's deadline
HEADER_TIMEOUT = 10.0  # the default limits.header_timeout
MIB = 1024 * 1024


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


# -- the origin, in a process of its own --------------------------------------------------


def serve_origin(port: int) -> None:
    from failover.faulty import FaultyOrigin

    async def serve() -> None:
        origin = FaultyOrigin("origin", port=port, health_path="/health")
        await origin.start()
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def start_origin(procs: Processes) -> tuple[Service, int]:
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-origin", str(port)]
    return procs.start("origin", f"http://127.0.0.1:{port}", argv), port


def proxy_config(port: int, origin_port: int) -> str:
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
origins:
  - {{name: origin, url: "http://127.0.0.1:{origin_port}"}}
health: {{path: /health, interval: 1s}}
timeouts: {{first_byte: {FIRST_BYTE:g}s}}
shutdown_timeout: 5
"""


# -- the normal client ----------------------------------------------------------------------


@dataclass
class NormalClient:
    port: int
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), FIRST_BYTE
                )
            except (OSError, TimeoutError) as exc:
                self.failures[f"connect: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.02)
                continue
            try:
                for _ in range(10):
                    if stop.is_set() or not await self._one(reader, writer):
                        break
                    await asyncio.sleep(0.02)
            finally:
                writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        started = time.monotonic()
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            async with asyncio.timeout(FIRST_BYTE):
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            self.failures[type(exc).__name__] += 1
            return False
        self.latencies.append(time.monotonic() - started)
        if status != 200:
            self.failures[f"status {status}"] += 1
        return b"connection: close" not in head.lower()


# -- the attackers ----------------------------------------------------------------------------


@dataclass
class Attack:
    """What the attackers saw; `ready` is set once the first wave is in place."""

    seen: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _status_line(reader: asyncio.StreamReader, within: float) -> str:
    """The status of what the proxy sends next, or how the connection ended."""
    try:
        async with asyncio.timeout(within):
            line = await reader.readline()
    except TimeoutError:
        return "no answer"
    except OSError:
        return "reset"
    if not line:
        return "closed quietly"
    return line.decode("latin-1").split(" ", 2)[1]


async def held_connections(
    port: int, count: int, stop: asyncio.Event, attack: Attack, request: bytes = b""
) -> None:
    """`count` connections that send `request` (nothing, by default) and then wait."""

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            if request:
                writer.write(request)
            opened.append(1)
            if len(opened) == count:
                attack.ready.set()
            stop_wait = asyncio.ensure_future(stop.wait())
            ended = asyncio.ensure_future(_status_line(reader, 3600))
            await asyncio.wait({stop_wait, ended}, return_when=asyncio.FIRST_COMPLETED)
            attack.seen["open at the end" if stop_wait.done() else ended.result()] += 1
            for task in (stop_wait, ended):
                task.cancel()
        finally:
            writer.transport.abort()

    opened: list[int] = []
    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


async def trickled_heads(port: int, count: int, stop: asyncio.Event, attack: Attack) -> None:
    head = b"GET / HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"s" * 4096

    async def one() -> None:
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            opened.append(1)
            if len(opened) == count:
                attack.ready.set()
            answer = asyncio.ensure_future(_status_line(reader, 3600))
            started = time.monotonic()
            try:
                for byte in head:
                    if answer.done() or stop.is_set():
                        break
                    writer.write(bytes([byte]))
                    await asyncio.wait({answer}, timeout=1.0)
            except OSError:
                pass
            finally:
                if answer.done():
                    attack.seen[answer.result()] += 1
                    cut_after.append(time.monotonic() - started)
                else:
                    attack.seen["open at the end"] += 1
                answer.cancel()
                writer.transport.abort()

    opened: list[int] = []
    cut_after: list[float] = []
    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    if cut_after:
        attack.notes.append(
            f"heads cut after {min(cut_after):.1f}-{max(cut_after):.1f} s "
            f"(header_timeout {HEADER_TIMEOUT:g} s)"
        )


STALLED_UPLOAD = b"POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: 1000\r\n\r\nx"


async def stalled_uploads(port: int, count: int, stop: asyncio.Event, attack: Attack) -> None:
    await held_connections(port, count, stop, attack, STALLED_UPLOAD)


async def huge_headers(port: int, count: int, stop: asyncio.Event, attack: Attack) -> None:
    chunk = b"a" * (256 * 1024)
    size = 32 * MIB

    async def one() -> None:
        while not stop.is_set():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            attack.ready.set()
            answer = asyncio.ensure_future(_status_line(reader, 30))
            sent = 0
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nX-Big: ")
                while sent < size and not answer.done():
                    writer.write(chunk)
                    sent += len(chunk)
                    await writer.drain()
                writer.write(b"\r\n\r\n")
                await writer.drain()
            except OSError:
                pass
            status = await answer
            attack.seen[status] += 1
            sent_kib.append(sent // 1024)
            writer.transport.abort()

    sent_kib: list[int] = []
    await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    if sent_kib:
        attack.notes.append(
            f"{len(sent_kib)} heads of 32 MiB; the sender had written "
            f"{min(sent_kib)}-{max(sent_kib)} KiB when the proxy answered"
        )


Attacker = Callable[[int, int, asyncio.Event, Attack], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Scenario:
    name: str
    count: int
    attacker: Attacker | None
    what: str
    longer: bool = False  # lasts past header_timeout


def scenarios(scale: float) -> list[Scenario]:
    def n(full: int) -> int:
        return max(1, round(full * scale))

    return [
        Scenario("baseline", 0, None, "nobody else"),
        Scenario("idle", n(300), held_connections, f"{n(300)} silent connections"),
        Scenario("trickle", n(200), trickled_heads, f"{n(200)} heads at 1 byte/s", longer=True),
        Scenario(
            "stalled-upload",
            n(1000),
            stalled_uploads,
            f"{n(1000)} POSTs stalled after 1 of 1000 body bytes",
        ),
        Scenario("huge-header", 4, huge_headers, "32 MiB headers, 4 senders"),
    ]


# -- one scenario -----------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: Scenario
    client: NormalClient
    attack: Attack
    rss_before_mib: float
    rss_peak_mib: float
    ejected: bool
    cuts: Counter[str]


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def status(port: int) -> dict[str, object]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /_failover/status HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(FIRST_BYTE):
            raw = await reader.read()
    finally:
        writer.transport.abort()
    result: dict[str, object] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return result


def is_ejected(snapshot: dict[str, object]) -> bool:
    origins = snapshot.get("origins")
    assert isinstance(origins, list)
    return any(
        "ejected" in o["flags"] or o["passive"]["ejections"] or o["passive"]["ejected_for"]
        for o in origins
    )


def cut_counts(log: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for match in re.finditer(r"Closed \d+ client connections? in the last second: (.*)\.", log):
        for part in match.group(1).split(", "):
            number, _, reason = part.partition(" ")
            counts[reason] += int(number)
    return counts


async def run_scenario(scenario: Scenario, proxy: Service, port: int, duration: float) -> Outcome:
    pid = proxy.process.pid
    log_start = proxy.log.stat().st_size
    before = rss_kib(pid) / 1024
    exact_peak = reset_peak(pid)
    stop = asyncio.Event()
    attack = Attack()
    sampler = RssSampler(pid, every=0.05)
    ejected = False
    with sampler.running():
        attackers: asyncio.Task[None] | None = None
        if scenario.attacker is not None:
            attackers = asyncio.create_task(scenario.attacker(port, scenario.count, stop, attack))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(attack.ready.wait(), 30)
        client = NormalClient(port)
        normal = asyncio.create_task(client.run(stop))
        until = time.monotonic() + (
            max(duration, HEADER_TIMEOUT + 3) if scenario.longer else duration
        )
        while time.monotonic() < until:
            await asyncio.sleep(1.0)
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                ejected = ejected or is_ejected(await status(port))
        stop.set()
        await normal
        if attackers is not None:
            await asyncio.wait_for(attackers, 30)
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            ejected = ejected or is_ejected(await status(port))
    peak = rss_kib(pid, "VmHWM") / 1024 if exact_peak else sampler.peak_mib
    await asyncio.sleep(1.5)  # the last log line of cuts comes a second after the last cut
    with proxy.log.open("rb") as log:
        log.seek(log_start)
        cuts = cut_counts(log.read().decode(errors="replace"))
    return Outcome(scenario, client, attack, before, peak, ejected, cuts)


# -- the report -------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def report(outcomes: list[Outcome]) -> None:
    header = (
        f"{'scenario':<15} {'requests':>8} {'failed':>6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'ejected':>7} {'RSS before':>10} {'peak':>8} {'+MiB':>6}"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        lat = [x * 1000 for x in o.client.latencies] or [float("nan")]
        print(
            f"{o.scenario.name:<15} {len(o.client.latencies):>8} "
            f"{sum(o.client.failures.values()):>6} {statistics.median(lat):>7.1f} "
            f"{percentile(lat, 0.99):>7.1f} {max(lat):>7.1f} {'YES' if o.ejected else 'no':>7} "
            f"{o.rss_before_mib:>8.1f} M {o.rss_peak_mib:>6.1f} M "
            f"{o.rss_peak_mib - o.rss_before_mib:>+6.1f}"
        )
    print()
    for o in outcomes:
        print(f"{o.scenario.name}: {o.scenario.what}")
        if o.client.failures:
            failures = ", ".join(f"{n} {why}" for why, n in o.client.failures.most_common())
            print(f"  normal client failures: {failures}")
        if o.attack.seen:
            seen = ", ".join(f"{n} {what}" for what, n in o.attack.seen.most_common())
            print(f"  attackers saw: {seen}")
        for note in o.attack.notes:
            print(f"  {note}")
        if o.cuts:
            cuts = ", ".join(f"{n} {why}" for why, n in o.cuts.most_common())
            print(f"  proxy log, connections cut: {cuts}")


async def benchmark(names: list[str], scale: float, duration: float) -> list[Outcome]:
    workdir = Path(tempfile.mkdtemp(prefix="failover-slow-clients-"))
    procs = Processes(workdir)
    try:
        origin, origin_port = start_origin(procs)
        wait_ready(origin, "/health")
        port = free_port()
        config = proxy_config(port, origin_port)
        proxy = start_failover(procs, workdir, "failover", config, port)
        wait_ready(proxy, "/_failover/readyz")
        outcomes = []
        for scenario in scenarios(scale):
            if names and scenario.name not in names:
                continue
            print(f"{scenario.name}: {scenario.what} ...", flush=True)
            outcomes.append(await run_scenario(scenario, proxy, port, duration))
            await asyncio.sleep(1.0)
        return outcomes
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Slow and hostile clients against the proxy.")
    parser.add_argument("--quick", action="store_true", help="a tenth of the clients, 5 s each")
    parser.add_argument("--duration", type=float, help="seconds per scenario (default 10)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only these scenarios"
    )
    parser.add_argument("--serve-origin", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_origin is not None:
        serve_origin(args.serve_origin)
        return 0
    known = [s.name for s in scenarios(1.0)]
    unknown = [name for name in args.only if name not in known]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; expected one of {', '.join(known)}")
    duration = args.duration or (5.0 if args.quick else 10.0)
    scale = 0.1 if args.quick else 1.0
    open_files = raise_open_files()
    print(
        f"slow clients: {duration:g} s per scenario; {os.cpu_count()} cores; load average "
        f"{os.getloadavg()[0]:.2f}; open file limit {open_files}",
        flush=True,
    )
    try:
        outcomes = asyncio.run(benchmark(args.only, scale, duration))
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print()
    report(outcomes)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
