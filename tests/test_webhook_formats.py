"""Webhook formats (failover.notify): Slack incoming-webhook messages and PagerDuty Events API
v2 alerts, checked by a receiving HTTP server on loopback against the documented shapes, and
the config that selects them.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from failover.config import PAGERDUTY_URL, ConfigError, build_settings
from failover.events import Event
from failover.notify import pagerduty_message, slack_message
from tests.conftest import wait_for
from tests.helpers import origin_dict, origin_header, two_origins_config

ROUTING_KEY = "R0UT1NGKEY0000000000000000000000"
PD_SEVERITIES = {"critical", "error", "warning", "info"}
PD_TRIGGER_KEYS = {"routing_key", "event_action", "dedup_key", "payload", "client"}
PD_PAYLOAD_KEYS = {
    "summary",
    "source",
    "severity",
    "timestamp",
    "component",
    "group",
    "class",
    "custom_details",
}
EVENT_KEYS = {"time", "kind", "pool", "origin", "old", "new", "reason"}


class Receiver:
    """Slack, PagerDuty and plain JSON endpoints on loopback that keep what they receive."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {"json": [], "slack": [], "pd": []}
        self.content_types: set[str] = set()
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/json", self._json)
        app.router.add_post("/slack", self._slack)
        app.router.add_post("/v2/enqueue", self._pagerduty)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.base = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _keep(self, name: str, request: web.Request) -> dict[str, Any]:
        self.content_types.add(request.content_type)
        body: dict[str, Any] = await request.json()
        self.received[name].append(body)
        return body

    async def _json(self, request: web.Request) -> web.Response:
        await self._keep("json", request)
        return web.Response(status=204)

    async def _slack(self, request: web.Request) -> web.Response:
        await self._keep("slack", request)
        return web.Response(text="ok")  # what Slack answers

    async def _pagerduty(self, request: web.Request) -> web.Response:
        body = await self._keep("pd", request)
        answer = {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]}
        return web.json_response(answer, status=202)  # what PagerDuty answers


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = Receiver()
    await running.start()
    yield running
    assert running.runner is not None
    await running.runner.cleanup()


def assert_pagerduty_trigger(message: dict[str, Any]) -> dict[str, Any]:
    assert set(message) == PD_TRIGGER_KEYS
    assert message["routing_key"] == ROUTING_KEY
    assert message["event_action"] == "trigger"
    assert isinstance(message["dedup_key"], str) and 0 < len(message["dedup_key"]) <= 255
    payload: dict[str, Any] = message["payload"]
    assert set(payload) == PD_PAYLOAD_KEYS
    assert isinstance(payload["summary"], str) and 0 < len(payload["summary"]) <= 1024
    assert payload["severity"] in PD_SEVERITIES
    assert payload["source"]
    stamp = datetime.datetime.fromisoformat(payload["timestamp"])
    assert stamp.tzinfo is not None  # ISO 8601 with its offset, as PagerDuty asks
    assert set(payload["custom_details"]) == EVENT_KEYS
    return payload


def assert_slack_message(message: dict[str, Any]) -> None:
    assert set(message) == {"text", "blocks"}
    assert isinstance(message["text"], str) and message["text"]
    for block in message["blocks"]:
        assert block["type"] in ("section", "context")
        texts = [block["text"]] if block["type"] == "section" else block["elements"]
        for text in texts:
            assert text["type"] == "mrkdwn" and isinstance(text["text"], str)


async def test_slack_pagerduty_and_json_receivers_hear_a_failover_and_recovery(
    make_origin: Any, make_proxy: Any, receiver: Receiver
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    webhooks = [
        f"{receiver.base}/json",
        {"url": f"{receiver.base}/slack", "format": "slack", "events": ["traffic-moved"]},
        {"url": f"{receiver.base}/v2/enqueue", "format": "pagerduty", "routing_key": ROUTING_KEY},
    ]
    proxy = await make_proxy(two_origins_config(primary, secondary, events={"webhooks": webhooks}))
    assert await origin_header(proxy) == "primary"

    await primary.set_mode("refuse")
    await wait_for(lambda: any(m["event_action"] == "trigger" for m in receiver.received["pd"]))
    await wait_for(lambda: len(receiver.received["slack"]) >= 1)
    trigger = next(m for m in receiver.received["pd"] if m["event_action"] == "trigger")
    payload = assert_pagerduty_trigger(trigger)
    assert trigger["dedup_key"] == "failover/default/primary"
    assert payload["component"] == "primary" and payload["group"] == "default"
    assert payload["severity"] == "error"
    assert payload["class"] in ("origin-down", "ejected")

    slack = receiver.received["slack"][0]
    assert_slack_message(slack)
    assert "Traffic moved in pool default: primary → secondary" in slack["text"]

    # Both origins gone: one critical alert for the pool.
    await secondary.set_mode("refuse")
    await wait_for(
        lambda: any(m["dedup_key"].endswith("/all-down") for m in receiver.received["pd"])
    )
    down = next(m for m in receiver.received["pd"] if m["dedup_key"].endswith("/all-down"))
    assert assert_pagerduty_trigger(down)["severity"] == "critical"

    # Recovery resolves with the same keys.
    await primary.set_mode("ok")
    await secondary.set_mode("ok")

    def resolved() -> set[str]:
        return {m["dedup_key"] for m in receiver.received["pd"] if m["event_action"] == "resolve"}

    await wait_for(
        lambda: (
            {
                "failover/default/primary",
                "failover/default/secondary",
                "failover/default/all-down",
            }
            <= resolved()
        )
    )
    for message in receiver.received["pd"]:
        if message["event_action"] == "resolve":
            assert message == {
                "routing_key": ROUTING_KEY,
                "event_action": "resolve",
                "dedup_key": message["dedup_key"],
            }
    # Slack heard only the kind it asked for; the plain receiver heard everything, as before.
    assert all(m["text"].startswith("Traffic moved") for m in receiver.received["slack"])
    assert all(set(m) == EVENT_KEYS for m in receiver.received["json"])
    kinds = {m["kind"] for m in receiver.received["json"]}
    assert {"traffic-moved", "origin-up"} <= kinds
    assert receiver.content_types == {"application/json"}


def event(kind: str, origin: str, old: str, new: str, reason: str = "r") -> Event:
    return Event(1_800_000_000.5, kind, origin, old, new, reason, "www")


def test_pagerduty_pages_only_on_what_takes_an_origin_or_a_pool_out() -> None:
    def action(e: Event) -> tuple[str, str] | None:
        message = pagerduty_message(e, ROUTING_KEY, "proxy-1")
        return None if message is None else (message["event_action"], message["dedup_key"])

    assert action(event("origin-down", "a", "healthy", "failed-check")) == (
        "trigger",
        "failover/www/a",
    )
    assert action(event("ejected", "a", "healthy", "ejected")) == ("trigger", "failover/www/a")
    assert action(event("origin-up", "a", "failed-check", "healthy")) == (
        "resolve",
        "failover/www/a",
    )
    # Still ejected after its checks pass again: not resolved yet.
    assert action(event("origin-up", "a", "ejected+failed-check", "ejected")) is None
    assert action(event("restored", "a", "ejected", "healthy")) == ("resolve", "failover/www/a")
    assert action(event("traffic-moved", "b", "a", "b")) is None
    assert action(event("traffic-moved", "-", "b", "none")) == ("trigger", "failover/www/all-down")
    assert action(event("traffic-moved", "a", "none", "a")) == ("resolve", "failover/www/all-down")
    assert action(event("override", "a", "healthy", "drained")) is None
    assert action(event("config-reloaded", "-", "", "")) is None
    long = pagerduty_message(event("origin-down", "a", "healthy", "x", "y" * 5000), "k", "s")
    assert long is not None and len(long["payload"]["summary"]) == 1024
    assert long["payload"]["timestamp"] == "2027-01-15T08:00:00.500+00:00"


def test_slack_text_escapes_its_markup_characters() -> None:
    message = slack_message(event("origin-down", "a", "healthy", "failed-check", "<b> & <!here>"))
    assert "&lt;b&gt; &amp; &lt;!here&gt;" in message["text"]
    assert "<!here>" not in str(message)


# -- config ---------------------------------------------------------------------------------


def problems(webhooks: list[Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_settings({"origins": [origin_dict("a")], "events": {"webhooks": webhooks}})
    return caught.value.problems


def test_plain_urls_keep_working_as_json() -> None:
    settings = build_settings(
        {"origins": [origin_dict("a")], "events": {"webhooks": ["http://127.0.0.1:9/h"]}}
    )
    (hook,) = settings.events.webhooks
    assert (hook.url, hook.format, hook.events) == ("http://127.0.0.1:9/h", "json", [])


def test_pagerduty_defaults_to_the_events_api_url() -> None:
    settings = build_settings(
        {
            "origins": [origin_dict("a")],
            "events": {"webhooks": [{"format": "pagerduty", "routing_key": ROUTING_KEY}]},
        }
    )
    assert (
        settings.events.webhooks[0].url
        == PAGERDUTY_URL
        == "https://events.pagerduty.com/v2/enqueue"
    )


def test_webhook_config_errors_name_the_field_and_value() -> None:
    assert problems([{"url": "http://127.0.0.1:9/h", "format": "teams"}]) == [
        "events.webhooks[0].format: Input should be 'json', 'slack' or 'pagerduty', got 'teams'"
    ]
    assert problems([{"format": "pagerduty"}]) == [
        "events.webhooks[0]: format 'pagerduty' needs routing_key (the integration key of a "
        "PagerDuty service)"
    ]
    assert problems([{"format": "slack"}]) == ["events.webhooks[0]: format 'slack' needs url"]
    found = problems([{"url": "http://127.0.0.1:9/h", "events": ["origin-dwn"]}])
    assert found[0].startswith("events.webhooks[0].events: 'origin-dwn' is not a kind of event")
    assert problems(["ftp://x"]) == ["events.webhooks: 'ftp://x' is not an http(s) URL"]
