"""What may be retried, and the request body kept so that a retry can replay it.

The body is read from the client before an upstream connection is taken, up to
`retry.max_buffered_body` bytes or its end; a larger one streams through without a copy, and
once a byte past the buffer has gone upstream it cannot be replayed. Every wait for the client
is bounded by `limits.body_timeout`, and `limits.max_body_bytes` caps the whole body.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from .config import RetryConfig

__all__ = ["BodyRejected", "ClientGone", "RequestBody", "RetryBudget", "RetryPolicy"]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Exception):
    """The client went away while its request body was being read."""


class BodyRejected(Exception):
    """The client's body broke a limit: `status` is 408 (too slow) or 413 (too large)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestBody:
    """The client's request body, read on demand and kept while it fits the replay limit."""

    def __init__(
        self,
        receive: Receive,
        limit: int,
        timeout: float = 30.0,
        max_bytes: int | None = None,
    ) -> None:
        self._receive = receive
        self._limit = limit
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._kept: list[bytes] = []
        self.size = 0  # bytes read from the client so far
        self.complete = False
        self.replayable = True  # every byte read so far is kept
        self.on_complete: Callable[[], None] | None = None

    @property
    def can_replay(self) -> bool:
        return self.replayable

    async def prefetch(self) -> None:
        """Read the body up to the replay limit or its end, before any origin is involved."""
        while not self.complete and self.size <= self._limit:
            chunk = await self._read()
            if chunk:
                self._kept.append(chunk)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole body from its first byte: what is kept, then the rest from the client."""
        if not self.replayable:
            raise RuntimeError("the request body was streamed upstream already")
        kept = self._kept
        if self.size > self._limit:
            # Read past the limit before sending: sent once from here, never kept again.
            self.replayable = False
            self._kept = []
        for chunk in kept:
            yield chunk
        while not self.complete:
            chunk = await self._read()
            if chunk:
                if self.replayable:
                    if self.size <= self._limit:
                        self._kept.append(chunk)
                    else:
                        self.replayable = False
                        self._kept.clear()
                yield chunk
        if self.on_complete is not None:
            self.on_complete()

    async def _read(self) -> bytes:
        """The client's next body bytes, within `body_timeout` and `max_body_bytes`."""
        try:
            async with asyncio.timeout(self._timeout):
                message = await self._receive()
        except TimeoutError:
            raise BodyRejected(
                408, f"no request body bytes for {self._timeout:g} s (limits.body_timeout)"
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        self.complete = not message.get("more_body", False)
        self.size += len(chunk)
        if self._max_bytes is not None and self.size > self._max_bytes:
            raise BodyRejected(
                413, f"request body over {self._max_bytes} bytes (limits.max_body_bytes)"
            )
        return chunk


class RetryBudget:
    """Retries in flight may not exceed `ratio` of active requests, with a floor, so that a
    failing primary does not hit the next origin with double load."""

    def __init__(self, ratio: float, floor: int) -> None:
        self.ratio = ratio
        self.floor = floor
        self.active = 0  # requests in flight
        self.retries = 0  # of which are retrying (or hedging)

    def allows(self) -> bool:
        return self.retries < max(self.floor, self.ratio * self.active)


class RetryPolicy:
    """Decides whether a failed attempt may be tried again on another origin."""

    def __init__(self, config: RetryConfig) -> None:
        self.attempts = config.attempts
        self.conditions = frozenset(item for item in config.on if isinstance(item, str))
        self.statuses = frozenset(item for item in config.on if isinstance(item, int))
        self.methods = frozenset(config.methods)
        self.idempotency_key = config.idempotency_key

    def retries_status(self, status: int) -> bool:
        return status in self.statuses

    def refusal(
        self,
        failure: str | int,
        method: str,
        body: RequestBody | None,
        attempts: int,
        idempotency_key: bool,
    ) -> str | None:
        """None when the failed attempt may be retried, else the reason it may not be."""
        if isinstance(failure, int):
            if failure not in self.statuses:
                return "status"
        elif failure not in self.conditions:
            return "condition"
        nothing_sent = failure == "connect-failure"
        if (
            not nothing_sent
            and method not in self.methods
            and not (idempotency_key and self.idempotency_key)
        ):
            return "method"
        if body is not None and not body.replayable:
            return "body-too-large"
        if attempts >= self.attempts:
            return "attempts"
        return None
