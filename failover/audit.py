"""`failover audit`: the config checked against the world.

Findings, each with a kind, a pool, the origins concerned, a one-line detail and a severity:

    dns-overlap       origins of one pool resolve to a common address
    dns-cname         origins of one pool share a CNAME target
    dns-nameservers   origins of one pool share authoritative name servers
    dns-failed        an origin's host name did not resolve
    cert-expiry       a certificate (the listener's, a client certificate, or the one an
                      origin presents) expires within 14 days, or has expired
    single-tier       every origin of a pool has the same priority (no fallback tier)
    no-stale          `all_down: 503` without stale copies: clients get errors when all fail
    unreachable       an origin did not answer a request of the audit
    parity            a canary path answers differently on an origin than on the pool's first
    health-blind      the health path answers the same status on every origin while a canary
                      differs: health checks cannot tell the broken origin from a working one

Origins are asked the way health probes ask them: through the proxy's own connection pools
(failover.upstream), with each origin's TLS identity (server name, CA, client certificate)
and the proxy's own DNS resolver (the `dns:` settings).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import json
import sys
import time
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from . import h1
from .canary import CanaryAnswer, difference
from .config import (
    ConfigError,
    DnsConfig,
    PoolConfig,
    Settings,
    default_config_path,
    load_config,
    parse_nameserver,
)
from .origins import Origin, build_origins
from .resolver import Resolver
from .tls import EXPIRY_WARNING, TLSFileError, certificate_file_info
from .upstream import Upstream, map_error

__all__ = ["Finding", "add_command", "audit", "main"]

MAX_BODY = 64 * 1024 * 1024  # bodies past this are compared by length and strong ETag only


@dataclass(frozen=True)
class Finding:
    kind: str
    pool: str | None
    origins: tuple[str, ...]
    detail: str
    severity: str  # "critical" or "warning"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["origins"] = list(self.origins)
        return data


@dataclass
class _Seen:
    """What the audit learnt of one origin."""

    addresses: set[str] = field(default_factory=set)
    cnames: set[str] = field(default_factory=set)
    nameservers: set[str] = field(default_factory=set)
    zone: str = ""
    health: int | None = None
    canaries: dict[str, CanaryAnswer] = field(default_factory=dict)


# -- the command ------------------------------------------------------------------------------


def add_command(commands: Any) -> None:
    """Register `failover audit` with the CLI's subcommands."""
    parser = commands.add_parser(
        "audit", help="check the config against the world (DNS, certificates, parity)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="config file (default: $FAILOVER_CONFIG, ./failover.yaml, config/failover.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="findings as JSON")


def main(args: argparse.Namespace) -> int:
    """Exit status 0: no finding; 1: findings; 2: the audit could not run."""
    path: Path = args.config or default_config_path()
    try:
        settings = load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        findings = asyncio.run(audit(settings))
    except Exception as exc:  # the audit itself broke: one line, never a traceback
        text = " ".join(str(exc).split())[:200]
        print(f"failover audit: cannot run: {type(exc).__name__}: {text}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"findings": [f.to_json() for f in findings]}, indent=2))
    else:
        print(table(findings))
    return 1 if findings else 0


def table(findings: list[Finding]) -> str:
    if not findings:
        return "no findings"
    rows = [("SEVERITY", "KIND", "POOL", "ORIGINS", "DETAIL")]
    rows += [
        (f.severity, f.kind, f.pool or "-", ",".join(f.origins) or "-", f.detail) for f in findings
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


# -- the audit --------------------------------------------------------------------------------


async def audit(settings: Settings, now: float | None = None) -> list[Finding]:
    """Every finding for `settings`, pool by pool."""
    now = time.time() if now is None else now
    findings: list[Finding] = _certificate_files(settings, now)
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    resolver = Resolver(settings.dns, time.monotonic, spawn)
    upstream = Upstream(max_connections=4)
    upstream.resolver = resolver
    lookup = _Lookup(settings.dns)
    try:
        for name, pool in settings.pools.items():
            findings += _pool_config(name, pool)
            findings += await _pool_world(name, pool, upstream, lookup, now)
    finally:
        resolver.stop()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream.close()
    return findings


def _certificate_files(settings: Settings, now: float) -> list[Finding]:
    files: list[tuple[str | None, tuple[str, ...], str, str]] = []
    if settings.listen.tls is not None:
        for i, cert in enumerate(settings.listen.tls.certificates):
            files.append((None, (), f"listen.tls.certificates[{i}]", cert.cert_file))
    for pool_name, pool in settings.pools.items():
        for origin in pool.origins:
            tls = pool.tls_for(origin)
            if tls is not None and tls.client_cert_file is not None:
                files.append(
                    (pool_name, (origin.name,), "client certificate", tls.client_cert_file)
                )
    findings = []
    for owner, origins, what, path in dict.fromkeys(files):
        try:
            info = certificate_file_info(path)
        except (OSError, TLSFileError) as exc:
            findings.append(
                Finding("cert-expiry", owner, origins, f"{what} {path!r}: {exc}", "critical")
            )
            continue
        finding = _expiry(owner, origins, f"{what} {path!r}", info.not_after, now)
        if finding is not None:
            findings.append(finding)
    return findings


def _expiry(
    pool: str | None, origins: tuple[str, ...], what: str, not_after: float, now: float
) -> Finding | None:
    left = not_after - now
    if left >= EXPIRY_WARNING:
        return None
    if left <= 0:
        return Finding(
            "cert-expiry", pool, origins, f"{what} expired {_days(-left)} ago", "critical"
        )
    return Finding("cert-expiry", pool, origins, f"{what} expires in {_days(left)}", "warning")


def _days(seconds: float) -> str:
    return f"{seconds / 86400:.1f} days"


def _pool_config(name: str, pool: PoolConfig) -> list[Finding]:
    findings = []
    names = tuple(o.name for o in pool.origins)
    if len({o.priority for o in pool.origins}) == 1:
        detail = (
            f"every origin has priority {pool.origins[0].priority}: no fallback tier"
            if len(names) > 1
            else "a single origin: nothing to fail over to"
        )
        findings.append(Finding("single-tier", name, names, detail, "warning"))
    if pool.all_down == "503" and not pool.stale.enabled:
        findings.append(
            Finding(
                "no-stale",
                name,
                names,
                "all_down: 503 without stale.enabled: clients get 503 when every origin fails",
                "warning",
            )
        )
    return findings


async def _pool_world(
    name: str, pool: PoolConfig, upstream: Upstream, lookup: _Lookup, now: float
) -> list[Finding]:
    findings: list[Finding] = []
    origins = build_origins(pool, name)
    seen: dict[str, _Seen] = {o.name: _Seen() for o in origins}
    for origin in origins:
        findings += await lookup.origin(name, origin, seen[origin.name])
    findings += _shared(name, origins, seen)
    for origin in origins:
        upstream.add(origin)
        findings += await _fetch_all(name, pool, origin, seen[origin.name], now)
    findings += _parity(name, pool, origins, seen)
    return findings


def _shared(name: str, origins: list[Origin], seen: dict[str, _Seen]) -> list[Finding]:
    findings = []
    for i, one in enumerate(origins):
        for two in origins[i + 1 :]:
            a, b = seen[one.name], seen[two.name]
            pair = (one.name, two.name)
            common = sorted(a.addresses & b.addresses)
            if common:
                detail = f"both resolve to {', '.join(common)}"
                findings.append(Finding("dns-overlap", name, pair, detail, "critical"))
            common = sorted(a.cnames & b.cnames)
            if common:
                detail = f"both are CNAMEs of {', '.join(common)}"
                findings.append(Finding("dns-cname", name, pair, detail, "warning"))
            common = sorted(a.nameservers & b.nameservers)
            if common:
                detail = f"both are served by the name servers {', '.join(common)}"
                findings.append(Finding("dns-nameservers", name, pair, detail, "warning"))
    return findings


# -- DNS --------------------------------------------------------------------------------------


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class _Lookup:
    """The audit's own queries (A, AAAA, NS) through the `dns:` settings' name servers."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _make(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self.config.nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                servers: list[str | dns.nameserver.Nameserver] = []
                for item in self.config.nameservers:
                    address, port = parse_nameserver(item)
                    servers.append(dns.nameserver.Do53Nameserver(address, port))
                resolver.nameservers = servers
            else:
                resolver = dns.asyncresolver.Resolver()
            resolver.lifetime = self.config.timeout
            resolver.timeout = self.config.timeout / 2
            self._resolver = resolver
        return self._resolver

    async def origin(self, pool: str, origin: Origin, seen: _Seen) -> list[Finding]:
        host = urlsplit(origin.url).hostname or ""
        address = _literal(host)
        if address is not None:
            seen.addresses.add(address)
            return []
        if host == "localhost":
            return []
        try:
            resolver = self._make()
            for kind in ("A", "AAAA"):
                answer = await resolver.resolve(host, kind, raise_on_no_answer=False)
                if answer.rrset is not None:
                    seen.addresses.update(r.to_text() for r in answer.rrset)
                for rrset in answer.chaining_result.cnames:
                    seen.cnames.update(r.to_text().rstrip(".").lower() for r in rrset)
            seen.zone, seen.nameservers = await self._nameservers(resolver, host)
        except (dns.exception.DNSException, OSError) as exc:
            detail = f"{host}: {_dns_reason(exc)}"
            return [Finding("dns-failed", pool, (origin.name,), detail, "critical")]
        if not seen.addresses:
            detail = f"{host} has no A or AAAA record"
            return [Finding("dns-failed", pool, (origin.name,), detail, "critical")]
        return []

    async def _nameservers(
        self, resolver: dns.asyncresolver.Resolver, host: str
    ) -> tuple[str, set[str]]:
        """The zone that `host` lies in and its NS names (the nearest name upwards with NS)."""
        name = dns.name.from_text(host)
        while len(name.labels) > 2:  # a top-level domain's servers are everyone's
            try:
                answer = await resolver.resolve(name, "NS", raise_on_no_answer=False)
            except dns.resolver.NXDOMAIN:
                answer = None
            rrset = answer.rrset if answer is not None else None
            if rrset is not None and rrset.rdtype == dns.rdatatype.NS:
                names = {r.to_text().rstrip(".").lower() for r in rrset}
                return name.to_text().rstrip("."), names
            name = name.parent()
        return "", set()


def _dns_reason(exc: BaseException) -> str:
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "the name does not exist (NXDOMAIN)"
    if isinstance(exc, dns.exception.Timeout):
        return "no answer from the name servers (timeout)"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "the name servers failed (SERVFAIL or refused)"
    return " ".join(str(exc).split()) or type(exc).__name__


# -- fetching ---------------------------------------------------------------------------------


async def _fetch_all(
    pool_name: str, pool: PoolConfig, origin: Origin, seen: _Seen, now: float
) -> list[Finding]:
    """The health path and every canary from `origin`; the certificate it presents."""
    findings: list[Finding] = []
    health = origin.health
    headers = {"Host": origin.host_header, "User-Agent": "failover-audit", **health.headers}
    timeout = pool.audit.timeout
    try:
        answer = await _fetch(origin, health.method, health.path, headers, timeout)
        seen.health = answer.status
        for path in pool.audit.canaries:
            canary_headers = {"Host": origin.host_header, "User-Agent": "failover-audit"}
            seen.canaries[path] = await _fetch(origin, "GET", path, canary_headers, timeout)
    except _Unreachable as exc:
        findings.append(Finding("unreachable", pool_name, (origin.name,), str(exc), "critical"))
    tls = origin.pool.tls
    if tls is not None and tls.certificate is not None:
        what = f"certificate of {tls.server_name}"
        finding = _expiry(pool_name, (origin.name,), what, tls.certificate.not_after, now)
        if finding is not None:
            findings.append(finding)
    return findings


class _Unreachable(Exception):
    pass


async def _fetch(
    origin: Origin, method: str, path: str, headers: dict[str, str], limit: float
) -> CanaryAnswer:
    pool: h1.Pool = origin.pool
    try:
        async with asyncio.timeout(limit):
            response = await pool.request(method, pool.prefix + path, headers.items())
            try:
                fields = {
                    name.decode("latin-1").lower(): value.decode("latin-1")
                    for name, value in response.raw_headers
                }
                digest = hashlib.sha256()
                length = 0
                while chunk := await response.content.readany():
                    length += len(chunk)
                    if length > MAX_BODY:
                        break
                    digest.update(chunk)
            except BaseException:
                response.close()
                raise
            if length > MAX_BODY:
                response.close()
                declared = fields.get("content-length", "")
                size, sha = (int(declared) if declared.isdigit() else -1), ""
            else:
                response.release()
                size, sha = length, digest.hexdigest()
            return CanaryAnswer(
                response.status, fields.get("content-type", ""), size, sha, fields.get("etag")
            )
    except TimeoutError:
        raise _Unreachable(f"{method} {path}: no complete answer within {limit:g} s") from None
    except (OSError, h1.PoolFull) as exc:
        raise _Unreachable(f"{method} {path}: {map_error(exc, limit).detail}") from None


# -- parity -----------------------------------------------------------------------------------


def _parity(
    name: str, pool: PoolConfig, origins: list[Origin], seen: dict[str, _Seen]
) -> list[Finding]:
    findings: list[Finding] = []
    answered = [o for o in origins if len(seen[o.name].canaries) == len(pool.audit.canaries)]
    if len(answered) < 2 or not pool.audit.canaries:
        return findings
    reference, others = answered[0], answered[1:]
    differing: set[str] = set()
    for path in pool.audit.canaries:
        for origin in others:
            mine, theirs = seen[origin.name].canaries[path], seen[reference.name].canaries[path]
            detail = difference(path, mine, theirs)
            if detail is not None:
                differing.add(origin.name)
                pair = (origin.name, reference.name)
                findings.append(Finding("parity", name, pair, detail, "critical"))
    statuses = {seen[o.name].health for o in answered}
    if differing and len(statuses) == 1:
        health = origins[0].health
        detail = (
            f"{health.method} {health.path} answers {statuses.pop()} on every origin while "
            f"canaries differ on {', '.join(sorted(differing))}"
        )
        findings.append(
            Finding("health-blind", name, tuple(o.name for o in answered), detail, "warning")
        )
    return findings
