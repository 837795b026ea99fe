"""Helpers that several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from failover.admin import pool_status
from failover.config import ConfigError, Settings, build_settings, load_config
from failover.faulty import FaultyOrigin
from failover.health import ProbeResult
from tests.conftest import RawOrigin, RunningProxy, Script, origin_config, proxy_config, wait_for

# -- Origins and the proxy on loopback --------------------------------------------------------

MakeOrigin = Callable[..., Awaitable[FaultyOrigin]]
MakeProxy = Callable[..., Awaitable[RunningProxy]]
KiB = 1024
MiB = 1024 * KiB
NO_HEALTH = {"enabled": False}
NO_PASSIVE = {"enabled": False}
PREFIX = "/_failover"
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def one_origin(
    make_origin: MakeOrigin, make_proxy: MakeProxy, mode: str = "ok", **overrides: Any
) -> tuple[FaultyOrigin, RunningProxy]:
    origin = await make_origin("primary", mode=mode)
    extra = overrides.pop("origin", {})
    proxy = await make_proxy(
        proxy_config(origin_config("primary", origin, 0, **extra), **overrides)
    )
    return origin, proxy


async def two_origins(
    make_origin: MakeOrigin, make_proxy: MakeProxy, primary_mode: str = "ok", **overrides: Any
) -> tuple[FaultyOrigin, FaultyOrigin, RunningProxy]:
    primary = await make_origin("primary", mode=primary_mode)
    secondary = await make_origin("secondary")
    config = proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        **overrides,
    )
    return primary, secondary, await make_proxy(config)


async def two_origins_without_checks(
    make_origin: MakeOrigin,
    make_proxy: MakeProxy,
    primary_mode: str = "ok",
    secondary_mode: str = "ok",
    secondary_kw: dict[str, Any] | None = None,
    proxy_kw: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[FaultyOrigin, FaultyOrigin, RunningProxy]:
    primary = await make_origin("primary", mode=primary_mode)
    secondary = await make_origin("secondary", mode=secondary_mode, **(secondary_kw or {}))
    overrides.setdefault("health", NO_HEALTH)
    overrides.setdefault("passive", NO_PASSIVE)
    config = proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        **overrides,
    )
    return primary, secondary, await make_proxy(config, **(proxy_kw or {}))


def two_origins_config(
    primary: FaultyOrigin, secondary: FaultyOrigin, **overrides: Any
) -> dict[str, Any]:
    return proxy_config(
        origin_config("primary", primary, 0),
        origin_config("secondary", secondary, 1),
        **overrides,
    )


def origin_record(proxy: RunningProxy, name: str) -> dict[str, Any]:
    origins: list[dict[str, Any]] = pool_status(proxy.app.runtime.pools["default"])["origins"]
    for origin in origins:
        if origin["name"] == name:
            return origin
    raise AssertionError(f"no origin {name!r} in status")


async def get_status(proxy: RunningProxy) -> dict[str, Any]:
    response = await proxy.client.get(f"{PREFIX}/status")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def origin_in(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((o for o in status["origins"] if o["name"] == name), None)


async def get_metrics(client: httpx.AsyncClient, base: str = "") -> str:
    response = await client.get(f"{base}{PREFIX}/metrics")
    assert response.status_code == 200, response.text
    return response.text


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def origin_header(proxy: RunningProxy, path: str = "/echo") -> str:
    response = await proxy.client.get(path)
    assert response.status_code == 200, response.text
    return response.headers["x-failover-origin"]


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    """Replace the file in one step, as editors and ConfigMap updates do."""
    scratch = path.with_name(f".{path.name}.new")
    scratch.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    os.replace(scratch, path)


def expected_bytes(start: int, stop: int) -> bytes:
    """FaultyOrigin's byte pattern (byte i is i % 251) from start up to stop."""
    period = bytes(range(251))
    offset = start % 251
    return (period * ((stop - start) // 251 + 2))[offset : offset + stop - start]


# -- Raw sockets: the bytes a client library would hide ---------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def get_list(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def get(self, name: str) -> str | None:
        values = self.get_list(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def request_head(method: str, target: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_head(reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return int(status_line.split(" ")[1]), headers


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> RawResponse:
    status, headers = await read_head(reader)
    response = RawResponse(status, headers, b"")
    length = response.get("content-length")
    if method == "HEAD" or status in (204, 304):
        return response
    if length is not None:
        response.body = await reader.readexactly(int(length))
    elif (response.get("transfer-encoding") or "").lower() == "chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")  # no trailers
        response.body = b"".join(parts)
    else:
        response.body = await reader.read()
    return response


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def answer(status_line: bytes, headers: bytes = b"", body: bytes = b"") -> Script:
    """A script that answers every request on the connection with the same bytes."""

    async def script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin: RawOrigin
    ) -> None:
        while True:
            await origin.read_request(reader)
            writer.write(status_line + b"\r\n" + headers + b"\r\n" + body)
            await writer.drain()

    return script


# -- Unit tests of the decision modules: a clock moved by hand ------------------------------

START = 1000.0
PASS = ProbeResult(True, "200")
REFUSED = ProbeResult(False, "connection refused")


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def origin_dict(name: str, priority: int = 0, weight: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": f"http://{name}.example",
        "priority": priority,
        "weight": weight,
        **extra,
    }


def make_settings(*origins: dict[str, Any], **blocks: Any) -> Settings:
    return build_settings({"origins": list(origins), **blocks})


# -- Config files and `failover check` --------------------------------------------------------

CHECK_TIMEOUT = 5.0  # seconds; the target is 2 (tests/bench/config_check.py prints figures)
ORIGIN = 'origins:\n  - {name: a, url: "http://127.0.0.1:9001"}\n'
UNKNOWN_KEY = "unknown key (check its spelling against the config reference)"


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


def write(tmp_path: Path, text: str | bytes, name: str = "failover.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def file_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


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


# -- The command line, run as a user runs it --------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The current environment without FAILOVER_ variables, able to import the package."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FAILOVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


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
