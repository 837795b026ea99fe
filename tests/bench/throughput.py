"""Throughput benchmark: failover next to nginx and HAProxy as proxies, one nginx origin.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/throughput.py              # 3 rounds of 8 s per run, 60 s soak (~5.5 min)
    python tests/bench/throughput.py --quick      # 1 round of 3 s per run, 15 s soak (~1 min)
    python tests/bench/throughput.py --soak 300   # a longer soak

Needs /usr/sbin/nginx, /usr/sbin/haproxy and /usr/bin/wrk. It is never run by CI, and
pytest does not collect it (its name does not start with `test_`).

What it starts, each on a free port on 127.0.0.1, all from a temporary directory:

  origin          nginx, 1 worker, keep-alive, serving a 1 KiB and a 1 MiB file
  failover        `python -m failover run`, one worker, default features: active health
                  checks on the origin, passive detection, the x-failover-* headers
  failover-bare   the same with health checks, passive detection, metrics and the attempts
                  header off
  nginx-proxy     nginx, 1 worker, proxy_pass to an upstream with `keepalive 64`
  haproxy         HAProxy, `nbthread 1`, `mode http`, `http-reuse always`

It then runs `wrk -t1 -c32 --latency` against each target for both objects, in interleaved
rounds (the order rotates each round, so drift on a noisy machine spreads over all targets;
failover and failover-bare always run back to back, and the features' cost is the median of
their per-round ratios), and prints per target and object the median over rounds of req/s,
p50, p99 and MB/s (MB as wrk counts it: 2^20 bytes), with the ratio to nginx-proxy. While
the rounds run it samples failover's resident memory (VmRSS) and prints the peak. A soak
follows: wrk against failover with the 1 KiB object for --soak seconds; failover's RSS is
printed at 10 s and at the end. Last come the targets and whether each was met. Every
process started here is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
WRK = "/usr/bin/wrk"
REPO = Path(__file__).resolve().parents[2]

OBJECTS = {"1 KiB": ("/1k.bin", 1024), "1 MiB": ("/1m.bin", 1024 * 1024)}
CONNECTIONS = 32
MIB = 1024 * 1024

# The targets this benchmark reports on.
MIN_SMALL_RATIO = 0.15  # 1 KiB req/s against nginx-proxy
MAX_P99_MS = 10.0  # 1 KiB p99 at 32 connections
MIN_LARGE_RATIO = 0.5  # 1 MiB MB/s against nginx-proxy
MAX_FEATURE_COST = 0.10  # req/s lost to the default features
MAX_RSS_GROWTH = 0.10  # RSS at the end of the soak against RSS at 10 s
MAX_RSS_MIB = 150.0


# -- processes ------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path


class Processes:
    """Every process the benchmark starts; `stop_all` terminates and waits for each."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Service] = []

    def start(self, name: str, url: str, argv: Sequence[str], **kwargs: object) -> Service:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            # A session of its own: Ctrl-C reaches only this script, which then stops the
            # services in order (and can end an nginx master together with its worker).
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **kwargs,  # type: ignore[call-overload]
            )
        service = Service(name, url, process, log)
        self.started.append(service)
        return service

    def stop_all(self) -> None:
        for service in reversed(self.started):
            if service.process.poll() is None:
                service.process.terminate()
        for service in reversed(self.started):
            try:
                service.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
        self.started.clear()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def fetch(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_ready(service: Service, path: str, timeout: float = 30.0) -> None:
    """Wait until `path` answers 200; raise with the service's log if it never does."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            break
        try:
            status, _ = fetch(service.url + path, timeout=2.0)
            if status == 200:
                return
            last = f"status {status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    log = service.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{service.name} did not become ready ({last}); its log:\n{log}")


# -- configs --------------------------------------------------------------------------------


def nginx_config(prefix: Path, server: str, upstream: str = "") -> str:
    return f"""
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi_temp;
    uwsgi_temp_path {prefix}/uwsgi_temp;
    scgi_temp_path {prefix}/scgi_temp;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    {upstream}
    {server}
}}
"""


def origin_config(prefix: Path, port: int, www: Path) -> str:
    server = f"server {{ listen 127.0.0.1:{port}; root {www}; location / {{ }} }}"
    return nginx_config(prefix, server)


def nginx_proxy_config(prefix: Path, port: int, origin_port: int) -> str:
    upstream = f"""upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
    server = f"""server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""
    return nginx_config(prefix, server, upstream)


def haproxy_config(port: int, origin_port: int) -> str:
    return f"""
global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always

frontend bench
    bind 127.0.0.1:{port}
    default_backend origin

backend origin
    server origin 127.0.0.1:{origin_port}
"""


def failover_config(port: int, origin_port: int, features: bool) -> str:
    text = f"""
listen: {{host: 127.0.0.1, port: {port}}}
origins:
  - {{name: origin, url: "http://127.0.0.1:{origin_port}"}}
shutdown_timeout: 5
"""
    if not features:
        text += """
health: {enabled: false}
passive: {enabled: false}
metrics: {enabled: false}
proxy: {attempts_header: false}
"""
    return text


# -- measuring ------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    mib_per_s: float
    errors: str = ""


_LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_SIZE_UNITS = {"B": 1 / MIB, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0, "TB": 1024.0 * 1024}


def parse_wrk(output: str) -> WrkResult:
    """req/s, p50, p99 and transfer/s from `wrk --latency` output."""

    def percentile(name: str) -> float:
        match = re.search(rf"^\s*{name}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match is None:
            raise ValueError(f"no {name}% latency in wrk's output:\n{output}")
        return float(match.group(1)) * _LATENCY_UNITS[match.group(2)]

    rate = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    transfer = re.search(r"^Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", output, re.M)
    if rate is None or transfer is None:
        raise ValueError(f"no Requests/sec or Transfer/sec in wrk's output:\n{output}")
    errors = []
    socket_errors = re.search(r"Socket errors: (.*)$", output, re.M)
    if socket_errors:
        errors.append("socket errors: " + socket_errors.group(1).strip())
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        errors.append(f"{non_2xx.group(1)} non-2xx/3xx responses")
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        p50_ms=percentile("50"),
        p99_ms=percentile("99"),
        mib_per_s=float(transfer.group(1)) * _SIZE_UNITS[transfer.group(2)],
        errors="; ".join(errors),
    )


def wrk_argv(url: str, duration: float) -> list[str]:
    return [WRK, "-t1", f"-c{CONNECTIONS}", f"-d{duration:g}s", "--latency", url]


def run_wrk(url: str, duration: float) -> WrkResult:
    done = subprocess.run(
        wrk_argv(url, duration),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed on {url} ({done.returncode}): {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    """VmRSS (or another /proc/PID/status size, e.g. VmHWM) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


@dataclass
class RssSampler:
    """Samples a process's VmRSS in a thread while the `with` block runs."""

    pid: int
    every: float = 0.2
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append((time.monotonic(), rss_kib(self.pid)))
            self._stop.wait(self.every)

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        thread = threading.Thread(target=self._run, name=f"rss {self.pid}", daemon=True)
        self._stop.clear()
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()

    @property
    def peak_mib(self) -> float:
        return max((kib for _, kib in self.samples), default=0) / 1024


# -- the run --------------------------------------------------------------------------------


@dataclass
class Row:
    target: str
    obj: str
    results: list[WrkResult] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return statistics.median(float(getattr(r, attribute)) for r in self.results)

    @property
    def rate(self) -> float:
        return self.median("requests_per_s")


# Units of targets measured back to back; the order of units rotates each round and the order
# within a unit alternates, so the feature-cost pair always runs under the same conditions.
UNITS = (("origin",), ("failover", "failover-bare"), ("nginx-proxy",), ("haproxy",))


def round_order(index: int) -> list[str]:
    shift = index % len(UNITS)
    units = UNITS[shift:] + UNITS[:shift]
    return [t for unit in units for t in (unit if index % 2 == 0 else unit[::-1])]


def paired_ratios(row: Row, reference: Row) -> list[float]:
    """Per round, `row` req/s over `reference` req/s (they ran back to back)."""
    return [
        mine.requests_per_s / theirs.requests_per_s
        for mine, theirs in zip(row.results, reference.results, strict=True)
    ]


def verify(service: Service, www: Path) -> None:
    """Each target must serve both objects byte for byte before it is measured."""
    for path, _ in OBJECTS.values():
        status, body = fetch(service.url + path)
        expected = (www / path.lstrip("/")).read_bytes()
        if status != 200 or body != expected:
            raise RuntimeError(
                f"{service.name} answered {path} with status {status} and {len(body)} bytes, "
                f"expected 200 and {len(expected)} bytes"
            )


def start_nginx(procs: Processes, workdir: Path, name: str, config: str, port: int) -> Service:
    """nginx in the foreground with `config`, its files under `workdir/name`."""
    prefix = workdir / name
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(config)
    argv = [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")]
    return procs.start(name, f"http://127.0.0.1:{port}", argv)


def start_origin(procs: Processes, workdir: Path, www: Path) -> tuple[Service, int]:
    """The static origin (nginx serving `www`), ready; and its port."""
    port = free_port()
    origin = start_nginx(
        procs, workdir, "origin", origin_config(workdir / "origin", port, www), port
    )
    wait_ready(origin, "/1k.bin")
    return origin, port


def start_nginx_proxy(procs: Processes, workdir: Path, origin_port: int) -> Service:
    port = free_port()
    config = nginx_proxy_config(workdir / "nginx-proxy", port, origin_port)
    return start_nginx(procs, workdir, "nginx-proxy", config, port)


def start_failover(
    procs: Processes, workdir: Path, name: str, config: str, port: int, tree: Path = REPO
) -> Service:
    """`python -m failover run` with `config` (YAML text), one worker, from the checkout
    `tree` (with its own .venv when it has one)."""
    path = workdir / f"{name}.yaml"
    path.write_text(config)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    for key in ("FAILOVER_CONFIG", "FAILOVER_PROXY__CLIENT"):
        env.pop(key, None)
    python = tree / ".venv" / "bin" / "python"
    argv = [str(python) if python.exists() else sys.executable, "-m", "failover", "run"]
    argv += ["--config", str(path), "--port", str(port), "--log-level", "warning"]
    return procs.start(name, f"http://127.0.0.1:{port}", argv, cwd=tree, env=env)


def start_all(procs: Processes, workdir: Path, www: Path) -> dict[str, Service]:
    origin, origin_port = start_origin(procs, workdir, www)
    services = {"origin": origin}
    for name, features in (("failover", True), ("failover-bare", False)):
        port = free_port()
        config = failover_config(port, origin_port, features)
        services[name] = start_failover(procs, workdir, name, config, port)
    services["nginx-proxy"] = start_nginx_proxy(procs, workdir, origin_port)

    port = free_port()
    (workdir / "haproxy.cfg").write_text(haproxy_config(port, origin_port))
    services["haproxy"] = procs.start(
        "haproxy",
        f"http://127.0.0.1:{port}",
        [HAPROXY, "-db", "-f", str(workdir / "haproxy.cfg")],
    )

    for name, service in services.items():
        # failover is ready once its first health-check round has passed.
        wait_ready(service, "/_failover/readyz" if name.startswith("failover") else "/1k.bin")
        verify(service, www)
    return services


@dataclass
class Check:
    name: str
    value: str
    ok: bool
    rounds: list[bool] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"{'met' if self.ok else 'MISSED':<7} {self.name}: {self.value}"
        if any(r != self.ok for r in self.rounds):
            text += f" (met in {sum(self.rounds)} of {len(self.rounds)} rounds: noisy)"
        return text


def fmt_ms(value: float) -> str:
    return f"{value * 1000:.0f} us" if value < 1 else f"{value:.2f} ms"


def print_table(rows: dict[tuple[str, str], Row], targets: list[str]) -> None:
    header = (
        f"{'target':<14} {'object':<6} {'req/s':>9} {'(min-max)':>17} {'p50':>9} {'p99':>9} "
        f"{'MB/s':>8} {'vs nginx-proxy':>15}"
    )
    print(header)
    print("-" * len(header))
    for obj in OBJECTS:
        reference = rows[("nginx-proxy", obj)]
        for target in targets:
            row = rows[(target, obj)]
            rates = [r.requests_per_s for r in row.results]
            spread = f"({min(rates):,.0f}-{max(rates):,.0f})"
            if obj == "1 KiB":
                ratio = row.rate / reference.rate
            else:
                ratio = row.median("mib_per_s") / reference.median("mib_per_s")
            print(
                f"{target:<14} {obj:<6} {row.rate:>9,.0f} {spread:>17} "
                f"{fmt_ms(row.median('p50_ms')):>9} {fmt_ms(row.median('p99_ms')):>9} "
                f"{row.median('mib_per_s'):>8,.1f} {ratio:>14.2f}x"
            )
            errors = sorted({r.errors for r in row.results if r.errors})
            for error in errors:
                print(f"{'':<14} {'':<6} warning: {error}")
        print()


def soak(service: Service, seconds: float) -> tuple[float, float, float, WrkResult]:
    """wrk against `service` for `seconds`; RSS (MiB) at 10 s and at the end, peak, result."""
    path, _ = OBJECTS["1 KiB"]
    early_at = 10.0 if seconds > 10 else seconds / 2
    pid = service.process.pid
    sampler = RssSampler(pid)
    with sampler.running():
        started = time.monotonic()
        with subprocess.Popen(
            wrk_argv(service.url + path, seconds),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as wrk:
            try:
                time.sleep(max(0.0, started + early_at - time.monotonic()))
                early = rss_kib(pid) / 1024
                out, err = wrk.communicate(timeout=seconds + 60)
            except BaseException:
                wrk.kill()
                raise
        late = rss_kib(pid) / 1024
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed during the soak ({wrk.returncode}): {err.strip()}")
    return early, late, sampler.peak_mib, parse_wrk(out)


def benchmark(args: argparse.Namespace) -> None:
    rounds, duration = (1, 3.0) if args.quick else (3, 8.0)
    soak_seconds = args.soak if args.soak is not None else (15.0 if args.quick else 60.0)
    for tool in (NGINX, HAPROXY, WRK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing; this benchmark needs nginx, haproxy and wrk")

    workdir = Path(tempfile.mkdtemp(prefix="failover-bench-"))
    procs = Processes(workdir)
    try:
        # nginx workers run as an unprivileged user when started as root: let them read.
        workdir.chmod(0o755)
        www = workdir / "www"
        www.mkdir(mode=0o755)
        (www / "index.html").write_text("ok\n")  # the default health-check path, /
        for path, size in OBJECTS.values():
            (www / path.lstrip("/")).write_bytes(os.urandom(size))
        for item in www.iterdir():
            item.chmod(0o644)

        print(
            f"failover throughput: {rounds} round(s) of wrk -t1 -c{CONNECTIONS} "
            f"-d{duration:g}s per target and object; soak {soak_seconds:g} s; "
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start",
            flush=True,
        )
        services = start_all(procs, workdir, www)
        targets = list(services)
        ours = services["failover"]
        rows = {(t, o): Row(t, o) for t in targets for o in OBJECTS}

        # Warm every pool and cache once, unmeasured.
        for service in services.values():
            for path, _ in OBJECTS.values():
                run_wrk(service.url + path, 1)

        sampler = RssSampler(ours.process.pid)
        bare_sampler = RssSampler(services["failover-bare"].process.pid)
        with sampler.running(), bare_sampler.running():
            for index in range(rounds):
                order = round_order(index)
                print(f"round {index + 1}/{rounds}: {', '.join(order)}", flush=True)
                for obj, (path, _) in OBJECTS.items():
                    for target in order:
                        rows[(target, obj)].results.append(
                            run_wrk(services[target].url + path, duration)
                        )
        peak = max(sampler.peak_mib, rss_kib(ours.process.pid, "VmHWM") / 1024)

        print()
        print_table(rows, targets)
        print(f"failover peak RSS during the rounds: {peak:.1f} MiB ", end="")
        print(f"(failover-bare: {bare_sampler.peak_mib:.1f} MiB)")

        small = rows[("failover", "1 KiB")]
        bare_small = rows[("failover-bare", "1 KiB")]
        pairs = paired_ratios(small, bare_small)
        large_pairs = paired_ratios(rows[("failover", "1 MiB")], rows[("failover-bare", "1 MiB")])
        cost = 1 - statistics.median(pairs)
        print(
            f"features cost (failover / failover-bare, measured back to back in each round): "
            f"1 KiB req/s {', '.join(f'{p:.2f}x' for p in pairs)}, median cost {cost:.1%} "
            f"(medians over rounds: {small.rate:,.0f} / {bare_small.rate:,.0f}); "
            f"1 MiB {', '.join(f'{p:.2f}x' for p in large_pairs)}, "
            f"median cost {1 - statistics.median(large_pairs):.1%}"
        )

        print(f"\nsoak: wrk -c{CONNECTIONS} -d{soak_seconds:g}s on failover, 1 KiB ...", flush=True)
        early, late, soak_peak, soak_result = soak(ours, soak_seconds)
        early_at = 10.0 if soak_seconds > 10 else soak_seconds / 2
        growth = late / early - 1
        print(
            f"soak: {soak_result.requests_per_s:,.0f} req/s, p99 {fmt_ms(soak_result.p99_ms)}; "
            f"RSS {early:.1f} MiB at {early_at:g} s, {late:.1f} MiB at {soak_seconds:g} s "
            f"({growth:+.1%}), peak {soak_peak:.1f} MiB"
        )
        if soak_result.errors:
            print(f"soak warning: {soak_result.errors}")

        nginx_small = rows[("nginx-proxy", "1 KiB")]
        large = rows[("failover", "1 MiB")]
        nginx_large = rows[("nginx-proxy", "1 MiB")]
        small_ratio = small.rate / nginx_small.rate
        large_ratio = large.median("mib_per_s") / nginx_large.median("mib_per_s")
        p99 = small.median("p99_ms")
        highest = max(peak, soak_peak, late)
        load = os.getloadavg()[0]
        print(f"\nload average at the end: {load:.2f} (above {os.cpu_count()}: cores were shared)")
        print("targets (verdict on the medians; a note where single rounds disagree):")
        checks: list[Check] = [
            Check(
                f"1 KiB req/s >= {MIN_SMALL_RATIO}x nginx-proxy",
                f"{small.rate:,.0f} vs {nginx_small.rate:,.0f} = {small_ratio:.2f}x",
                small_ratio >= MIN_SMALL_RATIO,
                [r >= MIN_SMALL_RATIO for r in paired_ratios(small, nginx_small)],
            ),
            Check(
                f"1 KiB p99 <= {MAX_P99_MS:g} ms at {CONNECTIONS} connections",
                fmt_ms(p99),
                p99 <= MAX_P99_MS,
                [r.p99_ms <= MAX_P99_MS for r in small.results],
            ),
            Check(
                f"1 MiB MB/s >= {MIN_LARGE_RATIO}x nginx-proxy",
                f"{large.median('mib_per_s'):,.1f} vs {nginx_large.median('mib_per_s'):,.1f}"
                f" = {large_ratio:.2f}x",
                large_ratio >= MIN_LARGE_RATIO,
                [r >= MIN_LARGE_RATIO for r in paired_ratios(large, nginx_large)],
            ),
            Check(
                f"features cost <= {MAX_FEATURE_COST:.0%} req/s",
                f"{cost:.1%}",
                cost <= MAX_FEATURE_COST,
                [1 - p <= MAX_FEATURE_COST for p in pairs],
            ),
            Check(
                f"RSS at {soak_seconds:g} s within {MAX_RSS_GROWTH:.0%} of RSS at {early_at:g} s",
                f"{growth:+.1%}",
                abs(growth) <= MAX_RSS_GROWTH,
            ),
            Check(
                f"RSS under {MAX_RSS_MIB:g} MiB",
                f"highest {highest:.1f} MiB",
                highest < MAX_RSS_MIB,
            ),
        ]
        for check in checks:
            print(f"  {check}")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="failover's throughput against nginx and HAProxy as proxies (see docstring)."
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 3 s per run and a 15 s soak"
    )
    parser.add_argument(
        "--soak", type=float, metavar="SECONDS", help="soak length (default 60, --quick 15)"
    )
    args = parser.parse_args(argv)
    if args.soak is not None and args.soak <= 0:
        parser.error(f"--soak: {args.soak:g} is not a positive number of seconds")

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        benchmark(args)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
