"""Unit tests of failover/router.py: which route (and pool) a Host and path reach."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from failover.router import Match, Route, RouteError, Router, check_routes, normalise_host

EXAMPLE = [
    Route(host="static.example.com", pool="static"),
    Route(host="*.example.com", path="/api/", pool="api"),
    Route(pool="default"),
]


def pool_of(router: Router, host: str | None, path: str = "/") -> str | None:
    found = router.match(host, path)
    return None if found is None else found.pool


def problems_of(*routes: Route, pools: list[str] | None = None) -> list[str]:
    with pytest.raises(RouteError) as caught:
        Router(routes, pools)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# -- the issue's example ---------------------------------------------------------------------------


def test_issue_example() -> None:
    router = Router(EXAMPLE)
    assert pool_of(router, "static.example.com", "/logo.png") == "static"
    assert pool_of(router, "static.example.com", "/api/x") == "static"  # the exact host decides
    assert pool_of(router, "www.example.com", "/api/users") == "api"
    assert pool_of(router, "www.example.com", "/index.html") == "default"
    assert pool_of(router, "other.org", "/api/users") == "default"


# -- host precedence -------------------------------------------------------------------------------


def test_exact_host_beats_wildcard_and_catch_all_whatever_the_order() -> None:
    routes = [
        Route(pool="any"),
        Route(host="*.example.com", pool="wild"),
        Route(host="www.example.com", pool="exact"),
    ]
    for ordered in (routes, routes[::-1]):
        router = Router(ordered)
        assert pool_of(router, "www.example.com") == "exact"
        assert pool_of(router, "img.example.com") == "wild"
        assert pool_of(router, "example.org") == "any"


def test_exact_host_beats_a_wildcard_with_a_longer_path() -> None:
    router = Router(
        [
            Route(host="*.example.com", path="/a/b/c", pool="wild"),
            Route(host="w.example.com", pool="exact"),
        ]
    )
    assert pool_of(router, "w.example.com", "/a/b/c/d") == "exact"


def test_longest_wildcard_suffix_wins() -> None:
    router = Router(
        [
            Route(host="*.com", pool="com"),
            Route(host="*.example.com", pool="example"),
            Route(host="*.eu.example.com", pool="eu"),
        ]
    )
    assert pool_of(router, "a.b.eu.example.com") == "eu"
    assert pool_of(router, "x.eu.example.com") == "eu"
    assert pool_of(router, "eu.example.com") == "example"
    assert pool_of(router, "www.example.com") == "example"
    assert pool_of(router, "example.com") == "com"
    assert pool_of(router, "shop.com") == "com"


def test_wildcard_does_not_match_its_bare_suffix() -> None:
    router = Router([Route(host="*.example.com", pool="wild")])
    assert pool_of(router, "example.com") is None
    assert pool_of(router, "notexample.com") is None
    assert pool_of(router, "a.example.com") == "wild"
    assert pool_of(router, "a.b.example.com") == "wild"


def test_wildcard_beats_a_catch_all_with_a_longer_path() -> None:
    router = Router(
        [Route(path="/a/b/c", pool="any"), Route(host="*.example.com", path="/a", pool="wild")]
    )
    assert pool_of(router, "w.example.com", "/a/b/c") == "wild"


# -- fallback to a less specific host --------------------------------------------------------------


def test_exact_host_without_matching_path_falls_back_to_wildcard_then_catch_all() -> None:
    router = Router(
        [
            Route(host="www.example.com", path="/api/", pool="exact-api"),
            Route(host="*.example.com", path="/video/", pool="wild-video"),
            Route(pool="any"),
        ]
    )
    assert pool_of(router, "www.example.com", "/api/x") == "exact-api"
    assert pool_of(router, "www.example.com", "/video/1") == "wild-video"
    assert pool_of(router, "www.example.com", "/other") == "any"


def test_longer_wildcard_without_matching_path_falls_back_to_shorter_wildcard() -> None:
    router = Router(
        [
            Route(host="*.eu.example.com", path="/api", pool="eu-api"),
            Route(host="*.example.com", pool="example"),
        ]
    )
    assert pool_of(router, "x.eu.example.com", "/api/1") == "eu-api"
    assert pool_of(router, "x.eu.example.com", "/index.html") == "example"


def test_no_fallback_left_means_no_match() -> None:
    router = Router([Route(host="www.example.com", path="/api/", pool="api")])
    assert router.match("www.example.com", "/other") is None
    assert router.match("api.example.com", "/api/x") is None


# -- paths -----------------------------------------------------------------------------------------


def test_longest_path_prefix_wins_whatever_the_order() -> None:
    routes = [
        Route(host="h", pool="root"),
        Route(host="h", path="/a", pool="a"),
        Route(host="h", path="/a/b/", pool="ab"),
        Route(host="h", path="/a/b/c", pool="abc"),
    ]
    for ordered in (routes, routes[::-1]):
        router = Router(ordered)
        assert pool_of(router, "h", "/a/b/c/d") == "abc"
        assert pool_of(router, "h", "/a/b/cd") == "ab"
        assert pool_of(router, "h", "/a/b") == "ab"
        assert pool_of(router, "h", "/a/x") == "a"
        assert pool_of(router, "h", "/b") == "root"


# Beyond a few prefixes per host the router looks them up by dict: the same answers either way.
PADDING = [Route(host="h", path=f"/pad{index}", pool="pad") for index in range(8)]


@pytest.mark.parametrize("padding", [[], PADDING], ids=["few", "many"])
def test_longest_path_prefix_wins_with_few_or_many_prefixes(padding: list[Route]) -> None:
    router = Router(
        [
            *padding,
            Route(host="h", path="/a", pool="a"),
            Route(host="h", path="/a/b/", pool="ab"),
            Route(host="h", path="/a//c", pool="a//c"),
        ]
    )
    assert pool_of(router, "h", "/a/b/c/d/e/f/g/h/i/j?k=/l") == "ab"
    assert pool_of(router, "h", "/a/b") == "ab"
    assert pool_of(router, "h", "/a/b/") == "ab"
    assert pool_of(router, "h", "/a/bb/cc/dd") == "a"
    assert pool_of(router, "h", "/a//c/x") == "a//c"
    assert pool_of(router, "h", "/a//d") == "a"
    assert pool_of(router, "h", "/abcdefghijkl/m") is None
    assert pool_of(router, "h", "/") is None
    assert pool_of(router, "h", "*") is None
    assert pool_of(router, "h", "") is None


@pytest.mark.parametrize("padding", [[], PADDING], ids=["few", "many"])
@pytest.mark.parametrize("prefix", ["/api", "/api/"])
def test_path_prefix_is_segment_aware(prefix: str, padding: list[Route]) -> None:
    router = Router(
        [*(replace(route, host=None) for route in padding), Route(path=prefix, pool="api")]
    )
    for path in ("/api", "/api/", "/api/x", "/api/x/y", "/api?q=1", "/api/?q=1", "/api//x"):
        assert pool_of(router, "h", path) == "api", path
    for path in ("/apix", "/ap", "/", "/x/api", "/API", "/apix?q=/api/"):
        assert pool_of(router, "h", path) is None, path


def test_query_is_not_part_of_the_path() -> None:
    router = Router([Route(path="/a", pool="a"), Route(pool="root")])
    assert pool_of(router, "h", "/b?next=/a/x") == "root"
    assert pool_of(router, "h", "/a?next=/b") == "a"


def test_slash_path_is_the_same_as_no_path() -> None:
    router = Router([Route(host="h", path="/", pool="slash"), Route(pool="any")])
    assert pool_of(router, "h", "/anything") == "slash"
    assert check_routes([Route(host="h", pool="a"), Route(host="h", path="/", pool="b")]) == [
        "routes[1]: same host and path as routes[0] ('h', '/')"
    ]


def test_path_is_compared_as_sent() -> None:
    router = Router([Route(path="/Api", pool="api")])
    assert pool_of(router, "h", "/Api/x") == "api"
    assert pool_of(router, "h", "/api/x") is None
    assert pool_of(router, "h", "/%41pi/x") is None


# -- Host header handling --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "www.example.com",
        "WWW.Example.COM",
        "www.example.com:8080",
        "www.example.com:443",
        "www.example.com.",
        "Www.Example.Com.:80",
        " www.example.com ",
    ],
)
def test_host_is_case_insensitive_and_its_port_ignored(host: str) -> None:
    router = Router([Route(host="www.example.com", pool="www")])
    assert pool_of(router, host) == "www"


def test_route_host_is_case_insensitive_too() -> None:
    router = Router(
        [Route(host="WWW.Example.Com", pool="www"), Route(host="*.EXAMPLE.com", pool="w")]
    )
    assert pool_of(router, "www.example.com") == "www"
    assert pool_of(router, "img.example.com:81") == "w"


@pytest.mark.parametrize("host", ["[::1]", "[::1]:8080", "[0:0::1]:80", "[0000::0001]"])
def test_ipv6_literal_hosts(host: str) -> None:
    router = Router([Route(host="[::1]", pool="loopback6"), Route(host="::2", pool="two")])
    assert pool_of(router, host) == "loopback6"
    assert pool_of(router, "[::2]:1") == "two"


def test_ipv4_host_with_port() -> None:
    router = Router([Route(host="127.0.0.1", pool="v4")])
    assert pool_of(router, "127.0.0.1:8080") == "v4"
    assert pool_of(router, "127.0.0.2") is None


def test_missing_host_only_reaches_routes_without_host() -> None:
    router = Router([Route(host="www.example.com", pool="www"), Route(pool="any")])
    assert pool_of(router, None) == "any"
    assert pool_of(router, "") == "any"
    assert Router([Route(host="www.example.com", pool="www")]).match(None, "/") is None


def test_unknown_host_without_catch_all_is_no_match() -> None:
    router = Router([Route(host="www.example.com", pool="www"), Route(host="*.cdn.net", pool="c")])
    assert router.match("evil.example.org", "/") is None
    assert router.match("cdn.net", "/") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Example.COM:8080", "example.com"),
        ("example.com.", "example.com"),
        ("[::1]:8080", "[::1]"),
        ("[0:0::1]", "[::1]"),
        ("[not-ipv6]:1", "[not-ipv6]"),
        ("[::1", "[::1"),
        ("", None),
        (None, None),
        (":80", None),
    ],
)
def test_normalise_host(value: str | None, expected: str | None) -> None:
    assert normalise_host(value) == expected


# -- the path sent upstream ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "sent", "stripped"),
    [
        ("/video/a.mp4", "/a.mp4", "/video"),
        ("/video/a/b?x=1", "/a/b?x=1", "/video"),
        ("/video", "/", "/video"),
        ("/video/", "/", "/video"),
        ("/video?x=1", "/?x=1", "/video"),
        ("/video//a", "//a", "/video"),
    ],
)
def test_strip_prefix(path: str, sent: str, stripped: str) -> None:
    route = Route(path="/video/", pool="video", strip_prefix=True)
    assert Router([route]).match("h", path) == Match(route, sent, stripped)


def test_without_strip_prefix_the_path_is_sent_as_is() -> None:
    route = Route(path="/video/", pool="video")
    assert Router([route]).match("h", "/video/a?x=1") == Match(route, "/video/a?x=1", "")


def test_match_carries_the_route_with_its_host_header() -> None:
    route = Route(host="www.example.com", pool="www", host_header="origin.example.net")
    found = Router([route]).match("WWW.example.com", "/x")
    assert found is not None
    assert found.route.host_header == "origin.example.net"
    assert found.pool == "www"


def test_router_keeps_the_routes_in_their_order() -> None:
    assert Router(EXAMPLE).routes == tuple(EXAMPLE)


def test_no_routes_matches_nothing() -> None:
    assert Router([]).match("h", "/") is None


# -- validation: every problem, each named ---------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("*foo.com", "'*foo.com' is not a wildcard of the form '*.suffix'"),
        ("*", "'*' is not a wildcard of the form '*.suffix'"),
        ("*.", "'*.' is not a wildcard of the form '*.suffix'"),
        ("a.*.com", "'a.*.com' is not a wildcard of the form '*.suffix'"),
        ("*.*.com", "'*.*.com' is not a wildcard of the form '*.suffix'"),
        (
            "example.com:8080",
            "'example.com:8080' has a port; leave it out (the port in Host is ignored)",
        ),
        ("[::1]:8080", "'[::1]:8080' has a port; leave it out (the port in Host is ignored)"),
        ("", "'' is not a host name (leave host out to match any host)"),
        ("exa mple.com", "'exa mple.com' is not a host name (letters, digits, '-' and '.')"),
        ("a..b", "'a..b' is not a host name (letters, digits, '-' and '.')"),
        ("a/b", "'a/b' is not a host name (letters, digits, '-' and '.')"),
    ],
)
def test_bad_host(host: str, problem: str) -> None:
    assert problems_of(Route(pool="p"), Route(host=host, pool="p")) == [
        f"routes[1].host: {problem}"
    ]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("api", "'api' is not a path prefix such as '/api/'"),
        ("", "'' is not a path prefix such as '/api/'"),
        ("/api?x=1", "'/api?x=1' may not have a query or fragment"),
        ("/api#top", "'/api#top' may not have a query or fragment"),
    ],
)
def test_bad_path(path: str, problem: str) -> None:
    assert problems_of(Route(path=path, pool="p")) == [f"routes[0].path: {problem}"]


def test_empty_pool_name() -> None:
    assert problems_of(Route(pool="")) == ["routes[0].pool: '' is not a pool name"]


def test_unknown_pool_when_pools_are_given() -> None:
    routes = [Route(pool="static"), Route(host="a", pool="apii")]
    assert problems_of(*routes, pools=["static", "api"]) == [
        "routes[1].pool: 'apii' is not a pool (expected one of 'api', 'static')"
    ]
    assert problems_of(*routes, pools=[]) == [
        "routes[0].pool: 'static' is not a pool (expected one of none defined)",
        "routes[1].pool: 'apii' is not a pool (expected one of none defined)",
    ]
    assert Router(routes).match("a", "/") is not None  # without pools, any name goes


@pytest.mark.parametrize("path", [None, "/"])
def test_strip_prefix_needs_a_path(path: str | None) -> None:
    assert problems_of(Route(path=path, pool="p", strip_prefix=True)) == [
        "routes[0].strip_prefix: true needs a path prefix to strip"
    ]


@pytest.mark.parametrize("value", ["", "a b", "a\r\nX-Injected: 1"])
def test_bad_host_header(value: str) -> None:
    assert problems_of(Route(pool="p", host_header=value)) == [
        f"routes[0].host_header: {value!r} is not a Host header value "
        "(a host name, optionally with ':port')"
    ]


def test_duplicate_host_and_path() -> None:
    routes = [
        Route(pool="a"),
        Route(host="static.example.com", path="/api/", pool="a"),
        Route(host="*.example.com", pool="b"),
        Route(host="Static.Example.com.", path="/api", pool="c"),
        Route(host="*.EXAMPLE.com", pool="d"),
        Route(pool="e"),
        Route(path="/api", pool="f"),
        Route(host="static.example.com", pool="g"),  # other path: fine
    ]
    assert problems_of(*routes) == [
        "routes[3]: same host and path as routes[1] ('Static.Example.com.', '/api')",
        "routes[4]: same host and path as routes[2] ('*.EXAMPLE.com', any path)",
        "routes[5]: same host and path as routes[0] (any host, any path)",
    ]


def test_every_problem_is_named_at_once() -> None:
    routes = [
        Route(host="*foo.com", path="api", pool="", strip_prefix=True),
        Route(host="a.com", pool="x", host_header="bad host"),
        Route(host="a.com", pool="y"),
        Route(host="*.ok.com", path="/v", pool="unknown"),
    ]
    assert problems_of(*routes, pools=["x", "y"]) == [
        "routes[0].host: '*foo.com' is not a wildcard of the form '*.suffix'",
        "routes[0].path: 'api' is not a path prefix such as '/api/'",
        "routes[0].pool: '' is not a pool name",
        "routes[1].host_header: 'bad host' is not a Host header value (a host name, optionally "
        "with ':port')",
        "routes[2]: same host and path as routes[1] ('a.com', any path)",
        "routes[3].pool: 'unknown' is not a pool (expected one of 'x', 'y')",
    ]


def test_international_host_names_match_their_ascii_form() -> None:
    router = Router([Route(host="bücher.example", pool="idn")])
    assert pool_of(router, "xn--bcher-kva.example") == "idn"


def test_check_routes_returns_nothing_for_good_routes() -> None:
    assert check_routes(EXAMPLE, pools=["static", "api", "default"]) == []


# -- property: never a less specific route than another that matches -------------------------------

HOSTS = [
    None,
    "example.com",
    "a.example.com",
    "b.a.example.com",
    "*.example.com",
    "*.a.example.com",
    "*.com",
]
PATHS = [None, "/", "/a", "/a/", "/a/b", "/ab", "/a/b/c/", "/b"]
REQUEST_HOSTS = [
    "example.com",
    "a.example.com",
    "B.A.Example.com:8080",
    "c.b.a.example.com",
    "x.com",
    "org",
    None,
]
REQUEST_PATHS = ["/", "/a", "/a/", "/a/b", "/a/bc", "/ab", "/a/b/c", "/a/b/c/d?x=/b", "/b/x", "/c"]


def specificity(route: Route) -> tuple[int, int, int]:
    """Host first (exact 2, wildcard 1 with its suffix's length, none 0), then path length."""
    path = len((route.path or "").rstrip("/"))
    if route.host is None:
        return (0, 0, path)
    if route.host.startswith("*."):
        return (1, len(route.host), path)
    return (2, 0, path)


def reference_matches(route: Route, host: str | None, path: str) -> bool:
    """A plain, slow statement of what matching means, independent of the router."""
    if route.host is not None:
        if host is None:
            return False
        name = host.lower().split(":")[0]
        if route.host.startswith("*."):
            if not name.endswith(route.host[1:]):
                return False
        elif name != route.host:
            return False
    prefix = (route.path or "").rstrip("/")
    bare = path.split("?")[0]
    return bare == prefix or bare.startswith(prefix + "/")


PATHS_MANY = [*PATHS, *(f"/pad{index}" for index in range(5))]


@st.composite
def route_lists(draw: st.DrawFn) -> list[Route]:
    keys = draw(
        st.lists(st.tuples(st.sampled_from(HOSTS), st.sampled_from(PATHS_MANY)), max_size=24)
    )
    routes: list[Route] = []
    seen: set[tuple[str | None, str]] = set()
    for index, (host, path) in enumerate(keys):
        key = (host, (path or "").rstrip("/"))
        if key not in seen:
            seen.add(key)
            routes.append(Route(host=host, path=path, pool=f"p{index}"))
    return routes


@given(route_lists(), st.sampled_from(REQUEST_HOSTS), st.sampled_from(REQUEST_PATHS))
def test_chosen_route_is_never_less_specific_than_another_match(
    routes: list[Route], host: str | None, path: str
) -> None:
    found = Router(routes).match(host, path)
    matching = [route for route in routes if reference_matches(route, host, path)]
    if not matching:
        assert found is None
        return
    assert found is not None
    assert found.route in matching
    best = max(specificity(route) for route in matching)
    assert specificity(found.route) == best


def test_many_distinct_hosts_keep_right_answers_and_bounded_memory() -> None:
    router = Router(
        [Route(host="*.example.com", pool="wild"), Route(host="a.example.com", pool="a")]
    )
    for index in range(10_000):
        assert pool_of(router, f"h{index}.example.com") == "wild"
        assert pool_of(router, f"h{index}.example.org") is None
    assert pool_of(router, "A.example.com:1") == "a"
    assert len(router._chains) <= 4096  # the per-Host cache stays bounded
