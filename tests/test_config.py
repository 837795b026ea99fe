"""Configuration (failover.config): the spec's example parses, durations, environment overrides,
and every bad input is reported as one `path: message` line that names what was wrong.

Hostile and careless input too: `failover check` answers each with one line per problem and
exit status 2, never a traceback or a hang; and every config it accepts, `run` can start with
(a property over configs generated from the schema).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, BeforeValidator
from pydantic.fields import FieldInfo

from failover import cli, h1
from failover.app import App
from failover.cli import uvicorn_config
from failover.config import (
    MAX_DURATION,
    ConfigError,
    Settings,
    StatusSet,
    build_settings,
    load_config,
    parse_duration,
)
from failover.health import next_delay
from tests.conftest import free_port
from tests.helpers import (
    ORIGIN,
    SPEC_EXAMPLE,
    UNKNOWN_KEY,
    check,
    file_problems,
    refused,
    serving_config,
    started,
    write,
    write_config,
)

NOT_A_DURATION = "is not a duration (seconds, or e.g. '500ms', '2s', '1m')"


@pytest.fixture(autouse=True)
def _no_failover_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment overrides the file; start every test without FAILOVER_ variables."""
    for name in list(os.environ):
        if name.startswith("FAILOVER_"):
            monkeypatch.delenv(name)


def config(**blocks: Any) -> dict[str, Any]:
    """A valid one-origin config with the given top-level blocks added or replaced."""
    data: dict[str, Any] = {"origins": [{"name": "a", "url": "http://127.0.0.1:9001"}]}
    data.update(blocks)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_settings(data)
    return info.value.problems


# --- the example from the spec ---------------------------------------------------------------


def test_spec_example_parses_into_the_values_it_states(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, SPEC_EXAMPLE))

    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 8080)
    primary, secondary = settings.origins
    assert (primary.name, primary.url, primary.priority, primary.weight) == (
        "primary",
        "http://127.0.0.1:9001",
        0,
        1,
    )
    assert primary.host_header is None
    assert primary.preserve_host is False
    assert (secondary.name, secondary.url, secondary.priority) == (
        "secondary",
        "http://127.0.0.1:9002",
        1,
    )
    health = settings.health
    assert (health.path, health.method, health.interval, health.timeout) == ("/", "GET", 2.0, 1.0)
    assert (health.healthy_threshold, health.unhealthy_threshold) == (2, 2)
    assert 200 in health.expect_status
    assert 399 in health.expect_status
    assert 400 not in health.expect_status
    passive = settings.passive
    assert (passive.consecutive_failures, passive.error_rate, passive.window) == (3, 0.5, 10.0)
    assert (passive.min_requests, passive.ejection_time, passive.max_ejection_time) == (
        10,
        30.0,
        300.0,
    )
    assert settings.failback.hold_down == 30.0
    assert settings.retry.attempts == 2
    assert settings.retry.on == ["connect-failure", "reset", "timeout", 502, 503, 504]
    assert settings.retry.methods == ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]
    assert settings.retry.max_buffered_body == 1_048_576
    timeouts = settings.timeouts
    assert (timeouts.connect, timeouts.first_byte, timeouts.idle) == (2.0, 10.0, 60.0)
    assert settings.admin.prefix == "/_failover"
    assert settings.admin.token is None
    assert settings.admin.allow == ["127.0.0.0/8", "::1/128"]


def test_per_origin_health_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, SPEC_EXAMPLE))
    primary, secondary = settings.origins

    primary_health = settings.pools["default"].health_for(primary)
    assert primary_health.path == "/health"
    # Every other key still comes from the top-level health block.
    assert primary_health.model_dump(exclude={"path"}) == settings.health.model_dump(
        exclude={"path"}
    )
    assert settings.pools["default"].health_for(secondary) == settings.health


def test_per_origin_health_override_parses_durations_and_statuses() -> None:
    settings = build_settings(
        {
            "origins": [
                {
                    "name": "a",
                    "url": "http://127.0.0.1:9001",
                    "health": {"interval": "500ms", "expect_status": "204"},
                }
            ],
            "health": {"path": "/ping", "interval": "5s"},
        }
    )
    health = settings.pools["default"].health_for(settings.origins[0])
    assert health.interval == 0.5
    assert health.path == "/ping"
    assert 204 in health.expect_status
    assert 200 not in health.expect_status


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        (2, 2.0),
        (1.5, 1.5),
        ("3", 3.0),
        ("5e-1", 0.5),
        ("1e3ms", 1.0),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        (" 250ms ", 0.25),
    ],
)
def test_durations_accept_seconds_and_units(written: object, seconds: float) -> None:
    settings = build_settings(config(health={"interval": written}))
    assert settings.health.interval == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("written", "line"),
    [
        ("soon", f"health.interval: 'soon' {NOT_A_DURATION}"),
        ("-1", f"health.interval: '-1' {NOT_A_DURATION}"),
        ("2 fortnights", f"health.interval: '2 fortnights' {NOT_A_DURATION}"),
        (True, f"health.interval: True {NOT_A_DURATION}"),
        (0, "health.interval: Input should be greater than 0, got 0"),
        ("0s", "health.interval: Input should be greater than 0, got '0s'"),
        (-1, "health.interval: Input should be greater than 0, got -1"),
    ],
)
def test_bad_durations_are_rejected_by_name(written: object, line: str) -> None:
    assert problems(config(health={"interval": written})) == [line]


def test_a_zero_hold_down_is_allowed_where_a_positive_interval_is_not() -> None:
    assert build_settings(config(failback={"hold_down": 0})).failback.hold_down == 0.0
    assert problems(config(timeouts={"connect": "0ms"})) == [
        "timeouts.connect: Input should be greater than 0, got '0ms'"
    ]


@given(
    share=st.floats(min_value=1e-15, max_value=0.999),
    unit=st.sampled_from([("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)]),
)
def test_any_positive_duration_string_up_to_a_year_parses_to_its_seconds(
    share: float, unit: tuple[str, float]
) -> None:
    suffix, factor = unit
    n = share * MAX_DURATION / factor
    written = f"{n}{suffix}"
    assert math.isclose(parse_duration(written), n * factor, rel_tol=1e-12)
    settings = build_settings(config(health={"interval": written}))
    assert math.isclose(settings.health.interval, n * factor, rel_tol=1e-12)


# --- environment overrides -------------------------------------------------------------------

ENV_FILE = """\
origins:
  - {name: a, url: "http://127.0.0.1:9001"}
failback: {hold_down: 30, flap_window: 5, max_hold_down: 100}
listen: {host: 127.0.0.1, port: 8080}
"""


def test_environment_overrides_one_nested_key_and_keeps_the_rest_of_the_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, ENV_FILE)
    assert load_config(path).failback.hold_down == 30.0

    monkeypatch.setenv("FAILOVER_FAILBACK__HOLD_DOWN", "10")
    monkeypatch.setenv("FAILOVER_LISTEN__PORT", "9999")
    settings = load_config(path)

    assert settings.failback.hold_down == 10.0
    assert settings.failback.flap_window == 5.0
    assert settings.failback.max_hold_down == 100.0
    assert (settings.listen.host, settings.listen.port) == ("127.0.0.1", 9999)
    assert [origin.name for origin in settings.origins] == ["a"]


def test_environment_values_are_parsed_like_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAILOVER_FAILBACK__HOLD_DOWN", "1m")
    assert load_config(write(tmp_path, ENV_FILE)).failback.hold_down == 60.0


def test_bad_environment_values_are_reported_with_their_key_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, ENV_FILE)
    monkeypatch.setenv("FAILOVER_FAILBACK__HOLD_DOWN", "soon")
    assert file_problems(path) == [f"failback.hold_down: 'soon' {NOT_A_DURATION}"]
    # The override is validated together with the file: 200 s is longer than the file's cap.
    monkeypatch.setenv("FAILOVER_FAILBACK__HOLD_DOWN", "200")
    assert file_problems(path) == ["failback: max_hold_down (100) is shorter than hold_down (200)"]


# --- YAML details ----------------------------------------------------------------------------


def test_the_key_on_under_retry_is_the_string_on(tmp_path: Path) -> None:
    text = 'origins:\n  - {name: a, url: "http://127.0.0.1:9001"}\nretry:\n  on: [reset, 503]\n'
    settings = load_config(write(tmp_path, text))
    assert settings.retry.on == ["reset", 503]


def test_yaml_true_and_false_are_still_booleans(tmp_path: Path) -> None:
    text = (
        'origins:\n  - {name: a, url: "http://127.0.0.1:9001", preserve_host: true}\n'
        "health: {enabled: false}\n"
    )
    settings = load_config(write(tmp_path, text))
    assert settings.origins[0].preserve_host is True
    assert settings.health.enabled is False


def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert file_problems(path) == [f"{path}: expected a mapping of settings, got list"]


def test_an_empty_file_asks_for_origins(tmp_path: Path) -> None:
    assert file_problems(write(tmp_path, "")) == [
        "origins: is required (or pools, for several sites)"
    ]


# --- expected statuses -----------------------------------------------------------------------


def test_expect_status_takes_ranges_and_lists() -> None:
    settings = build_settings(config(health={"expect_status": "200-299,304"}))
    statuses = settings.health.expect_status
    assert all(status in statuses for status in (200, 250, 299, 304))
    assert all(status not in statuses for status in (199, 300, 303, 305, 404, 500))


def test_expect_status_takes_a_single_number() -> None:
    statuses = build_settings(config(health={"expect_status": 204})).health.expect_status
    assert 204 in statuses
    assert 200 not in statuses


def test_status_set_ignores_non_integers() -> None:
    statuses = StatusSet("200-299")
    assert "200" not in statuses
    assert 200.0 not in statuses


@pytest.mark.parametrize(
    ("written", "line"),
    [
        ("2xx", "health.expect_status: '2xx' is not a status list (expected e.g. '200-299,304')"),
        ("600", "health.expect_status: '600' in '600' is not a status range within 100-599"),
        (
            "299-200",
            "health.expect_status: '299-200' in '299-200' is not a status range within 100-599",
        ),
    ],
)
def test_bad_expect_status_is_rejected(written: str, line: str) -> None:
    assert problems(config(health={"expect_status": written})) == [line]


# --- bad inputs: one line each, naming the key path ------------------------------------------

ORIGIN_A = {"name": "a", "url": "http://127.0.0.1:9001"}


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        pytest.param(
            {"origins": [ORIGIN_A, {"name": "b", "url": "ftp://x"}]},
            ["origins[1].url: 'ftp://x' is not an http(s) URL"],
            id="ftp-url",
        ),
        pytest.param(
            {"origins": [{"name": "a", "url": "http://"}]},
            ["origins[0].url: 'http://' has no host"],
            id="url-without-host",
        ),
        pytest.param(
            config(bogus=1),
            [f"bogus: {UNKNOWN_KEY}"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            config(health={"colour": "red"}),
            [f"health.colour: {UNKNOWN_KEY}"],
            id="unknown-nested-key",
        ),
        pytest.param(
            {"origins": [ORIGIN_A, {**ORIGIN_A, "name": "b", "helth": {}}]},
            [f"origins[1].helth: {UNKNOWN_KEY}"],
            id="unknown-key-in-origin",
        ),
        pytest.param(
            {"origins": [{**ORIGIN_A, "health": {"colour": "red"}}]},
            [f"origins[0].health.colour: {UNKNOWN_KEY}"],
            id="unknown-key-in-origin-health",
        ),
        pytest.param(
            {"origins": [ORIGIN_A, {"name": "a", "url": "http://127.0.0.1:9002"}]},
            ["origins: duplicate origin name 'a'"],
            id="duplicate-names",
        ),
        pytest.param({"origins": []}, ["origins: at least one origin is required"], id="none"),
        pytest.param(
            {}, ["origins: is required (or pools, for several sites)"], id="origins-missing"
        ),
        pytest.param(
            config(health={"interval": 0}),
            ["health.interval: Input should be greater than 0, got 0"],
            id="zero-interval",
        ),
        pytest.param(
            config(health={"interval": -2}),
            ["health.interval: Input should be greater than 0, got -2"],
            id="negative-interval",
        ),
        pytest.param(
            config(health={"healthy_threshold": 0}),
            ["health.healthy_threshold: Input should be greater than or equal to 1, got 0"],
            id="zero-threshold",
        ),
        pytest.param(
            {"origins": [{"name": "b c", "url": "http://127.0.0.1:9001"}]},
            ["origins[0].name: 'b c' may only hold letters, digits, '-' and '_'"],
            id="bad-name",
        ),
        pytest.param(
            config(retry={"on": ["reset", "sometimes"]}),
            [
                "retry.on: 'sometimes' is not a retry condition "
                "(expected one of connect-failure, reset, timeout or an HTTP status)"
            ],
            id="bad-retry-condition",
        ),
        pytest.param(
            config(retry={"on": [503, 700]}),
            ["retry.on: 700 is not an HTTP status"],
            id="bad-retry-status",
        ),
        pytest.param(
            config(admin={"allow": ["127.0.0.0/8", "not-a-net"]}),
            ["admin.allow: 'not-a-net' is not an IP network (e.g. '10.0.0.0/8')"],
            id="bad-admin-allow",
        ),
        pytest.param(
            config(failback={"hold_down": "30s", "max_hold_down": "10s"}),
            ["failback: max_hold_down (10) is shorter than hold_down (30)"],
            id="max-hold-down-below-hold-down",
        ),
    ],
)
def test_each_bad_input_is_one_line_naming_its_path(data: dict[str, Any], lines: list[str]) -> None:
    assert problems(data) == lines


BAD_FILE = """\
origins:
  - name: a
    url: http://127.0.0.1:9001
    helth: {path: /health}
  - name: b
    url: ftp://x
  - name: "c d"
    url: http://127.0.0.1:9003
bogus: 1
health: {interval: 0, healthy_threshold: 0}
retry: {on: [sometimes]}
admin: {allow: [not-a-net]}
failback: {hold_down: 30, max_hold_down: 10}
"""


def test_every_problem_in_a_file_is_reported_once(tmp_path: Path) -> None:
    reported = file_problems(write(tmp_path, BAD_FILE))
    expected = [
        f"origins[0].helth: {UNKNOWN_KEY}",
        "origins[1].url: 'ftp://x' is not an http(s) URL",
        "origins[2].name: 'c d' may only hold letters, digits, '-' and '_'",
        f"bogus: {UNKNOWN_KEY}",
        "health.interval: Input should be greater than 0, got 0",
        "health.healthy_threshold: Input should be greater than or equal to 1, got 0",
        "retry.on: 'sometimes' is not a retry condition "
        "(expected one of connect-failure, reset, timeout or an HTTP status)",
        "admin.allow: 'not-a-net' is not an IP network (e.g. '10.0.0.0/8')",
        "failback: max_hold_down (10) is shorter than hold_down (30)",
    ]
    assert sorted(reported) == sorted(expected)
    assert len(reported) == len(expected)


def test_config_error_message_is_the_problem_lines(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BAD_FILE))
    assert str(info.value).splitlines() == info.value.problems


def test_settings_are_frozen(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, SPEC_EXAMPLE))
    assert isinstance(settings, Settings)
    with pytest.raises(ValueError, match="frozen"):
        settings.shutdown_timeout = 1.0  # type: ignore[misc]


def test_duplicate_names_are_reported_beside_other_problems() -> None:
    # One round of fixes must be enough: the duplicate is named even while another origin
    # entry is invalid too.
    assert problems(
        {
            "origins": [
                {"name": "a", "url": "ftp://x"},
                {"name": "a", "url": "http://127.0.0.1:9002"},
            ]
        }
    ) == ["origins[0].url: 'ftp://x' is not an http(s) URL", "origins: duplicate origin name 'a'"]


# --- bounds and warnings ---------------------------------------------------------------------


def test_a_status_list_of_thousands_of_ranges_is_merged() -> None:
    statuses = StatusSet(",".join(["100-599", "200", "300-301"] * 10_000))
    assert statuses.codes == frozenset(range(100, 600))


def test_a_short_admin_token_is_a_warning_not_an_error() -> None:
    assert build_settings(config(admin={"token": "sesame"})).warnings() == [
        "admin.token: 6 characters is short for a secret; use at least 16 "
        "(e.g. `openssl rand -hex 16`)"
    ]
    assert build_settings(config(admin={"token": "0123456789abcdef"})).warnings() == []
    assert build_settings(config()).warnings() == []


def test_the_longest_duration_is_a_year() -> None:
    settings = build_settings(config(health={"interval": "8760h"}))
    assert settings.health.interval == MAX_DURATION == 365 * 86400
    assert problems(config(health={"interval": MAX_DURATION + 1})) == [
        "health.interval: 31536001.0 is longer than a year (the most a duration may be)"
    ]


def test_a_null_per_origin_duration_falls_back_to_the_health_block() -> None:
    origin = {**ORIGIN_A, "health": {"interval": None, "timeout": None}}
    settings = build_settings({"origins": [origin], "health": {"interval": "3s"}})
    assert settings.pools["default"].health_for(settings.origins[0]).interval == 3.0


def test_a_problem_line_quotes_long_values_short() -> None:
    [line] = problems(config(health={"method": "G" * 1000 + " "}))
    assert line == f"health.method: '{'G' * 59}... (1001 characters) is not an HTTP method"


NOT_JSON = "is not JSON (a list or mapping is expected here)"


EMPTY_TOKEN = (
    "admin.token: empty; set a secret of at least 16 characters or leave it unset to turn "
    "admin mutations off"
)


@pytest.mark.parametrize("key", ["_cli_parse_args: true", "_secrets_dir: /etc", "_env_file: x"])
def test_keys_that_would_reach_pydantic_settings_options_are_unknown(
    tmp_path: Path, key: str
) -> None:
    path = write(tmp_path, ORIGIN + key + "\n")
    assert refused(check(path, tmp_path)) == [f"{key.split(':')[0]}: {UNKNOWN_KEY}"]


def test_a_key_that_is_not_a_string_is_unknown(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "1: x\n~: y\n")
    assert refused(check(path, tmp_path)) == [f"1: {UNKNOWN_KEY}", f"None: {UNKNOWN_KEY}"]


def test_thousands_of_problems_are_cut_to_fifty_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "origins: [" + ", ".join(str(n) for n in range(5000)) + "]\n")
    lines = refused(check(path, tmp_path))
    assert len(lines) == 51
    assert (
        lines[0]
        == "origins[0]: Input should be a valid dictionary or instance of OriginConfig, got 0"
    )
    assert lines[-1] == "... and 4950 more problems"


def test_a_bug_in_validation_still_ends_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(path: Path) -> None:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "load_config", broken)
    path = write(tmp_path, ORIGIN)
    assert cli.main(["check", str(path)]) == 2
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"{path}: cannot check: RuntimeError: a bug over two lines\n",
    )


# --- the environment -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FAILOVER_ORIGINS", "garbage"),
        ("FAILOVER_HEALTH", "garbage"),
        ("FAILOVER_HEALTH__HEADERS", "X-A: 1"),
        ("FAILOVER_ADMIN__ALLOW", "10.0.0.0/8"),
        ("FAILOVER_EVENTS__WEBHOOKS", "[http://hooks.example]"),
    ],
)
def test_an_environment_list_or_mapping_that_is_not_json_is_named(
    tmp_path: Path, name: str, value: str
) -> None:
    result = check(write(tmp_path, ORIGIN), tmp_path, **{name: value})
    assert refused(result) == [f"{name}: {value!r} {NOT_JSON}"]


def test_every_bad_environment_variable_is_named_at_once(tmp_path: Path) -> None:
    result = check(
        write(tmp_path, ORIGIN),
        tmp_path,
        FAILOVER_ORIGINS="garbage",
        FAILOVER_RETRY__ON="reset",
        FAILOVER_HEALTH__INTERVAL="2s",
    )
    assert sorted(refused(result)) == [
        f"FAILOVER_ORIGINS: 'garbage' {NOT_JSON}",
        f"FAILOVER_RETRY__ON: 'reset' {NOT_JSON}",
    ]


def test_environment_json_nested_past_recursion_is_named(tmp_path: Path) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    result = check(write(tmp_path, ORIGIN), tmp_path, FAILOVER_ORIGINS=deep)
    assert refused(result) == ["FAILOVER_ORIGINS: JSON nested too deeply"]


def test_environment_values_are_checked_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN)
    result = check(path, tmp_path, FAILOVER_HEALTH__INTERVAL="inf", FAILOVER_PROXY__VIA="a\r\nb")
    assert sorted(refused(result)) == [
        f"health.interval: 'inf' {NOT_A_DURATION}",
        "proxy.via: 'a\\r\\nb' is not a Via pseudonym (a token such as 'failover', or host[:port])",
    ]


# --- values that `check` accepted but `run` could not start with ------------------------------

NOT_A_METHOD = "is not an HTTP method"
TOO_LONG = "is longer than a year (the most a duration may be)"
NOT_FINITE = "Input should be a finite number, got"
AT_MOST_1M = "Input should be less than or equal to 1000000, got"
NOT_A_PATH = "is not a request path (printable ASCII without spaces; percent-encode the rest)"
NOT_A_HEADER = "is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
NOT_VIA = "is not a Via pseudonym (a token such as 'failover', or host[:port])"
NOT_A_PREFIX = "is not a path prefix such as '/_failover'"
NOT_ASCII_URL = (
    "is not an http(s) URL (printable ASCII without spaces: percent-encode the path, "
    "write the host in punycode)"
)
NOT_A_STATUS_LIST = "is not a status list (expected e.g. '200-299,304')"
NOT_A_REGEX = "is not a regular expression:"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # Durations: finite, at most a year (asyncio timers and round() overflow beyond).
        ("health: {interval: .inf}", f"health.interval: inf {TOO_LONG}"),
        ("health: {interval: -.inf}", f"health.interval: {NOT_FINITE} -inf"),
        ("health: {interval: .nan}", f"health.interval: nan {NOT_A_DURATION}"),
        ("timeouts: {idle: 1e400}", f"timeouts.idle: '1e400' {TOO_LONG}"),
        ("timeouts: {connect: 1.0e+400}", f"timeouts.connect: inf {TOO_LONG}"),
        ("failback: {max_hold_down: 8761h}", f"failback.max_hold_down: '8761h' {TOO_LONG}"),
        ("shutdown_timeout: " + "9" * 30, f"shutdown_timeout: {'9' * 30} {TOO_LONG}"),
        ("passive: {error_rate: .nan}", f"passive.error_rate: {NOT_FINITE} nan"),
        ("retry: {budget: .inf}", f"retry.budget: {NOT_FINITE} inf"),
        # Integers: integers, with sane upper bounds.
        (
            "events: {history: 1e30}",
            "events.history: Input should be a valid integer, unable to parse string as an "
            "integer, got '1e30'",
        ),
        (
            "events: {history: 1.0e+30}",
            "events.history: Unable to parse input string as an integer, exceeded maximum "
            "size, got 1e+30",
        ),
        ("events: {history: 1.0e+9}", f"events.history: {AT_MOST_1M} 1000000000.0"),
        ("events: {history: 1" + "0" * 23 + "}", f"events.history: {AT_MOST_1M} 1{'0' * 23}"),
        (
            "events: {webhook_queue: 0x" + "f" * 60 + "}",
            f"events.webhook_queue: {AT_MOST_1M} an integer of 73 digits",
        ),
        (
            "events: {webhook_queue: 0x" + "f" * 63 + "}",
            "$PATH:3:25: an integer of 65 digits is too large",
        ),
        (
            "proxy: {max_connections_per_origin: 1000001}",
            f"proxy.max_connections_per_origin: {AT_MOST_1M} 1000001",
        ),
        (
            "health: {expect_status: " + "9" * 60 + "}",
            f"health.expect_status: an integer of 60 digits {NOT_A_STATUS_LIST}",
        ),
        # Strings that end up in HTTP heads: no CR, LF or other control characters.
        ('health: {method: "GET\\n"}', f"health.method: 'GET\\n' {NOT_A_METHOD}"),
        ('retry: {methods: [GET, "PUT\\r\\n"]}', f"retry.methods[1]: 'PUT\\r\\n' {NOT_A_METHOD}"),
        ('health: {path: "/a b"}', f"health.path: '/a b' {NOT_A_PATH}"),
        ('health: {path: "/\\r\\nX: 1"}', f"health.path: '/\\r\\nX: 1' {NOT_A_PATH}"),
        (
            'health: {headers: {"X-A\\r\\nX-B": 1}}',
            "health.headers['X-A\\r\\nX-B']: Input should be a valid string, got 1",
        ),
        (
            'health: {headers: {"X-A\\r\\nX-B": "1"}}',
            f"health.headers: 'X-A\\r\\nX-B' {NOT_A_HEADER}",
        ),
        ('health: {headers: {"X A": "1"}}', f"health.headers: 'X A' {NOT_A_HEADER}"),
        (
            'health: {headers: {X-A: "1\\r\\nX-B: 2"}}',
            "health.headers: the value of 'X-A', '1\\r\\nX-B: 2', holds a control character",
        ),
        (
            'proxy: {via: "failover\\r\\nX-Injected: 1"}',
            f"proxy.via: 'failover\\r\\nX-Injected: 1' {NOT_VIA}",
        ),
        ('admin: {prefix: "/_failover\\n"}', f"admin.prefix: '/_failover\\n' {NOT_A_PREFIX}"),
        ('admin: {prefix: "/a\\r\\nb"}', f"admin.prefix: '/a\\r\\nb' {NOT_A_PREFIX}"),
        (
            'listen: {host: "127.0.0.1\\n"}',
            "listen.host: '127.0.0.1\\n' is not a host name or IP address",
        ),
        (
            'events: {webhooks: ["http://hooks.example/a b"]}',
            f"events.webhooks: 'http://hooks.example/a b' {NOT_ASCII_URL}",
        ),
        # Files that would block the start-up.
        (
            "admin: {state_file: /dev/zero}",
            "admin.state_file: '/dev/zero' is not a regular file (a character device)",
        ),
        ('admin: {state_file: "a\\0b"}', "admin.state_file: 'a\\x00b' is not a file path"),
        # Regular expressions that cannot compile, and Redis URLs redis-py cannot parse.
        (
            'health: {expect_body: "a{4294967296}"}',
            f"health.expect_body: 'a{{4294967296}}' {NOT_A_REGEX} the repetition number is "
            "too large",
        ),
        (
            "health: {expect_body: '" + "(" * 1000 + ")" * 1000 + "'}",
            f"health.expect_body: '{'(' * 59}... (2000 characters) {NOT_A_REGEX} maximum "
            "recursion depth exceeded while calling a Python object",
        ),
        (
            'fleet: {redis_url: "redis://h:abc"}',
            "fleet.redis_url: 'redis://h:abc' is not a redis:// or rediss:// URL: Port could "
            "not be cast to integer value as 'abc'",
        ),
    ],
)
def test_values_that_would_break_run_are_refused(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, ORIGIN + text + "\n")
    assert refused(check(path, tmp_path)) == [line.replace("$PATH", str(path))]


@pytest.mark.parametrize(
    ("origin", "line"),
    [
        ('name: "a\\n"', "origins[0].name: 'a\\n' may only hold letters, digits, '-' and '_'"),
        (
            'host_header: "cdn.example\\r\\nX-Injected: 1"',
            "origins[0].host_header: 'cdn.example\\r\\nX-Injected: 1' is not a Host header "
            "value (host[:port])",
        ),
        (
            'url: "http://cdn.exa\\nmple/"',
            f"origins[0].url: 'http://cdn.exa\\nmple/' {NOT_ASCII_URL}",
        ),
        ('url: "http://[::1"', "origins[0].url: 'http://[::1' has an invalid host or port"),
        (
            'url: "http://cdn.example:0"',
            "origins[0].url: 'http://cdn.example:0' has an invalid port",
        ),
        ('health: {method: "GET\\r\\n"}', f"origins[0].health.method: 'GET\\r\\n' {NOT_A_METHOD}"),
        ('health: {path: "health"}', "origins[0].health.path: 'health' must start with '/'"),
        (
            'health: {headers: {X-A: "\\0"}}',
            "origins[0].health.headers: the value of 'X-A', '\\x00', holds a control character",
        ),
        (
            'health: {expect_body: "("}',
            f"origins[0].health.expect_body: '(' {NOT_A_REGEX} missing ), unterminated subpattern "
            "at position 0",
        ),
        ("health: {interval: .inf}", f"origins[0].health.interval: inf {TOO_LONG}"),
        (
            "priority: 1001",
            "origins[0].priority: Input should be less than or equal to 1000, got 1001",
        ),
    ],
)
def test_per_origin_values_are_checked_like_the_top_level_ones(
    tmp_path: Path, origin: str, line: str
) -> None:
    fields = {"name": "a", "url": '"http://127.0.0.1:9001"'}
    key = origin.split(":")[0]
    fields[key] = origin.split(": ", 1)[1]
    text = "origins:\n  - {" + ", ".join(f"{k}: {v}" for k, v in fields.items()) + "}\n"
    assert refused(check(write(tmp_path, text), tmp_path)) == [line]


# --- the admin token -------------------------------------------------------------------------


@pytest.mark.parametrize("token", ['""', '"   "', '"\\t\\n"'])
def test_an_empty_admin_token_is_an_error(tmp_path: Path, token: str) -> None:
    path = write(tmp_path, ORIGIN + f"admin: {{token: {token}}}\n")
    assert refused(check(path, tmp_path)) == [EMPTY_TOKEN]


def test_an_empty_admin_token_from_the_environment_is_an_error(tmp_path: Path) -> None:
    result = check(write(tmp_path, ORIGIN), tmp_path, FAILOVER_ADMIN__TOKEN="")
    assert refused(result) == [EMPTY_TOKEN]


def test_an_admin_token_clients_cannot_send_is_an_error_that_does_not_echo_it(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, ORIGIN + 'admin: {token: "sesame street is open"}\n')
    lines = refused(check(path, tmp_path))
    assert lines == [
        "admin.token: may only hold printable ASCII without spaces (clients send it in an "
        "Authorization header)"
    ]
    path = write(tmp_path, ORIGIN + "admin: {token: 12345678901234567890}\n")
    assert refused(check(path, tmp_path)) == ["admin.token: Input should be a valid string"]


def test_a_short_admin_token_is_a_warning_and_check_still_passes(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "admin: {token: sesame}\n")
    result = check(path, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok; origins: a (priority 0)\n"
    assert result.stderr == (
        "warning: admin.token: 6 characters is short for a secret; use at least 16 "
        "(e.g. `openssl rand -hex 16`)\n"
    )


def test_a_long_admin_token_gives_no_warning(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "admin: {token: 0123456789abcdef}\n")
    result = check(path, tmp_path)
    assert (result.returncode, result.stderr) == (0, "")


async def test_run_logs_the_warnings_at_start(tmp_path: Path, make_origin: Any) -> None:
    origin = await make_origin("primary")
    port = free_port()
    path = write_config(tmp_path, serving_config(origin.url, admin={"token": "sesame"}))
    with started("run", "--config", str(path), "--port", str(port), cwd=tmp_path) as process:
        await process.wait_until_serving(port)
        process.popen.send_signal(signal.SIGTERM)
        assert await process.wait_for_exit(10) == 0
    warnings = [line for line in process.stderr.splitlines() if " WARNING " in line]
    assert [line.split(" WARNING ", 1)[1] for line in warnings] == [
        "failover: admin.token: 6 characters is short for a secret; use at least 16 "
        "(e.g. `openssl rand -hex 16`)"
    ]


# --- timers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop])
def test_the_longest_duration_arms_every_timer_the_proxy_uses(loop_factory: Any) -> None:
    async def arm() -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(MAX_DURATION, lambda: None).cancel()
        async with asyncio.timeout(MAX_DURATION):
            await asyncio.sleep(0)
        sleeper = asyncio.ensure_future(asyncio.sleep(MAX_DURATION))
        await asyncio.sleep(0)
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
        assert round(MAX_DURATION) > 0

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(arm())


# --- every config `check` accepts, `run` can start with ----------------------------------------

MISSING_STATE = "/nonexistent-failover-test/overrides.json"

# Plausible values by key name: mostly valid, some at the edge; hostile ones come on top.
PLAUSIBLE: dict[str, list[Any]] = {
    "url": [
        "http://127.0.0.1:9001",
        "https://cdn-a.example.net",
        "http://[::1]:8080/prefix/",
        "https://cdn.example:443/a%20b",
        "http://h:65535",
        "http://xn--bcher-kva.example",
    ],
    "name": ["a", "cdn-a", "CDN_2", "x" * 100],
    "host": ["127.0.0.1", "::1", "localhost", "0.0.0.0"],
    "path": ["/", "/health", "/a?b=c&d", "/%C3%A9"],
    "method": ["GET", "head", "OPTIONS", "X-CUSTOM"],
    "host_header": ["cdn.example.com", "example.com:8080", "[::1]:80", "", None],
    "via": ["failover", "edge-1", "proxy.example:8080"],
    "prefix": ["/_failover", "/admin/x/", "/a"],
    "token": [None, "0123456789abcdef", "short", "!#$%&'*+-.^_`|~=" * 2],
    "state_file": [None, MISSING_STATE],
    "expect_body": [None, "ok", "^\\s*\\{", "(a|b)+", "é"],
    "redis_url": ["redis://127.0.0.1:6379/0", "rediss://:pw@127.0.0.1:6380/1", "unix:///tmp/r"],
    "key_prefix": ["failover:", "", "ünïcode:"],
    "webhooks": [[], ["http://127.0.0.1:9/hook"]],
    "allow": [["127.0.0.0/8", "::1/128"], ["10.0.0.0/8"], []],
    "trust_forwarded": [[], ["127.0.0.1"]],
    "on": [["connect-failure", "reset", "timeout", 502, 503, 504], [], [500, "reset"]],
    "methods": [["GET", "HEAD"], ["post"], []],
    "headers": [{}, {"X-Probe": "1"}, {"Accept": "text/html;\tq=0.9"}, {"X-É": "v"}],
    "expect_status": ["200-399", "200", 204, "200-299,304", "100-599", "599"],
    "failure_statuses": ["500-599", "502,503", 500],
    "client": ["native", "aiohttp"],
    "all_down": ["try-all", "503", "stale"],
}
HOSTILE_SCALARS: list[Any] = [
    None,
    True,
    0,
    -1,
    2**63,
    10**30,
    10**400,
    -(10**400),
    1e30,
    2.5,
    float("inf"),
    float("-inf"),
    float("nan"),
    "",
    " ",
    "a\n",
    "\r\nX-Injected: 1",
    "\x00",
    "\x7f",
    "é",
    "日本",
    "x" * 10_000,
    "1e400",
    "8761h",
    [],
    {},
    [[[[]]]],
    {"unknown": 1},
]


def _duration_strategy() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from([0.001, 0.5, 2, "500ms", "2s", "1.5m", "1h", "8760h", MAX_DURATION, 0]),
        st.floats(min_value=1e-9, max_value=MAX_DURATION),
    )


def _bounds(metadata: list[Any]) -> tuple[int, int]:
    low, high = -(2**31), 2**31
    for item in metadata:
        low = max(low, getattr(item, "ge", low), getattr(item, "gt", low - 1) + 1)
        high = min(high, getattr(item, "le", high), getattr(item, "lt", high + 1) - 1)
    return int(low), int(high)


def _hostile_strategy() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(HOSTILE_SCALARS),
        st.text(max_size=20),  # any unicode, control characters included
        st.integers(),
        st.floats(),
    )


@st.composite
def _value(draw: st.DrawFn, key: str, annotation: Any, metadata: list[Any], rate: int) -> Any:
    """A value for `key` of the given type: hostile with probability `rate` percent."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        return draw(_value(key, base, [*metadata, *extra], rate))
    if draw(st.integers(0, 99)) < rate:
        return draw(_hostile_strategy())
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [arg for arg in get_args(annotation) if arg is not type(None)]
        if type(None) in get_args(annotation) and draw(st.booleans()):
            return None
        return draw(_value(key, draw(st.sampled_from(options)), metadata, rate))
    if any(isinstance(item, BeforeValidator) and item.func is parse_duration for item in metadata):
        return draw(_duration_strategy())
    if key in PLAUSIBLE and (
        origin not in (list, dict) or draw(st.booleans())
    ):  # lists and dicts: sometimes built from their item type instead
        return draw(st.sampled_from(PLAUSIBLE[key]))
    if origin is Literal:
        return draw(st.sampled_from(get_args(annotation)))
    if origin is list:
        [item] = get_args(annotation)
        return draw(st.lists(_value(key, item, [], rate), max_size=3))
    if origin is dict:
        names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,8}", fullmatch=True)
        values = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=10)
        return draw(st.dictionaries(names, values, max_size=3))
    if annotation is bool:
        return draw(st.booleans())
    if annotation is int:
        low, high = _bounds(metadata)
        return draw(
            st.one_of(st.sampled_from([low, high]), st.integers(low, min(high, low + 1000)))
        )
    if annotation is float:
        return draw(st.floats(0.0, 1.0))
    if annotation is StatusSet:
        return draw(st.sampled_from(PLAUSIBLE["expect_status"]))
    if annotation is str:
        return draw(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return draw(_block(annotation, rate))
    raise AssertionError(f"no strategy for {key}: {annotation!r}")


def _field(draw: st.DrawFn, key: str, field: FieldInfo, rate: int) -> Any:
    return draw(_value(key, field.annotation, list(field.metadata), rate))


@st.composite
def _block(draw: st.DrawFn, model: type[BaseModel], rate: int) -> dict[str, Any]:
    block: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        if field.is_required() or draw(st.integers(0, 99)) < 30:
            block[key] = _field(draw, key, field, rate)
    if draw(st.integers(0, 99)) < rate:
        block[draw(st.sampled_from(["colour", "helth", "_cli_parse_args"]))] = 1
    return block


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A config drawn from the schema: clean, with a few hostile values, or wild."""
    rate = draw(st.sampled_from([0, 0, 1, 3, 30]))
    config = draw(_block(Settings, rate))
    if isinstance(config.get("origins"), list):
        # Unique names most of the time, so that more configs get as far as the app.
        for index, origin in enumerate(config["origins"]):
            if isinstance(origin, dict) and draw(st.integers(0, 9)) > 0:
                origin["name"] = f"o{index}"
    return config


async def _start_parts(settings: Settings) -> None:
    """Build the app and the parts its start-up builds, without touching the network."""
    app = App(settings)
    try:
        uvicorn_config(settings, app)
        for origin in app.origins:
            app.upstream.add(origin)
            health = origin.health
            next_delay(health, True, random.Random(1))
            next_delay(health, False, random.Random(1))
            # The probe's request head, as the native client writes it.
            headers = {"Host": origin.host_header, "User-Agent": "failover-health-check"}
            headers.update(health.headers)
            prefix = origin.pool.prefix if isinstance(origin.pool, h1.Pool) else ""
            h1._request_head(health.method, prefix + health.path, headers.items(), False)
        app.engine.tick()
        settings.warnings()
        # An event goes into the bounded history (and the webhook queue, if any).
        app.events.emit("config-reloaded", "-", "", "", "test")
    finally:
        await app.upstream.close()
        if app.fleet is not None:
            await app.fleet.redis.aclose()


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(config=configs())
def test_every_config_check_accepts_builds_the_app(config: dict[str, Any]) -> None:
    try:
        settings = build_settings(config)
    except ConfigError as error:
        event("refused")
        assert error.problems
        for problem in error.problems:
            assert "\n" not in problem and "\r" not in problem
            assert len(problem) < 400, problem
        return
    event("built")
    asyncio.run(_start_parts(settings))


def test_a_route_host_that_is_not_a_string_is_named_not_a_crash() -> None:
    config = {
        "pools": {"a": {"origins": [{"name": "x", "url": "http://127.0.0.1:1"}]}},
        "routes": [{"pool": "a", "host": 123}, {"pool": "a", "path": ["/x"]}],
    }
    with pytest.raises(ConfigError) as caught:
        build_settings(config)
    assert any(p.startswith("routes[0].host:") for p in caught.value.problems)
    assert any(p.startswith("routes[1].path:") for p in caught.value.problems)
