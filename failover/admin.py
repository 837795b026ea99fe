"""Admin routes under the reserved prefix: health, readiness, status and events.

healthz and readyz answer anyone (load balancers and Kubernetes probe them); status and
events answer only clients whose socket address is in `admin.allow`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from .app import App

__all__ = ["build_admin"]

Endpoint = Callable[[Request], Awaitable[Response]]


def build_admin(app: App) -> Starlette:
    settings = app.settings
    prefix = settings.admin.prefix
    networks = [ipaddress.ip_network(item, strict=False) for item in settings.admin.allow]

    def restricted(endpoint: Endpoint) -> Endpoint:
        async def guarded(request: Request) -> Response:
            host = request.client.host if request.client else ""
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                address = None
            if address is None or not any(address in network for network in networks):
                return PlainTextResponse(
                    f"403 Forbidden: {host or 'this client'} is not in admin.allow\n",
                    status_code=403,
                )
            return await endpoint(request)

        return guarded

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        engine = app.engine
        ready = engine.ready()
        body = {"ready": ready, "origins": {o.name: o.state for o in engine.origins}}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def status(request: Request) -> Response:
        return JSONResponse(app.engine.status())

    async def events(request: Request) -> Response:
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            return PlainTextResponse("400 Bad Request: limit must be a whole number\n", 400)
        items = app.events.newest_first(max(0, limit))
        return JSONResponse({"events": [event.as_dict() for event in items]})

    async def not_found(request: Request) -> Response:
        known = ", ".join(f"{prefix}/{name}" for name in ("healthz", "readyz", "status", "events"))
        return PlainTextResponse(
            f"404 Not Found: {request.url.path} is not an admin endpoint (known: {known})\n",
            status_code=404,
        )

    return Starlette(
        routes=[
            Route(f"{prefix}/healthz", healthz, methods=["GET", "HEAD"]),
            Route(f"{prefix}/readyz", readyz, methods=["GET", "HEAD"]),
            Route(f"{prefix}/status", restricted(status), methods=["GET"]),
            Route(f"{prefix}/events", restricted(events), methods=["GET"]),
            Route(f"{prefix}/{{rest:path}}", not_found),
            Route(prefix, not_found),
        ]
    )
