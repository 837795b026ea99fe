"""Unit tests of stale-if-error storage (StaleCache) and of the retry decisions (RetryPolicy,
RetryBudget, RequestBody). No network: time is a number the tests pass in, and the client's
body comes from a scripted `receive`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, MutableMapping
from typing import Any, cast

import pytest

from failover.config import RetryConfig, StaleConfig
from failover.retry import ClientGone, RequestBody, RetryBudget, RetryPolicy
from failover.stale import Key, StaleCache

Headers = list[tuple[bytes, bytes]]
T0 = 1000.0
KEY = StaleCache.key("http", "example.com", "/page")
AUTHORIZED: Headers = [(b"authorization", b"Bearer alice")]


# -- StaleCache ---------------------------------------------------------------------------


def cache(**config: Any) -> StaleCache:
    return StaleCache(StaleConfig(enabled=True, **config))


def response_headers(cache_control: str | None = None, *extra: tuple[bytes, bytes]) -> Headers:
    headers: Headers = [(b"content-type", b"text/plain")]
    if cache_control is not None:
        headers.append((b"cache-control", cache_control.encode()))
    headers.extend(extra)
    return headers


def store(
    stale: StaleCache,
    body: bytes,
    *,
    key: Key = KEY,
    headers: Headers | None = None,
    request: Headers | None = None,
    now: float = T0,
) -> bool:
    """Pass one response through the cache as the proxy does; say whether it was kept."""
    tee = stale.begin(key, request or [], headers or response_headers(), b"cdn-a")
    if tee is None:
        return False
    for start in range(0, len(body), 1000):
        if not tee.add(body[start : start + 1000]):
            return False
    stale.finish(tee, now)
    return True


def test_stored_copy_is_served_with_its_headers_and_body() -> None:
    stale = cache()
    headers = response_headers("max-age=60", (b"etag", b'"v1"'), (b"age", b"3"))
    assert store(stale, b"hello" * 1000, headers=headers)
    entry = stale.lookup(KEY, [], T0 + 5)
    assert entry is not None
    assert entry.body == b"hello" * 1000
    assert entry.stored_at == T0
    assert entry.origin == b"cdn-a"
    # The origin's Age is dropped: the proxy sends an Age of its own.
    assert entry.headers == response_headers("max-age=60", (b"etag", b'"v1"'))
    assert stale.lookup(StaleCache.key("http", "example.com", "/other"), [], T0 + 5) is None


def test_per_response_headers_are_not_stored() -> None:
    stale = cache()
    headers = response_headers(
        None, (b"x-failover-origin", b"cdn-a"), (b"x-failover-attempts", b"cdn-a;200")
    )
    assert store(stale, b"x", headers=headers)
    entry = stale.lookup(KEY, [], T0)
    assert entry is not None
    assert entry.headers == response_headers()


@pytest.mark.parametrize(
    "cache_control",
    [
        "no-store",
        "private",
        'private="set-cookie"',
        "max-age=60, No-Store",
        "no-cache",
        "public, max-age=60, no-cache",
    ],
)
def test_no_store_private_and_no_cache_are_never_stored(cache_control: str) -> None:
    stale = cache()
    assert not store(stale, b"secret", headers=response_headers(cache_control))
    assert stale.lookup(KEY, [], T0) is None
    assert stale.size == 0


@pytest.mark.parametrize("vary", [b"*", b"Accept-Language, *"])
def test_vary_star_is_never_stored(vary: bytes) -> None:
    stale = cache()
    assert not store(stale, b"x", headers=response_headers("public", (b"vary", vary)))
    assert stale.lookup(KEY, [], T0) is None


@pytest.mark.parametrize("cache_control", [None, "public, max-age=60"])
def test_a_response_that_sets_a_cookie_is_never_stored(cache_control: str | None) -> None:
    stale = cache()
    headers = response_headers(cache_control, (b"set-cookie", b"session=alice"))
    assert not store(stale, b"alice's page", headers=headers)
    assert stale.lookup(KEY, [], T0) is None
    assert stale.size == 0


@pytest.mark.parametrize("cache_control", [None, "max-age=60", "max-age=60, stale-if-error=60"])
def test_a_response_to_a_request_with_authorization_is_not_stored(
    cache_control: str | None,
) -> None:
    stale = cache()
    headers = response_headers(cache_control)
    assert not store(stale, b"alice's page", headers=headers, request=AUTHORIZED)
    assert stale.lookup(KEY, [], T0) is None
    assert stale.lookup(KEY, AUTHORIZED, T0) is None
    # The control: the same response to a request without Authorization is kept.
    assert store(stale, b"anyone's page", headers=headers)


@pytest.mark.parametrize(
    "cache_control", ["public", "Public, max-age=60", "s-maxage=60", "max-age=60, must-revalidate"]
)
def test_authorization_is_stored_when_the_response_says_it_is_shared(cache_control: str) -> None:
    stale = cache()
    headers = response_headers(cache_control)
    assert store(stale, b"shared", headers=headers, request=AUTHORIZED)
    entry = stale.lookup(KEY, [], T0 + 30)  # served to a client without Authorization too
    assert entry is not None
    assert entry.body == b"shared"


@pytest.mark.parametrize(
    "cache_control",
    ["max-age=60, must-revalidate", "max-age=60, proxy-revalidate", "max-age=5, s-maxage=60"],
)
def test_a_response_that_forbids_serving_it_stale_is_served_only_while_fresh(
    cache_control: str,
) -> None:
    stale = cache(max_age=3600)
    assert store(stale, b"x", headers=response_headers(cache_control))
    assert stale.lookup(KEY, [], T0 + 60) is not None
    assert stale.lookup(KEY, [], T0 + 60.5) is None


@pytest.mark.parametrize("cache_control", ["must-revalidate", "proxy-revalidate, max-age=0"])
def test_a_response_that_must_be_revalidated_at_once_is_not_stored(cache_control: str) -> None:
    stale = cache()
    assert not store(stale, b"x", headers=response_headers(cache_control))


def test_stale_if_error_overrides_must_revalidate() -> None:
    stale = cache(max_age=3600)
    headers = response_headers("max-age=60, must-revalidate, stale-if-error=30")
    assert store(stale, b"x", headers=headers)
    assert stale.lookup(KEY, [], T0 + 90) is not None
    assert stale.lookup(KEY, [], T0 + 90.5) is None


def test_the_key_compares_host_without_case_and_keeps_its_parts_apart() -> None:
    key = StaleCache.key
    assert key("http", "Example.COM", "/x") == key("http", "example.com", "/x")
    assert key("http", None, "/x") == key("http", "", "/x")
    stale = cache()
    assert store(stale, b"example.com/x/y", key=key("http", "example.com", "/x/y"))
    assert stale.lookup(key("http", "EXAMPLE.com", "/x/y"), [], T0) is not None
    # Host "example.com/x" with target "/y" is another resource, as is another scheme.
    assert stale.lookup(key("http", "example.com/x", "/y"), [], T0) is None
    assert stale.lookup(key("https", "example.com", "/x/y"), [], T0) is None
    assert stale.lookup(key("http", "example.com:80", "/x/y"), [], T0) is None


def test_without_stale_if_error_a_copy_lasts_max_age() -> None:
    stale = cache(max_age=10)
    assert store(stale, b"x", headers=response_headers("max-age=60"))
    assert stale.lookup(KEY, [], T0 + 10) is not None
    assert stale.lookup(KEY, [], T0 + 10.5) is None


def test_stale_if_error_window_follows_freshness() -> None:
    stale = cache(max_age=3600)
    assert store(stale, b"x", headers=response_headers("max-age=60, stale-if-error=30"))
    assert stale.lookup(KEY, [], T0 + 90) is not None
    assert stale.lookup(KEY, [], T0 + 90.5) is None


def test_s_maxage_wins_over_max_age() -> None:
    stale = cache(max_age=3600)
    headers = response_headers("max-age=10, s-maxage=100, stale-if-error=20")
    assert store(stale, b"x", headers=headers)
    assert stale.lookup(KEY, [], T0 + 120) is not None
    assert stale.lookup(KEY, [], T0 + 120.5) is None


def test_max_age_caps_the_stale_if_error_window() -> None:
    stale = cache(max_age=50)
    assert store(stale, b"x", headers=response_headers("max-age=60, stale-if-error=600"))
    assert stale.lookup(KEY, [], T0 + 50) is not None
    assert stale.lookup(KEY, [], T0 + 50.5) is None


def test_a_zero_window_is_not_stored() -> None:
    stale = cache()
    assert not store(stale, b"x", headers=response_headers("max-age=0, stale-if-error=0"))


def test_vary_selects_the_variant() -> None:
    stale = cache()
    headers = response_headers("max-age=60", (b"vary", b"Accept-Language"))
    assert store(stale, b"hello", headers=headers, request=[(b"accept-language", b"en")])
    english = stale.lookup(KEY, [(b"accept-language", b"en")], T0)
    assert english is not None
    assert english.body == b"hello"
    assert stale.lookup(KEY, [(b"accept-language", b"fr")], T0) is None
    assert stale.lookup(KEY, [], T0) is None

    assert store(stale, b"bonjour", headers=headers, request=[(b"accept-language", b"fr")])
    french = stale.lookup(KEY, [(b"accept-language", b"fr")], T0)
    assert french is not None
    assert french.body == b"bonjour"
    english = stale.lookup(KEY, [(b"accept-language", b"en")], T0)
    assert english is not None
    assert english.body == b"hello"
    assert stale.size == len(b"hello") + len(b"bonjour")


def test_vary_on_an_absent_request_header_matches_only_its_absence() -> None:
    stale = cache()
    headers = response_headers(None, (b"vary", b"accept-encoding, Accept-Language"))
    assert store(stale, b"plain", headers=headers)
    assert stale.lookup(KEY, [(b"user-agent", b"x")], T0) is not None
    assert stale.lookup(KEY, [(b"accept-encoding", b"gzip")], T0) is None


def test_vary_compares_repeated_request_fields_as_one_list() -> None:
    stale = cache()
    headers = response_headers(None, (b"vary", b"Accept-Language"))
    sent = [(b"accept-language", b"fr"), (b"accept-language", b"en")]
    assert store(stale, b"x", headers=headers, request=sent)
    assert stale.lookup(KEY, sent, T0) is not None
    assert stale.lookup(KEY, [(b"accept-language", b"fr, en")], T0) is not None
    assert stale.lookup(KEY, [(b"accept-language", b"en")], T0) is None
    assert stale.lookup(KEY, [(b"accept-language", b"fr")], T0) is None


def test_a_new_copy_replaces_the_old_one() -> None:
    stale = cache()
    assert store(stale, b"old" * 10)
    assert store(stale, b"new", now=T0 + 1)
    entry = stale.lookup(KEY, [], T0 + 1)
    assert entry is not None
    assert entry.body == b"new"
    assert entry.stored_at == T0 + 1
    assert stale.size == 3


def test_response_over_max_object_bytes_is_not_kept() -> None:
    stale = cache(max_object_bytes=4000)
    assert not store(stale, b"x" * 4001)
    assert stale.lookup(KEY, [], T0) is None
    assert stale.size == 0
    assert store(stale, b"x" * 4000)
    assert stale.size == 4000


def test_least_recently_used_copies_are_evicted_past_max_bytes() -> None:
    stale = cache(max_bytes=3000, max_object_bytes=3000)
    a, b, c, d = (StaleCache.key("http", "example.com", f"/{name}") for name in "abcd")
    for key in (a, b, c):
        assert store(stale, b"x" * 1000, key=key)
    assert stale.lookup(a, [], T0) is not None  # "a" is now the most recently used
    assert store(stale, b"y" * 1000, key=d)
    assert stale.lookup(b, [], T0) is None
    assert [k for k in (a, c, d) if stale.lookup(k, [], T0) is not None] == [a, c, d]
    assert stale.size == 3000


# -- RetryPolicy --------------------------------------------------------------------------


def policy(**config: Any) -> RetryPolicy:
    return RetryPolicy(RetryConfig(**config))


def test_statuses_and_conditions_come_from_retry_on() -> None:
    rules = policy(on=["connect-failure", 503])
    assert rules.retries_status(503)
    assert not rules.retries_status(502)
    assert rules.refusal(503, "GET", None, 1, False) is None
    assert rules.refusal("connect-failure", "GET", None, 1, False) is None
    assert rules.refusal(502, "GET", None, 1, False) == "status"
    assert rules.refusal("reset", "GET", None, 1, False) == "condition"
    assert rules.refusal("timeout", "GET", None, 1, False) == "condition"


@pytest.mark.parametrize("failure", ["reset", "timeout", 502, 503, 504])
def test_post_is_not_retried_once_the_request_went_out(failure: str | int) -> None:
    rules = policy()
    assert rules.refusal(failure, "POST", None, 1, False) == "method"
    assert rules.refusal(failure, "PATCH", None, 1, False) == "method"
    assert rules.refusal(failure, "PUT", None, 1, False) is None


def test_any_method_is_retried_when_nothing_was_sent() -> None:
    assert policy().refusal("connect-failure", "POST", None, 1, False) is None


def test_idempotency_key_makes_post_retryable_only_when_enabled() -> None:
    assert policy().refusal(503, "POST", None, 1, True) == "method"
    assert policy(idempotency_key=True).refusal(503, "POST", None, 1, True) is None
    assert policy(idempotency_key=True).refusal(503, "POST", None, 1, False) == "method"


def test_attempts_limit_retries() -> None:
    rules = policy(attempts=3)
    assert rules.refusal(503, "GET", None, 2, False) is None
    assert rules.refusal(503, "GET", None, 3, False) == "attempts"
    assert policy(attempts=1).refusal("connect-failure", "GET", None, 1, False) == "attempts"


# -- RetryBudget --------------------------------------------------------------------------


def test_budget_allows_the_floor_then_the_ratio_of_active_requests() -> None:
    budget = RetryBudget(0.2, 3)
    budget.active = 5
    for _ in range(3):  # 20% of 5 is 1, but the floor is 3
        assert budget.allows()
        budget.retries += 1
    assert not budget.allows()
    budget.active = 20  # 20% of 20 = 4
    assert budget.allows()
    budget.retries += 1
    assert not budget.allows()
    budget.retries -= 2
    assert budget.allows()


def test_zero_budget_and_floor_allow_no_retry() -> None:
    budget = RetryBudget(0.0, 0)
    budget.active = 100
    assert not budget.allows()


# -- RequestBody --------------------------------------------------------------------------


class ScriptedClient:
    """An ASGI `receive` that hands out the given chunks, then (if asked) a disconnect."""

    def __init__(self, chunks: list[bytes], disconnect: bool = False) -> None:
        self.messages: list[MutableMapping[str, Any]] = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        if disconnect:
            self.messages[-1]["more_body"] = True
            self.messages.append({"type": "http.disconnect"})
        self.received = 0

    async def __call__(self) -> MutableMapping[str, Any]:
        message = self.messages[self.received]
        self.received += 1
        return message


async def collect(body: RequestBody, limit: int | None = None) -> list[bytes]:
    """Read the body as an upstream attempt would; stop after `limit` chunks if given."""
    out: list[bytes] = []
    chunks = cast(AsyncGenerator[bytes, None], body.chunks())
    try:
        async for chunk in chunks:
            out.append(chunk)
            if limit is not None and len(out) == limit:
                break
    finally:
        await chunks.aclose()
    return out


CHUNKS = [b"a" * 100, b"b" * 100, b"c" * 100, b"d" * 100]


async def test_small_body_is_replayed_identically() -> None:
    client = ScriptedClient(CHUNKS)
    body = RequestBody(client, limit=400)
    completed: list[bool] = []
    body.on_complete = lambda: completed.append(True)
    assert await collect(body) == CHUNKS
    assert body.complete and body.size == 400 and body.can_replay
    assert completed == [True]
    assert await collect(body) == CHUNKS  # from memory: the client is not read again
    assert client.received == len(CHUNKS)


async def test_partly_sent_body_is_replayed_from_its_first_byte() -> None:
    client = ScriptedClient(CHUNKS)
    body = RequestBody(client, limit=1000)
    assert await collect(body, limit=2) == CHUNKS[:2]  # the first attempt broke off
    assert not body.complete
    assert await collect(body) == CHUNKS
    assert client.received == len(CHUNKS)


async def test_body_over_the_limit_cannot_be_replayed() -> None:
    body = RequestBody(ScriptedClient(CHUNKS), limit=399)
    assert await collect(body) == CHUNKS  # streams through whole all the same
    assert not body.replayable and not body.can_replay
    with pytest.raises(RuntimeError):
        await collect(body)


async def test_body_over_the_limit_is_replayable_while_nothing_was_read() -> None:
    body = RequestBody(ScriptedClient(CHUNKS), limit=0)
    assert body.can_replay  # a connect failure sent nothing: a retry may still send it all
    assert await collect(body) == CHUNKS
    assert not body.can_replay


async def test_client_going_away_mid_body_raises_client_gone() -> None:
    body = RequestBody(ScriptedClient(CHUNKS[:2], disconnect=True), limit=1000)
    out: list[bytes] = []
    with pytest.raises(ClientGone):
        async for chunk in body.chunks():
            out.append(chunk)
    assert out == CHUNKS[:2]
