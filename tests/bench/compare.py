"""Two failover configs, or two checkouts, side by side.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/compare.py --variant metrics-on="metrics: {enabled: true}" \
        --variant metrics-off='metrics: {enabled: false}'      # 5 rounds of 5 s (~4 min)
    python tests/bench/compare.py --tree before=../base --tree after=.   # code before/after
    python tests/bench/compare.py --rounds 3 --duration 3 ...
    python tests/bench/compare.py --routes 1000   # one route against 1,000 routes

A variant is NAME=YAML: top-level config keys laid over a minimal config (one origin, the
defaults for everything else). `--tree NAME=DIR` runs variant NAME from another checkout (its
own .venv/bin/python when it has one); trees alone compare the code with the same config.
Needs /usr/sbin/nginx and /usr/bin/wrk; never run by CI, not collected by pytest.

It starts, each on a free port on 127.0.0.1 (helpers shared with throughput.py):

  origin          nginx, 1 worker, keep-alive, serving a 1 KiB and a 1 MiB file
  A, B            `python -m failover run`, one worker each, with the two variants
  nginx-proxy     nginx, 1 worker, proxy_pass with `keepalive 64` (the reference)

then runs `wrk -t1 -c32 --latency` against each for both objects in interleaved rounds: the
order of the units rotates each round, and A and B always run back to back (their order
alternating), so the B/A ratio of each round compares like with like. It prints the medians
over rounds of req/s, p50, p99 and MB/s, the ratio to nginx-proxy, and the per-round B/A
ratios with their median.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench.throughput import (  # a sibling script
    NGINX,
    OBJECTS,
    REPO,
    WRK,
    Processes,
    Row,
    Service,
    free_port,
    paired_ratios,
    print_table,
    run_wrk,
    start_failover,
    start_nginx_proxy,
    start_origin,
    verify,
    wait_ready,
)


def failover_config(port: int, origin_port: int, overlay: str) -> str:
    """One origin and the defaults, with `overlay` laid over. An overlay with its own
    top-level `pools:` replaces the origin; it names the origin's URL as `{origin}`."""
    origin = f"http://127.0.0.1:{origin_port}"
    if re.search(r"^pools:", overlay, re.M):
        return f"""
listen: {{host: 127.0.0.1, port: {port}}}
shutdown_timeout: 5
{overlay.replace("{origin}", origin)}
"""
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
origins:
  - {{name: origin, url: "{origin}"}}
shutdown_timeout: 5
{overlay}
"""


def routes_variants(count: int) -> dict[str, str]:
    """Two configs that differ only in the routes in front of the catch-all: one, and
    `count` (a third each exact hosts, wildcards and path prefixes of other sites)."""
    pools = 'pools:\n  site: {origins: [{name: origin, url: "{origin}"}]}\n'
    many = ["routes:"]
    for index in range(count - 1):
        kind = index % 3
        if kind == 0:
            many.append(f"  - {{host: www{index}.example.com, pool: site}}")
        elif kind == 1:
            many.append(f'  - {{host: "*.site{index}.example.com", pool: site}}')
        else:
            many.append(f"  - {{host: api.example.com, path: /v{index}/, pool: site}}")
    many.append("  - {pool: site}")
    return {
        "one-route": pools + "routes:\n  - {pool: site}\n",
        f"{count}-routes": pools + "\n".join(many) + "\n",
    }


def round_order(index: int, variants: Sequence[str]) -> list[str]:
    units: list[tuple[str, ...]] = [("origin",), tuple(variants), ("nginx-proxy",)]
    shift = index % len(units)
    units = units[shift:] + units[:shift]
    return [t for unit in units for t in (unit if index % 2 == 0 else unit[::-1])]


def start_all(
    procs: Processes,
    workdir: Path,
    www: Path,
    variants: dict[str, str],
    trees: dict[str, Path],
) -> dict[str, Service]:
    origin, origin_port = start_origin(procs, workdir, www)
    services = {"origin": origin}
    for name, overlay in variants.items():
        port = free_port()
        config = failover_config(port, origin_port, overlay)
        tree = trees.get(name, REPO)
        services[name] = start_failover(procs, workdir, name, config, port, tree)
    services["nginx-proxy"] = start_nginx_proxy(procs, workdir, origin_port)
    for name, service in services.items():
        wait_ready(service, "/_failover/readyz" if name in variants else "/1k.bin")
        verify(service, www)
    return services


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def report(
    rows: dict[tuple[str, str], Row],
    targets: list[str],
    a: str,
    b: str,
    cpu: dict[tuple[str, str], list[float]],
) -> None:
    print_table(rows, targets)
    for obj in OBJECTS:
        pairs = paired_ratios(rows[(b, obj)], rows[(a, obj)])
        print(
            f"{b} / {a}, {obj}, per round (back to back): "
            f"{', '.join(f'{p:.2f}x' for p in pairs)}; median {statistics.median(pairs):.2f}x"
        )
    # CPU time per request depends far less on what else the machine runs than req/s does.
    for obj in OBJECTS:
        per_a, per_b = cpu[(a, obj)], cpu[(b, obj)]
        ratios = [y / x for x, y in zip(per_a, per_b, strict=True)]
        print(
            f"CPU per request, {obj}: {a} {statistics.median(per_a):.1f} us, "
            f"{b} {statistics.median(per_b):.1f} us; {b} / {a} per round: "
            f"{', '.join(f'{r:.2f}x' for r in ratios)}; median {statistics.median(ratios):.2f}x"
        )
    print()


def benchmark(
    rounds: int, duration: float, variants: dict[str, str], trees: dict[str, Path]
) -> None:
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing; this benchmark needs nginx and wrk")
    workdir = Path(tempfile.mkdtemp(prefix="failover-clients-"))
    procs = Processes(workdir)
    try:
        workdir.chmod(0o755)  # nginx workers run unprivileged when started as root
        www = workdir / "www"
        www.mkdir(mode=0o755)
        (www / "index.html").write_text("ok\n")
        for path, size in OBJECTS.values():
            (www / path.lstrip("/")).write_bytes(os.urandom(size))
        for item in www.iterdir():
            item.chmod(0o644)
        print(
            f"failover A/B: {rounds} round(s) of wrk -t1 -c32 -d{duration:g}s per target "
            f"and object; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        services = start_all(procs, workdir, www, variants, trees)
        targets = list(services)
        rows = {(t, o): Row(t, o) for t in targets for o in OBJECTS}
        cpu: dict[tuple[str, str], list[float]] = {(v, o): [] for v in variants for o in OBJECTS}
        for service in services.values():  # warm pools and caches, unmeasured
            for path, _ in OBJECTS.values():
                run_wrk(service.url + path, 1)
        for index in range(rounds):
            order = round_order(index, list(variants))
            print(f"round {index + 1}/{rounds}: {', '.join(order)}", flush=True)
            for obj, (path, _) in OBJECTS.items():
                for target in order:
                    pid = services[target].process.pid
                    before = cpu_seconds(pid)
                    result = run_wrk(services[target].url + path, duration)
                    rows[(target, obj)].results.append(result)
                    if target in variants:
                        used = cpu_seconds(pid) - before
                        requests = result.requests_per_s * duration
                        cpu[(target, obj)].append(used / max(requests, 1) * 1e6)
        print()
        a, b = variants
        report(rows, targets, a, b, cpu)
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Two failover configs side by side.")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="a config overlay per variant; two variants in all",
    )
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="run variant NAME from the checkout DIR (default: this one)",
    )
    parser.add_argument(
        "--routes",
        type=int,
        metavar="N",
        help="compare one catch-all route with N routes (exact, wildcard and path) in front",
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration positive")
    trees = {name: Path(path).resolve() for name, path in (t.split("=", 1) for t in args.tree)}
    variants = dict(item.partition("=")[::2] for item in args.variant)
    for name in trees:
        variants.setdefault(name, "")
    if args.routes:
        variants.update(routes_variants(args.routes))
    if len(variants) != 2 or "" in variants:
        parser.error("name two variants in all (--variant NAME=YAML or --tree NAME=DIR)")
    try:
        benchmark(args.rounds, args.duration, variants, trees)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        return 130
    except RuntimeError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
