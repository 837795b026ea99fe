"""Hostile and careless config input. `failover check` answers each with one line per problem
and exit status 2, never a traceback or a hang; and every config it accepts, `run` can start
with (a property over configs generated from the schema)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
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
from tests.test_cli import cli_env, serving_config, started, write_config

CHECK_TIMEOUT = 5.0  # seconds; the target is 2 (tests/bench/config_check.py prints figures)

ORIGIN = 'origins:\n  - {name: a, url: "http://127.0.0.1:9001"}\n'
NOT_A_DURATION = "is not a duration (seconds, or e.g. '500ms', '2s', '1m')"
NOT_JSON = "is not JSON (a list or mapping is expected here)"
UNKNOWN_KEY = "unknown key (check its spelling against the config reference)"
EMPTY_TOKEN = (
    "admin.token: empty; set a secret of at least 16 characters or leave it unset to turn "
    "admin mutations off"
)


@pytest.fixture(autouse=True)
def _no_failover_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FAILOVER_"):
            monkeypatch.delenv(name)


def check(path: Path | str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`failover check PATH` as a user runs it; a hang fails the test after 5 s."""
    return subprocess.run(
        [sys.executable, "-m", "failover", "check", str(path)],
        cwd=cwd,
        env=cli_env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
    )


def refused(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The problem lines of a refused config (exit 2, nothing on stdout, no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines, "no problem was named"
    return lines


def write(tmp_path: Path, text: str | bytes, name: str = "failover.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- the file itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "nesting",
    [
        pytest.param("x: " + "[" * 1000 + "]" * 1000 + "\n", id="flow-lists"),
        pytest.param("x: " + "{a: " * 1000 + "1" + "}" * 1000 + "\n", id="flow-mappings"),
        pytest.param(
            "x:\n" + "".join(" " * level + "- \n" for level in range(0, 2000, 2)), id="block"
        ),
        # The top-level mapping is the first level.
        pytest.param("x: " + "[" * 64 + "]" * 64 + "\n", id="just-past-the-bound"),
    ],
)
def test_nesting_past_64_levels_is_refused_with_its_position(tmp_path: Path, nesting: str) -> None:
    path = write(tmp_path, ORIGIN + nesting)
    [line] = refused(check(path, tmp_path))
    assert re.fullmatch(
        rf"{re.escape(str(path))}:\d+:\d+: lists and mappings nest deeper than 64 levels", line
    ), line


def test_nesting_64_levels_deep_is_only_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "x: " + "[" * 63 + "]" * 63 + "\n")
    assert refused(check(path, tmp_path)) == [f"x: {UNKNOWN_KEY}"]


def test_a_file_that_is_not_utf8_names_the_byte_and_its_position(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN.encode() + b"health: {path: /caf\xe9}\n")
    assert refused(check(path, tmp_path)) == [
        f"{path}:3:20: byte 0xe9 is not UTF-8 (config files are UTF-8 text)"
    ]


def test_a_control_character_in_the_file_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "health: {path: /a\x1bb}\n")
    assert refused(check(path, tmp_path)) == [
        f"{path}:3:18: character '\\x1b' is not allowed in YAML"
    ]


def test_a_100000_digit_integer_is_refused_by_the_loader(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "events: {history: " + "9" * 100_000 + "}\n")
    assert refused(check(path, tmp_path)) == [
        f"{path}:3:19: an integer of 100000 digits is too large"
    ]


def test_a_100000_digit_string_for_an_integer_is_quoted_short(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + 'events: {history: "' + "9" * 100_000 + '"}\n')
    assert refused(check(path, tmp_path)) == [
        "events.history: Unable to parse input string as an integer, exceeded maximum size, "
        f"got '{'9' * 59}... (100000 characters)"
    ]


def test_a_100000_digit_environment_value_is_quoted_short(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN)
    result = check(path, tmp_path, FAILOVER_EVENTS__HISTORY="9" * 100_000)
    assert refused(result) == [
        "events.history: Unable to parse input string as an integer, exceeded maximum size, "
        f"got '{'9' * 59}... (100000 characters)"
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "config.fifo"
    os.mkfifo(path)
    assert refused(check(path, tmp_path)) == [f"{path}: not a regular file (a FIFO)"]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_without_reading_it(tmp_path: Path) -> None:
    assert refused(check("/dev/zero", tmp_path)) == [
        "/dev/zero: not a regular file (a character device)"
    ]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert refused(check(tmp_path, tmp_path)) == [f"{tmp_path}: not a regular file (a directory)"]


def test_a_file_over_1_mib_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "#" * (1024 * 1024 - len(ORIGIN)) + "\n")
    assert refused(check(path, tmp_path)) == [
        f"{path}: larger than 1 MiB, the most a config file may hold"
    ]
    # Exactly 1 MiB is still read.
    path.write_text(ORIGIN + "#" * (1024 * 1024 - len(ORIGIN) - 1) + "\n", encoding="utf-8")
    result = check(path, tmp_path)
    assert result.returncode == 0, result.stderr


def billion_laughs(levels: int = 10, fan_out: int = 10) -> str:
    lines = ["a0: &a0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for level in range(1, levels):
        refs = ", ".join([f"*a{level - 1}"] * fan_out)
        lines.append(f"a{level}: &a{level} [{refs}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    # 10^10 values once expanded; the loader stops counting at 20,000.
    path = write(tmp_path, billion_laughs() + ORIGIN + "health: {headers: *a9}\n")
    assert refused(check(path, tmp_path)) == [
        f"{path}:5:10: more than 20000 values (aliases count as what they expand to)"
    ]


def test_aliases_within_the_bound_still_work(tmp_path: Path) -> None:
    text = (
        "health: &probe {path: /health, interval: 5s}\n"
        "origins:\n"
        '  - {name: a, url: "http://127.0.0.1:9001", health: *probe}\n'
        '  - {name: b, url: "http://127.0.0.1:9002", health: {<<: *probe, path: /ping}}\n'
    )
    path = write(tmp_path, text)
    result = check(path, tmp_path)
    assert result.returncode == 0, result.stderr
    settings = load_config(path)
    a, b = (settings.pools["default"].health_for(origin) for origin in settings.origins)
    assert (a.path, a.interval, b.path, b.interval) == ("/health", 5.0, "/ping", 5.0)


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "x: &loop [*loop]\n")
    assert refused(check(path, tmp_path)) == [
        f"{path}:3:11: alias 'loop' refers to a value that contains it"
    ]


def test_a_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, ORIGIN + "health: {interval: 1s}\nhealth: {interval: 9s}\n")
    assert refused(check(path, tmp_path)) == [
        f"{path}:4:1: duplicate key 'health' (first at line 3)"
    ]


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
