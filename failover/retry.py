"""What may be retried, and the request body kept so that a retry can replay it.

A body up to `retry.max_buffered_body` bytes is kept as it streams; a larger one streams through
without a copy, and once a byte of it has gone upstream it cannot be replayed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from .config import RetryConfig

__all__ = ["ClientGone", "RequestBody", "RetryBudget", "RetryPolicy"]

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Exception):
    """The client went away while its request body was being read."""


class RequestBody:
    """The client's request body, read on demand and kept while it fits the replay limit."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self._limit = limit
        self._kept: list[bytes] = []
        self.size = 0  # bytes read from the client so far
        self.complete = False
        self.replayable = True  # every byte read so far is kept
        self.on_complete: Callable[[], None] | None = None

    @property
    def can_replay(self) -> bool:
        return self.replayable

    async def chunks(self) -> AsyncIterator[bytes]:
        """The whole body from its first byte: what is kept, then the rest from the client."""
        if not self.replayable:
            raise RuntimeError("the request body was streamed upstream already")
        for chunk in list(self._kept):
            yield chunk
        while not self.complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunk = message.get("body", b"")
            self.complete = not message.get("more_body", False)
            if chunk:
                self.size += len(chunk)
                if self.replayable:
                    if self.size <= self._limit:
                        self._kept.append(chunk)
                    else:
                        self.replayable = False
                        self._kept.clear()
                yield chunk
        if self.on_complete is not None:
            self.on_complete()


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
