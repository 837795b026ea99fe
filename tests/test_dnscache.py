"""The DNS cache's decisions (failover.dnscache), driven by a fake clock: TTL clamping, when the
next lookup is due, the serve-stale window, NXDOMAIN, and the events each change is worth."""

from __future__ import annotations

import pytest

from failover.dnscache import DnsEntry, DnsLimits
from tests.helpers import FakeClock

LIMITS = DnsLimits(min_ttl=5, max_ttl=300, stale_ttl=3600)
NAME = "cdn.test"


def fresh(
    clock: FakeClock, addresses: tuple[str, ...] = ("192.0.2.1",), ttl: float = 60
) -> DnsEntry:
    entry = DnsEntry(NAME)
    entry.answered(addresses, ttl, clock(), LIMITS)
    return entry


@pytest.mark.parametrize(
    ("ttl", "used"), [(0, 5), (1, 5), (5, 5), (60, 60), (300, 300), (86400, 300)]
)
def test_the_ttl_is_clamped_to_min_ttl_and_max_ttl(ttl: float, used: float) -> None:
    clock = FakeClock()
    entry = fresh(clock, ttl=ttl)
    assert entry.ttl == used
    assert entry.next_lookup == clock() + used
    assert entry.status(clock())["ttl_left"] == used


def test_an_answer_is_used_until_its_ttl_ends_and_the_next_lookup_is_due_then() -> None:
    clock = FakeClock()
    entry = fresh(clock, ttl=60)
    assert entry.state == "fresh" and entry.usable(clock()) == ("192.0.2.1",)
    clock.advance(59)
    assert entry.status(clock())["ttl_left"] == 1
    assert entry.next_lookup > clock()
    clock.advance(1)
    assert entry.next_lookup <= clock()  # due now
    assert entry.usable(clock()) == ("192.0.2.1",)  # still served while the lookup runs


def test_a_refresh_with_the_same_answer_emits_nothing_and_restarts_the_ttl() -> None:
    clock = FakeClock()
    entry = fresh(clock)
    clock.advance(60)
    update = entry.answered(("192.0.2.1",), 30, clock(), LIMITS)
    assert update.event is None and not update.added and not update.removed
    assert entry.next_lookup == clock() + 30


def test_a_changed_answer_names_what_was_added_and_removed() -> None:
    clock = FakeClock()
    entry = fresh(clock, ("192.0.2.1", "192.0.2.2"))
    clock.advance(60)
    update = entry.answered(("192.0.2.2", "2001:db8::1"), 60, clock(), LIMITS)
    assert update.event == "dns-changed"
    assert update.added == {"2001:db8::1"} and update.removed == {"192.0.2.1"}
    assert "changed from 192.0.2.1, 192.0.2.2 to 192.0.2.2, 2001:db8::1" in update.reason
    assert entry.usable(clock()) == ("192.0.2.2", "2001:db8::1")


def test_the_first_answer_is_no_change() -> None:
    clock = FakeClock()
    entry = DnsEntry(NAME)
    assert entry.state == "pending" and entry.usable(clock()) == ()
    update = entry.answered(("192.0.2.1",), 60, clock(), LIMITS)
    assert update.event is None and update.added == {"192.0.2.1"}


def test_a_resolver_failure_serves_the_last_answer_for_stale_ttl_past_its_expiry() -> None:
    clock = FakeClock()
    entry = fresh(clock, ttl=60)
    clock.advance(60)
    update = entry.failed("timeout: no answer within 2 s", clock(), LIMITS)
    assert update.event == "dns-stale" and not update.removed
    assert entry.state == "stale" and entry.usable(clock()) == ("192.0.2.1",)
    assert entry.next_lookup == clock() + LIMITS.min_ttl  # retried at min_ttl
    assert entry.status(clock())["stale_left"] == 3600
    # Failing again is no new event; the window does not grow.
    clock.advance(5)
    assert entry.failed("SERVFAIL", clock(), LIMITS).event is None
    assert entry.status(clock())["stale_left"] == 3595
    clock.advance(3594)
    assert entry.usable(clock()) == ("192.0.2.1",)
    clock.advance(1)  # stale_ttl after the expiry: no longer served
    assert entry.usable(clock()) == ()
    update = entry.failed("timeout", clock(), LIMITS)
    assert update.event == "dns-failed" and update.removed == {"192.0.2.1"}
    assert "older than stale_ttl (3600 s)" in update.reason
    assert entry.state == "failed"


def test_stale_ttl_zero_serves_nothing_past_the_ttl() -> None:
    limits = DnsLimits(min_ttl=5, max_ttl=300, stale_ttl=0)
    clock = FakeClock()
    entry = DnsEntry(NAME)
    entry.answered(("192.0.2.1",), 60, clock(), limits)
    clock.advance(60)
    assert entry.usable(clock()) == ()
    assert entry.failed("timeout", clock(), limits).event == "dns-failed"


def test_a_failure_before_any_answer_leaves_no_address() -> None:
    clock = FakeClock()
    entry = DnsEntry(NAME)
    update = entry.failed("SERVFAIL", clock(), LIMITS)
    assert update.event == "dns-failed" and entry.usable(clock()) == ()
    assert entry.reason == "lookup of cdn.test failed (SERVFAIL)"


def test_nxdomain_drops_the_answer_at_once_even_a_young_one() -> None:
    clock = FakeClock()
    entry = fresh(clock, ttl=60)
    clock.advance(60)
    update = entry.missing("cdn.test: the name does not exist (NXDOMAIN)", clock(), LIMITS)
    assert update.event == "dns-nxdomain" and update.removed == {"192.0.2.1"}
    assert entry.state == "nxdomain" and entry.usable(clock()) == ()
    assert entry.next_lookup == clock() + 5
    assert entry.missing("again", clock(), LIMITS).event is None


@pytest.mark.parametrize("outage", ["stale", "failed", "nxdomain"])
def test_an_answer_after_an_outage_is_a_recovery(outage: str) -> None:
    clock = FakeClock()
    entry = fresh(clock, ttl=60)
    clock.advance(60)
    if outage == "stale":
        entry.failed("timeout", clock(), LIMITS)
    elif outage == "failed":
        clock.advance(3600)
        entry.failed("timeout", clock(), LIMITS)
    else:
        entry.missing("NXDOMAIN", clock(), LIMITS)
    clock.advance(5)
    update = entry.answered(("192.0.2.1",), 60, clock(), LIMITS)
    assert update.event == "dns-recovered"
    assert entry.state == "fresh" and entry.usable(clock()) == ("192.0.2.1",)
    assert entry.status(clock())["stale_left"] is None
