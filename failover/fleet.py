"""Fleet mode: processes and replicas share origin state through Redis.

- One prober per origin: a process holds a per-origin lease (SET NX PX, renewed) and only it
  probes that origin; it publishes each result, and every process feeds it to its own engine.
- Shared passive evidence: every `publish_interval` each process publishes how many attempts
  per origin it made and how many failed; each process adds the others' counts to its window.
  An ejection decided by one process is published and applied by all.
- Overrides are kept in a Redis hash and published; events go to a Redis stream.

Redis is never on the request path: selecting an origin reads local state only. When Redis is
unreachable every process probes and decides alone (said once in the log) and keeps serving;
when it is back, overrides are reconciled (the newest word on each origin wins) and leases
are taken again.

- Drills (failover.drills): a lock per pool (SET NX PX) keeps to one drill of a pool in the
  fleet; the process that runs it publishes its drain and its end, and the others set and clear
  the `drill` flag too (each clears it by itself when the drill's expiry passes unheard).

Messages on the bus channel are JSON objects with "type" (probe, eject, passive, override,
drill) and "from" (the sending process).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .config import FleetConfig
from .engine import Engine
from .events import Event
from .health import ProbeResult
from .origins import Origin
from .overrides import OverrideStore

__all__ = ["Fleet", "FleetError", "FleetHost", "origin_key"]


class FleetHost(Protocol):
    """What fleet mode needs of the running proxy (the app provides it)."""

    @property
    def overrides(self) -> OverrideStore: ...

    @property
    def origins(self) -> list[Origin]: ...

    def engine_of(self, name: str) -> Engine | None: ...

    def apply_overrides(self) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]: ...


def origin_key(origin: Origin) -> str:
    """An origin as the fleet names it: with its pool, so two pools never share evidence."""
    return f"{origin.pool_name}/{origin.name}"


logger = logging.getLogger("failover.fleet")

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class FleetError(Exception):
    """Fleet mode cannot start (e.g. Redis refused the password)."""


def _honour_cancel() -> None:
    """Raise if this task was asked to stop. On Python 3.11 a Redis command can swallow the
    cancellation (asyncio.wait_for inside redis-py returns the command's result instead), and
    a loop that went on would keep the app's shutdown waiting forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def describe_redis_error(exc: BaseException) -> str:
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in str(exc) or "NOAUTH" in str(exc):
        return f"Redis refused the credentials in fleet.redis_url: {exc}"
    return f"{type(exc).__name__}: {exc}"


class Fleet:
    def __init__(
        self, app: FleetHost, config: FleetConfig, wall_clock: Callable[[], float]
    ) -> None:
        self.app = app
        self.config = config
        self.wall_clock = wall_clock
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        prefix = config.key_prefix
        self.channel = f"{prefix}bus"
        self.stream = f"{prefix}events"
        self.overrides_key = f"{prefix}overrides"
        self.lease_prefix = f"{prefix}lease:"
        self.drill_prefix = f"{prefix}drill:"
        self.redis: aioredis.Redis = aioredis.from_url(
            config.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
        self.connected = False
        self.on_drill: Callable[[dict[str, Any]], None] | None = None  # set by the app
        self.holding: set[str] = set()
        self._events: asyncio.Queue[Event] = asyncio.Queue(1000)

    # -- start-up ---------------------------------------------------------------------------

    async def check(self) -> None:
        """Fail loudly on wrong credentials; an unreachable Redis only means: alone for now."""
        try:
            await self.redis.ping()
        except (AuthenticationError, ResponseError) as exc:
            raise FleetError(describe_redis_error(exc)) from exc
        except (RedisError, OSError) as exc:
            logger.warning(
                "Redis at %s is unreachable (%s); deciding alone until it answers.",
                self.config.redis_url,
                describe_redis_error(exc),
            )
            return
        await self._joined()

    async def close(self) -> None:
        if self.connected:
            for name in list(self.holding):
                await self._release(name)
        await self.redis.aclose()

    # -- what the app asks ------------------------------------------------------------------

    def should_probe(self, origin: str) -> bool:
        """Probe it ourselves: we hold its lease, or Redis is out of reach."""
        return not self.connected or origin in self.holding

    def probed(self, origin: Origin, result: ProbeResult) -> None:
        if self.connected:
            self._publish(
                {
                    "type": "probe",
                    "pool": origin.pool_name,
                    "origin": origin.name,
                    "ok": result.ok,
                    "detail": result.detail,
                }
            )

    def ejected(self, origin: Origin, reason: str) -> None:
        if self.connected:
            self._publish(
                {"type": "eject", "pool": origin.pool_name, "origin": origin.name, "reason": reason}
            )

    def override(self, name: str, entry: dict[str, Any]) -> None:
        if self.connected:
            self.app.spawn(self._store_override(name, entry), "fleet override")

    def event(self, event: Event) -> None:
        if self.connected:
            try:
                self._events.put_nowait(event)
            except asyncio.QueueFull:
                logger.warning("Fleet event queue full; %s not shared.", event.kind)

    async def recent_events(self, limit: int) -> list[dict[str, Any]] | None:
        """The fleet's history, newest first; None when Redis is out of reach."""
        if not self.connected:
            return None
        try:
            entries: Any = await self.redis.xrevrange(self.stream, count=limit)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None
        return [json.loads(fields[b"event"]) for _, fields in entries or []]

    async def lock_drill(self, pool: str, ttl: float) -> bool | None:
        """Take the fleet's drill lock of `pool` (SET NX with an expiry): True when taken,
        False when another process holds it, None when Redis is out of reach."""
        if not self.connected:
            return None
        try:
            taken = await self.redis.set(
                self.drill_prefix + pool, self.id, nx=True, px=int(ttl * 1000)
            )
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return None
        return bool(taken)

    async def drill(self, pool: str, origin: str, drill_id: str, on: bool, until: float) -> None:
        """Tell the fleet that a drill drains `origin` (until `until`, wall clock) or ended."""
        if self.connected:
            await self._send(
                {
                    "from": self.id,
                    "type": "drill",
                    "pool": pool,
                    "origin": origin,
                    "id": drill_id,
                    "on": on,
                    "until": until,
                }
            )

    async def unlock_drill(self, pool: str) -> None:
        key = self.drill_prefix + pool
        try:
            if await self.redis.get(key) == self.id.encode():
                await self.redis.delete(key)
        except (RedisError, OSError) as exc:
            self._lost(exc)

    # -- background -------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the leases, listen to the bus, share evidence and events; reconnect forever."""
        while True:
            _honour_cancel()
            if not self.connected:
                try:
                    await self.redis.ping()
                except (RedisError, OSError):
                    await asyncio.sleep(1.0)
                    continue
                await self._joined()
                _honour_cancel()
            # Not a TaskGroup: on Python 3.11 one whose task fails leaves this task marked as
            # cancelling for good, which _honour_cancel would take for a shutdown.
            parts = (self._leases(), self._listen(), self._share_evidence(), self._share_events())
            tasks = [asyncio.create_task(part) for part in parts]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            failure = next(task.exception() for task in done)  # they end only by failing
            if not isinstance(failure, RedisError | OSError | TimeoutError):
                raise RuntimeError("A fleet task failed.") from failure
            self._lost(failure)
            await asyncio.sleep(1.0)

    async def _joined(self) -> None:
        """(Re)joined the fleet: reconcile overrides, newest word wins."""
        try:
            remote = await self._stored_overrides()
            local = self.app.overrides.entries
            newer_here = {
                name: entry
                for name, entry in local.items()
                if float(entry.get("at", 0)) > float(remote.get(name, {}).get("at", 0))
            }
            for name, entry in newer_here.items():
                # Stored and published: processes that joined before us read the hash already.
                await self._write_override(name, entry)
        except (RedisError, OSError) as exc:
            self._lost(exc)
            return
        if not self.connected:
            logger.warning("Joined the fleet through Redis at %s.", self.config.redis_url)
        self.connected = True
        self._adopt(remote)

    async def _stored_overrides(self) -> dict[str, dict[str, Any]]:
        stored: Any = await self.redis.hgetall(self.overrides_key)
        return {k.decode(): json.loads(v) for k, v in stored.items()}

    def _adopt(self, overrides: dict[str, dict[str, Any]]) -> None:
        if self.app.overrides.merge(overrides):
            self.app.apply_overrides()

    def _lost(self, exc: BaseException) -> None:
        if self.connected:
            logger.warning(
                "Lost Redis (%s): probing and deciding alone until it is back.",
                describe_redis_error(exc),
            )
        self.connected = False
        self.holding.clear()

    async def _leases(self) -> None:
        lease_ms = int(self.config.lease * 1000)
        pause = min(max(self.config.lease / 10, 0.1), 1.0)
        renew = self.redis.register_script(_RENEW)
        while True:
            _honour_cancel()
            if not self.connected:
                # A one-off command (a publish, an events read) failed: rejoin properly.
                raise RedisConnectionError("a fleet command failed")
            for origin in self.app.origins:
                if not origin.health.enabled:
                    continue
                name = origin_key(origin)
                key = self.lease_prefix + name
                if name in self.holding:
                    if not await renew(keys=[key], args=[self.id, lease_ms]):
                        self.holding.discard(name)
                        logger.info("Lost the probe lease of %s.", name)
                elif await self.redis.set(key, self.id, nx=True, px=lease_ms):
                    self.holding.add(name)
                    logger.info("Took the probe lease of %s.", name)
            _honour_cancel()
            await asyncio.sleep(pause)

    async def _release(self, name: str) -> None:
        key = self.lease_prefix + name
        try:
            if await self.redis.get(key) == self.id.encode():
                await self.redis.delete(key)
        except (RedisError, OSError):
            pass

    def _publish(self, message: dict[str, Any]) -> None:
        message["from"] = self.id
        self.app.spawn(self._send(message), "fleet publish")

    async def _send(self, message: dict[str, Any]) -> None:
        try:
            await self.redis.publish(self.channel, json.dumps(message))
        except (RedisError, OSError) as exc:
            self._lost(exc)

    async def _listen(self) -> None:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.channel)
        try:
            await pubsub.get_message(timeout=1.0)  # the subscription is confirmed
            # An override published between our join and our subscription was missed: it is
            # in the hash.
            self._adopt(await self._stored_overrides())
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                _honour_cancel()
                if message is None or message.get("type") != "message":
                    continue
                try:
                    self._receive(json.loads(message["data"]))
                except (ValueError, KeyError, TypeError) as exc:
                    logger.warning("Ignored a malformed fleet message: %s", exc)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _receive(self, message: dict[str, Any]) -> None:
        if message.get("from") == self.id:
            return
        kind = message["type"]
        if kind == "override":
            self._adopt({message["origin"]: message["entry"]})
            return
        if kind == "drill":
            if self.on_drill is not None:
                self.on_drill(message)
            return
        engine = self.app.engine_of(message.get("origin", ""))
        if engine is None:
            return
        origin = engine.by_name[message["origin"]]
        if message.get("pool") != origin.pool_name:
            return  # evidence about an origin of that name in another pool
        if kind == "probe":
            engine.on_probe(origin, ProbeResult(bool(message["ok"]), str(message["detail"])))
        elif kind == "eject":
            engine.eject(origin, f"{message['reason']} (seen by the fleet)", share=False)
        elif kind == "passive":
            engine.absorb(
                origin, int(message["total"]), int(message["failures"]), int(message["slow"])
            )

    async def _share_evidence(self) -> None:
        while True:
            _honour_cancel()
            await asyncio.sleep(self.config.publish_interval)
            for origin in self.app.origins:
                engine = self.app.engine_of(origin.name)
                if engine is None:
                    continue
                total, failures, slow = engine.outliers[origin.name].take_local()
                if total:
                    await self.redis.publish(
                        self.channel,
                        json.dumps(
                            {
                                "type": "passive",
                                "pool": origin.pool_name,
                                "origin": origin.name,
                                "total": total,
                                "failures": failures,
                                "slow": slow,
                                "from": self.id,
                            }
                        ),
                    )

    async def _share_events(self) -> None:
        while True:
            _honour_cancel()
            event = await self._events.get()
            fields = (event.kind, event.origin, event.old, event.new, event.reason)
            digest = hashlib.sha1("\0".join(fields).encode()).hexdigest()
            # Every process sees the same transitions: the first one to report it writes it.
            if await self.redis.set(f"{self.config.key_prefix}seen:{digest}", 1, nx=True, px=3000):
                record = {**event.as_dict(), "process": self.id}
                await self.redis.xadd(
                    self.stream, {"event": json.dumps(record)}, maxlen=1000, approximate=True
                )

    async def _store_override(self, name: str, entry: dict[str, Any]) -> None:
        try:
            await self._write_override(name, entry)
        except (RedisError, OSError) as exc:
            self._lost(exc)

    async def _write_override(self, name: str, entry: dict[str, Any]) -> None:
        await self.redis.hset(self.overrides_key, name, json.dumps(entry))
        await self.redis.publish(
            self.channel,
            json.dumps({"type": "override", "origin": name, "entry": entry, "from": self.id}),
        )
