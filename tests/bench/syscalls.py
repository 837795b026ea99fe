"""System calls per request: what the proxy asks of the kernel, counted with strace.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/syscalls.py --tree before=../base --tree after=.
    python tests/bench/syscalls.py --tree after=. --origin-tls --requests 8000

Each checkout's proxy (`python -m failover run`, one worker) serves the 1 KiB object from an
nginx origin (over HTTPS with `--origin-tls`, as in tls.py). After a warm-up, `strace -c -f`
is attached to it while a client in this process sends a fixed number of keep-alive GETs over
a few connections; the counts of each system call, divided by the requests, are printed side
by side. Like instructions.py it counts instead of timing, so it does not move with the
machine's load; it shows what the instruction count leaves out (the kernel's share: every
write is a trip through the TCP stack, every getpid() a trip into the kernel).

Needs /usr/sbin/nginx and strace (`apt-get install -y strace`); never run by CI, not collected
by pytest. strace slows the proxy down several times while it is attached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench.instructions import drive, proxy_config, start_bench_origin
from tests.bench.throughput import (  # a sibling script
    NGINX,
    REPO,
    Processes,
    free_port,
    start_failover,
    wait_ready,
)

STRACE = shutil.which("strace") or "/usr/bin/strace"
PATH = "/1k.bin"


def parse(summary: str, requests: int) -> dict[str, float]:
    """strace -c's table as {syscall: calls per request}."""
    counts: dict[str, float] = {}
    for line in summary.splitlines():
        parts = line.split()
        # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3]) / requests
    return counts


def count(
    procs: Processes,
    workdir: Path,
    name: str,
    tree: Path,
    config: str,
    port: int,
    requests: int,
    connections: int,
) -> dict[str, float]:
    """Calls per request of the proxy from `tree` (its listener is plain HTTP on `port`)."""
    service = start_failover(procs, workdir, name, config, port, tree)
    wait_ready(service, "/_failover/readyz")
    drive(port, PATH, max(connections * 20, requests // 10), connections)  # warm-up
    out = Path(tempfile.mkdtemp(prefix="failover-strace-")) / f"{name}.txt"
    strace = subprocess.Popen(
        [STRACE, "-c", "-f", "-o", str(out), "-p", str(service.process.pid)],
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # strace attaches to every thread
        drive(port, PATH, requests, connections)
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(30)
    text = out.read_text()
    shutil.rmtree(out.parent, ignore_errors=True)
    service.process.terminate()
    return parse(text, requests // connections * connections)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="System calls per request, per tree.")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkout to measure (default: this one, as 'this')",
    )
    parser.add_argument("--origin-tls", action="store_true", help="reach the origin over HTTPS")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    for tool in (NGINX, STRACE):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing; this benchmark needs nginx and strace")
    trees = dict(item.split("=", 1) for item in args.tree) or {"this": str(REPO)}
    workdir = Path(tempfile.mkdtemp(prefix="failover-syscalls-"))
    procs = Processes(workdir)
    try:
        origin_port, certs = start_bench_origin(procs, workdir, args.origin_tls)
        print(
            f"system calls per request: {args.requests} GETs of {PATH} over {args.connections} "
            f"keep-alive connections, under strace -c -f"
            + (", origin over HTTPS" if certs is not None else ""),
            flush=True,
        )
        results: dict[str, dict[str, float]] = {}
        for name, folder in trees.items():
            port = free_port()
            results[name] = count(
                procs,
                workdir,
                name,
                Path(folder).resolve(),
                proxy_config(port, origin_port, certs),
                port,
                args.requests,
                args.connections,
            )
        names = sorted({call for counts in results.values() for call in counts})
        shown = [c for c in names if any(r.get(c, 0) >= 0.01 for r in results.values())]
        print(f"{'syscall':<16}" + "".join(f"{name:>12}" for name in results))
        for call in shown:
            print(f"{call:<16}" + "".join(f"{r.get(call, 0):>12.2f}" for r in results.values()))
        print(f"{'total':<16}" + "".join(f"{sum(r.values()):>12.2f}" for r in results.values()))
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
