"""Unit tests of failover/headers.py: an origin's own absolute URLs in Location, Content-Location
and Refresh are turned back into the proxy's address, and nothing else is touched."""

from __future__ import annotations

import pytest

from failover.headers import (
    LOCATION_HEADERS,
    LocationRewriter,
    request_headers,
    request_target,
    response_headers,
)

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


# -- request and response headers ----------------------------------------------------------


def test_request_headers_drop_hop_by_hop_and_add_forwarding_headers() -> None:
    raw = [
        (b"host", b"www.example.com"),
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"1"),
        (b"te", b"trailers"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"via", b"1.0 edge"),
        (b"accept", b"*/*"),
        (b"accept", b"text/html"),
        (b"content-length", b"12"),
        (b"idempotency-key", b"k1"),
    ]
    out, host, length, key = request_headers(raw, "192.0.2.7", "https", "1.1", "failover")
    assert (host, length, key) == ("www.example.com", 12, True)
    assert out == [
        ("accept", "*/*"),
        ("accept", "text/html"),
        ("content-length", "12"),
        ("idempotency-key", "k1"),
        ("X-Forwarded-For", "10.0.0.1, 192.0.2.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "www.example.com"),
        ("Via", "1.0 edge, 1.1 failover"),
    ]


def test_a_chunked_request_has_no_length_and_none_means_no_body() -> None:
    assert (
        request_headers([(b"transfer-encoding", b"chunked")], None, "http", "1.1", "f")[2] is None
    )
    assert request_headers([], None, "http", "1.0", "f")[2] == 0


def test_response_headers_drop_hop_by_hop_append_via_and_rewrite_location() -> None:
    raw = [
        (b"Content-Type", b"text/html"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"X-Internal", b"1"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Via", b"1.1 cdn"),
        (b"Location", b"http://10.0.0.5:8080/login"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]
    rewriter = LocationRewriter("http://10.0.0.5:8080")
    out = response_headers(raw, 302, b"1.1 failover", rewriter, "https", "www.example.com")
    assert out == [
        (b"content-type", b"text/html"),
        (b"location", b"https://www.example.com/login"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"via", b"1.1 cdn, 1.1 failover"),
    ]
    kept = response_headers(raw, 302, b"1.1 failover", None, "https", "www.example.com")
    assert (b"location", b"http://10.0.0.5:8080/login") in kept


def test_a_204_loses_its_content_length_and_a_304_keeps_it() -> None:
    raw = [(b"Content-Length", b"7"), (b"ETag", b'"x"')]
    assert response_headers(raw, 204, b"1.1 f", None, "http", None) == [
        (b"etag", b'"x"'),
        (b"via", b"1.1 f"),
    ]
    assert (b"content-length", b"7") in response_headers(raw, 304, b"1.1 f", None, "http", None)


@pytest.mark.parametrize(
    ("raw_path", "query", "expected"),
    [
        (b"/a%2Fb", b"x=1", ("/a%2Fb?x=1", None)),
        (b"http://Other.example:8080/p", b"", ("/p", "Other.example:8080")),
        (b"https://h", b"", ("/", "h")),
        (b"ftp://h/p", b"", None),
        (b"*", b"", None),
    ],
)
def test_the_request_target_is_kept_raw_and_an_absolute_form_names_its_host(
    raw_path: bytes, query: bytes, expected: tuple[str, str | None] | None
) -> None:
    scope = {"path": "", "raw_path": raw_path, "query_string": query}
    assert request_target(scope) == expected
