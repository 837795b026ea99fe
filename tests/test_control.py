"""The operator's commands (status, events, drain, enable, disable, reload) end to end: the
CLI's `main` against a real proxy on a free loopback port, stdout, stderr and exit status as
the operator sees them."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from failover.cli import main
from failover.control import admin_url
from failover.events import EventLog
from failover.faulty import FaultyOrigin
from tests.conftest import RawOrigin, RunningProxy, free_port, wait_for
from tests.helpers import (
    AUTH,
    PREFIX,
    TOKEN,
    get_status,
    origin_header,
    two_origins_config,
    write_config,
)
from tests.test_drills import traffic


@pytest.fixture(autouse=True)
def _no_token_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAILOVER_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("FAILOVER_CONFIG", raising=False)
    monkeypatch.setenv("USER", "alice")


class Cli:
    """Runs `failover ARGS` in a thread (the proxy shares the test's event loop)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(main, list(argv))
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(capsys)


async def two_origin_proxy(make_origin: Any, make_proxy: Any, **extra: Any) -> RunningProxy:
    primary: FaultyOrigin = await make_origin("primary")
    secondary: FaultyOrigin = await make_origin("secondary")
    admin = {"token": TOKEN, **extra.pop("admin", {})}
    config = two_origins_config(primary, secondary, admin=admin, **extra)
    proxy: RunningProxy = await make_proxy(config)
    await wait_for(lambda: proxy.app.engine.ready(), timeout=5)
    return proxy


# --- status ----------------------------------------------------------------------------------


async def test_status_shows_a_table_and_json_for_scripts(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)

    code, out, err = await cli("status", "--url", proxy.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "pool default: ready, traffic to primary"
    assert lines[1].split() == [
        "ORIGIN", "PRIORITY", "STATE", "FLAGS", "ERRORS", "LATENCY", "REQ/S", "FOR", "REASON"
    ]  # fmt: skip
    primary, secondary = lines[2].split(), lines[3].split()
    assert primary[:5] == ["primary", "0", "healthy", "-", "0.0%"]
    assert secondary[:5] == ["secondary", "1", "healthy", "-", "0.0%"]
    # The columns line up under their headers.
    assert lines[2].index("healthy") == lines[1].index("STATE") == lines[3].index("healthy")

    code, out, err = await cli("status", "--url", proxy.url, "--json")
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert body["active"] == "primary"
    assert [o["name"] for o in body["origins"]] == ["primary", "secondary"]

    code, out, _ = await cli("status", "--url", proxy.url, "--pool", "default", "--json")
    assert code == 0
    assert json.loads(out)["name"] == "default"

    code, out, err = await cli("status", "--url", proxy.url, "--pool", "www")
    assert (code, out) == (2, "")
    assert err == "failover status: --pool: no pool named 'www' (known: default)\n"


async def test_status_of_a_pool_that_lost_every_origin(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    for name in ("primary", "secondary"):
        response = await proxy.client.post(f"{PREFIX}/origins/{name}/disable", headers=AUTH)
        assert response.status_code == 200
    code, out, _ = await cli("status", "--url", proxy.url)
    assert code == 0
    assert out.splitlines()[0] == "pool default: NOT READY, no usable origin"
    assert out.splitlines()[2].split()[2:4] == ["disabled", "disabled"]


async def test_status_and_events_of_several_pools(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    origins = {name: await make_origin(name) for name in ("www-a", "www-b", "api-a")}
    config = {
        "pools": {
            "www": {
                "origins": [
                    {"name": "www-a", "url": origins["www-a"].url, "priority": 0},
                    {"name": "www-b", "url": origins["www-b"].url, "priority": 1},
                ]
            },
            "api": {"origins": [{"name": "api-a", "url": origins["api-a"].url}]},
        },
        "routes": [{"host": "api.example", "pool": "api"}, {"pool": "www"}],
        "health": {"path": "/health", "interval": 0.2, "timeout": 0.5},
        "failback": {"hold_down": 0},
        "admin": {"token": TOKEN},
    }
    proxy: RunningProxy = await make_proxy(config)
    await wait_for(lambda: all(p.engine.ready() for p in proxy.app.runtime.pools.values()))

    code, out, _ = await cli("status", "--url", proxy.url)
    assert code == 0
    pools = [line for line in out.splitlines() if line.startswith("pool ")]
    assert pools == ["pool www: ready, traffic to www-a", "pool api: ready, traffic to api-a"]
    code, out, _ = await cli("status", "--url", proxy.url, "--pool", "api")
    assert code == 0
    assert out.splitlines()[0] == "pool api: ready, traffic to api-a"
    assert "www-a" not in out

    for name in ("www-a", "api-a"):
        await proxy.client.post(f"{PREFIX}/origins/{name}/drain", headers=AUTH)
    code, out, _ = await cli("events", "--url", proxy.url, "--pool", "api", "--json")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert events and {e["pool"] for e in events} <= {"api", "-"}
    assert ("override", "api-a") in {(e["kind"], e["origin"]) for e in events}


# --- drain, enable, disable ------------------------------------------------------------------


async def test_drain_and_enable_move_traffic_and_record_who(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)

    code, out, err = await cli("drain", "primary", "--url", proxy.url, "--token", TOKEN)
    assert (code, err) == (0, "")
    assert out == "primary: drained (drain by alice)\n"
    assert await origin_header(proxy) == "secondary"
    assert (await get_status(proxy))["overrides"]["primary"]["by"] == "alice"

    code, out, _ = await cli(
        "enable", "primary", "--url", proxy.url, "--token", TOKEN, "--by", "bob", "--json"
    )
    assert code == 0
    assert json.loads(out) == {
        "origin": "primary",
        "action": "enable",
        "state": "healthy",
        "by": "bob",
    }
    assert await origin_header(proxy) == "primary"


async def test_the_token_comes_from_the_environment(
    cli: Cli, make_origin: Any, make_proxy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    monkeypatch.setenv("FAILOVER_ADMIN_TOKEN", TOKEN)
    code, out, err = await cli("disable", "primary", "--url", proxy.url)
    assert (code, err) == (0, "")
    assert out == "primary: disabled (disable by alice)\n"
    assert await origin_header(proxy) == "secondary"


async def test_a_wrong_or_missing_token_is_one_line_and_exit_2(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)

    code, out, err = await cli("drain", "primary", "--url", proxy.url, "--token", "stale")
    assert (code, out) == (2, "")
    assert err == (
        f"failover drain: the proxy at {proxy.url}{PREFIX} refused the token (401): "
        "check --token or FAILOVER_ADMIN_TOKEN against admin.token\n"
    )
    # A read with a wrong token is refused too, so a stale token shows at once.
    code, out, err = await cli("status", "--url", proxy.url, "--token", "stale")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "refused the token" in err

    code, _, err = await cli("drain", "primary", "--url", proxy.url)
    assert code == 2
    assert err == (
        f"failover drain: the proxy at {proxy.url}{PREFIX} needs the admin token for this: "
        "pass --token or set FAILOVER_ADMIN_TOKEN\n"
    )
    assert await origin_header(proxy) == "primary"  # nothing changed


async def test_an_unknown_origin_is_named_with_the_known_ones(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    code, out, err = await cli("drain", "nope", "--url", proxy.url, "--token", TOKEN)
    assert (code, out) == (2, "")
    assert err == "failover drain: no origin named 'nope' (known: primary, secondary)\n"


async def test_an_unreachable_or_silent_proxy_is_one_line_and_exit_2(
    cli: Cli, raw_origin: Any
) -> None:
    port = free_port()
    code, out, err = await cli("status", "--url", f"http://127.0.0.1:{port}")
    assert (code, out) == (2, "")
    assert err == (
        f"failover status: cannot reach the proxy's admin API at http://127.0.0.1:{port}"
        f"{PREFIX}: connection refused (is the proxy running, and is this its address?)\n"
    )

    async def silent(reader: asyncio.StreamReader, writer: Any, origin: RawOrigin) -> None:
        await reader.read()  # never answers

    hangs: RawOrigin = await raw_origin(silent)
    code, out, err = await cli("events", "--url", hangs.url, "--timeout", "0.2")
    assert (code, out) == (2, "")
    assert err == (
        f"failover events: the proxy's admin API at {hangs.url}{PREFIX} did not answer "
        "within 0.2 s\n"
    )


async def test_something_else_than_the_admin_api_is_named(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    # A wrong prefix reaches the origin through the proxy: not an admin API answer.
    code, out, err = await cli("status", "--url", f"{proxy.url}/elsewhere")
    assert (code, out) == (2, "")
    assert err.startswith(f"failover status: {proxy.url}/elsewhere/status did not answer like")
    assert err.endswith("check --url and the admin prefix\n")
    assert err.count("\n") == 1


async def test_a_client_outside_admin_allow_is_told_so(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy, admin={"allow": ["10.0.0.0/8"]})
    code, out, err = await cli("status", "--url", proxy.url)
    assert (code, out) == (2, "")
    assert err == "failover status: 127.0.0.1 is not in admin.allow\n"


# --- reload ----------------------------------------------------------------------------------


async def test_reload_applies_the_file_or_says_why_not(
    cli: Cli, tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    primary: FaultyOrigin = await make_origin("primary")
    secondary: FaultyOrigin = await make_origin("secondary")
    config = two_origins_config(primary, secondary, admin={"token": TOKEN})
    path = write_config(tmp_path, config)
    proxy = await make_proxy(config, config_path=path)
    url = ["--url", proxy.url, "--token", TOKEN]

    code, out, err = await cli("reload", *url)
    assert (code, err) == (0, "")
    assert out.startswith("config reloaded at ")
    assert (await get_status(proxy))["last_reload"]["trigger"] == "admin API"

    broken = {**config, "health": {"interval": 0}}
    write_config(tmp_path, broken)
    code, out, err = await cli("reload", *url)
    assert (code, out) == (1, "")
    assert err == (
        "failover reload: the proxy rejected the new config and keeps the old one: "
        "health.interval: Input should be greater than 0, got 0\n"
    )
    assert await origin_header(proxy) == "primary"  # still serving

    third: FaultyOrigin = await make_origin("third")
    grown = {**config, "origins": [*config["origins"], {"name": "third", "url": third.url}]}
    write_config(tmp_path, grown)
    code, out, _ = await cli("reload", *url, "--json")
    assert code == 0
    assert json.loads(out)["result"] == "ok"
    status = await get_status(proxy)
    assert {o["name"] for o in status["origins"]} == {"primary", "secondary", "third"}
    assert status["last_reload"] == {**json.loads(out)}


async def test_reload_without_a_config_file_or_token(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    code, out, err = await cli("reload", "--url", proxy.url, "--token", TOKEN)
    assert (code, out) == (1, "")
    assert err == (
        "failover reload: the proxy runs without a config file: there is nothing to reload\n"
    )
    code, _, err = await cli("reload", "--url", proxy.url)
    assert code == 2
    assert "needs the admin token" in err


# --- events ----------------------------------------------------------------------------------


async def test_events_lists_the_latest_oldest_first(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    for action in ("drain", "enable"):
        response = await proxy.client.post(
            f"{PREFIX}/origins/primary/{action}?by=carol", headers=AUTH
        )
        assert response.status_code == 200

    code, out, err = await cli("events", "--url", proxy.url)
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["TIME", "POOL", "EVENT", "ORIGIN", "CHANGE", "REASON"]
    overrides = [row for row in rows if " override " in row]
    assert "healthy -> drained" in overrides[0] and overrides[0].endswith("drained by carol")
    assert "drained -> healthy" in overrides[-1]

    code, out, _ = await cli("events", "--url", proxy.url, "--json", "--limit", "2")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 2
    # The newest comes last.
    assert [(e["kind"], e["origin"]) for e in events] == [
        ("override", "primary"),
        ("traffic-moved", "primary"),
    ]
    assert events[0]["reason"] == "enabled by carol"


async def test_events_follow_prints_new_events_as_they_happen(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    follow = asyncio.create_task(
        cli("events", "--url", proxy.url, "--follow", "--limit", "0", "--count", "2", "--json")
    )
    await wait_for(lambda: proxy.app.events.followers == 1 or follow.done(), timeout=5)
    assert not follow.done()
    response = await proxy.client.post(f"{PREFIX}/origins/primary/drain", headers=AUTH)
    assert response.status_code == 200
    code, out, err = await asyncio.wait_for(follow, 5)
    assert (code, err) == (0, "")
    events = [json.loads(line) for line in out.splitlines()]
    assert [(e["kind"], e["origin"], e["new"]) for e in events] == [
        ("override", "primary", "drained"),
        ("traffic-moved", "secondary", "secondary"),
    ]


async def test_events_long_poll_endpoint(make_origin: Any, make_proxy: Any) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    url = f"{PREFIX}/events"
    start = (await proxy.client.get(url)).json()["next"]

    # Nothing new: the poll waits its time and answers empty.
    loop = asyncio.get_running_loop()
    began = loop.time()
    empty = (await proxy.client.get(url, params={"after": start, "wait": "0.2"})).json()
    assert loop.time() - began >= 0.2
    assert empty == {"events": [], "source": "local", "next": start}

    poll = asyncio.create_task(proxy.client.get(url, params={"after": start, "wait": "5"}))
    await wait_for(lambda: proxy.app.events.followers == 1, timeout=5)
    await proxy.client.post(f"{PREFIX}/origins/secondary/disable", headers=AUTH)
    body = (await asyncio.wait_for(poll, 5)).json()
    assert body["events"][0]["reason"] == "disabled by 127.0.0.1"
    assert body["next"] == start + len(body["events"])

    # A cursor from before a restart starts again from the oldest event held.
    again = (await proxy.client.get(url, params={"after": 10**6})).json()
    assert len(again["events"]) == body["next"]

    for params, problem in (
        ({"after": "x"}, "after must be a whole number and wait a number of seconds"),
        ({"after": "0", "wait": "31"}, "wait from 0 to 30 s, got after=0 wait=31"),
        ({"after": "-1"}, "after must be 0 or more"),
    ):
        refused = await proxy.client.get(url, params=params)
        assert refused.status_code == 400
        assert problem in refused.text


def test_the_event_cursor_survives_a_full_history_and_a_restart() -> None:
    log = EventLog(lambda: 0.0, size=3)
    for n in range(5):
        log.emit("override", f"o{n}", "", "", "test")
    assert log.emitted == 5
    assert [e.origin for e in log.since(0)] == ["o2", "o3", "o4"]  # o0, o1 fell out
    assert [e.origin for e in log.since(4)] == ["o4"]
    assert log.since(5) == []
    assert [e.origin for e in log.since(9)] == ["o2", "o3", "o4"]  # from a previous process


async def test_a_poll_waits_for_the_next_event_and_no_longer() -> None:
    log = EventLog(lambda: 0.0)
    waiting = asyncio.create_task(log.wait(0, 5))
    await wait_for(lambda: log.followers == 1, timeout=2)
    log.emit("override", "a", "", "", "test")
    await asyncio.wait_for(waiting, 1)
    assert log.followers == 0
    await asyncio.wait_for(log.wait(0, 5), 1)  # event 0 exists: no wait
    await log.wait(1, 0.01)  # nothing new: returns at its deadline
    assert log.followers == 0


# --- where the proxy is ----------------------------------------------------------------------


async def test_the_default_url_comes_from_the_config(
    cli: Cli, tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    config = {
        "listen": {"host": "0.0.0.0", "port": proxy.port},
        "origins": [{"name": "a", "url": "http://127.0.0.1:9001"}],
    }
    path = write_config(tmp_path, config)
    code, out, err = await cli("status", "--config", str(path))
    assert (code, err) == (0, "")
    assert out.startswith("pool default: ready, traffic to primary\n")

    bad = write_config(tmp_path, {"origins": [{"name": "a", "url": "ftp://x"}]}, "bad.yaml")
    code, out, err = await cli("status", "--config", str(bad))
    assert (code, out) == (2, "")
    assert err == (
        "failover status: origins[0].url: 'ftp://x' is not an http(s) URL; "
        "pass --url to name the proxy\n"
    )


def test_admin_url_forms(tmp_path: Path) -> None:
    assert admin_url("http://127.0.0.1:8080", None) == "http://127.0.0.1:8080/_failover"
    assert admin_url("http://127.0.0.1:8080/", None) == "http://127.0.0.1:8080/_failover"
    assert admin_url("https://edge.example:8443/ops/", None) == "https://edge.example:8443/ops"
    v6 = write_config(
        tmp_path,
        {
            "listen": {"host": "::", "port": 9000},
            "admin": {"prefix": "/ops"},
            "origins": [{"name": "a", "url": "http://127.0.0.1:9001"}],
        },
    )
    assert admin_url(None, v6) == "http://[::1]:9000/ops"


async def test_usage_mistakes_exit_2(cli: Cli) -> None:
    code, out, err = await cli("status", "--url", "localhost:8080")
    assert (code, out) == (2, "")
    assert err == (
        "failover status: --url: 'localhost:8080' is not an http(s) URL such as "
        "http://127.0.0.1:8080\n"
    )
    with pytest.raises(SystemExit) as exited:
        main(["drain"])
    assert exited.value.code == 2
    assert "the following arguments are required: ORIGIN" in cli.capsys.readouterr().err
    code, _, err = await cli("events", "--url", "http://127.0.0.1:1", "--limit", "-1")
    assert code == 2
    assert err == "failover events: --limit: -1 is not a whole number of 0 or more\n"


async def test_help_names_the_commands_and_the_exit_codes(cli: Cli) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = cli.capsys.readouterr().out
    for command in ("status", "events", "drain", "enable", "disable", "reload", "drill"):
        assert f"    {command} " in out, command
    with pytest.raises(SystemExit):
        main(["status", "--help"])
    out = " ".join(cli.capsys.readouterr().out.split())
    assert "exit status: 0 done; 1 the proxy said no" in out
    assert "FAILOVER_ADMIN_TOKEN" in out


def test_httpx_errors_do_not_escape(tmp_path: Path) -> None:
    """A transport that fails in an unplanned way still ends in one line, exit 2."""
    from failover.client import AdminClient, AdminError

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection without sending a response")

    client = AdminClient("http://127.0.0.1:1/_failover", transport=httpx.MockTransport(broken))
    with pytest.raises(AdminError) as error:
        client.status()
    assert error.value.exit_code == 2
    assert str(error.value) == (
        "talking to the proxy's admin API at http://127.0.0.1:1/_failover failed: "
        "peer closed connection without sending a response"
    )


# --- drill -----------------------------------------------------------------------------------


async def test_drill_waits_for_a_passing_drill_and_shows_its_report(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    url = ("--url", proxy.url, "--token", TOKEN)
    async with traffic(proxy) as served:
        await wait_for(lambda: len(served) >= 5, timeout=5)
        code, out, err = await cli("drill", "default", *url, "--duration", "1s", "--max-p95", "2s")
        assert (code, err) == (0, "")
        lines = out.splitlines()
        assert re.fullmatch(r"drill \S+ of pool default: passed", lines[0]), out
        assert re.fullmatch(
            r"drained primary for 1(\.\d+)? s of 1 s; abort above 1% errors or p95 2000 ms",
            lines[1],
        ), out
        assert lines[2].split() == ["ORIGIN", "REQUESTS", "ERRORS", "ERROR", "RATE", "P50", "P95"]
        rows = {line.split()[0]: line.split() for line in lines[3:]}
        assert set(rows) == {"primary", "secondary"} and rows["primary"][1] == "(drained)"
        assert int(rows["secondary"][1]) >= 10 and rows["secondary"][2:4] == ["0", "0.0%"]
        assert "secondary" in served  # the traffic really moved while the primary was out
        drill_id = lines[0].split()[1]
        assert proxy.app.drills.reports[drill_id].state == "passed"
        assert proxy.app.drills.reports[drill_id].trigger == "started by alice"

        # --no-wait --json: the report of the drill as it starts, for scripts.
        code, out, err = await cli(
            "drill", "default", *url, "--duration", "0.3s", "--no-wait", "--json"
        )
        assert (code, err) == (0, "")
        report = json.loads(out)
        assert (report["state"], report["origin"], report["duration"]) == (
            "running",
            "primary",
            0.3,
        )
        drills = proxy.app.drills
        await wait_for(lambda: drills.reports[report["id"]].state == "passed", timeout=3)


async def test_drill_that_aborts_exits_1_with_the_reason(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    primary: FaultyOrigin = await make_origin("primary")
    secondary: FaultyOrigin = await make_origin("secondary")
    proxy: RunningProxy = await make_proxy(
        two_origins_config(primary, secondary, admin={"token": TOKEN})
    )
    await wait_for(lambda: proxy.app.engine.ready(), timeout=5)
    async with traffic(proxy):
        argv = ("drill", "default", "--url", proxy.url, "--token", TOKEN, "--duration", "30s")
        command = asyncio.create_task(cli(*argv))
        await wait_for(lambda: proxy.app.drills.running.get("default") is not None, timeout=5)
        await secondary.set_mode("http5xx")
        code, out, err = await asyncio.wait_for(command, timeout=5)
    assert (code, err) == (1, "")
    first = out.splitlines()[0]
    assert re.fullmatch(r"drill \S+ of pool default: aborted \(.+\)", first), out
    assert proxy.app.runtime.origins["primary"].usable


async def test_a_refused_drill_prints_the_proxy_s_sentence_and_exits_1(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)
    url = ("--url", proxy.url, "--token", TOKEN)
    assert (await cli("drain", "secondary", *url))[0] == 0

    code, out, err = await cli("drill", "default", *url)
    assert (code, out) == (1, "")
    assert err == (
        "failover drill: pool 'default' has 1 usable origin(s) (primary); a drill needs at "
        "least two, or it would take the site down\n"
    )
    assert proxy.app.drills.reports == {}

    code, out, err = await cli("drill", "nope", *url)
    assert (code, out) == (2, "")
    assert err == "failover drill: no pool named 'nope' (known: default)\n"
    code, out, err = await cli("drill", "default", *url, "--duration", "forever")
    assert (code, out) == (2, "")
    assert err.startswith("failover drill: duration: ") and err.count("\n") == 1


async def test_drill_with_a_wrong_token_or_no_proxy_exits_2(
    cli: Cli, make_origin: Any, make_proxy: Any
) -> None:
    proxy = await two_origin_proxy(make_origin, make_proxy)

    code, out, err = await cli("drill", "default", "--url", proxy.url, "--token", "stale")
    assert (code, out) == (2, "")
    assert err == (
        f"failover drill: the proxy at {proxy.url}{PREFIX} refused the token (401): "
        "check --token or FAILOVER_ADMIN_TOKEN against admin.token\n"
    )
    assert proxy.app.drills.reports == {}

    closed = f"http://127.0.0.1:{free_port()}"
    code, out, err = await cli("drill", "default", "--url", closed, "--token", TOKEN)
    assert (code, out) == (2, "")
    assert err.startswith(f"failover drill: cannot reach the proxy's admin API at {closed}")
