"""The failover engine (failover.engine): probe and attempt results in; origin flags, one event
per change, the origin picked and readiness out.

Time is a FakeClock that the tests advance by hand: nothing sleeps, nothing touches the network.
Clock steps are multiples of 0.5 s so that float arithmetic lands exactly on the boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from failover.admin import engine_status
from failover.engine import Engine
from failover.events import Event, EventLog
from failover.origins import Flag, Origin, build_origins
from tests.helpers import PASS, REFUSED, FakeClock, make_settings, origin_dict


@dataclass
class Rig:
    engine: Engine
    events: EventLog
    clock: FakeClock
    by_name: dict[str, Origin]
    _seen: int = field(default=0)

    @classmethod
    def build(cls, *origins: dict[str, Any], **blocks: Any) -> Rig:
        if not origins:
            origins = (origin_dict("a", 0), origin_dict("b", 1))
        settings = make_settings(*origins, **blocks)
        clock = FakeClock()
        events = EventLog(clock)
        built = build_origins(settings.pools["default"])
        engine = Engine(settings.pools["default"], built, events, clock)
        return cls(engine, events, clock, {origin.name: origin for origin in built})

    def probe(self, name: str, ok: bool) -> bool:
        return self.engine.on_probe(self.by_name[name], PASS if ok else REFUSED)

    def attempt(self, name: str, result: str | int, ttfb: float = 0.01) -> None:
        self.engine.on_attempt(self.by_name[name], result, ttfb)

    def take(self) -> list[tuple[str, str, str, str, str]]:
        """The events since the last call, oldest first, as (kind, origin, old, new, reason)."""
        events: list[Event] = list(reversed(self.events.newest_first()))
        fresh = events[self._seen :]
        self._seen = len(events)
        return [(e.kind, e.origin, e.old, e.new, e.reason) for e in fresh]

    def picked(self) -> str | None:
        origin = self.engine.pick()
        return origin.name if origin is not None else None

    def status_of(self, name: str) -> dict[str, Any]:
        origins: list[dict[str, Any]] = engine_status(self.engine)["origins"]
        return next(o for o in origins if o["name"] == name)


FAIL_REASON = "2 consecutive probe failures: connection refused"


def test_no_event_at_start_up_and_passing_first_probes_change_nothing() -> None:
    rig = Rig.build()
    assert rig.take() == []
    assert rig.probe("a", True) is True
    assert rig.probe("b", True) is True
    assert rig.take() == []
    assert rig.picked() == "a"
    assert engine_status(rig.engine)["active"] == "a"


def test_failing_probes_take_an_origin_down_with_one_event_and_move_traffic() -> None:
    rig = Rig.build()
    rig.probe("a", True)
    rig.probe("b", True)
    assert rig.probe("a", False) is True  # one failure of two needed
    assert rig.take() == []
    assert rig.picked() == "a"
    assert rig.probe("a", False) is False
    assert rig.take() == [
        ("origin-down", "a", "healthy", "failed-check", FAIL_REASON),
        ("traffic-moved", "b", "a", "b", f"a is failed-check: {FAIL_REASON}"),
    ]
    assert rig.by_name["a"].flags == {Flag.FAILED_CHECK}
    rig.probe("a", False)
    assert rig.take() == []
    assert rig.picked() == "b"


def test_a_first_probe_failure_takes_the_origin_down_at_once() -> None:
    rig = Rig.build()
    assert rig.probe("a", False) is False
    reason = "1 consecutive probe failure: connection refused"
    assert rig.take() == [
        ("origin-down", "a", "healthy", "failed-check", reason),
        ("traffic-moved", "b", "a", "b", f"a is failed-check: {reason}"),
    ]


def test_failback_waits_for_the_hold_down_and_the_event_names_it() -> None:
    rig = Rig.build(failback={"hold_down": 30})
    rig.probe("a", True)
    rig.probe("a", False)
    rig.probe("a", False)
    rig.take()
    rig.clock.advance(10)
    rig.probe("a", True)
    assert rig.take() == []
    rig.probe("a", True)
    assert rig.take() == [
        ("origin-up", "a", "failed-check", "healthy", "2 consecutive probe passes")
    ]
    assert rig.picked() == "b"
    rig.clock.advance(29.5)
    rig.engine.tick()
    assert rig.take() == []
    assert rig.picked() == "b"
    rig.clock.advance(0.5)
    rig.engine.tick()  # no request needed for the move to be noticed
    assert rig.take() == [
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 30 s hold-down")
    ]
    assert rig.picked() == "a"


def test_a_move_while_the_primary_holds_down_names_the_failure_not_the_hold_down() -> None:
    rig = Rig.build(failback={"hold_down": 30})
    rig.probe("a", False)
    rig.probe("a", True)
    rig.probe("a", True)  # a is back but holding down; b serves
    rig.take()
    rig.clock.advance(5)
    rig.probe("b", False)  # b's first probe: down at once, a is the only usable origin
    reason = "1 consecutive probe failure: connection refused"
    assert rig.take() == [
        ("origin-down", "b", "healthy", "failed-check", reason),
        ("traffic-moved", "a", "b", "a", f"b is failed-check: {reason}"),
    ]


def test_all_origins_down_and_one_back() -> None:
    rig = Rig.build(failback={"hold_down": 30})
    rig.probe("a", False)
    rig.probe("b", False)
    down = "1 consecutive probe failure: connection refused"
    assert rig.take()[2:] == [
        ("origin-down", "b", "healthy", "failed-check", down),
        ("traffic-moved", "-", "b", "none", "no origin is usable"),
    ]
    assert rig.picked() is None
    assert engine_status(rig.engine)["active"] is None
    rig.clock.advance(2)
    rig.probe("b", True)
    rig.probe("b", True)
    assert rig.take() == [
        ("origin-up", "b", "failed-check", "healthy", "2 consecutive probe passes"),
        ("traffic-moved", "b", "none", "b", "b became usable"),
    ]
    assert rig.picked() == "b"


def test_ejection_emits_one_event_and_moves_traffic() -> None:
    rig = Rig.build()
    rig.probe("a", True)
    rig.probe("b", True)
    rig.attempt("a", "connect-failure")
    rig.attempt("a", "connect-failure")
    assert rig.take() == []
    rig.attempt("a", "connect-failure")
    reason = "3 consecutive failures: connect-failure (for 30 s)"
    assert rig.take() == [
        ("ejected", "a", "healthy", "ejected", reason),
        ("traffic-moved", "b", "a", "b", f"a is ejected: {reason}"),
    ]
    assert rig.picked() == "b"


def test_an_ejected_origin_returns_only_after_its_ejection_time_and_a_passing_probe() -> None:
    rig = Rig.build(failback={"hold_down": 0})
    rig.probe("a", True)
    rig.probe("b", True)
    for _ in range(3):
        rig.attempt("a", 503)
    rig.take()
    rig.clock.advance(29.5)
    rig.probe("a", True)  # too early: the ejection stands
    rig.engine.tick()
    assert rig.take() == []
    assert Flag.EJECTED in rig.by_name["a"].flags
    rig.clock.advance(0.5)
    rig.engine.tick()  # time is up, but with active checks a probe must pass first
    rig.probe("a", False)
    assert rig.take() == []
    assert rig.picked() == "b"
    rig.probe("a", True)
    assert rig.take() == [
        (
            "restored",
            "a",
            "ejected",
            "healthy",
            "ejection time passed and an active probe passed",
        ),
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 0 s hold-down"),
    ]
    assert rig.picked() == "a"


def test_without_active_checks_the_ejection_ends_with_its_time() -> None:
    rig = Rig.build(health={"enabled": False}, failback={"hold_down": 0})
    for _ in range(3):
        rig.attempt("a", "timeout")
    rig.take()
    rig.clock.advance(29.5)
    rig.engine.tick()
    assert rig.take() == []
    rig.clock.advance(0.5)
    rig.engine.tick()
    assert rig.take() == [
        ("restored", "a", "ejected", "healthy", "ejection time passed"),
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 0 s hold-down"),
    ]


def test_flags_are_independent_and_each_change_is_one_event() -> None:
    rig = Rig.build(failback={"hold_down": 0})
    rig.probe("a", True)
    rig.probe("b", True)
    for _ in range(3):
        rig.attempt("a", 503)
    rig.take()
    rig.probe("a", False)
    rig.probe("a", False)
    assert rig.take() == [("origin-down", "a", "ejected", "ejected+failed-check", FAIL_REASON)]
    rig.clock.advance(30)
    rig.probe("a", True)  # ejection over and a probe passed; the check still fails
    assert rig.take() == [
        (
            "restored",
            "a",
            "ejected+failed-check",
            "failed-check",
            "ejection time passed and an active probe passed",
        )
    ]
    assert rig.picked() == "b"
    rig.probe("a", True)
    assert rig.take() == [
        ("origin-up", "a", "failed-check", "healthy", "2 consecutive probe passes"),
        ("traffic-moved", "a", "b", "a", "a stayed usable for the 0 s hold-down"),
    ]


def test_ready_after_every_origin_is_probed() -> None:
    rig = Rig.build(health={"startup_grace": 5})
    assert not rig.engine.ready()
    rig.probe("a", True)
    assert not rig.engine.ready()
    rig.probe("b", False)
    assert rig.engine.ready()


def test_ready_after_the_startup_grace_without_probes() -> None:
    rig = Rig.build(health={"startup_grace": 5})
    rig.clock.advance(4.5)
    assert not rig.engine.ready()
    rig.clock.advance(0.5)
    assert rig.engine.ready()


def test_not_ready_when_no_origin_is_usable() -> None:
    rig = Rig.build(health={"startup_grace": 5})
    rig.probe("a", False)
    rig.probe("b", False)
    rig.clock.advance(10)
    assert not rig.engine.ready()
    assert engine_status(rig.engine)["ready"] is False
    rig.probe("b", True)
    rig.probe("b", True)
    assert rig.engine.ready()


def test_status_shows_flags_reasons_counts_rates_and_next_probe() -> None:
    rig = Rig.build(
        origin_dict("a", 0),
        origin_dict("b", 1, 3),
        origin_dict("c", 1),
        passive={"consecutive_failures": 3, "min_requests": 10, "ejection_time": 30},
    )
    rig.probe("a", True)
    rig.probe("a", False)
    for result in (200, 500, 200, 503):
        rig.attempt("a", result)
    rig.engine.next_probe_at["a"] = rig.clock() + 2
    rig.clock.advance(0.5)

    status = engine_status(rig.engine)
    assert status["active"] == "a"
    assert status["ready"] is False  # b and c were never probed
    a = rig.status_of("a")
    assert a["state"] == "healthy" and a["usable"] is True and a["flags"] == []
    assert a["check"]["state"] == "healthy"
    assert a["check"]["consecutive_failures"] == 1
    assert a["check"]["consecutive_passes"] == 0
    assert a["check"]["last"] == "connection refused"
    assert a["check"]["next_probe_in"] == 1.5
    assert a["passive"]["consecutive_failures"] == 1
    assert a["passive"]["requests_in_window"] == 4
    assert a["passive"]["error_rate"] == 0.5
    assert rig.status_of("b")["check"]["next_probe_in"] is None

    for _ in range(2):
        rig.attempt("a", "reset")
    status = engine_status(rig.engine)
    assert status["active"] == ["b", "c"]
    a = rig.status_of("a")
    assert a["flags"] == ["ejected"]
    assert a["state"] == "ejected" and a["usable"] is False
    assert a["reason"] == "3 consecutive failures: reset (for 30 s)"
    assert a["passive"]["ejections"] == 1
    assert a["passive"]["ejected_for"] == 30
    rig.clock.advance(10)
    assert rig.status_of("a")["passive"]["ejected_for"] == 20
    assert rig.status_of("a")["since_seconds"] == 10


def test_nxdomain_fails_the_origin_until_its_probes_pass_again() -> None:
    rig = Rig.build(health={"healthy_threshold": 2}, failback={"hold_down": 0})
    rig.probe("a", True)
    rig.probe("b", True)
    rig.take()
    reason = "DNS: a.example: the name does not exist (NXDOMAIN)"
    rig.engine.dns_missing(rig.by_name["a"], reason)
    assert rig.take()[0] == ("origin-down", "a", "healthy", "failed-check", reason)
    assert rig.picked() == "b"
    rig.engine.dns_back(rig.by_name["a"], "DNS: a.example is 192.0.2.1 (TTL 60 s)")
    assert rig.picked() == "b"  # the probes decide: healthy_threshold passes in a row
    rig.probe("a", True)
    assert rig.picked() == "b"
    rig.probe("a", True)
    assert rig.picked() == "a"


def test_without_active_checks_the_name_resolving_again_restores_the_origin() -> None:
    rig = Rig.build(health={"enabled": False}, failback={"hold_down": 0})
    rig.engine.dns_missing(rig.by_name["a"], "DNS: NXDOMAIN")
    assert rig.picked() == "b" and rig.status_of("a")["reason"] == "DNS: NXDOMAIN"
    rig.engine.dns_back(rig.by_name["a"], "DNS: a.example is 192.0.2.1 (TTL 60 s)")
    assert rig.picked() == "a"
    assert rig.take()[-1][0] == "traffic-moved"
