"""State-change events: one structured log line each, and a bounded in-memory history."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Event", "EventLog"]

logger = logging.getLogger("failover.events")


@dataclass(frozen=True)
class Event:
    time: float  # wall-clock seconds since the epoch
    kind: str  # origin-down, origin-up, ejected, restored, traffic-moved, ramp-start, ramp-end,
    # config, override
    origin: str
    old: str
    new: str
    reason: str
    pool: str = "-"  # the pool of the origin, "-" for events of the whole proxy

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """Keeps the newest `size` events and logs each one as it happens."""

    def __init__(self, wall_clock: Callable[[], float], size: int = 500) -> None:
        self._wall_clock = wall_clock
        self._events: deque[Event] = deque(maxlen=size)
        self._listeners: list[Callable[[Event], None]] = []

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def emit(
        self, kind: str, origin: str, old: str, new: str, reason: str, pool: str = "-"
    ) -> Event:
        event = Event(self._wall_clock(), kind, origin, old, new, reason, pool)
        self._events.append(event)
        logger.warning(
            "event=%s pool=%s origin=%s old=%s new=%s reason=%r",
            kind,
            pool,
            origin,
            old,
            new,
            reason,
        )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("An event listener failed on %s.", kind)
        return event

    def newest_first(self, limit: int | None = None) -> list[Event]:
        events = list(reversed(self._events))
        return events if limit is None else events[:limit]
