"""The dashboard and alerts shipped in config/: Prometheus accepts them, they name only metrics
a running proxy exports, and the alerts fire on what a real proxy reports.

`promtool` (Debian's `prometheus` package) checks and evaluates the rules; without it these
tests are skipped, unless FAILOVER_REQUIRE_PROMTOOL=1 asks for them to fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from failover.faulty import FaultyOrigin
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.helpers import AUTH, NO_HEALTH, NO_PASSIVE, PREFIX, TOKEN, get_metrics, metric

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "config" / "prometheus-alerts.yaml"
DASHBOARD = ROOT / "config" / "grafana-dashboard.json"

# Metrics that a rule or panel already names but that the proxy does not export yet, and what
# waits on each. Once the proxy exports one, test_every_metric_named_is_exported fails: take it
# off this list.
COMING: dict[str, tuple[str, ...]] = {}

ALERT_NAMES = {
    "FailoverOriginDown",
    "FailoverPoolOnLastTier",
    "FailoverAllOriginsDown",
    "FailoverCertificateExpiringSoon",
    "FailoverCertificateExpiring",
    "FailoverRetryBudgetExhausted",
    "FailoverNoSuccessfulDrill",
}
PANELS = {
    "Traffic by origin",
    "Origin taking traffic",
    "Origins up",
    "Tier serving each pool",
    "Failovers",
    "Origin error rate",
    "Client error rate",
    "Latency to response headers",
    "Ejections",
    "Retries",
    "Config reloads",
    "Drill results",
}
METRIC = re.compile(r"\bfailover_[a-z0-9_]+")
JOB = {"job": "failover", "instance": "edge-1:8080"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        unavailable("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("FAILOVER_REQUIRE_PROMTOOL") == "1":
        pytest.fail(f"FAILOVER_REQUIRE_PROMTOOL=1 but {reason}")
    pytest.skip(reason)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=60, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def panel_queries() -> list[str]:
    """Every PromQL query of the dashboard: panel targets and variable queries."""
    queries = [target["expr"] for panel in panels() for target in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def as_promql(query: str) -> str:
    """A Grafana query as plain PromQL: its variables replaced by what Grafana puts there, and
    a variable's `label_values(SELECTOR, LABEL)` by the selector it queries."""
    query = re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", query)
    query = query.replace("$__rate_interval", "5m").replace("$__range", "1h")
    return re.sub(r"\$\w+", ".*", query)


def exported(metrics_text: str) -> set[str]:
    """The sample names a /metrics answer declares (also for metrics with no sample yet)."""
    names: set[str] = set()
    for line in metrics_text.splitlines():
        if not line.startswith("# TYPE "):
            continue
        _, _, name, kind = line.split()
        if kind == "counter":
            base = name.removesuffix("_total")
            names |= {name, f"{base}_total", f"{base}_created"}
        elif kind == "histogram":
            names |= {name, *(f"{name}_{part}" for part in ("bucket", "sum", "count", "created"))}
        else:
            names.add(name)
    return names


async def serving_proxy(make_origin: Any, make_proxy: Any) -> tuple[FaultyOrigin, RunningProxy]:
    """Two origins in one pool; no checks, so that only operators and retries change them;
    no retry budget, so that a retry on an origin still usable is refused."""
    primary: FaultyOrigin = await make_origin("primary")
    secondary: FaultyOrigin = await make_origin("secondary")
    config = proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        health=NO_HEALTH,
        passive=NO_PASSIVE,
        retry={"budget": 0, "min_retries_in_flight": 0},
        admin={"token": TOKEN},
    )
    proxy: RunningProxy = await make_proxy(config)
    return primary, proxy


# --- Prometheus accepts them ------------------------------------------------------------------


def test_promtool_accepts_the_alerts() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_the_alerts_are_the_ones_operators_need() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERT_NAMES
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule."""
    rules = [
        {"record": f"failover:panel_query_{i}", "expr": as_promql(query)}
        for i, query in enumerate(panel_queries())
    ]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_imports_anywhere() -> None:
    board = dashboard()
    assert {panel["title"] for panel in panels()} == PANELS
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


# --- every metric they name is one the proxy exports ------------------------------------------


async def test_every_metric_named_is_exported(make_origin: Any, make_proxy: Any) -> None:
    _, proxy = await serving_proxy(make_origin, make_proxy)
    assert (await proxy.client.get("/echo")).status_code == 200
    have = exported(await get_metrics(proxy.client))

    in_rules = {name for rule in alert_rules() for name in METRIC.findall(rule["expr"])}
    in_panels = {name for query in panel_queries() for name in METRIC.findall(query)}
    missing = (in_rules | in_panels) - have
    assert missing <= set(COMING), f"named but not exported: {sorted(missing - set(COMING))}"
    assert not in_panels & set(COMING), "the dashboard waits on no metric to come"

    arrived = set(COMING) & have
    assert not arrived, f"{sorted(arrived)} now exported: take them off COMING in this test"
    for name, rules in COMING.items():
        naming = {rule["alert"] for rule in alert_rules() if name in rule["expr"]}
        assert naming == set(rules), f"COMING[{name!r}] is stale: rules naming it: {naming}"


# --- the alerts fire on what a real proxy reports ---------------------------------------------


def series(metrics_text: str, names: set[str]) -> dict[str, float]:
    """{'name{labels}': value} of the samples of `names`, labelled as Prometheus would."""
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = re.fullmatch(r"(failover_\w+)\{(.*)\} (\S+)", line)
        if match and match[1] in names:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2])) | JOB
            text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
            found[f"{match[1]}{{{text}}}"] = float(match[3])
    return found


def firing(before: str, after: str, at: str, tmp_path: Path) -> set[tuple[str, ...]]:
    """The alerts firing at `at` (e.g. "8m") in a history where the proxy reported `before`
    from 0 to 5 minutes and `after` from 6 minutes on: (alertname, pool[, origin]) each."""
    gauges = {"failover_origin_up", "failover_pool_tier", "failover_pool_tiers"}
    counters = {"failover_retries_refused_total"}
    start = series(before, gauges | counters)
    now = series(after, gauges | counters)
    inputs = []
    for name, value in now.items():
        first = start.get(name, 0.0 if name.startswith(tuple(counters)) else value)
        inputs.append({"series": name, "values": f"{first:g}x5 {value:g}x30"})
    spec = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    {"expr": 'ALERTS{alertstate="firing"}', "eval_time": at, "exp_samples": []}
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_promtool("test", "rules", str(path))
    if result.returncode == 0:
        return set()
    # promtool lists what it got when it differs from the (empty) expectation.
    got = re.search(r"got:(.*)", result.stdout + result.stderr, re.DOTALL)
    assert got is not None, result.stdout + result.stderr
    alerts = set()
    for labels in re.findall(r"\{([^{}]*alertname[^{}]*)\}", got[1]):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        assert pairs["instance"] == JOB["instance"], pairs
        alerts.add(tuple(pairs[k] for k in ("alertname", "pool", "origin") if k in pairs))
    return alerts


async def test_the_alerts_fire_on_what_a_real_proxy_reports(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    promtool()
    primary, proxy = await serving_proxy(make_origin, make_proxy)
    assert (await proxy.client.get("/echo")).status_code == 200
    healthy = await get_metrics(proxy.client)
    assert firing(healthy, healthy, "30m", tmp_path) == set()

    # The primary fails a request with a 503; with no retry budget the retry is refused.
    await primary.set_mode("http5xx")
    response = await proxy.client.get("/echo")
    assert response.status_code == 503
    assert response.headers["x-failover-not-retried"] == "budget"
    # An operator takes the primary out: the pool serves from its last tier.
    drained = await proxy.client.post(f"{PREFIX}/origins/primary/disable", headers=AUTH)
    assert drained.status_code == 200
    degraded = await get_metrics(proxy.client)
    # Two minutes on, the origin is down and the refused retry shows; the pool has not been
    # on its last tier for the 5 minutes that alert waits.
    assert firing(healthy, degraded, "8m", tmp_path) == {
        ("FailoverOriginDown", "default", "primary"),
        ("FailoverRetryBudgetExhausted", "default"),
    }
    # Nine minutes on, no retry was refused for over 5 minutes; the last tier alert fires.
    assert firing(healthy, degraded, "15m", tmp_path) == {
        ("FailoverOriginDown", "default", "primary"),
        ("FailoverPoolOnLastTier", "default"),
    }

    await proxy.client.post(f"{PREFIX}/origins/secondary/disable", headers=AUTH)
    down = await get_metrics(proxy.client)
    assert firing(down, down, "30m", tmp_path) == {
        ("FailoverOriginDown", "default", "primary"),
        ("FailoverOriginDown", "default", "secondary"),
        ("FailoverAllOriginsDown", "default"),
    }


async def test_ejections_and_tiers_are_counted(make_origin: Any, make_proxy: Any) -> None:
    primary: FaultyOrigin = await make_origin("primary", mode="http5xx")
    secondary: FaultyOrigin = await make_origin("secondary")
    proxy: RunningProxy = await make_proxy(
        proxy_config(
            origin_config("primary", primary, 0),
            origin_config("secondary", secondary, 5),
            health=NO_HEALTH,
            passive={"consecutive_failures": 2},
        )
    )
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_pool_tier", pool="default") == 0
    assert metric(text, "failover_pool_tiers", pool="default") == 2
    assert metric(text, "failover_ejections_total") is None
    for _ in range(2):  # each fails on the primary, then is retried on the secondary
        assert (await proxy.client.get("/echo")).headers["x-failover-origin"] == "secondary"
    text = await get_metrics(proxy.client)
    assert metric(text, "failover_ejections_total", pool="default", origin="primary") == 1
    assert metric(text, "failover_pool_tier", pool="default") == 1


# --- the drill alert: never drilled, drilled long ago, restarted since the last pass ----------


async def test_the_drill_alert_fires_for_pools_not_drilled_in_30_days(
    tmp_path: Path, make_origin: Any, make_proxy: Any
) -> None:
    promtool()
    _, proxy = await serving_proxy(make_origin, make_proxy)
    name = "failover_drill_last_success_timestamp_seconds"

    async def reported() -> dict[str, float]:
        return series(await get_metrics(proxy.client), {name})

    # A pool with no passed drill is exported as 0 (not left out), so the rule sees it.
    async def exported_yet() -> bool:
        return bool(await reported())

    await wait_for(exported_yet, timeout=5)
    never = await reported()
    assert list(never.values()) == [0.0]

    day = 86400
    other = JOB | {"instance": "edge-2:8080"}

    def labelled(pool: str, job: dict[str, str] = JOB) -> str:
        text = ",".join(f'{k}="{v}"' for k, v in sorted((job | {"pool": pool}).items()))
        return f"{name}{{{text}}}"

    # One sample an hour for 40 days (961 samples), the rules evaluated on each; the values
    # are seconds since the epoch, which is where promtool's clock starts.
    inputs = [
        # what the real proxy reports for its pool "default", all along
        {"series": next(iter(never)), "values": "0x960"},
        # passed on day 2, never since
        {"series": labelled("old"), "values": f"0x47 {2 * day}x912"},
        # passed on day 20; the proxy restarted on day 25 and reports 0 again; another proxy
        # of the job never ran a drill of this pool
        {"series": labelled("recent"), "values": f"0x479 {20 * day}x119 0x360"},
        {"series": labelled("recent", other), "values": "0x960"},
    ]

    def alert(pool: str) -> dict[str, Any]:
        labels = {"alertname": "FailoverNoSuccessfulDrill", "alertstate": "firing"}
        labels |= {"job": JOB["job"], "pool": pool, "severity": "warning"}
        text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return {"labels": f"ALERTS{{{text}}}", "value": 1}

    query = 'ALERTS{alertname="FailoverNoSuccessfulDrill", alertstate="firing"}'
    spec = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1h",
        "tests": [
            {
                "interval": "1h",
                "input_series": inputs,
                "promql_expr_test": [
                    # `for: 1h`: a new proxy gets an hour to run its first drill
                    {"expr": query, "eval_time": "45m", "exp_samples": []},
                    {
                        "expr": query,
                        "eval_time": "40d",
                        "exp_samples": [alert("default"), alert("old")],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "drill_alert_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = run_promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
