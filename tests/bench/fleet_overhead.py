"""What fleet mode costs on the request path: failover with fleet off and with fleet on.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/fleet_overhead.py             # 3 rounds of 5 s per run (~1 min)
    python tests/bench/fleet_overhead.py --rounds 5 --duration 8

Needs /usr/bin/wrk and redis-server (or REDIS_URL); the origin is nginx (/usr/sbin/nginx)
when installed, else a FaultyOrigin in a process of its own. It is never run by CI, and
pytest does not collect it (its name does not start with `test_`).

What it starts, each on a free port on 127.0.0.1, all from a temporary directory:

  origin      nginx, 1 worker, keep-alive, serving a 1 KiB file
  redis       redis-server without persistence (unless REDIS_URL is set)
  fleet-off   `python -m failover run`, one worker, default features
  fleet-on    the same config with `fleet:` pointing at that Redis (a key prefix of its own)
  peer        a second fleet process on the same key prefix, not measured, so that fleet-on
              takes part in a real fleet: it receives the peer's messages on the bus and the
              two share the probe leases

Redis is never on the request path, so the target is fleet-on within 5% of fleet-off. The
two run back to back in each round, in alternating order; each run is `wrk -t1 -c32` for
--duration seconds after a 1 s warm-up. It prints, per round, both req/s figures and their
ratio, then the medians and whether the target was met (exit status 0 either way; 1 when
something could not be started). Every process started here is stopped at the end, also on
Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench.throughput import (  # a sibling script
    CONNECTIONS,
    NGINX,
    REPO,
    WRK,
    Processes,
    Service,
    fetch,
    free_port,
    origin_config,
)

MAX_COST = 0.05  # fleet-on may lose at most this share of fleet-off's req/s


def wait_until(
    service: Service, ready: Callable[[], bool], what: str, timeout: float = 30.0
) -> None:
    """Poll `ready()` until it is true; raise with the service's log if it never is."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            last = f"exited with {service.process.returncode}"
            break
        try:
            if ready():
                return
            last = "not yet"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    log = service.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{service.name} never became {what} ({last}); its log:\n{log}")


@dataclass(frozen=True)
class Origin:
    service: Service
    kind: str
    path: str  # the 1 KiB object
    body: bytes


def serves(service: Service, origin: Origin) -> bool:
    status, got = fetch(service.url + origin.path, timeout=2.0)
    return status == 200 and got == origin.body


def fleet_connected(service: Service) -> bool:
    status, got = fetch(service.url + "/_failover/status", timeout=2.0)
    return status == 200 and bool(json.loads(got)["fleet"]["connected"])


def redis_answers(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


# -- starting -------------------------------------------------------------------------------


FAULTY_ORIGIN = """
import asyncio, sys
from failover.faulty import FaultyOrigin

async def main() -> None:
    origin = FaultyOrigin("origin", port=int(sys.argv[1]))
    await origin.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def start_origin(procs: Processes, workdir: Path) -> Origin:
    """nginx serving a 1 KiB file, or a FaultyOrigin (its /bytes/1024) without nginx."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if Path(NGINX).exists():
        www = workdir / "www"
        www.mkdir()
        body = os.urandom(1024)
        (www / "1k.bin").write_bytes(body)
        config = workdir / "nginx.conf"
        config.write_text(origin_config(workdir, port, www))
        argv = [NGINX, "-p", str(workdir), "-c", str(config)]
        origin = Origin(procs.start("origin", url, argv), "nginx", "/1k.bin", body)
    else:
        print(f"{NGINX} not found: the origin is a FaultyOrigin (Python) instead")
        argv = [sys.executable, "-c", FAULTY_ORIGIN, str(port)]
        service = procs.start("origin", url, argv, cwd=REPO, env=python_env())
        wait_until(service, lambda: fetch(url + "/bytes/1024", 2.0)[0] == 200, "ready")
        origin = Origin(service, "FaultyOrigin", "/bytes/1024", fetch(url + "/bytes/1024")[1])
    wait_until(origin.service, functools.partial(serves, origin.service, origin), "ready")
    return origin


def start_redis(procs: Processes) -> str:
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (or set REDIS_URL)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    redis = procs.start("redis", f"redis://127.0.0.1:{port}/0", [*argv, "no"])
    wait_until(redis, lambda: redis_answers(port), "ready")
    return redis.url


def python_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FAILOVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def start_proxy(
    procs: Processes, workdir: Path, name: str, origin: Origin, fleet: dict[str, object] | None
) -> Service:
    port = free_port()
    config: dict[str, object] = {
        "listen": {"host": "127.0.0.1", "port": port},
        "origins": [{"name": "origin", "url": origin.service.url}],
        "shutdown_timeout": 5,
    }
    if fleet is not None:
        config["fleet"] = fleet
    path = workdir / f"{name}.yaml"
    path.write_text(json.dumps(config))
    argv = [sys.executable, "-m", "failover", "run", "--config", str(path)]
    argv += ["--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    return procs.start(name, url, argv, cwd=workdir, env=python_env())


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Run:
    requests_per_s: float
    p99_ms: float
    errors: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> Run:
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if rate is None or p99 is None:
        raise RuntimeError(f"no Requests/sec or 99% latency in wrk's output:\n{output}")
    errors = []
    if match := re.search(r"Socket errors: (.*)$", output, re.M):
        errors.append("socket errors: " + match.group(1).strip())
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors.append(f"{match.group(1)} non-2xx/3xx responses")
    return Run(float(rate.group(1)), float(p99.group(1)) * _UNITS[p99.group(2)], "; ".join(errors))


def wrk(url: str, duration: float) -> Run:
    argv = [WRK, "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed on {url} ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def benchmark(rounds: int, duration: float) -> None:
    if not Path(WRK).exists():
        raise RuntimeError(f"{WRK} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="fleet-overhead-"))
    workdir.chmod(0o755)  # nginx's worker (an unprivileged user) reads the file from here
    procs = Processes(workdir)
    try:
        origin = start_origin(procs, workdir)
        redis_url = start_redis(procs)
        fleet: dict[str, object] = {
            "redis_url": redis_url,
            "key_prefix": f"bench-{uuid.uuid4().hex}:",
        }
        targets = {
            "fleet-off": start_proxy(procs, workdir, "fleet-off", origin, None),
            "fleet-on": start_proxy(procs, workdir, "fleet-on", origin, fleet),
        }
        peer = start_proxy(procs, workdir, "peer", origin, fleet)
        for service in (*targets.values(), peer):
            wait_until(service, functools.partial(serves, service, origin), "ready")
        for service in (targets["fleet-on"], peer):
            connected = functools.partial(fleet_connected, service)
            wait_until(service, connected, "connected to Redis")
        print(f"origin {origin.kind}, Redis {redis_url}")
        print(f"wrk -t1 -c{CONNECTIONS} -d{duration:g}s {origin.path}, {rounds} rounds\n")

        results: dict[str, list[Run]] = {name: [] for name in targets}
        print(f"{'round':>5}  {'fleet-off req/s':>15}  {'fleet-on req/s':>14}  {'on/off':>6}")
        for index in range(rounds):
            order = ["fleet-off", "fleet-on"] if index % 2 == 0 else ["fleet-on", "fleet-off"]
            for name in order:
                url = targets[name].url + origin.path
                wrk(url, 1.0)  # warm-up: connections, caches
                run = wrk(url, duration)
                if run.errors:
                    print(f"  {name}: {run.errors}")
                results[name].append(run)
            off, on = results["fleet-off"][-1], results["fleet-on"][-1]
            ratio = on.requests_per_s / off.requests_per_s
            figures = f"{off.requests_per_s:>15.0f}  {on.requests_per_s:>14.0f}  {ratio:>6.3f}"
            print(f"{index + 1:>5}  {figures}")

        if not fleet_connected(targets["fleet-on"]):
            print("\nfleet-on lost Redis during the runs: its figures are not a fleet's")
        report(results)
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict[str, list[Run]]) -> None:
    off, on = results["fleet-off"], results["fleet-on"]
    ratios = [b.requests_per_s / a.requests_per_s for a, b in zip(off, on, strict=True)]
    print()
    for name, runs in results.items():
        rate = statistics.median(run.requests_per_s for run in runs)
        p99 = statistics.median(run.p99_ms for run in runs)
        print(f"{name:>9}: median {rate:.0f} req/s, p99 {p99:.2f} ms")
    ratio = statistics.median(ratios)
    median_ratio = statistics.median(r.requests_per_s for r in on) / statistics.median(
        r.requests_per_s for r in off
    )
    print(
        f"fleet-on / fleet-off: median of per-round ratios {ratio:.3f}, ratio of medians "
        f"{median_ratio:.3f}"
    )
    verdict = "met" if ratio >= 1 - MAX_COST else "NOT met"
    print(f"target fleet-on within {MAX_COST:.0%} of fleet-off: {verdict}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="failover's req/s with fleet off and on.")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per wrk run (default 5)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds and --duration must be positive")

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        benchmark(args.rounds, args.duration)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
