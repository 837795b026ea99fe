"""WebSockets through failover, through nginx, and through a message-level relay, same run.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/websocket.py                    # 1,000 idle sockets; 5 rounds of 5 s
    python tests/bench/websocket.py --idle 2000 --rounds 3 --duration 3

It starts, each on a free port on 127.0.0.1:

  origin          a lean WebSocket echo server (this script, `--serve-origin`, uvloop)
  failover        `python -m failover run`, one worker, one origin
  nginx-proxy     nginx, 1 worker, proxy_pass with the Upgrade and Connection headers set
  message-relay   the other design, measured: a `websockets` server that opens a `websockets`
                  client connection to the origin per client and relays message by message
                  (this script, `--serve-relay`, uvloop); uvicorn's WebSocket support is the
                  same library's protocol, so a relay built on it costs at least this much

and measures, for each proxy:

  idle            `--idle` WebSockets opened and held at once; the proxy's RSS before and
                  after, printed per socket (nginx: its worker's RSS);
  echo            `--clients` connections each sending a 64-byte text message and waiting
                  for its echo, for `--duration` seconds; messages/s. Rounds interleave the
                  proxies (the order rotates); medians over rounds, and the ratio to
                  nginx-proxy in each round with its median; and the proxy process's CPU
                  time per echoed message (request and echo), which is what tells the proxies
                  apart when the origin or the load generator is what limits messages/s.

The load generator is raw sockets (pre-built masked frames) so that it is not what limits
the figures. Needs /usr/sbin/nginx; never run by CI, not collected by pytest.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import resource
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from tests.bench.throughput import (  # a sibling script
    NGINX,
    Processes,
    Service,
    free_port,
    nginx_config,
    rss_kib,
    start_failover,
    start_nginx,
    wait_ready,
)

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MESSAGE = b"x" * 64
PROXIES = ("failover", "nginx-proxy", "message-relay")


# -- the origin: a lean echo server ---------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    """Answers /health with 200, upgrades anything else, echoes every data frame."""

    def __init__(self) -> None:
        self.buffer = b""
        self.upgraded = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
            headers = {}
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "sec-websocket-key" not in headers:
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                )
                self.transport.close()
                return
            accept = base64.b64encode(
                hashlib.sha1(headers["sec-websocket-key"].encode() + GUID).digest()
            )
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.upgraded = True
        out = []
        buffer = self.buffer
        pos = 0
        while len(buffer) - pos >= 6:
            first, second = buffer[pos], buffer[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                length = int.from_bytes(buffer[start : start + 2], "big")
                start += 2
            elif length == 127:
                length = int.from_bytes(buffer[start : start + 8], "big")
                start += 8
            end = start + 4 + length
            if len(buffer) < end:
                break
            key = buffer[start : start + 4]
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(buffer[start + 4 : end]))
            if first & 0x0F == 8:
                self.transport.write(bytes((0x88, len(payload))) + payload)
                self.transport.close()
                return
            out.append(_server_frame(first, payload))
            pos = end
        self.buffer = buffer[pos:]
        if out:
            self.transport.write(b"".join(out))


def _server_frame(first: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


async def serve_origin(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", port, backlog=4096)
    await server.serve_forever()


# -- the message-level relay ----------------------------------------------------------------


async def serve_relay(port: int, origin_port: int) -> None:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def relay(client: ServerConnection) -> None:
        url = f"ws://127.0.0.1:{origin_port}{client.request.path if client.request else '/'}"
        async with connect(
            url, compression=None, ping_interval=None, max_size=None, user_agent_header=None
        ) as origin:

            async def pump(source: object, sink: object) -> None:
                with __import__("contextlib").suppress(ConnectionClosed):
                    async for message in source:  # type: ignore[attr-defined]
                        await sink.send(message)  # type: ignore[attr-defined]
                await sink.close()  # type: ignore[attr-defined]

            await asyncio.gather(pump(client, origin), pump(origin, client))

    async with serve(
        relay, "127.0.0.1", port, compression=None, ping_interval=None, max_size=None
    ) as server:
        await server.serve_forever()


# -- the load -------------------------------------------------------------------------------


def _masked(payload: bytes) -> bytes:
    key = b"\x11\x22\x33\x44"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + key + body


FRAME = _masked(MESSAGE)
ECHO = bytes((0x81, len(MESSAGE))) + MESSAGE


class Client(asyncio.Protocol):
    def __init__(self, host: str) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.pending = 0
        self.echoes = 0
        self.running = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        key = base64.b64encode(os.urandom(16))
        transport.write(  # type: ignore[attr-defined]
            b"GET /echo HTTP/1.1\r\nHost: " + self.host.encode() + b"\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: "
            + key
            + b"\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        if not self.upgraded.done():
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(RuntimeError(self.buffer[:200].decode()))
                return
            self.buffer = self.buffer[end + 4 :]
            self.upgraded.set_result(None)
            return
        self.buffer += data
        size = len(ECHO)
        while len(self.buffer) >= size:
            self.buffer = self.buffer[size:]
            self.echoes += 1
            if self.running and self.transport is not None:
                self.transport.write(FRAME)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed before the 101"))


async def open_clients(port: int, count: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    clients: list[Client] = []

    async def one() -> None:
        _, client = await loop.create_connection(
            lambda: Client(f"127.0.0.1:{port}"), "127.0.0.1", port
        )
        await asyncio.wait_for(client.upgraded, 10)
        clients.append(client)

    for start in range(0, count, 100):  # in batches, so that no accept queue overflows
        await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return clients


def close_clients(clients: list[Client]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def echo_rate(port: int, pid: int, connections: int, duration: float) -> tuple[float, float]:
    """Messages/s, and the proxy's CPU microseconds per message."""
    clients = await open_clients(port, connections)
    for client in clients:
        client.running = True
        assert client.transport is not None
        client.transport.write(FRAME)
    await asyncio.sleep(duration / 5)  # warm-up
    before = sum(c.echoes for c in clients)
    cpu_before = cpu_seconds(pid)
    await asyncio.sleep(duration)
    after = sum(c.echoes for c in clients)
    cpu = cpu_seconds(pid) - cpu_before
    for client in clients:
        client.running = False
    close_clients(clients)
    await asyncio.sleep(0.3)
    return (after - before) / duration, cpu * 1e6 / max(1, after - before)


def worker_pid(service: Service) -> int:
    """nginx's worker (the master's child); the process itself for the others."""
    if service.name != "nginx-proxy":
        return service.process.pid
    children = Path(f"/proc/{service.process.pid}/task/{service.process.pid}/children")
    return int(children.read_text().split()[0])


async def idle_cost(service: Service, port: int, count: int) -> float:
    """KiB of the proxy's RSS per idle WebSocket, with `count` open at once."""
    pid = worker_pid(service)
    before = rss_kib(pid)
    clients = await open_clients(port, count)
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    close_clients(clients)
    await asyncio.sleep(1.0)
    return (after - before) / count


# -- the run --------------------------------------------------------------------------------


def nginx_ws_config(prefix: Path, port: int, origin_port: int) -> str:
    server = f"""server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{origin_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
        }}
        location = /health {{ return 200 "ok\\n"; }}
    }}"""
    return nginx_config(prefix, server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--serve-origin", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-relay", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop

    if args.serve_origin:
        uvloop.run(serve_origin(args.serve_origin))
        return
    if args.serve_relay:
        uvloop.run(serve_relay(*args.serve_relay))
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="ws-bench-") as tmp:
        workdir = Path(tmp)
        procs = Processes(workdir)
        try:
            uvloop.run(run(procs, workdir, args))
        finally:
            procs.stop_all()


SCRIPT = str(Path(__file__).resolve())


async def run(procs: Processes, workdir: Path, args: argparse.Namespace) -> None:
    me = [sys.executable, SCRIPT]
    origin_port = free_port()
    origin = procs.start(
        "origin", f"http://127.0.0.1:{origin_port}", [*me, "--serve-origin", str(origin_port)]
    )
    wait_ready(origin, "/health")
    ports: dict[str, int] = {name: free_port() for name in PROXIES}
    services: dict[str, Service] = {}
    config = f"""
listen: {{host: 127.0.0.1, port: {ports["failover"]}}}
origins:
  - {{name: origin, url: "http://127.0.0.1:{origin_port}"}}
health: {{path: /health}}
shutdown_timeout: 5
"""
    services["failover"] = start_failover(procs, workdir, "failover", config, ports["failover"])
    nginx = nginx_ws_config(workdir / "nginx-proxy", ports["nginx-proxy"], origin_port)
    services["nginx-proxy"] = start_nginx(
        procs, workdir, "nginx-proxy", nginx, ports["nginx-proxy"]
    )
    services["message-relay"] = procs.start(
        "message-relay",
        f"http://127.0.0.1:{ports['message-relay']}",
        [*me, "--serve-relay", str(ports["message-relay"]), str(origin_port)],
    )
    wait_ready(services["failover"], "/_failover/readyz")
    wait_ready(services["nginx-proxy"], "/health")
    for _ in range(100):  # the relay answers no plain GET: wait until a socket opens
        try:
            close_clients(await open_clients(ports["message-relay"], 1))
            break
        except OSError:
            await asyncio.sleep(0.1)

    print(f"Idle WebSockets: {args.idle} open at once through each proxy")
    for name in PROXIES:
        per_socket = await idle_cost(services[name], ports[name], args.idle)
        print(f"  {name:14} {per_socket:7.1f} KiB RSS per socket")

    rates: dict[str, list[float]] = {name: [] for name in PROXIES}
    cpu: dict[str, list[float]] = {name: [] for name in PROXIES}
    for index in range(args.rounds):
        order = list(PROXIES[index % 3 :] + PROXIES[: index % 3])
        for name in order:
            pid = worker_pid(services[name])
            rate, micros = await echo_rate(ports[name], pid, args.clients, args.duration)
            rates[name].append(rate)
            cpu[name].append(micros)
    print(
        f"\nEcho, {args.clients} connections, 64-byte messages, {args.rounds} rounds of "
        f"{args.duration:g} s (median; ratio to nginx-proxy per round, median):"
    )
    for name in PROXIES:
        ratios = [a / b for a, b in zip(rates[name], rates["nginx-proxy"], strict=True)]
        print(
            f"  {name:14} {statistics.median(rates[name]):9,.0f} messages/s   "
            f"{statistics.median(cpu[name]):5.1f} µs proxy CPU/message   "
            f"ratio {statistics.median(ratios):.2f}  (rounds: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + ")"
        )


if __name__ == "__main__":
    if not Path(NGINX).exists():
        sys.exit(f"{NGINX} is needed")
    main()
