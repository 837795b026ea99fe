"""Configuration: the spec's example parses, durations, environment overrides, and every bad
input is reported as one `path: message` line that names what was wrong."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from failover.config import (
    MAX_DURATION,
    ConfigError,
    Settings,
    StatusSet,
    build_settings,
    load_config,
    parse_duration,
)
from failover.configfile import LOADERS, ConfigFileError, load_yaml

SPEC_EXAMPLE = """\
listen: {host: 127.0.0.1, port: 8080}
origins:
  - name: primary
    url: http://127.0.0.1:9001
    priority: 0
    weight: 1
    host_header: null
    preserve_host: false
    health: {path: /health}
  - name: secondary
    url: http://127.0.0.1:9002
    priority: 1
health: {path: /, method: GET, interval: 2.0, timeout: 1.0, healthy_threshold: 2, \
unhealthy_threshold: 2, expect_status: "200-399"}
passive: {consecutive_failures: 3, error_rate: 0.5, window: 10.0, min_requests: 10, \
ejection_time: 30.0, max_ejection_time: 300.0}
failback: {hold_down: 30.0}
retry: {attempts: 2, on: [connect-failure, reset, timeout, 502, 503, 504], \
methods: [GET, HEAD, OPTIONS, PUT, DELETE], max_buffered_body: 1048576}
timeouts: {connect: 2.0, first_byte: 10.0, idle: 60.0}
admin: {prefix: /_failover, token: null, allow: [127.0.0.0/8, "::1/128"]}
"""

UNKNOWN_KEY = "unknown key (check its spelling against the config reference)"
NOT_A_DURATION = "is not a duration (seconds, or e.g. '500ms', '2s', '1m')"


@pytest.fixture(autouse=True)
def _no_failover_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment overrides the file; start every test without FAILOVER_ variables."""
    for name in list(os.environ):
        if name.startswith("FAILOVER_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "failover.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config(**blocks: Any) -> dict[str, Any]:
    """A valid one-origin config with the given top-level blocks added or replaced."""
    data: dict[str, Any] = {"origins": [{"name": "a", "url": "http://127.0.0.1:9001"}]}
    data.update(blocks)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build_settings(data)
    return info.value.problems


def file_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
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


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "origins:\n\t- name: a\n")
    assert file_problems(path) == [
        f"{path}:2:1: YAML syntax error: found character '\\t' that cannot start any token"
    ]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert file_problems(path) == [f"{path}: no such file"]


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


BOMB = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]\n" for n in range(1, 10)
)

BLOCKS = "x:\n" + "".join(" " * n + "- \n" for n in range(0, 200, 2))


@pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)
@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x: " + "[" * 64 + "]" * 64, "lists and mappings nest deeper than 64 levels"),
        (BLOCKS, "lists and mappings nest deeper than 64 levels"),
        (BOMB, "more than 20000 values (aliases count as what they expand to)"),
        ("x: &a [*a]", "1:8: alias 'a' refers to a value that contains it"),
        ("a: 1\nb: 2\na: 3", "3:1: duplicate key 'a' (first at line 1)"),
        ("a: " + "9" * 5000, "1:4: an integer of 5000 digits is too large"),
        ("a: 1\n@b", "2:1: YAML syntax error: found character '@' that cannot start any token"),
    ],
)  # fmt: skip
def test_both_yaml_loaders_keep_the_bounds(
    tmp_path: Path, loader: type[Any], text: str, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        load_yaml(path, loader)
    assert str(info.value).startswith(f"{path}:")
    assert str(info.value).endswith(problem)


@pytest.mark.parametrize("loader", LOADERS, ids=lambda loader: loader.__name__)
def test_both_yaml_loaders_read_the_spec_example_alike(tmp_path: Path, loader: type[Any]) -> None:
    path = write(tmp_path, SPEC_EXAMPLE + "x: &x {on: [1, 2]}\ny: {<<: *x, off: true}\n")
    data = load_yaml(path, loader)
    assert data == load_yaml(path)
    assert data["y"] == {"on": [1, 2], "off": True}
