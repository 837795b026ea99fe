"""Which pool serves a request: Host and path -> route. Pure: no I/O, no clock, no network.

A `Route` names a pool and says which requests go there: a `host` (exact, or a `*.suffix`
wildcard; None matches any host) and a `path` prefix (None matches any path). `Router` checks a
list of routes once and then answers `match(host_header, path)` for each request.

Matching, in plain words:

- The host is compared case-insensitively with the port left out (`Example.COM:8080` is
  `example.com`; `[::1]:8080` is `[::1]`); a trailing dot is ignored. `*.example.com` matches
  `a.example.com` and `a.b.example.com`, but not `example.com` itself (as in nginx).
- A path prefix is segment-aware: `/api/` and `/api` both match `/api`, `/api/`, `/api/x` and
  `/api?q=1`, never `/apix`. `/` is the same as no path. The comparison is on the path as the
  client sent it (case-sensitive, no percent-decoding), which is the path the origin receives.
- Of all the routes that match, the most specific wins, never the file order. The host decides
  first: an exact host beats a wildcard, a longer wildcard suffix beats a shorter one, and any
  wildcard beats a route without a host. Among the routes of that host, the longest path
  prefix wins. If none of the routes of the most specific host matches the path, the next less
  specific host is tried (exact, then the wildcards from longest suffix to shortest, then the
  routes without a host), so a catch-all `{pool: x}` still answers what `{host: h, path:
  /api/}` leaves. Nothing matches: `match` returns None (the proxy answers 404).

Cost of a match, whatever the number of routes: the hosts a Host value may match (its exact
group, then one dict lookup per dot-suffix for the wildcards, then the catch-all) are worked
out once per distinct Host value and remembered (a bounded cache: a flood of made-up Host
values costs the same as no cache); then, per host tried, up to four path prefixes are compared
in turn, more are looked up by dict, one lookup per path segment. `tests/bench/routes.py`
measures it with 1, 1,000 and 10,000 routes.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "Match",
    "Route",
    "RouteError",
    "Router",
    "check_routes",
    "normalise_host",
    "routes_from",
]


class RouteError(Exception):
    """The routes are invalid; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """One route: requests for `host` (and, if given, under `path`) go to `pool`.

    `host`: an exact host name (`static.example.com`), a wildcard (`*.example.com`), or None
    for any host. `path`: a path prefix (`/api/`), or None for any path. `strip_prefix`: send
    the path without the prefix (`/api/x` -> `/x`). `host_header`: the Host to send upstream
    for this route instead of the origin's own (None: the origin's).
    """

    pool: str
    host: str | None = None
    path: str | None = None
    strip_prefix: bool = False
    host_header: str | None = None


class Match(NamedTuple):
    """The route chosen for a request and the request target to send upstream.

    `path`: the target as given to `match`, without the route's prefix if it strips it (the
    query kept, always starting with '/'). `stripped`: the prefix that was removed, without a
    trailing slash ('' if none), e.g. for `LocationRewriter.rewrite(..., mount=stripped)`.
    """

    route: Route
    path: str
    stripped: str = ""

    @property
    def pool(self) -> str:
        return self.route.pool


_CHAINS_KEPT = 4096
_FEW_PREFIXES = 4
_LABELS = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\Z")
_HOST_HEADER = re.compile(r"[^\s\x00-\x1f\x7f]+\Z")


def normalise_host(value: str | None) -> str | None:
    """The Host header as routes compare it: lower case, no port, no trailing dot.

    An IPv6 literal keeps its brackets, in its short form (`[0:0::1]:80` -> `[::1]`). An empty
    or missing Host gives None."""
    if not value:
        return None
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host
        try:
            return f"[{ipaddress.IPv6Address(host[1:end]).compressed}]"
        except ValueError:
            return host[: end + 1]
    host = host.partition(":")[0]
    if host.endswith("."):
        host = host.rstrip(".")
    return host or None


def _route_host(value: str) -> tuple[str | None, str | None]:
    """A route's host, normalised: (host or '*.suffix', None) or (None, what is wrong)."""
    text = value.strip().lower().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            return f"[{ipaddress.IPv6Address(text).compressed}]", None
        except ValueError:
            return None, f"{value!r} has a port; leave it out (the port in Host is ignored)"
    if not text:
        return None, f"{value!r} is not a host name (leave host out to match any host)"
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            return None, f"{value!r} is not a host name (letters, digits, '-' and '.')"
    if "*" in text:
        if text.startswith("*.") and _LABELS.match(text[2:]):
            return text, None
        return None, f"{value!r} is not a wildcard of the form '*.suffix'"
    if not _LABELS.match(text):
        return None, f"{value!r} is not a host name (letters, digits, '-' and '.')"
    return text, None


def _route_path(value: str) -> tuple[str | None, str | None]:
    """A route's path prefix, normalised without a trailing slash ('' for '/')."""
    if not value.startswith("/"):
        return None, f"{value!r} is not a path prefix such as '/api/'"
    if "?" in value or "#" in value:
        return None, f"{value!r} may not have a query or fragment"
    return value.rstrip("/"), None


def _show(value: str | None, none: str) -> str:
    return none if value is None else repr(value)


def routes_from(configs: Iterable[Any]) -> list[Route]:
    """Routes from config entries (anything with pool, host, path, strip_prefix and
    host_header attributes, such as `config.RouteConfig`)."""
    return [
        Route(
            pool=c.pool,
            host=c.host,
            path=c.path,
            strip_prefix=c.strip_prefix,
            host_header=c.host_header,
        )
        for c in configs
    ]


def check_routes(routes: Sequence[Route], pools: Collection[str] | None = None) -> list[str]:
    """Every problem with `routes`, one line each (empty if they are fine).

    With `pools`, a route to a pool not in it is a problem too."""
    problems: list[str] = []
    seen: dict[tuple[str | None, str], int] = {}
    for index, route in enumerate(routes):
        where = f"routes[{index}]"
        key_ok = True
        host: str | None = None
        if route.host is not None:
            host, problem = _route_host(route.host)
            if problem:
                problems.append(f"{where}.host: {problem}")
                key_ok = False
        path = ""
        if route.path is not None:
            normal, problem = _route_path(route.path)
            if problem or normal is None:
                problems.append(f"{where}.path: {problem}")
                key_ok = False
            else:
                path = normal
        if not route.pool:
            problems.append(f"{where}.pool: {route.pool!r} is not a pool name")
        elif pools is not None and route.pool not in pools:
            known = ", ".join(repr(name) for name in sorted(pools)) or "none defined"
            problems.append(f"{where}.pool: {route.pool!r} is not a pool (expected one of {known})")
        if route.strip_prefix and key_ok and not path:
            problems.append(f"{where}.strip_prefix: true needs a path prefix to strip")
        if route.host_header is not None and not _HOST_HEADER.match(route.host_header):
            problems.append(
                f"{where}.host_header: {route.host_header!r} is not a Host header value "
                "(a host name, optionally with ':port')"
            )
        if key_ok:
            first = seen.setdefault((host, path), index)
            if first != index:
                shown = f"{_show(route.host, 'any host')}, {_show(route.path, 'any path')}"
                problems.append(f"{where}: same host and path as routes[{first}] ({shown})")
    return problems


class _Group:
    """The routes of one host: its path prefixes, and its route without a path."""

    __slots__ = ("default", "longest", "ordered", "prefixes")

    def __init__(self) -> None:
        self.prefixes: dict[str, Route] = {}  # '/api' (no trailing slash) -> route
        self.ordered: tuple[tuple[str, Route], ...] = ()  # the same, longest first, if few
        self.longest = 0
        self.default: Route | None = None  # no path, or '/'

    def add(self, prefix: str, route: Route) -> None:
        if not prefix:
            self.default = route
            return
        self.prefixes[prefix] = route
        self.longest = max(self.longest, len(prefix))
        if len(self.prefixes) <= _FEW_PREFIXES:
            self.ordered = tuple(sorted(self.prefixes.items(), key=lambda item: -len(item[0])))
        else:
            self.ordered = ()

    def find(self, path: str) -> tuple[Route, str] | None:
        """The route with the longest prefix of `path` (query excluded), and that prefix.

        A few prefixes are compared in turn; more are looked up by dict, one lookup per
        segment of the path (at most as long as the longest prefix)."""
        if self.ordered:
            for prefix, route in self.ordered:
                if path.startswith(prefix):
                    end = len(prefix)
                    if len(path) == end or path[end] == "/":
                        return route, prefix
        elif self.prefixes:
            prefixes = self.prefixes
            if len(path) > self.longest:
                cut = path.rfind("/", 0, self.longest + 1)
                candidate = path[:cut] if cut > 0 else ""
            else:
                candidate = path
            candidate = candidate.rstrip("/")
            while candidate:
                hit = prefixes.get(candidate)
                if hit is not None:
                    return hit, candidate
                candidate = candidate[: candidate.rfind("/")].rstrip("/")
        if self.default is not None:
            return self.default, ""
        return None


class Router:
    """Routes checked once, then matched per request. Its answers never change after
    construction (a reload builds a new Router); it keeps only a bounded cache of Host values.

    `pools`: if given, the pool names that exist (a route to another is a problem). Raises
    `RouteError` naming every problem (see `check_routes`)."""

    __slots__ = ("_any", "_chains", "_exact", "_wildcards", "routes")

    def __init__(self, routes: Sequence[Route], pools: Collection[str] | None = None) -> None:
        problems = check_routes(routes, pools)
        if problems:
            raise RouteError(problems)
        self.routes: tuple[Route, ...] = tuple(routes)
        self._exact: dict[str, _Group] = {}
        self._wildcards: dict[str, _Group] = {}  # keyed by the suffix: '*.a.com' -> 'a.com'
        self._any: _Group | None = None
        # Host header as sent -> the groups it may match. A cache: bounded, never wrong.
        self._chains: dict[str | None, tuple[_Group, ...]] = {}
        for route in self.routes:
            prefix = "" if route.path is None else route.path.rstrip("/")
            if route.host is None:
                if self._any is None:
                    self._any = _Group()
                self._any.add(prefix, route)
                continue
            host, _ = _route_host(route.host)
            assert host is not None  # checked above
            if host.startswith("*."):
                self._wildcards.setdefault(host[2:], _Group()).add(prefix, route)
            else:
                self._exact.setdefault(host, _Group()).add(prefix, route)

    def match(self, host_header: str | None, path: str) -> Match | None:
        """The most specific route for a request, or None if no route matches.

        `host_header`: the Host the client sent, as is (None if it sent none: only routes
        without a host can match). `path`: the request target as it will be sent upstream, the
        raw path optionally followed by `?query`."""
        groups = self._chains.get(host_header)
        if groups is None:
            groups = self._chain(host_header)
        query_at = path.find("?")
        bare = path if query_at < 0 else path[:query_at]
        for group in groups:
            found = group.find(bare)
            if found is not None:
                route, prefix = found
                if not route.strip_prefix or not prefix:
                    return Match(route, path)
                rest = path[len(prefix) :]
                if not rest.startswith("/"):
                    rest = "/" + rest
                return Match(route, rest, prefix)
        return None

    def _chain(self, host_header: str | None) -> tuple[_Group, ...]:
        """The groups a Host may match, most specific first; remembered per Host value."""
        groups: list[_Group] = []
        host = normalise_host(host_header)
        if host is not None:
            group = self._exact.get(host)
            if group is not None:
                groups.append(group)
            if self._wildcards:
                dot = host.find(".")
                while dot >= 0:
                    group = self._wildcards.get(host[dot + 1 :])
                    if group is not None:
                        groups.append(group)
                    dot = host.find(".", dot + 1)
        if self._any is not None:
            groups.append(self._any)
        chain = tuple(groups)
        if len(self._chains) >= _CHAINS_KEPT:
            self._chains.clear()  # many different Host values: start afresh, stay bounded
        self._chains[host_header] = chain
        return chain
