"""The hot path: a raw ASGI app. route -> select -> forward -> stream back -> report.

Requests under the admin prefix go to the admin app (and under the public prefix to the status
feed); everything else is routed to a pool by Host and path and sent to its origins
(failover.attempts); the response that stands is streamed back. A WebSocket handshake goes to
failover.handshake; the proxy's own error answers are in failover.answers.

What a client does is never counted against an origin: its body is read (up to the replay
buffer) before an origin is chosen, a client that leaves cancels the request at once (status
499 in the access log and the metrics, nothing retried), and a body that is too slow or too
large is answered 408 or 413 by the proxy itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .answers import CLIENT_GONE, ERROR_STATUS, ErrorAnswers, extra_headers, log_access, plain
from .attempts import Attempts, Exchange
from .config import Settings
from .handshake import Handshakes
from .headers import request_headers, request_target, response_headers
from .listener import DISCONNECT_EXTENSION, UPGRADE_EXTENSION
from .metrics import Metrics
from .origins import Origin
from .pages import MaintenancePage
from .pool import Pool
from .public import StatusBoard
from .retry import BodyRejected, ClientGone, RequestBody, RetryPlan
from .router import Router
from .stale import StaleCache, Tee
from .upstream import BODY_ERRORS, Upstream, UpstreamResponse, broken
from .websocket import WebSockets

__all__ = ["Proxy", "ResponseAborted"]

logger = logging.getLogger("failover.proxy")

_NO_BODY_STATUSES = frozenset({204, 304})
_NO_EXTENSIONS: dict[str, Any] = {}


class ResponseAborted(Exception):
    """The origin broke off a response that had already started; the client connection is
    closed so that the client sees a truncated transfer, never a short body as complete."""


class Proxy:
    def __init__(
        self,
        settings: Settings,
        pools: Mapping[str, Pool],
        router: Router,
        upstream: Upstream,
        admin: ASGIApp,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        websockets: WebSockets | None = None,
        *,
        page: MaintenancePage | None = None,
        board: StatusBoard | None = None,
        public: ASGIApp | None = None,
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.router = router
        self.attempts = Attempts(upstream, clock, metrics)
        self.admin = admin
        self.clock = clock
        self.prefix = settings.admin.prefix
        # Paths the proxy answers itself: the admin API and the public status feed.
        self.mounts: list[tuple[str, ASGIApp]] = [(self.prefix, admin)]
        if public is not None:
            self.mounts.append((settings.public.prefix, public))
        self.reserved = tuple(prefix for prefix, _ in self.mounts)
        self.via = settings.proxy.via
        self.via_header = f"1.1 {self.via}".encode()
        self.metrics = metrics
        self.access_log = settings.log.access
        self.body_timeout = settings.limits.body_timeout
        self.max_body = settings.limits.max_body_bytes
        self.answers = ErrorAnswers(page, board)
        self.handshakes = Handshakes(
            settings,
            upstream,
            WebSockets(metrics) if websockets is None else websockets,
            self.answers,
            self._stream,
            clock,
            metrics,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        if path.startswith(self.reserved):
            for prefix, app in self.mounts:
                if path.startswith(prefix) and (
                    len(path) == len(prefix) or path[len(prefix)] == "/"
                ):
                    await app(scope, receive, send)
                    return
        await self.forward(scope, receive, send)

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        requested = request_target(scope)
        if requested is None:
            await plain(send, 400, "request target must be a path such as /index.html")
            return
        target, authority = requested
        client = scope.get("client")
        headers, client_host, length, idempotency_key = request_headers(
            scope["headers"],
            client[0] if client else None,
            scope.get("scheme", "http"),
            scope.get("http_version", "1.1"),
            self.via,
        )
        if authority is not None:
            client_host = authority  # RFC 9112 section 3.2.2
        match = self.router.match(client_host, target)
        if match is None:
            if self.metrics is not None:
                self.metrics.request("-", "-", 404, 0.0)
            named = f"host {client_host!r}" if client_host else "a request with no Host header"
            await plain(send, 404, f"no site is served here for {named}")
            return
        max_body = self.max_body
        if max_body is not None and length is not None and length > max_body:
            reason = f"request body of {length} bytes is over {max_body} (limits.max_body_bytes)"
            await plain(send, 413, reason, [(b"connection", b"close")])
            return
        pool = self.pools[match.route.pool]
        extensions = scope.get("extensions", _NO_EXTENSIONS)
        upgrade = extensions.get(UPGRADE_EXTENSION)
        if upgrade is not None:
            await self.handshakes.run(scope, send, pool, match, headers, client_host, extensions)
            return
        body = None
        if length != 0:
            body = RequestBody(receive, pool.max_buffered, self.body_timeout, max_body)
        started = self.clock()
        deadline_at = None if pool.request_timeout is None else started + pool.request_timeout
        plan = RetryPlan(
            pool.policy,
            pool.budget,
            pool.engine.next_after,
            scope["method"],
            body,
            idempotency_key,
            deadline_at,
        )
        exchange = Exchange(pool, plan, scope["method"], match.path, headers, client_host, body)
        exchange.host_header, exchange.mount = match.route.host_header, match.stripped
        disconnect = extensions.get(DISCONNECT_EXTENSION)
        if disconnect is not None:
            disconnect["watch"](exchange.client_left)
        pool.budget.active += 1
        try:
            if body is not None:
                await body.prefetch()  # no origin is involved while the client sends
            await self._forward(scope, send, exchange)
        except ClientGone:
            exchange.status = exchange.status or CLIENT_GONE
        except asyncio.CancelledError:
            if not exchange.gone:
                raise  # shutdown, not the client
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            exchange.status = exchange.status or CLIENT_GONE
        except BodyRejected as rejected:
            if exchange.status:
                raise  # the response has started: nothing else can be said
            exchange.status = rejected.status
            await plain(send, rejected.status, rejected.reason, [(b"connection", b"close")])
        finally:
            exchange.active = False  # the request is over: a late disconnect cancels nothing
            pool.budget.active -= 1
            plan.finish()
            duration = self.clock() - started
            if self.metrics is not None:
                self.metrics.request(pool.name, exchange.origin, exchange.status, duration)
            if self.access_log:
                log_access(scope, exchange, duration)

    async def _forward(self, scope: Scope, send: Send, exchange: Exchange) -> None:
        pool = exchange.pool
        origin = pool.engine.pick()
        if origin is None:
            if pool.all_down == "503" or pool.all_down == "page":
                exchange.status = 503
                await self.answers.all_down(scope, send, pool)
                return
            if pool.all_down == "stale" and await self._serve_stale(scope, send, exchange):
                return
            origin = pool.engine.next_after([])
            assert origin is not None  # there is always at least one origin
        origin, response, result = await self.attempts.run(exchange, origin)
        failed = response is None or result in pool.failure_statuses
        if failed and pool.stale is not None and await self._serve_stale(scope, send, exchange):
            if response is not None:
                response.close()
            return
        extra = extra_headers(exchange)
        if response is None:
            exchange.status = ERROR_STATUS.get(result, 502)
            if self.answers.page is not None:
                await self.answers.page_answer(scope, send, exchange.status, pool, extra)
                return
            reasons = "; ".join(exchange.failures)
            await plain(send, exchange.status, f"no origin answered ({reasons})", extra)
            return
        await self._stream(scope, send, origin, response, exchange, extra)

    async def _serve_stale(self, scope: Scope, send: Send, exchange: Exchange) -> bool:
        """Answer with a stored copy if one may be served; say whether it did."""
        stale = exchange.pool.stale
        if stale is None or exchange.method != "GET":
            return False
        now = self.clock()
        entry = stale.lookup(_stale_key(scope, exchange), scope["headers"], now)
        if entry is None:
            return False
        headers = [
            *entry.headers,
            (b"age", str(int(now - entry.stored_at)).encode()),
            (b"x-failover-stale", b"1"),
        ]
        if exchange.pool.origin_header:
            headers.append((b"x-failover-origin", entry.origin))
        headers.extend(extra_headers(exchange))
        exchange.status, exchange.origin = 200, entry.origin.decode()
        exchange.bytes_out = len(entry.body)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": entry.body, "more_body": False})
        return True

    async def _stream(
        self,
        scope: Scope,
        send: Send,
        origin: Origin,
        response: UpstreamResponse,
        exchange: Exchange,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        """Stream the response to the client; close the upstream response whatever happens
        (a client that leaves cancels this task through the listener's disconnect callback).

        With stale-if-error on, a GET 200 is copied as it streams (never held back)."""
        finished = False
        pool = exchange.pool
        rewriters = pool.rewriters
        headers = response_headers(
            response.raw_headers,
            response.status,
            self.via_header,
            None if rewriters is None else rewriters[origin.name],
            scope.get("scheme", "http"),
            exchange.client_host,
            exchange.mount,
        )
        if pool.origin_header:
            headers.append((b"x-failover-origin", origin.name_header))
        stale: StaleCache | None = pool.stale
        tee: Tee | None = None
        if stale is not None and response.status == 200 and exchange.method == "GET":
            key = _stale_key(scope, exchange)
            tee = stale.begin(key, scope["headers"], headers, origin.name_header)
        headers.extend(extra)
        exchange.status, exchange.origin = response.status, origin.name
        try:
            await send(
                {"type": "http.response.start", "status": response.status, "headers": headers}
            )
            if scope["method"] == "HEAD" or response.status in _NO_BODY_STATUSES:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                finished = True
                return
            content = response.content
            try:
                chunk = await content.readany()
                while chunk:
                    if tee is not None and not tee.add(chunk):
                        tee = None  # larger than stale.max_object_bytes: not kept
                    if content.is_eof():
                        break  # the last chunk goes out (and is counted) below
                    exchange.bytes_out += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await content.readany()
            except BODY_ERRORS as error:
                exc = broken(error)
                logger.warning(
                    "%s broke off a response to %s %s: %s",
                    origin.name,
                    scope["method"],
                    scope["path"],
                    exc,
                )
                raise ResponseAborted(f"{origin.name}: {exc}") from error
            exchange.bytes_out += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            finished = True
            if tee is not None and stale is not None:
                stale.finish(tee, self.clock())
        finally:
            if finished:
                response.release()
            else:
                response.close()


def _stale_key(scope: Scope, exchange: Exchange) -> tuple[str, str, str]:
    return StaleCache.key(scope.get("scheme", "http"), exchange.client_host, exchange.target)
