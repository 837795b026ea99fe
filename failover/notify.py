"""Webhook notifications: every event is POSTed as JSON to each configured URL.

A bounded queue sits between the event log and the sender, so a slow or dead receiver never
delays proxying and never grows memory without bound: when the queue is full, or a delivery
has failed every try, the notification is dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import aiohttp

from .events import Event

__all__ = ["Webhooks"]

logger = logging.getLogger("failover.webhooks")

BACKOFF = (0.5, 1.0, 2.0)  # pauses between tries; len + 1 tries in all


class Webhooks:
    def __init__(
        self,
        urls: list[str],
        timeout: float,
        queue_size: int,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.urls = urls
        self.timeout = timeout
        self.queue: asyncio.Queue[tuple[str, Event]] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.delivered = 0
        self._on_drop = on_drop
        self._session: aiohttp.ClientSession | None = None

    def notify(self, event: Event) -> None:
        """Called by the event log; never blocks."""
        for url in self.urls:
            try:
                self.queue.put_nowait((url, event))
            except asyncio.QueueFull:
                self._drop(url, event, "the queue is full")

    def _drop(self, url: str, event: Event, why: str) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        logger.warning("Dropped the %s event for %s: %s.", event.kind, url, why)

    async def run(self) -> None:
        """Deliver queued notifications one at a time, forever (cancelled on shutdown)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            while True:
                url, event = await self.queue.get()
                await self._deliver(url, event)
        finally:
            await self._session.close()

    async def _deliver(self, url: str, event: Event) -> None:
        assert self._session is not None
        problem = ""
        for pause in (*BACKOFF, None):
            try:
                async with self._session.post(url, json=event.as_dict()) as response:
                    if response.status < 300:
                        self.delivered += 1
                        return
                    problem = f"status {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if pause is not None:
                await asyncio.sleep(pause)
        self._drop(url, event, f"{len(BACKOFF) + 1} tries failed, the last with {problem}")
