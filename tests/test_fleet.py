"""Fleet mode end to end: real proxy processes sharing origin state through a real Redis.

Redis: $REDIS_URL when set, else a `redis-server` this module starts on a free port. Tests
that stop, restart or password-protect Redis start a server of their own. Without Redis the
tests are skipped, unless FAILOVER_REQUIRE_REDIS=1 (CI), which makes that a failure.
Every test uses a key prefix of its own, so tests never see each other's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from failover.faulty import FaultyOrigin
from tests.conftest import RunningProxy, free_port, origin_config, proxy_config, wait_for

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = 0.3  # health probe interval
LEASE = 1.5  # probe lease
TOKEN = "fleet-test-token"
ADMIN = "/_failover"


def unavailable(reason: str) -> NoReturn:
    """Skip, or fail where Redis is required (CI)."""
    if os.environ.get("FAILOVER_REQUIRE_REDIS") == "1":
        pytest.fail(f"FAILOVER_REQUIRE_REDIS=1 but {reason}")
    pytest.skip(reason)


# -- Redis ----------------------------------------------------------------------------------


def _answers(port: int) -> bool:
    """Redis answers on `port` (a PING, or NOAUTH from a password-protected server)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


@dataclass
class RedisServer:
    """A redis-server subprocess on a fixed loopback port: stop and start it again at will."""

    binary: str
    port: int
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def spawn(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def wait_ready_sync(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not answer on {self.port} in {timeout} s")
            time.sleep(0.02)

    async def start(self, timeout: float = 10.0) -> None:
        self.spawn()

        async def up() -> bool:
            self._check_alive()
            return await asyncio.to_thread(_answers, self.port)

        await wait_for(up, timeout)

    def _check_alive(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.process.returncode}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        unavailable("redis-server is not installed")
    return binary


@contextlib.contextmanager
def own_redis(password: str | None = None) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary(), free_port(), password)
    try:
        server.spawn()
        server.wait_ready_sync()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A Redis that the module's tests share (none of them stops it)."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with own_redis() as server:
        yield server.url


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop and start again on the same port."""
    with own_redis() as server:
        yield server


# -- proxy processes ------------------------------------------------------------------------


def fleet_config(
    primary: FaultyOrigin,
    secondary: FaultyOrigin,
    redis_url: str,
    backup: FaultyOrigin | None = None,
    **extra: Any,
) -> dict[str, Any]:
    origins = [origin_config("primary", primary, 0), origin_config("secondary", secondary, 1)]
    if backup is not None:
        origins.append(origin_config("backup", backup, 2))
    return proxy_config(
        *origins,
        health={"interval": INTERVAL, "timeout": 0.5},
        fleet={
            "redis_url": redis_url,
            "key_prefix": f"test-{uuid.uuid4().hex}:",
            "lease": LEASE,
            "publish_interval": 0.2,
        },
        admin={"token": TOKEN},
        shutdown_timeout=2,
        **extra,
    )


def cli_env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("FAILOVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Replica:
    """One `python -m failover run` process."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

    async def status(self) -> dict[str, Any]:
        response = await self.client.get(f"{ADMIN}/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def fleet(self) -> dict[str, Any]:
        fleet: dict[str, Any] = (await self.status())["fleet"]
        return fleet

    async def served_by(self) -> str:
        """The origin that answers a fresh request through this replica."""
        response = await self.client.get("/echo", headers={"Connection": "close"})
        assert response.status_code == 200, response.text
        return response.headers["x-failover-origin"]

    async def override(self, origin: str, action: str) -> None:
        response = await self.client.post(
            f"{ADMIN}/origins/{origin}/{action}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            params={"by": self.name},
        )
        assert response.status_code == 200, response.text

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


Start = Callable[[dict[str, Any], int], Awaitable[list[Replica]]]


def launch(name: str, config: Path, workdir: Path) -> Replica:
    """`python -m failover run` on a free port, its output in a log file."""
    port = free_port()
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "failover", "run", "--config", str(config)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*argv, "--port", str(port), "--log-level", "info"],
            cwd=workdir,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Replica(name, process, port, log)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[Start]:
    """Start `count` proxy processes on one config (each on its own port); stop them all."""
    started: list[Replica] = []

    async def start(config: dict[str, Any], count: int) -> list[Replica]:
        path = tmp_path / f"fleet-{len(started)}.yaml"
        path.write_text(json.dumps(config))
        group = []
        for _ in range(count):
            replica = launch(f"replica{len(started)}", path, tmp_path)
            started.append(replica)
            group.append(replica)
        for index, replica in enumerate(group):
            for _ in range(3):
                try:
                    await wait_until_serving(replica)
                    break
                except PortTaken:  # another program bound the free port first: a new one
                    replica = launch(replica.name, path, tmp_path)
                    started.append(replica)
                    group[index] = replica
            else:
                raise AssertionError(f"{replica.name} found no free port in 3 tries")
        return group

    try:
        yield start
    finally:
        for replica in started:
            await replica.client.aclose()
            if replica.process.poll() is None:
                replica.process.terminate()
        for replica in started:
            await asyncio.to_thread(stop_process, replica.process)


class PortTaken(AssertionError):
    """A replica could not bind its port: something took it after `free_port` chose it."""


async def wait_until_serving(replica: Replica, timeout: float = 20.0) -> None:
    """Until the replica answers its own health check (PortTaken if it could not bind)."""

    async def healthy() -> bool:
        if replica.process.poll() is not None:
            output = replica.output()
            error = PortTaken if "address already in use" in output else AssertionError
            raise error(f"{replica.name} exited with {replica.process.returncode}:\n{output}")
        try:
            response = await replica.client.get(f"{ADMIN}/healthz")
        except httpx.TransportError:
            return False
        # Another server on the port answers otherwise; the replica then fails to bind.
        return response.status_code == 200 and response.text == "ok\n"

    await wait_for(healthy, timeout, every=0.05)


async def fleets(group: list[Replica]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(replica.fleet() for replica in group)))


async def settled(group: list[Replica], origins: tuple[str, ...]) -> bool:
    """Every replica is connected, and each origin is probed by exactly one of them."""
    states = await fleets(group)
    if not all(state["connected"] for state in states):
        return False
    # The fleet names an origin with its pool.
    keys = [f"default/{name}" for name in origins]
    return all(sum(key in state["probing"] for state in states) == 1 for key in keys)


async def probers(group: list[Replica], origin: str) -> list[Replica]:
    states = await fleets(group)
    key = f"default/{origin}"
    return [r for r, state in zip(group, states, strict=True) if key in state["probing"]]


# -- the tests ------------------------------------------------------------------------------

ORIGINS = ("primary", "secondary")


async def test_an_origin_sees_one_process_worth_of_probes(
    make_origin: Callable[..., Awaitable[FaultyOrigin]], replicas: Start, redis_url: str
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    group = await replicas(fleet_config(primary, secondary, redis_url), 3)
    await wait_for(lambda: settled(group, ORIGINS), timeout=10)

    loop = asyncio.get_running_loop()
    span = 2.0
    primary.reset_stats()
    started = loop.time()
    # A rate is measured over a window: let the window pass, then read the count.
    await wait_for(lambda: loop.time() - started >= span, timeout=span + 1)
    elapsed = loop.time() - started
    probes = primary.stats.health_requests

    one_prober = elapsed / INTERVAL  # about 6.7 in 2 s; three probers would make about 20
    assert one_prober * 0.5 <= probes <= one_prober * 1.5 + 1, (probes, elapsed)
    assert await settled(group, ORIGINS)  # and the lease never moved meanwhile


async def test_a_drain_sent_to_one_process_is_obeyed_by_another_within_a_second(
    make_origin: Callable[..., Awaitable[FaultyOrigin]], replicas: Start, redis_url: str
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    a, b = await replicas(fleet_config(primary, secondary, redis_url), 2)
    await wait_for(lambda: settled([a, b], ORIGINS), timeout=10)
    assert await b.served_by() == "primary"

    await a.override("primary", "drain")

    async def b_moved() -> bool:
        return await b.served_by() == "secondary"

    await wait_for(b_moved, timeout=1.0)
    status = await b.status()
    drained = next(o for o in status["origins"] if o["name"] == "primary")
    assert "drained" in drained["flags"]
    assert status["overrides"]["primary"]["action"] == "drain"
    assert status["overrides"]["primary"]["by"] == a.name


async def test_killing_the_lease_holder_moves_probing_to_another_process(
    make_origin: Callable[..., Awaitable[FaultyOrigin]], replicas: Start, redis_url: str
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    group = await replicas(fleet_config(primary, secondary, redis_url), 3)
    await wait_for(lambda: settled(group, ORIGINS), timeout=10)
    (holder,) = await probers(group, "primary")
    survivors = [replica for replica in group if replica is not holder]

    holder.process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(holder.process.wait, 5)

    async def taken_over() -> bool:
        return len(await probers(survivors, "primary")) == 1

    # Within the lease, plus a little for the survivors' lease rounds and this polling.
    await wait_for(taken_over, timeout=LEASE + 0.5)
    # The new holder really probes: the origin sees probes again.
    primary.reset_stats()
    await wait_for(lambda: primary.stats.health_requests >= 2, timeout=3 * INTERVAL + 1)
    await wait_for(lambda: settled(survivors, ORIGINS), timeout=LEASE)


async def test_without_redis_every_process_serves_and_fails_over_then_they_converge(
    make_origin: Callable[..., Awaitable[FaultyOrigin]],
    replicas: Start,
    private_redis: RedisServer,
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    backup = await make_origin("backup")
    config = fleet_config(primary, secondary, private_redis.url, backup)
    a, b = await replicas(config, 2)
    all_three = (*ORIGINS, "backup")
    await wait_for(lambda: settled([a, b], all_three), timeout=10)

    await asyncio.to_thread(private_redis.stop)

    async def alone() -> bool:
        return not any(state["connected"] for state in await fleets([a, b]))

    await wait_for(alone, timeout=10)
    # Each process now probes every origin itself, and holds no lease.
    assert all(state["probing"] == [] for state in await fleets([a, b]))

    await primary.set_mode("refuse")
    for replica in (a, b):
        assert await replica.served_by() == "secondary"

    async def both_see_primary_down() -> bool:
        statuses = await asyncio.gather(a.status(), b.status())
        return all(
            not next(o for o in s["origins"] if o["name"] == "primary")["usable"] for s in statuses
        )

    await wait_for(both_see_primary_down, timeout=3)  # each by its own probes
    await primary.set_mode("ok")

    async def both_back_on_primary() -> bool:
        return [await a.served_by(), await b.served_by()] == ["primary", "primary"]

    await wait_for(both_back_on_primary, timeout=3)

    # Overrides while Redis is away stay local. On primary an older word on B, a newer one
    # on A; on secondary a word on B alone. Each side thus has news for the other, whichever
    # of them reaches Redis first when it is back.
    await b.override("primary", "enable")
    await a.override("primary", "drain")
    await b.override("secondary", "disable")
    assert await a.served_by() == "secondary"
    assert await b.served_by() == "primary"

    await private_redis.start()
    await wait_for(lambda: settled([a, b], all_three), timeout=10)

    async def both_on_backup() -> bool:
        return [await a.served_by(), await b.served_by()] == ["backup", "backup"]

    await wait_for(both_on_backup, timeout=3)
    for replica in (a, b):
        overrides = (await replica.status())["overrides"]
        assert (overrides["primary"]["action"], overrides["primary"]["by"]) == ("drain", a.name)
        assert (overrides["secondary"]["action"], overrides["secondary"]["by"]) == (
            "disable",
            b.name,
        )


async def test_events_show_the_fleet_history_on_every_replica(
    make_origin: Callable[..., Awaitable[FaultyOrigin]], replicas: Start, redis_url: str
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    a, b = await replicas(fleet_config(primary, secondary, redis_url), 2)
    await wait_for(lambda: settled([a, b], ORIGINS), timeout=10)
    a_id = (await a.fleet())["process"]

    # A config reload happens on A alone (SIGHUP); B never sees it locally.
    a.process.send_signal(signal.SIGHUP)

    async def on_b() -> bool:
        response = await b.client.get(f"{ADMIN}/events")
        body = response.json()
        assert body["source"] == "fleet"
        return any(e["kind"] == "config-reloaded" and e["process"] == a_id for e in body["events"])

    await wait_for(on_b, timeout=5)

    async def same_history() -> bool:
        a_events, b_events = await asyncio.gather(
            a.client.get(f"{ADMIN}/events"), b.client.get(f"{ADMIN}/events")
        )
        return bool(a_events.json() == b_events.json())

    await wait_for(same_history, timeout=2)


async def test_a_wrong_redis_password_is_a_clear_error_at_start_up(
    make_origin: Callable[..., Awaitable[FaultyOrigin]], replicas: Start, tmp_path: Path
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    with own_redis(password="s3cret") as server:
        wrong = f"redis://:wrong@127.0.0.1:{server.port}/0"
        path = tmp_path / "wrong.yaml"
        path.write_text(json.dumps(fleet_config(primary, secondary, wrong)))
        argv = [sys.executable, "-m", "failover", "run", "--config", str(path)]
        done = await asyncio.to_thread(
            subprocess.run,
            [*argv, "--port", str(free_port())],
            cwd=tmp_path,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2, done.stderr
        assert "fleet.redis_url: Redis refused the credentials" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout

        (replica,) = await replicas(fleet_config(primary, secondary, server.url), 1)
        await wait_for(lambda: settled([replica], ORIGINS), timeout=10)
        assert await replica.served_by() == "primary"


async def test_an_unreachable_redis_does_not_stop_the_proxy(
    make_origin: Callable[..., Awaitable[FaultyOrigin]],
    make_proxy: Callable[..., Awaitable[RunningProxy]],
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    refused = f"redis://127.0.0.1:{free_port()}/0"
    proxy = await make_proxy(fleet_config(primary, secondary, refused))

    response = await proxy.client.get("/echo")
    assert response.status_code == 200
    assert response.headers["x-failover-origin"] == "primary"
    fleet = (await proxy.client.get(f"{ADMIN}/status")).json()["fleet"]
    assert fleet["connected"] is False
    assert fleet["probing"] == []
    # Alone, it probes its origins itself.
    await wait_for(lambda: primary.stats.health_requests >= 2, timeout=3)
    events = (await proxy.client.get(f"{ADMIN}/events")).json()
    assert events["source"] == "local"


async def test_every_replica_stops_promptly_on_sigterm(
    make_origin: Callable[..., Awaitable[FaultyOrigin]], replicas: Start, redis_url: str
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    group = await replicas(fleet_config(primary, secondary, redis_url), 3)

    # Right after start-up, while the replicas still contend for the leases (a rolling
    # restart does this): shutdown_timeout is 2 s and no request is in flight, so each
    # ends well within 5 s.
    for replica in group:
        replica.process.terminate()
    codes = await asyncio.gather(*(asyncio.to_thread(replica.process.wait, 5) for replica in group))
    assert codes == [0, 0, 0]


async def test_a_drill_drains_the_primary_fleet_wide_and_only_one_runs_at_a_time(
    make_origin: Callable[..., Awaitable[FaultyOrigin]], replicas: Start, redis_url: str
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    group = await replicas(fleet_config(primary, secondary, redis_url), 2)
    await wait_for(lambda: settled(group, ORIGINS), timeout=10)
    first, second = group
    url, auth = f"{ADMIN}/pools/default/drills", {"Authorization": f"Bearer {TOKEN}"}
    started = await first.client.post(url, json={"duration": "2s"}, headers=auth)
    assert started.status_code == 202, started.text
    drill_id = started.json()["id"]

    async def everywhere(origin: str) -> bool:
        return all([await replica.served_by() == origin for replica in group])

    await wait_for(lambda: everywhere("secondary"), timeout=2)
    refused = await second.client.post(url, json={"duration": "2s"}, headers=auth)
    assert refused.status_code == 409
    assert "already running in another process of the fleet" in refused.text

    async def passed() -> bool:
        report = (await first.client.get(f"{ADMIN}/drills/{drill_id}")).json()
        return bool(report["state"] == "passed")

    await wait_for(passed, timeout=5)
    await wait_for(lambda: everywhere("primary"), timeout=2)
    again = await second.client.post(url, json={"duration": "1s"}, headers=auth)
    assert again.status_code == 202, again.text  # the lock was released
