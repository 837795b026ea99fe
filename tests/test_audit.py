"""`failover audit` end to end: the CLI's main() against a config file whose origins run on
loopback (FaultyOrigin, HTTPS origins with trustme certificates), whose names a DNS server on
loopback answers (tests/dns_server.py, through `dns.nameservers`); and the pure comparison of
two canary answers (failover/canary.py).

The `no_system_dns` guard (from tests/test_dns.py) fails any test that hands a host name to
the system's getaddrinfo."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from failover.canary import CanaryAnswer, difference
from failover.cli import main
from failover.faulty import FaultyOrigin
from tests.conftest import free_port, origin_config, proxy_config
from tests.dns_server import DnsServer
from tests.helpers import write_yaml
from tests.test_dns import no_system_dns  # noqa: F401  (autouse: no name reaches getaddrinfo)
from tests.tls_helpers import TestCA, TLSOrigin, days

# 127.0.0.2 is loopback too: two origins on different addresses, as in a clean setup.
pytestmark = pytest.mark.allow_hosts(["127.0.0.0/8", "::1"])

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def tls_origin() -> AsyncIterator[Callable[..., Awaitable[TLSOrigin]]]:
    started: list[TLSOrigin] = []

    async def make(*args: Any, **kwargs: Any) -> TLSOrigin:
        origin = TLSOrigin(*args, **kwargs)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


def url(origin: FaultyOrigin, host: str) -> str:
    return f"http://{host}:{origin.port}"


async def run_audit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any], *flags: str
) -> tuple[int, str, str]:
    """Write `config`, run `failover audit --config ...` (in a thread: the origins and the DNS
    server keep answering on this loop) and return (exit status, stdout, stderr)."""
    path = tmp_path / "failover.yaml"
    write_yaml(path, config)
    status = await asyncio.to_thread(main, ["audit", "--config", str(path), *flags])
    out, err = capsys.readouterr()
    return status, out, err


def audit_config(*origins: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    config = proxy_config(*origins, **overrides)
    config.setdefault("audit", {"timeout": 2})
    return config


def kinds(out: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for finding in json.loads(out)["findings"]:
        assert set(finding) == {"kind", "pool", "origins", "detail", "severity"}
        found.setdefault(finding["kind"], []).append(finding)
    return found


# -- end to end -------------------------------------------------------------------------------


async def test_a_clean_setup_has_no_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_origin: MakeOrigin, dns_server: Any
) -> None:
    one = await make_origin("one", host="127.0.0.1")
    two = await make_origin("two", host="127.0.0.2")
    dns_server.set("www.cdn-one.test", a=["127.0.0.1"])
    dns_server.set("cdn-one.test", ns=["ns1.provider-one.test"])
    dns_server.set("www.cdn-two.test", a=["127.0.0.2"])
    dns_server.set("cdn-two.test", ns=["ns1.provider-two.test"])
    config = audit_config(
        origin_config("one", url(one, "www.cdn-one.test"), 0),
        origin_config("two", url(two, "www.cdn-two.test"), 1),
        audit={"canaries": ["/bytes/1000", "/gzip"], "timeout": 2},
        dns={"nameservers": [dns_server.nameserver]},
    )
    status, out, err = await run_audit(tmp_path, capsys, config)
    assert (status, out.strip(), err) == (0, "no findings", ""), out
    assert one.stats.by_status[200] == two.stats.by_status[200] == 2  # both canaries asked
    status, out, _ = await run_audit(tmp_path, capsys, config, "--json")
    assert (status, json.loads(out)) == (0, {"findings": []})


async def test_shared_cname_addresses_and_name_servers_are_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_origin: MakeOrigin, dns_server: Any
) -> None:
    one = await make_origin("one")
    dns_server.set("www.one.test", cname="edge.bigcdn.test")
    dns_server.set("www.two.test", cname="edge.bigcdn.test")
    dns_server.set("edge.bigcdn.test", a=["127.0.0.1"])
    for zone in ("one.test", "two.test"):
        dns_server.set(zone, ns=["ns1.dnsprovider.test", "ns2.dnsprovider.test"])
    config = audit_config(
        origin_config("one", url(one, "www.one.test"), 0),
        origin_config("two", url(one, "www.two.test"), 1),
        dns={"nameservers": [dns_server.nameserver]},
    )
    status, out, _ = await run_audit(tmp_path, capsys, config, "--json")
    found = kinds(out)
    assert status == 1
    assert sorted(found) == ["dns-cname", "dns-nameservers", "dns-overlap"]
    overlap, cname, ns = found["dns-overlap"][0], found["dns-cname"][0], found["dns-nameservers"][0]
    assert overlap == {
        "kind": "dns-overlap",
        "pool": "default",
        "origins": ["one", "two"],
        "detail": "both resolve to 127.0.0.1",
        "severity": "critical",
    }
    assert cname["detail"] == "both are CNAMEs of edge.bigcdn.test"
    assert "ns1.dnsprovider.test, ns2.dnsprovider.test" in ns["detail"]


async def test_dns_failure_and_an_unreachable_origin_are_findings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_origin: MakeOrigin, dns_server: Any
) -> None:
    one = await make_origin("one")
    dns_server.set("www.one.test", a=["127.0.0.1"])
    dns_server.fail("www.broken.test", "servfail")
    config = audit_config(
        origin_config("one", url(one, "www.one.test"), 0),
        origin_config("gone", "http://www.gone.test:8080", 1),
        origin_config("broken", "http://www.broken.test:8080", 1),
        origin_config("closed", f"http://127.0.0.2:{free_port()}", 2),
        dns={"nameservers": [dns_server.nameserver], "timeout": 1},
    )
    status, out, _ = await run_audit(tmp_path, capsys, config)
    assert status == 1
    lines = out.splitlines()
    assert lines[0].split() == ["SEVERITY", "KIND", "POOL", "ORIGINS", "DETAIL"]
    failed = [line for line in lines if " dns-failed " in line]
    assert len(failed) == 2
    assert "www.gone.test: the name does not exist (NXDOMAIN)" in failed[0]
    assert "www.broken.test: the name servers failed (SERVFAIL or refused)" in failed[1]
    unreachable = [line.split()[3] for line in lines if " unreachable " in line]
    assert sorted(unreachable) == ["broken", "closed", "gone"]
    assert any("refused" in line for line in lines if " closed " in line)


async def test_certificates_expiring_within_14_days_are_found(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make_origin: MakeOrigin,
    tls_origin: Any,
) -> None:
    ca = TestCA(tmp_path)
    origin = await tls_origin([ca.issue("origin.test", not_after=days(3))])
    listener = ca.issue("www.example.test", file_name="listener", not_after=days(3))
    healthy = await make_origin("plain", host="127.0.0.2")
    tls = {"server_name": "origin.test", "ca_file": ca.ca_file}
    config = audit_config(
        origin_config("secure", origin.url, 0, tls=tls),
        origin_config("plain", healthy.url, 1),
        listen={
            "port": 0,
            "tls": {
                "certificates": [{"cert_file": listener.cert_file, "key_file": listener.key_file}]
            },
        },
        health={"path": "/"},
    )
    status, out, _ = await run_audit(tmp_path, capsys, config, "--json")
    assert status == 1
    found = kinds(out)
    assert sorted(found) == ["cert-expiry"]
    by_pool = {(f["pool"], tuple(f["origins"])): f for f in found["cert-expiry"]}
    assert set(by_pool) == {(None, ()), ("default", ("secure",))}
    assert by_pool[None, ()]["detail"].startswith("listen.tls.certificates[0]")
    assert by_pool[None, ()]["detail"].endswith("expires in 3.0 days")
    assert by_pool[None, ()]["severity"] == "warning"
    assert by_pool["default", ("secure",)]["detail"] == (
        "certificate of origin.test expires in 3.0 days"
    )
    assert origin.names == ["origin.test"]  # asked by its server name, as probes do

    # Renewed for 90 days: nothing to report.
    ca.issue("www.example.test", file_name="listener", not_after=days(90))
    renewed = await tls_origin([ca.issue("origin.test", not_after=days(90))])
    config["origins"][0]["url"] = renewed.url
    status, out, _ = await run_audit(tmp_path, capsys, config, "--json")
    assert (status, kinds(out)) == (0, {})
    assert renewed.names == ["origin.test"]


async def test_canaries_that_differ_and_blind_health_checks_are_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make_origin: MakeOrigin
) -> None:
    one = await make_origin("one", host="127.0.0.1")
    two = await make_origin("two", host="127.0.0.2")
    config = audit_config(
        origin_config("one", one.url, 0),
        origin_config("two", two.url, 0),
        audit={"canaries": ["/", "/bytes/64", "/gzip"], "timeout": 2},
        all_down="503",
    )
    status, out, _ = await run_audit(tmp_path, capsys, config, "--json")
    assert status == 1
    found = kinds(out)
    assert sorted(found) == ["health-blind", "no-stale", "parity", "single-tier"]
    (parity,) = found["parity"]  # /bytes/64 and /gzip match
    assert parity["origins"] == ["two", "one"]
    assert parity["detail"].startswith("/: sha256 ")
    assert "!= reference " in parity["detail"]
    assert found["health-blind"][0]["detail"] == (
        "GET /health answers 200 on every origin while canaries differ on two"
    )
    assert found["single-tier"][0]["detail"] == "every origin has priority 0: no fallback tier"

    # The table says the same, a row per finding.
    status, out, _ = await run_audit(tmp_path, capsys, config)
    rows = out.splitlines()[1:]
    assert status == 1 and len(rows) == 4
    assert any(row.split()[:4] == ["critical", "parity", "default", "two,one"] for row in rows)


async def test_a_bad_config_cannot_be_audited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = audit_config(
        origin_config("one", "http://127.0.0.1:9", 0), audit={"canaries": ["app.js"]}
    )
    status, out, err = await run_audit(tmp_path, capsys, config)
    assert (status, out) == (2, "")
    assert "'app.js' must start with '/'" in err and len(err.splitlines()) == 1


# -- comparing two canary answers (pure) ------------------------------------------------------

REFERENCE = CanaryAnswer(200, "application/javascript", 10, "9b1c" + "0" * 60, '"v1"')


def test_the_first_difference_of_two_canary_answers_is_named() -> None:
    same = CanaryAnswer(200, "Application/JavaScript", 10, REFERENCE.sha256, '"other"')
    assert difference("/app.js", same, REFERENCE) is None
    cases = [
        (CanaryAnswer(404, "text/html", 3, "ab", None), "/app.js: status 404 != reference 200"),
        (
            CanaryAnswer(200, "text/html", 10, REFERENCE.sha256),
            "/app.js: content type 'text/html' != reference 'application/javascript'",
        ),
        (
            CanaryAnswer(200, "application/javascript", 11, "3f2a" + "1" * 60),
            "/app.js: length 11 != reference 10",
        ),
        (
            CanaryAnswer(200, "application/javascript", 10, "3f2a" + "1" * 60),
            "/app.js: sha256 3f2a.. != reference 9b1c..",
        ),
    ]
    for answer, expected in cases:
        assert difference("/app.js", answer, REFERENCE) == expected


def test_unhashed_bodies_are_compared_by_strong_etag() -> None:
    unhashed = CanaryAnswer(200, "application/javascript", -1, "", '"v2"')
    assert difference("/a", unhashed, REFERENCE) == '/a: etag "v2" != reference "v1"'
    weak = CanaryAnswer(200, "application/javascript", -1, "", 'W/"v2"')
    assert difference("/a", weak, REFERENCE) is None
