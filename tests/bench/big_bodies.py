"""Large-body benchmark: 1 GiB down and 1 GiB up through the proxy, with its memory use.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/big_bodies.py                 # 1 GiB each way
    python tests/bench/big_bodies.py --size 64MiB    # a quick run

It starts, each on a free port on 127.0.0.1 and each in its own process:

  origin     a FaultyOrigin (failover.faulty) in mode ok
  failover   `python -m failover run --config <temporary yaml> --port P`, one worker

then downloads `/bytes/{size}` and uploads `size` bytes to `/upload` (streamed from a
generator, chunked) through the proxy, checks length and sha256 of each, and samples the
proxy's resident memory (VmRSS from /proc/<pid>/status) every 0.2 s during each transfer.
It prints the proxy's RSS before and its peak during each transfer, and the throughput in
MB/s (10^6 bytes per second), next to the same transfers straight to the origin for scale.
pytest does not collect it (its name does not start with `test_`). Every process started
here is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from failover.faulty import PATTERN_PERIOD, FaultyOrigin  # noqa: E402

SAMPLE_EVERY = 0.2
BLOCK = 1024 * 1024
_SIZE = re.compile(r"^(\d+)\s*(|k|m|g)i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1GiB or 64MiB")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """The process's resident set size, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def pattern_sha256(size: int) -> str:
    """sha256 of the origin's byte pattern (byte i is i % 251), computed independently."""
    block = bytes(range(PATTERN_PERIOD)) * (BLOCK // PATTERN_PERIOD)  # period-aligned
    digest = hashlib.sha256()
    full, rest = divmod(size, len(block))
    for _ in range(full):
        digest.update(block)
    digest.update(block[:rest])
    return digest.hexdigest()


def run_origin(port: int) -> None:
    """The origin process: a FaultyOrigin serving until it is terminated."""

    async def serve() -> None:
        origin = FaultyOrigin("origin", port=port)
        await origin.start()
        await asyncio.get_running_loop().create_future()

    asyncio.run(serve())


@dataclass
class Transfer:
    name: str
    size: int
    seconds: float
    peak_rss: int

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


async def sampled(pid: int, work: Callable[[], Awaitable[None]]) -> tuple[float, int]:
    """Run `work` while sampling the proxy's RSS; return seconds taken and peak RSS."""
    peak = rss_bytes(pid)
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    try:
        await work()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        await sampler
    return seconds, max(peak, rss_bytes(pid))


async def wait_ready(
    session: aiohttp.ClientSession, url: str, proxy: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {proxy.returncode}")
        try:
            async with session.get(url) as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within 20 s")


async def download(session: aiohttp.ClientSession, base: str, size: int, pid: int) -> Transfer:
    expected = pattern_sha256(size)
    digest = hashlib.sha256()
    received = 0

    async def work() -> None:
        nonlocal received
        async with session.get(f"{base}/bytes/{size}") as response:
            if response.status != 200:
                raise RuntimeError(f"download answered {response.status}")
            async for chunk in response.content.iter_any():
                digest.update(chunk)
                received += len(chunk)

    seconds, peak = await sampled(pid, work)
    if received != size or digest.hexdigest() != expected:
        raise RuntimeError(f"download: got {received} bytes, sha256 {digest.hexdigest()}")
    return Transfer("download", size, seconds, peak)


async def upload(session: aiohttp.ClientSession, base: str, size: int, pid: int) -> Transfer:
    block = os.urandom(BLOCK)
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            digest.update(chunk)
            left -= len(chunk)
            yield chunk

    answer: dict[str, Any] = {}

    async def work() -> None:
        async with session.post(f"{base}/upload", data=body()) as response:
            if response.status != 200:
                raise RuntimeError(f"upload answered {response.status}")
            answer.update(await response.json())

    seconds, peak = await sampled(pid, work)
    if answer.get("body_length") != size or answer.get("body_sha256") != digest.hexdigest():
        raise RuntimeError(f"upload: origin saw {answer.get('body_length')} bytes")
    return Transfer("upload", size, seconds, peak)


async def bench(
    size: int, origin_port: int, proxy_port: int, proxy: subprocess.Popen[bytes]
) -> None:
    base = f"http://127.0.0.1:{proxy_port}"
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        await wait_ready(session, f"{base}/_failover/readyz", proxy)
        # Warm up the pools and the code paths before the baseline reading.
        async with session.get(f"{base}/bytes/{BLOCK}") as response:
            await response.read()
        before = rss_bytes(proxy.pid)
        transfers = [
            await download(session, base, size, proxy.pid),
            await upload(session, base, size, proxy.pid),
        ]
        # The same transfers straight to the origin, for scale.
        origin = f"http://127.0.0.1:{origin_port}"
        direct = [
            await download(session, origin, size, proxy.pid),
            await upload(session, origin, size, proxy.pid),
        ]
    mib = 2**20
    for transfer in direct:
        print(f"{transfer.name:8}  origin direct: {transfer.mb_per_s:.0f} MB/s")
    print(f"proxy RSS before: {before / mib:.1f} MiB")
    for transfer in transfers:
        print(
            f"{transfer.name:8}  {transfer.size / mib:.0f} MiB in {transfer.seconds:.2f} s"
            f" = {transfer.mb_per_s:.0f} MB/s; proxy peak RSS {transfer.peak_rss / mib:.1f} MiB"
            f" (+{(transfer.peak_rss - before) / mib:.1f} MiB); length and sha256 ok"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=2**30, help="default 1GiB")
    args = parser.parse_args()

    origin_port, proxy_port = free_port(), free_port()
    origin = multiprocessing.get_context("spawn").Process(
        target=run_origin, args=(origin_port,), daemon=True
    )
    origin.start()
    proxy: subprocess.Popen[bytes] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "failover.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "origins": [
                        {"name": "origin", "url": f"http://127.0.0.1:{origin_port}", "priority": 0}
                    ],
                    "health": {"path": "/health", "interval": 1},
                }
            )
        )
        try:
            proxy = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "failover",
                    "run",
                    "--config",
                    str(config),
                    "--port",
                    str(proxy_port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
            )
            asyncio.run(bench(args.size, origin_port, proxy_port, proxy))
        except KeyboardInterrupt:
            return 130
        finally:
            if proxy is not None:
                proxy.terminate()
                try:
                    proxy.wait(10)
                except subprocess.TimeoutExpired:
                    proxy.kill()
                    proxy.wait()
            origin.terminate()
            origin.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
