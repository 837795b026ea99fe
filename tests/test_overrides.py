"""Operator overrides (failover.overrides), end to end on loopback: drain, disable and enable
move traffic, need the right token and a known origin, survive a restart in the state file,
and reach every worker under `--workers`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import free_port, wait_for
from tests.helpers import (
    AUTH,
    PREFIX,
    TOKEN,
    get_metrics,
    get_status,
    metric,
    origin_header,
    origin_in,
    two_origins_config,
    write_yaml,
)

ROOT = Path(__file__).resolve().parents[1]


def still_overridden(overrides: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Origins an operator took out (an `enable` entry means: back to automatic)."""
    return {
        name: entry["action"]
        for name, entry in overrides.items()
        if entry["action"] in ("drain", "disable")
    }


# --- operator overrides ----------------------------------------------------------------------


async def test_drain_and_disable_move_traffic_and_enable_brings_it_back(
    make_origin: Any, make_proxy: Any
) -> None:
    primary = await make_origin("primary")
    secondary = await make_origin("secondary")
    proxy = await make_proxy(two_origins_config(primary, secondary, admin={"token": TOKEN}))
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
    proxy = await make_proxy(two_origins_config(primary, secondary, admin={"token": TOKEN}))
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

    untokened = await make_proxy(two_origins_config(primary, secondary))
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
    config = two_origins_config(
        primary, secondary, admin={"token": TOKEN, "state_file": str(state_file)}
    )
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
    config = two_origins_config(
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
