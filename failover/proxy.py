"""The hot path: a raw ASGI app. route -> select -> forward -> stream back -> report.

Requests under the admin prefix go to the admin app; everything else is routed to a pool by
Host and path, forwarded to the origin the pool's engine picks, and retried on the pool's next
origin while the response has not started.

What a client does is never counted against an origin: its body is read (up to the replay
buffer) before an origin is chosen, a client that leaves cancels the request at once (status
499 in the access log and the metrics, nothing retried), and a body that is too slow or too
large is answered 408 or 413 by the proxy itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from .config import Settings
from .headers import request_headers, response_headers
from .metrics import Metrics
from .origins import Origin
from .pool import Pool
from .retry import BodyRejected, ClientGone, RequestBody
from .router import Router
from .stale import StaleCache, Tee
from .upstream import BrokenResponse, Upstream, UpstreamError, UpstreamResponse, read_body

__all__ = ["Proxy", "ResponseAborted"]

logger = logging.getLogger("failover.proxy")

_NO_BODY_STATUSES = frozenset({204, 304})
_HEDGED_METHODS = frozenset({"GET", "HEAD"})
# nginx's convention for a client that closed the connection before the response started.
CLIENT_GONE = 499
# The listener (failover.listener) offers a way to hear of the client's connection closing
# while its request is in progress, under this key of scope["extensions"].
DISCONNECT_EXTENSION = "failover.disconnect"
_NO_EXTENSIONS: dict[str, Any] = {}


@dataclass(slots=True)
class _Exchange:
    """One client request on its way through the attempts."""

    pool: Pool
    method: str
    target: str  # as sent upstream (a route may strip a prefix)
    headers: list[tuple[str, str]]  # to send upstream, Host excepted
    client_host: str | None
    body: RequestBody | None
    idempotency_key: bool
    host_header: str | None = None  # the route's Host for upstream, if it sets one
    mount: str = ""  # the path prefix a route stripped (put back in rewritten Locations)
    deadline_at: float | None = None
    retrying: bool = False
    not_retried: str = ""
    status: int = 0  # as sent to the client; 0 when it went away first
    origin: str = "-"  # the origin whose answer was sent
    bytes_out: int = 0
    tried: list[Origin] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)  # "name;result", for X-Failover-Attempts
    failures: list[str] = field(default_factory=list)  # "name: detail", for error bodies
    task: asyncio.Task[Any] | None = None  # the request's task, cancelled if the client leaves
    gone: bool = False  # the client closed its connection while the request was in progress

    def client_left(self) -> None:
        """The listener's disconnect callback: stop the request where it is."""
        task = self.task
        if task is not None:
            self.gone = True
            self.task = None
            task.cancel()

    def remaining(self, now: float) -> float | None:
        """Seconds left before `timeouts.request`, None without one."""
        if self.deadline_at is None:
            return None
        return max(0.0, self.deadline_at - now)


_Tried = tuple[UpstreamResponse | None, str | int]

# What the client gets when no attempt produced a response, by the last attempt's result.
_ERROR_STATUS: dict[str | int, int] = {"timeout": 504, "pool-full": 503}


_access = logging.getLogger("failover.access")


def _log_access(scope: Scope, exchange: _Exchange, duration: float) -> None:
    """One JSON line per request (`log.access: true`)."""
    client = scope.get("client")
    _access.info(
        json.dumps(
            {
                "time": round(time.time(), 3),
                "client": client[0] if client else None,
                "pool": exchange.pool.name,
                "method": exchange.method,
                "path": exchange.target,
                "status": exchange.status,
                "origin": exchange.origin,
                "attempts": exchange.attempts,
                "duration_ms": round(duration * 1000, 3),
                "bytes_in": exchange.body.size if exchange.body is not None else 0,
                "bytes_out": exchange.bytes_out,
            },
            separators=(",", ":"),
        )
    )


def _stale_key(scope: Scope, exchange: _Exchange) -> tuple[str, str, str]:
    return StaleCache.key(scope.get("scheme", "http"), exchange.client_host, exchange.target)


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
    ) -> None:
        self.settings = settings
        self.pools = pools
        self.router = router
        self.upstream = upstream
        self.admin = admin
        self.clock = clock
        self.prefix = settings.admin.prefix
        self.via = settings.proxy.via
        self.via_header = f"1.1 {self.via}".encode()
        self.metrics = metrics
        self.access_log = settings.log.access
        self.body_timeout = settings.limits.body_timeout
        self.max_body = settings.limits.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await receive()
                await send({"type": "websocket.close", "code": 1008})
            return
        path: str = scope["path"]
        prefix = self.prefix
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            await self.admin(scope, receive, send)
            return
        await self.forward(scope, receive, send)

    # -- forwarding ---------------------------------------------------------------------

    async def forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = _target(scope)
        if target is None:
            await _plain(send, 400, "request target must be a path such as /index.html")
            return
        client = scope.get("client")
        headers, client_host, length, idempotency_key = request_headers(
            scope["headers"],
            client[0] if client else None,
            scope.get("scheme", "http"),
            scope.get("http_version", "1.1"),
            self.via,
        )
        match = self.router.match(client_host, target)
        if match is None:
            if self.metrics is not None:
                self.metrics.request("-", "-", 404, 0.0)
            await _plain(send, 404, f"no site is served here for host {client_host!r}")
            return
        pool = self.pools[match.route.pool]
        max_body = self.max_body
        if max_body is not None and length is not None and length > max_body:
            await _plain(
                send,
                413,
                f"request body of {length} bytes is over {max_body} (limits.max_body_bytes)",
                [(b"connection", b"close")],
            )
            return
        body = None
        if length != 0:
            body = RequestBody(receive, pool.max_buffered, self.body_timeout, max_body)
        exchange = _Exchange(
            pool, scope["method"], match.path, headers, client_host, body, idempotency_key
        )
        exchange.host_header, exchange.mount = match.route.host_header, match.stripped
        disconnect = scope.get("extensions", _NO_EXTENSIONS).get(DISCONNECT_EXTENSION)
        if disconnect is not None:
            exchange.task = asyncio.current_task()
            disconnect["watch"](exchange.client_left)
        started = self.clock()
        if pool.request_timeout is not None:
            exchange.deadline_at = started + pool.request_timeout
        budget = pool.budget
        budget.active += 1
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
            await _plain(send, rejected.status, rejected.reason, [(b"connection", b"close")])
        finally:
            exchange.task = None  # the request is over: a late disconnect cancels nothing
            budget.active -= 1
            if exchange.retrying:
                budget.retries -= 1
            if self.metrics is not None:
                self.metrics.request(
                    pool.name, exchange.origin, exchange.status, self.clock() - started
                )
            if self.access_log:
                _log_access(scope, exchange, self.clock() - started)

    async def _forward(self, scope: Scope, send: Send, exchange: _Exchange) -> None:
        pool = exchange.pool
        engine = pool.engine
        origin = engine.pick()
        if origin is None:
            if pool.all_down == "503":
                exchange.status = 503
                await self._all_down(send, pool)
                return
            if pool.all_down == "stale" and await self._serve_stale(scope, send, exchange):
                return
            origin = engine.next_after([])
            assert origin is not None  # there is always at least one origin
        tried = exchange.tried
        policy = pool.policy
        while True:
            tried.append(origin)
            if (
                pool.hedge_after is not None
                and exchange.body is None
                and (exchange.method in _HEDGED_METHODS)
            ):
                origin, response, result = await self._hedged(origin, exchange)
            else:
                response, result = await self._try(origin, exchange)
            if isinstance(result, int) and not policy.retries_status(result):
                break
            refusal = policy.refusal(
                result, exchange.method, exchange.body, len(tried), exchange.idempotency_key
            )
            following = None
            if refusal is None:
                following = engine.next_after(tried)
                if following is not None:
                    if exchange.remaining(self.clock()) == 0.0:
                        refusal, following = "deadline", None
                    elif not exchange.retrying and origin.usable and not pool.budget.allows():
                        # The budget guards an origin still believed healthy against retry
                        # storms; once it is ejected or failed, the retry is the failover.
                        refusal, following = "budget", None
            if following is None:
                if refusal not in (None, "status", "condition"):
                    exchange.not_retried = refusal or ""
                break
            if response is not None:
                response.close()
            self._start_retry(exchange, result)
            origin = following

        failed = response is None or result in pool.failure_statuses
        if failed and pool.stale is not None and await self._serve_stale(scope, send, exchange):
            if response is not None:
                response.close()
            return
        extra = self._extra_headers(exchange)
        if response is None:
            exchange.status = _ERROR_STATUS.get(result, 502)
            reasons = "; ".join(exchange.failures)
            await _plain(send, exchange.status, f"no origin answered ({reasons})", extra)
            return
        await self._stream(scope, send, origin, response, exchange, extra)

    def _start_retry(self, exchange: _Exchange, reason: str | int) -> None:
        """Count this request as a retry in flight (once, whatever number of retries)."""
        if self.metrics is not None:
            self.metrics.retry(exchange.pool.name, reason)
        if not exchange.retrying:
            exchange.retrying = True
            exchange.pool.budget.retries += 1

    def _extra_headers(self, exchange: _Exchange) -> list[tuple[bytes, bytes]]:
        extra: list[tuple[bytes, bytes]] = []
        if exchange.pool.attempts_header and exchange.attempts:
            extra.append((b"x-failover-attempts", ", ".join(exchange.attempts).encode()))
        if exchange.not_retried:
            extra.append((b"x-failover-not-retried", exchange.not_retried.encode()))
        return extra

    async def _try(
        self, origin: Origin, exchange: _Exchange
    ) -> tuple[UpstreamResponse | None, str | int]:
        """One attempt, reported to the engine and noted in the exchange."""
        started = self.clock()
        response: UpstreamResponse | None = None
        result: str | int
        try:
            response = await self._attempt(origin, exchange, started)
            result = response.status
        except UpstreamError as error:
            result = error.kind
            exchange.failures.append(f"{origin.name}: {error.detail}")
        except asyncio.CancelledError:
            exchange.attempts.append(f"{origin.name};cancelled")
            raise
        if result != "pool-full":  # a busy pool is ours to fix, not the origin's failure
            exchange.pool.engine.on_attempt(origin, result, self.clock() - started)
        if self.metrics is not None:
            self.metrics.attempt(origin.pool_name, origin.name, result)
        exchange.attempts.append(f"{origin.name};{result}")
        return response, result

    async def _hedged(
        self, origin: Origin, exchange: _Exchange
    ) -> tuple[Origin, UpstreamResponse | None, str | int]:
        """Send to `origin`; if it has not answered with headers within `hedge_after`, send the
        same request to the next origin too. The first response with headers wins; the other
        attempt is cancelled, which closes its connection."""
        pool = exchange.pool
        first = asyncio.ensure_future(self._try(origin, exchange))
        try:
            with contextlib.suppress(TimeoutError):
                return origin, *(await asyncio.wait_for(asyncio.shield(first), pool.hedge_after))
            second_origin = pool.engine.next_after(exchange.tried)
            if second_origin is None or (not exchange.retrying and not pool.budget.allows()):
                return origin, *(await first)
        except asyncio.CancelledError:
            first.cancel()  # the shielded attempt must not outlive its request
            raise
        exchange.tried.append(second_origin)
        self._start_retry(exchange, "hedge")
        second = asyncio.ensure_future(self._try(second_origin, exchange))
        owners: dict[asyncio.Future[_Tried], Origin] = {first: origin, second: second_origin}
        pending: set[asyncio.Future[_Tried]] = {first, second}
        outcome: tuple[Origin, UpstreamResponse | None, str | int] | None = None
        try:
            while pending and (outcome is None or outcome[1] is None):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    response, result = task.result()
                    if response is not None and outcome is not None and outcome[1] is not None:
                        response.close()  # both answered at once: keep the first
                    elif outcome is None or outcome[1] is None:
                        outcome = (owners[task], response, result)
        finally:
            for task in pending:
                task.cancel()
            for late in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(late, tuple) and late[0] is not None:
                    late[0].close()
        assert outcome is not None
        return outcome

    async def _attempt(self, origin: Origin, exchange: _Exchange, now: float) -> UpstreamResponse:
        host = exchange.host_header or (exchange.client_host if origin.preserve_host else None)
        body = exchange.body
        first_byte = exchange.pool.first_byte
        remaining = exchange.remaining(now)
        if remaining is not None:
            first_byte = min(first_byte, remaining)
        deadline = None
        if body is not None:
            # The first-byte clock starts once the whole request is upstream (unless the
            # response came before the body ended).
            deadline = asyncio.timeout(None)
            loop = asyncio.get_running_loop()

            def body_sent() -> None:
                with contextlib.suppress(RuntimeError):
                    deadline.reschedule(loop.time() + first_byte)

            body.on_complete = body_sent
        return await self.upstream.open(
            origin,
            exchange.method,
            exchange.target,
            [("Host", host or origin.host_header), *exchange.headers],
            body,
            first_byte,
            deadline,
        )

    async def _serve_stale(self, scope: Scope, send: Send, exchange: _Exchange) -> bool:
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
        headers.extend(self._extra_headers(exchange))
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
        exchange: _Exchange,
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
                chunk = await read_body(response)
                while chunk:
                    if tee is not None and not tee.add(chunk):
                        tee = None  # larger than stale.max_object_bytes: not kept
                    if content.is_eof():
                        break  # the last chunk goes out (and is counted) below
                    exchange.bytes_out += len(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    chunk = await read_body(response)
            except BrokenResponse as exc:
                logger.warning(
                    "%s broke off a response to %s %s: %s",
                    origin.name,
                    scope["method"],
                    scope["path"],
                    exc,
                )
                raise ResponseAborted(f"{origin.name}: {exc}") from exc
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

    async def _all_down(self, send: Send, pool: Pool) -> None:
        states = ", ".join(f"{o.name}: {o.state}" for o in pool.origins)
        await _plain(
            send,
            503,
            f"no origin is usable ({states})",
            [(b"retry-after", pool.retry_after.encode())],
        )


def _target(scope: Scope) -> str | None:
    """The raw path and query as the client sent them; None if not origin-form."""
    raw_path: bytes | None = scope.get("raw_path")
    if raw_path is None:
        raw_path = quote(scope["path"]).encode()
    if not raw_path.startswith(b"/"):
        # Absolute form ("http://host/path"): the client never chooses the upstream.
        scheme, sep, rest = raw_path.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            return None
        raw_path = b"/" + rest.partition(b"/")[2]
    query: bytes = scope.get("query_string", b"")
    if query:
        return raw_path.decode("latin-1") + "?" + query.decode("latin-1")
    return raw_path.decode("latin-1")


async def _plain(
    send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A short plain-text answer of the proxy's own, e.g. `502 Bad Gateway: ...`."""
    body = f"{status} {HTTPStatus(status).phrase}: {text}\n".encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
