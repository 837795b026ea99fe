"""The running config: settings, router and pools, built together from one Settings.

A config reload builds a new `Runtime` (pools inherit the state of the pools of the same name)
and the app swaps it in one assignment; requests in flight finish on the one they started on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import Settings
from .engine import Engine
from .events import EventLog
from .origins import Origin
from .pool import Pool
from .router import Router, routes_from

__all__ = ["Runtime", "build_runtime"]


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    router: Router
    pools: dict[str, Pool]
    origins: dict[str, Origin]  # every origin by name: names are unique across pools

    def pool_of(self, origin: Origin) -> Pool:
        return self.pools[origin.pool_name]

    def engine_of(self, name: str) -> Engine | None:
        """The engine of the origin named `name`, None if there is none."""
        origin = self.origins.get(name)
        return None if origin is None else self.pools[origin.pool_name].engine


def build_runtime(
    settings: Settings,
    events: EventLog,
    clock: Callable[[], float],
    previous: Runtime | None = None,
    on_eject: Callable[[Origin, str], None] | None = None,
) -> Runtime:
    """Pools and router for `settings` (validated by `build_settings`)."""
    routes = routes_from(settings.routes)
    route_hosts: dict[str, list[str]] = {}
    for route in routes:
        if route.host_header:
            route_hosts.setdefault(route.pool, []).append(route.host_header)
    pools: dict[str, Pool] = {}
    for name, config in settings.pools.items():
        before = previous.pools.get(name) if previous is not None else None
        pool = Pool(name, config, events, clock, before, route_hosts.get(name, ()))
        pool.engine.on_eject = on_eject
        pools[name] = pool
    origins = {o.name: o for pool in pools.values() for o in pool.origins}
    return Runtime(settings, Router(routes, pools), pools, origins)
