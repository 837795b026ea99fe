"""The public status feed: what users may know about each pool, and the incidents so far.

`StatusBoard` keeps, for each pool, one word (operational, degraded, down) and since when; a
bounded history of incidents (a pool out of `operational`, with its start and end); and the
operator's notices. It is fed by the event log and lives in the app, across config reloads.
It reads no clock: times come from the events and from the caller.

- operational: every origin of the pool passes its checks (none failed or ejected) and
  traffic goes to the pool's preferred tier (its lowest priority number).
- degraded: the pool serves, but from a lower tier, or one of its origins failed its checks
  or was ejected.
- down: no origin of the pool is usable.

`build_public` serves `{public.prefix}/status.json` and `{public.prefix}/incidents.atom` to
any client: pool names, states, times and notices only; origin names only with
`public.show_origins`.
"""

from __future__ import annotations

import datetime
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .config import PublicConfig
from .events import Event
from .origins import Flag
from .pool import Pool

__all__ = ["MAX_NOTICE", "Incident", "StatusBoard", "build_public", "iso", "pool_state"]

OPERATIONAL, DEGRADED, DOWN = "operational", "degraded", "down"
_RANK = {OPERATIONAL: 0, DEGRADED: 1, DOWN: 2}
_HEALTH_FLAGS = frozenset({Flag.FAILED_CHECK, Flag.EJECTED})
MAX_NOTICE = 2000  # characters in an operator's notice
ATOM = "http://www.w3.org/2005/Atom"
_FEED_NAMESPACE = uuid.UUID("6f1e1c0c-3d7a-4c54-9a55-0e4b2f6d8a10")


def iso(at: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC, e.g. `2026-12-02T20:31:40Z`."""
    moment = datetime.datetime.fromtimestamp(at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def pool_state(pool: Pool) -> tuple[str, list[str]]:
    """The pool's word and the names of its origins that are out (for `show_origins`)."""
    origins = pool.origins
    out = [o.name for o in origins if not o.usable]
    if len(out) == len(origins):
        return DOWN, out
    tier = pool.engine.selector.tier
    best = min(o.priority for o in origins)
    failed = any(o.flags & _HEALTH_FLAGS for o in origins)
    if failed or not tier or tier[0].priority != best:
        return DEGRADED, out
    return OPERATIONAL, out


@dataclass
class Incident:
    pool: str
    started: float
    status: str  # the worst the pool was during the incident
    ended: float | None = None
    updated: float = 0.0
    origins: list[str] = field(default_factory=list)  # every origin that was out

    def as_dict(self, show_origins: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "pool": self.pool,
            "status": self.status,
            "started": iso(self.started),
            "ended": None if self.ended is None else iso(self.ended),
        }
        if show_origins:
            body["origins"] = list(self.origins)
        return body


@dataclass
class _PoolRecord:
    status: str
    since: float
    out: list[str]
    incident: Incident | None = None


class StatusBoard:
    def __init__(
        self, pools: Callable[[], Mapping[str, Pool]], started: float, history: int = 100
    ) -> None:
        self._pools = pools
        self.started = started
        self.records: dict[str, _PoolRecord] = {}
        self.incidents: deque[Incident] = deque(maxlen=history)
        self.notice = ""  # for every pool
        self.pool_notices: dict[str, str] = {}
        self.sync(started)

    # -- following the pools --------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """An event log listener: look again at the event's pool (all pools after a reload)."""
        pools = self._pools()
        if event.pool in pools:
            self._look(pools[event.pool], event.time)
        elif event.kind == "config-reloaded":
            self.sync(event.time)

    def sync(self, at: float) -> None:
        """Look at every pool; close the incidents of pools the config no longer has."""
        pools = self._pools()
        for name in list(self.records):
            if name not in pools:
                record = self.records.pop(name)
                if record.incident is not None:
                    record.incident.ended = record.incident.updated = at
                self.pool_notices.pop(name, None)
        for pool in pools.values():
            self._look(pool, at)

    def resize(self, history: int) -> None:
        if self.incidents.maxlen != history:
            self.incidents = deque(self.incidents, maxlen=history)

    def _look(self, pool: Pool, at: float) -> None:
        status, out = pool_state(pool)
        record = self.records.get(pool.name)
        if record is None:
            record = self.records[pool.name] = _PoolRecord(status, at, out)
            if status != OPERATIONAL:
                self._open(record, pool.name, at)
            return
        incident = record.incident
        if incident is not None:
            incident.origins.extend(name for name in out if name not in incident.origins)
        if status == record.status:
            record.out = out
            return
        record.status, record.since, record.out = status, at, out
        if status == OPERATIONAL:
            if incident is not None:
                incident.ended = incident.updated = at
                record.incident = None
        elif incident is None:
            self._open(record, pool.name, at)
        else:
            incident.updated = at
            if _RANK[status] > _RANK[incident.status]:
                incident.status = status

    def _open(self, record: _PoolRecord, pool: str, at: float) -> None:
        incident = Incident(pool, at, record.status, updated=at, origins=list(record.out))
        record.incident = incident
        self.incidents.append(incident)

    # -- what users see -------------------------------------------------------------------

    def since(self, pool: str) -> float | None:
        """When the pool left `operational`; None while it is operational."""
        record = self.records.get(pool)
        if record is None or record.status == OPERATIONAL:
            return None
        return record.since

    def notice_for(self, pool: str) -> str:
        return self.pool_notices.get(pool) or self.notice

    def set_notice(self, text: str, pool: str | None = None) -> None:
        """Set (or, with an empty text, clear) the notice of one pool or of every pool."""
        if pool is None:
            self.notice = text
        elif text:
            self.pool_notices[pool] = text
        else:
            self.pool_notices.pop(pool, None)

    def status_json(self, show_origins: bool, now: float) -> dict[str, Any]:
        pools: list[dict[str, Any]] = []
        for name, record in self.records.items():
            entry: dict[str, Any] = {
                "name": name,
                "status": record.status,
                "since": iso(record.since),
                "notice": self.notice_for(name) or None,
            }
            if show_origins:
                entry["origins_out"] = list(record.out)
            pools.append(entry)
        worst = max((p["status"] for p in pools), key=_RANK.__getitem__, default=OPERATIONAL)
        return {
            "status": worst,
            "updated": iso(now),
            "notice": self.notice or None,
            "pools": pools,
        }

    def atom(self, title: str, self_url: str, show_origins: bool, now: float) -> bytes:
        """An Atom feed (RFC 4287) with one entry per incident, the newest first."""
        ElementTree.register_namespace("", ATOM)

        def add(parent: ElementTree.Element, tag: str, text: str, **attrs: str) -> None:
            child = ElementTree.SubElement(parent, f"{{{ATOM}}}{tag}", attrs)
            child.text = text

        feed = ElementTree.Element(f"{{{ATOM}}}feed")
        add(feed, "id", f"urn:uuid:{uuid.uuid5(_FEED_NAMESPACE, title)}")
        add(feed, "title", f"{title}: incidents")
        updated = max((i.updated for i in self.incidents), default=self.started)
        add(feed, "updated", iso(updated))
        ElementTree.SubElement(feed, f"{{{ATOM}}}link", {"rel": "self", "href": self_url})
        author = ElementTree.SubElement(feed, f"{{{ATOM}}}author")
        add(author, "name", title)
        for incident in reversed(self.incidents):
            entry = ElementTree.SubElement(feed, f"{{{ATOM}}}entry")
            key = f"{incident.pool}/{incident.started!r}"
            add(entry, "id", f"urn:uuid:{uuid.uuid5(_FEED_NAMESPACE, key)}")
            ongoing = incident.ended is None
            add(entry, "title", f"{incident.pool}: {incident.status}" + (" (ongoing)" * ongoing))
            add(entry, "published", iso(incident.started))
            add(entry, "updated", iso(incident.updated))
            lines = [f"Pool {incident.pool} was {incident.status}."]
            lines.append(f"Started: {iso(incident.started)}.")
            lines.append("Ongoing." if ongoing else f"Ended: {iso(incident.ended or now)}.")
            if show_origins and incident.origins:
                lines.append(f"Origins out: {', '.join(incident.origins)}.")
            notice = self.notice_for(incident.pool)
            if ongoing and notice:
                lines.append(f"Notice: {notice}")
            add(entry, "content", "\n".join(lines), type="text")
        body: bytes = ElementTree.tostring(feed, encoding="utf-8", xml_declaration=True)
        return body


def build_public(
    board: StatusBoard,
    config: Callable[[], PublicConfig],
    wall_clock: Callable[[], float],
) -> Starlette:
    """The public routes; the prefix is fixed at start-up (like the admin prefix)."""
    prefix = config().prefix
    headers = {
        "cache-control": "public, max-age=5",
        "access-control-allow-origin": "*",  # status pages elsewhere may fetch it
        "x-content-type-options": "nosniff",
    }

    async def status(request: Request) -> Response:
        body = board.status_json(config().show_origins, wall_clock())
        return JSONResponse(body, headers=headers)

    async def incidents(request: Request) -> Response:
        public = config()
        url = str(request.url.replace(query=""))
        body = board.atom(public.title, url, public.show_origins, wall_clock())
        return Response(body, media_type="application/atom+xml; charset=utf-8", headers=headers)

    async def not_found(request: Request) -> Response:
        known = f"{prefix}/status.json, {prefix}/incidents.atom"
        return PlainTextResponse(
            f"404 Not Found: {request.url.path} is not here (known: {known})\n", 404
        )

    return Starlette(
        routes=[
            Route(f"{prefix}/status.json", status, methods=["GET", "HEAD"]),
            Route(f"{prefix}/incidents.atom", incidents, methods=["GET", "HEAD"]),
            Route(f"{prefix}/{{rest:path}}", not_found),
            Route(prefix, not_found),
        ]
    )
