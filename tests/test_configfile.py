"""Reading a config file within bounds (failover.configfile): FIFOs, devices, directories,
files over 1 MiB, bytes that are not UTF-8, deep nesting, alias bombs and duplicate keys each
end in one line naming the file (and line and column), from `failover check` as a user runs
it and from both YAML loaders.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from failover.config import load_config
from failover.configfile import LOADERS, ConfigFileError, load_yaml
from tests.helpers import ORIGIN, SPEC_EXAMPLE, UNKNOWN_KEY, check, file_problems, refused, write


@pytest.fixture(autouse=True)
def _no_failover_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FAILOVER_"):
            monkeypatch.delenv(name)


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


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "origins:\n\t- name: a\n")
    assert file_problems(path) == [
        f"{path}:2:1: YAML syntax error: found character '\\t' that cannot start any token"
    ]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    assert file_problems(path) == [f"{path}: no such file"]


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
