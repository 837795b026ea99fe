"""Admin routes under the reserved prefix.

healthz and readyz answer anyone (load balancers and Kubernetes probe them). status, events,
metrics and the dashboard answer only clients in `admin.allow`, judged by the socket peer (or,
behind a proxy listed in `admin.trust_forwarded`, by X-Forwarded-For). Overrides (drain,
disable, enable) and reload also need the bearer token `admin.token`. A request to any of the
`admin.allow` endpoints that presents a bearer token other than `admin.token` is refused (401),
so that a client with a stale token learns it on its first call.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from .configfile import quote
from .dashboard import dashboard_page
from .drills import DrillRefused, Drills, parse_request
from .engine import Engine
from .events import EventLog
from .fleet import Fleet
from .metrics import CONTENT_TYPE, Metrics
from .origins import Origin
from .overrides import ACTIONS, OverrideStore
from .pool import Pool
from .public import MAX_NOTICE
from .runtime import Runtime
from .selector import Ramp

__all__ = ["AdminHost", "build_admin", "client_address", "engine_status", "pool_status"]


class AdminHost(Protocol):
    """What the admin routes need of the running proxy (the app provides it)."""

    @property
    def runtime(self) -> Runtime: ...

    @property
    def overrides(self) -> OverrideStore: ...

    @property
    def last_reload(self) -> dict[str, Any] | None: ...

    @property
    def fleet(self) -> Fleet | None: ...

    @property
    def events(self) -> EventLog: ...

    @property
    def metrics(self) -> Metrics | None: ...

    @property
    def drills(self) -> Drills: ...

    def override(self, origin: Origin, action: str, by: str) -> None: ...

    def reload(self, trigger: str) -> dict[str, Any] | None:
        """Re-read the config file and apply it if valid; the outcome (`last_reload`), or None
        when the proxy runs without a config file."""
        ...

    def set_notice(self, text: str, pool: str | None) -> None: ...


Endpoint = Callable[[Request], Awaitable[Response]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_WAIT = 30.0  # seconds a long poll of /events may hold its request


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _within(address: Any, networks: list[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def client_address(request: Request, trusted: list[Network]) -> str:
    """The client's address: the socket peer, unless that peer is a trusted proxy, in which
    case the nearest X-Forwarded-For entry that is not itself a trusted proxy."""
    peer = request.client.host if request.client else ""
    if not trusted or not _within(_address(peer), trusted):
        return peer
    hops = [h.strip() for v in request.headers.getlist("x-forwarded-for") for h in v.split(",")]
    for hop in reversed(hops):
        if not _within(_address(hop), trusted):
            return hop
    return peer


def _plain(status: int, text: str, **headers: str) -> PlainTextResponse:
    phrase = {
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        409: "Conflict",
        413: "Content Too Large",
    }
    return PlainTextResponse(f"{status} {phrase[status]}: {text}\n", status, headers=headers)


def build_admin(app: AdminHost) -> Starlette:
    prefix = app.runtime.settings.admin.prefix
    cache: dict[int, tuple[list[Network], list[Network]]] = {}

    def networks() -> tuple[list[Network], list[Network]]:
        admin = app.runtime.settings.admin  # re-read: a reload may change them
        key = id(admin)
        if key not in cache:
            cache.clear()
            cache[key] = (
                [ipaddress.ip_network(item, strict=False) for item in admin.allow],
                [ipaddress.ip_network(item, strict=False) for item in admin.trust_forwarded],
            )
        return cache[key]

    def wrong_token(request: Request) -> Response | None:
        """401 when the request presents a bearer token that is not `admin.token`."""
        token = app.runtime.settings.admin.token
        sent = request.headers.get("authorization")
        if token is None or sent is None:
            return None
        scheme, _, credential = sent.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode(), token.encode()
        ):
            return None
        return _plain(401, "wrong or missing bearer token", **{"WWW-Authenticate": "Bearer"})

    def unauthorized(request: Request) -> Response | None:
        """The refusal of a mutation without the right token, or None to go ahead."""
        if app.runtime.settings.admin.token is None:
            return _plain(
                403,
                "admin mutations are off: set admin.token in the config "
                "(or FAILOVER_ADMIN__TOKEN) and send it as 'Authorization: Bearer <token>'",
            )
        if "authorization" not in request.headers:
            return _plain(401, "wrong or missing bearer token", **{"WWW-Authenticate": "Bearer"})
        return wrong_token(request)

    def restricted(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            allow, trusted = networks()
            client = client_address(request, trusted)
            if not _within(_address(client), allow):
                return _plain(403, f"{client or 'this client'} is not in admin.allow")
            return wrong_token(request) or await endpoint(request)

        return guarded

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        pools = app.runtime.pools
        name = request.query_params.get("pool")
        if name is not None:
            if name not in pools:
                known = ", ".join(sorted(pools))
                return _plain(404, f"no pool named {name!r} (known: {known})")
            pools = {name: pools[name]}
        readiness = {pool.name: pool.engine.ready() for pool in pools.values()}
        ready = all(readiness.values())
        body = {
            "ready": ready,
            "pools": readiness,
            "origins": {o.name: o.state for pool in pools.values() for o in pool.origins},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    async def status(request: Request) -> Response:
        pools = []
        for pool in app.runtime.pools.values():
            shown = pool_status(pool)
            for origin, record in zip(pool.origins, shown["origins"], strict=True):
                record["drills"] = app.drills.status(pool, origin)
            pools.append(shown)
        body: dict[str, Any] = {
            "ready": all(pool["ready"] for pool in pools),
            "pools": pools,
            "origins": [origin for pool in pools for origin in pool["origins"]],
        }
        if len(pools) == 1:
            body["active"] = pools[0]["active"]  # the single-pool form's one answer
        body["overrides"] = app.overrides.entries
        body["last_reload"] = app.last_reload
        certs = getattr(app, "certs", None)
        if certs is not None:  # the listener's certificates, as served now
            body["listener_certificates"] = certs.status(time.time())
        if app.fleet is not None:
            body["fleet"] = {
                "process": app.fleet.id,
                "connected": app.fleet.connected,
                "probing": sorted(app.fleet.holding),
            }
        return JSONResponse(body)

    async def events(request: Request) -> Response:
        query = request.query_params
        if "after" in query:
            return await follow(request)
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return _plain(400, f"limit must be a whole number, got {query['limit']!r}")
        limit = max(0, limit)
        if app.fleet is not None:
            shared = await app.fleet.recent_events(limit)
            if shared is not None:
                return JSONResponse({"events": shared, "source": "fleet"})
        items = app.events.newest_first(limit)
        return JSONResponse(
            {
                "events": [event.as_dict() for event in items],
                "source": "local",
                "next": app.events.emitted,  # where `after` follows on from
            }
        )

    async def follow(request: Request) -> Response:
        """A long poll: this process's events numbered `after` or later, oldest first, waiting
        up to `wait` seconds for the first one; `next` is the cursor for the following poll."""
        query = request.query_params
        try:
            after = int(query["after"])
            wait = float(query.get("wait", "0"))
        except ValueError:
            return _plain(
                400,
                f"after must be a whole number and wait a number of seconds, "
                f"got after={query['after']!r} wait={query.get('wait', '0')!r}",
            )
        if after < 0 or not 0 <= wait <= MAX_WAIT:
            return _plain(
                400,
                f"after must be 0 or more and wait from 0 to {MAX_WAIT:g} s, "
                f"got after={after} wait={wait:g}",
            )
        await app.events.wait(after, wait)
        items = app.events.since(after)
        return JSONResponse(
            {
                "events": [event.as_dict() for event in items],
                "source": "local",
                "next": app.events.emitted,
            }
        )

    async def metrics(request: Request) -> Response:
        if app.metrics is None:
            return _plain(404, "metrics are off (metrics.enabled: false)")
        return Response(app.metrics.exposition(), media_type=CONTENT_TYPE)

    page, page_headers = dashboard_page(prefix)

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(page, headers=page_headers)

    async def override(request: Request) -> Response:
        refusal = unauthorized(request)
        if refusal is not None:
            return refusal
        name = request.path_params["name"]
        action = request.path_params["action"]
        if action not in ACTIONS:
            return _plain(404, f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        origin = app.runtime.origins.get(name)
        if origin is None:
            known = ", ".join(app.runtime.origins)
            return _plain(404, f"no origin named {name!r} (known: {known})")
        by = request.query_params.get("by") or client_address(request, networks()[1])
        app.override(origin, action, by)
        return JSONResponse({"origin": name, "action": action, "state": origin.state, "by": by})

    async def reload(request: Request) -> Response:
        refusal = unauthorized(request)
        if refusal is not None:
            return refusal
        outcome = app.reload("admin API")
        if outcome is None:
            return _plain(409, "the proxy runs without a config file: there is nothing to reload")
        return JSONResponse(outcome, status_code=200 if outcome["result"] == "ok" else 422)

    async def notice(request: Request) -> Response:
        refusal = unauthorized(request)
        if refusal is not None:
            return refusal
        return await _set_notice(app, request)

    async def start_drill(request: Request) -> Response:
        refusal = unauthorized(request)
        if refusal is not None:
            return refusal
        name = request.path_params["pool"]
        pool = app.runtime.pools.get(name)
        if pool is None:
            known = ", ".join(app.runtime.pools)
            return _plain(404, f"no pool named {name!r} (known: {known})")
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else None
        except ValueError:
            return _plain(400, f"the body is not JSON: {raw[:80]!r}")
        try:
            drill_request = parse_request(body, pool.config.drills)
        except ValueError as exc:
            return _plain(400, str(exc))
        by = request.query_params.get("by") or client_address(request, networks()[1])
        try:
            drill = await app.drills.start(name, drill_request, f"started by {by}")
        except DrillRefused as exc:
            return _plain(409, str(exc))
        except LookupError as exc:
            return _plain(404, str(exc))
        return JSONResponse(
            drill.report(), status_code=202, headers={"Location": f"{prefix}/drills/{drill.id}"}
        )

    async def list_drills(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            return _plain(400, "limit must be a whole number")
        return JSONResponse({"drills": app.drills.recent(limit)})

    async def show_drill(request: Request) -> Response:
        drill = app.drills.reports.get(request.path_params["id"])
        if drill is None:
            kept = len(app.drills.reports)
            return _plain(
                404, f"no drill {request.path_params['id']!r} (the newest {kept} are kept)"
            )
        return JSONResponse(drill.report())

    async def not_found(request: Request) -> Response:
        known = ", ".join(
            f"{prefix}/{name}"
            for name in ("", "healthz", "readyz", "status", "events", "metrics", "reload")
        )
        return _plain(404, f"{request.url.path} is not an admin endpoint (known: {known})")

    return Starlette(
        routes=[
            Route(f"{prefix}/", restricted(dashboard), methods=["GET"]),
            Route(f"{prefix}/healthz", healthz, methods=["GET", "HEAD"]),
            Route(f"{prefix}/readyz", readyz, methods=["GET", "HEAD"]),
            Route(f"{prefix}/status", restricted(status), methods=["GET"]),
            Route(f"{prefix}/events", restricted(events), methods=["GET"]),
            Route(f"{prefix}/metrics", restricted(metrics), methods=["GET"]),
            Route(f"{prefix}/origins/{{name}}/{{action}}", restricted(override), methods=["POST"]),
            Route(f"{prefix}/reload", restricted(reload), methods=["POST"]),
            Route(f"{prefix}/notice", restricted(notice), methods=["POST"]),
            Route(f"{prefix}/pools/{{pool}}/drills", restricted(start_drill), methods=["POST"]),
            Route(f"{prefix}/drills", restricted(list_drills), methods=["GET"]),
            Route(f"{prefix}/drills/{{id}}", restricted(show_drill), methods=["GET"]),
            Route(f"{prefix}/{{rest:path}}", not_found),
            Route(prefix, lambda request: RedirectResponse(f"{prefix}/")),
        ]
    )


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # newline and tab are fine
_NOTICE_BODY = 4 * MAX_NOTICE + 1024  # bytes: room for escapes, never unbounded


async def _set_notice(app: AdminHost, request: Request) -> Response:
    """`POST {prefix}/notice` with `{"notice": "...", "pool": "..."}`; an empty notice clears
    it; without `pool` it is the notice of every pool."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _NOTICE_BODY:
            return _plain(413, f"the body is larger than {_NOTICE_BODY} bytes")
    expected = 'expected a JSON object such as {"notice": "Maintenance until 14:00 UTC"}'
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return _plain(400, f"the body is not JSON; {expected}")
    if not isinstance(data, dict) or not isinstance(data.get("notice"), str):
        return _plain(400, f"{quote(data)} has no string 'notice'; {expected}")
    unknown = sorted(set(data) - {"notice", "pool"})
    if unknown:
        return _plain(400, f"unknown keys {', '.join(map(quote, unknown))}; {expected}")
    text: str = data["notice"].strip()
    if len(text) > MAX_NOTICE:
        return _plain(400, f"the notice has {len(text)} characters; at most {MAX_NOTICE}")
    if _CONTROL.search(text):
        return _plain(400, f"the notice {quote(text)} holds a control character")
    pool = data.get("pool")
    if pool is not None and pool not in app.runtime.pools:
        known = ", ".join(app.runtime.pools)
        return _plain(404, f"no pool named {quote(pool)} (known: {known})")
    app.set_notice(text, pool)
    return JSONResponse({"notice": text or None, "pool": pool})


# -- status JSON ----------------------------------------------------------------------------


def pool_status(pool: Pool) -> dict[str, Any]:
    """A pool as `status` shows it: which origin takes traffic, readiness, each origin."""
    return engine_status(pool.engine)


def engine_status(engine: Engine) -> dict[str, Any]:
    now = engine.clock()
    active = engine.selector.active(now)
    return {
        "name": engine.pool,
        "active": active[0].name if len(active) == 1 else [o.name for o in active] or None,
        "ready": engine.ready(),
        "balance": engine.selector.balance,
        "ramp": ramp_status(engine.selector.ramp, now),
        "origins": [origin_status(engine, origin, now) for origin in engine.origins],
    }


def ramp_status(ramp: Ramp | None, now: float) -> dict[str, Any] | None:
    """A gradual failback under way: which tier takes back how much of the traffic."""
    if ramp is None:
        return None
    return {
        "to": [o.name for o in ramp.to],
        "from": [o.name for o in ramp.source],
        "share": round(ramp.share(now), 4),
        "elapsed": round(max(0.0, now - ramp.started_at), 3),
        "duration": ramp.duration,
        "remaining": round(max(0.0, ramp.ends_at - now), 3),
    }


def _tls_status(origin: Origin) -> dict[str, Any] | None:
    """An https origin's TLS identity and the expiry of the certificate it last presented."""
    tls = getattr(origin.pool, "tls", None)
    if tls is None:
        return None
    status: dict[str, Any] = tls.status(time.time())
    return status


def origin_status(engine: Engine, origin: Origin, now: float) -> dict[str, Any]:
    check = engine.checks[origin.name]
    outlier = engine.outliers[origin.name]
    failback = engine.selector.failback[origin.name]
    total, failures, slow = outlier.window(now)
    next_probe = engine.next_probe_at.get(origin.name)
    latency = outlier.mean_latency(now)
    dns = getattr(origin.pool, "dns", None)  # set when the url names a host, not an IP
    balancer = engine.selector.balancer
    ewma = balancer.latency(origin.name) if balancer is not None else None
    return {
        "name": origin.name,
        "pool": origin.pool_name,
        "url": origin.url,
        "priority": origin.priority,
        "weight": origin.weight,
        "state": origin.state,
        "usable": origin.usable,
        "flags": sorted(flag.value for flag in origin.flags),
        "reason": origin.reason,
        "parity": origin.parity or None,
        "since_seconds": round(now - origin.changed_at, 3) if origin.changed_at else None,
        "dns": dns.entry.status(now) if dns is not None else None,
        "check": {
            "state": check.state.value,
            "consecutive_passes": check.passes,
            "consecutive_failures": check.failures,
            "last": check.last_detail,
            "next_probe_in": (
                round(max(0.0, next_probe - now), 3) if next_probe is not None else None
            ),
        },
        "passive": {
            "consecutive_failures": outlier.consecutive,
            "requests_in_window": total,
            "error_rate": round(failures / total, 4) if total else 0.0,
            "slow_rate": round(slow / total, 4) if total else 0.0,
            "requests_per_second": round(total / outlier.config.window, 3),
            "mean_latency_ms": round(latency * 1000, 3) if latency is not None else None,
            "ejections": outlier.ejections,
            "ejected_for": (
                round(max(0.0, outlier.ejected_until - now), 3)
                if outlier.ejected_until is not None
                else None
            ),
        },
        "tls": _tls_status(origin),
        "failback": {
            "hold_down": engine.selector.hold_down_for(origin),
            "flaps": failback.flaps,
            "eligible_in": (
                round(failback.eligible_at - now, 3)
                if origin.usable
                and math.isfinite(failback.eligible_at)
                and failback.eligible_at > now
                else None
            ),
        },
        "latency_ewma_ms": round(ewma * 1000, 3) if ewma is not None else None,
    }
