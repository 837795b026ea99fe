"""The only module that speaks HTTP to origins.

One keep-alive pool per origin (`h1.Pool`: asyncio + httptools). A proxy forwards bytes and
headers as they came. Every client error is mapped to an `UpstreamError` here, in one place:

    UpstreamError.kind
      connect-failure   nothing was sent: refused, unreachable, DNS, TLS, connect timeout
      reset             the connection broke after the request went out, or the origin's
                        answer is not valid HTTP (e.g. status 999)
      timeout           no response headers within `timeouts.first_byte`, or the origin took
                        no request bytes for `timeouts.send`
      pool-full         every pooled connection to the origin stayed busy for
                        `timeouts.connect`: not the origin's failure, nothing was sent

A response body that breaks off while it is read raises one of `BODY_ERRORS`; `broken()` maps
it to `BrokenResponse`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from . import h1
from .config import HealthConfig
from .health import ProbeResult
from .origins import Origin
from .resolver import Resolver
from .tls import CertificateInfo, OriginTLS, describe

__all__ = [
    "BODY_ERRORS",
    "BrokenResponse",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "broken",
]

UpstreamResponse = h1.Response


class UpstreamError(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class BrokenResponse(Exception):
    """The origin broke off a response whose body was being read."""


def map_error(exc: BaseException, timeout: float) -> UpstreamError:
    """Translate a client or socket error into one of our kinds."""
    if isinstance(exc, h1.ConnectError):
        if isinstance(exc.os_error, ssl.SSLError):  # a failed handshake, named
            return UpstreamError("connect-failure", describe(exc.os_error))
        reason = exc.reason if exc.os_error is None else _os_reason(exc.os_error)
        return UpstreamError("connect-failure", reason)
    if isinstance(exc, h1.PoolFull):
        return UpstreamError("pool-full", str(exc))
    if isinstance(exc, h1.ServerDisconnected):
        return UpstreamError("reset", "server closed the connection")
    if isinstance(exc, h1.InvalidResponse):
        return UpstreamError("reset", f"invalid response: {exc}")
    if isinstance(exc, h1.SendTimeout):
        return UpstreamError("timeout", str(exc))
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", f"no response within {timeout:.3g} s")
    if isinstance(exc, OSError):
        return UpstreamError("reset", _os_reason(exc))
    return UpstreamError("reset", str(exc) or type(exc).__name__)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_localhost(host: str) -> bool:
    """RFC 6761: localhost names stay on the machine (/etc/hosts), never sent to DNS."""
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost")


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return describe(exc)
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if exc.errno == errno.ECONNRESET:
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror}"
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


# What reading a response body raises when the origin breaks it off (h1 raises OSErrors and
# TimeoutError); the proxy catches these and has `broken` describe them.
BODY_ERRORS = (OSError, TimeoutError)


def broken(exc: BaseException) -> BrokenResponse:
    """A body read that failed (one of BODY_ERRORS), as the one error the proxy reports."""
    return BrokenResponse(str(exc) or type(exc).__name__)


class Upstream:
    """Connection pools to the origins, owned by the app's lifespan.

    Each origin's pool hangs on `origin.pool`. A config reload hands the pool of an origin
    whose name, url, timeouts and TLS identity (server name, verification, CA, client
    certificate) are unchanged to its successor; pools of removed origins are closed once their
    in-flight requests had time to finish. An https origin's pool carries its `OriginTLS` as
    `pool.tls`; `on_certificate` hears of each new certificate an origin presents.
    """

    def __init__(
        self,
        max_connections: int,
        on_resend: Callable[[str, str], None] | None = None,
        on_certificate: Callable[[Origin, CertificateInfo], None] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.on_resend = on_resend
        self.on_certificate = on_certificate
        self.pools: dict[tuple[Any, ...], h1.Pool] = {}
        # Resolves the origins named by host name; None: the event loop's getaddrinfo.
        self.resolver: Resolver | None = None

    def hostnames(self) -> set[str]:
        """The host names the pools resolve."""
        return {pool.host for pool in self.pools.values() if pool.dns is not None}

    def _pool(self, origin: Origin) -> h1.Pool:
        timeouts = origin.timeouts
        on_resend = self.on_resend
        host = urlsplit(origin.url).hostname or ""
        dns = None
        if self.resolver is not None and not _is_ip(host) and not _is_localhost(host):
            dns = self.resolver.host(host)
        tls: OriginTLS | None = None
        if origin.url.startswith("https://") and origin.tls is not None:
            tls = OriginTLS(origin.tls, host)
        on_certificate = self.on_certificate
        if tls is not None and on_certificate is not None:
            tls.on_certificate = lambda info: on_certificate(origin, info)
        pool = h1.Pool(
            origin.base,
            limit=self.max_connections,
            connect_timeout=timeouts.connect,
            read_timeout=timeouts.idle,
            send_timeout=timeouts.send,
            acquire_timeout=timeouts.connect,
            keepalive=min(timeouts.idle, 30.0),
            ssl_context=tls.context if tls is not None else None,
            server_hostname=tls.server_name if tls is not None else None,
            on_tls=tls.connected if tls is not None else None,
            on_resend=None
            if on_resend is None
            else lambda: on_resend(origin.pool_name, origin.name),
            dns=dns,
        )
        pool.tls = tls
        return pool

    @staticmethod
    def _key(origin: Origin) -> tuple[Any, ...]:
        return (origin.name, origin.url, origin.timeouts, origin.tls)

    def add(self, origin: Origin) -> None:
        """Give `origin` its pool (a new one unless an origin of that name, url and timeouts
        had one)."""
        key = self._key(origin)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = self._pool(origin)
        origin.pool = pool

    def sync(self, max_connections: int, origins: list[Origin]) -> list[h1.Pool]:
        """Pools for a new config; returns the pools no origin uses any more (to be closed
        by the caller once in-flight requests had time to finish)."""
        previous, self.pools = self.pools, {}
        if max_connections == self.max_connections:
            for origin in origins:
                key = self._key(origin)
                if key in previous:
                    self.pools[key] = previous.pop(key)
        self.max_connections = max_connections
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
        first_byte: float,
        deadline: asyncio.Timeout | None = None,
        upgrade: bool = False,
    ) -> UpstreamResponse:
        """Send the request; return once the response headers are in.

        `target` is the raw path and query as the client sent them (never re-encoded). The
        wait for a free pooled connection comes first and is not timed as the origin's: the
        first-byte clock starts once a connection is in hand, unless the caller passes its
        own `deadline` (created unarmed, armed by the caller once a request body has gone
        upstream). With `upgrade`, a 101 may end the exchange (a WebSocket handshake). The
        caller must close the response.
        """
        pool: h1.Pool = origin.pool
        try:
            conn = pool.idle_connection() or await pool.acquire()
            if upgrade:
                conn.upgrade = True
            if deadline is None:
                expires_at = conn.loop.time() + first_byte
                return await pool.send(
                    conn, method, pool.prefix + target, headers, body, expires_at
                )
            async with deadline:
                return await pool.send(conn, method, pool.prefix + target, headers, body)
        except (OSError, TimeoutError, h1.PoolFull) as exc:
            raise map_error(exc, first_byte) from exc

    async def probe(self, origin: Origin) -> ProbeResult:
        """One active health check of `origin`."""
        config = origin.health
        headers = {"Host": origin.host_header, "User-Agent": "failover-health-check"}
        headers.update(config.headers)
        pool: h1.Pool = origin.pool
        try:
            async with asyncio.timeout(config.timeout):
                path = pool.prefix + config.path
                response = await pool.request(config.method, path, headers.items())
                try:
                    return await _judge(config, response.status, response.content.read)
                finally:
                    response.release()  # closes the connection unless the body was read
        except TimeoutError:
            return ProbeResult(False, f"timeout after {config.timeout:g} s")
        except (OSError, h1.PoolFull) as exc:
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
