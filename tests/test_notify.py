"""Webhook notifications (failover.notify), end to end on loopback: a receiver hears the
primary fail, and a dead receiver never delays proxying.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import free_port, wait_for
from tests.helpers import get_metrics, metric, origin_header, two_origins_config


class Receiver:
    """A webhook receiver on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response(status=204)

    def kinds(self) -> set[tuple[str, str, str, str]]:
        return {(e["kind"], e["origin"], e["old"], e["new"]) for e in self.received}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = Receiver()
    await running.start()
    yield running
    assert running.runner is not None
    await running.runner.cleanup()


async def test_a_webhook_hears_the_primary_fail(
    make_origin: Any, make_proxy: Any, receiver: Receiver
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(
        two_origins_config(primary, secondary, events={"webhooks": [receiver.url]})
    )
    assert await origin_header(proxy) == "primary"
    await primary.set_mode("refuse")

    def heard_the_failover() -> bool:
        kinds = receiver.kinds()
        down = any(k[0] in ("origin-down", "ejected") and k[1] == "primary" for k in kinds)
        return down and ("traffic-moved", "secondary", "primary", "secondary") in kinds

    await wait_for(heard_the_failover, timeout=5)
    moved = next(e for e in receiver.received if e["kind"] == "traffic-moved")
    assert set(moved) == {"time", "kind", "pool", "origin", "old", "new", "reason"}
    assert "primary" in moved["reason"]
    assert abs(moved["time"] - time.time()) < 10
    assert await origin_header(proxy) == "secondary"


async def test_a_dead_webhook_never_delays_proxying(make_origin: Any, make_proxy: Any) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    proxy = await make_proxy(two_origins_config(primary, secondary, events={"webhooks": [dead]}))
    webhooks = proxy.app.webhooks
    assert webhooks is not None
    await primary.set_mode("refuse")

    # While the sender retries (0.5 + 1 + 2 s of back-off per notification), requests stay fast.
    loop = asyncio.get_running_loop()
    slowest = 0.0
    served = 0
    deadline = loop.time() + 10
    while webhooks.dropped == 0:
        assert loop.time() < deadline, "the dead webhook's notification was never dropped"
        began = loop.time()
        response = await proxy.client.get("/echo")
        slowest = max(slowest, loop.time() - began)
        assert response.status_code == 200
        served += 1
        await asyncio.sleep(0.02)
    assert served >= 20
    # Delivery that held up the event loop would stall requests for its 0.5-2 s pauses.
    assert slowest < 1.0, f"a request took {slowest:.3f} s while the webhook was retrying"

    text = await get_metrics(proxy.client)
    dropped = metric(text, "failover_webhook_dropped_total")
    assert dropped is not None and dropped >= 1
