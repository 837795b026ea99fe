"""The attempts of one request at its pool's origins: pick, try, retry or hedge, report.

`Exchange` is one client request on its way through the attempts. `Attempts.run` sends it to
the origin the pool's engine picks and on to the next while the request's `RetryPlan` allows,
reports every attempt to the engine (a full connection pool excepted: that is not the
origin's failure), and returns the origin whose response, or failure, stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .metrics import Metrics
from .origins import Origin
from .pool import Pool
from .retry import RequestBody, RetryPlan
from .upstream import Upstream, UpstreamError, UpstreamResponse

__all__ = ["Attempts", "Exchange", "Outcome"]

_HEDGED_METHODS = frozenset({"GET", "HEAD"})

Outcome = tuple[Origin, UpstreamResponse | None, str | int]
_Tried = tuple[UpstreamResponse | None, str | int]


@dataclass(slots=True)
class Exchange:
    """One client request on its way through the attempts."""

    pool: Pool
    plan: RetryPlan
    method: str
    target: str  # as sent upstream (a route may strip a prefix)
    headers: list[tuple[str, str]]  # to send upstream, Host excepted
    client_host: str | None
    body: RequestBody | None
    host_header: str | None = None  # the route's Host for upstream, if it sets one
    mount: str = ""  # the path prefix a route stripped (put back in rewritten Locations)
    status: int = 0  # as sent to the client; 0 while nothing was
    origin: str = "-"  # the origin whose answer was sent
    bytes_out: int = 0
    attempts: list[str] = field(default_factory=list)  # "name;result", for X-Failover-Attempts
    failures: list[str] = field(default_factory=list)  # "name: detail", for error bodies
    active: bool = True  # False once the request is over
    gone: bool = False  # the client closed its connection while the request was in progress

    def client_left(self) -> bool:
        """The listener's disconnect callback: True (cancel the request's task) while the
        request is in progress."""
        if not self.active:
            return False
        self.gone = True
        return True


class Attempts:
    def __init__(
        self,
        upstream: Upstream,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
    ) -> None:
        self.upstream = upstream
        self.clock = clock
        self.metrics = metrics

    async def run(self, exchange: Exchange, origin: Origin) -> Outcome:
        """Try `origin`, then the next ones as the plan allows; the last outcome stands."""
        pool, plan = exchange.pool, exchange.plan
        hedge = (
            pool.hedge_after is not None
            and exchange.body is None
            and exchange.method in _HEDGED_METHODS
        )
        while True:
            plan.tried.append(origin)
            if hedge:
                origin, response, result = await self._hedged(origin, exchange)
            else:
                response, result = await self._try(origin, exchange)
            following = plan.next(origin, result, self.clock())
            if following is None:
                if plan.not_retried and self.metrics is not None:
                    self.metrics.retry_refused(pool.name, plan.not_retried)
                return origin, response, result
            if response is not None:
                response.close()
            self._start_retry(exchange, result)
            origin = following

    def _start_retry(self, exchange: Exchange, reason: str | int) -> None:
        if self.metrics is not None:
            self.metrics.retry(exchange.pool.name, reason)
        exchange.plan.start_retry()

    async def _try(self, origin: Origin, exchange: Exchange) -> _Tried:
        """One attempt, reported to the engine and noted in the exchange."""
        started = self.clock()
        response: UpstreamResponse | None = None
        result: str | int
        host = exchange.host_header or (exchange.client_host if origin.preserve_host else None)
        body = exchange.body
        first_byte = exchange.pool.first_byte
        remaining = exchange.plan.remaining(started)
        if remaining is not None:
            first_byte = min(first_byte, remaining)
        deadline = None
        if body is not None:
            # The first-byte clock starts once the whole request is upstream (unless the
            # response came before the body ended).
            deadline = _first_byte_after_body(body, first_byte)
        try:
            response = await self.upstream.open(
                origin,
                exchange.method,
                exchange.target,
                [("Host", host or origin.host_header), *exchange.headers],
                body,
                first_byte,
                deadline,
            )
            result = response.status
        except UpstreamError as error:
            result = error.kind
            exchange.failures.append(f"{origin.name}: {error.detail}")
        except asyncio.CancelledError:
            exchange.attempts.append(f"{origin.name};cancelled")
            raise
        metrics = self.metrics
        if result != "pool-full":
            exchange.pool.engine.on_attempt(origin, result, self.clock() - started)
        elif metrics is not None:  # a busy pool is ours to fix, not the origin's failure
            metrics.pool_full.labels(origin.pool_name, origin.name).inc()
        if metrics is not None:
            metrics.attempt(origin.pool_name, origin.name, result)
        exchange.attempts.append(f"{origin.name};{result}")
        return response, result

    async def _hedged(self, origin: Origin, exchange: Exchange) -> Outcome:
        """Send to `origin`; if it has not answered with headers within `hedge_after`, send the
        same request to the next origin too. The first response with headers wins; the other
        attempt is cancelled, which closes its connection."""
        pool, plan = exchange.pool, exchange.plan
        first = asyncio.ensure_future(self._try(origin, exchange))
        try:
            with contextlib.suppress(TimeoutError):
                return origin, *(await asyncio.wait_for(asyncio.shield(first), pool.hedge_after))
            second_origin = plan.hedge(origin, self.clock())
            if second_origin is None:
                return origin, *(await first)
        except asyncio.CancelledError:
            first.cancel()  # the shielded attempt must not outlive its request
            raise
        plan.tried.append(second_origin)
        self._start_retry(exchange, "hedge")
        second = asyncio.ensure_future(self._try(second_origin, exchange))
        owners: dict[asyncio.Future[_Tried], Origin] = {first: origin, second: second_origin}
        pending: set[asyncio.Future[_Tried]] = {first, second}
        outcome: Outcome | None = None
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


def _first_byte_after_body(body: RequestBody, first_byte: float) -> asyncio.Timeout:
    """A timeout armed only once `body` has been sent in full: `first_byte` from then."""
    deadline = asyncio.timeout(None)
    loop = asyncio.get_running_loop()

    def body_sent() -> None:
        with contextlib.suppress(RuntimeError):
            deadline.reschedule(loop.time() + first_byte)

    body.on_complete = body_sent
    return deadline
