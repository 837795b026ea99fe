"""Unit tests of failover/headers.py: an origin's own absolute URLs in Location, Content-Location
and Refresh are turned back into the proxy's address, and nothing else is touched."""

from __future__ import annotations

import pytest

from failover.headers import LOCATION_HEADERS, LocationRewriter

CLIENT = ("https", "www.example.com")


def rewrite(
    rewriter: LocationRewriter,
    value: bytes,
    name: bytes = b"location",
    client: tuple[str, str | None] = CLIENT,
    mount: str = "",
) -> bytes | None:
    return rewriter.rewrite(name, value, client[0], client[1], mount)


def test_the_names_the_caller_checks() -> None:
    assert frozenset({b"location", b"content-location", b"refresh"}) == LOCATION_HEADERS


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"http://10.0.0.5:8080/get", b"https://www.example.com/get"),
        (
            b"http://10.0.0.5:8080/a/b?x=1&y=http://10.0.0.5:8080/",
            b"https://www.example.com/a/b?x=1&y=http://10.0.0.5:8080/",
        ),
        (b"http://10.0.0.5:8080", b"https://www.example.com/"),
        (b"http://10.0.0.5:8080?x=1", b"https://www.example.com/?x=1"),
        (b"http://10.0.0.5:8080#top", b"https://www.example.com/#top"),
        (b"HTTP://10.0.0.5:8080/Get", b"https://www.example.com/Get"),
        (b"  http://10.0.0.5:8080/get  ", b"https://www.example.com/get"),
    ],
)
def test_origin_address_becomes_the_client_view(value: bytes, expected: bytes) -> None:
    assert rewrite(LocationRewriter("http://10.0.0.5:8080"), value) == expected


@pytest.mark.parametrize("name", sorted(LOCATION_HEADERS - {b"refresh"}))
def test_location_and_content_location(name: bytes) -> None:
    rewriter = LocationRewriter("http://origin.internal")
    assert rewrite(rewriter, b"http://origin.internal/a", name) == b"https://www.example.com/a"


@pytest.mark.parametrize(
    "value",
    [
        b"http://origin.internal/x",
        b"http://origin.internal:80/x",
        b"http://ORIGIN.Internal/x",
        b"http://Origin.INTERNAL:80/x",
    ],
)
def test_default_port_and_host_case_are_normalised(value: bytes) -> None:
    for url in ("http://origin.internal", "http://origin.internal:80", "http://Origin.Internal/"):
        assert rewrite(LocationRewriter(url), value) == b"https://www.example.com/x", url


def test_https_origin_default_port() -> None:
    rewriter = LocationRewriter("https://d1234.cloudfront.net")
    assert rewrite(rewriter, b"https://d1234.cloudfront.net:443/a") == b"https://www.example.com/a"
    assert rewrite(rewriter, b"https://d1234.cloudfront.net/a") == b"https://www.example.com/a"
    assert rewrite(rewriter, b"https://d1234.cloudfront.net:80/a") is None
    assert rewrite(rewriter, b"http://d1234.cloudfront.net/a") is None


@pytest.mark.parametrize(
    "value",
    [
        b"http://10.0.0.5/get",  # another port
        b"http://10.0.0.5:80/get",
        b"http://10.0.0.5:80800/get",
        b"http://10.0.0.50:8080/get",  # another host sharing a prefix
        b"http://10.0.0.5.evil.com:8080/get",
        b"https://10.0.0.5:8080/get",  # another scheme
        b"ftp://10.0.0.5:8080/get",
        b"http://user@10.0.0.5:8080/get",
        b"http://www.google.com/",
        b"/get",  # relative: already on the proxy
        b"get",
        b"../get",
        b"?page=2",
        b"",
    ],
)
def test_other_urls_are_left_alone(value: bytes) -> None:
    assert rewrite(LocationRewriter("http://10.0.0.5:8080"), value) is None


def test_client_scheme_and_host_with_port_are_used() -> None:
    rewriter = LocationRewriter("https://origin.internal")
    client = ("http", "127.0.0.1:8000")
    assert rewrite(rewriter, b"https://origin.internal/x", client=client) == (
        b"http://127.0.0.1:8000/x"
    )


def test_without_client_host_nothing_is_rewritten() -> None:
    rewriter = LocationRewriter("http://origin.internal")
    assert rewrite(rewriter, b"http://origin.internal/x", client=("http", None)) is None
    assert rewrite(rewriter, b"http://origin.internal/x", client=("http", "")) is None


# -- host_header -----------------------------------------------------------------------------------


def test_host_header_counts_as_the_origin_in_the_origin_scheme() -> None:
    rewriter = LocationRewriter("https://d1234.cloudfront.net", ["Shop.Example.com"])
    client = ("http", "127.0.0.1:8000")
    for value in (b"https://shop.example.com/cart", b"https://shop.example.com:443/cart"):
        assert rewrite(rewriter, value, client=client) == b"http://127.0.0.1:8000/cart"
    # An http -> https redirect to the site's own name stays as it is: no redirect loop.
    assert rewrite(rewriter, b"http://shop.example.com/cart", client=client) is None
    assert rewrite(rewriter, b"https://shop.example.com:8443/cart", client=client) is None
    # The origin's URL still counts.
    assert rewrite(rewriter, b"https://d1234.cloudfront.net/cart", client=client) == (
        b"http://127.0.0.1:8000/cart"
    )


def test_host_header_with_port_and_several_host_headers() -> None:
    rewriter = LocationRewriter("http://127.0.0.1:9000", ["site.test:8080", "[::1]:81", "bad:port"])
    assert rewrite(rewriter, b"http://site.test:8080/a") == b"https://www.example.com/a"
    assert rewrite(rewriter, b"http://site.test/a") is None
    assert rewrite(rewriter, b"http://[::1]:81/a") == b"https://www.example.com/a"


def test_ipv6_origin() -> None:
    rewriter = LocationRewriter("http://[::1]:8080")
    assert rewrite(rewriter, b"http://[::1]:8080/a") == b"https://www.example.com/a"
    assert rewrite(rewriter, b"http://[::1]/a") is None


# -- the origin's path prefix, the route's stripped prefix -----------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"http://o/prefix/a", b"https://www.example.com/a"),
        (b"http://o/prefix/", b"https://www.example.com/"),
        (b"http://o/prefix", b"https://www.example.com/"),
        (b"http://o/prefix?x=1", b"https://www.example.com/?x=1"),
        (b"http://o:80/prefix/a/b", b"https://www.example.com/a/b"),
        (b"http://o/prefixed/a", None),  # outside the prefix: not reachable through the proxy
        (b"http://o/other", None),
        (b"http://o/", None),
        (b"http://o", None),
        (b"http://o/Prefix/a", None),
    ],
)
def test_origin_path_prefix_is_removed(value: bytes, expected: bytes | None) -> None:
    for url in ("http://o/prefix", "http://o/prefix/"):
        assert rewrite(LocationRewriter(url), value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"http://o/base/a", b"https://www.example.com/video/a"),
        (b"http://o/base", b"https://www.example.com/video/"),
        (b"http://o/base?x=1", b"https://www.example.com/video/?x=1"),
    ],
)
def test_route_mount_is_put_back(value: bytes, expected: bytes) -> None:
    assert rewrite(LocationRewriter("http://o/base"), value, mount="/video") == expected


def test_route_mount_without_origin_prefix() -> None:
    rewriter = LocationRewriter("http://o")
    assert rewrite(rewriter, b"http://o/a", mount="/video") == b"https://www.example.com/video/a"
    assert rewrite(rewriter, b"http://o", mount="/video") == b"https://www.example.com/video/"


# -- scheme-relative -------------------------------------------------------------------------------


def test_scheme_relative_url_to_the_origin_keeps_no_scheme() -> None:
    rewriter = LocationRewriter("http://origin.internal/p")
    assert rewrite(rewriter, b"//origin.internal/p/a") == b"//www.example.com/a"
    assert rewrite(rewriter, b"//Origin.Internal:80/p/a") == b"//www.example.com/a"
    assert rewrite(rewriter, b"//elsewhere.net/p/a") is None


# -- Refresh ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"5; url=http://o:8080/next", b"5; url=https://www.example.com/next"),
        (b"0;URL=http://o:8080/next", b"0;URL=https://www.example.com/next"),
        (b"5; url='http://o:8080/next'", b"5; url='https://www.example.com/next'"),
        (b'3, url="http://o:8080/n?x=1"', b'3, url="https://www.example.com/n?x=1"'),
        (b"1; http://o:8080/next", b"1; https://www.example.com/next"),
        (b"2.5 ; url = http://O:8080/next ", b"2.5 ; url = https://www.example.com/next "),
    ],
)
def test_refresh(value: bytes, expected: bytes) -> None:
    assert rewrite(LocationRewriter("http://o:8080"), value, b"refresh") == expected


@pytest.mark.parametrize(
    "value",
    [
        b"5",
        b"5; url=/next",
        b"5; url=http://elsewhere/next",
        b"soon; url=http://o:8080/next",
        b"",
    ],
)
def test_refresh_left_alone(value: bytes) -> None:
    assert rewrite(LocationRewriter("http://o:8080"), value, b"refresh") is None


def test_refresh_is_only_parsed_as_refresh() -> None:
    rewriter = LocationRewriter("http://o:8080")
    assert rewrite(rewriter, b"5; url=http://o:8080/next", b"location") is None


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://o/", "o:8080", "http://", "/path"])
def test_bad_origin_url(url: str) -> None:
    with pytest.raises(ValueError, match="is not an http\\(s\\) URL"):
        LocationRewriter(url)
