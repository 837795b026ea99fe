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
from .origins import Origin

__all__ = [
    "BodyRejected",
    "ClientGone",
    "RequestBody",
    "RetryBudget",
    "RetryPlan",
    "RetryPolicy",
]

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


class RetryPlan:
    """The decision after each attempt of one request: the origin to try next, or stop with a
    reason. One object for the plain path and the hedged one, so that both obey the same
    attempts, budget and deadline. Pure: the caller passes `now`; the candidates come from the
    pool's engine (`next_after`, itself pure).

    The budget guards an origin still believed healthy against retry storms; once the failed
    origin is ejected or failed, the retry is the failover and the budget does not apply."""

    __slots__ = (
        "body",
        "budget",
        "deadline_at",
        "idempotency_key",
        "method",
        "next_after",
        "not_retried",
        "policy",
        "retrying",
        "tried",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        next_after: Callable[[list[Origin]], Origin | None],
        method: str,
        body: RequestBody | None,
        idempotency_key: bool,
        deadline_at: float | None,
    ) -> None:
        self.policy = policy
        self.budget = budget
        self.next_after = next_after
        self.method = method
        self.body = body
        self.idempotency_key = idempotency_key
        self.deadline_at = deadline_at
        self.tried: list[Origin] = []
        self.retrying = False  # counted as a retry in flight (once, however many retries)
        self.not_retried = ""  # why a possible retry was refused, for X-Failover-Not-Retried

    def remaining(self, now: float) -> float | None:
        """Seconds left before `timeouts.request`, None without one."""
        if self.deadline_at is None:
            return None
        return max(0.0, self.deadline_at - now)

    def next(self, origin: Origin, result: str | int, now: float) -> Origin | None:
        """After `origin` answered `result`: the next origin, or None to stop."""
        if isinstance(result, int) and not self.policy.retries_status(result):
            return None
        refusal = self.policy.refusal(
            result, self.method, self.body, len(self.tried), self.idempotency_key
        )
        following = None
        if refusal is None:
            following = self.next_after(self.tried)
            if following is not None:
                refusal = self._limit(origin, now)
                if refusal is not None:
                    following = None
        if following is None and refusal not in (None, "status", "condition"):
            self.not_retried = refusal or ""
        return following

    def hedge(self, origin: Origin, now: float) -> Origin | None:
        """The origin to send a hedge to while `origin` has not answered, if any may be."""
        following = self.next_after(self.tried)
        if following is None or self._limit(origin, now) is not None:
            return None
        return following

    def _limit(self, origin: Origin, now: float) -> str | None:
        if self.remaining(now) == 0.0:
            return "deadline"
        if not self.retrying and origin.usable and not self.budget.allows():
            return "budget"
        return None

    def start_retry(self) -> None:
        """This request now retries (or hedges): it counts against the budget until it ends."""
        if not self.retrying:
            self.retrying = True
            self.budget.retries += 1

    def finish(self) -> None:
        if self.retrying:
            self.budget.retries -= 1
