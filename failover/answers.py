"""The proxy's own answers and records: a plain-text error, the maintenance page, the
headers that explain the attempts, and the access log line. Shared by the request path
(failover.proxy) and the WebSocket handshake (failover.handshake)."""

from __future__ import annotations

import json
import logging
import time
from http import HTTPStatus

from starlette.types import Scope, Send

from .attempts import Exchange
from .pages import MaintenancePage
from .pool import Pool
from .public import StatusBoard, iso

__all__ = ["CLIENT_GONE", "ERROR_STATUS", "ErrorAnswers", "extra_headers", "log_access", "plain"]

_access = logging.getLogger("failover.access")

# nginx's convention for a client that closed the connection before the response started.
CLIENT_GONE = 499
# What the client gets when no attempt produced a response, by the last attempt's result.
ERROR_STATUS: dict[str | int, int] = {"timeout": 504, "pool-full": 503}


class ErrorAnswers:
    """The answers for a pool with no usable origin: the maintenance page when one is set
    (`pages.unavailable`), else a plain 503 naming each origin's state."""

    def __init__(self, page: MaintenancePage | None, board: StatusBoard | None) -> None:
        self.page = page
        self.board = board

    async def all_down(self, scope: Scope, send: Send, pool: Pool) -> None:
        if self.page is not None:
            await self.page_answer(scope, send, 503, pool, None)
            return
        states = ", ".join(f"{o.name}: {o.state}" for o in pool.origins)
        await plain(
            send,
            503,
            f"no origin is usable ({states})",
            [(b"retry-after", pool.retry_after.encode())],
        )

    async def page_answer(
        self,
        scope: Scope,
        send: Send,
        status: int,
        pool: Pool,
        extra: list[tuple[bytes, bytes]] | None,
    ) -> None:
        """The maintenance page (only ever on an error answer of the proxy's own)."""
        assert self.page is not None
        accept = None
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value
                break
        board = self.board
        since = board.since(pool.name) if board is not None else None
        notice = board.notice_for(pool.name) if board is not None else ""
        when = iso(time.time() if since is None else since)
        await self.page.send(send, status, accept, pool.retry_after, when, notice, extra)


def extra_headers(exchange: Exchange) -> list[tuple[bytes, bytes]]:
    extra: list[tuple[bytes, bytes]] = []
    if exchange.pool.attempts_header and exchange.attempts:
        extra.append((b"x-failover-attempts", ", ".join(exchange.attempts).encode()))
    if exchange.plan.not_retried:
        extra.append((b"x-failover-not-retried", exchange.plan.not_retried.encode()))
    return extra


def log_access(scope: Scope, exchange: Exchange, duration: float) -> None:
    """One JSON line per request (`log.access: true`)."""
    client = scope.get("client")
    fields = {
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
    }
    _access.info(json.dumps(fields, separators=(",", ":")))


async def plain(
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
