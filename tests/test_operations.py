"""Operating the proxy end to end: live config reloads, operator overrides, admin access,
metrics, the access log and webhooks, with real origins and the real proxy on loopback."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from failover.faulty import FaultyOrigin
from tests.conftest import RunningProxy, free_port, origin_config, proxy_config, wait_for

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/_failover"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --- helpers ---------------------------------------------------------------------------------


def two_origins(primary: FaultyOrigin, secondary: FaultyOrigin, **overrides: Any) -> dict[str, Any]:
    return proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        **overrides,
    )


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    """Replace the file in one step, as editors and ConfigMap updates do."""
    scratch = path.with_name(f".{path.name}.new")
    scratch.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.replace(scratch, path)


async def get_status(proxy: RunningProxy) -> dict[str, Any]:
    response = await proxy.client.get(f"{PREFIX}/status")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def origin_in(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((o for o in status["origins"] if o["name"] == name), None)


def names_in(status: dict[str, Any]) -> list[str]:
    return [o["name"] for o in status["origins"]]


async def get_metrics(client: httpx.AsyncClient, base: str = "") -> str:
    response = await client.get(f"{base}{PREFIX}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def still_overridden(overrides: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Origins an operator took out (an `enable` entry means: back to automatic)."""
    return {
        name: entry["action"]
        for name, entry in overrides.items()
        if entry["action"] in ("drain", "disable")
    }


async def origin_header(proxy: RunningProxy, path: str = "/echo") -> str:
    response = await proxy.client.get(path)
    assert response.status_code == 200, response.text
    return response.headers["x-failover-origin"]


# --- config reload ---------------------------------------------------------------------------


async def test_a_reload_under_load_loses_no_request(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    third = await make_origin("third")
    config = two_origins(primary, secondary)
    path = tmp_path / "failover.yaml"
    write_yaml(path, config)
    proxy = await make_proxy(config, config_path=path)

    # The primary is marked down by its probes before the edit.
    await primary.set_mode("refuse")

    async def primary_failed_its_checks() -> bool:
        entry = origin_in(await get_status(proxy), "primary")
        return entry is not None and entry["flags"] == ["failed-check"]

    await wait_for(primary_failed_its_checks, timeout=5)
    before = origin_in(await get_status(proxy), "primary")
    assert before is not None

    loop = asyncio.get_running_loop()
    responses: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def client(number: int) -> None:
        deadline = loop.time() + 6  # a hard bound, whatever happens to the reloads
        async with httpx.AsyncClient(base_url=proxy.url, timeout=5) as http:
            for i in range(1000):
                if stop.is_set() or loop.time() > deadline:
                    return
                response = await http.get(f"/bytes/256?client={number}&i={i}")
                responses.append((response.status_code, response.headers["x-failover-origin"]))

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    try:
        await wait_for(lambda: len(responses) >= 40, timeout=5)

        # Edit one: a third origin joins.
        with_third = copy.deepcopy(config)
        with_third["origins"].append(origin_config("third", third, 2))
        write_yaml(path, with_third)

        async def third_listed() -> bool:
            return "third" in names_in(await get_status(proxy))

        await wait_for(third_listed, timeout=5)
        status = await get_status(proxy)
        assert names_in(status) == ["primary", "secondary", "third"]
        assert status["last_reload"]["result"] == "ok"
        after = origin_in(status, "primary")
        assert after is not None
        # Same name and url: the primary keeps its flags, check record and reason.
        assert after["flags"] == ["failed-check"]
        assert after["check"]["state"] == "unhealthy"
        assert after["check"]["consecutive_failures"] >= before["check"]["consecutive_failures"]
        assert after["reason"] == before["reason"]
        assert after["since_seconds"] >= before["since_seconds"]
        served = len(responses)

        # Edit two: a longer hold-down, and the third origin leaves again.
        longer_hold_down = copy.deepcopy(config)
        longer_hold_down["failback"] = {"hold_down": 7}
        write_yaml(path, longer_hold_down)

        async def second_edit_applied() -> bool:
            status = await get_status(proxy)
            secondary_entry = origin_in(status, "secondary")
            return (
                names_in(status) == ["primary", "secondary"]
                and secondary_entry is not None
                and secondary_entry["failback"]["hold_down"] == 7
            )

        await wait_for(second_edit_applied, timeout=5)
        await wait_for(lambda: len(responses) >= served + 40, timeout=5)
    finally:
        stop.set()
        await asyncio.gather(*clients)

    assert len(responses) >= 80
    assert [code for code, _ in responses if code != 200] == []
    assert {origin for _, origin in responses} == {"secondary"}
    primary_now = origin_in(await get_status(proxy), "primary")
    assert primary_now is not None and primary_now["flags"] == ["failed-check"]
    assert third.stats.requests == 0


async def test_an_invalid_edit_keeps_the_old_config_serving(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    third = await make_origin("third")
    config = two_origins(primary, secondary)
    path = tmp_path / "failover.yaml"
    write_yaml(path, config)
    proxy = await make_proxy(config, config_path=path)
    assert await origin_header(proxy) == "primary"

    broken = copy.deepcopy(config)
    broken["origins"][0]["colour"] = "red"
    broken["origins"][1]["url"] = "ftp://x"
    write_yaml(path, broken)

    async def rejected() -> bool:
        reload = (await get_status(proxy))["last_reload"]
        return reload is not None and reload["result"] == "error"

    await wait_for(rejected, timeout=5)
    status = await get_status(proxy)
    assert status["last_reload"]["trigger"] == "config file changed"
    assert sorted(status["last_reload"]["errors"]) == [
        "origins[0].colour: unknown key (check its spelling against the config reference)",
        "origins[1].url: 'ftp://x' is not an http(s) URL",
    ]
    assert [(o["name"], o["url"]) for o in status["origins"]] == [
        ("primary", primary.url),
        ("secondary", secondary.url),
    ]
    for _ in range(5):
        assert await origin_header(proxy) == "primary"
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_config_reloads_total", result="error") == 1.0
    assert not metric(text, "failover_config_reloads_total", result="ok")

    fixed = copy.deepcopy(config)
    fixed["origins"].append(origin_config("third", third, 2))
    write_yaml(path, fixed)

    async def applied() -> bool:
        reload = (await get_status(proxy))["last_reload"]
        return reload is not None and reload["result"] == "ok"

    await wait_for(applied, timeout=5)
    assert names_in(await get_status(proxy)) == ["primary", "secondary", "third"]
    assert await origin_header(proxy) == "primary"
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_config_reloads_total", result="ok") == 1.0
    assert metric(text, "failover_config_reloads_total", result="error") == 1.0


async def test_sighup_reloads_the_config(tmp_path: Path, make_origin: Any, make_proxy: Any) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    third = await make_origin("third")
    config = two_origins(primary, secondary)
    # The proxy watches the folder holding the symlink; an edit of the target elsewhere
    # goes unseen by the watcher, so only the signal can pick it up.
    target = tmp_path / "real" / "failover.yaml"
    target.parent.mkdir()
    write_yaml(target, config)
    link = tmp_path / "etc" / "failover.yaml"
    link.parent.mkdir()
    link.symlink_to(target)
    proxy = await make_proxy(config, config_path=link)

    edited = copy.deepcopy(config)
    edited["origins"].append(origin_config("third", third, 2))
    write_yaml(target, edited)
    # Without a handler SIGHUP would end the test run: make sure the proxy installed one.
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
    os.kill(os.getpid(), signal.SIGHUP)

    async def third_listed() -> bool:
        return "third" in names_in(await get_status(proxy))

    await wait_for(third_listed, timeout=5)
    status = await get_status(proxy)
    assert status["last_reload"]["result"] == "ok"
    assert status["last_reload"]["trigger"] == "SIGHUP"
    events = (await proxy.client.get(f"{PREFIX}/events")).json()["events"]
    reloads = [e["reason"] for e in events if e["kind"] == "config-reloaded"]
    assert reloads == ["SIGHUP: 1 pool, 3 origins, added origins third"]


async def test_new_origins_probe_at_once_and_removed_ones_take_no_requests(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    third = await make_origin("third")
    # Slow probes by default, so that a probe soon after the edit can only be the first one;
    # the secondary probes fast and serves as the clock of this test.
    config = proxy_config(
        origin_config("primary", primary, 0, health={"interval": 0.1}),
        origin_config("secondary", secondary, 1, health={"interval": 0.1}),
        health={"interval": 10},
    )
    path = tmp_path / "failover.yaml"
    write_yaml(path, config)
    proxy = await make_proxy(config, config_path=path)
    assert await origin_header(proxy) == "primary"

    edited = proxy_config(
        origin_config("third", third, 0),
        origin_config("secondary", secondary, 1, health={"interval": 0.1}),
        health={"interval": 10},
    )
    write_yaml(path, edited)

    async def primary_gone() -> bool:
        return names_in(await get_status(proxy)) == ["third", "secondary"]

    await wait_for(primary_gone, timeout=5)
    # The new origin was probed right away, not one (10 s) interval later.
    await wait_for(lambda: third.stats.health_requests >= 1, timeout=2)
    entry = origin_in(await get_status(proxy), "third")
    assert entry is not None and entry["check"]["state"] == "healthy"

    primary.reset_stats()
    probes_seen = secondary.stats.health_requests
    for _ in range(20):
        assert await origin_header(proxy) == "third"
    # Half a second of the secondary's probes: the removed primary's probe loop is gone too.
    await wait_for(lambda: secondary.stats.health_requests >= probes_seen + 5, timeout=5)
    assert primary.stats.requests == 0
    assert primary.stats.health_requests <= 1  # at most one that was already on its way


# --- operator overrides ----------------------------------------------------------------------


async def test_drain_and_disable_move_traffic_and_enable_brings_it_back(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins(primary, secondary, admin={"token": TOKEN}))
    assert await origin_header(proxy) == "primary"

    for action in ("drain", "disable"):
        flag = {"drain": "drained", "disable": "disabled"}[action]
        before = time.time()
        response = await proxy.client.post(
            f"{PREFIX}/origins/primary/{action}?by=alice", headers=AUTH
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "origin": "primary",
            "action": action,
            "state": flag,
            "by": "alice",
        }
        for _ in range(5):
            assert await origin_header(proxy) == "secondary"
        status = await get_status(proxy)
        entry = origin_in(status, "primary")
        assert entry is not None
        assert entry["flags"] == [flag]
        assert entry["reason"] == f"{flag} by alice"
        assert status["active"] == "secondary"
        override = status["overrides"]["primary"]
        assert (override["action"], override["by"]) == (action, "alice")
        assert before <= override["at"] <= time.time()

        response = await proxy.client.post(f"{PREFIX}/origins/primary/enable", headers=AUTH)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "healthy"
        assert await origin_header(proxy) == "primary"
        status = await get_status(proxy)
        assert still_overridden(status["overrides"]) == {}
        assert status["active"] == "primary"


async def test_overrides_need_the_right_token_and_a_known_origin(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins(primary, secondary, admin={"token": TOKEN}))
    url = f"{PREFIX}/origins/primary/drain"

    wrong = await proxy.client.post(url, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert "wrong or missing bearer token" in wrong.text
    missing = await proxy.client.post(url)
    assert missing.status_code == 401

    unknown = await proxy.client.post(f"{PREFIX}/origins/nope/drain", headers=AUTH)
    assert unknown.status_code == 404
    assert "no origin named 'nope' (known: primary, secondary)" in unknown.text

    # None of it changed anything.
    assert await origin_header(proxy) == "primary"
    assert (await get_status(proxy))["overrides"] == {}

    untokened = await make_proxy(two_origins(primary, secondary))
    refused = await untokened.client.post(url, headers=AUTH)
    assert refused.status_code == 403
    assert "set admin.token in the config" in refused.text
    assert "Authorization: Bearer <token>" in refused.text
    assert await origin_header(untokened) == "primary"


async def test_an_override_survives_a_restart(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    state_file = tmp_path / "state" / "overrides.json"
    config = two_origins(primary, secondary, admin={"token": TOKEN, "state_file": str(state_file)})
    first = await make_proxy(config)
    response = await first.client.post(f"{PREFIX}/origins/primary/drain?by=bob", headers=AUTH)
    assert response.status_code == 200, response.text
    assert await origin_header(first) == "secondary"
    await first.stop()

    second = await make_proxy(config)
    assert await origin_header(second) == "secondary"
    status = await get_status(second)
    entry = origin_in(status, "primary")
    assert entry is not None and entry["flags"] == ["drained"]
    assert status["overrides"]["primary"]["by"] == "bob"

    response = await second.client.post(f"{PREFIX}/origins/primary/enable", headers=AUTH)
    assert response.status_code == 200
    assert await origin_header(second) == "primary"
    saved = json.loads(state_file.read_text(encoding="utf-8"))
    assert still_overridden(saved["overrides"]) == {}


# --- several workers -------------------------------------------------------------------------


def worker_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAILOVER_", "PROMETHEUS_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def served_per_worker(folder: Path, origin: str) -> dict[str, float]:
    """Requests each worker answered from `origin`, read from its own metrics file."""
    counts: dict[str, float] = {}
    for file in folder.glob("counter_*.db"):
        pid = file.stem.removeprefix("counter_")
        for family in MultiProcessCollector.merge([str(file)]):  # type: ignore[no-untyped-call]
            for sample in family.samples:
                if sample.name == "failover_requests_total" and sample.labels["origin"] == origin:
                    counts[pid] = counts.get(pid, 0.0) + sample.value
    return counts


async def test_an_override_reaches_every_worker(tmp_path: Path, make_origin: Any) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    port = free_port()
    config = two_origins(
        primary,
        secondary,
        listen={"host": "127.0.0.1", "port": port},
        admin={"token": TOKEN},
        shutdown_timeout=5,
    )
    path = tmp_path / "failover.yaml"
    write_yaml(path, config)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    log = tmp_path / "proxy.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "failover",
            "run",
            "--config",
            str(path),
            "--port",
            str(port),
            "--workers",
            "2",
            cwd=tmp_path,
            env=worker_env(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        # Each worker writes its gauges to its own file once its start-up has run.
        def both_workers_started() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"exited early:\n{log.read_text(errors='replace')}")
            return len({f.stem.rsplit("_", 1)[1] for f in metrics_dir.glob("gauge_live*")}) == 2

        await wait_for(both_workers_started, timeout=30, every=0.05)
        # A fresh connection for every request, so that both workers answer.
        fresh = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=base, timeout=5, limits=fresh) as client:

            async def ready() -> bool:
                try:
                    return (await client.get(f"{PREFIX}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout=10)
            response = await client.post(f"{PREFIX}/origins/primary/drain", headers=AUTH)
            assert response.status_code == 200, response.text

            answered: list[str] = []

            async def twenty_from_the_secondary() -> bool:
                origins = []
                for _ in range(20):
                    reply = await client.get("/echo")
                    assert reply.status_code == 200, reply.text
                    origins.append(reply.headers["x-failover-origin"])
                answered.extend(origins)
                return set(origins) == {"secondary"}

            await wait_for(twenty_from_the_secondary, timeout=2, every=0)

            # Each worker hands its counts to the shared files about once a second.
            def both_workers_counted() -> bool:
                per_worker = served_per_worker(metrics_dir, "secondary")
                return sum(per_worker.values()) == answered.count("secondary")

            await wait_for(both_workers_counted, timeout=5)
            per_worker = served_per_worker(metrics_dir, "secondary")
            assert len(per_worker) == 2 and all(per_worker.values()), per_worker
            text = await get_metrics(client)
            served = metric(text, "failover_requests_total", origin="secondary", code="200")
            assert served == answered.count("secondary") == sum(per_worker.values())
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
    assert code == 0, log.read_text(errors="replace")
    assert "Traceback" not in log.read_text(errors="replace")


# --- who may use the admin endpoints ---------------------------------------------------------


async def test_a_client_outside_admin_allow_gets_403(make_origin: Any, make_proxy: Any) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy: RunningProxy = await make_proxy(
        two_origins(
            primary,
            secondary,
            admin={"allow": ["10.0.0.0/8"], "trust_forwarded": ["127.0.0.0/8"], "token": TOKEN},
        )
    )
    for endpoint in ("/", "/status", "/events", "/metrics"):
        response = await proxy.client.get(f"{PREFIX}{endpoint}")
        assert response.status_code == 403, endpoint
        assert "127.0.0.1 is not in admin.allow" in response.text
    drain = await proxy.client.post(f"{PREFIX}/origins/primary/drain", headers=AUTH)
    assert drain.status_code == 403
    assert (await proxy.client.get(f"{PREFIX}/healthz")).status_code == 200

    async def ready() -> bool:
        return (await proxy.client.get(f"{PREFIX}/readyz")).status_code == 200

    await wait_for(ready, timeout=5)
    assert await origin_header(proxy) == "primary"  # the data path is not restricted

    # Behind a trusted proxy, the forwarded client address counts.
    inside = {"X-Forwarded-For": "10.1.2.3"}
    outside = {"X-Forwarded-For": "192.0.2.7"}
    for endpoint in ("/", "/status", "/events", "/metrics"):
        assert (await proxy.client.get(f"{PREFIX}{endpoint}", headers=inside)).status_code == 200
        refused = await proxy.client.get(f"{PREFIX}{endpoint}", headers=outside)
        assert refused.status_code == 403
        assert "192.0.2.7 is not in admin.allow" in refused.text


async def test_the_dashboard_is_sent_with_a_strict_content_security_policy(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy: RunningProxy = await make_proxy(two_origins(primary, secondary))
    response = await proxy.client.get(f"{PREFIX}/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = dict(
        part.strip().partition(" ")[::2]
        for part in response.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe" not in response.headers["content-security-policy"]
    # Exactly the page's own inline script and style are allowed, by their hashes.
    for tag in ("script", "style"):
        inline = re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, re.DOTALL)
        assert len(inline) == 1, tag
        digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
        assert policy[f"{tag}-src"] == f"'sha256-{digest}'"


# --- metrics ---------------------------------------------------------------------------------


async def test_metrics_follow_the_traffic(make_origin: Any, make_proxy: Any) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins(primary, secondary))
    for _ in range(3):
        assert await origin_header(proxy) == "primary"
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_requests_total", origin="primary", code="200") == 3.0
    assert metric(text, "failover_origin_up", origin="primary") == 1.0
    assert metric(text, "failover_origin_active", origin="primary") == 1.0
    assert metric(text, "failover_origin_active", origin="secondary") == 0.0
    assert not metric(text, "failover_failovers_total")

    await primary.set_mode("refuse")
    # The first request after the failure still tries the primary, then retries.
    assert await origin_header(proxy) == "secondary"

    async def traffic_moved() -> bool:
        text = await get_metrics(proxy.client)
        return metric(text, "failover_origin_up", origin="primary") == 0.0

    await wait_for(traffic_moved, timeout=5)
    assert await origin_header(proxy) == "secondary"
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_origin_active", origin="primary") == 0.0
    assert metric(text, "failover_origin_active", origin="secondary") == 1.0
    moves = metric(text, "failover_failovers_total", from_origin="primary", to_origin="secondary")
    assert moves is not None and moves >= 1
    failures = metric(
        text, "failover_upstream_attempts_total", origin="primary", result="connect-failure"
    )
    assert failures is not None and failures >= 1
    retries = metric(text, "failover_retries_total", reason="connect-failure")
    assert retries is not None and retries >= 1
    assert metric(text, "failover_requests_total", origin="secondary", code="200") == 2.0
    assert metric(text, "failover_requests_total", origin="primary", code="200") == 3.0


# --- access log ------------------------------------------------------------------------------


ACCESS_FIELDS = {
    "time",
    "client",
    "pool",
    "method",
    "path",
    "status",
    "origin",
    "attempts",
    "duration_ms",
    "bytes_in",
    "bytes_out",
}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "failover.access"]


async def test_the_access_log_has_one_json_line_per_request(
    make_origin: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="failover.access")
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins(primary, secondary, log={"access": True}))
    started = time.time()
    assert (await proxy.client.get("/bytes/1000?x=1")).status_code == 200
    upload = await proxy.client.post("/upload", content=b"a" * 300)
    assert upload.status_code == 200
    assert (await proxy.client.get(f"{PREFIX}/status")).status_code == 200

    await wait_for(lambda: len(access_lines(caplog)) >= 2, timeout=2)
    lines = access_lines(caplog)
    assert len(lines) == 2  # admin requests are not proxied and not logged here
    download, posted = lines
    for line in lines:
        assert set(line) == ACCESS_FIELDS
        assert line["client"] == "127.0.0.1"
        assert line["status"] == 200
        assert line["origin"] == "primary"
        assert started - 1 <= line["time"] <= time.time() + 1
        assert line["duration_ms"] >= 0
    assert (download["method"], download["path"]) == ("GET", "/bytes/1000?x=1")
    assert (download["bytes_in"], download["bytes_out"]) == (0, 1000)
    assert (posted["method"], posted["path"]) == ("POST", "/upload")
    assert posted["bytes_in"] == 300
    assert posted["bytes_out"] == len(upload.content)
    assert "primary" in str(download["attempts"])


async def test_no_access_log_unless_asked(
    make_origin: Any, make_proxy: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="failover.access")
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins(primary, secondary))
    for _ in range(3):
        assert await origin_header(proxy) == "primary"
    assert access_lines(caplog) == []


# --- webhooks --------------------------------------------------------------------------------


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
    proxy = await make_proxy(two_origins(primary, secondary, events={"webhooks": [receiver.url]}))
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
    proxy = await make_proxy(two_origins(primary, secondary, events={"webhooks": [dead]}))
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
