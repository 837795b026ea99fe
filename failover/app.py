"""The composition root: builds every part from Settings and owns their lifetimes.

`App` is the ASGI application uvicorn runs. Its lifespan opens the connection pools, starts
one probe loop per origin and the housekeeping loop, and on shutdown cancels and awaits them
and closes the pools. Clock and randomness are injected here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from .admin import build_admin
from .config import Settings, default_config_path, load_config
from .engine import Engine
from .events import EventLog
from .health import probe_loop
from .origins import Origin, build_origins
from .proxy import Message, Proxy, Receive, Scope, Send
from .upstream import Upstream

__all__ = ["App", "create_app"]

logger = logging.getLogger("failover")

TICK = 1.0  # seconds between housekeeping rounds


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self.events = EventLog(wall_clock)
        self.origins = build_origins(settings)
        self.engine = Engine(settings, self.origins, self.events, clock)
        self.upstream = Upstream(settings)
        self.proxy = Proxy(settings, self.engine, self.upstream, build_admin(self), clock)
        self.tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        else:
            await self.proxy(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("Start-up failed.")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        for origin in self.origins:
            self.upstream.add(origin)
            if origin.health.enabled:
                self.spawn(self._probe(origin), f"probe {origin.name}")
        self.spawn(self._housekeeping(), "housekeeping")
        names = ", ".join(f"{o.name} (priority {o.priority})" for o in self.origins)
        logger.info("Proxying to %s.", names)

    async def shutdown(self) -> None:
        tasks, self.tasks = self.tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.upstream.close()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Start an owned background task; its crash is logged, never silent."""
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                logger.error("Background task %r crashed.", name, exc_info=task.exception())

        task.add_done_callback(done)
        return task

    async def _probe(self, origin: Origin) -> None:
        def on_next(delay: float) -> None:
            self.engine.next_probe_at[origin.name] = self.clock() + delay

        await probe_loop(
            origin.health,
            lambda: self.upstream.probe(origin),
            lambda result: self.engine.on_probe(origin, result),
            on_next,
            self.rng,
        )

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            try:
                self.engine.tick()
            except Exception:
                logger.exception("Housekeeping failed; trying again in %g s.", TICK)


def create_app(config_path: str | Path | None = None) -> App:
    """The factory uvicorn's workers call (`failover.app:create_app`)."""
    return App(load_config(config_path or default_config_path()))
