"""The only module that speaks HTTP to origins.

One keep-alive pool per origin, of the client `proxy.client` names: "native" (the default) is
`h1.Pool` (asyncio + httptools, about twice aiohttp's request rate through the proxy), "aiohttp"
an aiohttp `ClientSession` with automatic decompression and automatic headers off. Either way a
proxy forwards bytes and headers as they came. Every client error is mapped to an
`UpstreamError` here, in one place:

    UpstreamError.kind
      connect-failure   nothing was sent: refused, unreachable, DNS, TLS, connect timeout
      reset             the connection broke after the request went out
      timeout           no response headers within `timeouts.first_byte`
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any, Protocol

import aiohttp
from yarl import URL

from . import h1
from .config import HealthConfig, Settings
from .health import ProbeResult
from .origins import Origin

__all__ = ["Upstream", "UpstreamError", "UpstreamResponse"]

_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")


class ResponseContent(Protocol):
    async def readany(self) -> bytes: ...

    def is_eof(self) -> bool: ...


class UpstreamResponse(Protocol):
    """What the proxy uses of a response, from either client."""

    @property
    def status(self) -> int: ...

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...]: ...

    @property
    def content(self) -> ResponseContent: ...

    def release(self) -> Any: ...

    def close(self) -> None: ...


Pool = aiohttp.ClientSession | h1.Pool


class UpstreamError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def map_error(exc: BaseException, timeout: float) -> UpstreamError:
    """Translate a client or socket error into one of our three kinds."""
    if isinstance(exc, h1.ConnectError):
        reason = exc.reason if exc.os_error is None else _os_reason(exc.os_error)
        return UpstreamError("connect-failure", reason)
    if isinstance(exc, h1.ServerDisconnected):
        return UpstreamError("reset", "server closed the connection")
    if isinstance(exc, h1.InvalidResponse):
        return UpstreamError("reset", f"invalid response: {exc}")
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamError("connect-failure", "connect timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connect-failure", _os_reason(exc.os_error))
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", f"no response within {timeout:.3g} s")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamError("reset", "server closed the connection")
    if isinstance(exc, OSError):
        return UpstreamError("reset", _os_reason(exc))
    if isinstance(exc, aiohttp.ClientResponseError):
        return UpstreamError("reset", f"invalid response: {exc.message}")
    return UpstreamError("reset", str(exc) or type(exc).__name__)


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if exc.errno == errno.ECONNRESET:
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror}"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


class Upstream:
    """Connection pools to the origins, owned by the app's lifespan.

    Each origin's pool hangs on `origin.pool`. A config reload hands the pool of an origin
    whose name and url are unchanged to its successor; pools of removed origins are closed
    once their in-flight requests had time to finish.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pools: dict[tuple[str, str], Pool] = {}

    def _pool(self, origin: Origin) -> Pool:
        timeouts = self.settings.timeouts
        if self.settings.proxy.client == "native":
            return h1.Pool(
                origin.base,
                limit=self.settings.proxy.max_connections_per_origin,
                connect_timeout=timeouts.connect,
                read_timeout=timeouts.idle,
                keepalive=min(timeouts.idle, 30.0),
            )
        connector = aiohttp.TCPConnector(
            limit=self.settings.proxy.max_connections_per_origin,
            ttl_dns_cache=60,
            keepalive_timeout=min(timeouts.idle, 30.0),
        )
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=timeouts.connect, sock_read=timeouts.idle
            ),
            auto_decompress=False,
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=2**18,
            max_field_size=16384,
            max_line_size=16384,
        )

    def add(self, origin: Origin) -> None:
        """Give `origin` its pool (a new one unless an origin of that name and url had one)."""
        key = (origin.name, origin.url)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = self._pool(origin)
        origin.pool = pool

    def sync(self, settings: Settings, origins: list[Origin]) -> list[Pool]:
        """Pools for a new config; returns the pools no origin uses any more (to be closed
        by the caller once in-flight requests had time to finish)."""
        changed = (settings.timeouts, settings.proxy) != (
            self.settings.timeouts,
            self.settings.proxy,
        )
        self.settings = settings
        previous, self.pools = self.pools, {}
        if not changed:
            for origin in origins:
                key = (origin.name, origin.url)
                if key in previous:
                    self.pools[key] = previous.pop(key)
        for origin in origins:
            self.add(origin)
        return list(previous.values())

    async def close(self) -> None:
        pools, self.pools = self.pools, {}
        for pool in pools.values():
            await pool.close()

    async def open(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: AsyncIterable[bytes] | None,
        deadline: asyncio.Timeout,
        first_byte: float,
    ) -> UpstreamResponse:
        """Send the request; return once the response headers are in.

        `target` is the raw path and query as the client sent them (never re-encoded).
        The caller arms `deadline` for the first byte, and must close the response.
        """
        pool: Pool = origin.pool
        if isinstance(pool, h1.Pool):
            try:
                async with deadline:
                    return await pool.request(method, pool.prefix + target, headers, body)
            except (OSError, TimeoutError) as exc:
                raise map_error(exc, first_byte) from exc
        session = pool
        try:
            async with deadline:
                return await session.request(
                    method,
                    URL(origin.base + target, encoded=True),
                    headers=list(headers),
                    data=body,
                    allow_redirects=False,
                    compress=None,
                    chunked=None,
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise map_error(exc, first_byte) from exc

    async def probe(self, origin: Origin) -> ProbeResult:
        """One active health check of `origin`."""
        config = origin.health
        headers = {"Host": origin.host_header, "User-Agent": "failover-health-check"}
        headers.update(config.headers)
        pool: Pool = origin.pool
        try:
            async with asyncio.timeout(config.timeout):
                if isinstance(pool, h1.Pool):
                    path = pool.prefix + config.path
                    response = await pool.request(config.method, path, headers.items())
                    try:
                        return await _judge(config, response.status, response.content.read)
                    finally:
                        response.release()  # closes the connection unless the body was read
                async with pool.request(
                    config.method,
                    URL(origin.base + config.path, encoded=True),
                    headers=headers,
                    allow_redirects=False,
                ) as answer:
                    return await _judge(config, answer.status, answer.read)
        except TimeoutError:
            return ProbeResult(False, f"timeout after {config.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return ProbeResult(False, map_error(exc, config.timeout).detail)


async def _judge(
    config: HealthConfig, status: int, read: Callable[[], Awaitable[bytes]]
) -> ProbeResult:
    """A probe's verdict on the status and, if `expect_body` is set, the body."""
    if status not in config.expect_status:
        return ProbeResult(False, f"status {status} not in {config.expect_status.text}")
    if config.expect_body is not None:
        text = (await read()).decode("utf-8", "replace")
        if re.search(config.expect_body, text) is None:
            return ProbeResult(False, f"body does not match {config.expect_body!r}")
    return ProbeResult(True, f"status {status}")
