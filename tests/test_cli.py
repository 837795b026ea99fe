"""The `failover` command as a user runs it: a real subprocess of `python -m failover`."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from failover.faulty import FaultyOrigin
from tests.conftest import free_port, wait_for
from tests.helpers import cli_env, serving_config, started, write_config

BAD_CONFIG = """\
origins:
  - name: a
    url: http://127.0.0.1:9001
  - name: b
    url: ftp://x
health: {interval: 0}
"""
BAD_CONFIG_LINES = [
    "origins[1].url: 'ftp://x' is not an http(s) URL",
    "health.interval: Input should be greater than 0, got 0",
]


def failover_each(
    *commands: list[str], cwd: Path, **env: str
) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands side by side to completion (start-up dominates their run time);
    the working directory holds no failover.yaml."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "failover", *args],
            cwd=cwd,
            env=cli_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes, strict=True):
        with process:
            try:
                stdout, stderr = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
        results.append(subprocess.CompletedProcess(args, process.returncode, stdout, stderr))
    return results


def failover(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    [result] = failover_each(list(args), cwd=cwd, **env)
    return result


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


# --- check, and config errors at the command line --------------------------------------------


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, serving_config("http://127.0.0.1:9001"))
    result = failover("check", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok; origins: primary (priority 0)\n"
    assert result.stderr == ""


def test_check_prints_each_problem_on_its_own_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, BAD_CONFIG)
    result = failover("check", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert sorted(result.stderr.splitlines()) == sorted(BAD_CONFIG_LINES)
    assert result.stdout == ""


def test_run_with_a_bad_config_exits_2_with_the_problems(tmp_path: Path) -> None:
    path = write_config(tmp_path, BAD_CONFIG)
    result = failover("run", "--config", str(path), "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert sorted(result.stderr.splitlines()) == sorted(BAD_CONFIG_LINES)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    commands = (["check", str(path)], ["run", "--config", str(path)])
    for result in failover_each(*commands, cwd=tmp_path):
        assert result.returncode == 2, result.args
        assert result.stderr == f"{path}: no such file\n", result.args


def test_a_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "origins:\n\t- name: a\n")
    result = failover("check", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}:2:1: YAML syntax error: ")


def test_failover_config_variable_is_used_without_config_flag(tmp_path: Path) -> None:
    path = write_config(tmp_path, BAD_CONFIG, name="from-env.yaml")
    result = failover("run", cwd=tmp_path, FAILOVER_CONFIG=str(path))
    assert result.returncode == 2
    assert sorted(result.stderr.splitlines()) == sorted(BAD_CONFIG_LINES)


def test_help_lists_the_commands_and_run_options(tmp_path: Path) -> None:
    top, run = failover_each(["--help"], ["run", "--help"], cwd=tmp_path)
    assert top.returncode == 0
    assert top.stdout.startswith("usage: failover")
    for command in ("run", "check", "demo"):
        assert re.search(rf"^\s+{command}\s", top.stdout, flags=re.MULTILINE), command
    assert run.returncode == 0
    assert run.stdout.startswith("usage: failover run")
    for option in ("--config", "--host", "--port", "--workers", "--log-level"):
        assert option in run.stdout


# --- run: serving, and a graceful stop -------------------------------------------------------


async def test_run_serves_and_drains_in_flight_requests_on_sigterm(
    tmp_path: Path, make_origin: Any
) -> None:
    origin: FaultyOrigin = await make_origin("primary")
    port = free_port()
    path = write_config(tmp_path, serving_config(origin.url))
    shutdown_timeout = 5.0
    with started("run", "--config", str(path), "--port", str(port), cwd=tmp_path) as process:
        await process.wait_until_serving(port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = await client.get("/echo")
            assert response.status_code == 200
            assert response.headers["x-failover-origin"] == "primary"
            assert response.json()["origin"] == "primary"

            def origin_got_slow_request() -> bool:
                last = origin.stats.last_request
                return last is not None and last.path == "/delay/2"

            slow = asyncio.create_task(client.get("/delay/2"))
            await wait_for(origin_got_slow_request)
            process.popen.send_signal(signal.SIGTERM)

            await wait_for(lambda: refuses_connections(port), timeout=3)
            assert not slow.done(), "the slow request ended before the listener closed"
            response = await slow
            assert response.status_code == 200
            assert response.text == "primary"

        assert await process.wait_for_exit(shutdown_timeout) == 0
        assert "Traceback" not in process.stderr


async def test_run_reads_failover_config_when_no_flag_is_given(
    tmp_path: Path, make_origin: Any
) -> None:
    origin: FaultyOrigin = await make_origin("primary")
    port = free_port()
    path = write_config(tmp_path, serving_config(origin.url), name="elsewhere.yaml")
    with started("run", "--port", str(port), cwd=tmp_path, FAILOVER_CONFIG=str(path)) as process:
        await process.wait_until_serving(port)
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"http://127.0.0.1:{port}/hello")
        assert response.status_code == 200
        assert response.headers["x-failover-origin"] == "primary"
        process.popen.send_signal(signal.SIGTERM)
        assert await process.wait_for_exit(5) == 0
