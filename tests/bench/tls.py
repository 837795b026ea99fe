"""TLS benchmark: failover and nginx proxying the same HTTPS origin, 1 KiB objects.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/tls.py            # 3 rounds of 8 s per target (~1.5 min)
    python tests/bench/tls.py --quick    # 1 round of 3 s per target
    python tests/bench/tls.py --tree before=../base   # and another checkout, TLS to the origin

Needs /usr/sbin/nginx, /usr/bin/wrk and the dev dependency trustme (the test CA). It is never
run by CI, and pytest does not collect it.

What it starts, each on a free port on 127.0.0.1, from a temporary directory:

  origin          nginx, 1 worker, HTTPS only (a certificate for origin.test from a test CA),
                  keep-alive, serving a 1 KiB file
  failover        `python -m failover run`, one worker, default features, the origin as
                  https://127.0.0.1:PORT with tls.server_name origin.test and the test CA
  nginx-proxy     nginx, 1 worker, proxy_pass https:// to an upstream with `keepalive 64`,
                  `proxy_ssl_session_reuse on`, the same server name and CA, verification on
  failover-https  failover as above, and HTTPS on the listener too (listen.tls)
  nginx-https     nginx-proxy as above, and `listen ssl`
  failover-plain  failover to the origin's plain-HTTP port (what TLS costs, same run)
  nginx-plain     nginx-proxy to the origin's plain-HTTP port

Both proxies keep their upstream connections alive and resume TLS sessions on new ones. wrk
(`-t1 -c32 --latency`, keep-alive) runs against each target in interleaved rounds (the order
rotates each round), the failover-plain and nginx-plain pair showing what TLS to the origin
costs each; the table holds the median over rounds of req/s, p50 and p99, the
ratio to nginx with the same ends in TLS, and the CPU time per request of each proxy (its
processes' user + system time over the requests served; it moves far less with the machine's
load than req/s does). `--tree NAME=DIR` adds a target NAME: failover from that checkout
(with its own .venv if it has one), TLS to the origin, measured right after this checkout's
in each round, for a before/after comparison in one run. Last come the target (failover >=
0.3x nginx, TLS to the origin) and whether it was met.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench.compare import cpu_seconds
from tests.bench.throughput import (  # a sibling script
    NGINX,
    WRK,
    Check,
    Processes,
    Row,
    Service,
    fmt_ms,
    free_port,
    nginx_config,
    paired_ratios,
    run_wrk,
    start_failover,
    start_nginx,
)

MIN_RATIO = 0.3  # failover's 1 KiB req/s against nginx's, both proxying the HTTPS origin
PATH = "/1k.bin"
ORIGIN_NAME = "origin.test"
PAIRS = (
    ("failover", "nginx-proxy"),
    ("failover-https", "nginx-https"),
    ("failover-plain", "nginx-plain"),
)
# Per pair: (the proxy listens with TLS, the proxy reaches the origin with TLS).
MODES = {"": (False, True), "-https": (True, True), "-plain": (False, False)}


class Certificates:
    """The test CA and the certificates the benchmark serves, as files."""

    def __init__(self, folder: Path) -> None:
        import trustme

        ca = trustme.CA()
        self.ca_file = str(folder / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        self.files: dict[str, tuple[str, str]] = {}
        for name in (ORIGIN_NAME, "proxy.test"):
            cert = ca.issue_cert(name)
            cert_file, key_file = str(folder / f"{name}.crt"), str(folder / f"{name}.key")
            cert.cert_chain_pems[0].write_to_path(cert_file)
            cert.private_key_pem.write_to_path(key_file)
            self.files[name] = (cert_file, key_file)


def origin_config(prefix: Path, port: int, plain_port: int, www: Path, certs: Certificates) -> str:
    cert_file, key_file = certs.files[ORIGIN_NAME]
    server = f"""server {{
        listen 127.0.0.1:{plain_port};
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert_file};
        ssl_certificate_key {key_file};
        ssl_session_cache shared:origin:10m;
        root {www};
        location / {{ }}
    }}"""
    return nginx_config(prefix, server)


def nginx_proxy_config(
    prefix: Path, port: int, origin_port: int, certs: Certificates, https: bool, to_tls: bool
) -> str:
    upstream = f"""upstream origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}"""
    listen = f"listen 127.0.0.1:{port}"
    if https:
        cert_file, key_file = certs.files["proxy.test"]
        listen += f" ssl;\n        ssl_certificate {cert_file};\n"
        listen += f"        ssl_certificate_key {key_file}"
    upstream_tls = f"""
            proxy_ssl_session_reuse on;
            proxy_ssl_server_name on;
            proxy_ssl_name {ORIGIN_NAME};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {certs.ca_file};"""
    server = f"""server {{
        {listen};
        location / {{
            proxy_pass {"https" if to_tls else "http"}://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";{upstream_tls if to_tls else ""}
        }}
    }}"""
    return nginx_config(prefix, server, upstream)


def failover_config(
    port: int, origin_port: int, certs: Certificates, https: bool, to_tls: bool
) -> str:
    listen = f"host: 127.0.0.1, port: {port}"
    if https:
        cert_file, key_file = certs.files["proxy.test"]
        listen += f', tls: {{certificates: [{{cert_file: "{cert_file}", key_file: "{key_file}"}}]}}'
    origin = f'{{name: origin, url: "http://127.0.0.1:{origin_port}"}}'
    if to_tls:
        origin = (
            f'{{name: origin, url: "https://127.0.0.1:{origin_port}", '
            f'tls: {{server_name: {ORIGIN_NAME}, ca_file: "{certs.ca_file}"}}}}'
        )
    return f"""
listen: {{{listen}}}
origins: [{origin}]
shutdown_timeout: 5
"""


def fetch_ok(url: str, ca_file: str) -> None:
    """The target answers the 1 KiB object (HTTPS fronts trust the test CA)."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=ca_file)
    context.check_hostname = False  # the benchmark reaches every front by address
    with urllib.request.urlopen(url + PATH, timeout=5, context=context) as response:
        body = response.read()
        if response.status != 200 or len(body) != 1024:
            raise RuntimeError(f"{url} answered {response.status} with {len(body)} bytes")


def wait_ready(service: Service, ca_file: str, timeout: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline and service.process.poll() is None:
        try:
            fetch_ok(service.url, ca_file)
            return
        except (OSError, RuntimeError) as exc:
            last = str(exc)
        time.sleep(0.1)
    log = service.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{service.name} did not become ready ({last}); its log:\n{log}")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (an nginx master and its worker)."""
    total = cpu_seconds(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += cpu_seconds(int(child))
    return total


def benchmark(args: argparse.Namespace) -> None:
    rounds, duration = (1, 3.0) if args.quick else (args.rounds, 8.0)
    trees = dict(item.split("=", 1) for item in args.tree)
    groups = [(PAIRS[0][0], *trees, PAIRS[0][1]), *PAIRS[1:]]
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing; this benchmark needs nginx and wrk")
    workdir = Path(tempfile.mkdtemp(prefix="failover-bench-tls-"))
    procs = Processes(workdir)
    try:
        workdir.chmod(0o755)
        www = workdir / "www"
        www.mkdir(mode=0o755)
        (www / "index.html").write_text("ok\n")
        (www / "1k.bin").write_bytes(os.urandom(1024))
        for item in www.iterdir():
            item.chmod(0o644)
        certs = Certificates(workdir)
        print(
            f"failover TLS: {rounds} round(s) of wrk -t1 -c32 -d{duration:g}s per target; "
            f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at the start",
            flush=True,
        )
        origin_port, plain_port = free_port(), free_port()
        origin = start_nginx(
            procs,
            workdir,
            "origin",
            origin_config(workdir / "origin", origin_port, plain_port, www, certs),
            origin_port,
        )
        origin.url = f"https://127.0.0.1:{origin_port}"
        wait_ready(origin, certs.ca_file)
        services: dict[str, Service] = {}
        for suffix, (https, to_tls) in MODES.items():
            to_port = origin_port if to_tls else plain_port
            port = free_port()
            name = f"failover{suffix}"
            config = failover_config(port, to_port, certs, https, to_tls)
            services[name] = start_failover(procs, workdir, name, config, port)
            port = free_port()
            name = f"nginx{suffix or '-proxy'}"
            config = nginx_proxy_config(workdir / name, port, to_port, certs, https, to_tls)
            services[name] = start_nginx(procs, workdir, name, config, port)
        for name, folder in trees.items():
            port = free_port()
            config = failover_config(port, origin_port, certs, False, True)
            tree = Path(folder).resolve()
            services[name] = start_failover(procs, workdir, name, config, port, tree)
        for name, service in services.items():
            if name.endswith("https"):
                service.url = service.url.replace("http://", "https://")
            wait_ready(service, certs.ca_file)

        targets = list(services)
        rows = {t: Row(t, "1 KiB") for t in targets}
        cpu: dict[str, list[float]] = {t: [] for t in targets}  # us per request, per round
        for service in services.values():  # warm the pools and sessions, unmeasured
            run_wrk(service.url + PATH, 1)
        for index in range(rounds):
            shift = index % len(groups)
            turn = groups[shift:] + groups[:shift]
            order = [t for group in turn for t in (group if index % 2 == 0 else group[::-1])]
            print(f"round {index + 1}/{rounds}: {', '.join(order)}", flush=True)
            for target in order:
                pid = services[target].process.pid
                before = tree_cpu(pid)
                result = run_wrk(services[target].url + PATH, duration)
                rows[target].results.append(result)
                requests = result.requests_per_s * duration
                cpu[target].append((tree_cpu(pid) - before) / max(requests, 1) * 1e6)

        print()
        header = (
            f"{'target':<15} {'req/s':>9} {'(min-max)':>17} {'p50':>9} {'p99':>9} "
            f"{'vs nginx':>9} {'CPU/req':>9} {'nginx/ours':>10}"
        )
        print(header)
        print("-" * len(header))
        for group in groups:
            theirs = group[-1]
            for target in group:
                row = rows[target]
                rates = [r.requests_per_s for r in row.results]
                spread = f"({min(rates):,.0f}-{max(rates):,.0f})"
                ratio = row.rate / rows[theirs].rate
                per_request = statistics.median(cpu[target])
                cpu_ratio = statistics.median(cpu[theirs]) / per_request
                print(
                    f"{target:<15} {row.rate:>9,.0f} {spread:>17} "
                    f"{fmt_ms(row.median('p50_ms')):>9} {fmt_ms(row.median('p99_ms')):>9} "
                    f"{ratio:>8.2f}x {per_request:>6.1f} us {cpu_ratio:>9.2f}x"
                )
                for error in sorted({r.errors for r in row.results if r.errors}):
                    print(f"{'':<15} warning: {error}")
        small, nginx_small = rows["failover"], rows["nginx-proxy"]
        ratios = paired_ratios(small, nginx_small)
        ratio = small.rate / nginx_small.rate
        https_ratio = rows["failover-https"].rate / rows["nginx-https"].rate
        print(
            f"\nper-round ratios, TLS to the origin: {', '.join(f'{r:.2f}x' for r in ratios)}; "
            f"TLS at both ends: "
            + ", ".join(
                f"{r:.2f}x" for r in paired_ratios(rows["failover-https"], rows["nginx-https"])
            )
            + f" (median {https_ratio:.2f}x)"
        )
        ours_cost = statistics.median(cpu["failover"]) / statistics.median(cpu["failover-plain"])
        nginx_cost = statistics.median(cpu["nginx-proxy"]) / statistics.median(cpu["nginx-plain"])
        print(
            f"TLS to the origin, CPU per request against plain HTTP to it: failover "
            f"{ours_cost:.2f}x, nginx {nginx_cost:.2f}x"
        )
        print(
            "CPU/req: user + system CPU time of the proxy's processes per request (median over "
            "rounds); nginx/ours is nginx's CPU per request over ours, the req/s ratio one "
            "core each would give on an idle machine"
        )
        for name in trees:
            rates = paired_ratios(rows["failover"], rows[name])
            ours_cpu = statistics.median(cpu["failover"]) / statistics.median(cpu[name])
            print(
                f"this checkout against {name}: req/s per round "
                + ", ".join(f"{r:.2f}x" for r in rates)
                + f" (median {statistics.median(rates):.2f}x); CPU per request {ours_cpu:.2f}x"
            )
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
        check = Check(
            f"1 KiB req/s >= {MIN_RATIO}x nginx, both proxying the HTTPS origin",
            f"{small.rate:,.0f} vs {nginx_small.rate:,.0f} = {ratio:.2f}x "
            f"(median of per-round ratios {statistics.median(ratios):.2f}x)",
            ratio >= MIN_RATIO,
            [r >= MIN_RATIO for r in ratios],
        )
        print(f"target:\n  {check}")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="failover and nginx proxying the same HTTPS origin (see docstring)."
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per target")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 8 s per target")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="also measure failover from checkout DIR as NAME (TLS to the origin)",
    )
    args = parser.parse_args(argv)
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
