"""Origin: one upstream (url, priority, weight, Host header) and its health flags.

As in Envoy, an origin's health is a set of independent flags: a failed active check, an
ejection by passive detection, an operator's drain or disable, a drill's drain. It is usable
when none is set.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .config import HealthConfig, OriginConfig, OriginTLSConfig, PoolConfig, TimeoutsConfig

__all__ = ["OPERATOR_FLAGS", "Flag", "Origin", "build_origins"]


class Flag(enum.Enum):
    FAILED_CHECK = "failed-check"
    EJECTED = "ejected"
    DRAINED = "drained"
    DISABLED = "disabled"
    DRILL = "drill"  # drained by a failover drill (failover.drills), restored when it ends
    DIVERGED = "diverged"  # its canaries differ from the parity reference's (failover.parity)


OPERATOR_FLAGS = frozenset({Flag.DRAINED, Flag.DISABLED})


@dataclass(eq=False)
class Origin:
    """One upstream. Everything the hot path needs is computed here once per config."""

    name: str
    url: str
    priority: int
    weight: int
    health: HealthConfig
    preserve_host: bool
    host_header: str  # the Host sent upstream unless preserve_host
    base: str  # scheme://host[:port] followed by the url's path prefix, no trailing slash
    name_header: bytes = b""
    pool_name: str = "default"  # the pool it belongs to
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)  # its pool's
    tls: OriginTLSConfig | None = None  # an https origin's: its own keys over its pool's
    flags: set[Flag] = field(default_factory=set)
    # Set by the health engine: when this origin last became usable again, and since when
    # (if ever) it may take traffic after its failback hold-down.
    reason: str = "started"
    changed_at: float = 0.0
    pool: Any = None  # the keep-alive connection pool, set by upstream.py
    parity: str = ""  # the last parity finding (failover.parity), "" if none

    @property
    def usable(self) -> bool:
        return not self.flags

    @property
    def state(self) -> str:
        """One word for humans: `healthy`, or the flags joined by '+'."""
        if not self.flags:
            return "healthy"
        return "+".join(sorted(flag.value for flag in self.flags))

    @classmethod
    def from_config(
        cls, config: OriginConfig, health: HealthConfig, pool_name: str = "default"
    ) -> Origin:
        parts = urlsplit(config.url)
        default_port = 443 if parts.scheme == "https" else 80
        netloc_host = parts.hostname or ""
        if ":" in netloc_host:
            netloc_host = f"[{netloc_host}]"
        port = parts.port or default_port
        host = netloc_host if port == default_port else f"{netloc_host}:{port}"
        return cls(
            name=config.name,
            url=config.url,
            priority=config.priority,
            weight=config.weight,
            health=health,
            preserve_host=config.preserve_host,
            host_header=config.host_header or host,
            base=f"{parts.scheme}://{netloc_host}:{port}{parts.path.rstrip('/')}",
            name_header=config.name.encode(),
            pool_name=pool_name,
        )


def build_origins(config: PoolConfig, pool_name: str = "default") -> list[Origin]:
    """A pool's origins, sorted by priority (stable: config order within a tier)."""
    origins = [Origin.from_config(o, config.health_for(o), pool_name) for o in config.origins]
    for origin, own in zip(origins, config.origins, strict=True):
        origin.timeouts = config.timeouts
        origin.tls = config.tls_for(own)
    return sorted(origins, key=lambda origin: origin.priority)
