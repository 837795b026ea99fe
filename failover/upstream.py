"""The only module that speaks HTTP to origins.

One aiohttp `ClientSession` (a keep-alive pool) per origin, automatic decompression and
automatic headers off: a proxy forwards bytes and headers as they came. Every aiohttp error
is mapped to an `UpstreamError` here, in one place:

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
from collections.abc import AsyncIterable, Iterable

import aiohttp
from yarl import URL

from .config import Settings
from .health import ProbeResult
from .origins import Origin

__all__ = ["Upstream", "UpstreamError"]

_SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Accept", "Content-Type")


class UpstreamError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def map_error(exc: BaseException, timeout: float) -> UpstreamError:
    """Translate an aiohttp or socket error into one of our three kinds."""
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
        self.pools: dict[tuple[str, str], aiohttp.ClientSession] = {}

    def _pool(self) -> aiohttp.ClientSession:
        timeouts = self.settings.timeouts
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
            pool = self.pools[key] = self._pool()
        origin.pool = pool

    def sync(self, settings: Settings, origins: list[Origin]) -> list[aiohttp.ClientSession]:
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
    ) -> aiohttp.ClientResponse:
        """Send the request; return once the response headers are in.

        `target` is the raw path and query as the client sent them (never re-encoded).
        The caller arms `deadline` for the first byte, and must close the response.
        """
        session: aiohttp.ClientSession = origin.pool
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
        session: aiohttp.ClientSession = origin.pool
        try:
            async with asyncio.timeout(config.timeout):
                async with session.request(
                    config.method,
                    URL(origin.base + config.path, encoded=True),
                    headers=headers,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    if status not in config.expect_status:
                        return ProbeResult(
                            False, f"status {status} not in {config.expect_status.text}"
                        )
                    if config.expect_body is not None:
                        text = (await response.read()).decode("utf-8", "replace")
                        if re.search(config.expect_body, text) is None:
                            return ProbeResult(False, f"body does not match {config.expect_body!r}")
                    return ProbeResult(True, f"status {status}")
        except TimeoutError:
            return ProbeResult(False, f"timeout after {config.timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            return ProbeResult(False, map_error(exc, config.timeout).detail)
