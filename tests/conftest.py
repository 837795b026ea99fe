"""Shared fixtures: real origins and the real proxy on free loopback ports, and raw-socket
origins that decide every byte they send."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn

from failover.app import App
from failover.cli import uvicorn_config
from failover.config import build_settings
from failover.faulty import FaultyOrigin


@dataclass
class RunningProxy:
    app: App
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    client: httpx.AsyncClient = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> Any:
        return self.app.engine

    async def stop(self) -> None:
        await self.client.aclose()
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, every: float = 0.02
) -> None:
    """Poll `condition` until it holds; fail with a clear message at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        outcome = condition()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


def origin_config(
    name: str, origin: FaultyOrigin | str, priority: int, **extra: Any
) -> dict[str, Any]:
    url = origin if isinstance(origin, str) else origin.url
    return {"name": name, "url": url, "priority": priority, **extra}


def proxy_config(*origins: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A config for tests: fast probes, short timeouts, no hold-down unless asked."""
    config: dict[str, Any] = {
        "origins": list(origins),
        "health": {"path": "/health", "interval": 0.2, "timeout": 0.5, "startup_grace": 2},
        "failback": {"hold_down": 0},
        "timeouts": {"connect": 1.0, "first_byte": 2.0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
async def make_origin() -> AsyncIterator[Callable[..., Awaitable[FaultyOrigin]]]:
    started: list[FaultyOrigin] = []

    async def make(name: str, **kwargs: Any) -> FaultyOrigin:
        origin = FaultyOrigin(name, **kwargs)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[..., Awaitable[RunningProxy]]]:
    running: list[RunningProxy] = []

    async def make(config: dict[str, Any], **app_kwargs: Any) -> RunningProxy:
        settings = build_settings(config)
        app = App(settings, **app_kwargs)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        options = uvicorn_config(settings, app, log_level="warning")
        options.update(host="127.0.0.1", port=sock.getsockname()[1], loop="asyncio")
        server = uvicorn.Server(uvicorn.Config(**options))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await wait_for(lambda: server.started or task.done(), timeout=10)
        if task.done():
            task.result()
        proxy = RunningProxy(app, server, task, sock.getsockname()[1])
        proxy.client = httpx.AsyncClient(base_url=proxy.url, timeout=10)
        running.append(proxy)
        return proxy

    yield make
    for proxy in running:
        await proxy.stop()


# -- raw-socket origins, for origins that misbehave at the byte level ------------------------


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawOrigin"], Awaitable[None]]


@dataclass
class RawOrigin:
    """An origin that runs `script` on each connection: it decides every byte."""

    script: Script
    port: int = 0
    connections: int = 0
    open: int = 0
    requests: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            await self.script(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request head (the body is read by the script if it wants it)."""
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


@pytest.fixture
async def raw_origin() -> AsyncIterator[Callable[[Script], Awaitable[RawOrigin]]]:
    started: list[RawOrigin] = []

    async def make(script: Script) -> RawOrigin:
        origin = RawOrigin(script)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()
