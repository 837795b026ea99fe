"""One pool: a named set of origins with its own policies, engine and stale copies.

A pool is the unit the proxy works with: the router names a pool for each request, and
everything the attempts need (which origin, how long to wait, whether to retry, what to say
in the headers) comes from the pool. It is built from its `PoolConfig` once per config; a
reload builds a new one that inherits the state of the pool of the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .config import PoolConfig
from .engine import Engine
from .events import EventLog
from .headers import LocationRewriter
from .origins import Origin, build_origins
from .retry import RetryBudget, RetryPolicy
from .stale import StaleCache

__all__ = ["Pool"]


class Pool:
    def __init__(
        self,
        name: str,
        config: PoolConfig,
        events: EventLog,
        clock: Callable[[], float],
        previous: Pool | None = None,
        route_hosts: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.config = config
        origins = build_origins(config, name)
        self.engine: Engine = Engine(
            config, origins, events, clock, previous.engine if previous else None, name
        )
        self.origins: list[Origin] = self.engine.origins
        self.policy = RetryPolicy(config.retry)
        self.budget = RetryBudget(config.retry.budget, config.retry.min_retries_in_flight)
        self.first_byte = config.timeouts.first_byte
        self.request_timeout = config.timeouts.request
        self.hedge_after = config.retry.hedge_after
        self.max_buffered = config.retry.max_buffered_body
        self.all_down = config.all_down
        self.failure_statuses = config.passive.failure_statuses
        self.origin_header = config.proxy.origin_header
        self.attempts_header = config.proxy.attempts_header
        self.retry_after = str(max(1, round(config.health.interval)))
        self.stale: StaleCache | None = None
        if config.stale.enabled:
            if previous is not None and previous.config.stale == config.stale:
                self.stale = previous.stale  # a reload keeps the stored copies
            else:
                self.stale = StaleCache(config.stale)
        # nginx's `proxy_redirect default`: Location headers that name the origin that
        # answered are rewritten to the site the client asked for.
        self.rewriters: dict[str, LocationRewriter] | None = None
        if config.proxy.rewrite_location:
            hosts = list(route_hosts)
            self.rewriters = {
                o.name: LocationRewriter(o.url, [o.host_header, *hosts]) for o in origins
            }
