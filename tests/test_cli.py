"""The `failover` command as a user runs it: a real subprocess of `python -m failover`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from failover.faulty import FaultyOrigin
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parents[1]

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


def cli_env(**extra: str) -> dict[str, str]:
    """The current environment without FAILOVER_ variables, able to import the package."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FAILOVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


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


def write_config(tmp_path: Path, data: dict[str, Any] | str, name: str = "failover.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def serving_config(origin_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 8080},
        "origins": [{"name": "primary", "url": origin_url, "priority": 0}],
        "health": {"path": "/health", "interval": "200ms", "timeout": "500ms"},
        "failback": {"hold_down": 0},
        "shutdown_timeout": 5,
        **extra,
    }


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def exited(self) -> bool:
        return self.popen.poll() is not None

    async def wait_until_serving(self, port: int, within: float = 20.0) -> None:
        """Poll the proxy's healthz until it answers 200, failing early if the process dies."""
        url = f"http://127.0.0.1:{port}/_failover/healthz"
        async with httpx.AsyncClient(timeout=1.0) as client:

            async def serving() -> bool:
                if self.exited():
                    raise AssertionError(
                        f"exited with {self.popen.returncode} before serving:\n{self.stderr}"
                    )
                try:
                    response = await client.get(url)
                except httpx.TransportError:
                    return False
                return response.status_code == 200

            await wait_for(serving, timeout=within, every=0.05)

    async def wait_for_exit(self, within: float) -> int:
        await wait_for(self.exited, timeout=within, every=0.05)
        return self.popen.returncode


@contextmanager
def started(*args: str, cwd: Path, **env: str) -> Iterator[Process]:
    """Start the command in the background; kill it at the end if it is still running."""
    out_path, err_path = cwd / "stdout.txt", cwd / "stderr.txt"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        popen = subprocess.Popen(
            [sys.executable, "-m", "failover", *args],
            cwd=cwd,
            env=cli_env(**env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        try:
            yield Process(popen, out_path, err_path)
        finally:
            if popen.poll() is None:
                popen.kill()
            popen.wait(timeout=10)


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


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


# --- demo ------------------------------------------------------------------------------------


async def test_demo_moves_traffic_when_the_primary_fails(tmp_path: Path) -> None:
    port, primary, secondary = distinct_free_ports(3)
    args = ["--port", str(port), "--origin-ports", str(primary), str(secondary)]
    with started("demo", *args, "--log-level", "warning", cwd=tmp_path) as process:
        await process.wait_until_serving(port)

        printed = process.stdout
        config = yaml.safe_load(printed.split("Config:", 1)[1].split("\nThe proxy listens", 1)[0])
        assert [o["url"] for o in config["origins"]] == [
            f"http://127.0.0.1:{primary}",
            f"http://127.0.0.1:{secondary}",
        ]
        assert config["listen"]["port"] == port
        assert f"curl -X POST http://127.0.0.1:{primary}/_origin/mode/http5xx" in printed
        assert f"curl -X POST http://127.0.0.1:{primary}/_origin/mode/ok" in printed
        assert f"curl -s http://127.0.0.1:{port}/_failover/status" in printed

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = await client.get("/")
            assert response.status_code == 200
            assert response.headers["x-failover-origin"] == "primary"

            control = await client.post(f"http://127.0.0.1:{primary}/_origin/mode/http5xx")
            assert control.status_code == 200

            for _ in range(10):
                response = await client.get("/")
                assert response.status_code == 200
                assert response.headers["x-failover-origin"] == "secondary"

        process.popen.send_signal(signal.SIGINT)
        assert await process.wait_for_exit(5) == 0
        assert "Traceback" not in process.stderr
