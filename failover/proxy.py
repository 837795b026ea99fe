"""The hot path: a raw ASGI app. select -> forward -> stream back -> report.

Requests under the admin prefix go to the admin app; everything else is forwarded to the
origin the engine picks, and retried on the next one while the response has not started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

import aiohttp

from .config import Settings
from .engine import Engine
from .origins import Origin
from .retry import ClientGone, RequestBody, RetryPolicy
from .upstream import Upstream, UpstreamError

__all__ = ["HOP_BY_HOP", "Proxy", "ResponseAborted"]

logger = logging.getLogger("failover.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# RFC 9110 section 7.6.1, plus Proxy-Connection (a non-standard relic) and Expect, which this
# proxy answers itself (uvicorn sends 100 Continue when the body is first read).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {
    b"expect",
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"via",
}
_NO_BODY_STATUSES = frozenset({204, 304})


class ResponseAborted(Exception):
    """The origin broke off a response that had already started; the client connection is
    closed so that the client sees a truncated transfer, never a short body as complete."""


def _connection_tokens(value: bytes) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",") if token.strip()}


class Proxy:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        upstream: Upstream,
        admin: ASGIApp,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.upstream = upstream
        self.admin = admin
        self.clock = clock
        self.prefix = settings.admin.prefix
        self.policy = RetryPolicy(settings.retry)
        self.first_byte = settings.timeouts.first_byte
        self.origin_header = settings.proxy.origin_header
        self.attempts_header = settings.proxy.attempts_header
        self.via = settings.proxy.via
        self.max_buffered = settings.retry.max_buffered_body
        self.try_all = settings.all_down == "try-all"
        self.retry_after = str(max(1, round(settings.health.interval)))

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
        method: str = scope["method"]
        target = _target(scope)
        if target is None:
            await _plain(send, 400, "request target must be a path such as /index.html")
            return
        headers, client_host, has_body, idempotency_key = self._request_headers(scope)
        body = RequestBody(receive, self.max_buffered) if has_body else None

        origin = self.engine.pick()
        if origin is None:
            if not self.try_all:
                await self._all_down(send)
                return
            origin = self.engine.next_after([])
            assert origin is not None  # there is always at least one origin
        tried: list[Origin] = []
        attempts: list[str] = []
        not_retried = ""
        failures: list[str] = []
        while True:
            tried.append(origin)
            started = self.clock()
            result: str | int
            response: aiohttp.ClientResponse | None = None
            try:
                response = await self._attempt(origin, method, target, headers, client_host, body)
                result = response.status
            except UpstreamError as error:
                result = error.kind
                failures.append(f"{origin.name}: {error.detail}")
            except ClientGone:
                return  # nothing left to answer
            self.engine.on_attempt(origin, result, self.clock() - started)
            attempts.append(f"{origin.name};{result}")
            if isinstance(result, int) and not self.policy.retries_status(result):
                break
            refusal = self.policy.refusal(result, method, body, len(tried), idempotency_key)
            following = self.engine.next_after(tried) if refusal is None else None
            if following is None:
                if refusal not in (None, "status", "condition"):
                    not_retried = refusal or ""
                break
            if response is not None:
                response.close()
            origin = following

        extra: list[tuple[bytes, bytes]] = []
        if self.attempts_header:
            extra.append((b"x-failover-attempts", ", ".join(attempts).encode()))
        if not_retried:
            extra.append((b"x-failover-not-retried", not_retried.encode()))
        if response is None:
            status = 504 if result == "timeout" else 502
            await _plain(send, status, "no origin answered (" + "; ".join(failures) + ")", extra)
            return
        await self._stream(scope, receive, send, origin, response, body, extra)

    async def _attempt(
        self,
        origin: Origin,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        client_host: str | None,
        body: RequestBody | None,
    ) -> aiohttp.ClientResponse:
        host = client_host if origin.preserve_host and client_host else origin.host_header
        deadline = asyncio.timeout(self.first_byte if body is None else None)
        if body is not None:
            loop = asyncio.get_running_loop()

            def body_sent() -> None:
                # The first-byte clock starts once the whole request is upstream (unless the
                # response came before the body ended).
                with contextlib.suppress(RuntimeError):
                    deadline.reschedule(loop.time() + self.first_byte)

            body.on_complete = body_sent
        return await self.upstream.open(
            origin,
            method,
            target,
            [("Host", host), *headers],
            body.chunks() if body is not None else None,
            deadline,
        )

    def _request_headers(
        self, scope: Scope
    ) -> tuple[list[tuple[str, str]], str | None, bool, bool]:
        """Headers to send upstream (Host comes per origin), the client's Host, whether a body
        follows, whether an Idempotency-Key was sent."""
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        drop = _REQUEST_DROP
        for name, value in raw:
            if name == b"connection":
                drop = drop | _connection_tokens(value)
        out: list[tuple[str, str]] = []
        client_host: str | None = None
        forwarded_for: list[str] = []
        via: list[str] = []
        has_body = False
        idempotency_key = False
        for name, value in raw:
            if name in drop:
                if name == b"host":
                    client_host = value.decode("latin-1")
                elif name == b"x-forwarded-for":
                    forwarded_for.append(value.decode("latin-1"))
                elif name == b"via":
                    via.append(value.decode("latin-1"))
                elif name == b"transfer-encoding":
                    has_body = True
                continue
            if name == b"content-length":
                has_body = has_body or value.strip() != b"0"
            elif name == b"idempotency-key":
                idempotency_key = True
            out.append((name.decode("latin-1"), value.decode("latin-1")))
        client = scope.get("client")
        if client:
            forwarded_for.append(client[0])
        if forwarded_for:
            out.append(("X-Forwarded-For", ", ".join(forwarded_for)))
        out.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if client_host is not None:
            out.append(("X-Forwarded-Host", client_host))
        via.append(f"{scope.get('http_version', '1.1')} {self.via}")
        out.append(("Via", ", ".join(via)))
        return out, client_host, has_body, idempotency_key

    def _response_headers(
        self, origin: Origin, response: aiohttp.ClientResponse, extra: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        raw = response.raw_headers
        drop: frozenset[bytes] | set[bytes] = HOP_BY_HOP
        out: list[tuple[bytes, bytes]] = []
        via = b""
        for name, value in raw:
            lower = name.lower()
            if lower == b"connection":
                drop = drop | _connection_tokens(value)
            elif lower == b"via":
                via = value + b", "
        for name, value in raw:
            lower = name.lower()
            if lower in drop or lower == b"via":
                continue
            out.append((lower, value))
        out.append((b"via", via + f"1.1 {self.via}".encode()))
        if self.origin_header:
            out.append((b"x-failover-origin", origin.name_header))
        out.extend(extra)
        return out

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        origin: Origin,
        response: aiohttp.ClientResponse,
        body: RequestBody | None,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        """Stream the response to the client; close the upstream response whatever happens."""
        finished = False
        gone: asyncio.Future[None] | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": self._response_headers(origin, response, extra),
                }
            )
            if scope["method"] == "HEAD" or response.status in _NO_BODY_STATUSES:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                finished = True
                return
            content = response.content
            try:
                chunk = await content.readany()
                while chunk:
                    if content.is_eof():
                        break
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if gone is None and (body is None or body.complete):
                        # A long response: watch for the client going away, so that an
                        # abandoned download stops reading from the origin at once.
                        gone = asyncio.ensure_future(_disconnected(receive))
                    elif gone is not None and gone.done():
                        return
                    chunk = await content.readany()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                logger.warning(
                    "%s broke off a response to %s %s: %s",
                    origin.name,
                    scope["method"],
                    scope["path"],
                    exc or type(exc).__name__,
                )
                raise ResponseAborted(f"{origin.name}: {exc}") from exc
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
            finished = True
        finally:
            if gone is not None and not gone.done():
                gone.cancel()
            if finished:
                response.release()
            else:
                response.close()

    async def _all_down(self, send: Send) -> None:
        states = ", ".join(f"{o.name}: {o.state}" for o in self.engine.origins)
        await _plain(
            send,
            503,
            f"no origin is usable ({states})",
            [(b"retry-after", self.retry_after.encode())],
        )


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


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
