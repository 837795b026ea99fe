"""What the listener's limits cost per request, against uvicorn's own httptools protocol.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/listener_overhead.py             # 21 alternating rounds (~20 s)
    python tests/bench/listener_overhead.py --rounds 9

Never run by CI; pytest does not collect it. In process, on uvloop, with a transport that
only counts writes: each protocol gets the same keep-alive GET (as wrk sends it) 30,000 times
and an app that answers with a start and a body message, as the proxy does. Rounds alternate
between the two protocols; the CPU time per request (time.process_time) is printed as the
median and the minimum over rounds, and their differences. The difference is what the limits
add to every request; everything else on the data path is the same code.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from failover.config import LimitsConfig
from failover.listener import HttpProtocolFactory

REQUEST = b"GET /1k.bin HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
REQUESTS = 30_000


class CountingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


async def per_request(make: Callable[..., Any]) -> float:
    """CPU microseconds per request through the protocol that `make` builds."""
    config = Config(app=app, lifespan="off", log_config=None, access_log=False)
    config.load()
    loop = asyncio.get_running_loop()
    state = ServerState()
    protocol = make(config=config, server_state=state, app_state={}, _loop=loop)
    transport = CountingTransport()
    protocol.connection_made(transport)
    started = time.process_time()
    for _ in range(REQUESTS):
        protocol.data_received(REQUEST)
        await asyncio.gather(*state.tasks)  # the app's task: its response is complete
    used = time.process_time() - started
    protocol.connection_lost(None)
    if transport.writes != 2 * REQUESTS:
        raise RuntimeError(f"expected {2 * REQUESTS} writes, got {transport.writes}")
    return used / REQUESTS * 1e6


async def benchmark(rounds: int) -> None:
    protocols: dict[str, Callable[..., Any]] = {
        "uvicorn": HttpToolsProtocol,
        "listener": HttpProtocolFactory(LimitsConfig()),
    }
    results: dict[str, list[float]] = {name: [] for name in protocols}
    for index in range(rounds):
        order = list(protocols) if index % 2 == 0 else list(reversed(protocols))
        for name in order:
            results[name].append(await per_request(protocols[name]))
    for name, values in results.items():
        print(
            f"{name:<9} median {statistics.median(values):6.2f} us/request, "
            f"min {min(values):6.2f} us/request"
        )
    median = statistics.median(results["listener"]) - statistics.median(results["uvicorn"])
    least = min(results["listener"]) - min(results["uvicorn"])
    print(f"listener - uvicorn: median {median:+.2f} us/request, min {least:+.2f} us/request")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The listener's cost per request.")
    parser.add_argument("--rounds", type=int, default=21, help="alternating rounds (default 21)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: {args.rounds} is not a positive number")
    uvloop.run(benchmark(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
