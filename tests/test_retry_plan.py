"""The retry plan: the one decision after each attempt, for the plain and the hedged path."""

from __future__ import annotations

from typing import Any

from failover.config import HealthConfig, RetryConfig
from failover.origins import Flag, Origin
from failover.retry import RetryBudget, RetryPlan, RetryPolicy


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
