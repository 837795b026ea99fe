"""Route lookup benchmark: `Router.match` calls per second with 1 route, 1,000 and 10,000.

Usage, from the repository root with the project's virtualenv:

    python tests/bench/routes.py            # 7 interleaved rounds (~10 s)
    python tests/bench/routes.py --quick    # 3 rounds

The 1-route table is a catch-all `{pool: default}`. The 1,000-route table is like a proxy
fronting many sites: 450 exact hosts (400 with a route of their own; 150 with `/api/` and
`/video/` routes, 50 of which have only paths plus `/img/`), 248 `*.brandN.cdn.example.net`
wildcards, `*.example.com` and a catch-all. The 10,000-route table is the same mix ten times.
All are asked the same 8 requests in turn: exact hosts, exact hosts with a path (one
stripped), wildcard subdomains (with a port, two labels deep), an exact host whose paths do not
match (it falls back to `*.example.com`), and an unknown host (the catch-all). The tables are
measured in interleaved rounds, so that the drift of a shared machine spreads over all of
them; each figure is the best round (timeit's advice: the others measure the machine's noise),
and the ratio is to 1 route. Pure Python, no network; pytest does not collect it.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from failover.router import Route, Router

REQUESTS: list[tuple[str | None, str]] = [
    ("site117.example.com", "/index.html"),
    ("site42.example.com", "/api/v1/users/42?fields=name"),
    ("img.brand99.cdn.example.net", "/a/b/c.png"),
    ("SITE123.Example.com:8443", "/video/part/7.ts"),
    ("site410.example.com", "/static/app.js"),
    ("x.y.brand7.cdn.example.net:80", "/"),
    ("site3.example.com", "/elsewhere/page"),  # paths only, none matches: *.example.com
    ("unknown.example.org", "/robots.txt"),
]


def one_route() -> list[Route]:
    return [Route(pool="default")]


def many_routes(scale: int = 1) -> list[Route]:
    """1,000 routes times `scale`, in the mix the module's docstring describes."""
    routes: list[Route] = []
    for index in range(450 * scale):
        host = f"site{index}.example.com"
        if index >= 50 * scale:
            routes.append(Route(host=host, pool=f"pool{index % 20}"))
        if index < 150 * scale:
            routes.append(Route(host=host, path="/api/", pool="api"))
            routes.append(Route(host=host, path="/video/", pool="video", strip_prefix=True))
        if index < 50 * scale:
            routes.append(Route(host=host, path="/img/", pool="img"))
    for index in range(250 * scale - 2):
        routes.append(Route(host=f"*.brand{index}.cdn.example.net", pool=f"cdn{index % 10}"))
    routes.append(Route(host="*.example.com", pool="sites"))
    routes.append(Route(pool="default"))
    assert len(routes) == 1000 * scale, len(routes)
    return routes


def timer(router: Router) -> timeit.Timer:
    match = router.match
    requests = REQUESTS

    def run() -> None:
        for host, path in requests:
            match(host, path)

    return timeit.Timer(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    tables = {1: one_route(), 1000: many_routes(), 10000: many_routes(10)}
    routers = {count: Router(routes) for count, routes in tables.items()}
    expected = ["pool17", "api", "cdn9", "video", "pool10", "cdn7", "sites", "default"]
    found = [routers[1000].match(host, path) for host, path in REQUESTS]
    assert [match.pool if match else None for match in found] == expected, found
    timers = {count: timer(router) for count, router in routers.items()}
    number = max(timers[1].autorange()[0], 1) * 2  # about 0.4 s per measurement
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(rounds):  # interleaved, so that the machine's drift spreads over all tables
        for count, measure in timers.items():
            best[count] = min(best[count], measure.timeit(number))
    rate = {count: number * len(REQUESTS) / seconds for count, seconds in best.items()}
    print(
        f"Router.match, {len(REQUESTS)} requests in turn, best of {rounds} interleaved rounds",
        end="",
    )
    print(f" (Python {sys.version.split()[0]})")
    print(f"{'routes':>8}  {'calls/s':>12}  {'ns/call':>8}  {'ratio to 1 route':>16}")
    for count, calls in rate.items():
        print(f"{count:>8,}  {calls:>12,.0f}  {1e9 / calls:>8.0f}  {calls / rate[1]:>16.2f}")
    print(f"ratio 1,000 routes / 1 route: {rate[1000] / rate[1]:.2f}")


if __name__ == "__main__":
    main()
