"""Instructions per request: the proxy's CPU cost counted, not timed.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/instructions.py --tree before=../base --tree after=.
    python tests/bench/instructions.py --tree after=. --requests 4000 --object /1m.bin
    python tests/bench/instructions.py --variant a="balance: weighted" \
        --variant b="balance: least-latency"
    python tests/bench/instructions.py --tree before=../base --tree after=. --origin-tls

Timed figures (req/s, CPU seconds per request) swing with whatever else the machine runs; the
number of instructions a process executes to serve a request does not. Each tree's proxy runs
under valgrind's callgrind with instrumentation off; after start-up and a warm-up, counting is
switched on (`callgrind_control -i on`, counters zeroed), a client in another process sends a
fixed number of keep-alive GETs over a few connections, and the counters are dumped. The
result is the proxy's instructions (user space: Python, uvloop, httptools, libc) divided by
the requests. Kernel work (the syscalls themselves) is not counted; compare.py's CPU per
request covers it.

With `--origin-tls` the origin is reached over HTTPS (nginx with a certificate from a test CA
made by trustme, as in tls.py; the proxy verifies it by `tls.server_name`), so the count
includes the proxy's TLS work on its pooled connections.

Needs /usr/sbin/nginx (the origin) and valgrind; never run by CI, not collected by pytest.
Under callgrind the proxy runs ~50x slower, so a few thousand requests take a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench.compare import failover_config  # a sibling script
from tests.bench.throughput import (  # a sibling script
    NGINX,
    OBJECTS,
    REPO,
    Processes,
    fetch,
    free_port,
    start_nginx,
    start_origin,
)
from tests.bench.tls import Certificates  # a sibling script
from tests.bench.tls import failover_config as tls_failover_config
from tests.bench.tls import origin_config as tls_origin_config
from tests.bench.tls import wait_ready as tls_wait_ready

VALGRIND = shutil.which("valgrind") or "/usr/bin/valgrind"
CONTROL = shutil.which("callgrind_control") or "/usr/bin/callgrind_control"


async def _client(port: int, path: str, count: int) -> None:
    """`count` keep-alive GETs of `path` on one connection; every answer must be a 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    try:
        for _ in range(count):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:80]!r}")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            if length is None:
                raise RuntimeError(f"no Content-Length in {head!r}")
            await reader.readexactly(int(length.group(1)))
    finally:
        writer.close()


def drive(port: int, path: str, requests: int, connections: int) -> None:
    async def run() -> None:
        share = requests // connections
        await asyncio.gather(*(_client(port, path, share) for _ in range(connections)))

    asyncio.run(run())


def start_bench_origin(
    procs: Processes, workdir: Path, origin_tls: bool
) -> tuple[int, Certificates | None]:
    """The nginx origin serving the benchmark objects from `workdir/www`, over HTTPS with a
    test CA's certificate if `origin_tls`; its port, and the certificates if any."""
    workdir.chmod(0o755)  # nginx workers run unprivileged when started as root
    www = workdir / "www"
    www.mkdir(mode=0o755)
    (www / "index.html").write_text("ok\n")
    for obj_path, size in OBJECTS.values():
        (www / obj_path.lstrip("/")).write_bytes(os.urandom(size))
    for item in www.iterdir():
        item.chmod(0o644)
    if not origin_tls:
        return start_origin(procs, workdir, www)[1], None
    certs = Certificates(workdir)
    origin_port = free_port()
    config = tls_origin_config(workdir / "origin", origin_port, free_port(), www, certs)
    origin = start_nginx(procs, workdir, "origin", config, origin_port)
    origin.url = f"https://127.0.0.1:{origin_port}"
    tls_wait_ready(origin, certs.ca_file)
    return origin_port, certs


def proxy_config(port: int, origin_port: int, certs: Certificates | None, overlay: str = "") -> str:
    """The proxy's config: one origin, over HTTPS when `certs` (the origin's test CA) is given."""
    if certs is None:
        return failover_config(port, origin_port, overlay)
    return tls_failover_config(port, origin_port, certs, False, True) + overlay


def control(pid: int, *args: str) -> None:
    subprocess.run([CONTROL, *args, str(pid)], check=True, capture_output=True, timeout=60)


def count(
    tree: Path,
    workdir: Path,
    name: str,
    origin_port: int,
    path: str,
    requests: int,
    connections: int,
    keep: Path | None = None,
    overlay: str = "",
    origin_tls: Certificates | None = None,
) -> float:
    """Instructions per request of the proxy from `tree` serving `path`."""
    port = free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(proxy_config(port, origin_port, origin_tls, overlay))
    out = workdir / f"{name}.callgrind"
    python = tree / ".venv" / "bin" / "python"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    argv = [
        VALGRIND,
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        str(python) if python.exists() else sys.executable,
        "-m",
        "failover",
        "run",
        "--config",
        str(config),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(argv, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if fetch(f"http://127.0.0.1:{port}/_failover/readyz", 10)[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {workdir / name}.log")
            time.sleep(0.5)
        drive(port, path, max(connections * 20, requests // 10), connections)  # warm-up
        control(process.pid, "-i", "on")
        control(process.pid, "-z")
        drive(port, path, requests, connections)
        control(process.pid, "-d")
        parts = sorted(workdir.glob(f"{name}.callgrind.*"))
        text = parts[-1].read_text()
        if keep is not None:  # for callgrind_annotate
            shutil.copy(parts[-1], keep / f"{name}.callgrind")
        for part in parts:
            part.unlink()
        match = re.search(r"^summary: (\d+)", text, re.M)
        if match is None:
            raise RuntimeError(f"no summary in the callgrind dump of {name}")
        return int(match.group(1)) / (requests // connections * connections)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per request, per tree.")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="a checkout to measure (default: this one, as 'this')",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=YAML",
        help="config keys laid over the one-origin config for NAME (as in compare.py); a "
        "variant without a --tree runs from this checkout",
    )
    parser.add_argument("--object", default="/1k.bin", choices=[p for p, _ in OBJECTS.values()])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="runs per tree (alternating)")
    parser.add_argument(
        "--origin-tls", action="store_true", help="reach the origin over HTTPS (as tls.py does)"
    )
    parser.add_argument(
        "--keep", type=Path, help="copy each counted dump here (for callgrind_annotate)"
    )
    args = parser.parse_args(argv)
    for tool in (NGINX, VALGRIND, CONTROL):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing; this benchmark needs nginx and valgrind")
    trees = dict(item.split("=", 1) for item in args.tree)
    overlays = dict(item.split("=", 1) for item in args.variant)
    for name in overlays:
        trees.setdefault(name, str(REPO))
    trees = trees or {"this": str(REPO)}
    workdir = Path(tempfile.mkdtemp(prefix="failover-instructions-"))
    procs = Processes(workdir)
    try:
        origin_port, certs = start_bench_origin(procs, workdir, args.origin_tls)
        print(
            f"instructions per request: {args.requests} GETs of {args.object} over "
            f"{args.connections} keep-alive connections, under callgrind"
            + (", origin over HTTPS" if certs is not None else ""),
            flush=True,
        )
        results: dict[str, list[float]] = {name: [] for name in trees}
        for index in range(args.rounds):
            order = list(trees) if index % 2 == 0 else list(trees)[::-1]
            for name in order:
                value = count(
                    Path(trees[name]).resolve(),
                    workdir,
                    f"{name}-{index}",
                    origin_port,
                    args.object,
                    args.requests,
                    args.connections,
                    args.keep,
                    overlays.get(name, ""),
                    certs,
                )
                results[name].append(value)
                print(f"  round {index + 1}: {name:>10} {value:,.0f}", flush=True)
        first = statistics.median(next(iter(results.values())))
        for name, values in results.items():
            median = statistics.median(values)
            print(f"{name:>10}: {median:,.0f} instructions/request ({median / first:.3f}x)")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
