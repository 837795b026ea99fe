"""Retries (failover.retry).

End to end: retries, the retry budget, the request deadline and hedging, with real
FaultyOrigin origins behind the real proxy, on loopback. Unless a test is about active checks
or passive detection, both are off, so that every request meets the origin in the mode the
test set (a failing primary stays the one picked).

Unit tests of the retry decisions (RetryPolicy, RetryBudget) and of RequestBody: no network,
time is a number the tests pass in, and the client's body comes from a scripted `receive`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, MutableMapping
from typing import Any, cast

import httpx
import pytest

from failover.config import HealthConfig, RetryConfig
from failover.faulty import FaultyOrigin
from failover.origins import Flag, Origin
from failover.retry import ClientGone, RequestBody, RetryBudget, RetryPlan, RetryPolicy
from tests.conftest import wait_for
from tests.helpers import KiB, MakeOrigin, MakeProxy, MiB, two_origins_without_checks


def body_of(size: int, seed: int = 7) -> bytes:
    """Bytes that differ from the origins' own pattern, so a mix-up cannot go unnoticed."""
    block = hashlib.sha256(str(seed).encode()).digest() * 64  # 2 KiB
    return (block * (size // len(block) + 1))[:size]


async def stream(data: bytes, chunk: int = 256 * KiB) -> AsyncIterator[bytes]:
    """The body as an async generator: httpx sends it chunked, without a Content-Length."""
    for start in range(0, len(data), chunk):
        yield data[start : start + chunk]


def last_body(origin: FaultyOrigin) -> tuple[int, str]:
    last = origin.stats.last_request
    assert last is not None
    return last.body_length, last.body_sha256


# -- replaying request bodies -------------------------------------------------------------


async def test_put_body_is_replayed_byte_identical_after_503(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins_without_checks(make_origin, make_proxy, "http5xx")
    body = body_of(100 * KiB)
    response = await proxy.client.put("/upload", content=body)
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;503, secondary;200"
    assert "x-failover-not-retried" not in response.headers
    sent = (len(body), hashlib.sha256(body).hexdigest())
    assert last_body(primary) == sent  # the primary read it all before answering 503
    assert last_body(secondary) == sent
    assert response.json()["body_sha256"] == sent[1]


async def test_large_upload_is_not_retried_once_streamed_upstream(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins_without_checks(
        make_origin, make_proxy, "http5xx", retry={"max_buffered_body": MiB}
    )
    body = body_of(10 * MiB)
    response = await proxy.client.put("/upload", content=stream(body))
    assert response.status_code == 503
    assert response.text == "primary: 503 (http5xx mode)"
    assert response.headers["x-failover-not-retried"] == "body-too-large"
    assert response.headers["x-failover-attempts"] == "primary;503"
    assert last_body(primary) == (len(body), hashlib.sha256(body).hexdigest())
    assert secondary.stats.requests == 0


async def test_large_upload_is_retried_when_nothing_was_sent(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins_without_checks(
        make_origin, make_proxy, "refuse", retry={"max_buffered_body": MiB}
    )
    body = body_of(10 * MiB)
    response = await proxy.client.put("/upload", content=stream(body))
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;connect-failure, secondary;200"
    assert "x-failover-not-retried" not in response.headers
    assert last_body(secondary) == (len(body), hashlib.sha256(body).hexdigest())


# -- which methods are retried ------------------------------------------------------------


async def test_post_is_retried_after_refusal_but_not_after_503(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins_without_checks(make_origin, make_proxy, "refuse")
    response = await proxy.client.post("/upload", content=b"order #1")
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;connect-failure, secondary;200"
    assert last_body(secondary) == (8, hashlib.sha256(b"order #1").hexdigest())

    await primary.set_mode("http5xx")
    secondary.reset_stats()
    response = await proxy.client.post("/upload", content=b"order #2")
    assert response.status_code == 503
    assert response.headers["x-failover-attempts"] == "primary;503"
    assert response.headers["x-failover-not-retried"] == "method"
    assert secondary.stats.requests == 0

    # An Idempotency-Key alone does not make a POST retryable: the config must say so.
    response = await proxy.client.post(
        "/upload", content=b"order #3", headers={"Idempotency-Key": "k3"}
    )
    assert response.status_code == 503
    assert response.headers["x-failover-not-retried"] == "method"
    assert secondary.stats.requests == 0


async def test_post_with_idempotency_key_is_retried_after_503(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins_without_checks(
        make_origin, make_proxy, "http5xx", retry={"idempotency_key": True}
    )
    response = await proxy.client.post(
        "/upload", content=b"order #4", headers={"Idempotency-Key": "k4"}
    )
    assert response.status_code == 200
    assert response.headers["x-failover-attempts"] == "primary;503, secondary;200"
    assert last_body(secondary) == (8, hashlib.sha256(b"order #4").hexdigest())
    assert secondary.stats.last_request is not None
    assert ("idempotency-key", "k4") in secondary.stats.last_request.headers

    # Without the key the same POST is still not retried.
    secondary.reset_stats()
    response = await proxy.client.post("/upload", content=b"order #5")
    assert response.status_code == 503
    assert response.headers["x-failover-not-retried"] == "method"
    assert secondary.stats.requests == 0


# -- the retry budget ---------------------------------------------------------------------


async def drive(
    client: httpx.AsyncClient, workers: int = 40, seconds: float = 0.8, per_worker: int = 150
) -> list[httpx.Response]:
    """`workers` clients sending GETs back to back for `seconds` (at most `per_worker` each)."""
    responses: list[httpx.Response] = []
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        for _ in range(per_worker):
            if time.monotonic() >= stop_at:
                return
            responses.append(await client.get("/echo"))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), 20)
    return responses


async def test_retry_budget_caps_retries_under_load(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins_without_checks(
        make_origin,
        make_proxy,
        "http5xx",
        "slow",
        secondary_kw={"slow_delay": 0.2},
        retry={"budget": 0.2, "min_retries_in_flight": 1},
    )
    responses = await drive(proxy.client)
    total = len(responses)
    outcomes = Counter((r.status_code, r.headers.get("x-failover-not-retried")) for r in responses)
    assert set(outcomes) <= {(200, None), (503, "budget")}, outcomes
    assert outcomes[(503, "budget")] > 0
    # At most 20% of 40 requests in flight retry at once, each for 0.2 s at the secondary.
    assert secondary.stats.requests == outcomes[(200, None)]
    assert 0 < secondary.stats.requests < total / 3, (secondary.stats.requests, total)
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["x-failover-attempts"] == "primary;503"


async def test_generous_retry_budget_retries_every_request(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins_without_checks(
        make_origin,
        make_proxy,
        "http5xx",
        "slow",
        secondary_kw={"slow_delay": 0.2},
        retry={"budget": 1.0, "min_retries_in_flight": 1000},
    )
    responses = await drive(proxy.client)
    assert responses
    assert all(r.status_code == 200 for r in responses)
    assert all(r.headers["x-failover-attempts"] == "primary;503, secondary;200" for r in responses)
    assert secondary.stats.requests == len(responses)


# -- the request deadline -----------------------------------------------------------------


async def test_request_deadline_ends_attempts(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    _, secondary, proxy = await two_origins_without_checks(
        make_origin, make_proxy, "blackhole", timeouts={"first_byte": 2.0, "request": 0.5}
    )
    started = time.monotonic()
    response = await proxy.client.get("/echo")
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert 0.45 <= elapsed < 1.5, elapsed  # the deadline, not first_byte
    assert response.headers["x-failover-attempts"] == "primary;timeout"
    assert response.headers["x-failover-not-retried"] == "deadline"
    assert "primary: no response within" in response.text
    assert secondary.stats.requests == 0


# -- hedging ------------------------------------------------------------------------------


async def test_hedged_get_is_answered_by_the_secondary(
    make_origin: MakeOrigin, make_proxy: MakeProxy
) -> None:
    primary, secondary, proxy = await two_origins_without_checks(
        make_origin,
        make_proxy,
        "blackhole",
        retry={"hedge_after": 0.2},
        timeouts={"first_byte": 2.0},
    )
    assert primary.stats.open_connections == 0
    started = time.monotonic()
    response = await proxy.client.get("/echo")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["origin"] == "secondary"
    assert 0.2 <= elapsed < 1.0, elapsed  # hedge_after, well under first_byte
    attempts = response.headers["x-failover-attempts"].split(", ")
    assert sorted(attempts) == ["primary;cancelled", "secondary;200"]
    assert primary.stats.requests == 1
    assert secondary.stats.requests == 1
    # The hung attempt was cancelled and its connection closed, long before first_byte.
    await wait_for(lambda: primary.stats.open_connections == 0, timeout=1.0)


async def test_post_is_never_hedged(make_origin: MakeOrigin, make_proxy: MakeProxy) -> None:
    primary, secondary, proxy = await two_origins_without_checks(
        make_origin,
        make_proxy,
        "blackhole",
        retry={"hedge_after": 0.1},
        timeouts={"first_byte": 0.4},
    )
    response = await proxy.client.post("/echo")
    assert response.status_code == 504
    assert response.headers["x-failover-attempts"] == "primary;timeout"
    assert response.headers["x-failover-not-retried"] == "method"
    assert primary.stats.requests == 1
    assert secondary.stats.requests == 0


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


# -- the retry plan: one decision after each attempt, plain and hedged --------------------


def origins(*names: str) -> list[Origin]:
    return [
        Origin(name, f"http://{name}", i, 1, HealthConfig(), False, name, f"http://{name}:80")
        for i, name in enumerate(names)
    ]


def plan(
    pool: list[Origin],
    method: str = "GET",
    deadline_at: float | None = None,
    budget: RetryBudget | None = None,
    first: Origin | None = None,
    **retry: Any,
) -> RetryPlan:
    def next_after(tried: list[Origin]) -> Origin | None:
        return next((o for o in pool if o not in tried), None)

    made = RetryPlan(
        RetryPolicy(RetryConfig(**retry)),
        budget or RetryBudget(1.0, 10),
        next_after,
        method,
        None,
        False,
        deadline_at,
    )
    made.tried.append(first or pool[0])  # the first attempt went to the first origin
    return made


def test_a_retryable_failure_moves_to_the_next_origin_until_attempts_run_out() -> None:
    a, b, c = origins("a", "b", "c")
    p = plan([a, b, c], attempts=2)
    assert p.next(a, "connect-failure", 0.0) is b
    p.tried.append(b)
    assert p.next(b, 503, 0.0) is None
    assert p.not_retried == "attempts"


def test_a_status_that_is_not_retried_stands_without_a_reason() -> None:
    a, b = origins("a", "b")
    p = plan([a, b])
    assert p.next(a, 404, 0.0) is None
    assert p.not_retried == ""


def test_post_is_retried_only_when_nothing_was_sent() -> None:
    a, b = origins("a", "b")
    p = plan([a, b], method="POST")
    assert p.next(a, "reset", 0.0) is None
    assert p.not_retried == "method"
    assert plan([a, b], method="POST").next(a, "connect-failure", 0.0) is b


def test_the_deadline_stops_retries_and_hedges_alike() -> None:
    a, b = origins("a", "b")
    p = plan([a, b], deadline_at=10.0)
    assert p.next(a, "timeout", 9.0) is b
    assert p.hedge(a, 9.0) is b
    assert p.next(a, "timeout", 10.0) is None
    assert p.not_retried == "deadline"
    assert p.hedge(a, 10.0) is None


def test_the_budget_guards_a_healthy_origin_on_both_paths_but_not_a_failed_one() -> None:
    a, b = origins("a", "b")
    budget = RetryBudget(0.0, 1)
    budget.retries = 1  # the floor is used up by another request
    p = plan([a, b], budget=budget)
    assert p.next(a, 503, 0.0) is None
    assert p.not_retried == "budget"
    assert p.hedge(a, 0.0) is None
    a.flags.add(Flag.EJECTED)  # once the origin is known bad, the retry is the failover
    assert plan([a, b], budget=budget).next(a, 503, 0.0) is b
    assert plan([a, b], budget=budget).hedge(a, 0.0) is b


def test_a_request_counts_once_against_the_budget_however_often_it_retries() -> None:
    a, b, c = origins("a", "b", "c")
    budget = RetryBudget(1.0, 10)
    p = plan([a, b, c], budget=budget, attempts=3)
    p.start_retry()
    p.start_retry()
    assert budget.retries == 1
    p.finish()
    assert budget.retries == 0
