"""State-change events: one structured log line each, and a bounded in-memory history."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
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
    kind: str  # origin-down, origin-up, ejected, restored, traffic-moved, config, override
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
        self._emitted = 0  # events since start; an event's number is its position in that count
        self._waiters: list[asyncio.Future[None]] = []

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def emit(
        self, kind: str, origin: str, old: str, new: str, reason: str, pool: str = "-"
    ) -> Event:
        event = Event(self._wall_clock(), kind, origin, old, new, reason, pool)
        self._events.append(event)
        self._emitted += 1
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
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

    @property
    def emitted(self) -> int:
        """How many events were emitted since start: the number the next one gets."""
        return self._emitted

    @property
    def followers(self) -> int:
        """How many long polls wait for the next event."""
        return len(self._waiters)

    def since(self, number: int) -> list[Event]:
        """The events still held whose number is `number` or more, oldest first. A number
        beyond the count (a cursor from before a restart) starts again from the oldest."""
        if number > self._emitted:
            number = 0
        first = self._emitted - len(self._events)
        return list(itertools.islice(self._events, max(0, number - first), None))

    async def wait(self, number: int, seconds: float) -> None:
        """Return once event `number` exists (or a cursor is from before a restart), or after
        `seconds`."""
        if number != self._emitted:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
