"""TLS at both ends, end to end with real TLS: a test CA and certificates made here (trustme),
HTTPS origins on 127.0.0.1 reached by a server name that is not their address, the listener
serving certificates by SNI to Python, curl and Chromium, and certificates renewed on disk."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import hashlib
import json
import shutil
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from failover import h1
from failover.cli import main
from failover.config import ConfigError, build_settings
from failover.tls import OriginTLS, TLSSettings, certificate_info, describe
from tests.conftest import RunningProxy, origin_config, proxy_config, wait_for
from tests.helpers import (
    get_metrics,
    get_status,
    metric,
    origin_in,
    read_response,
    request_head,
    write_yaml,
)
from tests.tls_helpers import CertFiles, TestCA, TLSOrigin, days, overwrite

MakeProxy = Callable[..., Awaitable[RunningProxy]]


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path)


@pytest.fixture
async def tls_origin() -> AsyncIterator[Callable[..., Awaitable[TLSOrigin]]]:
    started: list[TLSOrigin] = []

    async def make(certs: list[CertFiles], **kwargs: Any) -> TLSOrigin:
        origin = TLSOrigin(certs, **kwargs)
        await origin.start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        await origin.stop()


def tls_to(ca: TestCA, server_name: str, **extra: Any) -> dict[str, Any]:
    return {"server_name": server_name, "ca_file": ca.ca_file, **extra}


NO_CHECKS = {"enabled": False}


# -- TLS to origins -------------------------------------------------------------------------


async def test_an_origin_is_reached_by_address_with_its_own_server_name(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    cert = ca.issue("primary.test", not_after=days(40))
    origin = await tls_origin([cert])
    config = proxy_config(
        origin_config("primary", origin.url, 0, tls=tls_to(ca, "primary.test")),
    )
    proxy = await make_proxy(config)

    response = await proxy.client.get("/anything")
    assert response.status_code == 200, response.text
    assert response.json()["sni"] == "primary.test"
    # Health probes go over the same TLS settings: the origin is healthy, not failing checks.
    await wait_for(lambda: proxy.app.engine.checks["primary"].state.value == "healthy", 5)

    status = origin_in(await get_status(proxy), "primary")
    assert status is not None
    tls = status["tls"]
    assert tls["server_name"] == "primary.test"
    assert tls["verify"] is True
    assert tls["cert_names"] == ["primary.test"]
    assert 39 < tls["cert_expires_in_days"] <= 40
    expiry = metric(
        await get_metrics(proxy.client),
        "failover_origin_cert_expiry_seconds",
        pool="default",
        origin="primary",
    )
    assert expiry is not None and 39 * 86400 < expiry <= 40 * 86400  # seconds left
    # 40 days left: no expiry event.
    assert not [e for e in proxy.app.events.newest_first(50) if e.kind == "certificate-expiring"]


async def test_two_origins_on_one_address_never_share_a_connection(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    # One HTTPS server, one address and port, two names (certificates chosen by SNI).
    origin = await tls_origin([ca.issue("a.test"), ca.issue("b.test")])
    config = proxy_config(health=NO_CHECKS)
    del config["origins"]
    config["pools"] = {
        name: {"origins": [origin_config(name, origin.url, 0, tls=tls_to(ca, f"{name}.test"))]}
        for name in ("a", "b")
    }
    config["routes"] = [{"path": f"/{name}", "pool": name} for name in ("a", "b")]
    proxy = await make_proxy(config)

    for _ in range(3):
        for name in ("a", "b"):
            response = await proxy.client.get(f"/{name}/x")
            assert response.status_code == 200, response.text
            assert response.json()["sni"] == f"{name}.test"
    # Keep-alive: one connection per name, each asked for its own name.
    assert sorted(n or "" for n in origin.names) == ["a.test", "b.test"]
    pools = {o.name: o.pool for o in proxy.app.origins}
    assert pools["a"] is not pools["b"]
    assert pools["a"].server_hostname == "a.test"
    assert pools["b"].server_hostname == "b.test"


async def test_expired_and_wrong_name_certificates_fail_over_with_named_reasons(
    ca: TestCA, tls_origin: Any, make_origin: Any, make_proxy: MakeProxy
) -> None:
    expired = await tls_origin([ca.issue("expired.test", not_before=days(-30), not_after=days(-1))])
    wrong = await tls_origin([ca.issue("other.test")])
    good = await tls_origin([ca.issue("good.test")])
    origins = [
        origin_config("expired", expired.url, 0, tls=tls_to(ca, "expired.test")),
        origin_config("wrong", wrong.url, 1, tls=tls_to(ca, "wrong.test")),
        origin_config("good", good.url, 2, tls=tls_to(ca, "good.test")),
    ]
    config = proxy_config(*origins, health=NO_CHECKS, retry={"attempts": 3})
    proxy = await make_proxy(config)

    response = await proxy.client.get("/x")
    assert response.status_code == 200, response.text
    assert response.json()["sni"] == "good.test"
    assert response.headers["x-failover-attempts"] == (
        "expired;connect-failure, wrong;connect-failure, good;200"
    )
    text = await get_metrics(proxy.client)
    for name in ("expired", "wrong"):
        labels = {"origin": name, "result": "connect-failure"}
        assert metric(text, "failover_upstream_attempts_total", **labels) == 1

    # With the good origin gone, the error page names each handshake failure.
    await good.stop()
    response = await proxy.client.get("/x")
    assert response.status_code == 502
    assert "expired: certificate expired" in response.text
    assert "wrong: certificate verify failed: hostname mismatch for 'wrong.test'" in response.text

    # Health probes name them the same way.
    checked = await make_proxy(proxy_config(*origins[:2]))

    def last(name: str) -> str:
        return str(checked.app.engine.checks[name].last_detail)

    await wait_for(lambda: bool(last("expired") and last("wrong")), 5)
    assert last("expired") == "certificate expired"
    assert last("wrong") == "certificate verify failed: hostname mismatch for 'wrong.test'"


async def test_a_client_certificate_reaches_an_origin_that_requires_one(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    origin = await tls_origin([ca.issue("mtls.test")], require_client_cert_from=ca.ca_file)
    client = ca.issue("client", common_name="failover-proxy")
    with_cert = tls_to(
        ca, "mtls.test", client_cert_file=client.cert_file, client_key_file=client.key_file
    )
    config = proxy_config(
        origin_config("anonymous", origin.url, 0, tls=tls_to(ca, "mtls.test")),
        origin_config("identified", origin.url, 1, tls=with_cert),
        health=NO_CHECKS,
    )
    proxy = await make_proxy(config)

    response = await proxy.client.get("/x")
    assert response.status_code == 200, response.text
    assert response.json()["client"] == "failover-proxy"
    attempts = response.headers["x-failover-attempts"].split(", ")
    assert attempts[0].startswith("anonymous;") and attempts[-1] == "identified;200"


async def test_a_client_certificate_renewed_on_disk_is_used_for_new_connections(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    # The origin closes every connection: each request shows the certificate of a new one.
    origin = await tls_origin(
        [ca.issue("mtls.test")], require_client_cert_from=ca.ca_file, close=True
    )
    client = ca.issue("client", common_name="first")
    tls = tls_to(
        ca, "mtls.test", client_cert_file=client.cert_file, client_key_file=client.key_file
    )
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin.url, 0, tls=tls), health=NO_CHECKS)
    )
    response = await proxy.client.get("/x")
    assert response.status_code == 200, response.text
    assert response.json()["client"] == "first"

    ca.issue("client", common_name="second")  # renewed in place: the key, then the certificate

    async def renewed() -> bool:
        response = await proxy.client.get("/x")
        assert response.status_code == 200, response.text  # never a failed request meanwhile
        return bool(response.json()["client"] == "second")

    await wait_for(renewed, 10, every=0.1)
    reloaded = [e for e in proxy.app.events.newest_first(50) if e.kind == "certificates-reloaded"]
    assert [(e.origin, e.pool) for e in reloaded] == [("primary", "default")]

    # A key that is no key: reported, and new connections keep the certificate they had.
    await asyncio.to_thread(Path(client.key_file).write_text, "not a key\n")
    await wait_for(lambda: (proxy.app.last_reload or {}).get("result") == "error", 10)
    assert proxy.app.last_reload is not None
    problem = proxy.app.last_reload["errors"][0]
    assert problem.startswith("origin primary tls: ") and client.key_file in problem
    assert "still use the previous files" in problem
    response = await proxy.client.get("/x")
    assert response.status_code == 200, response.text
    assert response.json()["client"] == "second"


async def test_new_connections_to_an_origin_resume_its_tls_session(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    # The origin closes every connection: each request needs a new one.
    origin = await tls_origin([ca.issue("primary.test")], close=True)
    config = proxy_config(
        origin_config("primary", origin.url, 0, tls=tls_to(ca, "primary.test")),
        health=NO_CHECKS,
    )
    proxy = await make_proxy(config)
    for _ in range(4):
        response = await proxy.client.get("/x")
        assert response.status_code == 200, response.text
    assert origin.connections == 4
    assert origin.reused == [False, True, True, True]


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_sessions_resume_on_uvloop_too(ca: TestCA, version: str) -> None:
    """The proxy runs on uvloop: its SSL transport hands our context the session as well."""

    async def run() -> list[bool]:
        origin = TLSOrigin([ca.issue("primary.test")], close=True)
        await origin.start()
        settings = TLSSettings(server_name="primary.test", ca_file=ca.ca_file, min_version=version)
        tls = OriginTLS(settings, "127.0.0.1")
        pool = h1.Pool(
            origin.url,
            ssl_context=tls.context,
            server_hostname=tls.server_name,
            on_tls=tls.connected,
        )
        try:
            for _ in range(3):
                response = await pool.request("GET", "/", [("Host", "primary.test")])
                assert json.loads(await response.content.read())["sni"] == "primary.test"
                response.release()
        finally:
            await pool.close()
            await origin.stop()
        return origin.reused

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(run()) == [False, True, True]


async def test_an_origin_certificate_close_to_expiry_raises_an_event(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    origin = await tls_origin([ca.issue("primary.test", not_after=days(5))])
    config = proxy_config(origin_config("primary", origin.url, 0, tls=tls_to(ca, "primary.test")))
    proxy = await make_proxy(config)
    assert (await proxy.client.get("/x")).status_code == 200

    def expiring() -> list[Any]:
        return [e for e in proxy.app.events.newest_first(50) if e.kind == "certificate-expiring"]

    await wait_for(lambda: bool(expiring()), 5)
    assert len(expiring()) == 1  # once per certificate, not per connection
    assert expiring()[0].origin == "primary"
    assert "expires in 4.9 days" in expiring()[0].reason or "expires in 5.0 days" in (
        expiring()[0].reason
    )


async def test_verify_false_still_reports_the_certificate_expiry(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    origin = await tls_origin([ca.issue("selfsigned.test", not_after=days(30))])
    config = proxy_config(
        origin_config("primary", origin.url, 0, tls={"verify": False}), health=NO_CHECKS
    )
    proxy = await make_proxy(config)
    assert (await proxy.client.get("/x")).status_code == 200
    status = origin_in(await get_status(proxy), "primary")
    assert status is not None
    assert status["tls"]["verify"] is False
    assert status["tls"]["server_name"] == "127.0.0.1"
    assert 29 < status["tls"]["cert_expires_in_days"] <= 30


def test_a_pool_tls_block_is_the_default_of_its_origins_keys_overridden_one_by_one(
    ca: TestCA,
) -> None:
    settings = build_settings(
        {
            "tls": {"ca_file": ca.ca_file, "min_version": "1.3"},
            "pools": {
                "cdn": {
                    "tls": {"server_name": "cdn.test"},
                    "origins": [
                        {"name": "a", "url": "https://127.0.0.1:9001"},
                        {"name": "b", "url": "https://127.0.0.1:9002", "tls": {"verify": False}},
                        {"name": "c", "url": "http://127.0.0.1:9003"},
                    ],
                }
            },
        }
    )
    pool = settings.pools["cdn"]
    a, b, c = (pool.tls_for(o) for o in pool.origins)
    assert a is not None and b is not None
    assert (a.server_name, a.ca_file, a.min_version, a.verify) == (
        "cdn.test",
        ca.ca_file,
        "1.3",
        True,
    )
    assert (b.server_name, b.verify) == ("cdn.test", False)
    assert c is None


# -- config and `check` ---------------------------------------------------------------------


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as error:
        build_settings(data)
    return error.value.problems


def listen_tls(*certs: CertFiles, **extra: Any) -> dict[str, Any]:
    return {
        "certificates": [{"cert_file": c.cert_file, "key_file": c.key_file} for c in certs],
        **extra,
    }


ORIGINS = [{"name": "a", "url": "https://127.0.0.1:9001"}]


def test_config_names_each_bad_tls_field(ca: TestCA, tmp_path: Path) -> None:
    a, b = ca.issue("a.test"), ca.issue("b.test")
    missing = str(tmp_path / "missing.crt")
    found = problems(
        {
            "listen": {
                "tls": {
                    "certificates": [
                        {"cert_file": missing, "key_file": a.key_file},
                        {"cert_file": a.cert_file, "key_file": b.key_file},
                    ],
                    "min_version": "1.1",
                    "alpn": ["h2"],
                }
            },
            "origins": ORIGINS,
        }
    )
    assert (
        f"listen.tls.certificates[0]: certificate file {missing!r} cannot be read: "
        "no such file or directory"
    ) in found
    assert (
        f"listen.tls.certificates[1]: key file {b.key_file!r} does not match certificate "
        f"{a.cert_file!r}"
    ) in found
    assert "listen.tls.min_version: Input should be '1.2' or '1.3', got '1.1'" in found
    assert any(p.startswith("listen.tls.alpn: 'h2' is not supported") for p in found)

    found = problems(
        {
            "origins": [
                {"name": "a", "url": "http://127.0.0.1:9001", "tls": {"verify": False}},
                {
                    "name": "b",
                    "url": "https://127.0.0.1:9002",
                    "tls": {"client_cert_file": a.cert_file, "server_name": "bad name"},
                },
                {"name": "c", "url": "https://127.0.0.1:9003", "tls": {"ca_file": a.key_file}},
            ]
        }
    )
    assert "origins[0]: tls: is set but the url 'http://127.0.0.1:9001' is not https" in found
    assert "origins[1].tls.server_name: 'bad name' is not a host name" in found
    assert any("origins[2].tls: CA file" in p and "no valid PEM" in p for p in found)
    assert problems({"listen": {"redirect_http_port": 8081}, "origins": ORIGINS}) == [
        "listen: redirect_http_port needs tls (it redirects to HTTPS)"
    ]


def test_client_certificate_and_key_go_together(ca: TestCA) -> None:
    a = ca.issue("a.test")
    origin = {**ORIGINS[0], "tls": {"client_cert_file": a.cert_file}}
    assert problems({"origins": [origin]}) == [
        "origins[0].tls: client_cert_file and client_key_file go together: give both"
    ]


def test_check_warns_of_a_certificate_that_expires_within_14_days(
    ca: TestCA, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    soon, later = ca.issue("soon.test", not_after=days(5)), ca.issue("later.test")
    path = tmp_path / "failover.yaml"
    write_yaml(path, {"listen": {"tls": listen_tls(later, soon)}, "origins": ORIGINS})
    assert main(["check", str(path)]) == 0
    err = capsys.readouterr().err
    assert (
        f"warning: listen.tls.certificates[1]: certificate {soon.cert_file!r} expires in 4.9"
        in (err.replace("5.0", "4.9"))
    )
    assert later.cert_file not in err


def test_certificate_info_reads_expiry_and_names(ca: TestCA) -> None:
    cert = ca.issue("x.test", not_after=days(10))
    der = ssl.PEM_cert_to_DER_cert(cert.cert.cert_chain_pems[0].bytes().decode())
    info = certificate_info(der)
    assert info.names == ("x.test",)
    assert abs(info.not_after - days(10).replace(microsecond=0).timestamp()) <= 1
    with pytest.raises(ValueError):
        certificate_info(der[:40])


def test_describe_names_handshake_failures() -> None:
    error = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert")
    error.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert describe(error) == "TLS handshake failed: tlsv13 alert certificate required"


# -- TLS on the listener --------------------------------------------------------------------


async def https_get(
    port: int, server_name: str | None, ca: TestCA, path: str = "/echo"
) -> tuple[Any, dict[str, Any]]:
    """One request over a new TLS connection; the response and the peer certificate."""
    async with tls_connection(port, server_name, ca) as (reader, writer):
        writer.write(request_head("GET", path, [("Host", server_name or "127.0.0.1")]))
        response = await read_response(reader)
        return response, writer.get_extra_info("peercert")


@contextlib.asynccontextmanager
async def tls_connection(
    port: int, server_name: str | None, ca: TestCA
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    context = ca.client_context()
    if server_name is None:
        context.check_hostname = False
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname=server_name
    )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def names_of(peercert: dict[str, Any]) -> list[str]:
    return [value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]


async def https_proxy(
    make_origin: Any, make_proxy: MakeProxy, tls: dict[str, Any], **listen: Any
) -> RunningProxy:
    backend = await make_origin("backend")
    config = proxy_config(origin_config("backend", backend, 0))
    config["listen"] = {"tls": tls, **listen}
    return await make_proxy(config)


async def test_the_listener_serves_each_name_its_certificate(
    ca: TestCA, make_origin: Any, make_proxy: MakeProxy
) -> None:
    a, b = ca.issue("a.test"), ca.issue("b.test")
    proxy = await https_proxy(make_origin, make_proxy, listen_tls(a, b))
    for name in ("a.test", "b.test"):
        response, cert = await https_get(proxy.port, name, ca)
        assert response.status == 200
        assert response.get("x-origin") == "backend"
        assert names_of(cert) == [name]
        sent = dict((k.lower(), v) for k, v in response.json()["headers"])
        assert sent["x-forwarded-proto"] == "https"
    # No server name (or an unknown one): the first certificate.
    _, cert = await https_get(proxy.port, None, ca)
    assert names_of(cert) == ["a.test"]
    response, _ = await https_get(proxy.port, "b.test", ca, "/_failover/status")
    listed = response.json()["listener_certificates"]
    assert [c["names"] for c in listed] == [["a.test"], ["b.test"]]
    assert [c["cert_file"] for c in listed] == [a.cert_file, b.cert_file]
    assert 89 < listed[0]["expires_in_days"] <= 90


async def test_the_listener_keeps_to_its_minimum_version(
    ca: TestCA, make_origin: Any, make_proxy: MakeProxy
) -> None:
    a = ca.issue("a.test")
    proxy = await https_proxy(make_origin, make_proxy, listen_tls(a, min_version="1.3"))
    context = ca.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(OSError):  # an alert or a reset, as the handshake is refused
        await asyncio.open_connection(
            "127.0.0.1", proxy.port, ssl=context, server_hostname="a.test"
        )
    response, _ = await https_get(proxy.port, "a.test", ca)
    assert response.status == 200


async def test_curl_gets_each_name_its_certificate(
    ca: TestCA, make_origin: Any, make_proxy: MakeProxy
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    a, b = ca.issue("a.test"), ca.issue("b.test")
    proxy = await https_proxy(make_origin, make_proxy, listen_tls(a, b))
    for name in ("a.test", "b.test"):
        process = await asyncio.create_subprocess_exec(
            curl,
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "--cacert",
            ca.ca_file,
            "--resolve",
            f"{name}:{proxy.port}:127.0.0.1",
            "--write-out",
            "%{http_code} %{ssl_verify_result}\n%{certs}",
            "--output",
            "/dev/null",
            f"https://{name}:{proxy.port}/echo",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 0, err.decode()
        first, _, certs = out.decode().partition("\n")
        assert first == "200 0"  # verified against the test CA, for this very name
        assert f"DNS:{name}" in certs


def spki_hash(cert: CertFiles) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    loaded = x509.load_pem_x509_certificate(cert.cert.cert_chain_pems[0].bytes())
    spki = loaded.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def test_chromium_gets_each_name_its_certificate(
    ca: TestCA, make_origin: Any, make_proxy: MakeProxy
) -> None:
    from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, require_browser

    require_browser()
    from playwright.async_api import async_playwright

    a, b = ca.issue("a.test"), ca.issue("b.test")
    proxy = await https_proxy(make_origin, make_proxy, listen_tls(a, b))
    # Chromium cannot be pointed at a CA file: it accepts exactly these two keys, and
    # the certificate it was served is then read back from the response.
    args = [
        *CHROMIUM_ARGS,
        "--host-resolver-rules=MAP a.test 127.0.0.1, MAP b.test 127.0.0.1",
        f"--ignore-certificate-errors-spki-list={spki_hash(a)},{spki_hash(b)}",
    ]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
        try:
            page = await browser.new_page()
            for name in ("a.test", "b.test"):
                response = await page.goto(f"https://{name}:{proxy.port}/echo", timeout=WAIT_MS)
                assert response is not None and response.status == 200
                assert await response.header_value("x-origin") == "backend"
                details = await response.security_details()
                assert details is not None
                assert details.get("subjectName") == name
                assert details.get("protocol") in ("TLS 1.2", "TLS 1.3")
        finally:
            await browser.close()


async def test_a_renewed_certificate_is_served_to_new_connections_only(
    ca: TestCA, make_origin: Any, make_proxy: MakeProxy
) -> None:
    old = ca.issue("a.test", file_name="site", not_after=days(10))
    proxy = await https_proxy(make_origin, make_proxy, listen_tls(old))
    app = proxy.app

    def reloads() -> int:
        return sum(e.kind == "certificates-reloaded" for e in app.events.newest_first(100))

    async with tls_connection(proxy.port, "a.test", ca) as (reader, writer):
        writer.write(request_head("GET", "/echo", [("Host", "a.test")]))
        assert (await read_response(reader)).status == 200
        kept = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)

        new = ca.issue("a.test", file_name="site", not_after=days(80))
        await wait_for(lambda: reloads() == 1, 5)
        # The open connection goes on, with the certificate it started with...
        writer.write(request_head("GET", "/echo", [("Host", "a.test")]))
        assert (await read_response(reader)).status == 200
        assert writer.get_extra_info("ssl_object").getpeercert(binary_form=True) == kept
        # ...while a new one gets the renewed certificate.
        _, cert = await https_get(proxy.port, "a.test", ca)
        assert _expiry(cert) > days(79)

        # A broken file is reported like a bad config edit; the renewed certificate stays.
        overwrite(new.cert_file, "not a certificate\n")
        await wait_for(lambda: (app.last_reload or {}).get("result") == "error", 5)
        assert app.last_reload is not None
        assert app.last_reload["trigger"] == "certificate file changed"
        assert "still serving the previous certificates" in app.last_reload["errors"][0]
        _, cert = await https_get(proxy.port, "a.test", ca)
        assert _expiry(cert) > days(79)
        writer.write(request_head("GET", "/echo", [("Host", "a.test")]))
        assert (await read_response(reader)).status == 200


def _expiry(peercert: dict[str, Any]) -> datetime.datetime:
    seconds = ssl.cert_time_to_seconds(peercert["notAfter"])
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


async def test_plain_http_is_redirected_to_https(
    ca: TestCA, make_origin: Any, make_proxy: MakeProxy
) -> None:
    from tests.conftest import free_port

    redirect = free_port()
    proxy = await https_proxy(
        make_origin, make_proxy, listen_tls(ca.issue("a.test")), redirect_http_port=redirect
    )
    https_port = proxy.app.settings.listen.port
    reader, writer = await asyncio.open_connection("127.0.0.1", redirect)
    try:
        writer.write(request_head("GET", "/a/b?c=1", [("Host", f"a.test:{redirect}")]))
        response = await read_response(reader)
    finally:
        writer.close()
    assert response.status == 308
    assert response.get("location") == f"https://a.test:{https_port}/a/b?c=1"


async def test_a_certificate_that_comes_within_14_days_while_in_use_raises_an_event(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    import time

    now = [time.time()]
    origin = await tls_origin([ca.issue("primary.test", not_after=days(20))])
    config = proxy_config(
        origin_config("primary", origin.url, 0, tls=tls_to(ca, "primary.test")), health=NO_CHECKS
    )
    proxy = await make_proxy(config, wall_clock=lambda: now[0])
    assert (await proxy.client.get("/x")).status_code == 200

    def expiring() -> list[Any]:
        return [e for e in proxy.app.events.newest_first(50) if e.kind == "certificate-expiring"]

    proxy.app._check_certificates()
    assert expiring() == []
    now[0] += 7 * 86400  # a week on, the same connection still open
    proxy.app._check_certificates()
    proxy.app._check_certificates()
    assert len(expiring()) == 1
    assert "expires in 13.0 days" in expiring()[0].reason


async def test_a_reload_that_changes_an_origins_tls_gives_it_a_new_pool(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    origin = await tls_origin([ca.issue("a.test"), ca.issue("b.test")])
    config = proxy_config(
        origin_config("primary", origin.url, 0, tls=tls_to(ca, "a.test")), health=NO_CHECKS
    )
    proxy = await make_proxy(config)
    assert (await proxy.client.get("/x")).json()["sni"] == "a.test"
    before = proxy.app.origins[0].pool

    proxy.app.apply(build_settings(config))  # unchanged: the pool and its connections stay
    assert proxy.app.origins[0].pool is before
    config["origins"][0]["tls"] = tls_to(ca, "b.test")
    proxy.app.apply(build_settings(config))
    assert proxy.app.origins[0].pool is not before
    assert (await proxy.client.get("/x")).json()["sni"] == "b.test"


def test_the_redirect_keeps_the_host_and_target_and_refuses_odd_hosts() -> None:
    from failover.tls import RedirectServer

    server = RedirectServer("0.0.0.0", 80, 443)
    assert server.location("www.example.com", "/a?b=1") == "https://www.example.com/a?b=1"
    assert server.location("www.example.com:80", "/") == "https://www.example.com/"
    assert server.location("[::1]:80", "/x") == "https://[::1]/x"
    # A Host that is not a host name falls back to the listen address, never into the URL.
    assert server.location("evil.test/@x", "/") == "https://0.0.0.0/"
    assert server.location("", "*") == "https://0.0.0.0/"
    assert RedirectServer("h", 80, 8443).location("a.test", "/") == "https://a.test:8443/"


async def test_each_worker_builds_its_own_certificates_from_the_settings(ca: TestCA) -> None:
    import pickle

    from failover.config import ListenTLSConfig
    from failover.listener import WorkerCertificates

    a = ca.issue("a.test")
    factory = WorkerCertificates(ListenTLSConfig.model_validate(listen_tls(a)))
    copy = pickle.loads(pickle.dumps(factory))  # what a worker process receives
    context = copy(None, lambda: ssl.create_default_context())
    try:
        assert copy.certs is not None and copy.certs.infos[0].names == ("a.test",)
        assert context.sni_callback is not None
        assert copy.task is not None and not copy.task.done()  # the worker watches the files
    finally:
        assert copy.certs is not None
        copy.certs.stop.set()
        assert copy.task is not None
        await asyncio.wait_for(copy.task, 5)


def test_certificate_info_refuses_any_garbage_with_a_value_error(ca: TestCA) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    der = ssl.PEM_cert_to_DER_cert(ca.issue("x.test").cert.cert_chain_pems[0].bytes().decode())

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64), st.integers(0, len(der)), st.binary(max_size=8))
    def check(noise: bytes, cut: int, patch: bytes) -> None:
        for data in (noise, der[:cut], der[:cut] + patch + der[cut + len(patch) :]):
            with contextlib.suppress(ValueError):
                certificate_info(data)

    check()


async def test_an_origin_named_by_host_is_asked_for_that_name_after_the_proxys_own_lookup(
    ca: TestCA, tls_origin: Any, make_proxy: MakeProxy
) -> None:
    """DNS and TLS together: `primary.test` is answered only by the loopback DNS server
    (dns.nameservers); with no server_name, the url's host is the SNI and certificate name."""
    from tests.dns_server import running_dns_server

    origin = await tls_origin([ca.issue("primary.test")])
    async with running_dns_server() as dns:
        dns.set("primary.test", a=["127.0.0.1"])
        url = f"https://primary.test:{origin.port}"
        config = proxy_config(
            origin_config("primary", url, 0, tls={"ca_file": ca.ca_file}),
            dns={"nameservers": [dns.nameserver], "timeout": 1.0},
        )
        proxy = await make_proxy(config)
        response = await proxy.client.get("/x")
        assert response.status_code == 200, response.text
        assert response.json()["sni"] == "primary.test"
        assert dns.count("primary.test") >= 1
        status = origin_in(await get_status(proxy), "primary")
        assert status is not None and status["tls"]["server_name"] == "primary.test"
