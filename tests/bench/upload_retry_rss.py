"""Memory benchmark: a 1 GiB upload through the proxy with retries on must not be buffered.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/upload_retry_rss.py            # 1 GiB per run
    python tests/bench/upload_retry_rss.py --mib 256  # a smaller upload

pytest does not collect it (its name does not start with `test_`).

It starts a FaultyOrigin in a subprocess and `python -m failover run` in another, both on
free loopback ports, with the default config plus `retry.max_buffered_body: 1048576`. Two runs:

  direct          the primary answers: the body streams through in one attempt
  after-refusal   the primary's port is closed (and its active checks off, so the proxy
                  still tries it): the connect failure sent nothing, so the proxy retries
                  on the secondary, which receives the whole body

The client sends the body over a plain socket with a Content-Length and checks the origin's
echo (length and sha256). While the upload runs the proxy's VmRSS is sampled every 0.2 s;
each run prints the RSS before, the peak, and MB/s (MB = 2^20 bytes). Every process started
here is stopped at the end, also on Ctrl-C or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
CHUNK = 256 * 1024

ORIGIN_SCRIPT = """
import asyncio, sys
from failover.faulty import FaultyOrigin

async def main() -> None:
    origin = FaultyOrigin(sys.argv[1], port=int(sys.argv[2]))
    await origin.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


@dataclass
class RssSampler:
    """Samples a process's VmRSS in a thread while the `with` block runs."""

    pid: int
    every: float = 0.2
    samples: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append(rss_kib(self.pid))
            self._stop.wait(self.every)

    @contextlib.contextmanager
    def running(self) -> Iterator[RssSampler]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.started):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.started.clear()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200; log:\n{log.read_text(errors='replace')[-2000:]}")


def proxy_config(port: int, primary: str, secondary: str, primary_checked: bool) -> str:
    primary_health = "" if primary_checked else ", health: {enabled: false}"
    return f"""
listen: {{host: 127.0.0.1, port: {port}}}
origins:
  - {{name: primary, url: "{primary}", priority: 0{primary_health}}}
  - {{name: secondary, url: "{secondary}", priority: 1}}
health: {{path: /health, interval: 1s}}
retry: {{max_buffered_body: 1048576}}
shutdown_timeout: 5
"""


def upload(port: int, size: int) -> tuple[float, dict[str, object], str]:
    """PUT `size` bytes to /upload; return seconds taken, the origin's echo and our sha256."""
    block = bytes(range(256)) * (CHUNK // 256)
    digest = hashlib.sha256()
    head = (
        f"PUT /upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {size}\r\n"
        "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        left = size
        while left:
            piece = block if left >= CHUNK else block[:left]
            sock.sendall(piece)
            digest.update(piece)
            left -= len(piece)
        response = bytearray()
        while data := sock.recv(65536):
            response += data
    elapsed = time.monotonic() - started
    head_bytes, _, body = bytes(response).partition(b"\r\n\r\n")
    status_line = head_bytes.split(b"\r\n")[0].decode()
    if " 200 " not in status_line + " ":
        raise RuntimeError(f"upload answered {status_line!r}: {body[:300]!r}")
    attempts = ""
    for line in head_bytes.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "x-failover-attempts":
            attempts = value.strip()
    echo = json.loads(body)
    echo["attempts"] = attempts
    return elapsed, echo, digest.hexdigest()


def run(name: str, workdir: Path, size: int, primary_refuses: bool) -> None:
    processes = Processes(workdir)
    try:
        ports = {"primary": free_port(), "secondary": free_port(), "proxy": free_port()}
        for origin in ("primary", "secondary"):
            if origin == "primary" and primary_refuses:
                continue  # nothing listens on its port
            process = processes.start(
                f"{name}-{origin}",
                [sys.executable, "-c", ORIGIN_SCRIPT, origin, str(ports[origin])],
            )
            wait_ready(
                f"http://127.0.0.1:{ports[origin]}/health",
                process,
                workdir / f"{name}-{origin}.log",
            )
        config = workdir / f"{name}.yaml"
        config.write_text(
            proxy_config(
                ports["proxy"],
                f"http://127.0.0.1:{ports['primary']}",
                f"http://127.0.0.1:{ports['secondary']}",
                primary_checked=not primary_refuses,
            )
        )
        argv = [sys.executable, "-m", "failover", "run", "--config", str(config)]
        proxy = processes.start(f"{name}-proxy", [*argv, "--log-level", "warning"])
        wait_ready(
            f"http://127.0.0.1:{ports['proxy']}/_failover/readyz",
            proxy,
            workdir / f"{name}-proxy.log",
        )
        before = rss_kib(proxy.pid)
        sampler = RssSampler(proxy.pid)
        with sampler.running():
            elapsed, echo, sha = upload(ports["proxy"], size)
        if echo["body_length"] != size or echo["body_sha256"] != sha:
            raise RuntimeError(f"the origin received {echo['body_length']} bytes, not {size}")
        peak = max([before, *sampler.samples])
        print(
            f"{name:14}  {size / MIB:7.0f} MiB in {elapsed:5.2f} s = "
            f"{size / MIB / elapsed:6.0f} MB/s   proxy RSS before {before / 1024:5.1f} MiB, "
            f"peak {peak / 1024:5.1f} MiB (+{(peak - before) / 1024:.1f})   "
            f"served by {echo['origin']}, attempts: {echo['attempts']}"
        )
    finally:
        processes.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="upload size in MiB (default 1024)")
    args = parser.parse_args()
    size = args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="failover-rss-") as tmp:
        workdir = Path(tmp)
        run("direct", workdir, size, primary_refuses=False)
        run("after-refusal", workdir, size, primary_refuses=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
