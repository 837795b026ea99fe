"""Live config reloads (failover.reload), end to end on loopback: an edit of the file or a SIGHUP
takes effect without losing a request, an invalid edit keeps the old config serving, and
new origins are probed at once while removed ones take no requests.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import origin_config, proxy_config, wait_for
from tests.helpers import (
    PREFIX,
    get_metrics,
    get_status,
    metric,
    origin_header,
    origin_in,
    two_origins_config,
    write_yaml,
)


def names_in(status: dict[str, Any]) -> list[str]:
    return [o["name"] for o in status["origins"]]


# --- config reload ---------------------------------------------------------------------------


async def test_a_reload_under_load_loses_no_request(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    third = await make_origin("third")
    config = two_origins_config(primary, secondary)
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
    config = two_origins_config(primary, secondary)
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
    config = two_origins_config(primary, secondary)
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
