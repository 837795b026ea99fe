"""Webhook notifications: events POSTed to each configured receiver in its format.

- `json`: the event as it is (time, kind, pool, origin, old, new, reason).
- `slack`: an incoming-webhook message, `text` plus `blocks`.
- `pagerduty`: Events API v2. An origin that goes down (failed checks, ejected) triggers an
  alert and its recovery resolves it, one `dedup_key` per origin; a pool with no usable
  origin left triggers a critical alert of its own, resolved when traffic flows again. Other
  events are not sent there.

A bounded queue sits between the event log and the sender, so a slow or dead receiver never
delays proxying and never grows memory without bound: when the queue is full, or a delivery
has failed every try, the notification is dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
from collections.abc import Callable
from typing import Any

import aiohttp

from .config import WebhookConfig
from .events import Event

__all__ = ["Webhooks", "pagerduty_message", "slack_message"]

logger = logging.getLogger("failover.webhooks")

BACKOFF = (0.5, 1.0, 2.0)  # pauses between tries; len + 1 tries in all
_SUMMARY = 1024  # PagerDuty's limit on payload.summary


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")


def _slack_escape(text: str) -> str:
    """Slack's mrkdwn takes &, < and > as markup: these three are escaped, nothing else."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _headline(event: Event) -> str:
    pool = f" in pool {event.pool}" if event.pool != "-" else ""
    if event.kind == "traffic-moved":
        return f"Traffic moved{pool}: {event.old} → {event.new}"
    if event.kind == "config-reloaded":
        return "Config reloaded"
    return f"{event.origin}{pool}: {event.old} → {event.new} ({event.kind})"


def slack_message(event: Event) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (also the notification) and `blocks`."""
    headline = _slack_escape(_headline(event))
    reason = _slack_escape(event.reason)
    when = datetime.datetime.fromtimestamp(event.time, datetime.UTC)
    return {
        "text": f"{headline}: {reason}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"*{headline}*\n{reason}"}},
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": f"failover · {event.kind} · {when:%Y-%m-%d %H:%M:%S} UTC",
                    }
                ],
            },
        ],
    }


_DOWN_KINDS = ("origin-down", "ejected", "diverged")
_UP_KINDS = ("origin-up", "restored", "converged")


def pagerduty_message(event: Event, routing_key: str, source: str) -> dict[str, Any] | None:
    """An Events API v2 message for `event`, or None when the event is not one to page on."""
    if event.kind in _DOWN_KINDS or event.kind in _UP_KINDS:
        component, dedup = event.origin, f"failover/{event.pool}/{event.origin}"
        trigger = event.kind in _DOWN_KINDS
        if not trigger and event.new != "healthy":
            return None  # still out for another reason (another flag is set)
        severity = "error"
    elif event.kind == "traffic-moved" and "none" in (event.old, event.new):
        component, dedup = event.pool, f"failover/{event.pool}/all-down"
        trigger = event.new == "none"
        severity = "critical"
    else:
        return None
    if not trigger:
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup}
    summary = f"{_headline(event)}: {event.reason}"
    if event.kind == "traffic-moved":
        summary = f"No usable origin in pool {event.pool}: {event.reason}"
    return {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup,
        "payload": {
            "summary": summary[:_SUMMARY],
            "source": source,
            "severity": severity,
            "timestamp": _iso(event.time),
            "component": component,
            "group": event.pool,
            "class": event.kind,
            "custom_details": event.as_dict(),
        },
        "client": "failover",
    }


class Webhooks:
    def __init__(
        self,
        receivers: list[WebhookConfig],
        timeout: float,
        queue_size: int,
        on_drop: Callable[[], None] | None = None,
        source: str | None = None,
    ) -> None:
        self.receivers = receivers
        self.timeout = timeout
        self.source = source or socket.gethostname()
        self.queue: asyncio.Queue[tuple[WebhookConfig, Event]] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.delivered = 0
        self._on_drop = on_drop
        self._session: aiohttp.ClientSession | None = None

    def notify(self, event: Event) -> None:
        """Called by the event log; never blocks."""
        for receiver in self.receivers:
            if receiver.events and event.kind not in receiver.events:
                continue
            try:
                self.queue.put_nowait((receiver, event))
            except asyncio.QueueFull:
                self._drop(receiver, event, "the queue is full")

    def _drop(self, receiver: WebhookConfig, event: Event, why: str) -> None:
        self.dropped += 1
        if self._on_drop is not None:
            self._on_drop()
        logger.warning("Dropped the %s event for %s: %s.", event.kind, receiver.url, why)

    def message(self, receiver: WebhookConfig, event: Event) -> dict[str, Any] | None:
        """The body for `receiver`, or None when its format has nothing to say."""
        if receiver.format == "slack":
            return slack_message(event)
        if receiver.format == "pagerduty":
            assert receiver.routing_key is not None  # the config requires it
            return pagerduty_message(event, receiver.routing_key, self.source)
        return event.as_dict()

    async def run(self) -> None:
        """Deliver queued notifications one at a time, forever (cancelled on shutdown)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        try:
            while True:
                receiver, event = await self.queue.get()
                body = self.message(receiver, event)
                if body is not None:
                    await self._deliver(receiver, event, body)
        finally:
            await self._session.close()

    async def _deliver(self, receiver: WebhookConfig, event: Event, body: dict[str, Any]) -> None:
        assert self._session is not None and receiver.url is not None
        problem = ""
        for pause in (*BACKOFF, None):
            try:
                async with self._session.post(receiver.url, json=body) as response:
                    if response.status < 300:
                        self.delivered += 1
                        return
                    problem = f"status {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            if pause is not None:
                await asyncio.sleep(pause)
        self._drop(receiver, event, f"{len(BACKOFF) + 1} tries failed, the last with {problem}")
