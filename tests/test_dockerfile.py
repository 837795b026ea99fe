"""The container image's Dockerfile agrees with the code it packages: the console script, the
CLI's subcommands and flags, the admin health path, the config it copies, a non-root user."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from failover.config import AdminConfig, ListenConfig, load_config
from tests.conftest import free_port, origin_config, proxy_config

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        """The JSON array form (`["a", "b"]`); fail if the instruction uses the shell form."""
        assert self.arguments.startswith("["), f"{self.keyword} is not in exec form"
        value = json.loads(self.arguments)
        assert isinstance(value, list)
        assert all(isinstance(item, str) for item in value)
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    if not DOCKERFILE.exists():
        pytest.fail(f"{DOCKERFILE} does not exist")
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    """The instruction that takes effect: Docker keeps the last one of each of these."""
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    """HEALTHCHECK [--options] CMD ..., as an argv list."""
    arguments = last(instructions, "HEALTHCHECK").arguments
    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.+)", arguments, flags=re.DOTALL)
    assert match is not None, f"HEALTHCHECK without CMD: {arguments!r}"
    command = match.group(2).strip()
    if command.startswith("["):
        return Instruction("CMD", command).exec_form()
    return shlex.split(command)


def copy_destination(instructions: list[Instruction], source: str) -> str:
    """Where `COPY ... source ... dest` puts the file `source`."""
    for instruction in instructions:
        if instruction.keyword != "COPY":
            continue
        parts = [p for p in shlex.split(instruction.arguments) if not p.startswith("--")]
        *sources, destination = parts
        if source in sources:
            if destination.endswith("/"):
                return destination + Path(source).name
            return destination
    raise AssertionError(f"no COPY of {source}")


def python(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAILOVER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


def cmd_config_path(instructions: list[Instruction]) -> str:
    command = last(instructions, "CMD").exec_form()
    assert "--config" in command, f"CMD names no --config: {command}"
    return command[command.index("--config") + 1]


def test_base_image_has_a_python_the_project_supports(dockerfile: list[Instruction]) -> None:
    image = last(dockerfile, "FROM").arguments.split()[0]
    match = re.fullmatch(r"python:3\.(\d+)(?:[.-].*)?", image)
    assert match is not None, f"FROM {image} is not an official python image"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    minimum = re.fullmatch(r">=\s*3\.(\d+)", project["requires-python"])
    assert minimum is not None
    assert int(match.group(1)) >= int(minimum.group(1))


def test_entrypoint_is_the_declared_console_script(dockerfile: list[Instruction]) -> None:
    entrypoint = last(dockerfile, "ENTRYPOINT").exec_form()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    scripts: dict[str, str] = project["scripts"]
    assert entrypoint[0] in scripts, f"{entrypoint[0]!r} is not in [project.scripts]"
    module_name, _, attribute = scripts[entrypoint[0]].partition(":")
    module = __import__(module_name, fromlist=[attribute])
    assert callable(getattr(module, attribute))


def test_cmd_subcommand_and_flags_are_accepted_by_the_cli(dockerfile: list[Instruction]) -> None:
    command = last(dockerfile, "CMD").exec_form()
    subcommand, flags = command[0], [arg for arg in command if arg.startswith("--")]
    # argparse rejects an unknown subcommand with status 2 ("invalid choice").
    usage = python("-m", "failover", subcommand, "--help")
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith(f"usage: failover {subcommand}")
    assert flags, f"CMD passes no flags: {command}"
    for flag in flags:
        assert flag in usage.stdout, f"`failover {subcommand}` does not take {flag}"


def test_healthcheck_probes_the_admin_healthz_on_the_exposed_port(
    dockerfile: list[Instruction],
) -> None:
    command = " ".join(healthcheck_command(dockerfile))
    urls = re.findall(r"https?://[^\s'\"]+", command)
    assert len(urls) == 1, f"expected one URL in the HEALTHCHECK, found {urls}"
    match = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/\S*)", urls[0])
    assert match is not None, urls[0]
    assert match.group(2) == AdminConfig().prefix + "/healthz"
    exposed = [int(port.split("/")[0]) for port in last(dockerfile, "EXPOSE").arguments.split()]
    assert int(match.group(1)) in exposed
    assert int(match.group(1)) == ListenConfig().port


async def run_healthcheck(command: list[str], port: int) -> int:
    """Run the HEALTHCHECK with this interpreter, standard library only (-S: no site-packages),
    against 127.0.0.1:port instead of the image's port."""
    assert command[0] in ("python", "python3"), f"HEALTHCHECK does not run python: {command}"
    url_port = re.compile(r"(http://127\.0\.0\.1:)\d+")
    args = [url_port.sub(rf"\g<1>{port}", arg) for arg in command[1:]]
    assert args != command[1:], "the HEALTHCHECK names no http://127.0.0.1:PORT URL"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-S",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), timeout=20)


async def test_healthcheck_passes_against_a_live_proxy_and_fails_without_one(
    dockerfile: list[Instruction], make_origin: Any, make_proxy: Any
) -> None:
    command = healthcheck_command(dockerfile)
    origin = await make_origin("primary")
    proxy = await make_proxy(proxy_config(origin_config("primary", origin, 0)))
    assert await run_healthcheck(command, proxy.port) == 0
    assert await run_healthcheck(command, free_port()) != 0


def test_image_runs_as_a_non_root_user(dockerfile: list[Instruction]) -> None:
    user = last(dockerfile, "USER").arguments.split(":")[0]
    assert user not in ("", "root", "0")
    keywords = [i.keyword for i in dockerfile]
    assert max(i for i, k in enumerate(keywords) if k == "USER") < keywords.index("ENTRYPOINT")


def test_cmd_config_path_is_where_the_example_config_is_copied(
    dockerfile: list[Instruction],
) -> None:
    assert cmd_config_path(dockerfile) == copy_destination(dockerfile, "config/failover.yaml")


def test_every_copied_source_exists(dockerfile: list[Instruction]) -> None:
    for instruction in dockerfile:
        if instruction.keyword == "COPY":
            parts = [p for p in shlex.split(instruction.arguments) if not p.startswith("--")]
            for source in parts[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_the_image_config_listens_on_the_exposed_port(
    dockerfile: list[Instruction], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("FAILOVER_"):
            monkeypatch.delenv(name)
    listen = load_config(ROOT / "config" / "failover.yaml").listen
    exposed = [int(port.split("/")[0]) for port in last(dockerfile, "EXPOSE").arguments.split()]
    assert listen.port in exposed
    # Inside a container the proxy must listen beyond loopback to be reachable.
    assert listen.host == "0.0.0.0"


@pytest.mark.parametrize("name", ["failover.yaml", "minimal.yaml"])
def test_shipped_configs_pass_check(name: str) -> None:
    path = ROOT / "config" / name
    result = python("-m", "failover", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: ok")
