"""A WebSocket handshake through a pool (see failover.websocket for the tunnel after it).

It is sent like any request until an origin answers 101 (a connect failure, reset, timeout or
5xx moves it to the next origin, within `retry.attempts`; never hedged); the 101 is relayed and
the client's connection joined to that origin's. Any other answer is relayed as a response,
and the client's connection closes after it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.types import Scope, Send

from .answers import CLIENT_GONE, ERROR_STATUS, ErrorAnswers, extra_headers, log_access, plain
from .attempts import Exchange
from .config import Settings
from .headers import response_headers
from .listener import DISCONNECT_EXTENSION, UPGRADE_EXTENSION
from .metrics import Metrics
from .origins import Origin
from .pool import Pool
from .retry import ClientGone, RetryPlan, RetryPolicy
from .router import Match
from .upstream import Upstream, UpstreamResponse
from .websocket import Tunnel, UpgradeAttempts, WebSockets, access_fields, handshake_policy

__all__ = ["Handshakes"]

# Streams a response that is not a 101 to the client (the proxy's `_stream`).
Stream = Callable[
    [Scope, Send, Origin, UpstreamResponse, Exchange, list[tuple[bytes, bytes]]], Awaitable[None]
]


class Handshakes:
    def __init__(
        self,
        settings: Settings,
        upstream: Upstream,
        websockets: WebSockets,
        answers: ErrorAnswers,
        stream: Stream,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.websockets = websockets
        self.answers = answers
        self.stream = stream
        self.clock = clock
        self.metrics = metrics
        self.attempts = UpgradeAttempts(upstream, clock, metrics)
        self.policies: dict[str, RetryPolicy] = {}  # by pool, built on first use
        self.via_header = f"1.1 {settings.proxy.via}".encode()
        self.access_log = settings.log.access

    async def run(
        self,
        scope: Scope,
        send: Send,
        pool: Pool,
        match: Match,
        headers: list[tuple[str, str]],
        client_host: str | None,
        extensions: Mapping[str, Any],
    ) -> None:
        """A WebSocket handshake (failover.websocket): sent to the pool like any request until
        an origin answers 101; then the client's connection is joined to that origin's. Any
        other answer is relayed, and the client's connection closes after it."""
        started = self.clock()
        deadline_at = None if pool.request_timeout is None else started + pool.request_timeout
        method = scope["method"]
        policy = self.policies.get(pool.name)
        if policy is None:
            policy = self.policies[pool.name] = handshake_policy(pool.config.retry)
        plan = RetryPlan(
            policy, pool.budget, pool.engine.next_after, method, None, False, deadline_at
        )
        headers = [*headers, ("Connection", "Upgrade"), ("Upgrade", "websocket")]
        exchange = Exchange(pool, plan, method, match.path, headers, client_host, None)
        exchange.host_header, exchange.mount = match.route.host_header, match.stripped
        accept = extensions[UPGRADE_EXTENSION]["accept"]
        disconnect = extensions.get(DISCONNECT_EXTENSION)
        if disconnect is not None:
            disconnect["watch"](exchange.client_left)
        pool.budget.active += 1
        tunneled = False
        try:
            origin = pool.engine.pick()
            if origin is None:
                if pool.all_down == "503" or pool.all_down == "page":
                    exchange.status = 503
                    await self.answers.all_down(scope, send, pool)
                    return
                origin = pool.engine.next_after([])
                assert origin is not None
            origin, response, result = await self.attempts.run(exchange, origin)
            extra = extra_headers(exchange)
            if response is None:
                exchange.status = ERROR_STATUS.get(result, 502)
                reasons = "; ".join(exchange.failures)
                await plain(send, exchange.status, f"no origin answered ({reasons})", extra)
                return
            if response.status != 101:
                response.content._conn.keep_alive = False  # type: ignore[union-attr]
                await self.stream(scope, send, origin, response, exchange, extra)
                return
            tunneled = self._join(scope, exchange, origin, response, accept, extra)
        except ClientGone:
            exchange.status = exchange.status or CLIENT_GONE
        except asyncio.CancelledError:
            if not exchange.gone:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            exchange.status = exchange.status or CLIENT_GONE
        finally:
            exchange.active = False
            pool.budget.active -= 1
            exchange.plan.finish()
            duration = self.clock() - started
            if self.metrics is not None:
                self.metrics.request(pool.name, exchange.origin, exchange.status, duration)
                self.metrics.websocket_handshakes.labels(pool.name, str(exchange.status)).inc()
            if self.access_log and not tunneled:
                log_access(scope, exchange, duration)

    def _join(
        self,
        scope: Scope,
        exchange: Exchange,
        origin: Origin,
        response: UpstreamResponse,
        accept: Callable[..., tuple[asyncio.Transport, bytes, set[Any]]],
        extra: list[tuple[bytes, bytes]],
    ) -> bool:
        """Relay the origin's 101 and join the two connections; False if the origin's
        connection was gone already (the client's is closed then)."""
        pool = exchange.pool
        headers = response_headers(
            response.raw_headers,
            101,
            self.via_header,
            None,
            scope.get("scheme", "http"),
            exchange.client_host,
            exchange.mount,
        )
        exchange.status, exchange.origin = 101, origin.name
        detached = response.detach()
        if detached is None:
            exchange.status = 502
            exchange.failures.append(f"{origin.name}: closed the connection after its 101")
            return False
        upstream, origin_early = detached
        parts = [
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
        ]
        if pool.origin_header:
            headers.append((b"x-failover-origin", origin.name_header))
        headers.extend(extra)
        for name, value in headers:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(b"\r\n")
        config = self.settings.websocket
        log = access_fields(scope.get("client"), exchange) if self.access_log else None
        tunnel = Tunnel(
            self.websockets, upstream, origin, config.idle_timeout, config.max_message_bytes, log
        )
        client, client_early, connections = accept(b"".join(parts), tunnel)
        tunnel.start(client, client_early, origin_early, connections)
        return True
