"""The composition root: builds every part from Settings and owns their lifetimes.

`App` is the ASGI application uvicorn runs. Its lifespan opens the connection pools, starts
one probe loop per origin, the housekeeping loop, the config watcher and the webhook sender,
and on shutdown stops and awaits them and closes the pools. Clock and randomness are injected
here and nowhere else. A config reload builds a new runtime (router and pools) and proxy and
swaps them in one assignment; requests in flight finish on the objects they started with.

Admin, fleet and reload get narrow interfaces (the protocols they declare), which `App`
satisfies; none of them imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admin import build_admin
from .config import Settings, default_config_path, load_config
from .dnscache import Update
from .drills import Drills
from .engine import Engine
from .events import Event, EventLog
from .fleet import Fleet, origin_key
from .health import ProbeResult, probe_loop
from .logs import setup_logging
from .metrics import Metrics
from .notify import Webhooks
from .origins import Flag, Origin
from .overrides import OverrideStore
from .pages import MaintenancePage, load_page
from .parity import Parity
from .parity import clear as clear_parity
from .proxy import Proxy
from .public import StatusBoard, build_public
from .reload import Reloader
from .resolver import HostAddresses, Resolver
from .runtime import Runtime, build_runtime
from .tls import EXPIRY_WARNING, CertificateInfo, ListenerCerts, RedirectServer, TLSFileError
from .upstream import Upstream
from .websocket import WebSockets

__all__ = ["App", "create_app"]

logger = logging.getLogger("failover")

TICK = 1.0  # seconds between housekeeping rounds
# Housekeeping rounds between two looks at the origins' certificates: one that was far from
# expiry when it was seen comes within 14 days while connections stay open and resume.
EXPIRY_CHECK_TICKS = 60


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        config_path: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        self.events = EventLog(wall_clock, settings.events.history)
        self.metrics = Metrics() if settings.metrics.enabled else None
        self.webhooks: Webhooks | None = None
        if settings.events.webhooks:
            self.webhooks = Webhooks(
                settings.events.webhooks,
                settings.events.webhook_timeout,
                settings.events.webhook_queue,
                self.metrics.webhook_drops.inc if self.metrics else None,
            )
            self.events.subscribe(self.webhooks.notify)
        if self.metrics is not None:
            self.events.subscribe(self._count_event)
        self.overrides = OverrideStore(settings.admin.state_file, wall_clock)
        self.overrides.load()
        self.upstream = Upstream(
            settings.proxy.max_connections_per_origin,
            self.metrics.resend if self.metrics else None,
            self._certificate_seen,
        )
        self._expiry_reported: set[tuple[str, float]] = set()
        # The listener's certificates (listen.tls): uvicorn's SSL context comes from here
        # (`listener_context`), the lifespan watches their files.
        self.certs: ListenerCerts | None = None
        self.redirect: RedirectServer | None = None
        listen = settings.listen
        if listen.tls is not None:
            self.certs = ListenerCerts(
                [(c.cert_file, c.key_file) for c in listen.tls.certificates],
                listen.tls.min_version,
                listen.tls.alpn,
            )
            if listen.redirect_http_port is not None:
                self.redirect = RedirectServer(listen.host, listen.redirect_http_port, listen.port)
        self.resolver = Resolver(
            settings.dns,
            clock,
            self.spawn,
            self._dns_update,
            self.metrics.dns if self.metrics else None,
        )
        self.upstream.resolver = self.resolver
        # Open WebSockets outlive config reloads: the registry belongs to the app.
        self.websockets = WebSockets(self.metrics)
        self.events.subscribe(self._websocket_drains)
        self.fleet = Fleet(self, settings.fleet, wall_clock) if settings.fleet else None
        if self.fleet is not None:
            self.events.subscribe(self.fleet.event)
        self.runtime = self._runtime(settings, None)
        self.drills = Drills(self, clock, wall_clock)
        if self.fleet is not None:
            self.fleet.on_drill = self.drills.remote
        self.admin = build_admin(self)
        # The public feed and its incident history outlive config reloads.
        self.board = StatusBoard(lambda: self.runtime.pools, wall_clock(), settings.public.history)
        self.events.subscribe(self.board.observe)
        self.public: ASGIApp | None = None
        if settings.public.enabled:
            self.public = build_public(self.board, lambda: self.settings.public, wall_clock)
        self.page: MaintenancePage | None = load_page(settings.pages.unavailable)
        self.apply_overrides()
        self.proxy = self._proxy(self.runtime)
        path = Path(config_path) if config_path else None
        state = Path(settings.admin.state_file) if settings.admin.state_file else None
        self.reloader = Reloader(self, path, state)
        self.last_reload: dict[str, Any] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.probes: dict[str, asyncio.Task[None]] = {}
        self.parity: dict[str, asyncio.Task[None]] = {}  # pool name -> its parity loop

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def origins(self) -> list[Origin]:
        """Every origin of every pool."""
        return list(self.runtime.origins.values())

    @property
    def engine(self) -> Engine:
        """The first pool's engine: the only one in the single-pool form of the config."""
        return next(iter(self.runtime.pools.values())).engine

    def engine_of(self, name: str) -> Engine | None:
        return self.runtime.engine_of(name)

    def _runtime(self, settings: Settings, previous: Runtime | None) -> Runtime:
        on_eject = self.fleet.ejected if self.fleet is not None else None
        return build_runtime(settings, self.events, self.clock, previous, on_eject)

    def _proxy(self, runtime: Runtime) -> Proxy:
        return Proxy(
            runtime.settings,
            runtime.pools,
            runtime.router,
            self.upstream,
            self.admin,
            self.clock,
            self.metrics,
            self.websockets,
            page=self.page,
            board=self.board,
            public=self.public,
        )

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

    # -- lifetime ---------------------------------------------------------------------------

    async def startup(self) -> None:
        if self.fleet is not None:
            await self.fleet.check()  # wrong credentials end the start-up here
            self.spawn(self.fleet.run(), "fleet")
        for origin in self.origins:
            self.upstream.add(origin)
        self._start_probes()
        self._start_parity()
        self.spawn(self._housekeeping(), "housekeeping")
        self.spawn(self.drills.run(), "drills")
        if self.webhooks is not None:
            self.spawn(self.webhooks.run(), "webhooks")
        if self.reloader.config_path is not None or self.reloader.state_file is not None:
            self.spawn(self.reloader.watch(), "config watcher")
        if self.certs is not None:
            self.spawn(
                self.certs.watch(self._certificates_reloaded, self._certificates_failed),
                "certificate watcher",
            )
        if self.redirect is not None:
            await self.redirect.start()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, self.reloader.reload, "SIGHUP"
            )
        self._update_gauges()
        for name, pool in self.runtime.pools.items():
            names = ", ".join(f"{o.name} (priority {o.priority})" for o in pool.origins)
            logger.info("Pool %s: proxying to %s.", name, names)

    async def shutdown(self) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        self.reloader.stop.set()
        if self.certs is not None:
            self.certs.stop.set()
        if self.redirect is not None:
            await self.redirect.close()
        self.resolver.stop()
        tasks, self.tasks = self.tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # uvicorn has asked the WebSockets to close (1001) already; any still open go now.
        await self.websockets.close()
        if self.metrics is not None:
            self.metrics.flush()  # with several workers, the last second's counts too
        if self.fleet is not None:
            await self.fleet.close()
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

    def _start_probes(self) -> None:
        for task in self.probes.values():
            task.cancel()
        self.probes = {
            origin.name: self.spawn(self._probe(origin), f"probe {origin.name}")
            for origin in self.origins
            if origin.health.enabled
        }

    def _start_parity(self) -> None:
        """One parity loop per pool with `parity:` (after a reload: new loops on the new
        pools; the `diverged` flags stay with the origins until the next round says else)."""
        for task in self.parity.values():
            task.cancel()
        self.parity = {}
        for name, pool in self.runtime.pools.items():
            if pool.config.parity is None:
                clear_parity(pool.engine, "parity checks are no longer configured")
                continue
            checker = Parity(name, pool.engine, pool.config.parity)
            self.parity[name] = self.spawn(checker.run(), f"parity {name}")

    async def _probe(self, origin: Origin) -> None:
        engine, fleet = self.runtime.pool_of(origin).engine, self.fleet

        async def probe() -> ProbeResult | None:
            if fleet is not None and not fleet.should_probe(origin_key(origin)):
                return None  # another process of the fleet probes this origin
            return await self.upstream.probe(origin)

        def on_result(result: ProbeResult) -> bool:
            if fleet is not None:
                fleet.probed(origin, result)
            return engine.on_probe(origin, result)

        def on_next(delay: float) -> None:
            engine.next_probe_at[origin.name] = self.clock() + delay

        await probe_loop(origin.health, probe, on_result, on_next, self.rng)

    async def _housekeeping(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(TICK)
            ticks += 1
            try:
                for pool in self.runtime.pools.values():
                    pool.engine.tick()
                self._refresh_origin_tls()
                if ticks % EXPIRY_CHECK_TICKS == 0:
                    self._check_certificates()
                if self.metrics is not None:
                    self.metrics.flush()
            except Exception:
                logger.exception("Housekeeping failed; trying again in %g s.", TICK)

    async def _close_later(self, pools: list[Any], delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:  # also when shutdown cancels the wait: a pool left open leaks its sockets
            for pool in pools:
                await pool.close()

    # -- config reload ----------------------------------------------------------------------

    def apply(self, settings: Settings, trigger: str = "reload") -> None:
        """Swap in a validated config."""
        old = self.settings
        for key in ("listen", "admin", "fleet", "limits", "events"):
            before, after = getattr(old, key), getattr(settings, key)
            if key == "admin":
                before, after = before.prefix, after.prefix
            if before != after:
                logger.warning(
                    "%s changed (%s -> %s): it takes effect after a restart; the rest of the "
                    "new config is applied now.",
                    key,
                    before,
                    after,
                )
        if settings.public.enabled != old.public.enabled or (
            settings.public.prefix != old.public.prefix
        ):
            logger.warning(
                "public.enabled or public.prefix changed: it takes effect after a restart; "
                "the rest of the new config is applied now."
            )
        self.board.resize(settings.public.history)
        self.page = load_page(settings.pages.unavailable)
        previous = self.runtime
        runtime = self._runtime(settings, previous)
        self.resolver.configure(settings.dns)
        retired = self.upstream.sync(
            settings.proxy.max_connections_per_origin, list(runtime.origins.values())
        )
        self.resolver.retain(self.upstream.hostnames())
        self.runtime = runtime
        self.apply_overrides()
        self.proxy = self._proxy(runtime)
        if retired:
            grace = max(p.timeouts.first_byte + p.timeouts.idle for p in settings.pools.values())
            self.spawn(self._close_later(retired, grace), "close retired pools")
        self._start_probes()
        self._start_parity()
        pools, origins = _count(len(runtime.pools), "pool"), _count(len(runtime.origins), "origin")
        summary = f"{trigger}: {pools}, {origins}"
        for what, new, old_names in (
            ("pools", runtime.pools, previous.pools),
            ("origins", runtime.origins, previous.origins),
        ):
            added = sorted(set(new) - set(old_names))
            removed = sorted(set(old_names) - set(new))
            if added:
                summary += f", added {what} {', '.join(added)}"
            if removed:
                summary += f", removed {what} {', '.join(removed)}"
        self.last_reload = {"result": "ok", "at": self.wall_clock(), "trigger": trigger}
        if self.metrics is not None:
            self.metrics.reloads.labels("ok").inc()
        self.events.emit("config-reloaded", "-", "", "", summary)
        self._update_gauges()

    def reload(self, trigger: str) -> dict[str, Any] | None:
        """Re-read the config file now (the admin API's reload); None without a file."""
        if self.reloader.config_path is None:
            return None
        self.reloader.reload(trigger)
        return self.last_reload

    def reload_failed(self, problems: list[str], trigger: str) -> None:
        for problem in problems:
            logger.error("Config reload (%s) rejected: %s", trigger, problem)
        logger.error("Still serving with the previous config.")
        self.last_reload = {
            "result": "error",
            "at": self.wall_clock(),
            "trigger": trigger,
            "errors": problems,
        }
        if self.metrics is not None:
            self.metrics.reloads.labels("error").inc()

    # -- TLS ---------------------------------------------------------------------------------

    def listener_context(self, config: Any, default: Any) -> ssl.SSLContext:
        """uvicorn's `ssl_context_factory`: the context whose SNI callback picks among the
        listener's certificates."""
        assert self.certs is not None
        return self.certs.context

    def _certificates_reloaded(self) -> None:
        self.events.emit("certificates-reloaded", "-", "", "", "listen.tls: files changed")

    def _certificates_failed(self, problem: str) -> None:
        self.reload_failed(
            [f"listen.tls: {problem}; still serving the previous certificates"],
            "certificate file changed",
        )

    def _refresh_origin_tls(self) -> None:
        """Origins' CA, client certificate and key files renewed on disk are used for new
        connections; a file that cannot be used keeps the previous ones, reported like a bad
        config edit."""
        for key, pool in list(self.upstream.pools.items()):
            tls = pool.tls
            if tls is None:
                continue
            name = key[0]
            try:
                if not tls.refresh():
                    continue
            except (TLSFileError, OSError) as exc:
                self.reload_failed(
                    [f"origin {name} tls: {exc}; new connections still use the previous files"],
                    "certificate file changed",
                )
                continue
            pool.ssl = tls.context
            origin = self.runtime.origins.get(name)
            self.events.emit(
                "certificates-reloaded",
                name,
                "",
                "",
                f"origin {name} tls: files changed",
                origin.pool_name if origin is not None else "-",
            )

    def _check_certificates(self) -> None:
        for origin in self.origins:
            tls = getattr(origin.pool, "tls", None)
            if tls is not None and tls.certificate is not None:
                self._certificate_seen(origin, tls.certificate)

    def _certificate_seen(self, origin: Origin, info: CertificateInfo) -> None:
        """An origin presented a certificate (first or new; and once a minute): the seconds
        left to the metric, and an event once per certificate when under 14 days."""
        left = info.not_after - self.wall_clock()
        if self.metrics is not None:
            self.metrics.cert_expiry.labels(origin.pool_name, origin.name).set(left)
        key = (origin.name, info.not_after)
        if left < EXPIRY_WARNING and key not in self._expiry_reported:
            self._expiry_reported.add(key)
            when = "expired" if left <= 0 else f"expires in {left / 86400:.1f} days"
            self.events.emit(
                "certificate-expiring",
                origin.name,
                "",
                "",
                f"the certificate of {origin.name} {when}",
                origin.pool_name,
            )

    # -- DNS --------------------------------------------------------------------------------

    def _dns_update(self, host: HostAddresses, update: Update) -> None:
        """A host name's answer changed in a way worth an event; NXDOMAIN (or no address)
        fails the origins that use it, a name that resolves again brings them back."""
        assert update.event is not None
        users = [o for o in self.origins if getattr(o.pool, "dns", None) is host]
        names = ",".join(o.name for o in users) or host.host
        self.events.emit(update.event, names, "", host.entry.state, update.reason)
        for origin in users:
            engine = self.runtime.pool_of(origin).engine
            if update.event == "dns-nxdomain":
                engine.dns_missing(origin, f"DNS: {update.reason}")
            elif update.event == "dns-recovered":
                engine.dns_back(origin, f"DNS: {update.reason}")

    # -- operator overrides -----------------------------------------------------------------

    def override(self, origin: Origin, action: str, by: str) -> None:
        entry = self.overrides.set(origin.name, action, by)
        self.runtime.pool_of(origin).engine.override(origin, action, by)
        if self.fleet is not None:
            self.fleet.override(origin.name, entry)

    def set_notice(self, text: str, pool: str | None) -> None:
        """The operator's notice on the public feed and the maintenance page."""
        self.board.set_notice(text, pool)
        where = f"pool {pool}" if pool else "every pool"
        logger.warning("Notice for %s %s.", where, f"set to {text!r}" if text else "cleared")

    def load_overrides(self) -> None:
        if self.overrides.load():
            self.apply_overrides()

    def apply_overrides(self) -> None:
        for pool in self.runtime.pools.values():
            for origin in pool.origins:
                default = {"action": "enable", "by": "default"}
                entry = self.overrides.entries.get(origin.name, default)
                pool.engine.override(origin, entry["action"], str(entry.get("by", "?")))

    def _websocket_drains(self, event: Event) -> None:
        """A drained origin's WebSockets close with 1012 after `websocket.drain_timeout`, a
        disabled one's at once."""
        origin = self.runtime.origins.get(event.origin) if hasattr(self, "runtime") else None
        if origin is None:
            return
        if Flag.DISABLED in origin.flags:
            self.websockets.disabled(origin.name)
        elif Flag.DRAINED in origin.flags:
            self.websockets.drained(origin.name, self.settings.websocket.drain_timeout)
        else:
            self.websockets.undrained(origin.name)

    # -- metrics ----------------------------------------------------------------------------

    def _count_event(self, event: Event) -> None:
        assert self.metrics is not None
        if event.kind == "traffic-moved":
            self.metrics.failovers.labels(event.pool, event.old, event.new).inc()
        elif event.kind == "ejected":
            self.metrics.ejections.labels(event.pool, event.origin).inc()
        self._update_gauges()

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        for pool in self.runtime.pools.values():
            tier = pool.engine.selector.tier
            active = {o.name for o in tier}
            self.metrics.origins(
                (pool.name, o.name, o.usable, o.name in active) for o in pool.origins
            )
            if pool.config.parity is not None:
                for o in pool.origins:
                    self.metrics.parity(pool.name, o.name, Flag.DIVERGED in o.flags)
            priorities = sorted({o.priority for o in pool.origins})
            index = priorities.index(tier[0].priority) if tier else -1
            self.metrics.pool(pool.name, index, len(priorities))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def create_app(config_path: str | Path | None = None) -> App:
    """The factory uvicorn's workers call (`failover.app:create_app`)."""
    setup_logging()
    path = config_path or default_config_path()
    return App(load_config(path), config_path=path)
